"""The study's statistics (eptk.reproduce.inference) against known values and independent libraries, and the
guarantees RULES.md makes: intervals inside their quantity's range, no bootstrap under 10 groups."""
import math

import numpy as np
import pytest

from eptk.reproduce import inference as I
from eptk.reproduce.seed_power import seeds_needed


def test_t_interval_known_value():
    ci = I.t_interval([1, 2, 3])
    assert (ci["mean"], round(ci["lo"], 3), round(ci["hi"], 3)) == (2.0, -0.484, 4.484)


def test_prediction_interval_known_value_statsmodels_and_bounds():
    import statsmodels.api as sm

    pi = I.prediction_interval([1, 2, 3])
    assert (pi["mean"], round(pi["lo"], 3), round(pi["hi"], 3), pi["n"]) == (2.0, -2.968, 6.968, 3)
    scores = [86.0, 91.3, 88.1, 89.9, 90.2, 87.4, 91.0, 88.8, 89.5, 90.6]
    frame = sm.OLS(np.array(scores), np.ones((len(scores), 1))).fit().get_prediction(np.ones((1, 1))).summary_frame(0.05)
    pi = I.prediction_interval(scores)
    assert (pi["lo"], pi["hi"]) == (pytest.approx(frame["obs_ci_lower"][0]), pytest.approx(frame["obs_ci_upper"][0]))
    assert I.prediction_interval([1, 2, 3], bounds=(0, 100))["lo"] == 0.0              # inside a score's range
    assert I.prediction_interval([97, 99, 100], bounds=(0, 100))["hi"] == 100.0
    assert math.isnan(I.prediction_interval([5.0])["lo"])


def test_welch_interval_equals_statsmodels():
    from statsmodels.stats.weightstats import CompareMeans

    a, b = [71.0, 80.5, 77.0, 68.5], [86.0, 88.5, 84.0, 90.5, 87.0]
    ci = I.welch_interval(a, b)
    lo, hi = CompareMeans.from_data(np.array(a), np.array(b)).tconfint_diff(usevar="unequal")
    assert ci["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (ci["lo"], ci["hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_paired_interval_equals_statsmodels():
    from statsmodels.stats.weightstats import DescrStatsW

    a, b = [0.9, 0.7, 0.8, 1.1], [1.0, 1.0, 0.95, 1.3]
    lo, hi = DescrStatsW(np.subtract(a, b)).tconfint_mean()
    ci = I.paired_interval(a, b)
    assert (ci["lo"], ci["hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_wilson_known_value():
    ci = I.wilson(3, 10)
    assert (round(ci["lo"], 4), round(ci["hi"], 4)) == (0.1078, 0.6032)
    assert 0 <= I.wilson(0, 10)["lo"] and I.wilson(10, 10)["hi"] <= 1


def test_bootstrap_needs_ten_runs_an_arm_and_stays_in_range():
    rng = np.random.default_rng(0)
    few = I.bootstrap_difference(rng.normal(80, 5, 9), rng.normal(70, 5, 12))
    assert math.isnan(few["lo"]) and "fewer than 10" in few["why"]
    a, b = [100.0] * 9 + [0.0], [0.0] * 9 + [2.0]                 # scores on 0-100: the difference is within ±100
    ci = I.bootstrap_difference(a, b)
    assert -100 <= ci["lo"] <= ci["mean"] <= ci["hi"] <= 100
    # a 95% interval, not a 50% one: on normal data it is about as wide as Welch's
    x, y = rng.normal(80, 5, 40), rng.normal(70, 5, 40)
    boot, welch = I.bootstrap_difference(x, y), I.welch_interval(x, y)
    assert (boot["hi"] - boot["lo"]) == pytest.approx(welch["hi"] - welch["lo"], rel=0.2)


def test_score_interval_stays_in_0_100_and_covers_the_runs():
    rng = np.random.default_rng(1)
    runs = [(rng.random(1000) < p).astype(float) for p in (0.995, 0.999, 0.99, 1.0)]
    ci = I.score_interval(runs)
    assert 0 <= ci["lo"] <= ci["mean"] <= ci["hi"] <= 100 and ci["method"] == "binomial GEE"
    spread = [(rng.random(1000) < p).astype(float) for p in (0.5, 0.6, 0.7, 0.8, 0.9)]
    wide = I.score_interval(spread)
    # runs vary far more than their items: the interval reflects the runs (a 5-run t interval is ±14 points here)
    assert wide["hi"] - wide["lo"] > 15
    one = I.score_interval([runs[0]])
    from scipy.stats import binomtest
    exact = binomtest(int(runs[0].sum()), 1000).proportion_ci(method="exact")
    assert (one["lo"], one["hi"]) == (pytest.approx(100 * exact.low), pytest.approx(100 * exact.high))


def test_runs_with_equal_scores_get_one_runs_item_interval_not_a_zero_width_gee():
    """Two runs scoring 554 of 865 with different items right (Gemma's soft region:data arm, 2026-12-04): every
    cluster's residual sum is zero, so the GEE's interval had no width, [64.0, 64.0]. The interval is the exact
    binomial over one run's items instead; runs with different scores still get the GEE."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(4)
    first = np.zeros(865)
    first[rng.choice(865, 554, replace=False)] = 1
    second = np.zeros(865)
    second[rng.choice(865, 554, replace=False)] = 1
    assert (first != second).any() and first.sum() == second.sum() == 554
    ci = I.score_interval([first, second])
    exact = binomtest(554, 865).proportion_ci(method="exact")
    assert ci["hi"] - ci["lo"] > 6  # the exact interval over 865 items is 6.4 points wide
    assert (ci["lo"], ci["hi"], ci["n"]) == (pytest.approx(100 * exact.low), pytest.approx(100 * exact.high), 2)
    third = first.copy()
    third[np.flatnonzero(third == 0)[:5]] = 1  # 559 of 865: a spread, so the GEE again
    assert I.score_interval([first, second, third])["method"] == "binomial GEE"


def test_tost_shows_equivalence_only_inside_the_margin():
    rng = np.random.default_rng(2)
    close = I.tost(rng.normal(80, 3, 12), rng.normal(80, 3, 12), 10)
    far = I.tost(rng.normal(71, 3, 12), rng.normal(80, 3, 12), 10)
    assert close["p"] < 0.05 < far["p"]


def test_tost_is_statsmodels_welch_tost_and_skips_only_what_it_cannot_test():
    """Claim 2's equivalence test: unequal variances and sizes (pooled would give another p), the fields it
    returns, and NaN only for an arm of fewer than 2 runs or both arms constant (mutation testing found
    each of these unchecked)."""
    from statsmodels.stats.weightstats import ttost_ind

    rng = np.random.default_rng(3)
    a, b = rng.normal(80, 1, 5), rng.normal(76, 8, 20)
    welch, pooled = ttost_ind(a, b, -10, 10, usevar="unequal")[0], ttost_ind(a, b, -10, 10)[0]
    assert abs(welch - pooled) > 1e-3, "the data must tell the two apart"
    assert I.tost(a, b, 10) == {"p": pytest.approx(welch), "margin": 10, "n": 25}
    for x, y in [([1.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [4.0]), ([5.0, 5.0], [5.0, 5.0, 5.0])]:
        out = I.tost(x, y, 7)
        assert math.isnan(out["p"]) and (out["margin"], out["n"]) == (7, len(x) + len(y)), (x, y)
    for x, y in [([1.0, 2.0], [3.0, 5.0]), ([5.0, 5.0, 5.0], [1.0, 2.0, 4.0]), ([1.0, 2.0, 4.0], [5.0, 5.0, 5.0]),
                 ([1.0, 2.0], [5.0, 5.0]), ([5.0, 5.0], [1.0, 2.0])]:
        assert not math.isnan(I.tost(x, y, 7)["p"]), (x, y)


def test_wilson_share_level_and_empty_input():
    from scipy.stats import binomtest

    ci = I.wilson(3, 10, level=0.9)
    ref = binomtest(3, 10).proportion_ci(0.9, method="wilson")
    assert (ci["mean"], ci["n"]) == (0.3, 10) and (ci["lo"], ci["hi"]) == (pytest.approx(ref.low), pytest.approx(ref.high))
    one = I.wilson(1, 1)
    assert one["mean"] == 1.0 and 0 < one["lo"] < 1 and one["hi"] == pytest.approx(1.0)
    empty = I.wilson(0, 0)
    assert math.isnan(empty["lo"]) and math.isnan(empty["hi"]) and empty["why"] == "no runs" and empty["n"] == 0


def test_spearman_test_known_values_and_what_it_drops():
    """Claims 1 and 6's trend test: ρ and a permutation p with the stated alternative and resample count; pairs
    with a non-finite side are dropped, fewer than 3 pairs or a constant side give NaN."""
    from scipy.stats import spearmanr

    x, y = np.arange(8.0), np.arange(8.0)[::-1]
    down = I.spearman_test(x, y, n_perm=99)
    assert (down["rho"], down["n"]) == (pytest.approx(-1.0), 8)
    assert down["p"] == pytest.approx(1 / 100), "only the observed pairing is as low: (0 + 1) / (99 + 1)"
    assert I.spearman_test(x, y)["p"] == pytest.approx(1 / 1000)
    assert I.spearman_test(x, y, alternative="greater", n_perm=99)["p"] == pytest.approx(1.0)
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=12), rng.normal(size=12)
    mixed = I.spearman_test(np.append(a, np.nan), np.append(b, 1.0), alternative="two-sided")
    assert mixed["n"] == 12 and mixed["rho"] == pytest.approx(spearmanr(a, b).statistic) and 0 < mixed["p"] <= 1
    assert I.spearman_test(a, b, seed=1) == I.spearman_test(a, b, seed=1)
    assert I.spearman_test(a, b, alternative="two-sided", seed=0) == mixed | {"n": 12}  # seed 0 by default
    assert not math.isnan(I.spearman_test([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])["p"])
    for xs, ys in [([1.0, 2.0], [2.0, 1.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])]:
        out = I.spearman_test(xs, ys)
        assert math.isnan(out["rho"]) and math.isnan(out["p"]) and out["n"] == len(xs), (xs, ys)


def test_spearman_test_permutes_pairings_exactly_and_drops_missing_values():
    """At 4 pairs every pairing is enumerated ((4!)² ≤ 999 resamples): p is the exact share of the 24 orders of y
    whose ρ is at most the observed one, which permuting the pooled values instead (independent samples) misses.
    A missing value (None, from a run without that measure) is dropped like a NaN."""
    import itertools

    from scipy.stats import spearmanr

    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    rho = spearmanr(x, y).statistic
    orders = [spearmanr(x, list(order)).statistic for order in itertools.permutations(y)]
    exact = sum(r <= rho + 1e-12 for r in orders) / len(orders)
    assert exact == pytest.approx(20 / 24)
    assert I.spearman_test(x, y)["p"] == pytest.approx(exact, abs=1e-12)
    assert I.spearman_test(x + [None], y + [5.0]) == I.spearman_test(x, y)
    assert I.spearman_test(x + [5.0], y + [None]) == I.spearman_test(x, y)


def test_fmt_prints_the_interval_as_the_report_shows_it():
    ci = {"mean": 0.4213, "lo": 0.3099, "hi": 0.5351, "n": 5}
    assert I.fmt(ci) == "0.42 [0.31, 0.54]"
    assert I.fmt(ci, digits=1, scale=100) == "42.1 [31.0, 53.5]"
    assert I.fmt(dict(ci, lo=math.nan)) == I.fmt(dict(ci, hi=math.nan)) == "0.42 (n=5, no interval)"
    assert I.fmt({"mean": 3.0, "lo": math.nan, "hi": math.nan}, digits=0) == "3 (n=0, no interval)"
    assert I.fmt({"mean": 0.5, "lo": math.nan}, digits=1, scale=100) == "50.0 (n=0, no interval)"
    assert I.fmt(dict(ci, mean=math.nan)) == I.fmt({}) == "n/a"


def test_log_ols_pools_the_variance_and_stays_positive():
    ols = I.LogOLS({"a": [1.0, 1.1, 0.9], "b": [0.1, 0.11, 0.09], "c": [0.5, 0.7, 0.3]})
    ratio = ols.ratio("b", "a")
    assert 0 < ratio["lo"] < ratio["mean"] < ratio["hi"] and ratio["mean"] == pytest.approx(0.1, rel=0.02)
    # pooled: the noisy arm c widens a and b's intervals alike
    a, b = ols.mean("a"), ols.mean("b")
    assert math.log(a["hi"] / a["lo"]) == pytest.approx(math.log(b["hi"] / b["lo"]))
    # a value of 0 has no logarithm: it is left out, not an error
    with_zero = I.LogOLS({"a": [0.0, 1.0, 1.1, 0.9], "b": [0.1, 0.11, 0.09], "c": [0.5, 0.7, 0.3]})
    assert with_zero.n == 9 and with_zero.mean("a") == pytest.approx(a)
    # one value per arm leaves no residual degrees of freedom: no interval, and the reason says so
    single = I.LogOLS({"a": [1.0], "b": [2.0]})
    assert single.fit is None
    for ci in (single.mean("a"), single.ratio("a", "b")):
        assert math.isnan(ci["lo"]) and math.isnan(ci["hi"]) and ci["why"] == "no residual degrees of freedom"


def exact_mantel_p(d1, d2) -> float:
    """The Mantel p over every order of the objects: the share whose Spearman ρ reaches the observed one."""
    import itertools

    from scipy.stats import spearmanr

    up = np.triu_indices(len(d1), 1)
    observed = spearmanr(d1[up], d2[up]).statistic
    return float(np.mean([spearmanr(d1[up], d2[np.ix_(p, p)][up]).statistic >= observed - 1e-12
                          for p in map(list, itertools.permutations(range(len(d1))))]))


def test_mantel_against_exact_enumeration():
    """On 5 objects every permutation can be listed: the sampled p must match the exact one."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    pts = rng.normal(size=(5, 2))
    d1 = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    d2 = d1 + rng.normal(0, 0.3, d1.shape)
    d2 = (d2 + d2.T) / 2
    np.fill_diagonal(d2, 0)
    observed = spearmanr(d1[np.triu_indices(5, 1)], d2[np.triu_indices(5, 1)]).statistic
    exact = exact_mantel_p(d1, d2)
    got = I.mantel(d1, d2, n_perm=4999)
    assert got["rho"] == pytest.approx(observed) and got["p"] == pytest.approx(exact, abs=0.02)


def test_identification_against_chance():
    d = np.ones((6, 6)) - np.eye(6)        # every posterior nearest its own prior
    assert I.identification(d, n_perm=199)["share"] == 1.0
    assert I.identification(d, n_perm=199)["p"] == pytest.approx(1 / 200)
    shifted = np.roll(d, 1, axis=1)        # every posterior nearest another run's prior
    assert I.identification(shifted, n_perm=199)["share"] == 0.0


def test_seeds_needed_is_the_stated_power_calculation():
    deep, soft = seeds_needed(4.25), seeds_needed(7.5)
    assert (round(deep["tost"], 1), round(deep["width"], 1), deep["n"]) == (3.1, 5.6, 10)
    assert (round(soft["tost"], 1), round(soft["width"], 1), soft["n"]) == (9.6, 17.3, 18)
    assert seeds_needed(30.0)["n"] == 20 and seeds_needed(30.0)["capped"]


def test_mixed_model_intervals_are_over_seeds_not_rows():
    """Three seeds whose trajectories agree within a seed but not across seeds: the interval must be as wide as
    the seeds' disagreement, not as narrow as the rows' count would make it."""
    rng = np.random.default_rng(4)
    seeds = np.repeat([0, 1, 2], 40)
    level = {0: 0.6, 1: 1.0, 2: 1.6}
    values = [level[s] * math.exp(rng.normal(0, 0.02)) for s in seeds]
    prompts = np.tile(np.arange(20), 6)
    ci = I.mixed_log_mean(values, seeds, prompts)
    rows_t = I.t_interval(np.log(values))
    assert ci["hi"] / ci["lo"] > 2 * math.exp(rows_t["hi"] - rows_t["lo"])
    assert ci["lo"] > 0
    # balanced seeds, prompts that barely vary: the half-width is Student's t(2) times the seed means' SE
    from scipy.stats import t
    means = [np.mean(np.log(values)[seeds == s]) for s in (0, 1, 2)]
    half = t.ppf(0.975, 2) * np.std(means, ddof=1) / math.sqrt(3)
    assert math.log(ci["hi"] / ci["lo"]) / 2 == pytest.approx(half, rel=0.1)


def test_plain_intervals_say_why_they_have_no_interval():
    """Too few values: the mean (or difference) that exists, the count, NaN bounds and the reason; all values alike:
    a zero-width interval at the value (scipy would return NaN)."""
    few = I.t_interval([2.5, None, math.nan])
    assert (few["mean"], few["n"], few["why"]) == (2.5, 1, "fewer than 2 values") and math.isnan(few["lo"] + few["hi"])
    empty = I.t_interval([])
    assert math.isnan(empty["mean"]) and empty["n"] == 0
    assert I.t_interval([3.0, 3.0, 3.0]) == {"mean": 3.0, "lo": 3.0, "hi": 3.0, "n": 3}
    w = I.welch_interval([1.0, 2.0, 3.0], [5.0])
    assert (w["mean"], w["n"], w["why"]) == (-3.0, 4, "fewer than 2 values in an arm") and math.isnan(w["lo"])
    assert math.isnan(I.welch_interval([], [1.0, 2.0])["mean"]) and math.isnan(I.welch_interval([1.0, 2.0], [])["mean"])
    assert I.welch_interval([4.0, 4.0], [1.0, 1.0, 1.0]) == {"mean": 3.0, "lo": 3.0, "hi": 3.0, "n": 5}
    p = I.paired_interval([1.0, None, 3.0, math.inf], [0.5, 2.0, None, 1.0])
    assert (p["mean"], p["n"], p["why"]) == (0.5, 1, "fewer than 2 pairs") and math.isnan(p["hi"])
    assert math.isnan(I.paired_interval([], [])["mean"])
    assert I.paired_interval([3.0, 5.0, 8.0], [1.0, 3.0, 6.0]) == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 3}
    b = I.bootstrap_difference([1.0] * 3, [0.0] * 12)
    assert (b["mean"], b["n"], b["why"]) == (1.0, 15, "fewer than 10 runs in an arm: no bootstrap")
    assert I.bootstrap_difference([0.0] * 12, [1.0] * 5)["why"].startswith("fewer than 10")
    assert I.bootstrap_difference([2.0] * 10, [1.0] * 11) == {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": 21}
    assert math.isnan(I.bootstrap_difference([], [1.0] * 10)["mean"])


def test_plain_intervals_take_their_level_and_drop_missing_values():
    from scipy.stats import bootstrap, ttest_1samp, ttest_ind, ttest_rel

    x, y = [1.0, 2.5, 4.0, 3.0], [2.0, 2.2, 5.5, 3.1]
    for level in (0.8, 0.99):
        lo, hi = ttest_1samp(x, 0.0).confidence_interval(level)
        assert (I.t_interval(x + [None, math.nan], level)["lo"], I.t_interval(x, level)["hi"]) == (
            pytest.approx(lo), pytest.approx(hi))
        lo, hi = ttest_ind(x, y, equal_var=False).confidence_interval(level)
        assert (I.welch_interval(x, y + [None], level)["lo"], I.welch_interval(x, y, level)["hi"]) == (
            pytest.approx(lo), pytest.approx(hi))
        lo, hi = ttest_rel(x, y).confidence_interval(level)
        paired = I.paired_interval(x + [None], y + [1.0], level)
        assert (paired["lo"], paired["hi"], paired["n"]) == (pytest.approx(lo), pytest.approx(hi), 4)
    assert I.paired_interval(x, y)["mean"] == pytest.approx(np.mean(np.subtract(x, y)))
    rng = np.random.default_rng(5)
    a, b = rng.normal(80, 5, 12), rng.normal(75, 5, 10)
    ref = bootstrap((a, b), lambda u, v, axis: u.mean(axis=axis) - v.mean(axis=axis), vectorized=True, paired=False,
                    confidence_level=0.9, method="BCa", n_resamples=999, random_state=np.random.default_rng(7))
    got = I.bootstrap_difference(list(a) + [None], b, 0.9, seed=7, n_resamples=999)
    assert (got["lo"], got["hi"], got["n"]) == (pytest.approx(ref.confidence_interval.low),
                                                  pytest.approx(ref.confidence_interval.high), 22)
    assert got["mean"] == pytest.approx(a.mean() - b.mean())
    assert I.bootstrap_difference(a, b, seed=1) != I.bootstrap_difference(a, b, seed=2)   # the seed is used
    assert I.bootstrap_difference(a, b) == I.bootstrap_difference(a, b, seed=0, n_resamples=9999)


def test_score_interval_edge_cases_and_level():
    """No runs (or only empty ones): no interval, and why. One run, or runs all scoring the same: the exact
    binomial interval over one run's items, in percent, n the number of runs. Several runs: statsmodels' GEE at the level asked."""
    from scipy.stats import binomtest

    none = I.score_interval([[], []])
    assert math.isnan(none["mean"]) and none["why"] == "no runs" and none["n"] == 0
    alike = I.score_interval([[1.0] * 50, [], [1.0] * 30])
    exact = binomtest(30, 30).proportion_ci(method="exact")  # one run's items: the smaller run's
    assert (alike["mean"], alike["n"]) == (100.0, 2)
    assert alike["method"] == "exact binomial over one run's items (the runs' scores are equal)"
    assert (alike["lo"], alike["hi"]) == (pytest.approx(100 * exact.low), pytest.approx(100 * exact.high))
    one = I.score_interval([[1, 0, 1, 1]], level=0.8)
    ref = binomtest(3, 4).proportion_ci(0.8, method="exact")
    assert (one["mean"], one["lo"], one["hi"], one["n"]) == (75.0, pytest.approx(100 * ref.low),
                                                            pytest.approx(100 * ref.high), 1)
    rng = np.random.default_rng(6)
    runs = [(rng.random(400) < p).astype(float) for p in (0.6, 0.7, 0.8)]
    wide, narrow = I.score_interval(runs, level=0.99), I.score_interval(runs, level=0.8)
    assert narrow["mean"] == wide["mean"] and wide["lo"] < narrow["lo"] < narrow["hi"] < wide["hi"]
    assert wide["n"] == 3 and wide["method"] == "binomial GEE"
    # the GEE's intercept is the logit of the pooled share (one cluster-robust mean): the same centre
    assert wide["mean"] == pytest.approx(100 * np.concatenate(runs).mean(), rel=1e-6)


def test_log_ols_levels_missing_arms_and_the_ratio_direction():
    ols = I.LogOLS({"a": [1.0, 1.2, 0.8], "b": [2.0, 2.4, 1.6], "empty": [], "none": [None, math.nan]})
    assert ols.arms == ["a", "b"] and ols.n == 6
    ab, ba = ols.ratio("a", "b"), ols.ratio("b", "a")
    geo = lambda v: math.exp(np.mean(np.log(v)))  # noqa: E731
    assert ab["mean"] == pytest.approx(geo([1.0, 1.2, 0.8]) / geo([2.0, 2.4, 1.6])) and ba["mean"] == pytest.approx(1 / ab["mean"])
    assert (ab["lo"], ab["hi"]) == (pytest.approx(1 / ba["hi"]), pytest.approx(1 / ba["lo"]))
    assert ols.mean("b")["mean"] == pytest.approx(geo([2.0, 2.4, 1.6])) and ols.mean("b")["n"] == 6
    m80, m99 = ols.mean("a", level=0.8), ols.mean("a", level=0.99)
    assert m99["lo"] < m80["lo"] < m80["mean"] < m80["hi"] < m99["hi"]
    assert ols.ratio("a", "b", level=0.8)["hi"] < ab["hi"]
    for ci, why in ((ols.mean("empty"), "no runs"), (ols.ratio("a", "none"), "an arm has no runs"),
                    (ols.ratio("missing", "a"), "an arm has no runs")):
        assert math.isnan(ci["mean"]) and math.isnan(ci["lo"]) and ci["why"] == why
    just_enough = I.LogOLS({"a": [1.0, 2.0], "b": [3.0]})                # 3 values, 2 arms: one degree of freedom
    assert just_enough.fit is not None and math.isfinite(just_enough.mean("b")["lo"])
    assert I.LogOLS({"a": [1.0], "b": [3.0, 0.0]}).fit is None           # the 0 is dropped: no freedom left


def _four_seeds():
    rng = np.random.default_rng(8)
    seeds, prompts = np.repeat([0, 1, 2, 3], 10), np.tile(np.arange(5), 8)
    return np.exp(rng.normal(0, 0.3, 40) + np.repeat(rng.normal(0, 0.2, 4), 10)), seeds, prompts


def test_mixed_log_mean_needs_two_seeds_and_drops_non_finite_rows():
    one = I.mixed_log_mean([1.0, 2.0, 3.0], [0, 0, 0], [0, 1, 2])
    assert math.isnan(one["lo"]) and one["why"] == "fewer than 2 seeds" and one["n"] == 1
    values, seeds, prompts = _four_seeds()
    ci = I.mixed_log_mean(values, seeds, prompts)
    with_zero = I.mixed_log_mean(list(values) + [0.0], list(seeds) + [3], list(prompts) + [0])  # log 0: dropped
    assert (ci["n"], ci["items"]) == (4, 40) and with_zero == pytest.approx(ci)
    assert ci["lo"] < ci["mean"] < ci["hi"] and ci["mean"] == pytest.approx(math.exp(np.log(values).mean()), rel=0.05)
    narrow = I.mixed_log_mean(values, seeds, prompts, level=0.5)
    assert ci["lo"] < narrow["lo"] < narrow["hi"] < ci["hi"]


def test_permutation_tests_small_inputs_seeds_and_counts():
    small = I.mantel(np.zeros((3, 3)), np.zeros((3, 3)))
    assert math.isnan(small["rho"]) and math.isnan(small["p"]) and small["n"] == 3
    rng = np.random.default_rng(9)
    pts = rng.normal(size=(7, 2))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    noisy = d + np.abs(np.random.default_rng(1).normal(0, 5.0, d.shape))   # related, p near 0.4
    noisy = (noisy + noisy.T) / 2
    np.fill_diagonal(noisy, 0)
    same = I.mantel(d, d, n_perm=99)
    assert same["rho"] == pytest.approx(1.0) and same["n"] == 7 and same["p"] == pytest.approx(1 / 100)
    assert I.mantel(d, noisy, seed=3) == I.mantel(d, noisy, seed=3) and I.mantel(d, noisy) == I.mantel(d, noisy, seed=0)
    assert I.mantel(d, noisy, seed=3)["p"] != I.mantel(d, noisy, seed=4)["p"]
    p = I.mantel(d, noisy, n_perm=199)["p"]
    assert 0 < p <= 1 and round(p * 200) == pytest.approx(p * 200)                   # (1 + hits) / (1 + 199)
    lone = I.identification(np.zeros((1, 1)))
    assert math.isnan(lone["share"]) and math.isnan(lone["chance"]) and math.isnan(lone["p"]) and lone["n"] == 1
    half = np.ones((4, 4)) - np.diag([1.0, 1.0, 0.0, 0.0])          # 2 of 4 posteriors nearest their own prior
    half[2, 0] = half[3, 0] = 0.5
    got = I.identification(half, n_perm=999, seed=5)
    assert (got["share"], got["chance"], got["n"]) == (0.5, 0.25, 4)
    # the exact p: the share of the 24 permutations that match at least 2 of the 4 nearest priors (the 6 that
    # keep 1 in place: prior 0 then always meets one of posteriors 0, 2, 3)
    assert got["p"] == pytest.approx(6 / 24, abs=0.03) and got == I.identification(half, n_perm=999, seed=5)
    assert I.identification(half, seed=5) != I.identification(half, seed=6)


def test_seeds_needed_takes_every_setting():
    from scipy.stats import norm

    base = seeds_needed(6.0)
    assert base["tost"] == pytest.approx(2 * 36 * (norm.ppf(0.95) + norm.ppf(0.9)) ** 2 / 100)
    assert base["width"] == pytest.approx(2 * (1.959964 * 6 / 5) ** 2, rel=1e-6)
    assert base["n"] == 12 and not base["capped"]
    assert seeds_needed(6.0, margin=5.0)["tost"] == pytest.approx(4 * base["tost"])
    assert seeds_needed(6.0, half_width=10.0)["width"] == pytest.approx(base["width"] / 4)
    assert seeds_needed(6.0, alpha=0.1)["tost"] < base["tost"] and seeds_needed(6.0, alpha=0.1)["width"] < base["width"]
    assert seeds_needed(6.0, power=0.9)["tost"] > base["tost"]
    assert seeds_needed(1.0)["n"] == 10 and seeds_needed(1.0, floor=2)["n"] == 2
    assert seeds_needed(6.0, cap=11) == dict(base, n=11, capped=True)
    assert seeds_needed(math.sqrt(10 * 25 / (2 * 1.959964 ** 2)))["n"] == 10       # width n = 10.0: no rounding up


def test_a_zero_width_interval_only_when_every_value_agrees():
    """One constant arm (or values spread by exactly 1) still has a spread to estimate: a real interval around the
    mean, not the zero-width one kept for values that all agree."""
    def spread(ci):
        return ci["lo"] < ci["mean"] < ci["hi"]

    for a, b in [([4.0, 4.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [4.0, 4.0]), ([1.0, 2.0], [5.0, 5.0, 5.0]),
                 ([4.0, 4.0], [1.0, 2.0]), ([1.0, 2.0], [2.0, 3.0, 3.5])]:
        assert spread(I.welch_interval(a, b)), (a, b)
    assert spread(I.t_interval([1.0, 2.0])) and spread(I.t_interval([0.5, 1.5, 1.0]))
    assert spread(I.paired_interval([3.0, 5.0, 8.0], [1.0, 3.0, 7.0]))          # differences 2, 2, 1
    ten, one_apart = [5.0] * 10, [1.0] * 5 + [2.0] * 5
    for a, b in [(ten, one_apart), (one_apart, ten), (one_apart, [0.0] * 5 + [1.0] * 5)]:
        assert spread(I.bootstrap_difference(a, b, n_resamples=999)), (a, b)


def test_two_pairs_are_enough_and_counts_are_totals():
    two = I.paired_interval([1.0, 2.0], [0.5, 0.7])
    assert two["n"] == 2 and two["lo"] < two["mean"] < two["hi"] and two["mean"] == pytest.approx(0.9)
    mirrored = I.paired_interval([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])     # the sums agree, the differences do not
    assert mirrored["mean"] == 0.0 and mirrored["lo"] < 0 < mirrored["hi"]
    assert I.welch_interval([1.0, 2.5, 4.0], [2.0, 2.2, 5.5, 3.1, 2.9])["n"] == 8
    assert I.t_interval([1.0, 2.5, 4.0, 3.0])["n"] == 4


def test_score_and_tost_read_what_runs_write():
    """predictions.jsonl stores correctness as true/false: a score from booleans is the score from 0/1. Two arms
    whose runs all agree within each arm have no spread to test equivalence with: NaN, even when the arms differ."""
    rng = np.random.default_rng(10)
    runs = [rng.random(300) < p for p in (0.6, 0.7, 0.8)]
    assert I.score_interval(runs) == pytest.approx(I.score_interval([r.astype(float) for r in runs]))
    assert I.score_interval([list(r) for r in runs]) == pytest.approx(I.score_interval(runs))
    for a, b in [([5.0, 5.0], [6.0, 6.0, 6.0]), ([70.0] * 4, [90.0] * 4)]:
        assert math.isnan(I.tost(a, b, 7)["p"]), (a, b)


def test_two_runs_or_seeds_are_enough_for_a_model_interval():
    """Two runs get the GEE (not the exact interval over items), and its interval is symmetric on the logit scale
    (β ± z·se); two seeds get the mixed model's interval (Student's t with 1 degree of freedom: wide, finite)."""
    rng = np.random.default_rng(11)
    two = I.score_interval([(rng.random(500) < 0.6).astype(float), (rng.random(500) < 0.8).astype(float)])
    assert two["method"] == "binomial GEE" and two["n"] == 2
    logit = lambda v: math.log(v / (100 - v))  # noqa: E731
    assert logit(two["hi"]) - logit(two["mean"]) == pytest.approx(logit(two["mean"]) - logit(two["lo"]), rel=1e-9)
    seeds, prompts = np.repeat([0, 1], 12), np.tile(np.arange(6), 4)
    values = np.exp(rng.normal(0, 0.2, 24) + np.repeat([0.0, 0.5], 12))
    ci = I.mixed_log_mean(values, seeds, prompts)
    assert ci["n"] == 2 and 0 < ci["lo"] < ci["mean"] < ci["hi"] < math.inf


def four_point_distances() -> np.ndarray:
    """Euclidean distances of four points in the plane (no two pairs at the same distance)."""
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    return np.linalg.norm(pts[:, None] - pts[None], axis=-1)


def test_mantel_from_four_objects_and_a_cap_that_is_just_enough():
    d = four_point_distances()
    four = I.mantel(d, d, n_perm=99)
    assert four["n"] == 4 and four["rho"] == pytest.approx(1.0) and 0 < four["p"] < 1
    base = seeds_needed(6.0)
    assert seeds_needed(6.0, cap=base["n"]) == base                      # needing exactly the cap is not capped


def test_mantel_p_matches_exact_enumeration_where_it_is_moderate():
    """7 objects, a second matrix only loosely related (exact p near 0.4, all 5,040 orders listed), and 4 objects
    compared with themselves (only the identity order reaches ρ = 1: p = 1/24): counting each permutation's ρ
    against the observed one, ties included, over the rank matrix permuted by rows and columns together."""
    rng = np.random.default_rng(9)
    pts = rng.normal(size=(7, 2))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    noisy = d + np.abs(np.random.default_rng(1).normal(0, 5.0, d.shape))
    noisy = (noisy + noisy.T) / 2
    np.fill_diagonal(noisy, 0)
    exact = exact_mantel_p(d, noisy)
    assert 0.2 < exact < 0.6
    assert I.mantel(d, noisy, n_perm=4999)["p"] == pytest.approx(exact, abs=0.02)
    four = four_point_distances()
    assert I.mantel(four, four, n_perm=999)["p"] == pytest.approx(1 / 24, abs=0.015)


def test_permutation_tests_default_to_999_permutations_of_seed_0_and_take_two_objects():
    rng = np.random.default_rng(9)
    pts = rng.normal(size=(7, 2))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    assert I.mantel(d, d) == I.mantel(d, d, n_perm=999, seed=0)
    own = np.ones((6, 6)) - np.eye(6)
    assert I.identification(own) == I.identification(own, n_perm=999, seed=0)
    half = np.ones((4, 4)) - np.diag([1.0, 1.0, 0.0, 0.0])
    half[2, 0] = half[3, 0] = 0.5
    assert I.identification(half) == I.identification(half, n_perm=999, seed=0) != I.identification(half, seed=1)
    two = I.identification(np.array([[0.0, 1.0], [1.0, 0.0]]), n_perm=99)
    assert (two["share"], two["chance"], two["n"]) == (1.0, 0.5, 2) and 0 < two["p"] < 1


def test_score_interval_weighs_runs_not_items_when_runs_disagree():
    """Runs of unequal size that disagree: the exchangeable GEE estimates the within-run correlation and weighs
    the runs almost equally (centre near the mean of run scores), where an independence model would let the two
    big runs outvote the small ones (the pooled item share)."""
    rng = np.random.default_rng(0)
    runs = [(rng.random(n) < p).astype(float) for n, p in ((200, 0.9), (200, 0.85), (20, 0.3), (20, 0.2))]
    ci = I.score_interval(runs)
    by_run = np.mean([100 * r.mean() for r in runs])
    pooled = 100 * np.concatenate(runs).mean()
    assert pooled - by_run > 25                       # the data make the two weightings far apart
    assert abs(ci["mean"] - by_run) < 3 and ci["lo"] < by_run < ci["hi"]


def _failing_fits(monkeypatch, failing: set) -> list:
    """MixedLM.fit as statsmodels has it, except that the optimizers named in `failing` raise as a singular fit
    does; returns the list of the optimizers that fitted, in order (statsmodels reads the names in any case)."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    real, fitted = MixedLM.fit, []

    def fit(self, *args, method=None, **kwargs):
        if method.lower() in failing:
            raise np.linalg.LinAlgError("Singular matrix")
        result = real(self, *args, method=method, **kwargs)
        fitted.append(method.lower())
        return result

    monkeypatch.setattr(MixedLM, "fit", fit)
    return fitted


def test_mixed_log_mean_tries_each_optimizer_and_skips_one_that_fails(monkeypatch):
    """Powell, Nelder-Mead and L-BFGS each fit; one that fails is skipped and the others still fit; when every
    one fails there is no interval, and the reason says so."""
    values, seeds, prompts = _four_seeds()
    fitted = _failing_fits(monkeypatch, set())
    every = I.mixed_log_mean(values, seeds, prompts)
    assert fitted == ["powell", "nm", "lbfgs"] and math.isfinite(every["lo"])
    monkeypatch.undo()
    fitted = _failing_fits(monkeypatch, {"powell"})
    without_powell = I.mixed_log_mean(values, seeds, prompts)
    assert fitted == ["nm", "lbfgs"] and math.isfinite(without_powell["lo"])
    assert without_powell["mean"] == pytest.approx(every["mean"], rel=1e-3)
    monkeypatch.undo()
    fitted = _failing_fits(monkeypatch, {"powell", "nm", "lbfgs"})
    none = I.mixed_log_mean(values, seeds, prompts)
    assert fitted == [] and math.isnan(none["lo"]) and none["why"] == "the mixed model did not fit"
    assert none["n"] == 4
