"""The registered attention function that injects prompt slots into a frozen HF model.

Every attention layer of a model set to the "eptk" implementation calls `eptk_attention`. Outside
a prompt context it is plain causal attention with padding. Inside one it either records the
slots' keys/values (the slot pass), lets the real tokens read the slots' keys/values as a
shared prefix (the token pass), or does both at once on one packed row (the packed pass), through
`eptk.kernels.prefix_attention`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field

import torch

from eptk.kernels import prefix_attention

from .errors import EptkUsageError

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


@dataclass
class PackedPass:
    """Both passes in one forward over one row: the S slots, then the kept positions of the B token rows of T
    (row by row; `kept` [K] their indices in the flattened [B*T], None: all of them). Each layer's attention
    splits the row again: the slots attend causally among themselves and every token row reads the slots'
    keys/values as its shared prefix from `first_layer` on, with its padding `padding` [B,T] bool (or None):
    the two passes' attention, call for call. A position left out is one whose state no kept position reads
    (a padding key, masked for every query) and no caller asked for."""
    slots: int
    batch: int
    length: int
    padding: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    first_layer: int = 0
    backend: str = "auto"
    owner: object = None  # the prompted model running this pass (its method's hooks act only for it)

    def for_recompute(self) -> "PackedPass":
        return self  # records nothing: a recomputation reads the same state

    def packed(self, rows: torch.Tensor) -> torch.Tensor:
        """The token rows [B,T,...] as the packed row holds them: the kept positions [K,...], row by row."""
        flat = rows.flatten(0, 1)  # (kept moves to the tensor's device: a dispatched model's layers may sit apart)
        return flat if self.kept is None else flat.index_select(0, self.kept.to(flat.device))

    def unpacked(self, packed: torch.Tensor) -> torch.Tensor:
        """`packed`'s inverse: the kept positions [K,...] back in their rows [B,T,...], zeros where left out."""
        if self.kept is not None:
            packed = packed.new_zeros(self.batch * self.length, *packed.shape[1:]).index_copy(
                0, self.kept.to(packed.device), packed)
        return packed.unflatten(0, (self.batch, self.length))


@dataclass
class RecordPass:
    """Plain attention (no prompt) that hands each layer's keys/values [B,Hkv,S,D] (after RoPE, what a prefix's
    keys/values are) to `record(layer, key, value)`: how `eptk capture` reads a task's keys/values."""
    record: object

    def for_recompute(self) -> "RecordPass":
        return self


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("eptk_prompt_pass", default=None)


def current_pass():
    """The SlotPass, TokenPass, PackedPass or RecordPass running now, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def active(state):
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


# Keyword arguments transformers passes that change nothing here: the positions are already rotated
# into the keys (flash attention's packed-sequence path is the only reader), caching is the model's, and
# output_hidden_states (handed down to attention by transformers 5.24) asks the model, not the layer, for
# its hidden states.
IGNORED_KWARGS = ("position_ids", "cache_position", "use_cache", "output_hidden_states")


def eptk_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                   softcap=None, **kwargs):
    """HF attention interface: q [B,Hq,T,D], k/v [B,Hkv,S,D]; returns ([B,T,Hq,D], None).

    Honours the layer's `sliding_window` and `softcap` (Gemma-2's attention logit soft-capping); anything
    else that would change the result and that eptk does not implement stops with an error naming it."""
    check_supported(module, attention_mask, dropout, kwargs)
    state = _ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    if isinstance(state, PackedPass):
        return packed_attention(state, layer, query, key, value, scaling, sliding_window, softcap), None
    padding = attention_mask
    empty = key.new_zeros(key.shape[1], 0, key.shape[3])
    prefix_k = prefix_v = empty
    backend = "auto"
    if isinstance(state, SlotPass):
        backend = state.backend
        if layer >= state.first_layer:
            state.kv[layer] = (key[0], value[0])
    elif isinstance(state, RecordPass):
        state.record(layer, key, value)
    elif isinstance(state, TokenPass):
        backend = state.backend
        if layer in state.prefix:
            prefix_k, prefix_v = state.prefix[layer]
            # (with --device-map a layer may sit on another device than the prompt parameters)
            prefix_k, prefix_v = prefix_k.to(key.device, key.dtype), prefix_v.to(value.device, value.dtype)
    want_mass = isinstance(state, TokenPass) and state.record_mass
    result = prefix_attention(query, key, value, prefix_k, prefix_v, key_padding_mask=padding, scale=scaling,
                              return_prefix_mass=want_mass, backend=backend, window=sliding_window, softcap=softcap)
    if want_mass:
        out, mass = result
        first = first_slot_mass(query, key, prefix_k, padding, scaling, sliding_window, softcap)
        _accumulate_mass(state, layer, {"mass": mass.detach(), "first_slot_mass": first}, padding, query.shape[2])
    else:
        out = result
    return out.transpose(1, 2).contiguous(), None


def packed_attention(state: PackedPass, layer, query, key, value, scale, window, softcap) -> torch.Tensor:
    """The attention of one packed row q [1,Hq,S+K,D], k/v [1,Hkv,S+K,D] -> [1,S+K,Hq,D]: the slot pass's
    call on the first S positions, the token pass's on the B padded rows, their prefix the slots' keys/values
    as views of k/v (so their gradient reaches the slots' positions in the same backward)."""
    S = state.slots
    # split, not two slices: in backward the two parts' gradients are joined once instead of each being padded
    # to the full row with zeros and then added
    (slot_q, token_q), (slot_k, token_k), (slot_v, token_v) = (x.split([S, x.shape[2] - S], dim=2)
                                                              for x in (query, key, value))
    empty = key.new_zeros(key.shape[1], 0, key.shape[3])
    slot_out = prefix_attention(slot_q, slot_k, slot_v, empty, empty, scale=scale, backend=state.backend,
                                window=window, softcap=softcap)
    prefix_k, prefix_v = (slot_k[0], slot_v[0]) if layer >= state.first_layer else (empty, empty)

    def rows(x):  # the token positions of the row, [1,H,K,D], as the padded rows [B,H,T,D]
        return state.unpacked(x[0].transpose(0, 1)).transpose(1, 2)
    padding = None if state.padding is None else state.padding.to(query.device)
    token_out = prefix_attention(rows(token_q), rows(token_k), rows(token_v), prefix_k, prefix_v,
                                 key_padding_mask=padding, scale=scale, backend=state.backend, window=window,
                                 softcap=softcap)
    return torch.cat([slot_out[0].transpose(0, 1), state.packed(token_out.transpose(1, 2))]).unsqueeze(0)


def check_supported(module, attention_mask, dropout, kwargs) -> None:
    """Stop on what eptk's attention does not compute: it never silently computes something else."""
    unknown = sorted(k for k, v in kwargs.items() if k not in IGNORED_KWARGS and v is not None)
    if unknown:
        raise EptkUsageError(f"{type(module).__name__} passes attention argument(s) eptk does not implement: "
                             f"{', '.join(unknown)}")
    if dropout:
        raise EptkUsageError(f"{type(module).__name__}: attention dropout {dropout} in training mode is not "
                             f"implemented by eptk (set the model's attention dropout to 0 or call .eval())")
    if getattr(module, "is_cross_attention", False):
        raise EptkUsageError(f"{type(module).__name__}: cross-attention is not implemented by eptk")
    if getattr(module, "is_causal", True) is False:
        raise EptkUsageError(f"{type(module).__name__}: bidirectional (non-causal) attention is not implemented by eptk")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise EptkUsageError(f"{type(module).__name__}: a {attention_mask.dim()}-D attention mask (a custom mask or "
                             f"an additive bias such as ALiBi) is not implemented by eptk; it takes 2-D padding masks")


@torch.no_grad()
def first_slot_mass(query, key, prefix_k, padding, scale, window=None, softcap=None) -> torch.Tensor:
    """[B,Hq,T] softmax probability on prefix slot 0, by the explicit-softmax reference: with the value of slot 0
    set to a unit vector e_0 and every other value to zero, the attention output's first coordinate is exactly
    that probability (the reference's own causal, window, soft-cap and padding masks apply)."""
    from eptk.kernels import prefix_attention_reference

    B, Hkv, S, D = key.shape
    if prefix_k.shape[1] == 0:
        return query.new_zeros(query.shape[:3], dtype=torch.float32)
    values = key.new_zeros(B, Hkv, S, D)
    prefix_values = prefix_k.new_zeros(prefix_k.shape)
    prefix_values[:, 0, 0] = 1.0
    out, _ = prefix_attention_reference(query, key, values, prefix_k, prefix_values, key_padding_mask=padding,
                                        scale=scale, return_prefix_mass=True, window=window,
                                        softcap=softcap)
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
              attention_mask=None, local_size=None, device=None, **kwargs):
    """Mask interface: hand the 2-D padding mask [B,S] (or None) through. Causality and the sliding window
    are the kernel's, so the model's mask function must be plain causal (with `local_size`: sliding-window)
    attention; a custom one (bidirectional, block-wise, packed sequences, an or/and overlay) stops here."""
    if mask_function is not None and q_length is not None and kv_length is not None:
        check_mask_function(mask_function, batch_size, q_length, kv_length, q_offset, kv_offset, local_size,
                            device if device is not None else "cpu")
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:].bool() if kv_length else attention_mask.bool()
    return None if bool(attention_mask.all()) else attention_mask


def check_mask_function(mask_function, batch_size, q_length, kv_length, q_offset, kv_offset, window, device) -> None:
    """Evaluate the model's mask function on the (batch, query, key) index grid, as transformers' own mask
    builders do, and compare it with causal attention, within `window` positions when one is given."""
    import torch

    batch = torch.arange(batch_size, device=device).view(-1, 1, 1, 1)
    rows = (torch.arange(q_length, device=device) + q_offset).view(1, 1, -1, 1)
    cols = (torch.arange(kv_length, device=device) + kv_offset).view(1, 1, 1, -1)
    expected = cols <= rows
    if window is not None:
        expected = expected & (rows - cols < window)
    got = torch.as_tensor(mask_function(batch, torch.zeros_like(batch), rows, cols), device=device)
    if not bool((got.bool() == expected).all()):
        kind = f"sliding-window ({window}) causal" if window is not None else "causal"
        name = getattr(mask_function, "__qualname__", type(mask_function).__name__)
        raise EptkUsageError(f"the model's attention mask ({name}) is not plain {kind} attention; eptk does not "
                             f"implement custom mask functions")


def register() -> None:
    """Register the attention and mask functions under the name "eptk" (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, eptk_attention)
    AttentionMaskInterface.register(ATTN_NAME, eptk_mask)


def set_attention_implementation(model, name: str) -> None:
    """Make `model` run attention implementation `name` ("eptk", "eager", "sdpa", ...)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers
        model.config._attn_implementation = name


@contextlib.contextmanager
def attention_implementation(model, name: str):
    """The model runs attention implementation `name` inside (eptk's registered on first use), its own after."""
    previous = getattr(model.config, "_attn_implementation", None)
    if name == ATTN_NAME:
        register()
    set_attention_implementation(model, name)
    try:
        yield
    finally:
        if previous is not None and previous != name:
            set_attention_implementation(model, previous)


def use_eptk_attention(model) -> None:
    """Register the functions (on first use, so that importing eptk does not import transformers) and
    set the model's attention implementation to them."""
    register()
    set_attention_implementation(model, ATTN_NAME)
