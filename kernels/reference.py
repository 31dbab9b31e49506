"""PyTorch references for every eptk kernel.

One reference per kernel, shared by the CPU path, the tests and the benchmarks: the Triton
kernels must compute exactly these functions (outputs and gradients).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def prefix_attention_reference(q, k, v, prefix_k, prefix_v, *, key_padding_mask=None,
                               scale=None, return_prefix_mass=False):
    """Attention of q over [shared prefix ; sequence], the expand + cat + materialized-mask path.

    q [B,Hq,T,D]; k, v [B,Hkv,S,D] (S >= T); prefix_k, prefix_v [Hkv,P,D] shared by the batch;
    key_padding_mask [B,S] bool (True = real token). Query i sits at sequence position S-T+i and
    sees every prefix key and the real sequence keys j <= S-T+i. Softmax runs in float32 (float64
    for float64 inputs).
    Returns out [B,Hq,T,D] (dtype of q) and, if asked, prefix_mass [B,Hq,T] float32.
    """
    B, Hq, T, D = q.shape
    Hkv, S, P = k.shape[1], k.shape[2], prefix_k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"query heads {Hq} must be a multiple of key/value heads {Hkv}")
    if S < T:
        raise ValueError(f"sequence keys S={S} must be at least the queries T={T}")
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 softmax, float64 stays float64

    keys = torch.cat([prefix_k.unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
    values = torch.cat([prefix_v.unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)

    rows = torch.arange(T, device=q.device).unsqueeze(1) + (S - T)
    cols = torch.arange(S, device=q.device).unsqueeze(0)
    visible = (cols <= rows).unsqueeze(0).expand(B, T, S)                       # [B,T,S]
    if key_padding_mask is not None:
        visible = visible & key_padding_mask.bool().unsqueeze(1)
    visible = torch.cat([visible.new_ones(B, T, P), visible], dim=2).unsqueeze(1)  # [B,1,T,P+S]

    if not return_prefix_mass and (P > 0 or key_padding_mask is None):
        # Every row sees a key (the prefix, or its own diagonal): the fused SDPA path computes the same
        # function as the explicit softmax below, with its float32 accumulation, faster on the CPU.
        out = torch.nn.functional.scaled_dot_product_attention(
            q.to(acc), keys.to(acc), values.to(acc), attn_mask=visible, scale=scale)
        return out.to(q.dtype)
    scores = torch.matmul(q.to(acc), keys.to(acc).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A row that sees no key at all (P = 0 and fully padded) gets zeros, not NaN.
    probs = torch.nan_to_num(probs, nan=0.0)
    out = torch.matmul(probs, values.to(acc)).to(q.dtype)
    if not return_prefix_mass:
        return out
    return out, probs[..., :P].sum(-1)


@dataclass
class CaptureStats:
    """Statistics of one batch of hidden states over its real tokens."""
    pooled: torch.Tensor  # [B,d] mean over each sequence's real tokens (zeros where none)
    count: torch.Tensor   # [] number of real tokens
    sum: torch.Tensor     # [d] sum of real-token vectors
    gram: torch.Tensor    # [d,d] sum of x x^T over real tokens


def capture_stats_reference(hidden, mask):
    """hidden [B,T,d] (any float dtype), mask [B,T] bool -> CaptureStats in float32."""
    x = hidden.float()
    m = mask.to(x.dtype).unsqueeze(-1)            # [B,T,1]
    xm = x * m
    per_seq = m.sum(1)                            # [B,1]
    pooled = xm.sum(1) / per_seq.clamp_min(1.0)
    flat = xm.reshape(-1, x.shape[-1])
    return CaptureStats(pooled=pooled, count=m.sum(), sum=flat.sum(0), gram=flat.T @ flat)
