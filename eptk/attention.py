"""The registered attention function that injects prompt slots into a frozen HF model.

Every attention layer of a model set to the "eptk" implementation calls `eptk_attention`. Outside
a prompt context it is plain causal attention with padding. Inside one it either records the
slots' keys/values (the slot pass) or lets the real tokens read the slots' keys/values as a
shared prefix (the token pass) through `eptk.kernels.prefix_attention`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field

import torch

from eptk.kernels import prefix_attention

ATTN_NAME = "eptk"


@dataclass
class SlotPass:
    """Slot-pass state: layers from `first_layer` on record their slot keys/values."""
    first_layer: int = 0
    kv: dict = field(default_factory=dict)  # layer -> (k [Hkv,P,D], v [Hkv,P,D])
    backend: str = "auto"
    owner: object = None  # the prompted model running this pass (its method's hooks act only for it)

    def for_recompute(self) -> "SlotPass":
        """The state a checkpointed layer recomputes under in backward: the same pass, whose keys/values
        go to a throwaway dict (the ones the token pass read stay in place)."""
        return dataclasses.replace(self, kv={})


@dataclass
class TokenPass:
    """Token-pass state: layer -> (prefix_k, prefix_v) [Hkv,P,D] read by every sequence."""
    prefix: dict
    backend: str = "auto"
    record_mass: bool = False
    mass: dict = field(default_factory=dict)  # layer -> [Hq] sum of prefix mass over real queries
    first_slot_mass: dict = field(default_factory=dict)  # layer -> [Hq] the same for prefix slot 0 alone
    mass_rows: dict = field(default_factory=dict)  # layer -> number of real query rows summed

    def for_recompute(self) -> "TokenPass":
        """The same prefix without recording the prefix mass again (see SlotPass.for_recompute)."""
        return dataclasses.replace(self, record_mass=False, mass={}, mass_rows={})


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("eptk_prompt_pass", default=None)


def current_pass():
    """The SlotPass or TokenPass running now, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def active(state):
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def eptk_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention interface: q [B,Hq,T,D], k/v [B,Hkv,S,D]; returns ([B,T,Hq,D], None)."""
    state = _ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    padding = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    if attention_mask is not None and padding is None:
        raise RuntimeError("eptk attention expects a 2-D padding mask from its registered mask function")
    empty = key.new_zeros(key.shape[1], 0, key.shape[3])
    prefix_k = prefix_v = empty
    backend = "auto"
    if isinstance(state, SlotPass):
        backend = state.backend
        if layer >= state.first_layer:
            state.kv[layer] = (key[0], value[0])
    elif isinstance(state, TokenPass):
        backend = state.backend
        if layer in state.prefix:
            prefix_k, prefix_v = state.prefix[layer]
            # (with --device-map a layer may sit on another device than the prompt parameters)
            prefix_k, prefix_v = prefix_k.to(key.device, key.dtype), prefix_v.to(value.device, value.dtype)
    want_mass = isinstance(state, TokenPass) and state.record_mass
    result = prefix_attention(query, key, value, prefix_k, prefix_v, key_padding_mask=padding, scale=scaling,
                              return_prefix_mass=want_mass, backend=backend)
    if want_mass:
        out, mass = result
        first = first_slot_mass(query, key, prefix_k, padding, scaling)
        _accumulate_mass(state, layer, {"mass": mass.detach(), "first_slot_mass": first}, padding, query.shape[2])
    else:
        out = result
    return out.transpose(1, 2).contiguous(), None


@torch.no_grad()
def first_slot_mass(query, key, prefix_k, padding, scale) -> torch.Tensor:
    """[B,Hq,T] softmax probability on prefix slot 0, by the explicit-softmax reference: with the value of slot 0
    set to a unit vector e_0 and every other value to zero, the attention output's first coordinate is exactly
    that probability (the reference's own causal and padding masks apply)."""
    from eptk.kernels import prefix_attention_reference

    B, Hkv, S, D = key.shape
    if prefix_k.shape[1] == 0:
        return query.new_zeros(query.shape[:3], dtype=torch.float32)
    values = key.new_zeros(B, Hkv, S, D)
    prefix_values = prefix_k.new_zeros(prefix_k.shape)
    prefix_values[:, 0, 0] = 1.0
    out, _ = prefix_attention_reference(query, key, values, prefix_k, prefix_values, key_padding_mask=padding,
                                        scale=scale, return_prefix_mass=True)
    return out[..., 0].float()


def _accumulate_mass(state: TokenPass, layer: int, masses: dict, padding, queries: int) -> None:
    """Sum each prefix mass [B,Hq,T] (by its TokenPass field name) over real query rows, per head."""
    some = next(iter(masses.values()))
    if padding is not None:
        real = padding[:, -queries:].to(some.dtype)          # [B,T]
    else:
        real = some.new_ones(some.shape[0], queries)
    for name, mass in masses.items():
        totals = getattr(state, name)
        totals[layer] = totals.get(layer, 0) + (mass * real.unsqueeze(1)).sum(dim=(0, 2)).cpu()
    state.mass_rows[layer] = state.mass_rows.get(layer, 0) + float(real.sum())


def eptk_mask(batch_size, q_length=None, kv_length=None, q_offset=0, kv_offset=0, mask_function=None,
              attention_mask=None, **kwargs):
    """Mask interface: hand the 2-D padding mask [B,S] (or None) through; causality is the kernel's."""
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:].bool() if kv_length else attention_mask.bool()
    return None if bool(attention_mask.all()) else attention_mask


def register() -> None:
    """Register the attention and mask functions under the name "eptk" (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, eptk_attention)
    AttentionMaskInterface.register(ATTN_NAME, eptk_mask)


def use_eptk_attention(model) -> None:
    """Register the functions (on first use, so that importing eptk does not import transformers) and
    set the model's attention implementation to them."""
    register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTN_NAME)
    else:  # older transformers
        model.config._attn_implementation = ATTN_NAME
