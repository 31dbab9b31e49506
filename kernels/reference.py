"""PyTorch references for every eptk kernel.

One reference per kernel, shared by the CPU path, the tests and the benchmarks: the Triton
kernels must compute exactly these functions (outputs and gradients).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def prefix_attention_reference(q, k, v, prefix_k, prefix_v, *, key_padding_mask=None,
                               scale=None, return_prefix_mass=False, window=None, softcap=None):
    """Attention of q over [shared prefix ; sequence], the expand + cat + materialized-mask path.

    q [B,Hq,T,D]; k, v [B,Hkv,S,D] (S >= T); prefix_k, prefix_v [Hkv,P,D] shared by the batch;
    key_padding_mask [B,S] bool (True = real token). Query i sits at sequence position S-T+i and
    sees every prefix key and the real sequence keys j <= S-T+i. Softmax runs in float32 (float64
    for float64 inputs).
    window (HF's sliding window): positions run over [prefix ; sequence] (prefix key p at p,
    sequence key j at P+j, query i at P+S-T+i, left padding counted) and a query sees only keys
    less than `window` positions back, as in the full forward over [slots ; tokens].
    softcap (Gemma-2): scores become softcap * tanh(scores / softcap), before masking.
    Returns out [B,Hq,T,D] (dtype of q) and, if asked, prefix_mass [B,Hq,T] float32.
    """
    B, Hq, T, D = q.shape
    Hkv, S, P = k.shape[1], k.shape[2], prefix_k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"query heads {Hq} must be a multiple of key/value heads {Hkv}")
    if S < T:
        raise ValueError(f"sequence keys S={S} must be at least the queries T={T}")
    check_window_softcap(window, softcap)
    if window is not None and window >= P + S:
        window = None  # no key is that far back
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 softmax, float64 stays float64

    keys, values = k, v  # no prefix: the sequence's own, not a copy (an empty prefix that asks for its gradient
    if P or prefix_k.requires_grad or prefix_v.requires_grad:  # still gets one, empty)
        keys = torch.cat([prefix_k.unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
        values = torch.cat([prefix_v.unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)

    rows = torch.arange(T, device=q.device).unsqueeze(1) + (P + S - T)   # query positions
    cols = torch.arange(P + S, device=q.device).unsqueeze(0)              # key positions
    visible = cols <= rows                                                # every prefix key too
    if window is not None:
        visible = visible & (rows - cols < window)
    visible = visible.unsqueeze(0).expand(B, T, P + S)                    # [B,T,P+S]
    if key_padding_mask is not None:
        real = torch.cat([key_padding_mask.new_ones(B, P), key_padding_mask], 1).bool()
        visible = visible & real.unsqueeze(1)
    visible = visible.unsqueeze(1)                                        # [B,1,T,P+S]

    # Every row sees a key (the prefix, or its own diagonal; a window always keeps the diagonal).
    sees_a_key = key_padding_mask is None or (P > 0 and window is None)
    if not return_prefix_mass and softcap is None and sees_a_key:
        # The fused SDPA path computes the same function as the explicit softmax below, with its
        # float32 accumulation, faster on the CPU.
        # On the CPU, enable_gqa: each key/value head serves its group of query heads inside the kernel, the
        # same function as repeating them first, without the copies and their backward sums (the same bits at
        # SmolLM2's short shapes; at 540 tokens with 4 query heads a group, key/value gradients differ by up to
        # 6e-7 in float32: the group's sum in another order).
        # Elsewhere the heads are repeated as before, so that a GPU's fused kernels (not all of which take
        # enable_gqa with a mask) and the benchmarks' baseline stay what they were.
        inside = q.device.type == "cpu"
        if not inside:
            keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        # With nothing but causality to mask (the slot pass: no prefix, padding or window) the kernel's own causal
        # mask is the same mask, built without a tensor.
        causal = P == 0 and S == T and key_padding_mask is None and window is None
        out = torch.nn.functional.scaled_dot_product_attention(
            q.to(acc), keys.to(acc), values.to(acc), attn_mask=None if causal else visible, is_causal=causal,
            scale=scale, enable_gqa=inside and group > 1)
        return out.to(q.dtype)
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)
    scores = torch.matmul(q.to(acc), keys.to(acc).transpose(-1, -2)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A row that sees no key at all (every key padded or outside its window) gets zeros, not NaN.
    probs = torch.nan_to_num(probs, nan=0.0)
    out = torch.matmul(probs, values.to(acc)).to(q.dtype)
    if not return_prefix_mass:
        return out
    return out, probs[..., :P].sum(-1)


def check_window_softcap(window, softcap) -> None:
    """The checks both prefix-attention paths make on `window` and `softcap`."""
    if window is not None and (isinstance(window, bool) or int(window) != window or window < 1):
        raise ValueError(f"window must be a positive integer or None; got {window!r}")
    if softcap is not None and not (float(softcap) > 0 and math.isfinite(softcap)):
        raise ValueError(f"softcap must be a positive finite number or None; got {softcap!r}")


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
