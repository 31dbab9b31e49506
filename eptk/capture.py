"""Capturing activation statistics from a frozen causal LM as its forward runs.

Forward hooks on the decoder layers hand each requested layer's hidden states [B,T,d] to
`eptk.kernels.capture_stats` (Triton on CUDA) and to a seeded reservoir, and the forward stops
right after the last requested layer (a hook raises a private exception), so capturing the
embeddings of a 30-layer model runs no decoder layer at all.

In the `key` / `value` spaces (what `prefix` priors and analyze compare a prefix with) the same statistics are
kept of every decoder layer l's attention keys or values (after RoPE, at the tokens' own positions: what a
prefix's keys/values are), one row per token with its kv heads concatenated [Hkv*D]; they are read through
eptk's attention function (`attention.RecordPass`), for every model family alike.

Layer index l (the one `ParamInfo.layer`, `deep.<l>` and stats files use):
  0      token embeddings = the input of decoder layer 0. For Llama-family models that is the
         embedding lookup; for GPT-2 it is token + position embeddings (what block 0 reads).
  l      the hidden state entering decoder layer l (a pre-hook on layer l).
  L      the output of the last decoder layer, before the final norm (a hook on layer L-1).
Padding (attention_mask = 0), BOS tokens (input_ids == tokenizer.bos_token_id, when the
tokenizer has one; some tokenizers use that id for EOS too) and the first real token of every
sequence are excluded from every statistic: the first position is the attention sink whose massive
activations (norms 100x the rest in SmolLM2's middle layers) dominate any statistic whether or not
it is a BOS token, and in a prompted run that position belongs to the first slot, not to a token.
At each layer, tokens whose hidden norm exceeds MASSIVE (10) times their batch's median are left out
too (massive activations; their count per layer is in meta.json).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from . import linalg
from .attention import ATTN_NAME, RecordPass, active, attention_implementation
from .errors import EptkUsageError
from .families import decoder_layers, model_dims
from .models import LoadedModel, input_device
from .progress import progress_bar
from .batches import encode_batch, encode_content_batch
from .context import check_examples, check_generation, excerpt
from .spaces import CAPTURE_SPACES
from .stats import EXCLUDED, FORMAT, ActivationStats
from .version import __version__
from .tasks import load_task


class _StopForward(Exception):
    """Raised by a hook once the last requested layer is captured; caught by `run_to_layers`."""


def check_layers(model, layers: Iterable[int], space: str = "activation") -> list[int]:
    num_layers = model_dims(model)["num_layers"]
    out = sorted({int(l) for l in layers})
    highest = num_layers if space == "activation" else num_layers - 1
    bad = [l for l in out if not 0 <= l <= highest]
    if not out or bad:
        what = (f"0 = token embeddings, {num_layers} = last layer output" if space == "activation"
                else f"l = decoder layer l's attention {space}s")
        raise EptkUsageError(f"layers must be 0..{highest} for this model ({what}); got {bad or 'none'}")
    return out


def space_width(dims: dict, space: str) -> int:
    """The width of one captured row: the hidden size, or a token's keys/values with its kv heads concatenated."""
    if space not in CAPTURE_SPACES:
        raise EptkUsageError(f"unknown capture space {space!r}; valid: {', '.join(CAPTURE_SPACES)}")
    return dims["hidden_size"] if space == "activation" else dims["num_kv_heads"] * dims["head_dim"]


@contextmanager
def layer_hooks(model, layers: list[int], on_hidden: Callable[[int, torch.Tensor], None]):
    """While active, each forward calls on_hidden(l, hidden [B,T,d]) per requested layer, then stops."""
    blocks = decoder_layers(model)
    num_layers = len(blocks)
    last = max(layers)

    def deliver(l, hidden):
        on_hidden(l, hidden)
        if l == last:
            raise _StopForward

    def pre_hook(l):
        def hook(module, args, kwargs):
            deliver(l, args[0] if args else kwargs["hidden_states"])
        return hook

    def post_hook(module, args, kwargs, output):
        deliver(num_layers, output[0] if isinstance(output, (tuple, list)) else output)

    handles = []
    try:
        for l in layers:
            if l < num_layers:
                handles.append(blocks[l].register_forward_pre_hook(pre_hook(l), with_kwargs=True))
            else:
                handles.append(blocks[num_layers - 1].register_forward_hook(post_hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_to_layers(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int],
                  on_hidden: Callable[[int, torch.Tensor], None]) -> None:
    """One forward that feeds on_hidden the requested layers and stops after the last of them."""
    with torch.inference_mode(), layer_hooks(model, layers, on_hidden):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass


def run_to_keys_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int], space: str,
                       on_rows: Callable[[int, torch.Tensor], None]) -> None:
    """One forward that feeds on_rows(l, rows [B,T,Hkv*D]) the keys (space `key`) or values of the requested
    decoder layers' attention, and stops after the last of them."""
    wanted, last = set(layers), max(layers)
    part = 0 if space == "key" else 1

    def record(layer, key, value):
        if layer in wanted:
            on_rows(layer, (key, value)[part].transpose(1, 2).flatten(2))
        if layer == last:
            raise _StopForward

    with torch.inference_mode(), attention_implementation(model, ATTN_NAME), active(RecordPass(record)):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass


def real_tokens(tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, only=None) -> torch.Tensor:
    """[B,T] bool: not padding, not BOS, not the first real token (the attention sink), and inside `only` when
    given (e.g. content tokens)."""
    real = attention_mask.bool()
    first = real.long().cumsum(-1) == 1
    real = real & ~first
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        real = real & (input_ids != bos)
    if only is not None:
        real = real & only.to(real.device).bool()
    return real


MASSIVE = 10.0  # a token whose hidden norm exceeds this many times its batch's median is a massive activation


def without_massive(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """`real` minus the tokens with massive activations at this layer (norm > MASSIVE x the batch median).

    A few tokens per sequence carry activations 100x the rest in the middle layers of many LMs (Sun et
    al. 2024); left in, they set the mean, the covariance's top eigenvalues and the norm percentiles,
    and the data region no longer describes the ordinary tokens a prompt sits among."""
    if not bool(real.any()):
        return real
    norms = hidden.detach().float().norm(dim=-1)
    return real & (norms <= MASSIVE * norms[real].median())


def _batches(tokenizer, texts_or_batches, batch_size: int, max_length: int | None):
    """Yield dicts with input_ids / attention_mask from strings (right-padded) or ready batches."""
    items = list(texts_or_batches) if not isinstance(texts_or_batches, list) else texts_or_batches
    if items and isinstance(items[0], str):
        side = tokenizer.padding_side
        tokenizer.padding_side = "right"
        try:
            for i in range(0, len(items), batch_size):
                kw = dict(truncation=True, max_length=max_length) if max_length else {}
                yield dict(tokenizer(items[i:i + batch_size], padding=True, return_tensors="pt", **kw))
        finally:
            tokenizer.padding_side = side
    else:
        yield from items


class Capturer:
    """Accumulates the statistics of the requested layers batch by batch (`capture` drives it).

    Statistics live on the model's device: capture_stats runs there (Triton on CUDA), the Gaussians
    merge there in float64, the reservoirs keep their rows there. Inside the hooks nothing waits for
    the device; the host syncs once per batch, for the real-token index.
    """

    def __init__(self, loaded: LoadedModel, layers: list[int], samples: int = 2048, seed: int = 0,
                 backend: str = "auto", space: str = "activation"):
        self.loaded, self.backend, self.space = loaded, backend, space
        self.dims = model_dims(loaded.model)
        width = space_width(self.dims, space)
        self.layers = check_layers(loaded.model, layers, space)
        self.device = input_device(loaded.model)
        self.samples, self.seed = samples, seed
        self.stats = ActivationStats(width, self.layers, samples, seed=seed, device=self.device)
        self.sequences = 0
        self.massive: dict[int, int] = {}
        self._whiten: dict | None = None  # layer -> (scale_tril, mean) of the final Gaussians, for add_extremes

    def add(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, only=None) -> None:
        """One batch; `only` [B, T] (e.g. a content mask) keeps just those of its real tokens."""
        from . import kernels

        stats = self.stats
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        real = real_tokens(self.loaded.tokenizer, input_ids, attention_mask, only)
        token_index = torch.nonzero(real.reshape(-1)).squeeze(1)          # the one host sync
        seq_index = torch.nonzero(real.any(1)).squeeze(1)
        self.sequences += int(seq_index.numel())

        def on_hidden(l, hidden):
            keep = without_massive(hidden, real)
            dropped = int((real & ~keep).sum())
            self.massive[l] = self.massive.get(l, 0) + dropped
            index = token_index if dropped == 0 else torch.nonzero(keep.reshape(-1)).squeeze(1)
            st = kernels.capture_stats(hidden, keep, backend=self.backend)
            stats.gaussians[l].update(st.count, st.sum, st.gram)
            stats.reservoirs[l].add_from(hidden, index=index)
            stats.pooled_parts[l].append(st.pooled.index_select(0, seq_index).float())

        self._forward(input_ids, attention_mask, on_hidden)

    def _forward(self, input_ids, attention_mask, on_hidden) -> None:
        """One forward handing on_hidden(l, rows [B,T,width]) the captured space at each requested layer."""
        if self.space == "activation":
            run_to_layers(self.loaded.model, input_ids, attention_mask, self.layers, on_hidden)
        else:
            run_to_keys_values(self.loaded.model, input_ids, attention_mask, self.layers, self.space, on_hidden)

    def add_extremes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, only=None) -> None:
        """Second pass over a batch `add` saw: the largest Mahalanobis distance of any kept token at each layer
        under the layer's final shrunk Gaussian (what a `region:new` sample must clear: every captured
        token, not only the reservoir's). The same tokens are kept as in the first pass."""
        stats = self.stats
        if self._whiten is None:
            self._whiten = {l: (stats.layer(l).scale_tril().double().to(self.device),
                                stats.layer(l).mean.double().to(self.device)) for l in self.layers}
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        real = real_tokens(self.loaded.tokenizer, input_ids, attention_mask, only)

        def on_hidden(l, hidden):
            rows = hidden[without_massive(hidden, real)]
            if rows.shape[0]:
                tril, mean = self._whiten[l]
                worst = float(linalg.mahalanobis(rows.double(), tril, mean).max())
                stats.max_mahalanobis[l] = max(stats.max_mahalanobis.get(l, 0.0), worst)

        self._forward(input_ids, attention_mask, on_hidden)

    def finish(self, meta: dict | None = None) -> ActivationStats:
        loaded, dims, stats = self.loaded, self.dims, self.stats
        stats.meta = {"format": FORMAT, "model": loaded.name, "model_source": loaded.source, "model_id": loaded.identity,
                      "hidden_size": dims["hidden_size"], "num_layers": dims["num_layers"], "task": None,
                      "layers": self.layers, "samples": self.samples, "seed": self.seed,
                      "sequences": self.sequences, "excluded": EXCLUDED,
                      "bos_token_id": getattr(loaded.tokenizer, "bos_token_id", None),
                      "layer_index": "0 = token embeddings, l = input of decoder layer l, "
                                     f"{dims['num_layers']} = last layer output before the final norm"
                                     if self.space == "activation" else
                                     f"l = decoder layer l's attention {self.space}s (after RoPE), kv heads concatenated",
                      "space": self.space, "width": stats.dim,
                      "eptk_version": __version__, **(meta or {})}
        stats.meta["tokens"] = {str(l): stats.gaussians[l].count for l in self.layers}
        stats.meta["massive_excluded"] = {str(l): self.massive.get(l, 0) for l in self.layers}
        stats._layer_cache.clear()  # built before the second pass knew the distances
        return stats


def capture(loaded: LoadedModel, texts_or_batches, layers: list[int], samples: int = 2048, seed: int = 0,
            batch_size: int = 16, progress: bool = True, max_length: int | None = None,
            meta: dict | None = None, backend: str = "auto", space: str = "activation") -> ActivationStats:
    """Statistics of the requested layers over texts (list[str]) or batches (dicts with input_ids,
    attention_mask). Each layer gets a RunningGaussian, a seeded reservoir of `samples` token
    activations (or keys, or values: `space`), every sequence's mean activation, and (from a second pass) the
    largest Mahalanobis distance of any token."""
    capturer = Capturer(loaded, layers, samples=samples, seed=seed, backend=backend, space=space)
    batches = list(_batches(loaded.tokenizer, texts_or_batches, batch_size, max_length))
    what = "activations" if space == "activation" else f"attention {space}s"
    with progress_bar(progress, f"capturing {what}", 2 * len(batches)) as advance:
        for batch in batches:   # a batch's `content_mask`, where it has one, keeps only the content tokens
            capturer.add(batch["input_ids"], batch["attention_mask"], batch.get("content_mask"))
            advance()
        for batch in batches:  # the second pass: distances under the Gaussians the first one built
            capturer.add_extremes(batch["input_ids"], batch["attention_mask"], batch.get("content_mask"))
            advance()
    return capturer.finish(meta)


@dataclass
class GeneratedStates:
    prompt: str
    text: str                        # the generated continuation, decoded
    states: dict[int, torch.Tensor]  # layer -> [new_tokens, d] float32: the generated tokens' hidden states


@torch.no_grad()
def generated_states(prompted, prompts: list[str], layers: list[int], new_tokens: int, batch_size: int = 8,
                     advance=None) -> list[GeneratedStates]:
    """Greedy continuations of exactly `new_tokens` tokens (EOS does not stop them: every trajectory has the
    same length) by a prompted model (eptk.prompts.PromptedModel, any method, or the frozen model through
    the no-prompt baseline), and the generated tokens' hidden states at `layers`, taken from one forward
    of the prompted model over prompt + continuation (what the cached generation computed at those
    positions). `advance(n)` is called after each batch of n prompts."""
    from .batches import encode_prompts

    layers = check_layers(prompted.model, layers)
    tokenizer = prompted.tokenizer
    if prompts:  # the longest prompt and its continuation fit the context window, checked before generating
        lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
        longest = max(range(len(prompts)), key=lengths.__getitem__)
        check_generation(prompted.model, slots=prompted.slots, text_tokens=lengths[longest], new_tokens=new_tokens,
                         option="--trajectory-tokens", where=f"test prompt {longest} ({excerpt(prompts[longest])})")
    prefix = prompted.prefix()
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = encode_prompts(tokenizer, chunk)  # left-padded: the continuations are the last columns
        ids, mask = enc["input_ids"].to(prompted.device), enc["attention_mask"].to(prompted.device)
        ids = prompted.generate(ids, mask, max_new_tokens=new_tokens, eos_token_id=-1, prefix=prefix)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], new_tokens)], dim=1)
        states: dict[int, torch.Tensor] = {}
        with layer_hooks(prompted.model, layers,
                         lambda l, h: states.__setitem__(l, h[:, h.shape[1] - new_tokens:].float().cpu())):
            try:
                prompted.hidden(ids, mask, prefix=prefix)
            except _StopForward:
                pass
        for i, prompt in enumerate(chunk):
            text = tokenizer.decode(ids[i, ids.shape[1] - new_tokens:].tolist(), skip_special_tokens=False)
            out.append(GeneratedStates(prompt, text, {l: states[l][i].clone() for l in layers}))
        if advance is not None:
            advance(len(chunk))
    return out


# ---- a task's train split -------------------------------------------------------------------------

def task_batches(loaded: LoadedModel, task_spec: str, seed: int, n_examples: int, batch_size: int,
                 content_only: bool = False) -> list[dict]:
    """prompt + answer (+ EOS) of the task's train examples, encoded like training encodes them (with
    `content_only`, each batch carries the content mask of `encode_content_batch`); each must fit the model's
    context window."""
    tokenizer = loaded.tokenizer
    examples = load_task(task_spec, seed).examples("train", n_examples)
    if not examples:
        raise EptkUsageError(f"task {task_spec!r} has no train examples to capture")
    check_examples(loaded.model, tokenizer, examples, slots=0, where=f"task {task_spec}, train split")
    if content_only and not all(ex.content for ex in examples):
        raise EptkUsageError(f"task {task_spec!r} does not mark its content (only template-aware tasks do: "
                             f"arith, qa, qa:b, fill, fill:b)")
    encode = encode_content_batch if content_only else (lambda tok, ex: encode_batch(tok, ex, with_answer=True))
    return [encode(tokenizer, examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]


def capture_task(loaded: LoadedModel, model_name: str, task_spec: str, layers: list[int], samples: int = 2048,
                 seed: int = 0, n_examples: int = 512, batch_size: int = 16, progress: bool = True,
                 backend: str = "auto", content_only: bool = False, space: str = "activation") -> ActivationStats:
    """Capture the task's train split (prompt + answer) at the given layers (its content tokens only, with
    `content_only`) in `space` (activations, or the attention keys or values)."""
    batches = task_batches(loaded, task_spec, seed, n_examples, batch_size, content_only)
    stats = capture(loaded, batches, layers, samples=samples, seed=seed, progress=progress, backend=backend, space=space,
                    meta={"model": model_name, "task": task_spec, "split": "train", "content_only": content_only,
                          "examples": sum(b["input_ids"].shape[0] for b in batches)})
    return stats
