"""Confidence intervals for the reproduction's claims: over seeds, small n, stated plainly.

Every function returns {"mean", "lo", "hi", "n"} (floats; NaN bounds when n is too small), so the
report can print any interval the same way.
"""
from __future__ import annotations

import math

import numpy as np


def _clean(values) -> np.ndarray:
    x = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    return x[np.isfinite(x)]


def t_interval(values, level: float = 0.95) -> dict:
    """Student-t interval of the mean (the seeds' values are the sample)."""
    from scipy.stats import t

    x = _clean(values)
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": 1}
    half = float(t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def welch_interval(a, b, level: float = 0.95) -> dict:
    """Interval of mean(a) − mean(b), Welch–Satterthwaite degrees of freedom."""
    from scipy.stats import t

    xa, xb = _clean(a), _clean(b)
    na, nb = int(xa.size), int(xb.size)
    if na == 0 or nb == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": na + nb}
    diff = float(xa.mean() - xb.mean())
    if na < 2 or nb < 2:
        return {"mean": diff, "lo": math.nan, "hi": math.nan, "n": na + nb}
    va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return {"mean": diff, "lo": diff, "hi": diff, "n": na + nb}
    dof = (va + vb) ** 2 / ((va ** 2) / (na - 1) + (vb ** 2) / (nb - 1))
    half = float(t.ppf(0.5 + level / 2, dof) * se)
    return {"mean": diff, "lo": diff - half, "hi": diff + half, "n": na + nb}


def bootstrap_interval(groups, statistic, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Percentile bootstrap over groups (seeds): resample the groups with replacement, pool their
    items, apply `statistic(list_of_items) -> float`. `groups` is a list of lists of items."""
    groups = [list(g) for g in groups if len(g)]
    n = len(groups)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    point = float(statistic([item for g in groups for item in g]))
    if n == 1:
        return {"mean": point, "lo": math.nan, "hi": math.nan, "n": 1}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        value = float(statistic([item for i in pick for item in groups[i]]))
        if math.isfinite(value):
            stats.append(value)
    if not stats:
        return {"mean": point, "lo": math.nan, "hi": math.nan, "n": n}
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": point, "lo": float(lo), "hi": float(hi), "n": n}


def fmt(interval: dict, digits: int = 2, scale: float = 1.0) -> str:
    """'0.42 [0.31, 0.53]' (or '0.42 (n=1)' when no interval exists)."""
    m, lo, hi = (interval.get(k, math.nan) for k in ("mean", "lo", "hi"))
    if not math.isfinite(m):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m * scale:.{digits}f} (n={interval.get('n', 0)}, no interval)"
    return f"{m * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
