"""Speed and peak memory of prefix attention: eptk's Triton kernel against the ways of computing the
same function without it.

Providers (all compute attention of q over [shared prefix ; causal sequence], no padding):
  eptk-triton   eptk.kernels.prefix_attention(backend="triton")
  reference     prefix_attention_reference: expand + cat + materialized mask, float32 softmax
  sdpa-mask     expand + cat + repeated heads + torch SDPA with a materialized boolean mask
  sdpa-causal   expand + cat + SDPA with causal_lower_right on the concatenation
  flex          expand + cat + compiled FlexAttention with a block mask (GPU only)
Modes: forward, backward, forward+backward, and decoding (T = 1 over a long cache).

`setup()` builds one step for (provider, mode, shape); `measure()` times it and takes its peak
memory; the pytest-benchmark rows below and benchmarks/gpu_bench.py both use these two. On CPU only
the reference providers run, at small sizes, so the suite is exercised quickly.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eptk.kernels import prefix_attention, prefix_attention_reference

sys.path.insert(0, str(Path(__file__).parent))
from common import DEVICE, GPU, device_name, peak_bytes  # noqa: E402


@dataclass(frozen=True)
class Shape:
    B: int
    Hq: int
    Hkv: int
    T: int
    S: int
    P: int
    D: int
    dtype: str = "bfloat16"

    def with_axis(self, axis: str, value: int) -> "Shape":
        # Prefill sweeps keep S = T: the queries are the whole sequence.
        return replace(self, T=value, S=value) if axis == "T" else replace(self, **{axis: value})


TARGET = Shape(B=8, Hq=32, Hkv=8, T=2048, S=2048, P=32, D=128)
DECODE = Shape(B=8, Hq=32, Hkv=8, T=1, S=4096, P=32, D=128)
SWEEPS = {"T": [512, 1024, 2048, 4096], "P": [8, 32, 128, 512], "B": [1, 4, 8, 16]}
# CPU: small float32 problems, so the suite itself is exercised in CI in seconds.
CPU_BASE = Shape(B=2, Hq=4, Hkv=2, T=64, S=64, P=8, D=32, dtype="float32")
CPU_DECODE = Shape(B=2, Hq=4, Hkv=2, T=1, S=256, P=8, D=32, dtype="float32")
CPU_SWEEPS = {"T": [32, 128], "P": [4, 32], "B": [1, 4]}

PROVIDERS = ["eptk-triton", "reference", "sdpa-mask", "sdpa-causal", "flex"]
GPU_ONLY = {"eptk-triton", "flex"}
MODES = ["forward", "backward", "forward+backward"]


def forward_flops(shape: Shape) -> float:
    """Useful forward work: QK^T and PV over the prefix and the causal part of the sequence."""
    causal_keys = shape.S - shape.T + (shape.T + 1) / 2  # mean sequence keys a query sees
    return 4.0 * shape.B * shape.Hq * shape.T * (shape.P + causal_keys) * shape.D


# ----------------------------------------------------------------------------- providers


def _concat(prefix, seq):
    """[Hkv,P,D] shared by the batch and [B,Hkv,S,D] -> [B,Hkv,P+S,D]."""
    return torch.cat([prefix.unsqueeze(0).expand(seq.shape[0], -1, -1, -1), seq], dim=2)


def _visible(T, S, P, device):
    """[T, P+S] boolean mask: every prefix key, sequence keys j <= S-T+i."""
    rows = torch.arange(T, device=device)[:, None] + (S - T)
    causal = torch.arange(S, device=device)[None, :] <= rows
    return torch.cat([causal.new_ones(T, P), causal], dim=1)


def eptk_triton(q, k, v, pk, pv):
    return prefix_attention(q, k, v, pk, pv, backend="triton")


def right_padding(shape: Shape, seed: int = 0):
    """[B, S] key padding mask, True = real: sequence lengths drawn from [S/2, S], the longest first."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shape.S // 2, shape.S + 1, (shape.B,), generator=g)
    lengths[0] = shape.S
    return (torch.arange(shape.S)[None, :] < lengths[:, None]).to(DEVICE)


def eptk_padded(key_padding_mask):
    def fn(q, k, v, pk, pv):
        return prefix_attention(q, k, v, pk, pv, key_padding_mask=key_padding_mask, backend="triton")
    return fn


def reference(q, k, v, pk, pv):
    return prefix_attention_reference(q, k, v, pk, pv)


def sdpa_mask(q, k, v, pk, pv):
    group = q.shape[1] // k.shape[1]
    keys = _concat(pk, k).repeat_interleave(group, dim=1)
    values = _concat(pv, v).repeat_interleave(group, dim=1)
    mask = _visible(q.shape[2], k.shape[2], pk.shape[1], q.device)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def sdpa_causal(q, k, v, pk, pv):
    from torch.nn.attention.bias import causal_lower_right

    keys, values = _concat(pk, k), _concat(pv, v)
    bias = causal_lower_right(q.shape[2], keys.shape[2])
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias,
                                          enable_gqa=q.shape[1] != k.shape[1])


def make_flex(shape: Shape, key_padding_mask=None, compile: bool = True):
    """Compiled FlexAttention over the concatenation, with eptk's semantics (every prefix key,
    causal sequence keys, and the padding mask if given); the block mask is built once, untimed."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    P, offset = shape.P, shape.S - shape.T

    def visible(b, h, q_idx, kv_idx):
        return (kv_idx < P) | (kv_idx - P <= q_idx + offset)

    batch = None
    if key_padding_mask is not None:
        real = torch.cat([key_padding_mask.new_ones(shape.B, P), key_padding_mask], 1)
        causal, batch = visible, shape.B

        def visible(b, h, q_idx, kv_idx):
            return causal(b, h, q_idx, kv_idx) & real[b, kv_idx]

    block_mask = create_block_mask(visible, B=batch, H=None, Q_LEN=shape.T, KV_LEN=P + shape.S,
                                   device=DEVICE)
    compiled = torch.compile(flex_attention, dynamic=False) if compile else flex_attention

    def flex(q, k, v, pk, pv):
        return compiled(q, _concat(pk, k), _concat(pv, v), block_mask=block_mask,
                        enable_gqa=q.shape[1] != k.shape[1])

    return flex


def provider_fn(provider: str, shape: Shape):
    if provider == "flex":
        return make_flex(shape)
    return {"eptk-triton": eptk_triton, "reference": reference, "sdpa-mask": sdpa_mask,
            "sdpa-causal": sdpa_causal}[provider]


# ----------------------------------------------------------------------------- setup & measure


def make_inputs(shape: Shape, requires_grad: bool, seed: int = 0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    dtype = getattr(torch, shape.dtype)

    def randn(*size):
        x = torch.randn(*size, generator=g, device=DEVICE, dtype=dtype)
        return x.requires_grad_(requires_grad)

    return [randn(shape.B, shape.Hq, shape.T, shape.D), randn(shape.B, shape.Hkv, shape.S, shape.D),
            randn(shape.B, shape.Hkv, shape.S, shape.D), randn(shape.Hkv, shape.P, shape.D),
            randn(shape.Hkv, shape.P, shape.D)]


def setup(provider: str, mode: str, shape: Shape, fn=None):
    """A zero-argument callable that runs one `mode` step ("forward", "backward",
    "forward+backward" or "decode") of `provider` on fresh inputs of `shape`."""
    fn = fn or provider_fn(provider, shape)
    inputs = make_inputs(shape, requires_grad=mode in ("backward", "forward+backward"))
    if mode in ("forward", "decode"):
        def step():
            with torch.no_grad():
                return fn(*inputs)
        return step
    dout = torch.randn(shape.B, shape.Hq, shape.T, shape.D, device=DEVICE,
                       dtype=getattr(torch, shape.dtype))
    if mode == "backward":
        out = fn(*inputs)
        return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)
    if mode == "forward+backward":
        return lambda: torch.autograd.grad(fn(*inputs), inputs, dout)
    raise ValueError(f"unknown mode {mode!r}")


def measure(step) -> dict:
    """GPU: median / p20 / p80 milliseconds (triton.testing.do_bench) and the peak memory one step
    allocates beyond what was live before it (benchmarks/common.py)."""
    import triton.testing

    step()  # compile / warm up outside both measurements
    peak = peak_bytes(step)
    median, p20, p80 = triton.testing.do_bench(step, quantiles=[0.5, 0.2, 0.8])
    return {"ms": median, "ms_p20": p20, "ms_p80": p80, "peak_bytes": peak}


# ----------------------------------------------------------------------------- pytest-benchmark

_medians: dict[tuple, float] = {}  # (mode, shape) -> eptk-triton median ms, for the ratio columns


def _points():
    base, sweeps = (TARGET, SWEEPS) if GPU else (CPU_BASE, CPU_SWEEPS)
    return [pytest.param(axis, base.with_axis(axis, value), id=f"{axis}={value}")
            for axis, values in sweeps.items() for value in values]


def _run_row(benchmark, provider, mode, shape, axis):
    if provider in GPU_ONLY and not GPU:
        pytest.skip(f"{provider} runs on CUDA only")
    try:
        step = setup(provider, mode, shape)
    except Exception as exc:  # e.g. FlexAttention missing from this torch build
        pytest.skip(f"{provider} unavailable: {type(exc).__name__}: {exc}")
    info = {"device": device_name(), "provider": provider, "mode": mode, "sweep": axis,
            **asdict(shape)}
    if mode in ("forward", "decode"):
        info["forward_flops"] = forward_flops(shape)
    if GPU:
        try:
            info.update(measure(step))
        except torch.cuda.OutOfMemoryError:
            pytest.skip(f"{provider} {mode} runs out of GPU memory at {shape}")
        except Exception as exc:
            if provider != "flex":
                raise
            pytest.skip(f"flex failed: {type(exc).__name__}: {exc}")
        if "forward_flops" in info:
            info["tflops"] = info["forward_flops"] / info["ms"] / 1e9
        key = (mode, shape)
        if provider == "eptk-triton":
            _medians[key] = info["ms"]
        elif key in _medians:
            info["eptk_speedup"] = info["ms"] / _medians[key]  # > 1: eptk is faster

        def timed():
            step()
            torch.cuda.synchronize()
        benchmark.extra_info.update(info)
        benchmark.pedantic(timed, rounds=10, warmup_rounds=1)
    else:
        info["peak_bytes"] = peak_bytes(step)  # torch profiler's CPU allocation timeline
        benchmark.extra_info.update(info)
        benchmark.pedantic(step, rounds=3, warmup_rounds=1)


# Providers vary fastest, eptk first, so each baseline row can carry its ratio to eptk.
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis,shape", _points())
def test_prefix_attention(benchmark, axis, shape, mode, provider):
    benchmark.group = f"prefix-attention {mode} {axis}={getattr(shape, axis)}"
    _run_row(benchmark, provider, mode, shape, axis)


@pytest.mark.parametrize("provider", ["eptk-triton", "reference", "sdpa-mask", "sdpa-causal"])
def test_prefix_attention_decode(benchmark, provider):
    shape = DECODE if GPU else CPU_DECODE
    benchmark.group = "prefix-attention decode"
    _run_row(benchmark, provider, "decode", shape, "decode")


def test_providers_agree():
    """Every provider computes the same function (checked once, at the smallest CPU/GPU shape)."""
    shape = replace(CPU_BASE, T=19, S=23, P=5) if not GPU else \
        Shape(B=2, Hq=4, Hkv=2, T=100, S=130, P=7, D=64, dtype="float32")
    inputs = make_inputs(shape, requires_grad=False)
    want = reference(*inputs).double()
    providers = ["sdpa-mask", "sdpa-causal"] + (["eptk-triton"] if GPU else [])
    for provider in providers:
        got = provider_fn(provider, shape)(*inputs).double()
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-4, f"{provider}: relative error {err:.2e} against the reference"
    assert math.isfinite(forward_flops(shape))
