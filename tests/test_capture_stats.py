"""capture_stats: the Triton kernel (interpreter on CPU, compiled on CUDA) and the reference, both
against float64 torch, over awkward shapes (d not a power of two, T = 1, padded rows, all padding).
tests/conftest.py switches the interpreter on for `interpreter` tests and off for `gpu` tests."""
import pytest
import torch

from eptk.kernels import capture_stats, capture_stats_reference, kernel_module

pytest.importorskip("triton")

FIELDS = ("pooled", "count", "sum", "gram")
interpreter = pytest.mark.interpreter


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


@interpreter
def test_sequences_split_over_programs_interpreter(monkeypatch):
    """The split path (the GPU's, when the tiles alone do not fill it): 5 sequences in splits of
    2, so the last split also walks a sequence past the batch, which must count nothing."""
    monkeypatch.setattr(kernel_module("capture_stats_triton"), "_splits", lambda B, tiles, device: 3)
    hidden, mask = make(5, 7, 40, "padded")
    assert_close(capture_stats(hidden, mask, backend="triton"), exact(hidden, mask), 2e-6, "split")


@pytest.mark.gpu
def test_gpu_takes_the_split_path():
    """The first GPU case below (B=8, d=576) splits its sequences over programs on any large GPU."""
    module = kernel_module("capture_stats_triton")
    _, block_d = module._blocks(512, 576)
    assert module._splits(8, -(-576 // block_d), torch.device("cuda")) > 1


@pytest.mark.gpu
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
