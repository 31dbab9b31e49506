"""`prefix`: raw per-layer key/value parameters (prefix tuning / P-Tuning v2), no slot pass.

PEFT: PREFIX_TUNING (the layout is in peft_prefix.py).
"""
from __future__ import annotations

from ..errors import EptkUsageError
from ..spaces import TensorSpec
from .base import PromptMethod, register_method
from .peft_prefix import prefix_adapter, unpack_prefix


@register_method
class PrefixPrompt(PromptMethod):
    name = "prefix"
    reports_prefix_mass = True
    peft_type = "PREFIX_TUNING"
    patterns = {r"prefix\.(\d+)\.key": "key", r"prefix\.(\d+)\.value": "value"}

    def tensor_specs(self):
        shape = (self.dims["num_kv_heads"], self.tokens, self.dims["head_dim"])
        specs = {}
        for l in range(self.dims["num_layers"]):
            for part in ("key", "value"):
                specs[f"prefix.{l}.{part}"] = TensorSpec(f"prefix.{l}.{part}", shape, l, part)
        return specs

    def prefix(self, prompted):
        prompt = prompted.prompt()
        return {l: (prompt[f"prefix.{l}.key"], prompt[f"prefix.{l}.value"]) for l in range(self.dims["num_layers"])}

    def to_peft(self, source):
        return prefix_adapter(source.prompted())

    @classmethod
    def from_peft(cls, adapter, weight, dims, where, model):
        L, Hkv, D = dims["num_layers"], dims["num_kv_heads"], dims["head_dim"]
        heads = int(adapter.get("num_attention_heads") or Hkv)
        token_dim = int(adapter.get("token_dim") or Hkv * D)
        layers = int(adapter.get("num_layers") or L)
        if (layers, heads, token_dim) != (L, Hkv, Hkv * D) or weight.shape[1] != L * 2 * Hkv * D:
            raise EptkUsageError(f"{where}: prefix of {layers} layers x {heads} heads x token_dim {token_dim} "
                                 f"({tuple(weight.shape)}) does not match model {model!r} ({L} layers x {Hkv} kv heads "
                                 f"x head_dim {D})")
        return unpack_prefix(weight, L, Hkv, D)
