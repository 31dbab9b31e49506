"""capture_stats: the Triton kernel (interpreter on CPU, compiled on CUDA) and the reference, both
against float64 torch, over awkward shapes (d not a power of two, T = 1, padded rows, all padding)."""
import os

# Before triton is imported: kernels are bound to the interpreter when they are decorated. The GPU
# check runs this module with TRITON_INTERPRET=0, which turns the interpreter tests off instead.
os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ["TRITON_INTERPRET"] == "1"

import pytest
import torch

from eptk.kernels import capture_stats, capture_stats_reference

pytest.importorskip("triton")

FIELDS = ("pooled", "count", "sum", "gram")


def interpreter(test):
    """A CPU test that runs the kernel through the Triton interpreter."""
    test = pytest.mark.interpreter(test)
    return pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1")(test)


def exact(hidden, mask):
    """float64 statistics of the real-token rows."""
    x = hidden.double()
    m = (mask != 0)
    rows = x[m]
    per_seq = m.sum(1, keepdim=True).double()
    pooled = (x * m.unsqueeze(-1)).sum(1) / per_seq.clamp_min(1)
    return {"pooled": pooled, "count": torch.tensor(float(m.sum()), dtype=torch.float64),
            "sum": rows.sum(0), "gram": rows.T @ rows}


def assert_close(out, want, rtol, where):
    for name in FIELDS:
        got = getattr(out, name)
        assert got.dtype == torch.float32, f"{where}: {name} is {got.dtype}"
        assert tuple(got.shape) == tuple(want[name].shape), f"{where}: {name} shape {tuple(got.shape)}"
        ref = want[name]
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        err = (got.double().cpu() - ref.cpu()).abs()
        if err.numel() and float(err.max()) > rtol * max(scale, 1.0):
            idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
            raise AssertionError(f"{where}: {name} off by {float(err.max()):.3g} at {idx} "
                                 f"(scale {scale:.3g}, rtol {rtol})")


def make(B, T, d, pattern, dtype=torch.float32, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, d, generator=gen) * 3 + torch.linspace(-2, 5, d)   # a mean that varies per dim
    if pattern == "random":
        mask = torch.rand(B, T, generator=gen) > 0.3
    elif pattern == "padded":                            # right padding, one sequence fully masked
        lengths = torch.randint(0, T + 1, (B,), generator=gen)
        lengths[0] = 0
        mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    elif pattern == "none":
        mask = torch.zeros(B, T, dtype=torch.bool)
    else:
        mask = torch.ones(B, T, dtype=torch.bool)
    return hidden.to(device, dtype), mask.to(device)


SHAPES = [(2, 5, 24, "random"), (3, 1, 40, "padded"), (4, 37, 70, "padded"), (1, 3, 16, "all"),
          (2, 19, 129, "random"), (3, 6, 24, "none"), (5, 1, 1, "random")]


@interpreter
@pytest.mark.parametrize("B,T,d,pattern", SHAPES)
def test_interpreter_matches_float64(B, T, d, pattern):
    hidden, mask = make(B, T, d, pattern)
    out = capture_stats(hidden, mask, backend="triton")
    assert_close(out, exact(hidden, mask), 2e-6, f"triton B={B} T={T} d={d} {pattern}")


@pytest.mark.parametrize("B,T,d,pattern", SHAPES)
def test_reference_matches_float64(B, T, d, pattern):
    hidden, mask = make(B, T, d, pattern)
    out = capture_stats(hidden, mask, backend="torch")
    assert_close(out, exact(hidden, mask), 2e-6, f"reference B={B} T={T} d={d} {pattern}")


@interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_interpreter(dtype):
    hidden, mask = make(3, 21, 40, "padded", dtype=dtype)
    out = capture_stats(hidden, mask, backend="triton")
    assert_close(out, exact(hidden, mask), 2e-6, f"triton {dtype}")


@interpreter
def test_dispatcher_survives_the_triton_path():
    """Importing kernels/capture_stats_triton.py must not leave the package attribute pointing at the module."""
    import eptk.kernels
    capture_stats(torch.randn(1, 2, 16), torch.ones(1, 2), backend="triton")
    assert callable(eptk.kernels.capture_stats)
    eptk.kernels.capture_stats(torch.randn(1, 2, 16), torch.ones(1, 2), backend="triton")


@interpreter
def test_strided_hidden_and_integer_mask():
    base = torch.randn(40, 9, 3)
    hidden = base.permute(2, 1, 0)                      # [3, 9, 40], not contiguous
    mask = (torch.rand(3, 9) > 0.4).long()              # an attention_mask, not bool
    out = capture_stats(hidden, mask, backend="triton")
    assert_close(out, exact(hidden, mask), 2e-6, "strided")
    ref = capture_stats_reference(hidden, mask)
    assert torch.allclose(out.gram, ref.gram, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs a CUDA device and TRITON_INTERPRET=0")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,T,d,pattern", [(8, 512, 576, "padded"), (4, 300, 2048, "random"),
                                            (64, 1, 576, "random"), (2, 77, 200, "none")])
def test_gpu_matches_float64(B, T, d, pattern, dtype):
    hidden, mask = make(B, T, d, pattern, dtype=dtype, device="cuda")
    # against the float64 truth of the values as stored: fp16/bf16 rounding is the input, not an error;
    # what is left is float32 accumulation over up to B*T rows (products of 16-bit values are exact)
    out = capture_stats(hidden, mask, backend="triton")
    assert_close(out, exact(hidden, mask), 2e-5, f"cuda {dtype} B={B} T={T} d={d} {pattern}")
    ref = capture_stats(hidden, mask, backend="torch")
    assert_close(ref, exact(hidden, mask), 1e-4, f"reference on cuda {dtype} B={B} T={T} d={d} {pattern}")
