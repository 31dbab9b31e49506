"""Soft, deep and prefix prompts over a frozen causal LM, computed in two passes.

The prompt is P *slots* in front of the real tokens. Under causal attention the slots never see the
real tokens, so each step runs the slots once (batch 1, positions 0..P-1) and keeps every layer's
slot keys/values; then the real tokens (positions P..) read those as a shared prefix. This equals
the full forward over [slots ; tokens] (tests/test_two_pass.py checks it).
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import SlotPass, TokenPass, active, use_eptk_attention
from .errors import EptkUsageError, choices
from .models import decoder_layers, model_dims

METHODS = ("soft", "deep", "prefix")
NO_PROMPT = "none"  # the baseline: the frozen model alone, through the same code path


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """`all`, `last:N` or `4,8,12` -> sorted decoder-layer indices l >= 1 for deep vectors."""
    spec = str(spec).strip()
    valid = f"all, last:N (1..{num_layers - 1}), or a comma list of layers in 1..{num_layers - 1}"
    if spec == "all":
        return list(range(1, num_layers))
    if spec.startswith("last:"):
        try:
            n = int(spec[5:])
        except ValueError:
            raise EptkUsageError(f"bad --layers {spec!r}; valid: {valid}") from None
        if not 1 <= n <= num_layers - 1:
            raise EptkUsageError(f"--layers last:{n} out of range; valid: {valid}")
        return list(range(num_layers - n, num_layers))
    try:
        layers = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise EptkUsageError(f"bad --layers {spec!r}; valid: {valid}") from None
    bad = [l for l in layers if not 1 <= l < num_layers]
    if not layers or bad:
        raise EptkUsageError(f"--layers {spec!r}: layer {bad[0] if bad else '?'} out of range; valid: {valid}")
    return layers


def param_shapes(method: str, tokens: int, dims: dict, layers: list[int], soft: bool) -> dict[str, tuple]:
    """Names and shapes of the trainable tensors, exactly as the run-directory format names them."""
    if method == NO_PROMPT:
        return {}
    if method not in METHODS:
        raise EptkUsageError(f"unknown method {method!r}; valid: {choices(METHODS)}")
    if tokens < 1:
        raise EptkUsageError(f"--tokens must be at least 1 (got {tokens})")
    d, P = dims["hidden_size"], tokens
    if method == "prefix":
        shape = (dims["num_kv_heads"], P, dims["head_dim"])
        out = {}
        for l in range(dims["num_layers"]):
            out[f"prefix.{l}.key"] = shape
            out[f"prefix.{l}.value"] = shape
        return out
    shapes = {"soft": (P, d)} if (soft or method == "soft") else {}
    if method == "deep":
        shapes.update({f"deep.{l}": (P, d) for l in layers})
    return shapes


def layer_of(name: str) -> int:
    """The activation layer a tensor lives at: 0 for soft, l for deep.<l> and prefix.<l>.*."""
    return 0 if name == "soft" else int(name.split(".")[1])


def _key(name: str) -> str:  # ParameterDict keys cannot hold dots
    return name.replace(".", "__")


class PromptedModel(nn.Module):
    """A frozen causal LM plus trainable prompt tensors, callable like an HF causal LM.

    Logits cover the real tokens only. `backend` picks the prefix-attention kernel.
    """

    def __init__(self, model, tokenizer, method: str, tokens: int, layers: list[int] | None = None,
                 soft: bool = True, init: dict[str, torch.Tensor] | None = None, backend: str = "auto"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.tokens = tokens
        self.backend = backend
        self.dims = model_dims(model)
        self.deep_layers = list(layers or []) if method == "deep" else []
        self.has_soft = method == "soft" or (method == "deep" and soft)
        if method == "deep" and not self.has_soft and not self.deep_layers:
            raise EptkUsageError("a deep prompt without a soft prompt needs at least one layer")
        self.shapes = param_shapes(method, tokens, self.dims, self.deep_layers, soft)
        self.params = nn.ParameterDict()
        for name, shape in self.shapes.items():
            value = init[name] if init is not None else torch.zeros(shape)
            if tuple(value.shape) != tuple(shape):
                raise EptkUsageError(f"tensor {name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
            self.params[_key(name)] = nn.Parameter(value.detach().clone().float())
        self._hooks = [decoder_layers(model)[l].register_forward_pre_hook(self._replace_slots(l), with_kwargs=True)
                       for l in self.deep_layers]
        self._slot_state: SlotPass | None = None
        use_eptk_attention(model)
        self.to(next(model.parameters()).device)

    # ---- prompt tensors -----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The prompt tensors under their run-directory names (detached, float32, CPU)."""
        return {name: self.params[_key(name)].detach().float().cpu().clone() for name in self.shapes}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in self.shapes:
                self.params[_key(name)].copy_(tensors[name])

    def param(self, name: str) -> nn.Parameter:
        return self.params[_key(name)]

    @property
    def device(self):
        return next(self.model.parameters()).device

    # ---- the slot pass ------------------------------------------------------------------------
    def _replace_slots(self, layer: int):
        def hook(module, args, kwargs):
            if self._slot_state is None:
                return None
            state = self.param(f"deep.{layer}").to(self._dtype()).unsqueeze(0)
            if args:
                return (state,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs, hidden_states=state)
            return args, kwargs
        return hook

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def prefix(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """layer -> (prefix_k, prefix_v) [Hkv,P,D]: every layer's slot keys/values."""
        if self.method == NO_PROMPT:
            return {}
        if self.method == "prefix":
            return {l: (self.param(f"prefix.{l}.key"), self.param(f"prefix.{l}.value"))
                    for l in range(self.dims["num_layers"])}
        first = 0 if self.has_soft else self.deep_layers[0]
        P, d = self.tokens, self.dims["hidden_size"]
        slots = self.param("soft") if self.has_soft else torch.zeros(P, d, device=self.device)
        state = SlotPass(first_layer=first, backend=self.backend)
        base = getattr(self.model, self.model.base_model_prefix)
        self._slot_state = state
        try:
            with active(state):
                base(inputs_embeds=slots.to(self._dtype()).unsqueeze(0),
                     position_ids=torch.arange(P, device=self.device).unsqueeze(0), use_cache=False)
        finally:
            self._slot_state = None
        return state.kv

    # ---- the token pass -----------------------------------------------------------------------
    def positions(self, attention_mask: torch.Tensor, past: int = 0, length: int | None = None):
        """Positions of the real tokens after the P slots; left padding shifts them like HF does."""
        pos = self.tokens + attention_mask.long().cumsum(-1) - 1
        pos = pos.clamp_min(self.tokens)
        return pos[:, -length:] if length is not None else pos

    def hidden(self, input_ids, attention_mask=None, prefix=None, past_key_values=None, use_cache=False,
               record_mass=False):
        """Last hidden states [B,T,d] of the real tokens (and the token-pass state)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if prefix is None:
            prefix = self.prefix()
        T = input_ids.shape[1]
        state = TokenPass(prefix=prefix, backend=self.backend, record_mass=record_mass)
        base = getattr(self.model, self.model.base_model_prefix)
        with active(state):
            out = base(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=self.positions(attention_mask, length=T),
                       past_key_values=past_key_values, use_cache=use_cache)
        return out, state

    def lm_head(self, hidden):
        return self.model.get_output_embeddings()(hidden)

    def forward(self, input_ids, attention_mask=None, labels=None, prefix=None, past_key_values=None,
                use_cache=False):
        """Logits [B,T,V] of the real tokens; with labels, the mean answer loss (LM head at label
        positions only) and `loss_sum` / `tokens` for callers that normalize over a larger batch."""
        out, _ = self.hidden(input_ids, attention_mask, prefix, past_key_values, use_cache)
        hidden = out.last_hidden_state
        if labels is None:
            return PromptOutput(logits=self.lm_head(hidden).float(), past_key_values=out.past_key_values)
        total, count = answer_loss_sum(self.lm_head, hidden, labels)
        return PromptOutput(loss=total / max(count, 1), loss_sum=total, tokens=count)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, eos_token_id=None, use_cache: bool = True, generator=None, prefix=None):
        """Greedy (or sampled) continuation; returns [B, T + new] like HF generate (left padding works).
        `prefix` (from `self.prefix()`) spares the slot pass when generating for many batches."""
        from transformers import DynamicCache

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos = self.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.tokenizer.pad_token_id
        prefix = self.prefix() if prefix is None else prefix
        ids, mask = input_ids, attention_mask
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        cache = DynamicCache(config=self.model.config) if use_cache else None
        step_ids = ids
        for _ in range(max_new_tokens):
            out, _ = self.hidden(step_ids, mask, prefix, past_key_values=cache, use_cache=use_cache)
            logits = self.lm_head(out.last_hidden_state[:, -1]).float()
            if do_sample:
                probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None].to(mask.dtype)], dim=1)
            done = done | (nxt == eos)
            step_ids = nxt[:, None] if use_cache else ids
            if bool(done.all()):
                break
        return ids

    @torch.no_grad()
    def prefix_mass(self, input_ids, attention_mask) -> dict[int, torch.Tensor]:
        """layer -> [Hq] mean softmax mass on the prompt over the real query tokens."""
        _, state = self.hidden(input_ids, attention_mask, record_mass=True)
        return {l: state.mass[l] / max(state.mass_rows[l], 1.0) for l in state.mass}

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


class PromptOutput(dict):
    """Minimal HF-style output: attribute and key access."""
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def answer_loss_sum(lm_head, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions and their count; the LM head runs only there."""
    targets = labels[:, 1:]
    where = targets != -100
    picked = hidden[:, :-1][where]
    if picked.shape[0] == 0:
        return hidden.sum() * 0.0, 0
    logits = lm_head(picked).float()
    return nn.functional.cross_entropy(logits, targets[where], reduction="sum"), int(picked.shape[0])
