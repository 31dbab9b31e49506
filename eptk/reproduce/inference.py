"""The study's inference (docs/findings/RULES.md, "Inference"): every interval from scipy.stats or statsmodels,
inside its quantity's range, and no bootstrap over fewer than MIN_BOOTSTRAP_GROUPS groups.

Intervals are dicts {"mean", "lo", "hi", "n"} (NaN bounds where none can be given, with a "why"), so the report
prints any of them the same way. Tests check each helper against known values.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

LEVEL = 0.95
MIN_BOOTSTRAP_GROUPS = 10
NO_INTERVAL = {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}


def _clean(values) -> np.ndarray:
    x = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    return x[np.isfinite(x)]


def _interval(mean, lo, hi, n, **extra) -> dict:
    return {"mean": float(mean), "lo": float(lo), "hi": float(hi), "n": int(n), **extra}


def _none(mean=math.nan, n=0, *, why: str) -> dict:
    return _interval(mean, math.nan, math.nan, n, why=why)


# ---- means and differences of plain values ---------------------------------------------------------------

def t_interval(values, level: float = LEVEL) -> dict:
    """Student-t interval of a mean (scipy `ttest_1samp(...).confidence_interval`). For unbounded quantities."""
    from scipy.stats import ttest_1samp

    x = _clean(values)
    if x.size < 2:
        return _none(x.mean() if x.size else math.nan, x.size, why="fewer than 2 values")
    if np.ptp(x) == 0:
        return _interval(x[0], x[0], x[0], x.size)
    ci = ttest_1samp(x, 0.0).confidence_interval(level)
    return _interval(x.mean(), ci.low, ci.high, x.size)


def prediction_interval(values, level: float = LEVEL, bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """Where one more draw of the values' distribution falls with probability `level` (normal model, Student t:
    mean ± t·s·√(1 + 1/n)), clipped to the quantity's `bounds`; "mean" is the values' mean. The range of n draws
    holds one more only with probability (n − 1)/(n + 1): 50% for 3, 82% for 10."""
    from scipy.stats import t

    x = _clean(values)
    if x.size < 2:
        return _none(x.mean() if x.size else math.nan, x.size, why="fewer than 2 values")
    half = t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) * math.sqrt(1 + 1 / x.size)
    return _interval(x.mean(), max(bounds[0], x.mean() - half), min(bounds[1], x.mean() + half), x.size)


def welch_interval(a, b, level: float = LEVEL) -> dict:
    """Interval of mean(a) − mean(b) with unequal variances (scipy `ttest_ind(equal_var=False)`)."""
    from scipy.stats import ttest_ind

    xa, xb = _clean(a), _clean(b)
    if xa.size < 2 or xb.size < 2:
        diff = xa.mean() - xb.mean() if xa.size and xb.size else math.nan
        return _none(diff, xa.size + xb.size, why="fewer than 2 values in an arm")
    diff = xa.mean() - xb.mean()
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        return _interval(diff, diff, diff, xa.size + xb.size)
    ci = ttest_ind(xa, xb, equal_var=False).confidence_interval(level)
    return _interval(diff, ci.low, ci.high, xa.size + xb.size)


def paired_interval(a, b, level: float = LEVEL) -> dict:
    """Interval of the mean paired difference a − b (scipy `ttest_rel`); pairs with a missing side are dropped."""
    from scipy.stats import ttest_rel

    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(float(x)) and math.isfinite(float(y))]
    if len(pairs) < 2:
        d = pairs[0][0] - pairs[0][1] if pairs else math.nan
        return _none(d, len(pairs), why="fewer than 2 pairs")
    xa, xb = np.array(pairs).T
    diff = float(np.mean(xa - xb))
    if np.ptp(xa - xb) == 0:
        return _interval(diff, diff, diff, len(pairs))
    ci = ttest_rel(xa, xb).confidence_interval(level)
    return _interval(diff, ci.low, ci.high, len(pairs))


def bootstrap_difference(a, b, level: float = LEVEL, *, seed: int = 0, n_resamples: int = 9999) -> dict:
    """mean(a) − mean(b) with a BCa bootstrap resampling the values (runs) within each arm (scipy `bootstrap`);
    no interval below MIN_BOOTSTRAP_GROUPS runs in an arm. Bounded values give bounded bounds."""
    from scipy.stats import bootstrap

    xa, xb = _clean(a), _clean(b)
    diff = xa.mean() - xb.mean() if xa.size and xb.size else math.nan
    if min(xa.size, xb.size) < MIN_BOOTSTRAP_GROUPS:
        return _none(diff, xa.size + xb.size, why=f"fewer than {MIN_BOOTSTRAP_GROUPS} runs in an arm: no bootstrap")
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        return _interval(diff, diff, diff, xa.size + xb.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((xa, xb), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), vectorized=True,
                        paired=False, confidence_level=level, method="BCa", n_resamples=n_resamples,
                        random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return _interval(diff, lo, hi, xa.size + xb.size)


def tost(a, b, margin: float) -> dict:
    """Two one-sided tests of |mean(a) − mean(b)| < margin (statsmodels `ttost_ind`, unequal variances):
    equivalence is shown at α = 0.05 when p < 0.05."""
    from statsmodels.stats.weightstats import ttost_ind

    xa, xb = _clean(a), _clean(b)
    if xa.size < 2 or xb.size < 2 or (np.ptp(xa) == 0 and np.ptp(xb) == 0):
        return {"p": math.nan, "margin": margin, "n": int(xa.size + xb.size)}
    p, _, _ = ttost_ind(xa, xb, -margin, margin, usevar="unequal")
    return {"p": float(p), "margin": margin, "n": int(xa.size + xb.size)}


# ---- proportions ----------------------------------------------------------------------------------------

def wilson(k: int, n: int, level: float = LEVEL) -> dict:
    """A share k/n with its Wilson interval (scipy `binomtest(...).proportion_ci`), inside [0, 1]."""
    from scipy.stats import binomtest

    if n <= 0:
        return _none(why="no runs")
    ci = binomtest(int(k), int(n)).proportion_ci(level, method="wilson")
    return _interval(k / n, ci.low, ci.high, n)


def score_interval(items_by_run: list, level: float = LEVEL) -> dict:
    """One arm's score in percent from its runs' per-item correctness (a list of 0/1 lists, one per run): a
    binomial GEE (statsmodels; logit link, runs as clusters, exchangeable correlation, bias-reduced covariance),
    the intercept's interval transformed back to 0–100. One run, or runs that all have the same score: the exact
    binomial interval over one run's items (the smallest). Equal scores leave every cluster's residual sum at zero,
    so the cluster-robust GEE interval would have no width (Gemma's two soft region:data runs at 554 of 865 gave
    [64.0, 64.0]); the runs show no spread to estimate, and one run's item sampling is what is known."""
    runs = [np.asarray(list(r), dtype=np.float64) for r in items_by_run if len(r)]
    if not runs:
        return dict(NO_INTERVAL, why="no runs")
    y = np.concatenate(runs)
    mean = 100.0 * y.mean()
    if len({r.mean() for r in runs}) == 1:
        from scipy.stats import binomtest

        one = min(runs, key=len)
        ci = binomtest(int(one.sum()), one.size).proportion_ci(level, method="exact")
        method = "exact binomial over items" if len(runs) == 1 else \
            "exact binomial over one run's items (the runs' scores are equal)"
        return _interval(mean, 100 * ci.low, 100 * ci.high, len(runs), method=method)
    import statsmodels.api as sm
    from scipy.stats import norm

    groups = np.concatenate([np.full(r.size, i) for i, r in enumerate(runs)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sm.GEE(y, np.ones((y.size, 1)), groups=groups, family=sm.families.Binomial(),
                       cov_struct=sm.cov_struct.Exchangeable())
        fit = model.fit(cov_type="bias_reduced")
    beta, se = float(fit.params[0]), float(fit.bse[0])
    z = norm.ppf(0.5 + level / 2)
    expit = lambda v: 100.0 / (1.0 + math.exp(-v))  # noqa: E731
    return _interval(expit(beta), expit(beta - z * se), expit(beta + z * se), len(runs), method="binomial GEE")


# ---- positive quantities -------------------------------------------------------------------------------

class LogOLS:
    """log(value) ~ one mean per arm (statsmodels OLS, the residual variance pooled over the arms): each arm's
    geometric mean and the ratio of two arms, with intervals transformed back (positive)."""

    def __init__(self, values_by_arm: dict):
        import statsmodels.api as sm

        self.arms = [a for a, v in values_by_arm.items() if len(_clean(v))]
        rows, ys = [], []
        for i, arm in enumerate(self.arms):
            for v in _clean(values_by_arm[arm]):
                if v > 0:
                    rows.append(np.eye(len(self.arms))[i])
                    ys.append(math.log(v))
        self.n = len(ys)
        self.fit = sm.OLS(np.array(ys), np.array(rows)).fit() if self.n > len(self.arms) else None

    def _contrast(self, vector, level) -> dict:
        if self.fit is None:
            return _none(why="no residual degrees of freedom")
        test = self.fit.t_test(np.asarray(vector, dtype=float))
        lo, hi = np.asarray(test.conf_int(alpha=1 - level)).ravel()
        return _interval(math.exp(float(np.ravel(test.effect)[0])), math.exp(lo), math.exp(hi), self.n)

    def mean(self, arm, level: float = LEVEL) -> dict:
        if arm not in self.arms:
            return dict(NO_INTERVAL, why="no runs")
        return self._contrast(np.eye(len(self.arms))[self.arms.index(arm)], level)

    def ratio(self, arm, other, level: float = LEVEL) -> dict:
        """geometric mean(arm) / geometric mean(other): below 1 where `arm` is lower."""
        if arm not in self.arms or other not in self.arms:
            return dict(NO_INTERVAL, why="an arm has no runs")
        eye = np.eye(len(self.arms))
        return self._contrast(eye[self.arms.index(arm)] - eye[self.arms.index(other)], level)


def mixed_log_mean(values, seeds, prompts, level: float = LEVEL) -> dict:
    """The mean of a positive per-item quantity on the log scale, with a random intercept per seed and a variance
    component per prompt within seed (statsmodels MixedLM, REML), transformed back. With a handful of seeds the
    gradient optimizers stop at a boundary (seed variance near 0, an interval far too narrow), so the fit is tried
    with Powell, Nelder-Mead and L-BFGS and the highest likelihood kept; the interval uses Student's t with
    seeds − 1 degrees of freedom, not the normal quantile."""
    import pandas as pd
    import statsmodels.formula.api as smf
    from scipy.stats import t as student

    df = pd.DataFrame({"y": np.log(np.asarray(values, dtype=float)), "seed": list(map(str, seeds)),
                       "prompt": list(map(str, prompts))})
    df = df[np.isfinite(df["y"])]
    groups = df["seed"].nunique()
    if groups < 2:
        return _none(n=groups, why="fewer than 2 seeds")
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # re_formula="1" keeps the per-seed intercept: with a vc_formula statsmodels otherwise leaves it out
        model = smf.mixedlm("y ~ 1", df, groups="seed", re_formula="1", vc_formula={"prompt": "0 + C(prompt)"})
        for method in ("powell", "nm", "lbfgs"):
            try:
                fits.append(model.fit(reml=True, method=method))
            except (ValueError, np.linalg.LinAlgError):
                continue
    if not fits:
        return _none(n=groups, why="the mixed model did not fit")
    fit = max(fits, key=lambda f: f.llf)
    beta, se = float(fit.fe_params.iloc[0]), float(fit.bse_fe.iloc[0])
    q = student.ppf(0.5 + level / 2, groups - 1)
    return _interval(math.exp(beta), math.exp(beta - q * se), math.exp(beta + q * se), groups, items=len(df))


# ---- permutation tests ----------------------------------------------------------------------------------

def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(matrix.shape[0], k=1)]


def mantel(d1, d2, *, n_perm: int = 999, seed: int = 0) -> dict:
    """Spearman correlation of two distance matrices' upper triangles and its one-sided permutation p (objects
    permuted: rows and columns of the second matrix together)."""
    from scipy.stats import rankdata, spearmanr

    a, b = np.asarray(d1, dtype=float), np.asarray(d2, dtype=float)
    n = a.shape[0]
    if n < 4:
        return {"rho": math.nan, "p": math.nan, "n": n}
    rho = float(spearmanr(_upper(a), _upper(b)).statistic)
    # the ranks of a permuted matrix are the permuted ranks: rank once, permute the rank matrix
    ranks = np.zeros_like(b)
    ranks[np.triu_indices(n, 1)] = rankdata(_upper(b))
    ranks = ranks + ranks.T
    ra = rankdata(_upper(a))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        p = rng.permutation(n)
        hits += np.corrcoef(ra, _upper(ranks[np.ix_(p, p)]))[0, 1] >= rho - 1e-12
    return {"rho": rho, "p": (1 + hits) / (1 + n_perm), "n": n}


def identification(distance, *, n_perm: int = 999, seed: int = 0) -> dict:
    """distance[i, j]: posterior i to prior j. The share of posteriors whose nearest prior is their own, and its
    permutation p against posteriors matched to priors at random (chance share 1/n)."""
    d = np.asarray(distance, dtype=float)
    n = d.shape[0]
    if n < 2:
        return {"share": math.nan, "chance": math.nan, "p": math.nan, "n": n}
    nearest = d.argmin(axis=1)
    share = float(np.mean(nearest == np.arange(n)))
    rng = np.random.default_rng(seed)
    hits = sum(np.mean(nearest == rng.permutation(n)) >= share - 1e-12 for _ in range(n_perm))
    return {"share": share, "chance": 1.0 / n, "p": (1 + hits) / (1 + n_perm), "n": n}


def spearman_test(x, y, *, alternative: str = "less", n_perm: int = 999, seed: int = 0) -> dict:
    """Spearman ρ of paired values with a permutation p (scipy `permutation_test`, pairings permuted)."""
    from scipy.stats import permutation_test, spearmanr

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return {"rho": math.nan, "p": math.nan, "n": int(xs.size)}
    res = permutation_test((xs, ys), lambda a, b: spearmanr(a, b).statistic, permutation_type="pairings",
                           n_resamples=n_perm, alternative=alternative, random_state=np.random.default_rng(seed))
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": int(xs.size)}


def fmt(interval: dict, digits: int = 2, scale: float = 1.0) -> str:
    """'0.42 [0.31, 0.53]' (or '0.42 (n=1, no interval)' when no interval exists)."""
    m, lo, hi = (interval.get(k, math.nan) for k in ("mean", "lo", "hi"))
    if not math.isfinite(m):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m * scale:.{digits}f} (n={interval.get('n', 0)}, no interval)"
    return f"{m * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
