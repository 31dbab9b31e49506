"""Where prompt tensors live: the activation-layer index, the four spaces, and the one `--layers` parser.

Layer index l (prompt tensors, `--layers`, statistics files and analyze all use it):
  0      token embeddings = the input of decoder layer 0
  l      the hidden state entering decoder layer l
  L      the output of the last decoder layer, before the final norm (capture only)
A prompt tensor lives in one space at its layer: `embedding` (slot inputs to layer 0), `activation`
(slot states entering layer l), or `key` / `value` (layer l's attention keys and values).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import EptkUsageError

SPACES = ("embedding", "activation", "key", "value")
RESIDUAL = ("embedding", "activation")  # vectors of the residual stream: comparable with captured activations
KEY_VALUE = ("key", "value")             # attention keys/values: one row per slot, its heads concatenated
CAPTURE_SPACES = ("activation", *KEY_VALUE)  # what `eptk capture --space` keeps statistics of


def capture_space(space: str) -> str:
    """The space whose captured statistics describe a tensor of `space`: `activation` for residual-stream vectors
    (layer 0 of the activation statistics is the token embeddings), else `key` or `value`."""
    return "activation" if space in RESIDUAL else space


def slot_rows(tensor):
    """A prompt tensor as one row per slot: [P, d] as is, keys/values [Hkv, P, D] as [P, Hkv*D] (the heads of a
    slot concatenated, the layout captured keys/values and analyze use)."""
    return tensor.permute(1, 0, 2).reshape(tensor.shape[1], -1) if tensor.ndim == 3 else tensor


def from_slot_rows(rows, shape: tuple):
    """`slot_rows`'s inverse: rows [P, Hkv*D] back to `shape` [Hkv, P, D] ([P, d] stays as is)."""
    if len(shape) != 3:
        return rows.reshape(shape)
    heads, slots, width = shape
    return rows.reshape(slots, heads, width).permute(1, 0, 2).contiguous()


@dataclass(frozen=True)
class TensorSpec:
    """One trainable prompt tensor as its method declares it (and as priors and analyze see it)."""
    name: str      # run-directory name: soft, deep.<l>, prefix.<l>.key, prefix.<l>.value
    shape: tuple
    layer: int     # activation layer: 0 = token embeddings, l = hidden state entering decoder layer l
    space: str = ""  # one of SPACES; empty: embedding at layer 0, activation above

    def __post_init__(self):
        if not self.space:
            object.__setattr__(self, "space", "embedding" if self.layer == 0 else "activation")
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; valid: {', '.join(SPACES)}")

    @property
    def residual(self) -> bool:
        """Whether the tensor's rows are residual-stream vectors at its layer (not keys or values)."""
        return self.space in RESIDUAL


def check_layer_spec(spec: str, *, lowest: int = 1) -> None:
    """The grammar of a `--layers` spec, checked before a model says how many layers there are (the range
    is checked by `parse_layers` once it does)."""
    spec = str(spec or "").strip()
    valid = f"all, last:N (N >= 1), or a comma list of layers >= {lowest}"
    if spec == "all":
        return
    try:
        if spec.startswith("last:"):
            ok = int(spec[5:]) >= 1
        else:
            layers = [int(part) for part in spec.split(",") if part.strip()]
            ok = bool(layers) and min(layers) >= lowest
    except ValueError:
        ok = False
    if not ok:
        raise EptkUsageError(f"bad --layers {spec!r}; valid: {valid}")


def parse_layers(spec: str, num_layers: int, *, lowest: int = 1, highest: int | None = None) -> list[int]:
    """`all`, `last:N` or a comma list like `4,8,12` -> sorted activation-layer indices in lowest..highest.

    `last:N` is the input of the last N decoder layers, L-N..L-1, wherever layers are chosen (tune's deep
    layers and capture alike); `all` is lowest..highest; the last layer's output L is chosen by naming it
    (or by `all` where it is allowed). Tune's deep layers are 1..L-1, capture's 0..L.
    """
    spec = str(spec or "").strip()
    highest = num_layers - 1 if highest is None else highest
    valid = (f"all, last:N (1..{num_layers - lowest}), or a comma list of layers in {lowest}..{highest} "
             f"(0 = token embeddings, l = the input of decoder layer l, {num_layers} = the last layer's output)")
    if spec == "all":
        return list(range(lowest, highest + 1))
    if spec.startswith("last:"):
        try:
            n = int(spec[5:])
        except ValueError:
            raise EptkUsageError(f"bad --layers {spec!r}; valid: {valid}") from None
        if not 1 <= n <= num_layers - lowest:
            raise EptkUsageError(f"--layers last:{n} out of range; valid: {valid}")
        return list(range(num_layers - n, num_layers))
    try:
        layers = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise EptkUsageError(f"bad --layers {spec!r}; valid: {valid}") from None
    bad = [l for l in layers if not lowest <= l <= highest]
    if not layers or bad:
        raise EptkUsageError(f"--layers {spec!r}: layer {bad[0] if bad else '?'} out of range; valid: {valid}")
    return layers
