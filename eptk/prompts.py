"""A frozen causal LM with a prompt in front, computed in two passes (the method in eptk/methods/ says
what the prompt's tensors are and how they become each layer's prefix keys/values).

The prompt is P *slots* in front of the real tokens. Under causal attention the slots never see the
real tokens, so each step runs the slots once (batch 1, positions 0..P-1) and keeps every layer's
slot keys/values; then the real tokens (positions P..) read those as a shared prefix. This equals
the full forward over [slots ; tokens] (tests/test_two_pass.py checks it).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .attention import PackedPass, TokenPass, active, use_eptk_attention
from .checkpointing import check_checkpointable, recompute_layers
from .errors import EptkUsageError
from .families import family_of
from .methods import DirectPrompt, NoPrompt, PromptMethod, PromptParameters
from .methods.soft import sink_token_id
from .models import input_device
from .transformers_api import cache_kwargs, returned_cache


class PromptedModel(nn.Module):
    """A frozen causal LM plus a trainable prompt, callable like an HF causal LM.

    The prompt's parameters are `parameters` (the method's `PromptParameters`), or, without them, the prompt
    tensors `init` themselves (zeros without either). Logits cover the real tokens only. `backend` picks the
    prefix-attention kernel; with `grad_checkpointing` both passes recompute their decoder layers in backward
    instead of keeping their activations (eptk/checkpointing.py).
    """

    def __init__(self, model, tokenizer, method: PromptMethod, init: dict[str, torch.Tensor] | None = None,
                 backend: str = "auto", grad_checkpointing: bool = False, parameters: PromptParameters | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.backend = backend
        self.grad_checkpointing = bool(grad_checkpointing)
        self.pack_passes = True  # run a slot pass packed with the tokens when it can (hidden)
        self.family = family_of(model)
        self.dims = self.family.dims(model)
        self._check_attention_layers()
        if self.grad_checkpointing:
            check_checkpointable(self.family.decoder_layers(model))
        self.specs = method.tensor_specs()
        self.sink_token_id = sink_token_id(tokenizer) if method.keep_sink else None
        if parameters is None:
            parameters = DirectPrompt({name: init[name] if init is not None else torch.zeros(spec.shape)
                                       for name, spec in self.specs.items()})
        self.trainable = parameters
        with torch.no_grad():
            for name, value in parameters.prompt().items():
                if name not in self.specs or tuple(value.shape) != tuple(self.specs[name].shape):
                    want = tuple(self.specs[name].shape) if name in self.specs else "no such tensor"
                    raise EptkUsageError(f"tensor {name} has shape {tuple(value.shape)}, expected {want}")
        self._hooks = method.install(self)
        use_eptk_attention(model)
        # Only the prompt moves: a model dispatched over devices (--device-map) stays where it was put, and
        # each layer reads the prompt's keys/values on its own device (eptk_attention).
        self.trainable.to(self.device)

    def _check_attention_layers(self) -> None:
        """The registered attention function finds a layer's prefix by the attention module's layer_idx."""
        for l, attn in enumerate(self.family.attention_modules(self.model)):
            if getattr(attn, "layer_idx", None) != l:
                raise EptkUsageError(f"{type(self.model).__name__}: the attention module of decoder layer {l} "
                                     f"does not carry layer_idx {l}")

    def baseline(self) -> "PromptedModel":
        """The same frozen model without a prompt, through the same code path."""
        return PromptedModel(self.model, self.tokenizer, NoPrompt(dims=self.dims), backend=self.backend)

    @property
    def tokens(self) -> int:
        """Trainable prompt vectors per layer (P)."""
        return self.method.tokens

    @property
    def slots(self) -> int:
        """Positions in front of the real tokens: P, plus the sink slot with --keep-sink."""
        return self.method.slots

    # ---- the prompt and its parameters ---------------------------------------------------------
    def prompt(self) -> dict[str, torch.Tensor]:
        """The prompt tensors materialized from the parameters, differentiable in them."""
        return self.trainable.prompt()

    def prompt_tensor(self, name: str) -> torch.Tensor:
        """One prompt tensor, differentiable in the parameters."""
        return self.trainable.tensor(name)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The prompt tensors under their run-directory names (detached, float32, CPU)."""
        with torch.no_grad():
            return {name: value.detach().float().cpu().clone() for name, value in self.prompt().items()}

    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        """The trainable parameters (for a prompt that is its own parameters: the prompt tensors, by name)."""
        return self.trainable.named()

    def parameter_tensors(self) -> dict[str, torch.Tensor]:
        """The trainable parameters' values (detached, float32, CPU): what checkpoints and early stopping keep."""
        return {name: p.detach().float().cpu().clone() for name, p in self.parameters_by_name().items()}

    def load_parameters(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.parameters_by_name().items():
                p.copy_(tensors[name])

    @property
    def reparameterized(self) -> bool:
        """Whether the parameters differ from the prompt tensors (then a run keeps them beside its posterior)."""
        return not isinstance(self.trainable, DirectPrompt)

    @property
    def device(self) -> torch.device:
        """Where inputs enter the model (the input embeddings' execution device) and the prompt lives."""
        return input_device(self.model)

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def prefix(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """layer -> (prefix_k, prefix_v) [Hkv,P,D]: every layer's slot keys/values, built by the method."""
        with self._recompute():
            return self.method.prefix(self)

    def _recompute(self):
        """Gradient checkpointing of the decoder layers for a pass that records gradients, when asked."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return recompute_layers(self.family.decoder_layers(self.model))
        return contextlib.nullcontext()

    # ---- the token pass -----------------------------------------------------------------------
    def positions(self, attention_mask: torch.Tensor, past: int = 0, length: int | None = None):
        """Positions of the real tokens after the slots; left padding shifts them like HF does."""
        pos = self.slots + attention_mask.long().cumsum(-1) - 1
        pos = pos.clamp_min(self.slots)
        # the commands check their inputs against the limit before they run (eptk.context); this guards the API.
        # The widest row of a batch spans every column, so the shape gives the largest position without a sync.
        limit = self.family.max_positions(self.model)
        if limit is not None and self.slots + attention_mask.shape[1] > limit[0]:
            raise EptkUsageError(f"{self.slots} prompt slots + {attention_mask.shape[1]} tokens pass {limit[1]}; "
                                 f"use shorter inputs or fewer slots")
        return pos[:, -length:] if length is not None else pos

    def hidden(self, input_ids, attention_mask=None, prefix=None, past_key_values=None, use_cache=False,
               record_mass=False, needed=None):
        """Last hidden states [B,T,d] of the real tokens (and the pass state): the slot pass and the token pass,
        or both packed in one forward when the slot pass is the method's and nothing asks for the passes apart
        (a given prefix, a cache, the prefix mass). `needed` [B,T] bool: the padding positions whose states the
        caller reads (None: all); the packed forward leaves the others out."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if prefix is None and past_key_values is None and not use_cache and not record_mass and self.pack_passes:
            slots = self.method.slot_pass_inputs(self)
            if slots is not None:
                return self.packed_hidden(input_ids, attention_mask, *slots, needed=needed)
        if prefix is None:
            prefix = self.prefix()
        T = input_ids.shape[1]
        state = TokenPass(prefix=prefix, backend=self.backend, record_mass=record_mass)
        base = self.family.base_model(self.model)
        with active(state), self._recompute():
            out = base(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=self.positions(attention_mask, length=T),
                       use_cache=use_cache, **cache_kwargs(base, past_key_values))
        return out, state

    def packed_hidden(self, input_ids, attention_mask, slots: torch.Tensor, first_layer: int = 0, needed=None):
        """The two passes as one forward over one row: the slot pass's inputs [S,d], then the token rows'
        embeddings, each position at its two-pass position (slots 0..S-1, tokens from S on). Every layer's
        matrix products run once on one row instead of once per pass; the attention splits the row again
        (attention.PackedPass), so this computes the two passes' function. The row holds the real tokens and
        the positions in `needed` [B,T] bool (None: every position): a padding position's state reaches no
        real token (its key is masked), so one no caller reads is not computed; its hidden state is zeros."""
        B, T = input_ids.shape
        S = slots.shape[0]
        padding = None if bool(attention_mask.all()) else attention_mask.bool()
        keep = None if padding is None or needed is None else (padding | needed.to(padding.device)).flatten()
        kept = None if keep is None or bool(keep.all()) else keep.nonzero().squeeze(1)
        state = PackedPass(slots=S, batch=B, length=T, padding=padding, kept=kept, first_layer=first_layer,
                           backend=self.backend, owner=self)
        tokens = state.packed(self.model.get_input_embeddings()(input_ids))  # what the model does with input_ids
        embeds = torch.cat([slots, tokens]).unsqueeze(0)
        positions = state.packed(self.positions(attention_mask, length=T).to(tokens.device))
        positions = torch.cat([torch.arange(S, device=tokens.device), positions]).unsqueeze(0)
        base = self.family.base_model(self.model)
        with active(state), self._recompute():
            # (a padding mask of ones: with none, transformers reads the restarting positions as packed sequences)
            out = base(inputs_embeds=embeds, attention_mask=torch.ones_like(positions), position_ids=positions,
                       use_cache=False)
        out.last_hidden_state = state.unpacked(out.last_hidden_state[0, S:])
        return out, state

    def lm_head(self, hidden):
        return self.family.logits(self.model, hidden)

    def forward(self, input_ids, attention_mask=None, labels=None, prefix=None, past_key_values=None,
                use_cache=False):
        """Logits [B,T,V] of the real tokens; with labels, the mean answer loss (LM head at label
        positions only) and `loss_sum` / `tokens` for callers that normalize over a larger batch."""
        needed = None if labels is None else answer_positions(labels)
        out, _ = self.hidden(input_ids, attention_mask, prefix, past_key_values, use_cache, needed=needed)
        hidden = out.last_hidden_state
        if labels is None:
            return PromptOutput(logits=self.lm_head(hidden).float(), past_key_values=returned_cache(out))
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
            logits = self.lm_head(out.last_hidden_state[:, -1]).float().to(ids.device)
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
        return self.slot_mass(input_ids, attention_mask)[0]

    @torch.no_grad()
    def slot_mass(self, input_ids, attention_mask) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """(on all slots, on slot 0): layer -> [Hq] mean softmax mass over the real query tokens. Slot 0 is the
        sink with --keep-sink, else the first trained slot."""
        _, state = self.hidden(input_ids, attention_mask, record_mass=True)
        rows = {l: max(state.mass_rows[l], 1.0) for l in state.mass}
        return ({l: state.mass[l] / rows[l] for l in state.mass},
                {l: state.first_slot_mass[l] / rows[l] for l in state.mass})

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


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B,T] bool: the positions whose hidden states the answer loss reads (each predicts the next label)."""
    where = torch.zeros_like(labels, dtype=torch.bool)
    where[:, :-1] = labels[:, 1:] != -100
    return where


def answer_loss_sum(lm_head, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions and their count; the LM head runs only there."""
    targets = labels[:, 1:].to(hidden.device)  # (a dispatched model's last layer may sit elsewhere)
    where = targets != -100
    picked = hidden[:, :-1][where]
    if picked.shape[0] == 0:
        return hidden.sum() * 0.0, 0
    logits = lm_head(picked).float()
    return nn.functional.cross_entropy(logits, targets[where], reduction="sum"), int(picked.shape[0])


def text_keys_values(model, tokenizer, ids) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (key, value) [Hkv,T,D] (float32, CPU) of the frozen model over the tokens `ids` at positions
    0..T-1: a soft prompt of their embeddings run through the slot pass, which is the text in front of the real
    tokens (the K/V a `text:` prior starts a prefix from)."""
    from .methods.soft import SoftPrompt

    family = family_of(model)
    embeddings = family.token_embeddings(model)[torch.as_tensor(list(ids))]
    method = SoftPrompt(len(ids), family.dims(model))
    prompted = PromptedModel(model, tokenizer, method, {"soft": embeddings}, backend="torch")
    try:
        with torch.no_grad():
            return {l: (k.float().cpu(), v.float().cpu()) for l, (k, v) in prompted.prefix().items()}
    finally:
        prompted.remove_hooks()
