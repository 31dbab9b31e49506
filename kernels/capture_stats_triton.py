"""Activation statistics of one batch in Triton: per-sequence means, token count, Σx and Σxxᵀ.

Computes exactly `capture_stats_reference` (kernels/reference.py) from one pass over hidden [B,T,d]
in its own dtype and layout (any strides), without materializing the masked or upcast copy.

Layout. The Gram matrix is a masked matrix product XᵀX over the real-token rows. One program owns
one (d_i, d_j) tile of it, i ≤ j (the upper triangle; each tile is stored twice, at (i, j) and
mirrored at (j, i)), and walks the rows of its sequences in BLOCK_T chunks: it loads the two column
panels of a chunk with the token mask fused into the load (padding and BOS rows read as 0) and
accumulates panelᵢᵀ·panelⱼ with tl.dot in float32. float32 inputs use exact IEEE products (no
TF32), so the interpreter and the GPU agree with a float64 reference to float32 rounding;
fp16/bf16 panels go to tl.dot as they are, since their products are exact in the float32
accumulator (this equals upcasting first, at tensor-core speed).

The diagonal programs (i = j) also sum their panel over each sequence's rows: that is Σx of the
sequence for columns i, from which the host forms the pooled means and the total Σx ([B,d], cheap).
Rows are visited sequence by sequence so those sums need no atomics; a chunk whose mask is all
padding is skipped. When the tiles alone do not fill the GPU (d up to ~1500) the sequences are
split over a third grid axis and the partial Gram matrices are summed by torch (deterministic).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._interpreter import built_interpreted, interpreter_shims
from .reference import CaptureStats


def _interpreting() -> bool:
    # How this module's kernels were built (see _interpreter.kernel_module), not the env var now.
    return INTERPRETED


@triton.jit
def _capture_stats_kernel(x_ptr, mask_ptr, gram_ptr, seqsum_ptr,
                          B, T, d, seqs_per_split,
                          stride_b, stride_t, stride_d,
                          BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    split = tl.program_id(2)
    if pid_j < pid_i:
        return
    cols_i = pid_i * BLOCK_D + tl.arange(0, BLOCK_D)
    cols_j = pid_j * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_i = cols_i < d
    ok_j = cols_j < d
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for s in range(0, seqs_per_split):
        b = split * seqs_per_split + s
        # Scalar conditions enter block masks as bounds (tl.where), never as `block & scalar_bool`:
        # Triton 3.9's interpreter splats a scalar bool to int32 and then refuses it as a mask.
        n_rows = tl.where(b < B, T, 0)                      # a sequence past the batch has none
        n_sums = tl.where((b < B) & (pid_i == pid_j), d, 0)  # only diagonal tiles store Σx
        b64 = b.to(tl.int64)
        seq_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            real = tl.load(mask_ptr + b64 * T + t, mask=t < n_rows, other=0) != 0
            if tl.max(real.to(tl.int32), axis=0) > 0:
                rows = x_ptr + b64 * stride_b + t.to(tl.int64)[:, None] * stride_t
                xi = tl.load(rows + cols_i[None, :] * stride_d, mask=real[:, None] & ok_i[None, :], other=0.0)
                xj = tl.load(rows + cols_j[None, :] * stride_d, mask=real[:, None] & ok_j[None, :], other=0.0)
                if IEEE:
                    xi = xi.to(tl.float32)
                    acc = tl.dot(tl.trans(xi), xj.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(tl.trans(xi), xj, acc)
                    xi = xi.to(tl.float32)
                seq_sum += tl.sum(xi, axis=0)
        tl.store(seqsum_ptr + b64 * d + cols_i, seq_sum, mask=cols_i < n_sums)
    base = gram_ptr + split.to(tl.int64) * d * d
    both = ok_i[:, None] & ok_j[None, :]
    tl.store(base + cols_i[:, None] * d + cols_j[None, :], acc, mask=both)
    tl.store(base + cols_j[None, :] * d + cols_i[:, None], acc, mask=both)  # the mirrored tile


INTERPRETED = built_interpreted(_capture_stats_kernel)  # Triton chose when it decorated it


def _blocks(T: int, d: int) -> tuple[int, int]:
    block_t = min(64, max(16, triton.next_power_of_2(max(T, 1))))
    block_d = min(64, max(16, triton.next_power_of_2(max(d, 1))))
    return block_t, block_d


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(B: int, tiles: int, device: torch.device) -> int:
    """Sequence splits so that the grid has about two programs per SM (1 in the interpreter)."""
    if _interpreting() or device.type != "cuda":
        return 1
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    upper = tiles * (tiles + 1) // 2
    return max(1, min(B, -(-2 * sms // upper)))


def capture_stats_triton(hidden: torch.Tensor, mask: torch.Tensor) -> CaptureStats:
    """hidden [B,T,d] (any float dtype, any strides), mask [B,T] (nonzero = real) -> CaptureStats, float32."""
    if hidden.dim() != 3 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"capture_stats needs hidden [B,T,d] and mask [B,T]; got {tuple(hidden.shape)} "
                         f"and {tuple(mask.shape)}")
    B, T, d = hidden.shape
    device = hidden.device
    real = (mask != 0).to(device)
    per_seq = real.sum(1).to(torch.float32)                       # [B]
    if B * T * d == 0:
        zeros = torch.zeros(d, dtype=torch.float32, device=device)
        return CaptureStats(pooled=torch.zeros(B, d, dtype=torch.float32, device=device), count=per_seq.sum(),
                            sum=zeros, gram=torch.zeros(d, d, dtype=torch.float32, device=device))
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        hidden = hidden.float()
    if _interpreting():
        interpreter_shims()
    block_t, block_d = _blocks(T, d)
    tiles = triton.cdiv(d, block_d)
    splits = _splits(B, tiles, device)
    per_split = triton.cdiv(B, splits)
    # the interpreter's bf16 tl.dot is wrong (Triton 3.6): upcast there; on the GPU it is exact
    upcast = hidden.dtype == torch.float32 or (_interpreting() and hidden.dtype == torch.bfloat16)
    gram = torch.empty((splits, d, d), dtype=torch.float32, device=device)
    seq_sum = torch.empty((B, d), dtype=torch.float32, device=device)   # every entry written by a diagonal tile
    _capture_stats_kernel[(tiles, tiles, splits)](
        hidden, real.to(torch.uint8).contiguous(), gram, seq_sum,
        B, T, d, per_split, hidden.stride(0), hidden.stride(1), hidden.stride(2),
        BLOCK_T=block_t, BLOCK_D=block_d, IEEE=upcast,
        num_warps=4, num_stages=2)
    gram = gram[0] if splits == 1 else gram.sum(0)
    pooled = seq_sum / per_seq.clamp_min(1.0)[:, None]
    return CaptureStats(pooled=pooled, count=per_seq.sum(), sum=seq_sum.sum(0), gram=gram)
