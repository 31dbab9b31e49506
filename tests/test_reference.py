"""The PyTorch references of the kernels (kernels/reference.py) against their definitions written out one query row
at a time in float64: which keys a query sees (the prefix, the causal sequence keys, padding, a sliding window
counted over [prefix ; sequence]), the soft-cap, GQA's head groups, the prefix mass, the dtypes; and the capture
statistics against per-token sums. The Triton kernels are compared with these references in
test_prefix_attention.py and test_capture_stats.py."""
import math

import pytest
import torch

from eptk.kernels.reference import capture_stats_reference, check_window_softcap, prefix_attention_reference


def gen(seed):
    return torch.Generator().manual_seed(seed)


def inputs(B=2, Hq=4, Hkv=2, T=5, S=7, P=3, D=8, seed=0, dtype=torch.float64):
    g = gen(seed)
    shapes = [(B, Hq, T, D), (B, Hkv, S, D), (B, Hkv, S, D), (Hkv, P, D), (Hkv, P, D)]
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def by_rows(q, k, v, pk, pv, mask=None, scale=None, window=None, softcap=None):
    """Attention written out per (sequence, head, query): query i at position P+S−T+i sees prefix key p (position p)
    and sequence key j ≤ S−T+i (position P+j) that is not padding, each fewer than `window` positions back; a row
    that sees nothing is zero. Returns out and the probability on the prefix, float64."""
    q, k, v, pk, pv = (t.double() for t in (q, k, v, pk, pv))
    B, Hq, T, D = q.shape
    Hkv, S, P = k.shape[1], k.shape[2], pk.shape[1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    out, mass = torch.zeros(B, Hq, T, D, dtype=torch.float64), torch.zeros(B, Hq, T, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hkv)
            keys, values = torch.cat([pk[g], k[b, g]]), torch.cat([pv[g], v[b, g]])
            for i in range(T):
                at = P + S - T + i
                seen = [c for c in range(P + S)
                        if (c < P or (c - P <= S - T + i and (mask is None or bool(mask[b, c - P]))))
                        and (window is None or at - c < window)]
                if not seen:
                    continue
                scores = torch.stack([q[b, h, i] @ keys[c] * scale for c in seen])
                if softcap is not None:
                    scores = softcap * torch.tanh(scores / softcap)
                probs = torch.softmax(scores, 0)
                out[b, h, i] = sum(p * values[c] for p, c in zip(probs, seen))
                mass[b, h, i] = sum(p for p, c in zip(probs, seen) if c < P)
    return out, mass


def left_padding(B, S, lengths):
    mask = torch.ones(B, S, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :S - n] = False
    return mask


CASES = {  # name: (shape arguments, options, padded lengths or None)
    "plain": ({}, {}, None),
    "gqa-4-to-1": (dict(Hq=4, Hkv=1), {}, None),
    "mha": (dict(Hq=3, Hkv=3), {}, None),
    "keys-beyond-queries": (dict(T=3, S=9), {}, None),
    "left-padding": ({}, {}, [7, 4]),
    "window": ({}, dict(window=4), None),
    "window-hides-the-prefix": (dict(P=3, S=9, T=9), dict(window=3), [9, 6]),
    "window-past-every-key": ({}, dict(window=10), None),
    "window-at-every-key": ({}, dict(window=11), None),
    "softcap": ({}, dict(softcap=0.7), None),
    "softcap-window-padding": ({}, dict(window=5, softcap=1.5), [7, 3]),
    "scale": ({}, dict(scale=0.9), None),
    "no-prefix": (dict(P=0), {}, None),
    "no-prefix-padding": (dict(P=0, T=7), {}, [7, 4]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_mass", [False, True], ids=["out", "out+mass"])
def test_prefix_attention_is_its_definition(case, with_mass):
    """float64: the fused (SDPA) path and the explicit softmax alike, to rounding; rows without a key are zero."""
    shape, options, lengths = CASES[case]
    tensors = inputs(**shape)
    B, S = tensors[1].shape[0], tensors[1].shape[2]
    mask = left_padding(B, S, lengths) if lengths else None
    want_out, want_mass = by_rows(*tensors, mask=mask, **options)
    got = prefix_attention_reference(*tensors, key_padding_mask=mask, return_prefix_mass=with_mass, **options)
    out = got[0] if with_mass else got
    assert out.dtype == torch.float64 and out.shape == want_out.shape
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    if with_mass:
        torch.testing.assert_close(got[1].double(), want_mass, rtol=1e-10, atol=1e-12)


def test_float32_inputs_run_a_float32_softmax_and_give_float32_mass():
    tensors = inputs(dtype=torch.float32)
    want_out, want_mass = by_rows(*tensors, window=5, softcap=2.0)
    out, mass = prefix_attention_reference(*tensors, return_prefix_mass=True, window=5, softcap=2.0)
    assert out.dtype == torch.float32 and mass.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mass.double(), want_mass, rtol=1e-5, atol=1e-6)
    fused = prefix_attention_reference(*tensors)  # the SDPA path keeps the float32 accumulation and dtype
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused.double(), by_rows(*tensors)[0], rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs_give_bfloat16_out_from_a_float32_softmax():
    tensors = inputs(dtype=torch.bfloat16)
    want_out, _ = by_rows(*tensors)
    for out in (prefix_attention_reference(*tensors), prefix_attention_reference(*tensors, return_prefix_mass=True)[0]):
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), want_out, rtol=0, atol=2e-2)


def test_a_fully_padded_sequence_without_a_prefix_is_zero_not_nan():
    tensors = inputs(P=0, T=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1] = False
    out = prefix_attention_reference(*tensors, key_padding_mask=mask)
    assert not out.isnan().any() and bool((out[1] == 0).all())


def test_the_prefix_mass_is_the_probability_on_the_prefix():
    tensors = inputs()
    tensors[3] = tensors[3] * 0  # prefix keys of score 0 ...
    tensors[0] = tensors[0] * 0  # ... and every score 0: a uniform softmax over the P + (visible) keys
    _, mass = prefix_attention_reference(*tensors, return_prefix_mass=True)
    P, S, T = 3, 7, 5
    want = torch.tensor([P / (P + S - T + i + 1) for i in range(T)], dtype=torch.float64)
    torch.testing.assert_close(mass, want.expand(2, 4, T), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad,message", [
    (dict(Hq=3, Hkv=2), "query heads 3 must be a multiple of key/value heads 2"),
    (dict(T=8, S=7), "sequence keys S=7 must be at least the queries T=8"),
])
def test_bad_shapes_are_refused(bad, message):
    with pytest.raises(ValueError) as refused:
        prefix_attention_reference(*inputs(**bad))
    assert str(refused.value) == message


@pytest.mark.parametrize("window,softcap", [(0, None), (-2, None), (2.5, None), (True, None), (None, 0.0),
                                            (None, -1.0), (None, float("inf")), (None, float("nan"))])
def test_bad_window_or_softcap_is_refused(window, softcap):
    with pytest.raises(ValueError) as refused:
        check_window_softcap(window, softcap)
    which = "window must be a positive integer" if window is not None else "softcap must be a positive finite number"
    assert str(refused.value) == f"{which} or None; got {window if window is not None else softcap!r}"
    with pytest.raises(ValueError):
        prefix_attention_reference(*inputs(), window=window, softcap=softcap)


def test_good_window_and_softcap_pass():
    check_window_softcap(None, None)
    check_window_softcap(1, 1e-3)
    check_window_softcap(4.0, 30)  # an integral float is a window


def test_capture_stats_are_sums_over_real_tokens():
    g = gen(3)
    hidden = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got = capture_stats_reference(hidden, mask)
    rows = [hidden[b, t] for b in range(3) for t in range(6) if mask[b, t]]
    assert all(x.dtype == torch.float32 for x in (got.pooled, got.count, got.sum, got.gram))
    assert float(got.count) == len(rows) == 9
    torch.testing.assert_close(got.sum.double(), torch.stack(rows).sum(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.gram.double(), sum(torch.outer(x, x) for x in rows), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.pooled[0].double(), hidden[0].mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.pooled[1].double(), hidden[1, 2:5].mean(0), rtol=1e-6, atol=1e-6)
    assert bool((got.pooled[2] == 0).all())  # a sequence with no real token pools to zeros


def test_capture_stats_take_any_float_dtype_and_a_float_mask():
    hidden = torch.randn(2, 4, 3, generator=gen(4)).to(torch.bfloat16)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = capture_stats_reference(hidden, mask)
    x = hidden.float()
    assert got.gram.dtype == torch.float32
    torch.testing.assert_close(got.pooled[0], x[0, :2].mean(0))
    torch.testing.assert_close(got.gram, x[0, :2].T @ x[0, :2] + x[1].T @ x[1])


def test_a_single_real_token_pools_to_itself():
    hidden = torch.randn(2, 3, 4, generator=gen(5))
    mask = torch.tensor([[0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    got = capture_stats_reference(hidden, mask)
    torch.testing.assert_close(got.pooled[0], hidden[0, 1])


def test_low_precision_inputs_are_computed_in_float32():
    """bf16 in, bf16 out: the softmax and products run in float32 and only the result is rounded (exactly what
    the float32 computation gives, cast), on the fused and the explicit path."""
    tensors = inputs(dtype=torch.bfloat16)
    wide = [t.float() for t in tensors]
    assert torch.equal(prefix_attention_reference(*tensors), prefix_attention_reference(*wide).to(torch.bfloat16))
    out, mass = prefix_attention_reference(*tensors, return_prefix_mass=True, softcap=3.0)
    want_out, want_mass = prefix_attention_reference(*wide, return_prefix_mass=True, softcap=3.0)
    assert torch.equal(out, want_out.to(torch.bfloat16)) and torch.equal(mass, want_mass)


def test_positions_follow_the_inputs_device():
    """Every mask is built on the queries' device (the meta device stands for a GPU here)."""
    tensors = [t.to("meta") for t in inputs()]
    mask = torch.ones(2, 7, dtype=torch.bool, device="meta")
    assert prefix_attention_reference(*tensors).device.type == "meta"
    out, mass = prefix_attention_reference(*tensors, key_padding_mask=mask, return_prefix_mass=True, window=4)
    assert out.device.type == "meta" and mass.shape == (2, 4, 5)
