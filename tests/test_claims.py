"""Each claim's verdict (docs/findings/RULES.md, version 2) just inside and just outside every bound, one condition
toggled at a time, from the decide functions the report uses."""
import copy
import math

import numpy as np
import pytest
import torch

from eptk.reproduce.claims import CLAIMS, FAILS, HOLDS, NOT_MEASURED, UNSURE, TunedRun
from eptk.reproduce.claims import new_region as C2, priors_position as C1, sink as C6, task_clusters as C4, \
    trajectories as C3, transfer as C5


def interval(mean, lo, hi, n=10):
    return {"mean": mean, "lo": lo, "hi": hi, "n": n}


def test_every_claim_is_registered_once_with_its_rule():
    assert sorted(CLAIMS) == ["1", "2", "3", "4", "5", "6"]
    assert all(c.rule and c.text and callable(c.measure) for c in CLAIMS.values())


# ---- claim 1 ------------------------------------------------------------------------------------------

def block(method="deep", rho=0.9, p=0.001, ident_p=0.001):
    return {"method": method, "mantel_rho": rho, "mantel_p": p, "identification_p": ident_p}


def test_claim1_bounds():
    strong = [block(m) for m in ("soft", "deep", "deep", "deep", "deep")]
    assert C1.decide(strong)[0] == HOLDS
    # one deep block in four failing leaves 75%: still holds; two leave 50%
    one = strong[:4] + [block(rho=0.49)]
    assert C1.decide(one)[0] == HOLDS
    for bad in (dict(rho=0.49), dict(p=0.011), dict(ident_p=0.011)):
        two = strong[:3] + [block(**bad), block(**bad)]
        assert C1.decide(two)[0] == UNSURE, bad
    assert C1.decide(strong[:3] + [block(rho=0.5), block(p=0.0099)])[0] == HOLDS
    # no relation (both p ≥ 0.05) in half of a method's blocks: does not hold; at 0.049 it is only unsure
    none = [block("soft")] + [block(p=0.05, ident_p=0.05, rho=0.0)] * 2 + [block()] * 2
    assert C1.decide(none)[0] == FAILS
    almost = [block("soft")] + [block(p=0.049, ident_p=0.05, rho=0.0)] * 2 + [block()] * 2
    assert C1.decide(almost)[0] == UNSURE


def test_claim1_statistics_tell_staying_from_converging():
    """Posteriors that stay near their priors are identified and correlate; posteriors that all move to one point
    do not."""
    g = torch.Generator().manual_seed(0)

    def run(i, post):
        prior = torch.randn(4, 8, generator=g) * 3
        return TunedRun(f"r{i}", "soft", f"p{i % 3}", i, prior_tensors={"soft": prior},
                        posterior_tensors={"soft": post(prior)})
    stay = [run(i, lambda p: p + 0.05 * torch.randn(p.shape, generator=g)) for i in range(9)]
    rows = C1.block_tests(stay, n_perm=199)
    assert C1.decide(rows)[0] == HOLDS and rows[0]["identified"] == 1.0
    target = torch.randn(4, 8, generator=g)
    collapse = [run(i, lambda p: target + 0.05 * torch.randn(p.shape, generator=g)) for i in range(9)]
    rows = C1.block_tests(collapse, n_perm=199)
    assert C1.decide(rows)[0] == FAILS


# ---- claim 2 ------------------------------------------------------------------------------------------

def comparison(control=True, outside=True, hi=5.0, lo=-5.0, p=0.01):
    return {"control_passes": control, "new_outside": outside, "delta": interval(0.0, lo, hi), "tost": {"p": p}}


def test_claim2_bounds():
    both = {"deep": {"a": comparison()}, "soft": {"a": comparison()}}
    assert C2.decide(both, 0.9)[0] == HOLDS
    assert C2.decide(both, 0.899)[0] == UNSURE                       # not converged
    for toggle in (dict(control=False), dict(outside=False), dict(p=0.05)):
        one = copy.deepcopy(both)
        one["soft"]["a"] = comparison(**toggle)
        assert C2.decide(one, 0.95)[0] == UNSURE, toggle
    # another step size of the same method may carry it
    other = copy.deepcopy(both)
    other["soft"] = {"a": comparison(control=False), "b": comparison()}
    assert C2.decide(other, 0.95)[0] == HOLDS
    worse = copy.deepcopy(both)
    worse["deep"]["a"] = comparison(lo=-30, hi=-10.01, p=0.9)
    assert C2.decide(worse, 0.95)[0] == FAILS
    worse["deep"]["a"] = comparison(lo=-30, hi=-9.99, p=0.9)
    assert C2.decide(worse, 0.95)[0] == UNSURE
    # below −10 at one readable step size but not at another: not "every", so not a failure
    worse["deep"] = {"a": comparison(lo=-30, hi=-11, p=0.9), "b": comparison(lo=-12, hi=-2, p=0.3)}
    assert C2.decide(worse, 0.95)[0] == UNSURE


def test_claim2_positive_control_and_outside_bounds():
    def arm(inside, scores=(80.0,) * 10):
        return {"inside_share": inside, "scores": list(scores), "best_val": [0.2] * len(scores)}
    assert C2.compare(arm(0.5), arm(0.05))["control_passes"] and C2.compare(arm(0.5), arm(0.05))["new_outside"]
    assert not C2.compare(arm(0.499), arm(0.05))["control_passes"]
    assert not C2.compare(arm(0.5), arm(0.051))["new_outside"]


# ---- claim 3 ------------------------------------------------------------------------------------------

def test_claim3_bounds():
    assert C3.decide(interval(1, 0.75, 1.2), interval(1, 0.5, 1.2))[0] == HOLDS
    assert C3.decide(interval(1, 0.749, 1.2), interval(1, 0.5, 1.2))[0] == UNSURE
    assert C3.decide(interval(1, 0.75, 1.2), interval(1, 0.499, 1.2))[0] == UNSURE
    assert C3.decide(interval(0.6, 0.5, 0.749), interval(1, 0.9, 1.2))[0] == FAILS
    assert C3.decide(interval(1, 0.9, 1.2), interval(0.4, 0.3, 0.499))[0] == FAILS
    assert C3.decide(interval(0.6, 0.5, 0.75), interval(1, 0.9, 1.2))[0] == UNSURE


def test_claim3_intervals_are_grouped_by_seed():
    """Trajectories of three seeds that disagree: the interval spans the seeds, however many rows each has."""
    rng = np.random.default_rng(0)
    rows = [{"seed": s, "task": "arith", "prompt": f"p{i}", "layer": 0, "points": 8, "order_p": 0.5,
             "step_ratio": level * math.exp(rng.normal(0, 0.01)), "spread_ratio": 1.0 + 0.01 * rng.normal()}
            for s, level in ((0, 0.5), (1, 1.0), (2, 2.0)) for i in range(40)]
    step = C3.ratio_intervals(rows)["step_ratio"]
    assert step["n"] == 3 and step["lo"] < 0.75 < step["hi"]
    assert C3.decide(step, interval(1, 0.9, 1.1))[0] == UNSURE


# ---- claim 4 ------------------------------------------------------------------------------------------

def layer_rows(layer, aq, af, qf, qq, ff, seeds=(0, 1, 2)):
    pairs = {"arith-qa": aq, "arith-fill": af, "qa-fill": qf, "qa-qa:b": qq, "fill-fill:b": ff}
    return [{"seed": s, "layer": layer, "pair": p, "silhouette": v} for s in seeds for p, v in pairs.items()]


def test_claim4_relative_criterion_and_template_null():
    apart = sum((layer_rows(l, 0.6, 0.6, 0.2, 0.25, 0.1) for l in range(4)), [])
    assert C4.decide(C4.layer_table(apart))[0] == HOLDS
    # qa–fill separated more than a task from its own other template, in every layer: does not hold
    beyond = sum((layer_rows(l, 0.6, 0.6, 0.3, 0.25, 0.1) for l in range(4)), [])
    assert C4.decide(C4.layer_table(beyond))[0] == FAILS
    # equal to the null counts as within it; arith must be strictly farther
    tie = sum((layer_rows(l, 0.6, 0.6, 0.25, 0.25, 0.1) for l in range(4)), [])
    assert C4.decide(C4.layer_table(tie))[0] == HOLDS
    close = sum((layer_rows(l, 0.6, 0.2, 0.2, 0.25, 0.1) for l in range(4)), [])
    assert C4.decide(C4.layer_table(close))[0] == FAILS
    # 3 of 4 layers (75%) holds, 2 of 4 does not
    three = sum((layer_rows(l, 0.6, 0.6, 0.2, 0.25, 0.1) for l in range(3)), []) + layer_rows(3, 0.1, 0.1, 0.2, 0.1, 0.1)
    assert C4.decide(C4.layer_table(three))[0] == HOLDS
    two = sum((layer_rows(l, 0.6, 0.6, 0.2, 0.25, 0.1) for l in range(2)), []) + \
        sum((layer_rows(l, 0.1, 0.1, 0.2, 0.1, 0.1) for l in (2, 3)), [])
    assert C4.decide(C4.layer_table(two))[0] == UNSURE


# ---- claim 5 ------------------------------------------------------------------------------------------

def paired(**over):
    d = {k: interval(-1, -2, -0.1, 3) for k in ("loss@10", "loss@25", "loss@50", "area")}
    d["steps_to_0.5"] = interval(-10, -20, -1, 3)
    d["score"] = interval(0, -4.9, 5, 3)
    d.update(over)
    return d


def test_claim5_bounds():
    assert C5.decide(paired())[0] == HOLDS
    for key in ("loss@10", "loss@25", "loss@50", "area"):
        assert C5.decide(paired(**{key: interval(-1, -2, 0.0, 3)}))[0] == UNSURE, key
    assert C5.decide(paired(score=interval(0, -5.0, 5, 3)))[0] == UNSURE
    assert C5.decide(paired(**{"loss@50": interval(1, 0.01, 2, 3)}))[0] == FAILS
    assert C5.decide(paired(**{"loss@50": interval(1, 0.0, 2, 3)}))[0] == UNSURE
    assert C5.decide(paired(score=interval(-9, -12, -5.01, 3)))[0] == FAILS
    assert C5.decide(paired(score=interval(-9, -12, -4.99, 3)))[0] == UNSURE


def test_claim5_fixed_budget_measures():
    curve = [(0, 7.0), (10, 3.0), (20, 1.0), (30, 0.6), (40, 0.5), (50, 0.4), (150, 0.2)]
    assert C5.loss_at(curve, 10) == 3.0 and C5.loss_at(curve, 25) == pytest.approx(0.8) and C5.loss_at(curve, 50) == 0.4
    assert C5.steps_to(curve) == 40.0
    assert C5.area([(0, 1.0), (150, 1.0)]) == 150.0 and math.isnan(C5.area([(10, 1.0), (150, 1.0)]))


# ---- claim 6 ------------------------------------------------------------------------------------------

def test_claim6_bounds():
    hurts = {"rho": -0.8, "p": 0.01}
    assert C6.decide(hurts, True, interval(0.5, 0.4, 0.99), 0.9)[0] == HOLDS
    assert C6.decide(hurts, True, interval(0.9, 0.8, 1.0), 1.0)[0] == UNSURE
    assert C6.decide(hurts, True, interval(1.2, 1.0, 1.5), 1.0)[0] == FAILS
    assert C6.decide(hurts, False, interval(0.5, 0.4, 0.9), 1.0)[0] == UNSURE      # the manipulation did not take
    assert C6.decide({"rho": -0.8, "p": 0.05}, True, interval(0.5, 0.4, 0.9), 1.0)[0] == FAILS
    assert C6.decide({"rho": 0.1, "p": 0.01}, True, interval(0.5, 0.4, 0.9), 1.0)[0] == FAILS
    # RULES.md, "Inference": below 90% of runs stopped early, no verdict either way (claim 6 had left this out)
    for trend, fix in [(hurts, interval(0.5, 0.4, 0.99)), (hurts, interval(1.2, 1.0, 1.5)), ({"rho": 0.1, "p": 0.01}, interval(0.5, 0.4, 0.9))]:
        verdict, why = C6.decide(trend, True, fix, 0.899)
        assert verdict == UNSURE and "only 90% of runs stopped early" in why and "not converged" in why
        assert C6.decide(trend, True, fix, math.nan)[0] == UNSURE


def test_converged_share_counts_runs_that_stopped_early():
    from types import SimpleNamespace as Run

    from eptk.reproduce.claims.base import converged_share, not_converged

    runs = [Run(stopped_early=v) for v in (True, True, False, None, True)]
    assert converged_share(runs) == 0.75 and math.isnan(converged_share([Run(stopped_early=None)]))
    assert not_converged(0.9) is None and not_converged(1.0) is None
    assert "only 89% of runs stopped early" in not_converged(0.89) and not_converged(math.nan)


def test_claim6_manipulation_check_compares_with_the_unprompted_sink():
    assert C6.mean_mass({"layer0": [0.9], "layer1": [0.2, 0.4], "layer2": [0.3, 0.1]}) == pytest.approx(0.25)


def test_not_measured_names_what_is_missing():
    from eptk.reproduce.claims import not_measured

    r = not_measured(CLAIMS["2"], ["a", "b"])
    assert r["verdict"] == NOT_MEASURED and r["missing"] == ["a", "b"] and "missing 2" in r["why"]


def test_a_claim_with_inputs_still_missing_is_not_a_verdict():
    """The rules judge a claim on all its inputs (claim 1: "for every method" of the whole grid): on part of them a
    claim reads not measured, and what the inputs there are would give is kept apart as `provisional`. Found on
    Gemma, whose first 6 main-grid runs (soft only) gave claim 1 "holds"."""
    from types import SimpleNamespace

    from eptk.reproduce.claims.base import partial

    g = torch.Generator().manual_seed(0)
    runs = []
    for i in range(6):
        prior = torch.randn(4, 8, generator=g) * 3
        runs.append(TunedRun(f"r{i}", "soft", f"p{i % 3}", i, prior_tensors={"soft": prior},
                             posterior_tensors={"soft": prior + 0.05 * torch.randn(prior.shape, generator=g)}))

    def gathered(missing):
        return SimpleNamespace(tuned=lambda stage, **_: runs if stage == "main" else [],
                               missing_of=lambda stage, **_: list(missing) if stage == "main" else [])
    whole = C1.measure(gathered([]), n_perm=199)
    assert whole["verdict"] == HOLDS and "missing" not in whole and "provisional" not in whole
    part = C1.measure(gathered(["deep-a", "deep-b"]), n_perm=199)
    assert part["verdict"] == NOT_MEASURED and part["provisional"] == HOLDS and part["missing"] == ["deep-a", "deep-b"]
    assert part["why"].startswith("2 of its inputs are not in yet (deep-a, deep-b)") and "would read holds" in part["why"]
    assert part["statistics"] == whole["statistics"]
    # the converged runs' second view says on how many of its runs it reads while some are missing
    def with_converged(missing):
        return SimpleNamespace(tuned=lambda stage, **_: runs,
                               missing_of=lambda stage, **_: list(missing) if stage == "converged" else [])
    assert "Converged runs (version 2, region:data and region:new; 6 of 9 runs so far): holds" in \
        C1.measure(with_converged(["c1", "c2", "c3"]), n_perm=199)["why"]
    assert "Converged runs (version 2, region:data and region:new): holds" in C1.measure(with_converged([]), n_perm=199)["why"]
    # a claim that already reads not measured (claim 2's seeds) keeps its own reason and gets no provisional verdict
    short = partial({"verdict": NOT_MEASURED, "why": "seeds are not all in"}, ["x"])
    assert short["verdict"] == NOT_MEASURED and "provisional" not in short and short["why"].startswith("seeds")
