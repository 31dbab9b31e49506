"""Fused attention over [shared prefix ; causal sequence] in Triton, forward and backward.

Computes exactly `prefix_attention_reference` (kernels/reference.py) without expanding the prefix
per sequence, repeating K/V per query head, or materializing a mask.

Layout. One program works on the rows of one (batch, kv head): the G = Hq / Hkv query heads of the
group are interleaved, row r = query t = r // G of head kv_head * G + r % G, so a block of rows
reads each K/V tile once for the whole group (decoding T = 1 fills a block with the group's heads).
Query t sits at sequence position S - T + t.

Windows and soft-caps. Positions run over [prefix ; sequence] (prefix key p at p, sequence key j at
P + j, query t at P + S - T + t); with a sliding window W a query sees only keys less than W
positions back. Each program visits only the key blocks some row of it can see: below them nothing
is read, the blocks every row sees whole run unmasked, the window's edge and the diagonal are masked.
A soft-cap c turns the logits into c * tanh(logit / c) before masking; the backward multiplies dS by
1 - tanh^2.

Forward: online softmax in base 2; the prefix keys come first, so the log-sum-exp over the prefix
alone is known after that loop and the prefix mass is exp2(lse_prefix - lse) (one float per row).
Sequence keys below the block's first query position need no causal mask; only the diagonal
blocks are masked, blocks past the last query are never visited. Decoding with few programs
splits the keys over programs (flash-decoding) and merges the partial results in a second kernel.

Backward: delta = rowsum(dO * O); a dK/dV kernel keeps one key block resident and walks the rows
of the group (prefix key blocks walk every row of every query and write a per-batch partial that
torch sums: deterministic, no atomics); a dQ kernel walks the key blocks like the forward.

Configs are autotuned on GPU from short lists (EPTK_AUTOTUNE=0: the first of each list); under
TRITON_INTERPRET=1 the kernels run on CPU with 16 x 16 blocks.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ._interpreter import built_interpreted, interpreter_shims
from .reference import check_window_softcap

LOG2E = 1.4426950408889634
KEYS_PER_SPLIT_ALIGN = 256  # a multiple of every BLOCK_N, so split boundaries are block boundaries


def _interpreting() -> bool:
    # How this module's kernels were built (see _interpreter.kernel_module), not the env var now.
    return INTERPRETED


def _autotuning() -> bool:
    return not _interpreting() and os.environ.get("EPTK_AUTOTUNE", "1") != "0"


# ----------------------------------------------------------------------------- shared helpers


@triton.jit
def _rows_of_group(rows, b, kv_head, Hq, T, G: tl.constexpr):
    """Query index t and the flat offset of (b, head, t) in a contiguous [B, Hq, T] tensor."""
    t = rows // G
    head = kv_head * G + rows % G
    return t, (b * Hq + head) * T + t


@triton.jit
def _log2_sum(m, l):
    """Base-2 log-sum-exp from the running max and sum; -inf where no key was seen."""
    return tl.where(l > 0.0, m + tl.log2(tl.where(l > 0.0, l, 1.0)), float("-inf"))


@triton.jit
def _visible(cols, n_keys, pad_ptr, qpos, window, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
             WINDOW: tl.constexpr):
    """[BLOCK_M, BLOCK_N] (or [1, BLOCK_N]) mask of the keys `cols` each query may see; qpos is
    each query's position counted in this key stream's indices."""
    ok = cols < n_keys
    if HAS_PAD:
        ok = ok & (tl.load(pad_ptr + cols, mask=ok, other=0) != 0)
    ok = ok[None, :]
    if CAUSAL:
        ok = ok & (cols[None, :] <= qpos[:, None])
    if WINDOW:
        ok = ok & (cols[None, :] > qpos[:, None] - window)
    return ok


@triton.jit
def _tanh(x):
    # Triton has no portable tanh (libdevice differs per backend; the interpreter has none).
    # Exact at +-inf; elsewhere off by about a float32 ulp of 1 (absolute).
    return 1.0 - 2.0 / (tl.math.exp2(x * 2.8853900817779268) + 1.0)  # 2 * log2(e)


@triton.jit
def _key_ranges(t_first, t_last, S, T, P, window, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr):
    """Which keys queries t_first..t_last see, as block-aligned bounds of the sequence keys:
    [lo, edge) the window's edge (masked), [edge, full) seen by every row (unmasked), [full, hi)
    the causal diagonal (masked); and p_lo, the first prefix key any of them sees."""
    full = (S - T + t_first + 1) // BLOCK_N * BLOCK_N
    hi = S - T + t_last + 1
    lo = full * 0
    edge = full * 0
    p_lo = full * 0
    if WINDOW:
        lo = tl.maximum(S - T + t_first - window + 1, 0) // BLOCK_N * BLOCK_N
        edge = tl.minimum(tl.cdiv(tl.maximum(S - T + t_last - window + 1, 0), BLOCK_N) * BLOCK_N,
                          full)
        p_lo = tl.minimum(tl.maximum(P + S - T + t_first - window + 1, 0), P)
    return lo, edge, full, hi, p_lo


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_keys(acc, l_i, m_i, q, k_ptr, v_ptr, pad_ptr, lo, hi, n_keys, qpos, window, qk_scale,
              cap_in, cap_out, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
              RAGGED: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
              PRECISION: tl.constexpr):
    """Online-softmax accumulation over keys [lo, hi) of one K/V stream."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        key_ok = cols < n_keys
        kt = tl.load(k_ptr + cols[None, :] * HEAD_DIM + offs_d[:, None],
                     mask=key_ok[None, :] & d_ok[:, None], other=0.0)
        qk = tl.dot(q, kt, input_precision=PRECISION)
        if SOFTCAP:
            s = cap_out * _tanh(qk * cap_in)
        else:
            s = qk * qk_scale
        if CAUSAL or HAS_PAD or RAGGED or WINDOW:
            s = tl.where(_visible(cols, n_keys, pad_ptr, qpos, window, CAUSAL, HAS_PAD, WINDOW), s,
                         float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps m = -inf; shift by 0 there to avoid inf - inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + cols[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, PK, PV, PAD, O, LSE, MASS, O_PART, LSE_PART,
                B, Hq, T, S, P, key_start, keys_per_split, window, qk_scale, cap_in, cap_out,
                G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                P_BLOCK: tl.constexpr, HAS_PAD: tl.constexpr, WINDOW: tl.constexpr,
                SOFTCAP: tl.constexpr, SPLIT: tl.constexpr, STORE_MASS: tl.constexpr,
                DECODE: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Longest (last) row blocks first: the causal triangle makes them the slowest.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    Hkv = Hq // G
    b = (pid_bh // Hkv).to(tl.int64)
    kv_head = pid_bh % Hkv
    R = T * G

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    t, stat = _rows_of_group(rows, b, kv_head, Hq, T, G)
    qpos = t + (S - T)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    tile_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + stat[:, None] * HEAD_DIM + offs_d[None, :], mask=tile_ok, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    t_first = (pid_m * BLOCK_M) // G
    t_last = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, R) - 1) // G
    lo, edge, full, hi, p_lo = _key_ranges(t_first, t_last, S, T, P, window, BLOCK_N, WINDOW)

    # Prefix first (split 0 only), so its log-sum-exp is the running state after this loop.
    p_off = kv_head.to(tl.int64) * P * HEAD_DIM
    p_hi = P * (split == 0).to(tl.int32)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, PK + p_off, PV + p_off, PAD, p_lo, p_hi, P,
                              qpos + P, window, qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D,
                              P_BLOCK, False, False, True, WINDOW, SOFTCAP, PRECISION)
    lse_prefix = _log2_sum(m_i, l_i)  # -inf when this program saw no prefix key

    # Sequence keys of this split: the window's edge, the part every row sees, the diagonal.
    k_lo = key_start + split * keys_per_split
    k_hi = k_lo + keys_per_split
    kv_off = (b * Hkv + kv_head) * S * HEAD_DIM
    pad_ptr = PAD + b * S
    if WINDOW:
        acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, K + kv_off, V + kv_off, pad_ptr,
                                  tl.maximum(lo, k_lo), tl.minimum(edge, k_hi), S, qpos, window,
                                  qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D, BLOCK_N, False,
                                  HAS_PAD, False, True, SOFTCAP, PRECISION)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, K + kv_off, V + kv_off, pad_ptr,
                              tl.maximum(edge, k_lo), tl.minimum(full, k_hi), S, qpos, window,
                              qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D, BLOCK_N, False,
                              HAS_PAD, False, False, SOFTCAP, PRECISION)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, K + kv_off, V + kv_off, pad_ptr,
                              tl.maximum(full, k_lo), tl.minimum(hi, k_hi), S, qpos, window,
                              qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D, BLOCK_N, True,
                              HAS_PAD, False, WINDOW, SOFTCAP, PRECISION)

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    if SPLIT:
        # Partial results; _combine_kernel merges them. MASS holds the prefix lse meanwhile.
        part = split.to(tl.int64) * (B * Hq * T) + stat
        tl.store(LSE_PART + part, _log2_sum(m_i, l_i), mask=row_ok)
        tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=tile_ok)
        # A bound, not `row_ok & (split == 0)`: Triton 3.9's interpreter refuses splatted scalar bools.
        tl.store(MASS + stat, lse_prefix, mask=rows < tl.where(split == 0, R, 0))
    else:
        # +inf for a row that saw nothing: the backward's exp2(s - lse) is then 0, never NaN.
        lse = tl.where(seen, _log2_sum(m_i, l_i), float("inf"))
        tl.store(LSE + stat, lse, mask=row_ok)
        tl.store(O + stat[:, None] * HEAD_DIM + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=tile_ok)
        if STORE_MASS:
            tl.store(MASS + stat, tl.where(seen, tl.math.exp2(lse_prefix - lse), 0.0), mask=row_ok)


@triton.jit
def _combine_kernel(O_PART, LSE_PART, O, LSE, MASS, n_rows, n_split,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """Merge the per-split (lse, normalized output) pairs of the split forward."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    offs_d = tl.arange(0, BLOCK_D)
    tile_ok = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(n_split):
        m = tl.maximum(m, tl.load(LSE_PART + s * n_rows + rows, mask=row_ok, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for s in range(n_split):
        part = s * n_rows + rows
        w = tl.math.exp2(tl.load(LSE_PART + part, mask=row_ok, other=float("-inf")) - m)
        o = tl.load(O_PART + part.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=tile_ok, other=0.0)
        l += w
        acc += w[:, None] * o
    seen = l > 0.0
    lse = tl.where(seen, _log2_sum(m, l), float("inf"))
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(O + rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :],
             (acc / tl.where(seen, l, 1.0)[:, None]).to(O.dtype.element_ty), mask=tile_ok)
    lse_prefix = tl.load(MASS + rows, mask=row_ok, other=float("-inf"))
    tl.store(MASS + rows, tl.where(seen, tl.math.exp2(lse_prefix - lse), 0.0), mask=row_ok)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _delta_kernel(O, DO, DELTA, n_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_R: tl.constexpr):
    """delta = rowsum(dO * O), the softmax-Jacobian term shared by dQ and dK."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :]
    ptrs = rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + ptrs, mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < n_rows)


@triton.jit
def _dkdv_rows(dk, dv, k, v, cols, col_ok, Q, DO, LSE, DELTA, b, kv_head, Hq, T, off, window, lo,
               hi, qk_scale, cap_in, cap_out, G: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
               WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate dK, dV of one resident key block over the group's rows [lo, hi); query t sits
    at key index t + off of this stream."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    R = T * G
    for start in range(lo, hi, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < R
        t, stat = _rows_of_group(rows, b, kv_head, Hq, T, G)
        qt = tl.load(Q + stat[None, :] * HEAD_DIM + offs_d[:, None],
                     mask=row_ok[None, :] & d_ok[:, None], other=0.0)
        do = tl.load(DO + stat[:, None] * HEAD_DIM + offs_d[None, :],
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        # Rows past the end get lse = +inf, hence probability 0.
        lse = tl.load(LSE + stat, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
        kq = tl.dot(k, qt, input_precision=PRECISION)
        if SOFTCAP:
            th = _tanh(kq * cap_in)
            pt = tl.math.exp2(cap_out * th - lse[None, :])
        else:
            pt = tl.math.exp2(kq * qk_scale - lse[None, :])
        ok = col_ok[:, None]
        if CAUSAL:
            ok = ok & (cols[:, None] <= (t + off)[None, :])
        if WINDOW:
            ok = ok & (cols[:, None] > (t + off - window)[None, :])
        pt = tl.where(ok, pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        if SOFTCAP:
            dst = dst * (1.0 - th * th)
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dkdv_block(dk, dv, k, v, j0, cols, col_ok, Q, DO, LSE, DELTA, b, kv_head, Hq, T, off, window,
                qk_scale, cap_in, cap_out, G: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                PRECISION: tl.constexpr):
    """dK, dV of the key block j0 + [0, BLOCK_N) over the rows that see any of it: rows
    [r_lo, r_full) on the causal diagonal (masked), [r_full, r_mid) see the whole block (unmasked),
    [r_mid, r_hi) at the window's edge (masked); rows outside [r_lo, r_hi) are never read."""
    R = T * G
    r_lo = R * 0
    r_full = R * 0
    if CAUSAL:
        r_lo = tl.maximum(j0 - off, 0) * G
        t_full = tl.maximum(j0 + BLOCK_N - 1 - off, 0)
        r_full = tl.minimum(r_lo + tl.cdiv(tl.maximum(t_full * G - r_lo, 0), BLOCK_M) * BLOCK_M, R)
    r_mid = R
    r_hi = R
    if WINDOW:
        # Row t sees key j iff j > t + off - window.
        r_hi = tl.minimum(tl.maximum(j0 + BLOCK_N - 1 - off + window, 0) * G, R)
        r_whole = tl.minimum(tl.maximum(j0 - off + window, 0) * G, R)
        r_mid = r_full + tl.maximum(r_whole - r_full, 0) // BLOCK_M * BLOCK_M
    if CAUSAL:
        dk, dv = _dkdv_rows(dk, dv, k, v, cols, col_ok, Q, DO, LSE, DELTA, b, kv_head, Hq, T, off,
                            window, r_lo, tl.minimum(r_full, r_hi), qk_scale, cap_in, cap_out, G,
                            HEAD_DIM, BLOCK_D, BLOCK_M, True, WINDOW, SOFTCAP, PRECISION)
    dk, dv = _dkdv_rows(dk, dv, k, v, cols, col_ok, Q, DO, LSE, DELTA, b, kv_head, Hq, T, off,
                        window, r_full, r_mid, qk_scale, cap_in, cap_out, G, HEAD_DIM, BLOCK_D,
                        BLOCK_M, False, False, SOFTCAP, PRECISION)
    if WINDOW:
        dk, dv = _dkdv_rows(dk, dv, k, v, cols, col_ok, Q, DO, LSE, DELTA, b, kv_head, Hq, T, off,
                            window, r_mid, r_hi, qk_scale, cap_in, cap_out, G, HEAD_DIM, BLOCK_D,
                            BLOCK_M, False, True, SOFTCAP, PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, PK, PV, PAD, DO, LSE, DELTA, DK, DV, DPK, DPV,
                     Hq, T, S, P, window, qk_scale, cap_in, cap_out, sm_scale,
                     G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     HAS_PAD: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Programs [0, cdiv(P, BLOCK_N)) take prefix key blocks, the rest sequence key blocks."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    Hkv = Hq // G
    b = (pid_bh // Hkv).to(tl.int64)
    kv_head = pid_bh % Hkv
    n_prefix_blocks = tl.cdiv(P, BLOCK_N)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    if pid_n < n_prefix_blocks:
        # Every query sees every prefix key, up to the window: no causal mask.
        j0 = pid_n * BLOCK_N
        cols = j0 + offs_n
        col_ok = cols < P
        tile = cols[:, None] * HEAD_DIM + offs_d[None, :]
        tile_ok = col_ok[:, None] & d_ok[None, :]
        p_off = kv_head.to(tl.int64) * P * HEAD_DIM
        k = tl.load(PK + p_off + tile, mask=tile_ok, other=0.0)
        v = tl.load(PV + p_off + tile, mask=tile_ok, other=0.0)
        dk, dv = _dkdv_block(dk, dv, k, v, j0, cols, col_ok, Q, DO, LSE, DELTA, b, kv_head, Hq, T,
                             P + S - T, window, qk_scale, cap_in, cap_out, G, HEAD_DIM, BLOCK_D,
                             BLOCK_M, BLOCK_N, False, WINDOW, SOFTCAP, PRECISION)
        # Per-batch partial in float32; the caller sums over the batch (deterministic).
        part = (b * Hkv + kv_head) * P * HEAD_DIM + tile
        tl.store(DPK + part, dk * sm_scale, mask=tile_ok)
        tl.store(DPV + part, dv, mask=tile_ok)
    else:
        j0 = (pid_n - n_prefix_blocks) * BLOCK_N
        cols = j0 + offs_n
        col_ok = cols < S
        if HAS_PAD:
            col_ok = col_ok & (tl.load(PAD + b * S + cols, mask=col_ok, other=0) != 0)
        tile = cols[:, None] * HEAD_DIM + offs_d[None, :]
        tile_ok = (cols < S)[:, None] & d_ok[None, :]
        kv_off = (b * Hkv + kv_head) * S * HEAD_DIM
        k = tl.load(K + kv_off + tile, mask=tile_ok, other=0.0)
        v = tl.load(V + kv_off + tile, mask=tile_ok, other=0.0)
        dk, dv = _dkdv_block(dk, dv, k, v, j0, cols, col_ok, Q, DO, LSE, DELTA, b, kv_head, Hq, T,
                             S - T, window, qk_scale, cap_in, cap_out, G, HEAD_DIM, BLOCK_D,
                             BLOCK_M, BLOCK_N, True, WINDOW, SOFTCAP, PRECISION)
        tl.store(DK + kv_off + tile, (dk * sm_scale).to(DK.dtype.element_ty), mask=tile_ok)
        tl.store(DV + kv_off + tile, dv.to(DV.dtype.element_ty), mask=tile_ok)


@triton.jit
def _dq_keys(dq, q, do, lse, delta, k_ptr, v_ptr, pad_ptr, lo, hi, n_keys, qpos, window,
             qk_scale, cap_in, cap_out, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
             RAGGED: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
             PRECISION: tl.constexpr):
    """Accumulate dQ over keys [lo, hi) of one K/V stream."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        ok = (cols < n_keys)[None, :] & d_ok[:, None]
        kt = tl.load(k_ptr + cols[None, :] * HEAD_DIM + offs_d[:, None], mask=ok, other=0.0)
        vt = tl.load(v_ptr + cols[None, :] * HEAD_DIM + offs_d[:, None], mask=ok, other=0.0)
        qk = tl.dot(q, kt, input_precision=PRECISION)
        if SOFTCAP:
            th = _tanh(qk * cap_in)
            p = tl.math.exp2(cap_out * th - lse[:, None])
        else:
            p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if CAUSAL or HAS_PAD or RAGGED or WINDOW:
            p = tl.where(_visible(cols, n_keys, pad_ptr, qpos, window, CAUSAL, HAS_PAD, WINDOW), p,
                         0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - th * th)
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, PK, PV, PAD, DO, LSE, DELTA, DQ,
                   Hq, T, S, P, window, qk_scale, cap_in, cap_out, sm_scale,
                   G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   P_BLOCK: tl.constexpr, HAS_PAD: tl.constexpr, WINDOW: tl.constexpr,
                   SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    Hkv = Hq // G
    b = (pid_bh // Hkv).to(tl.int64)
    kv_head = pid_bh % Hkv
    R = T * G

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    t, stat = _rows_of_group(rows, b, kv_head, Hq, T, G)
    qpos = t + (S - T)
    offs_d = tl.arange(0, BLOCK_D)
    tile_ok = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    tile = stat[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + tile, mask=tile_ok, other=0.0)
    do = tl.load(DO + tile, mask=tile_ok, other=0.0)
    lse = tl.load(LSE + stat, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    t_first = (pid_m * BLOCK_M) // G
    t_last = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, R) - 1) // G
    lo, edge, full, hi, p_lo = _key_ranges(t_first, t_last, S, T, P, window, BLOCK_N, WINDOW)
    p_off = kv_head.to(tl.int64) * P * HEAD_DIM
    dq = _dq_keys(dq, q, do, lse, delta, PK + p_off, PV + p_off, PAD, p_lo, P, P, qpos + P, window,
                  qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D, P_BLOCK, False, False, True,
                  WINDOW, SOFTCAP, PRECISION)
    kv_off = (b * Hkv + kv_head) * S * HEAD_DIM
    pad_ptr = PAD + b * S
    if WINDOW:
        dq = _dq_keys(dq, q, do, lse, delta, K + kv_off, V + kv_off, pad_ptr, lo, edge, S, qpos,
                      window, qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D, BLOCK_N, False,
                      HAS_PAD, False, True, SOFTCAP, PRECISION)
    dq = _dq_keys(dq, q, do, lse, delta, K + kv_off, V + kv_off, pad_ptr, edge, full, S, qpos,
                  window, qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D, BLOCK_N, False, HAS_PAD,
                  False, False, SOFTCAP, PRECISION)
    dq = _dq_keys(dq, q, do, lse, delta, K + kv_off, V + kv_off, pad_ptr, full, hi, S, qpos,
                  window, qk_scale, cap_in, cap_out, HEAD_DIM, BLOCK_D, BLOCK_N, True, HAS_PAD,
                  False, WINDOW, SOFTCAP, PRECISION)
    tl.store(DQ + tile, (dq * sm_scale).to(DQ.dtype.element_ty), mask=tile_ok)


INTERPRETED = built_interpreted(_fwd_kernel)  # Triton chose when it decorated the kernels


# ----------------------------------------------------------------------------- configurations
#
# Few configs per tile class, so compilation stays short. Classes: "default"; "d256" (a 256-wide
# head needs smaller tiles to stay in registers and shared memory); "fp32" (4-byte elements and
# three tf32 products per dot: one small config). Decode rows fit one 16-row block.

def _cfg(block_m, block_n, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps,
                         num_stages=stages)


# The 16-bit configs compile for sm_90 without register spills (ptxas -v, D = 128 and 256); fp32
# (tf32x3) spills a little, which only costs fp32 speed. The first config of each list is the
# fixed one used without autotuning.
_FWD_CONFIGS = {
    (False, "default"): [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3),
                         _cfg(128, 64, 8, 4)],
    (False, "d256"): [_cfg(64, 64, 8, 2), _cfg(64, 32, 4, 2)],
    (False, "fp32"): [_cfg(32, 32, 4, 2)],
    (True, "default"): [_cfg(16, 64, 4, 3), _cfg(16, 128, 4, 3)],
    (True, "d256"): [_cfg(16, 64, 4, 2), _cfg(16, 32, 4, 3)],
    (True, "fp32"): [_cfg(16, 32, 4, 2)],
}
# dK/dV: BLOCK_N keys stay resident while BLOCK_M rows stream. dQ: BLOCK_M rows stay resident.
_DKDV_CONFIGS = {
    "default": [_cfg(32, 128, 8, 3), _cfg(32, 64, 4, 3), _cfg(64, 64, 8, 3)],
    "d256": [_cfg(32, 32, 8, 2)],
    "fp32": [_cfg(32, 32, 8, 2)],
}
_DQ_CONFIGS = {
    "default": [_cfg(64, 64, 4, 3), _cfg(128, 64, 8, 3), _cfg(128, 32, 8, 3)],
    "d256": [_cfg(64, 32, 8, 2), _cfg(32, 32, 4, 2)],
    "fp32": [_cfg(32, 32, 8, 2)],
}
# Under the interpreter: small blocks, so small test shapes still cross block boundaries.
INTERPRET_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}


def _tile_class(dtype, block_d) -> str:
    if dtype == torch.float32:
        return "fp32"
    return "d256" if block_d >= 256 else "default"


def _all(table):
    return [c for cfgs in table.values() for c in cfgs]


def _pick_fwd(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    return _FWD_CONFIGS[(bool(args["DECODE"]), _tile_class(args["Q"].dtype, args["BLOCK_D"]))]


def _pick_dkdv(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    return _DKDV_CONFIGS[_tile_class(args["Q"].dtype, args["BLOCK_D"])]


def _pick_dq(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    return _DQ_CONFIGS[_tile_class(args["Q"].dtype, args["BLOCK_D"])]


_fwd_tuned = triton.autotune(_all(_FWD_CONFIGS), key=["BLOCK_D", "DECODE", "SPLIT", "G", "WINDOW", "SOFTCAP"],
                             prune_configs_by={"early_config_prune": _pick_fwd})(_fwd_kernel)
_dkdv_tuned = triton.autotune(_all(_DKDV_CONFIGS), key=["BLOCK_D", "G", "WINDOW", "SOFTCAP"],
                              prune_configs_by={"early_config_prune": _pick_dkdv})(_bwd_dkdv_kernel)
_dq_tuned = triton.autotune(_all(_DQ_CONFIGS), key=["BLOCK_D", "G", "WINDOW", "SOFTCAP"],
                            prune_configs_by={"early_config_prune": _pick_dq})(_bwd_dq_kernel)


def _launch(kernel, tuned, fixed, grid, *args, **kwargs):
    """Autotuned on GPU; the `fixed` config with EPTK_AUTOTUNE=0; small blocks when interpreted."""
    if _autotuning():
        tuned[grid](*args, **kwargs)
    elif _interpreting():
        kernel[grid](*args, **kwargs, **INTERPRET_BLOCKS)
    else:
        kernel[grid](*args, **kwargs, **fixed.kwargs, num_warps=fixed.num_warps,
                     num_stages=fixed.num_stages)


# ----------------------------------------------------------------------------- launchers


def _dot_precision(dtype) -> str:
    # fp32: three tf32 tensor-core products per dot, near-fp32 accuracy at tensor-core speed (and
    # compile time; "ieee" lowers to long FMA sequences). Ignored for 16-bit inputs.
    return "tf32x3" if dtype == torch.float32 and not _interpreting() else "ieee"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _prefix_block(P: int) -> int:
    # Short prefixes get a short key block instead of a mostly masked BLOCK_N one (dot needs 16).
    if _interpreting():
        return 16
    return min(64, max(16, triton.next_power_of_2(max(P, 1))))


def _num_splits(q, rows: int, programs: int, S: int) -> int:
    """Split the keys of a decode step over programs when the grid alone cannot fill the GPU."""
    if not q.is_cuda or rows > 16 or S < 1024:
        return 1
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    if programs >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, programs), S // 512))


def _window_softcap_args(scale, window, softcap):
    """Kernel arguments: window (0 = none), qk_scale, cap_in, cap_out (logits in base 2)."""
    cap_in, cap_out = (0.0, 0.0) if softcap is None else (scale / softcap, softcap * LOG2E)
    return dict(window=window or 0, qk_scale=scale * LOG2E, cap_in=cap_in, cap_out=cap_out,
                WINDOW=window is not None, SOFTCAP=softcap is not None)


def _forward(q, k, v, pk, pv, pad, scale, want_mass, num_splits=None, window=None, softcap=None):
    """out, lse [B,Hq,T] (base 2, +inf for rows that see nothing), mass or None."""
    if _interpreting():
        interpreter_shims()
    B, Hq, T, D = q.shape
    Hkv, S, P = k.shape[1], k.shape[2], pk.shape[1]
    G = Hq // Hkv
    R = T * G
    decode = R <= 16
    block_d = _block_d(D)
    align = INTERPRET_BLOCKS["BLOCK_N"] if _interpreting() else KEYS_PER_SPLIT_ALIGN
    # The first sequence key the first query's window reaches: splits cover [key_start, S).
    key_start = 0 if window is None else max(S - T - window + 1, 0) // align * align
    if num_splits is None:
        num_splits = _num_splits(q, R, B * Hkv, S - key_start)
    keys_per_split = triton.cdiv(triton.cdiv(S - key_start, num_splits), align) * align
    num_splits = triton.cdiv(S - key_start, keys_per_split) if S > key_start else 1
    split = num_splits > 1

    out = torch.empty_like(q)
    lse = torch.empty(B, Hq, T, device=q.device, dtype=torch.float32)
    mass = torch.empty_like(lse) if (want_mass or split) else lse
    if split:
        o_part = torch.empty(num_splits, B, Hq, T, D, device=q.device, dtype=torch.float32)
        lse_part = torch.empty(num_splits, B, Hq, T, device=q.device, dtype=torch.float32)
    else:
        o_part, lse_part = lse, lse  # unused

    def grid(meta):
        return (triton.cdiv(R, meta["BLOCK_M"]), B * Hkv, num_splits)

    fixed = _FWD_CONFIGS[(decode, _tile_class(q.dtype, block_d))][0]
    _launch(_fwd_kernel, _fwd_tuned, fixed, grid,
            q, k, v, pk, pv, pad if pad is not None else q, out, lse, mass, o_part, lse_part,
            B, Hq, T, S, P, key_start, max(keys_per_split, 1),
            **_window_softcap_args(scale, window, softcap),
            G=G, HEAD_DIM=D, BLOCK_D=block_d, P_BLOCK=_prefix_block(P),
            HAS_PAD=pad is not None, SPLIT=split, STORE_MASS=want_mass, DECODE=decode,
            PRECISION=_dot_precision(q.dtype))
    if split:
        n_rows, block_r = B * Hq * T, 16
        _combine_kernel[(triton.cdiv(n_rows, block_r),)](
            o_part, lse_part, out, lse, mass, n_rows, num_splits,
            HEAD_DIM=D, BLOCK_D=block_d, BLOCK_R=block_r)
    return out, lse, (mass if want_mass else None)


def _backward(do, q, k, v, pk, pv, pad, out, lse, scale, window=None, softcap=None):
    if _interpreting():
        interpreter_shims()
    B, Hq, T, D = q.shape
    Hkv, S, P = k.shape[1], k.shape[2], pk.shape[1]
    G = Hq // Hkv
    R = T * G
    block_d = _block_d(D)
    tiles = _tile_class(q.dtype, block_d)
    pad_arg = pad if pad is not None else q
    extra = _window_softcap_args(scale, window, softcap)

    delta = torch.empty_like(lse)
    n_rows, block_r = B * Hq * T, 32
    _delta_kernel[(triton.cdiv(n_rows, block_r),)](out, do, delta, n_rows, HEAD_DIM=D,
                                                   BLOCK_D=block_d, BLOCK_R=block_r)

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dpk_part = torch.empty(B, Hkv, P, D, device=q.device, dtype=torch.float32)
    dpv_part = torch.empty_like(dpk_part)

    def dkdv_grid(meta):
        return (triton.cdiv(P, meta["BLOCK_N"]) + triton.cdiv(S, meta["BLOCK_N"]), B * Hkv)

    _launch(_bwd_dkdv_kernel, _dkdv_tuned, _DKDV_CONFIGS[tiles][0], dkdv_grid,
            q, k, v, pk, pv, pad_arg, do, lse, delta, dk, dv, dpk_part, dpv_part,
            Hq, T, S, P, **extra, sm_scale=scale,
            G=G, HEAD_DIM=D, BLOCK_D=block_d, HAS_PAD=pad is not None,
            PRECISION=_dot_precision(q.dtype))

    def dq_grid(meta):
        return (triton.cdiv(R, meta["BLOCK_M"]), B * Hkv)

    _launch(_bwd_dq_kernel, _dq_tuned, _DQ_CONFIGS[tiles][0], dq_grid,
            q, k, v, pk, pv, pad_arg, do, lse, delta, dq,
            Hq, T, S, P, **extra, sm_scale=scale,
            G=G, HEAD_DIM=D, BLOCK_D=block_d, P_BLOCK=_prefix_block(P), HAS_PAD=pad is not None,
            PRECISION=_dot_precision(q.dtype))
    dpk = dpk_part.sum(0).to(pk.dtype)
    dpv = dpv_part.sum(0).to(pv.dtype)
    return dq, dk, dv, dpk, dpv


# ----------------------------------------------------------------------------- autograd


class PrefixAttention(torch.autograd.Function):
    """out (and the non-differentiable prefix mass) of q over [prefix ; causal sequence]."""

    @staticmethod
    def forward(ctx, q, k, v, pk, pv, pad, scale, want_mass, window, softcap):
        out, lse, mass = _forward(q, k, v, pk, pv, pad, scale, want_mass, window=window,
                                  softcap=softcap)
        ctx.save_for_backward(q, k, v, pk, pv, pad, out, lse)
        ctx.scale, ctx.window, ctx.softcap = scale, window, softcap
        if mass is None:
            return out
        ctx.mark_non_differentiable(mass)
        return out, mass

    @staticmethod
    def backward(ctx, dout, *_):
        q, k, v, pk, pv, pad, out, lse = ctx.saved_tensors
        grads = _backward(dout.contiguous(), q, k, v, pk, pv, pad, out, lse, ctx.scale,
                          window=ctx.window, softcap=ctx.softcap)
        return (*grads, None, None, None, None, None)


def _checked(q, k, v, prefix_k, prefix_v, key_padding_mask):
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B,Hq,T,D], k and v [B,Hkv,S,D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, Hq, T, D = q.shape
    _, Hkv, S, _ = k.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    if Hq % Hkv:
        raise ValueError(f"query heads {Hq} must be a multiple of key/value heads {Hkv}")
    if S < T:
        raise ValueError(f"sequence keys S={S} must be at least the queries T={T}")
    if prefix_k.dim() != 3 or prefix_k.shape != prefix_v.shape or prefix_k.shape[0] != Hkv \
            or prefix_k.shape[2] != D:
        raise ValueError(f"expected prefix_k and prefix_v [Hkv={Hkv},P,D={D}]; got "
                         f"{tuple(prefix_k.shape)}, {tuple(prefix_v.shape)}")
    if D > 256:
        raise ValueError(f"head dim {D} is above the kernel's limit of 256")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, S):
        raise ValueError(f"key_padding_mask must be [B={B}, S={S}]; got "
                         f"{tuple(key_padding_mask.shape)}")


def prefix_attention_triton(q, k, v, prefix_k, prefix_v, *, key_padding_mask=None, scale=None,
                            return_prefix_mass=False, window=None, softcap=None):
    """Triton path of `eptk.kernels.prefix_attention`; same contract as the reference.

    k, v, prefix_k and prefix_v are cast to q's dtype (differentiably) when they differ.
    """
    _checked(q, k, v, prefix_k, prefix_v, key_padding_mask)
    check_window_softcap(window, softcap)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    # No query is P + S or more positions after a key: such a window changes nothing.
    window = None if window is None or window >= prefix_k.shape[1] + k.shape[2] else int(window)
    softcap = None if softcap is None else float(softcap)
    k, v, prefix_k, prefix_v = (x.to(q.dtype).contiguous() for x in (k, v, prefix_k, prefix_v))
    pad = None
    if key_padding_mask is not None:
        pad = key_padding_mask.to(device=q.device, dtype=torch.bool).contiguous().view(torch.uint8)
    if q.numel() == 0:
        out = q.new_zeros(q.shape)
        mass = q.new_zeros(q.shape[:3], dtype=torch.float32)
        return (out, mass) if return_prefix_mass else out
    return PrefixAttention.apply(q.contiguous(), k, v, prefix_k, prefix_v, pad, scale,
                                 bool(return_prefix_mass), window, softcap)


__all__ = ["prefix_attention_triton", "PrefixAttention"]
