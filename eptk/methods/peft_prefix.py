"""PEFT's PREFIX_TUNING layout: every layer's slot keys/values in one `prompt_embeddings` tensor.

`prompt_embeddings` [P, L*2*Hkv*D] holds every layer's slot keys/values. PEFT
(`PeftModel.get_prompt`, 0.13 .. 0.21 at least) views it as [B, P, L*2, Hkv, D], permutes to
[L*2, B, Hkv, P, D] and hands layer l the pair (2l, 2l+1) = (key, value) as its cache, used as-is (no
rotation), so

    prompt_embeddings[p, ((l*2 + j)*Hkv + h)*D + d] = (key if j == 0 else value)[l][h, p, d]

with token_dim = Hkv*D and num_attention_heads = Hkv (PEFT's own GQA convention since 0.12). Slot keys
are already rotated at positions 0..P-1 and PEFT places the real tokens after a P-long cache, at
positions P.., so the layout is exact whenever every layer has slot keys/values.
"""
from __future__ import annotations

import torch

from ..errors import EptkUsageError


def pack_prefix(kv: dict[int, tuple[torch.Tensor, torch.Tensor]], num_layers: int) -> torch.Tensor:
    """layer -> (key, value) [Hkv,P,D] for every layer 0..L-1  ->  PEFT's [P, L*2*Hkv*D]."""
    missing = [l for l in range(num_layers) if l not in kv]
    if missing:
        raise EptkUsageError(f"layers {missing} have no prompt keys/values; PEFT prefix tuning needs every layer")
    stacked = torch.stack([torch.stack([kv[l][0], kv[l][1]]) for l in range(num_layers)])  # [L,2,Hkv,P,D]
    P = stacked.shape[3]
    return stacked.detach().float().cpu().permute(3, 0, 1, 2, 4).reshape(P, -1).contiguous()


def unpack_prefix(flat: torch.Tensor, num_layers: int, kv_heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """PEFT's [P, L*2*Hkv*D]  ->  {"prefix.<l>.key"/"prefix.<l>.value": [Hkv,P,D]}."""
    P = flat.shape[0]
    per = flat.float().reshape(P, num_layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)  # [L,2,Hkv,P,D]
    out = {}
    for l in range(num_layers):
        out[f"prefix.{l}.key"] = per[l, 0].contiguous().clone()
        out[f"prefix.{l}.value"] = per[l, 1].contiguous().clone()
    return out


def prefix_tuning_fields(dims: dict) -> dict:
    """The PREFIX_TUNING adapter-config fields for a model of these dims."""
    token_dim = dims["num_kv_heads"] * dims["head_dim"]
    return {"peft_type": "PREFIX_TUNING", "token_dim": token_dim, "num_attention_heads": dims["num_kv_heads"],
            "num_layers": dims["num_layers"], "encoder_hidden_size": token_dim, "prefix_projection": False}


def prefix_adapter(prompted) -> tuple[torch.Tensor, dict]:
    """A prompted model's slot keys/values at every layer as PREFIX_TUNING (weight, config fields)."""
    with torch.no_grad():
        weight = pack_prefix(prompted.prefix(), prompted.dims["num_layers"])
    return weight, prefix_tuning_fields(prompted.dims)
