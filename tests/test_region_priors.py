"""Priors placed relative to captured activations, built end to end through eptk.priors.build_prior:
region:data, region:new (its three guarantees, on the tiny model and on SmolLM2), region:between
and the exclusion sampler."""
import logging
import math

import pytest
import torch

from eptk import linalg
from eptk.capture import capture_task
from eptk.errors import EptkUsageError
from eptk.models import load_model
from eptk.priors import ParamInfo, PriorContext, build_prior, check_prior, parse_spec
from eptk.priors.basic import Normal
from eptk.priors.region import (KNN_K, KNN_QUANTILE, NORM_BAND, Between, Exclusion, SlotRows, _parse_task,
                                over_slot_rows, sampler_seed, slot_row_spec)
from eptk.spaces import slot_rows
from eptk.stats_cache import StatsCache

P = 8


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory):
    loaded = load_model("tiny")
    provider = StatsCache(loaded, "tiny", "arith", samples=512, seed=0, n_examples=48, progress=False,
                             root=tmp_path_factory.mktemp("stats"))
    return PriorContext(task="arith", model="tiny", seed=0, stats=provider)


def prompt_params(layers, width=64):
    """soft (layer 0) and deep.<l> params, like the trainer passes them."""
    params = {}
    for l in layers:
        name = "soft" if l == 0 else f"deep.{l}"
        params[name] = ParamInfo(name, (P, width), l)
    return params


def check_log_prob(prior, tensors):
    x = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    lp = prior.log_prob(x)
    lp.backward()
    assert torch.isfinite(lp)
    for v in x.values():
        assert torch.isfinite(v.grad).all()
    return float(lp.detach())


# ---- region:data ----------------------------------------------------------------------------------

def test_region_data_fits_each_layer(tiny_ctx):
    prior = build_prior("region:data", tiny_ctx, prompt_params([0, 2, 4]))
    for name, dist in prior.dists.items():
        layer = 0 if name == "soft" else int(name.split(".")[1])
        ls = tiny_ctx.stats("arith", layer)
        assert torch.equal(dist.mean, ls.mean)
    sample = prior.sample(torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in sample.items()} == {k: (P, 64) for k in prior.dists}
    check_log_prob(prior, sample)
    other = build_prior("region:data:fill", tiny_ctx, prompt_params([2]))
    assert not torch.equal(other.dists["deep.2"].mean, prior.dists["deep.2"].mean)


@pytest.mark.parametrize("spec,match", [("region:data:", "region:data:arith"),
                                        ("region:between:arith", "region:between:arith,qa"),
                                        ("region:between", "two tasks"),
                                        ("exclusion:0.5", "greater than 1"), ("exclusion:x", "exclusion:5"),
                                        ("region:nowhere", "region:new")])
def test_bad_specs_name_the_valid_form(tiny_ctx, spec, match):
    with pytest.raises(EptkUsageError, match=match):
        build_prior(spec, tiny_ctx, prompt_params([0]))


def test_region_priors_need_stats():
    assert parse_spec("region:new")[0].needs_stats and parse_spec("exclusion:3")[0].needs_stats
    with pytest.raises(EptkUsageError, match="activation statistics"):
        build_prior("region:data", PriorContext(task="arith"), prompt_params([0]))


# ---- region:new -----------------------------------------------------------------------------------

def assert_outside_data(x, ls):
    """The three region:new guarantees, recomputed from the LayerActivations with plain torch."""
    data = ls.samples.double()
    x = x.double()
    prec = torch.linalg.inv(ls.shrunk_cov.double())

    def maha(v):
        c = v - ls.mean.double()
        return ((c @ prec) * c).sum(1).sqrt()

    worst_data = maha(data).max()
    assert maha(x).min() > worst_data, f"layer {ls.layer}: Mahalanobis {maha(x).min():.4g} <= data's {worst_data:.4g}"
    lo, hi = torch.quantile(data.norm(dim=1), torch.tensor(NORM_BAND, dtype=torch.float64))
    norms = x.norm(dim=1)
    assert (norms >= lo).all() and (norms <= hi).all(), f"layer {ls.layer}: norms {norms} outside [{lo}, {hi}]"
    inner = torch.quantile(torch.cdist(data, data).sort(dim=1).values[:, KNN_K], KNN_QUANTILE)  # column 0: itself
    outer = torch.cdist(x, data).sort(dim=1).values[:, KNN_K - 1]
    assert outer.min() > inner, f"layer {ls.layer}: kNN distance {outer.min():.4g} <= data's radius {inner:.4g}"


def test_region_new_is_outside_the_data_on_the_tiny_model(tiny_ctx):
    prior = build_prior("region:new", tiny_ctx, prompt_params([0, 1, 2, 3, 4]))
    for seed in (0, 1):
        sample = prior.sample(torch.Generator().manual_seed(seed))
        for name, x in sample.items():
            layer = 0 if name == "soft" else int(name.split(".")[1])
            assert_outside_data(x, tiny_ctx.stats("arith", layer))
    again = build_prior("region:new", tiny_ctx, prompt_params([0, 1, 2, 3, 4])).sample(torch.Generator().manual_seed(1))
    assert all(torch.equal(again[k], sample[k]) for k in sample)        # seeded
    lp_new = check_log_prob(prior, sample)
    data_rows = {k: tiny_ctx.stats("arith", 0 if k == "soft" else int(k[5:])).samples[:P] for k in sample}
    assert lp_new > float(prior.log_prob(data_rows))                      # denser in the new region than on data


def every_token(loaded, task, layers, n_examples):
    """Each layer's activations of every token a capture keeps, recomputed here without eptk's hooks:
    hidden_states of a plain forward, minus padding, BOS, each sequence's first real token and, per batch,
    tokens whose norm exceeds 10x the median (massive activations)."""
    from eptk.capture import task_batches

    model, tok = loaded.model, loaded.tokenizer
    out = {l: [] for l in layers}
    for batch in task_batches(loaded, task, 0, n_examples, 16):
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        first = mask.long().cumsum(1) == 1
        real = mask & ~first & (ids != tok.bos_token_id)
        with torch.no_grad():
            states = model(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True).hidden_states
        for l in layers:
            norms = states[l].norm(dim=-1)
            keep = real & (norms <= 10 * norms[real].median())
            out[l].append(states[l][keep].double())
    return {l: torch.cat(rows) for l, rows in out.items()}


@pytest.fixture(scope="module")
def few_samples():
    """Statistics whose reservoir (64 rows) holds a small part of the ~800 captured tokens, so "every
    token" and "the reservoir" differ (with 32 rows the token-embedding layer's data fills its norm band
    and region:new finds too few points)."""
    loaded = load_model("tiny")
    layers = [0, 1, 2, 3]
    stats = capture_task(loaded, "tiny", "arith", layers, samples=64, seed=0, n_examples=96, progress=False)
    ctx = PriorContext(task="arith", model="tiny", seed=0, stats=lambda task, layer: stats.layer(layer))
    return loaded, stats, ctx, every_token(loaded, "arith", layers, 96)


def test_region_new_bounds_hold_against_every_captured_token(few_samples):
    """The three bounds are what the README says, computed here from scratch: the largest Mahalanobis
    distance of every captured token (not only the reservoir's), the 5-95% norm band and the 95th
    percentile of the data points' distances to their 5th nearest other point; every sample clears the
    first and the third by 5% and lies inside the band."""
    loaded, stats, ctx, tokens = few_samples
    prior = build_prior("region:new", ctx, prompt_params([0, 1, 2, 3]))
    sample = prior.sample(torch.Generator().manual_seed(0))
    beyond_reservoir = []
    for name, dist in prior.dists.items():
        layer = 0 if name == "soft" else int(name.split(".")[1])
        ls = stats.layer(layer)
        prec = torch.linalg.inv(ls.shrunk_cov.double())

        def maha(v):
            c = v.double() - ls.mean.double()
            return ((c @ prec) * c).sum(1).sqrt()

        data = ls.samples.double()
        assert tokens[layer].shape[0] > 2 * data.shape[0], "the reservoir must be a strict subset here"
        worst = float(maha(tokens[layer]).max())
        beyond_reservoir.append(worst > float(maha(data).max()))
        assert dist.bounds.mahalanobis == pytest.approx(worst, rel=1e-4), layer
        lo, hi = torch.quantile(data.norm(dim=1), torch.tensor(NORM_BAND, dtype=torch.float64)).tolist()
        assert (dist.bounds.norm_lo, dist.bounds.norm_hi) == pytest.approx((lo, hi), rel=1e-6)
        own = torch.cdist(data, data).sort(dim=1).values[:, KNN_K]          # column 0: the point itself
        radius = float(torch.quantile(own, KNN_QUANTILE))
        assert dist.bounds.knn_radius == pytest.approx(radius, rel=1e-6), layer
        x = sample[name].double()
        assert float(maha(x).min()) > 1.05 * worst
        norms = x.norm(dim=1)
        assert bool(((norms >= lo) & (norms <= hi)).all())
        assert float(torch.cdist(x, data).sort(dim=1).values[:, KNN_K - 1].min()) > 1.05 * radius
    # the token embeddings repeat a few characters, so the reservoir holds the farthest one there; deeper
    # layers must have a token beyond the reservoir's farthest, or this test could not tell the two apart
    assert any(beyond_reservoir), beyond_reservoir


def test_region_new_margin_is_five_percent(few_samples):
    """A point 3% past a bound fails the check, one 7% past passes: the margin is 5% (not 0, not 10%)."""
    _, stats, ctx, _ = few_samples
    dist = build_prior("region:new", ctx, prompt_params([2])).dists["deep.2"]
    ls = stats.layer(2)
    x = dist.sample(torch.Generator().manual_seed(1)).double()[:1]
    mean = ls.mean.double()
    d_x = float(linalg.mahalanobis(x, ls.scale_tril().double(), mean))
    for factor, passes in ((1.03, False), (1.07, True)):
        point = mean + (x - mean) * (factor * dist.bounds.mahalanobis / d_x)   # Mahalanobis is linear on the ray
        assert bool(dist.checks(point)["mahalanobis"][0]) is passes, factor
    # the kNN bound: bisect the ray from a data point outward to a given 5-NN distance
    data, k, radius = ls.samples.double(), dist.k, dist.bounds.knn_radius
    inner = int(torch.cdist(data, data).sort(dim=1).values[:, k].argmin())   # deep inside the data
    start, direction = data[inner], x[0] - data[inner]

    def knn(t):
        return float(torch.cdist((start + t * direction)[None], data).sort(dim=1).values[0, k - 1])
    for factor, passes in ((1.03, False), (1.07, True)):
        lo_t, hi_t = 0.0, 1.0
        assert knn(lo_t) < factor * radius
        while knn(hi_t) < factor * radius:
            hi_t *= 2
        for _ in range(60):
            mid = (lo_t + hi_t) / 2
            lo_t, hi_t = (mid, hi_t) if knn(mid) < factor * radius else (lo_t, mid)
        point = (start + hi_t * direction)[None]
        assert bool(dist.checks(point)["knn"][0]) is passes, factor


@pytest.mark.slow
def test_region_new_is_outside_the_data_on_smollm2():
    loaded = load_model("smollm2")
    layers = [0, 28, 29]
    stats = capture_task(loaded, "smollm2", "arith", layers, samples=2048, seed=0, n_examples=24, progress=False)
    ctx = PriorContext(task="arith", model="smollm2", seed=0, stats=lambda task, layer: stats.layer(layer))
    prior = build_prior("region:new", ctx, prompt_params(layers, width=576) | {
        "soft": ParamInfo("soft", (20, 576), 0)})
    sample = prior.sample(torch.Generator().manual_seed(0))
    assert sample["soft"].shape == (20, 576)
    for name, x in sample.items():
        assert_outside_data(x, stats.layer(0 if name == "soft" else int(name.split(".")[1])))
    check_log_prob(prior, sample)


# ---- region:between -------------------------------------------------------------------------------

def test_region_between_lies_on_segments(tiny_ctx):
    prior = build_prior("region:between:arith,fill", tiny_ctx, prompt_params([0, 3]))
    for name, dist in prior.dists.items():
        assert isinstance(dist, Between)
        x, alpha, a, b = dist.sample_with_parts(torch.Generator().manual_seed(4))
        assert ((alpha >= 0) & (alpha <= 1)).all() and alpha.shape == (P, 1)
        torch.testing.assert_close(x, alpha * a + (1 - alpha) * b)
        torch.testing.assert_close(dist.sample(torch.Generator().manual_seed(4)), x)   # same draws
    check_log_prob(prior, prior.sample(torch.Generator().manual_seed(5)))


def test_region_between_log_density_has_the_interpolation_moments(tiny_ctx):
    a, b = tiny_ctx.stats("arith", 2), tiny_ctx.stats("fill", 2)
    dist = Between((20000, 64), a, b)
    x = dist.sample(torch.Generator().manual_seed(0)).double()
    ends = (a.mean - b.mean).norm()
    assert (x.mean(0) - 0.5 * (a.mean + b.mean).double()).norm() < 0.05 * ends
    want = dist.moments.scale_tril.double() @ dist.moments.scale_tril.double().T
    assert (torch.cov(x.T) - want).norm() < 0.05 * want.norm()


# ---- exclusion ------------------------------------------------------------------------------------

def test_exclusion_rejects_the_core_and_reports_acceptance(tiny_ctx, caplog):
    with caplog.at_level(logging.INFO, logger="eptk.priors.region"):
        prior = build_prior("exclusion", tiny_ctx, {"deep.2": ParamInfo("deep.2", (512, 64), 2)})
    dist = prior.dists["deep.2"]
    assert isinstance(dist, Exclusion) and 0 < dist.acceptance_rate < 1
    assert "acceptance rate" in caplog.text
    x = dist.sample(torch.Generator().manual_seed(0))
    data = build_prior("region:data", tiny_ctx, {"deep.2": ParamInfo("deep.2", (512, 64), 2)}).dists["deep.2"]
    y = data.sample(torch.Generator().manual_seed(0))
    d2_x, d2_y = dist.mahalanobis2(x), dist.mahalanobis2(y)
    core = 2 * math.log(5) / (1 - 1 / dist.c_dim)                       # accepted only outside D² > core
    assert d2_x.min() > core and (d2_y < core).float().mean() > 0.3
    assert d2_x.mean() > d2_y.mean() and d2_x.median() > d2_y.quantile(0.75)
    assert 0 < dist.acceptance_rate < 1 and dist.proposed > 4096        # sampling updated the rate
    lp_out = check_log_prob(prior, {"deep.2": x})
    centre = dist.mean.expand(512, 64).clone()
    lp_centre = check_log_prob(prior, {"deep.2": centre})
    assert lp_centre < lp_out                                           # finite, but the core is penalized


# ---- the same families on synthetic statistics (no model): their formulas ---------------------------------

def layer_of_rows(x, layer=2, max_mahalanobis=None):
    """A layer's statistics captured from exactly the rows x [n, d] (every row kept in the reservoir)."""
    from eptk.stats import Reservoir, RunningGaussian, layer_activations

    res = Reservoir(*x.shape)
    res.add(x)
    return layer_activations(layer, RunningGaussian(x.shape[1]).add(x), res, max_mahalanobis=max_mahalanobis)


def synthetic_layer(seed=0, n=300, d=6, layer=2, max_mahalanobis=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d) + 4.0
    return layer_of_rows(x, layer, max_mahalanobis)


def test_knn_distance_is_the_kth_nearest_row():
    from eptk.priors.region import knn_distance

    data = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_distance(torch.tensor([[2.0]]), data, 2).tolist() == [1.0]       # |2−1|, |2−3|: the 2nd is 1
    assert knn_distance(data, data, 1, exclude_self=True).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_distance(data, data, 9).tolist() == [7.0, 6.0, 4.0, 7.0]       # k beyond the rows: the farthest
    many = torch.arange(3000.0)[:, None]                                       # more than one chunk of queries
    assert torch.equal(knn_distance(many, data, 1)[-2:], torch.tensor([2991.0, 2992.0], dtype=torch.float64))


def test_new_region_bounds_are_the_datas_own(caplog):
    from eptk.priors.region import knn_distance, new_region_bounds

    ls = synthetic_layer()
    data = ls.samples.double()
    with caplog.at_level(logging.WARNING, logger="eptk.priors.region"):
        b = new_region_bounds(ls)              # statistics with no distance over every token: the reservoir's bound
    assert caplog.messages == ["region:new at layer 2: these statistics predate eptk-stats/4 and record no distance "
                               "over every token; the bound is the reservoir's (recapture for the full guarantee)"]
    norms = data.norm(dim=1)
    assert (b.norm_lo, b.norm_hi) == pytest.approx(torch.quantile(norms, torch.tensor([0.05, 0.95],
                                                                                      dtype=torch.float64)).tolist())
    assert b.mahalanobis == pytest.approx(float(ls.mahalanobis(data).max()))
    assert b.knn_radius == pytest.approx(float(torch.quantile(knn_distance(data, data, KNN_K, exclude_self=True),
                                                              KNN_QUANTILE)))
    assert b.k == KNN_K
    wider = new_region_bounds(synthetic_layer(max_mahalanobis=1e3))  # the capture's pass over every token
    assert wider.mahalanobis == 1e3
    narrower = new_region_bounds(synthetic_layer(max_mahalanobis=0.5))
    assert narrower.mahalanobis == pytest.approx(b.mahalanobis)      # never below the reservoir's own
    with pytest.raises(EptkUsageError) as refused:
        new_region_bounds(synthetic_layer(n=5))
    assert str(refused.value) == ("region:new needs more than 5 captured token activations at layer 2 (have 5); "
                                  "capture more examples")


def test_new_region_samples_clear_every_bound_by_the_margin():
    from eptk.priors.region import MARGIN, NewRegion

    ls = synthetic_layer(d=4)
    dist = NewRegion((40, 4), ls, torch.Generator().manual_seed(0))
    x = dist.sample(torch.Generator().manual_seed(1)).double()
    assert x.shape == (40, 4)
    checks = dist.checks(x)
    assert all(bool(v.all()) for v in checks.values()), {k: int(v.sum()) for k, v in checks.items()}
    b = dist.bounds
    assert float(ls.mahalanobis(x.float()).min()) > b.mahalanobis * (1 + MARGIN) * (1 - 1e-5)
    norms = x.norm(dim=1)
    assert bool(((norms >= b.norm_lo) & (norms <= b.norm_hi)).all())
    assert float(norms.max() - norms.min()) > 0.5 * (b.norm_hi - b.norm_lo)   # each row its own norm in the band
    assert torch.equal(dist.cheap_checks(x), checks["mahalanobis"] & checks["norm"])
    inside = ls.samples[:5].double()
    assert not dist.checks(inside)["mahalanobis"].any() and not dist.cheap_checks(inside).any()
    assert torch.equal(dist.sample(torch.Generator().manual_seed(1)), x.float())   # seeded
    again = NewRegion((40, 4), ls, torch.Generator().manual_seed(0))
    assert torch.equal(again.centres, dist.centres)                                 # its density's pool: seeded
    far_out = x[:2] * (b.norm_hi / x[:2].norm(dim=1, keepdim=True)) * 1.5       # the same directions, too long
    too_short = x[:2] * (b.norm_lo / x[:2].norm(dim=1, keepdim=True)) * 0.5     # and too short
    assert not dist.checks(far_out)["norm"].any() and not dist.checks(too_short)["norm"].any()


def test_new_region_takes_one_row_per_path():
    """Each path is walked outward until its first point clears the bounds, then it is done: a path's points
    all share the path's norm ρ, so a path taken twice shows as two rows with one norm (the norms of distinct
    paths are continuous draws and never agree to 1e-9)."""
    from eptk.priors.region import NewRegion

    for d in (4, 6):
        ls = synthetic_layer(d=d)
        dist = NewRegion((40, d), ls, torch.Generator().manual_seed(0))
        norms = dist.draw(300, torch.Generator().manual_seed(3)).norm(dim=1).sort().values
        gaps = (norms[1:] - norms[:-1]) / norms[1:]
        assert float(gaps.min()) > 1e-9, f"d={d}: {int((gaps <= 1e-9).sum())} rows share a path"


def test_new_region_refuses_where_the_data_fills_its_norm_band():
    """Data spread evenly over a ring around the origin (d = 2): every vector with a norm inside the data's band
    lies within its Mahalanobis range, so no path clears the bounds. Building the density's pool of 256 rows
    refuses after 20 rounds of 320 tries (the rows still needed and a quarter more), in one line with what it
    found and the data's bounds."""
    from eptk.priors.region import NewRegion

    g = torch.Generator().manual_seed(0)
    angle = 2 * math.pi * torch.rand(2000, generator=g, dtype=torch.float64)
    radius = 1 + torch.rand(2000, generator=g, dtype=torch.float64)
    ring = layer_of_rows(torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1), layer=3)
    with pytest.raises(EptkUsageError) as refused:
        NewRegion((4, 2), ring, torch.Generator().manual_seed(0))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("region:new: found only 0 of 256 vectors outside the data at layer 3 after 6400 "
                              "tries (data: max Mahalanobis 1.8")
    assert "the data fills its norm band here, use another layer or prior" in message


def test_between_moments_are_the_interpolations():
    a, b = synthetic_layer(seed=1), synthetic_layer(seed=2)
    a.mean.add_(3.0)
    dist = Between((5, 6), a, b)
    delta = (a.mean - b.mean).double()
    cov = (a.cov.double() + b.cov.double()) / 3 + torch.outer(delta, delta) / 12
    torch.testing.assert_close(dist.moments.mean.double(), 0.5 * (a.mean + b.mean).double())
    torch.testing.assert_close((dist.moments.scale_tril @ dist.moments.scale_tril.T).double(), cov,
                               rtol=1e-4, atol=1e-5)
    x = dist.sample(torch.Generator().manual_seed(3))
    assert torch.equal(dist.log_prob(x), dist.moments.log_prob(x))


def test_exclusion_log_density_and_acceptance_are_their_formulas():
    ls = synthetic_layer(d=3)
    dist = Exclusion((7, 3), ls, 5.0, torch.Generator().manual_seed(0))
    c_d = 5.0 ** (2 / 3)
    assert dist.c_dim == pytest.approx(c_d) and dist.proposed == 4096
    assert dist.acceptance_rate == pytest.approx(dist.accepted / dist.proposed)
    x = dist.sample(torch.Generator().manual_seed(1)).double()
    L = dist.scale_tril.double()
    z = torch.linalg.solve_triangular(L, (x - dist.mean.double()).T, upper=False).T
    d2 = (z * z).sum(1)
    torch.testing.assert_close(dist.mahalanobis2(x.float()).double(), d2, rtol=1e-5, atol=1e-5)
    core = 2 * math.log(5.0) / (1 - 1 / c_d)
    assert bool((d2 > core).all())
    log_det = 2 * float(L.diagonal().log().sum())
    log_wide = -0.5 * d2 / c_d - 0.5 * (log_det + 2 * math.log(5.0)) - 1.5 * math.log(2 * math.pi)
    p = 1 - torch.exp(math.log(5.0) - 0.5 * d2 * (1 - 1 / c_d))
    log_p = math.log(0.01) + torch.log(torch.nn.functional.softplus(p / 0.01))
    want = float((log_wide + log_p).sum()) - 7 * math.log(dist.acceptance_rate)
    assert float(dist.log_prob(x.float())) == pytest.approx(want, rel=1e-4)
    with pytest.raises(EptkUsageError, match="c must be greater than 1"):
        build_prior("exclusion:1", PriorContext(task="arith", stats=lambda task, layer: ls),
                    {"deep.2": ParamInfo("deep.2", (4, 6), 2)})


def test_exclusion_log_density_inside_and_across_the_core():
    """Inside the excluded core the log-density follows log τ·softplus((1 − ratio)/τ) at every depth: across the
    boundary (|s| < 30, where p/τ and its softplus differ) and deep inside (s < −30, where it is s itself)."""
    ls = synthetic_layer(d=3)
    dist = Exclusion((1, 3), ls, 5.0, torch.Generator().manual_seed(0))
    c_d = 5.0 ** (2 / 3)
    core = 2 * math.log(5.0) / (1 - 1 / c_d)
    L, mu = dist.scale_tril.double(), dist.mean.double()
    log_det = 2 * float(L.diagonal().log().sum())
    for d2 in (0.0, 0.3 * core, 0.99 * core, 0.9995 * core, 1.0005 * core, 1.01 * core, 2 * core):
        x = (mu + math.sqrt(d2) * L[:, 0]).float()[None]   # along the factor's first column: D² = d2
        d2_x = float(dist.mahalanobis2(x))
        assert d2_x == pytest.approx(d2, rel=1e-4, abs=1e-4)
        s = (1 - math.exp(math.log(5.0) - 0.5 * d2_x * (1 - 1 / c_d))) / 0.01
        log_p = math.log(0.01) + float(torch.log(torch.nn.functional.softplus(torch.tensor(s, dtype=torch.float64))))
        log_wide = -0.5 * d2_x / c_d - 0.5 * (log_det + 2 * math.log(5.0)) - 1.5 * math.log(2 * math.pi)
        want = log_wide + log_p - math.log(dist.acceptance_rate)
        assert float(dist.log_prob(x)) == pytest.approx(want, rel=1e-4, abs=1e-3), (d2 / core, s)


def test_exclusion_samples_come_from_the_generator_and_are_logged(caplog):
    """Construction and sampling draw from the generators given (the same seeds, the same prior and rows), count
    every proposal, take one batch of 2·rows/rate proposals when that suffices, and log the rate."""
    ls = synthetic_layer(d=3)
    make = lambda rows=50: Exclusion((rows, 3), ls, 5.0, torch.Generator().manual_seed(0))  # noqa: E731
    with caplog.at_level(logging.INFO, logger="eptk.priors.region"):
        first, second = make(), make()
        assert (first.accepted, first.proposed) == (second.accepted, second.proposed) and first.proposed == 4096
        assert f"exclusion:5 prior at layer 2: acceptance rate {first.acceptance_rate:.3f}" in caplog.messages
        accepted, rate = first.accepted, first.acceptance_rate
        x = first.sample(torch.Generator().manual_seed(1))
    assert torch.equal(x, second.sample(torch.Generator().manual_seed(1)))
    assert not torch.equal(x, make().sample(torch.Generator().manual_seed(2)))
    assert first.proposed == 4096 + max(64, int(2 * 50 / rate)) and first.accepted >= accepted + 50
    assert first.acceptance_rate == first.accepted / first.proposed
    assert (f"exclusion:5 acceptance rate {first.acceptance_rate:.3f} over {first.proposed} proposals"
            in caplog.messages)
    one = make(rows=1).sample(torch.Generator().manual_seed(3))
    assert one.shape == (1, 3) and float(first.mahalanobis2(one)) > 2 * math.log(5) / (1 - 5 ** (-2 / 3))


def test_exclusion_near_one_samples_after_an_empty_calibration_and_refuses_when_nothing_is_accepted():
    """A c near 1 leaves a thin shell: the 4096 calibration proposals may accept none, and sampling still goes on
    (c = 1.0003: 1 row after about 22,000 proposals); at c = 1 + 1e-9 nothing is accepted in 50 million proposals,
    and the prior refuses in one line that says which way to move c."""
    ls = synthetic_layer(d=3)
    thin = Exclusion((1, 3), ls, 1.0003, torch.Generator().manual_seed(0))
    assert thin.accepted == 0
    assert thin.sample(torch.Generator().manual_seed(0)).shape == (1, 3) and thin.accepted >= 1
    never = Exclusion((1, 3), ls, 1 + 1e-9, torch.Generator().manual_seed(0))
    refusal = r"^exclusion:1\.000000001: no proposal accepted in 5\d{7}; use a larger c$"
    with pytest.raises(EptkUsageError, match=refusal):
        never.sample(torch.Generator().manual_seed(0))


# ---- keys/values as slot rows, the task checks, device moves -------------------------------------

def test_a_key_value_tensor_is_sampled_and_scored_as_its_slot_rows():
    """A region family sees a prefix's keys [Hkv,P,D] as slot rows [P, Hkv*D]: its spec, its samples and its
    log-density all go through that layout (a mean that differs per column makes any other layout score worse)."""
    param = ParamInfo("prefix.2.key", (2, 3, 4), 2, "key")
    spec = slot_row_spec(param)
    assert (spec.name, tuple(spec.shape), spec.layer, spec.space) == ("prefix.2.key", (3, 8), 2, "key")
    rows = Normal((3, 8), 0.5, mean=torch.arange(24.0).reshape(3, 8))
    dist = SlotRows(rows, (2, 3, 4))
    x = dist.sample(torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 4)
    torch.testing.assert_close(slot_rows(x), rows.sample(torch.Generator().manual_seed(0)))
    assert float(dist.log_prob(x)) == pytest.approx(float(rows.log_prob(slot_rows(x))))
    assert float(dist.log_prob(x)) > float(rows.log_prob(x.reshape(3, 8))) + 100
    assert dist.to("meta") is dist and rows.mean.device.type == "meta"


def test_region_families_wrap_keys_values_and_pass_activations_through():
    """A family's `make` gets the parsed args and the context as they came, and on keys/values the slot-row spec;
    the distribution it makes is the one wrapped."""
    calls = []

    def make(args, ctx, param):
        calls.append((args, ctx, param))
        return Normal(param.shape, 1.0)
    args, ctx = {"task": "fill"}, PriorContext(task="arith", model="tiny", seed=0)
    plain = over_slot_rows(make)(args, ctx, ParamInfo("deep.2", (3, 8), 2))
    assert isinstance(plain, Normal) and calls[-1][:2] == (args, ctx) and calls[-1][2].shape == (3, 8)
    wrapped = over_slot_rows(make)(args, ctx, ParamInfo("prefix.2.value", (2, 3, 4), 2, "value"))
    assert len(calls) == 2 and calls[-1][:2] == (args, ctx) and tuple(calls[-1][2].shape) == (3, 8)
    assert isinstance(wrapped, SlotRows) and wrapped.shape == (2, 3, 4) and wrapped.rows.shape == (3, 8)


def test_a_region_spec_names_its_task_or_none():
    parse = _parse_task("region:data")
    assert parse(None) == {"task": None} and parse(" fill ") == {"task": "fill"}
    for empty in ("", "  "):
        with pytest.raises(EptkUsageError, match=r"^prior region:data: needs a task after the colon, "
                                                 r"e\.g\. region:data:arith \(or region:data\)$"):
            parse(empty)


def test_sampler_seeds_stay_what_committed_runs_used():
    """The seed of a family's own sampler is part of a run's record: a committed run rebuilt from its config must
    draw the same prior. Apart per run seed, layer, salt and space (none, key, value)."""
    ctx = PriorContext(task="arith", model="tiny", seed=2)
    seeds = {space: sampler_seed(ctx, ParamInfo("p", (2, 3, 4), 3, space), 13) for space in ("", "key", "value")}
    assert seeds == {"": 2_000_006 + 21 + 13, "key": 2_000_006 + 21 + 13 + 100_003,
                     "value": 2_000_006 + 21 + 13 + 200_006}


def test_exclusion_on_keys_reports_its_acceptance_rate(tiny_ctx):
    params = {"prefix.2.key": ParamInfo("prefix.2.key", (2, P, 16), 2, "key")}
    dist = build_prior("exclusion:5", tiny_ctx, params).dists["prefix.2.key"]
    assert isinstance(dist, SlotRows) and dist.acceptance_rate == dist.rows.acceptance_rate
    assert 0 < dist.acceptance_rate <= 1


@pytest.mark.parametrize("spec,task", [("region:data:poetry", "arith"), ("region:new", "poetry"),
                                       ("region:between:arith,poetry", "arith"),
                                       ("region:between:poetry,arith", "arith")])
def test_region_priors_check_their_tasks_before_any_model(spec, task):
    """An unknown task is refused at the check (before a model loads), by name, with the valid ones; the run's own
    task stands in when the spec names none."""
    ctx = PriorContext(task=task, model="tiny", seed=0)
    with pytest.raises(EptkUsageError, match="unknown task 'poetry'; valid: .*arith"):
        check_prior(spec, ctx)


@pytest.mark.parametrize("spec", ["region:data", "region:data:fill", "region:new:qa", "region:between:arith,fill"])
def test_region_priors_of_known_tasks_pass_the_check(spec):
    check_prior(spec, PriorContext(task="arith", model="tiny", seed=0))


def test_new_region_and_between_move_every_tensor_they_sample_from(tiny_ctx):
    """`to(device)` moves what log_prob reads and returns the distribution (a meta device shows it on a CPU)."""
    new = build_prior("region:new", tiny_ctx, prompt_params([2])).dists["deep.2"]
    assert new.to("meta") is new and new.centres.device.type == "meta"
    between = build_prior("region:between:arith,fill", tiny_ctx, prompt_params([2])).dists["deep.2"]
    assert between.to("meta") is between
    assert {g.mean.device.type for g in (between.a, between.b, between.moments)} == {"meta"}


def test_layer_stats_for_reads_the_named_or_the_runs_task_at_its_layer_and_space():
    """The statistics a family reads: the task it names or the run's, at the tensor's layer, in its space (keys or
    values with the space, activations with the two-argument call), the fixed capture seed's when asked and
    given, and refused by family name when the width differs."""
    from eptk.priors.region import layer_stats_for

    calls = []

    def stats(task, layer, **space):
        calls.append((task, layer, space))
        return synthetic_layer(d=8)

    def reference(task, layer, **space):
        calls.append(("reference", task, layer, space))
        return synthetic_layer(d=8)
    key = ParamInfo("prefix.3.key", (5, 8), 3, "key")
    both = PriorContext(task="arith", model="tiny", seed=0, stats=stats, reference_stats=reference)
    layer_stats_for("region:data", both, key, "fill")
    layer_stats_for("region:data", both, key, None)
    layer_stats_for("region:data", both, ParamInfo("deep.2", (5, 8), 2), None)
    layer_stats_for("vae", both, key, None, reference=True)
    layer_stats_for("vae", PriorContext(task="arith", model="tiny", seed=0, stats=stats), key, None, reference=True)
    assert calls == [("fill", 3, {"space": "key"}), ("arith", 3, {"space": "key"}), ("arith", 2, {}),
                     ("reference", "arith", 3, {"space": "key"}), ("arith", 3, {"space": "key"})]
    with pytest.raises(EptkUsageError, match="^prior 'region:data' gives vectors of width 8 but prefix.3.key has "
                                             "width 6"):
        layer_stats_for("region:data", both, ParamInfo("prefix.3.key", (5, 6), 3, "key"), None)


def test_new_region_walks_the_documented_path_grid(monkeypatch):
    """Each path is v(t) = ρ·(μ + t·u)/‖μ + t·u‖ over t = t₀·√2^s, s = 0..15, then t = ∞ (v = ρ·u), where t₀ takes
    μ + t₀·u exactly to the data's largest Mahalanobis distance plus the margin; the row kept is the path's first
    point that clears every bound. The paths are read where the sampler checks them (cheap_checks), and each
    point's t is solved back from μ, u and the point."""
    from eptk import linalg
    from eptk.priors.region import NewRegion

    ls = synthetic_layer(d=5)
    dist = NewRegion((8, 5), ls, torch.Generator().manual_seed(0))
    seen = []
    real = NewRegion.cheap_checks
    monkeypatch.setattr(NewRegion, "cheap_checks", lambda self, x: seen.append(x.clone()) or real(self, x))
    rows = dist.draw(24, torch.Generator().manual_seed(5))
    paths = seen[0].reshape(-1, 17, 5)                                    # 16 grid points and t = ∞ per path
    mu, b, m = dist.mean, dist.bounds, dist.margin
    rho = paths[:, -1].norm(dim=1)
    u = paths[:, -1] / rho[:, None]                                         # t = ∞: the direction itself
    assert torch.allclose(paths.norm(dim=-1), rho[:, None].expand(-1, 17), rtol=1e-12)
    t0 = b.mahalanobis * (1 + m) / linalg.mahalanobis(u, dist.tril)
    for i in range(paths.shape[0]):
        # μ + t·u = λ·v: two unknowns (t, λ), d equations
        a = torch.stack([u[i].expand(16, -1), -paths[i, :16]], dim=-1)     # [16, d, 2]
        t = torch.linalg.lstsq(a, -mu.expand(16, -1).unsqueeze(-1)).solution[:, 0, 0]
        torch.testing.assert_close(t, t0[i] * 2.0 ** (torch.arange(16, dtype=torch.float64) / 2), rtol=1e-6, atol=0)
    # the rows kept are each path's first point that clears every bound, gathered step by step outward
    checks = dist.checks(paths.reshape(-1, 5))
    clears = (checks["mahalanobis"] & checks["norm"] & checks["knn"]).reshape(-1, 17)
    first_step = torch.where(clears.any(1), clears.int().argmax(1), 17)
    order = sorted((int(s), i) for i, s in enumerate(first_step) if s < 17)
    assert len(seen) == 1 and len(order) >= 24
    expected = torch.stack([paths[i, s] for s, i in order[:24]])
    torch.testing.assert_close(rows.double(), expected, rtol=0, atol=0)
