"""The Triton prefix-attention kernel against the float64 reference: outputs, prefix mass and all
five gradients, on awkward shapes, with and without sliding windows and logit soft-caps. Tests
marked `interpreter` run the kernel on CPU through the Triton interpreter (fp32), those marked
`gpu` compiled on CUDA (fp16 / bf16 / fp32, larger shapes); tests/conftest.py switches per test."""
import os
import random

import pytest
import torch

pytest.importorskip("triton")

from eptk.kernels import kernel_module, prefix_attention, prefix_attention_reference  # noqa: E402

NAMES = ("q", "k", "v", "prefix_k", "prefix_v")
_interpreter = pytest.mark.interpreter


def triton_module():
    """The kernel module built for the mode this test runs in (interpreter or compiled)."""
    return kernel_module("prefix_attention_triton")


def prefix_attention_triton(*args, **kwargs):
    return triton_module().prefix_attention_triton(*args, **kwargs)


# ----------------------------------------------------------------------------- helpers


def make_inputs(B, Hq, Hkv, T, S, P, D, pad="none", seed=0, dtype=torch.float32, device="cpu"):
    """q, k, v, prefix_k, prefix_v and a key padding mask (None, right, left or random holes)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    tensors = [randn(B, Hq, T, D), randn(B, Hkv, S, D), randn(B, Hkv, S, D),
               randn(Hkv, P, D), randn(Hkv, P, D)]
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    cols = torch.arange(S)
    if pad == "none":
        mask = None
    elif pad == "right":
        mask = cols[None, :] < lengths[:, None]
    elif pad == "left":
        mask = cols[None, :] >= (S - lengths)[:, None]
    elif pad == "random":
        mask = torch.rand(B, S, generator=g) < 0.7
    else:
        raise ValueError(pad)
    if mask is not None and B > 1:
        mask[0] = True  # one unpadded sequence next to padded ones
    if mask is not None:
        mask = mask.to(device)
    return tensors, mask


def reference_f64(tensors, mask, dout, scale=None, batch_chunk=None, **options):
    """Reference outputs, mass and gradients in float64 (optionally a few sequences at a time);
    options: window, softcap."""
    B = tensors[0].shape[0]
    chunk = batch_chunk or B
    outs, masses, grads = [], [], []
    pk, pv = (x.detach().double().requires_grad_() for x in tensors[3:])
    for s in range(0, B, chunk):
        q, k, v = (x[s:s + chunk].detach().double().requires_grad_() for x in tensors[:3])
        m = None if mask is None else mask[s:s + chunk]
        out, mass = prefix_attention_reference(q, k, v, pk, pv, key_padding_mask=m, scale=scale,
                                               return_prefix_mass=True, **options)
        grads.append(torch.autograd.grad(out, (q, k, v, pk, pv), dout[s:s + chunk].double()))
        outs.append(out.detach())
        masses.append(mass.detach())
    # Sequence gradients concatenate over the chunks; the shared prefix's add up.
    per_tensor = list(zip(*grads))
    grads = [torch.cat(g) for g in per_tensor[:3]] + [sum(g) for g in per_tensor[3:]]
    return torch.cat(outs), torch.cat(masses), grads


def run_kernel(tensors, mask, dout, scale=None, **options):
    xs = [x.detach().clone().requires_grad_() for x in tensors]
    out, mass = prefix_attention_triton(*xs, key_padding_mask=mask, scale=scale,
                                        return_prefix_mass=True, **options)
    grads = torch.autograd.grad(out, xs, dout)
    return out, mass, grads


def assert_close(name, got, want, atol, rtol):
    """Elementwise |got - want| <= atol + rtol |want|; the message says where it fails worst."""
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values at {_where(~torch.isfinite(got))}"
    excess = (got - want).abs() - (atol + rtol * want.abs())
    if (excess > 0).any():
        idx = tuple(int(i) for i in torch.unravel_index(excess.argmax(), excess.shape))
        err = (got - want).abs()
        raise AssertionError(f"{name}: max abs error {err.max().item():.3e} (worst over "
                             f"tolerance at index {idx}: got {got[idx].item():.6g}, want "
                             f"{want[idx].item():.6g}); {int((excess > 0).sum())} of "
                             f"{excess.numel()} elements out of tolerance")


def relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def assert_relative(name, got, want, tol):
    got, want = got.double().cpu(), want.double().cpu()
    err = relative_error(got, want)
    if not err <= tol:  # also catches NaN
        diff = (got - want).abs()
        idx = tuple(int(i) for i in torch.unravel_index(torch.nan_to_num(diff, nan=float("inf"))
                                                        .argmax(), diff.shape))
        raise AssertionError(f"{name}: relative-norm error {err:.3e} > {tol:.1e}; max abs error "
                             f"{diff.max().item():.3e} at {idx} (got {got[idx].item():.6g}, "
                             f"want {want[idx].item():.6g})")


def _where(bad):
    return tuple(int(i) for i in bad.nonzero()[0])


def check_against_reference(shape, pad, seed, scale=None, atol=2e-5, rtol=1e-4, **options):
    tensors, mask = make_inputs(*shape, pad=pad, seed=seed)
    dout = torch.randn(tensors[0].shape, generator=torch.Generator().manual_seed(seed + 1))
    out, mass, grads = run_kernel(tensors, mask, dout, scale, **options)
    r_out, r_mass, r_grads = reference_f64(tensors, mask, dout, scale, **options)
    case = f"(B,Hq,Hkv,T,S,P,D)={shape} pad={pad} seed={seed} {options}"
    assert_close(f"{case} out", out, r_out, atol, rtol)
    assert_close(f"{case} prefix_mass", mass, r_mass, atol, rtol)
    for name, g, r in zip(NAMES, grads, r_grads):
        assert_close(f"{case} grad {name}", g, r, atol, rtol)


# ----------------------------------------------------------------------------- interpreter


# (B, Hq, Hkv, T, S, P, D), padding: each case names the awkwardness it covers.
CASES = [
    pytest.param((2, 4, 2, 21, 37, 5, 24), "right", id="ragged-T-S-group2-D24"),
    pytest.param((1, 3, 1, 1, 40, 3, 16), "none", id="decode-group3"),
    pytest.param((2, 4, 1, 17, 17, 1, 64), "left", id="S=T-P1-group4-D64"),
    pytest.param((2, 2, 2, 9, 30, 40, 16), "right", id="P>T-mha"),
    pytest.param((1, 6, 2, 33, 50, 7, 24), "left", id="group3-left"),
    pytest.param((2, 4, 4, 16, 32, 16, 16), "none", id="block-multiples"),
    pytest.param((2, 2, 1, 5, 12, 0, 16), "left", id="P0-left-pad"),
    pytest.param((1, 8, 2, 1, 70, 4, 64), "random", id="decode-group4-holes"),
    pytest.param((3, 2, 1, 2, 33, 19, 24), "right", id="T2-long-cache"),
]


def _random_case(seed):
    rnd = random.Random(seed)
    hkv, group = rnd.choice([1, 2]), rnd.choice([1, 2, 3, 4])
    T = rnd.choice([1, rnd.randint(2, 40)])
    return ((rnd.randint(1, 2), hkv * group, hkv, T, T + rnd.randint(0, 30), rnd.randint(0, 40),
             rnd.choice([16, 24, 64])), rnd.choice(["none", "right", "left", "random"]))


@_interpreter
@pytest.mark.parametrize("shape,pad", CASES)
def test_matches_reference(shape, pad):
    check_against_reference(shape, pad, seed=sum(shape))


@_interpreter
@pytest.mark.parametrize("seed", range(30))
def test_seeded_sweep(seed):
    shape, pad = _random_case(seed)
    check_against_reference(shape, pad, seed=seed)


@_interpreter
@pytest.mark.parametrize("blocks", [(32, 16), (16, 64)], ids=["M32-N16", "M16-N64"])
def test_other_block_sizes(monkeypatch, blocks):
    """Block-boundary logic must not depend on the interpreter's default 16 x 16 tiles."""
    monkeypatch.setattr(triton_module(), "INTERPRET_BLOCKS", {"BLOCK_M": blocks[0],
                                                             "BLOCK_N": blocks[1]})
    check_against_reference((2, 6, 2, 45, 83, 21, 24), "left", seed=9)
    check_against_reference((1, 4, 1, 1, 150, 3, 16), "random", seed=10)
    # Window edges and soft-capped logits, with the dK/dV row ranges on other block multiples.
    check_against_reference((2, 6, 2, 45, 50, 21, 24), "left", seed=11, window=30, softcap=1.5)
    check_against_reference((1, 4, 1, 1, 150, 3, 16), "random", seed=12, window=70)


@_interpreter
def test_custom_scale():
    check_against_reference((1, 2, 1, 7, 19, 3, 16), "right", seed=3, scale=0.37)


@_interpreter
@pytest.mark.parametrize("shape,padded,options", [
    # Interpreter splits are 16-key aligned: S = 70 in 3 splits is [0,32) [32,64) [64,70).
    pytest.param((2, 4, 2, 1, 70, 5, 24), [(1, 20, 64)], {}, id="decode-a-split-sees-nothing"),
    pytest.param((1, 2, 1, 3, 50, 0, 16), [(0, 25, 50)], {}, id="P0-last-split-empty"),
    pytest.param((2, 2, 1, 2, 40, 0, 16), [(1, 0, 40)], {}, id="P0-row-sees-nothing"),
    # With a window the splits cover [48, 70) only, where the query's window starts.
    pytest.param((2, 4, 2, 1, 70, 5, 24), [(1, 40, 60)], {"window": 20, "softcap": 2.0},
                 id="decode-window-splits-from-its-start"),
    pytest.param((2, 2, 1, 3, 50, 4, 16), [(1, 30, 50)], {"window": 10},
                 id="window-row-sees-nothing"),
    pytest.param((1, 2, 1, 2, 20, 6, 16), [], {"window": 25}, id="decode-window-cuts-prefix"),
])
def test_split_keys_forward(shape, padded, options):
    """The flash-decoding path (keys split over programs, then merged) is the same function,
    also where a split, or every split of a row, sees no key."""
    tensors, _ = make_inputs(*shape, seed=11)
    mask = torch.ones(shape[0], shape[4], dtype=torch.bool)
    for b, start, stop in padded:
        mask[b, start:stop] = False
    scale = shape[-1] ** -0.5
    out, lse, mass = triton_module()._forward(*tensors, mask.view(torch.uint8), scale, True,
                                              num_splits=3, **options)
    r_out, r_mass, _ = reference_f64(tensors, mask, torch.zeros_like(tensors[0]), **options)
    assert_close("out", out, r_out, 2e-5, 1e-4)
    assert_close("prefix_mass", mass, r_mass, 2e-5, 1e-4)
    _, lse_one, _ = triton_module()._forward(*tensors, mask.view(torch.uint8), scale, True,
                                             num_splits=1, **options)
    assert torch.equal(torch.isfinite(lse_one), torch.isfinite(lse))
    finite = torch.isfinite(lse_one)
    assert_close("lse", lse[finite], lse_one[finite], 1e-5, 1e-5)


@_interpreter
def test_rows_without_keys_give_zeros_and_finite_grads():
    tensors, _ = make_inputs(2, 2, 1, 4, 6, 0, 16, seed=5)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 3:] = True
    dout = torch.randn(tensors[0].shape)
    out, mass, grads = run_kernel(tensors, mask, dout)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(mass, torch.zeros_like(mass))
    r_out, _, r_grads = reference_f64(tensors, mask, dout)
    assert_close("out", out, r_out, 2e-5, 1e-4)
    for name, g, r in zip(NAMES, grads, r_grads):
        assert_close(f"grad {name}", g, r, 2e-5, 1e-4)


@_interpreter
def test_mass_is_not_differentiable_and_optional():
    tensors, _ = make_inputs(1, 2, 1, 3, 5, 2, 16, seed=2)
    xs = [x.requires_grad_() for x in tensors]
    out, mass = prefix_attention_triton(*xs, return_prefix_mass=True)
    assert out.requires_grad and not mass.requires_grad
    assert mass.dtype == torch.float32 and mass.shape == (1, 2, 3)
    assert torch.equal(prefix_attention_triton(*xs), out)


@_interpreter
def test_strided_inputs_and_prefix_of_another_dtype():
    """Transposed views are read correctly; a float64 prefix is cast to q's dtype, and its
    gradient comes back in float64."""
    tensors, mask = make_inputs(2, 4, 2, 7, 11, 3, 16, pad="right", seed=8)
    q, k, v, pk, pv = tensors
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    pk64, pv64 = pk.double().requires_grad_(), pv.double().requires_grad_()
    dout = torch.randn(q.shape)
    out = prefix_attention_triton(q_view, k, v, pk64, pv64, key_padding_mask=mask)
    gpk, gpv = torch.autograd.grad(out, (pk64, pv64), dout)
    assert out.dtype == torch.float32 and gpk.dtype == torch.float64
    r_out, _, r_grads = reference_f64(tensors, mask, dout)
    assert_close("out", out, r_out, 2e-5, 1e-4)
    assert_close("grad prefix_k", gpk, r_grads[3], 2e-5, 1e-4)
    assert_close("grad prefix_v", gpv, r_grads[4], 2e-5, 1e-4)


@_interpreter
def test_deterministic():
    tensors, mask = make_inputs(2, 4, 2, 9, 20, 18, 16, pad="right", seed=4)
    dout = torch.randn(tensors[0].shape)
    first, second = run_kernel(tensors, mask, dout), run_kernel(tensors, mask, dout)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[2], second[2]):
        assert torch.equal(a, b)


@_interpreter
def test_backend_triton_goes_through_the_kernel(monkeypatch):
    module = triton_module()
    calls = []
    kernel = module.prefix_attention_triton

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(module, "prefix_attention_triton", spy)
    tensors, mask = make_inputs(2, 2, 1, 5, 9, 3, 16, pad="left", seed=6)
    out, mass = prefix_attention(*tensors, key_padding_mask=mask, return_prefix_mass=True,
                                 backend="triton")
    assert len(calls) == 1 and calls[0]["return_prefix_mass"] is True
    r_out, r_mass = prefix_attention(*tensors, key_padding_mask=mask, return_prefix_mass=True,
                                     backend="torch")
    assert_close("out", out, r_out, 2e-5, 1e-4)
    assert_close("prefix_mass", mass, r_mass, 2e-5, 1e-4)
    prefix_attention(*tensors, key_padding_mask=mask, backend="auto")  # CPU tensors: reference
    assert len(calls) == 1  # backend="torch", and "auto" on CPU, never reach the kernel


@pytest.mark.parametrize("name", ["prefix_attention_triton", "capture_stats_triton"])
def test_kernel_module_follows_the_interpreter_switch(monkeypatch, name):
    """One process holds both builds of a kernel module, each made once, picked at call time."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interpreted = kernel_module(name)
    monkeypatch.delenv("TRITON_INTERPRET")
    compiled = kernel_module(name)
    assert interpreted.INTERPRETED and not compiled.INTERPRETED
    assert kernel_module(name) is compiled
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_module(name) is interpreted


def _compile_for_sm90(kernel, dtype, **constexprs):
    """Compile one kernel of the compiled build to sm_90 machine code, on the CPU (no GPU)."""
    import triton
    from triton.backends.compiler import GPUTarget

    floats = {"qk_scale", "cap_in", "cap_out", "sm_scale"}
    fp32_ptrs = {"LSE", "MASS", "O_PART", "LSE_PART", "DELTA", "DPK", "DPV"}
    signature, values = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name], values[(i,)] = "constexpr", constexprs[name]
        elif name == "PAD":
            signature[name] = "*u8"
        elif name.isupper() and name not in ("B", "T", "S", "P"):  # tensors, not sizes
            signature[name] = "*fp32" if name in fp32_ptrs else f"*{dtype}"
        else:
            signature[name] = "fp32" if name in floats else "i32"
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=values)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm


def compile_variant_for_hopper(variant: str) -> list[bool]:
    """Compile the compiled build's kernels of one variant to sm_90 machine code; whether each has a cubin."""
    m = kernel_module("prefix_attention_triton")
    if variant.startswith("bf16"):
        flags = dict(G=4, HEAD_DIM=128, BLOCK_D=128, HAS_PAD=True, WINDOW=True, SOFTCAP=True,
                     PRECISION="ieee")
        return ["cubin" in _compile_for_sm90(kernel, "bf16", **flags, **extra)
                for kernel, extra in [(m._fwd_kernel, dict(m._FWD_CONFIGS[(False, "default")][0].kwargs,
                                                           P_BLOCK=32, SPLIT=False, STORE_MASS=True,
                                                           DECODE=False)),
                                      (m._bwd_dkdv_kernel, m._DKDV_CONFIGS["default"][0].kwargs),
                                      (m._bwd_dq_kernel, dict(m._DQ_CONFIGS["default"][0].kwargs, P_BLOCK=32))]]
    flags = dict(G=4, HEAD_DIM=64, BLOCK_D=64, HAS_PAD=True, WINDOW=True, SOFTCAP=False,
                 PRECISION="tf32x3", P_BLOCK=16, SPLIT=True, STORE_MASS=True, DECODE=True)
    fwd = _compile_for_sm90(m._fwd_kernel, "fp32", **flags, **m._FWD_CONFIGS[(True, "fp32")][0].kwargs)
    combine = _compile_for_sm90(m._combine_kernel, "fp32", HEAD_DIM=64, BLOCK_D=64, BLOCK_R=16)
    return ["cubin" in fwd, "cubin" in combine]


# Run in a process of its own: Triton builds its library functions (tl.zeros, ...) for whichever mode
# TRITON_INTERPRET selected when triton was first imported, which in the test process depends on the tests
# that ran before. The script imports triton compiled, runs the kernels interpreted, then compiles them.
_HOPPER_SCRIPT = """
import json, os, sys
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, sys.argv[1])
import torch, triton.language as tl
from eptk.kernels._interpreter import built_interpreted
assert not built_interpreted(tl.standard.zeros), "triton's library functions were built for the interpreter"
os.environ["TRITON_INTERPRET"] = "1"
import test_prefix_attention as t
tensors, mask = t.make_inputs(1, 2, 1, 5, 9, 3, 16, pad="right", seed=7)
xs = [x.requires_grad_() for x in tensors]
out = t.prefix_attention_triton(*xs, key_padding_mask=mask, window=4, softcap=2.0)
torch.autograd.grad(out.sum(), xs)
del os.environ["TRITON_INTERPRET"]
print(json.dumps(t.compile_variant_for_hopper(sys.argv[2])))
"""


@pytest.mark.parametrize("variant", ["bf16-prefill-window-softcap-padded", "fp32-split-decode-window"])
def test_kernels_compile_for_hopper(variant):
    """The GPU build (not the interpreter) of the kernels compiles for sm_90, windows and
    soft-caps on, after interpreted runs in the same process: no GPU needed to find out, and never
    skipped, whatever ran before in the test process."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", _HOPPER_SCRIPT, str(Path(__file__).parent), variant],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled = json.loads(proc.stdout.strip().splitlines()[-1])
    assert compiled and all(compiled), compiled


@_interpreter
def test_interpreted_runs_leave_triton_builtins_unpatched():
    """GPU tests compile kernels after interpreter tests in the same process: the interpreter's
    patches of triton.language must all be undone by then (tl.core's too, which Triton's own
    library functions, e.g. tl.zeros, reach)."""
    import triton.language as tl

    tensors, mask = make_inputs(1, 2, 1, 5, 9, 3, 16, pad="right", seed=7)
    xs = [x.requires_grad_() for x in tensors]
    out = prefix_attention_triton(*xs, key_padding_mask=mask, window=4, softcap=2.0)
    torch.autograd.grad(out.sum(), xs)
    kernel_module("capture_stats_triton").capture_stats_triton(torch.randn(2, 5, 24),
                                                               torch.ones(2, 5))
    patched = [name for name in dir(tl.core) if tl.core.is_builtin(getattr(tl, name, None))
               and getattr(tl.core, name) is not getattr(tl, name)]
    assert not patched, f"still patched after interpreted runs: {patched[:10]}"


@_interpreter
def test_public_function_survives_a_triton_call():
    """The kernel module is named apart from the public function, so importing it rebinds nothing."""
    import eptk.kernels

    tensors, _ = make_inputs(1, 2, 1, 3, 5, 2, 16, seed=7)
    prefix_attention(*tensors, backend="triton")
    assert callable(eptk.kernels.prefix_attention)


@_interpreter
@pytest.mark.parametrize("bad", ["heads", "short-S", "prefix-heads", "mask-shape"])
def test_rejects_bad_shapes(bad):
    tensors, mask = make_inputs(1, 4, 2, 5, 8, 3, 16, pad="right")
    q, k, v, pk, pv = tensors
    if bad == "heads":
        q = torch.randn(1, 3, 5, 16)
    elif bad == "short-S":
        k, v = k[:, :, :4], v[:, :, :4]
        mask = mask[:, :4]
    elif bad == "prefix-heads":
        pk, pv = pk[:1], pv[:1]
    else:
        mask = mask[:, :5]
    with pytest.raises(ValueError):
        prefix_attention_triton(q, k, v, pk, pv, key_padding_mask=mask)


# ----------------------------------------------------------------------------- windows, soft-caps

# (B, Hq, Hkv, T, S, P, D), padding, window, softcap. Query t sits at position P + S - T + t and
# sees keys fewer than `window` positions back, prefix slot p at position p.
WINDOW_CASES = [
    pytest.param((2, 4, 2, 12, 12, 10, 16), "right", 6, None, id="window<P-early-rows-see-prefix"),
    pytest.param((2, 4, 2, 12, 12, 10, 16), "left", 6, 1.0, id="window<P-left-softcap"),
    pytest.param((3, 2, 1, 20, 24, 19, 24), "left", 25, None, id="window-cuts-prefix-midway"),
    pytest.param((1, 6, 2, 33, 50, 7, 24), "left", 20, None, id="window<T-group3"),
    pytest.param((2, 4, 1, 17, 17, 5, 64), "random", 19, 3.0, id="T<window<P+T-group4-holes"),
    pytest.param((2, 2, 2, 40, 45, 16, 16), "right", 24, None, id="window<T-mha-block-multiples"),
    pytest.param((2, 4, 2, 9, 14, 3, 16), "right", 1, None, id="window1"),
    pytest.param((2, 2, 2, 9, 14, 0, 16), "left", 1, 0.5, id="window1-P0-padded-rows-see-nothing"),
    pytest.param((1, 3, 1, 1, 40, 3, 16), "none", 4, None, id="decode-window<S"),
    pytest.param((1, 8, 2, 1, 70, 4, 64), "random", 30, 5.0, id="decode-group4-holes-softcap"),
    pytest.param((2, 4, 2, 21, 37, 5, 24), "none", None, 2.0, id="softcap"),
    pytest.param((1, 6, 2, 33, 50, 7, 24), "left", None, 0.3, id="softcap-saturated-left"),
]


@_interpreter
@pytest.mark.parametrize("shape,pad,window,softcap", WINDOW_CASES)
def test_window_softcap_matches_reference(shape, pad, window, softcap):
    check_against_reference(shape, pad, seed=sum(shape), window=window, softcap=softcap)


def _random_window_case(seed):
    shape, pad = _random_case(seed)
    rnd = random.Random(1000 + seed)
    P, S = shape[5], shape[4]
    window = rnd.choice([1, 2, rnd.randint(1, P + S), rnd.randint(1, P + S + 3)])
    return shape, pad, window, rnd.choice([None, 0.5, 4.0])


@_interpreter
@pytest.mark.parametrize("seed", range(16))
def test_window_softcap_seeded_sweep(seed):
    shape, pad, window, softcap = _random_window_case(seed)
    check_against_reference(shape, pad, seed=seed, window=window, softcap=softcap)


@_interpreter
def test_window_beyond_every_key_changes_nothing():
    """A window of P + S or more positions reaches every key: the same function as none."""
    tensors, mask = make_inputs(2, 4, 2, 7, 11, 3, 16, pad="left", seed=13)
    plain = prefix_attention_triton(*tensors, key_padding_mask=mask)
    for window in (14, 15, 10**12):
        got = prefix_attention_triton(*tensors, key_padding_mask=mask, window=window)
        assert torch.equal(got, plain), window
    r_plain = prefix_attention_reference(*tensors, key_padding_mask=mask)
    assert torch.equal(prefix_attention_reference(*tensors, key_padding_mask=mask, window=14),
                       r_plain)
    # One position less drops the first slot for the last query only.
    check_against_reference((2, 4, 2, 7, 11, 3, 16), "left", seed=13, window=13)


@_interpreter
@pytest.mark.parametrize("shape,prefix_poison,seq_poison", [
    # Query 0 at position 32 sees keys > 24: the first prefix block is outside every window.
    pytest.param((2, 4, 2, 24, 24, 32, 16), 16, 0, id="prefix-block"),
    # Queries from position 96 on see keys > 88: the whole prefix and sequence keys 0..63 are out.
    pytest.param((2, 4, 2, 20, 100, 16, 16), 16, 64, id="prefix-and-sequence-blocks"),
    pytest.param((1, 4, 1, 1, 100, 16, 16), 16, 80, id="decode"),
])
def test_keys_outside_every_window_are_never_read(shape, prefix_poison, seq_poison):
    """Key blocks no query's window reaches are skipped, not read and masked: NaN there (which
    a masked-out probability times a value would turn into NaN) leaves every output finite."""
    tensors, _ = make_inputs(*shape, seed=17)
    dout = torch.randn(tensors[0].shape, generator=torch.Generator().manual_seed(18))
    poisoned = [x.clone() for x in tensors]
    for x in poisoned[1:3]:
        x[:, :, :seq_poison] = float("nan")
    for x in poisoned[3:]:
        x[:, :prefix_poison] = float("nan")
    out, mass, grads = run_kernel(poisoned, None, dout, window=8)
    r_out, r_mass, r_grads = reference_f64(tensors, None, dout, window=8)
    assert_close("out", out, r_out, 2e-5, 1e-4)
    assert_close("prefix_mass", mass, r_mass, 2e-5, 1e-4)
    for name, g, r in zip(NAMES, grads, r_grads):
        assert_close(f"grad {name}", g, r, 2e-5, 1e-4)
    if shape[3] == 1:  # the split-K decode path too
        scale = shape[-1] ** -0.5
        out, _, _ = triton_module()._forward(*poisoned, None, scale, False, num_splits=3, window=8)
        assert_close("split out", out, r_out, 2e-5, 1e-4)


@_interpreter
@pytest.mark.parametrize("options", [{"window": 0}, {"window": -3}, {"window": 2.5},
                                     {"window": True}, {"softcap": 0.0}, {"softcap": -1.0},
                                     {"softcap": float("inf")}, {"softcap": float("nan")}])
def test_rejects_bad_window_or_softcap(options):
    tensors, mask = make_inputs(1, 2, 1, 3, 5, 2, 16, pad="right")
    for fn in (prefix_attention_triton, prefix_attention_reference):
        with pytest.raises(ValueError):
            fn(*tensors, key_padding_mask=mask, **options)


def _explicit_attention(q, k, v, pk, pv, real, window, softcap, scale):
    """Attention written out the way the full forward over [slots ; tokens] does it: keys and
    values concatenated per sequence, HF's sliding-window causal mask built from positions
    (kv <= q and kv > q - window, slots always real), soft-cap, softmax; float64, loops."""
    B, Hq, T, D = q.shape
    Hkv, S, P = k.shape[1], k.shape[2], pk.shape[1]
    q_pos = (torch.arange(T) + P + S - T)[:, None]
    kv_pos = torch.arange(P + S)[None, :]
    real = torch.cat([torch.ones(B, P, dtype=torch.bool), real], 1)
    allowed = (kv_pos <= q_pos) & real[:, None, :]                      # [B, T, P + S]
    if window is not None:
        allowed &= kv_pos > q_pos - window
    outs, masses = torch.zeros(B, Hq, T, D, dtype=q.dtype), torch.zeros(B, Hq, T, dtype=q.dtype)
    for b in range(B):
        for h in range(Hq):
            kv = h // (Hq // Hkv)
            keys, values = torch.cat([pk[kv], k[b, kv]]), torch.cat([pv[kv], v[b, kv]])
            scores = q[b, h] @ keys.T * scale
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            scores = scores.masked_fill(~allowed[b], float("-inf"))
            probs = torch.softmax(scores, -1).nan_to_num(0.0)
            outs[b, h] = probs @ values
            masses[b, h] = probs[:, :P].sum(-1)
    return outs, masses, allowed


@pytest.mark.parametrize("shape,pad,window,softcap", [
    ((2, 4, 2, 6, 9, 4, 8), "left", 3, 1.5),
    ((2, 2, 1, 5, 5, 6, 8), "right", 4, None),      # window < P: early rows see the last slots
    ((1, 6, 2, 1, 12, 3, 8), "random", 7, 0.7),    # decode
    ((2, 2, 2, 4, 7, 3, 8), "left", 1, None),
    ((2, 2, 1, 4, 7, 3, 8), "right", None, 0.4),
])
def test_reference_is_the_full_forward_over_slots_and_tokens(shape, pad, window, softcap):
    """Pins the one reference itself: outputs, prefix mass and all five gradients equal the
    explicit computation, whose mask equals transformers' own sliding-window mask functions."""
    tensors, mask = make_inputs(*shape, pad=pad, seed=3)
    tensors = [x.double().requires_grad_() for x in tensors]
    real = mask if mask is not None else torch.ones(shape[0], shape[4], dtype=torch.bool)
    scale = 0.9
    got, got_mass = prefix_attention_reference(*tensors, key_padding_mask=mask, scale=scale,
                                               return_prefix_mass=True, window=window,
                                               softcap=softcap)
    want, want_mass, allowed = _explicit_attention(*tensors, real, window, softcap, scale)
    assert_close("out", got, want, 1e-12, 1e-10)
    assert_close("prefix_mass", got_mass, want_mass, 1e-12, 1e-10)
    dout = torch.randn(got.shape, dtype=torch.float64)
    for name, g, r in zip(NAMES, torch.autograd.grad(got, tensors, dout),
                          torch.autograd.grad(want, tensors, dout)):
        assert_close(f"grad {name}", g, r, 1e-12, 1e-10)

    masking = pytest.importorskip("transformers.masking_utils")
    B, T, S, P = shape[0], shape[3], shape[4], shape[5]
    parts = [masking.causal_mask_function, masking.padding_mask_function(
        torch.cat([torch.ones(B, P, dtype=torch.bool), real], 1))]
    if window is not None:
        parts.append(masking.sliding_window_overlay(window))
    hf = masking.and_masks(*parts)(torch.arange(B)[:, None, None], 0,
                                   (torch.arange(T) + P + S - T)[None, :, None],
                                   torch.arange(P + S)[None, None, :])
    assert torch.equal(hf, allowed)


# ----------------------------------------------------------------------------- GPU


# Relative-norm error against float64. fp32 dots run as three tf32 products ("tf32x3", close to
# fp32); the 16-bit types round P and dS to the input type before their matmuls and round the
# output itself (bf16 keeps 8 mantissa bits, fp16 11), so their bounds are a few of those units.
GPU_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
BENCH_SHAPE = (8, 32, 8, 2048, 2048, 32, 128)
fp16, bf16, fp32 = torch.float16, torch.bfloat16, torch.float32

# Few dtype x shape pairs: each new (dtype, head dim, group, padding, window, soft-cap)
# compiles its own kernels.
GPU_CASES = [
    pytest.param(BENCH_SHAPE, "none", fp16, {}, id="bench-shape-fp16"),
    pytest.param((2, 12, 4, 300, 333, 17, 80), "right", fp16, {}, id="ragged-D80-fp16"),
    pytest.param((2, 12, 4, 300, 333, 17, 80), "right", bf16, {}, id="ragged-D80-bf16"),
    pytest.param((2, 12, 4, 300, 333, 17, 80), "right", fp32, {}, id="ragged-D80-fp32"),
    pytest.param((2, 8, 8, 257, 513, 64, 64), "left", bf16, {}, id="mha-D64-left-bf16"),
    pytest.param((8, 32, 8, 1, 4096, 32, 128), "right", bf16, {}, id="decode-4096-bf16"),
    pytest.param((8, 32, 8, 1, 4096, 32, 128), "none", fp16, {}, id="decode-4096-fp16"),
    pytest.param((1, 4, 2, 130, 200, 40, 256), "left", bf16, {}, id="D256-bf16"),
    pytest.param((2, 4, 2, 37, 64, 0, 32), "left", fp32, {}, id="P0-empty-rows-fp32"),
    pytest.param((2, 16, 4, 700, 733, 32, 128), "left", bf16, {"window": 256, "softcap": 50.0},
                 id="window-softcap-bf16"),
    pytest.param((2, 12, 4, 300, 333, 17, 80), "right", fp32, {"window": 64},
                 id="ragged-D80-window-fp32"),
    pytest.param((2, 8, 8, 257, 513, 64, 64), "left", fp16, {"softcap": 30.0},
                 id="mha-D64-softcap-fp16"),
    pytest.param((8, 32, 8, 1, 4096, 32, 128), "right", bf16, {"window": 1024},
                 id="decode-4096-window-bf16"),
    pytest.param((1, 4, 2, 130, 130, 40, 256), "left", bf16, {"window": 32, "softcap": 50.0},
                 id="D256-window<P-softcap-bf16"),
]


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("shape,pad,dtype,options", GPU_CASES)
    def test_gpu_matches_float64_reference(self, shape, pad, dtype, options):
        self._check(shape, pad, dtype, **options)

    def test_gpu_autotuned_bench_shape_bf16(self, monkeypatch):
        # Same specialization as benchmarks/gpu_bench.py (no padding), so it reuses these kernels.
        monkeypatch.setenv("EPTK_AUTOTUNE", "1")
        self._check(BENCH_SHAPE, "none", bf16)

    def test_gpu_decode_splits_keys(self):
        q = torch.empty(8, 32, 1, 128, device="cuda")
        assert triton_module()._num_splits(q, rows=4, programs=64, S=4096) > 1

    @staticmethod
    def _check(shape, pad, dtype, **options):
        tensors, mask = make_inputs(*shape, pad=pad, seed=0, dtype=dtype, device="cuda")
        dout = torch.randn(tensors[0].shape, device="cuda", dtype=dtype)
        out, mass, grads = run_kernel(tensors, mask, dout, **options)
        r_out, r_mass, r_grads = reference_f64(tensors, mask, dout, batch_chunk=1, **options)
        tol = GPU_TOL[dtype]
        assert_relative("out", out, r_out, tol)
        assert_relative("prefix_mass", mass, r_mass, tol)
        for name, g, r in zip(NAMES, grads, r_grads):
            assert_relative(f"grad {name}", g, r, tol)


@_interpreter
def test_tune_on_the_triton_backend_matches_the_reference(tmp_path):
    """A tiny deep tune forced onto the Triton kernel (interpreter) ends where the reference backend does,
    step by step. The logged gradient norm is taken before clipping, and the MAP term's gradient does not
    pass through the kernel, so a prefix gradient off by any factor shows in the norm and in the
    posterior (Adam alone would hide a uniform scale)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    args = ["tune", "--model", "tiny", "--method", "deep", "--layers", "all", "--steps", "3", "--batch-size", "2",
            "--train-size", "16", "--eval-size", "2", "--test-size", "2", "--quiet", "--clip", "0",
            "--prior-weight", "1", "--warmup", "1", "--lr", "0.05"]
    env = dict(os.environ, TRITON_INTERPRET="1")
    for backend in ("triton", "torch"):
        done = subprocess.run([sys.executable, "-m", "eptk.cli", *args, "--backend", backend,
                               "--out", str(tmp_path / backend)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    rows = {b: [json.loads(l) for l in (tmp_path / b / "metrics.jsonl").read_text().splitlines()] for b in ("triton", "torch")}
    steps = [(a, b) for a, b in zip(rows["triton"], rows["torch"]) if "loss" in a]
    assert len(steps) == 3
    for a, b in steps:
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key, a[key], b[key])
    a, b = load_file(str(tmp_path / "triton/posterior.safetensors")), load_file(str(tmp_path / "torch/posterior.safetensors"))
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
