"""Claim 5: a posterior is a good starting point for further tuning, and controllable (RULES.md, claim 5):
fixed-budget measures of the validation curve paired by seed, the score on 1,000 test items, and the trade-off of
score against the prior weight λ (no verdict on it)."""
from __future__ import annotations

import math

import numpy as np

from .. import inference as I
from .base import FAILS, HOLDS, UNSURE, Claim, finite, not_measured, partial, register, result

LOSS_TARGET = 0.5
HORIZON = 150
SCORE_MARGIN = 5.0


def loss_at(curve, step: int) -> float:
    """The validation loss logged at `step` (25: the mean of 20 and 30 where the curve has no 25)."""
    values = dict(curve)
    if step in values:
        return float(values[step])
    below, above = max((s for s in values if s < step), default=None), min((s for s in values if s > step), default=None)
    if below is None or above is None:
        return math.nan
    return float((values[below] + values[above]) / 2)


def area(curve, horizon: int = HORIZON) -> float:
    """Trapezoid area under the validation curve over steps 0..horizon (NaN when the curve does not span it)."""
    points = sorted((s, v) for s, v in dict(curve).items() if s <= horizon)
    if not points or points[0][0] != 0 or points[-1][0] != horizon:
        return math.nan
    steps, values = zip(*points)
    return float(np.trapezoid(values, steps))


def steps_to(curve, target: float = LOSS_TARGET) -> float:
    """The first logged step whose validation loss is at or below `target` (NaN when none is)."""
    return next((float(s) for s, v in sorted(dict(curve).items()) if v <= target), math.nan)


MEASURES = {"loss@10": lambda c: loss_at(c, 10), "loss@25": lambda c: loss_at(c, 25), "loss@50": lambda c: loss_at(c, 50),
            "area": area, f"steps_to_{LOSS_TARGET:g}": steps_to}


def paired(fresh, warm) -> dict:
    """Each measure, posterior (λ = 0) minus fresh, paired by seed; and the score difference."""
    by_seed = {r.seed: r for r in fresh}
    pairs = [(w, by_seed[w.seed]) for w in warm if w.seed in by_seed]
    out = {name: I.paired_interval([f(w.val) for w, _ in pairs], [f(r.val) for _, r in pairs])
           for name, f in MEASURES.items()}
    out["score"] = I.paired_interval([w.score for w, _ in pairs], [r.score for _, r in pairs])
    return out


def decide(d: dict) -> tuple[str, str]:
    losses = [d[k] for k in ("loss@10", "loss@25", "loss@50", "area")]
    text = ", ".join(f"{k} {I.fmt(v)}" for k, v in d.items())
    if not all(finite(v["hi"]) for v in losses) or not finite(d["score"]["lo"]):
        return UNSURE, "too few pairs for an interval: " + text
    if all(v["hi"] < 0 for v in losses) and d["score"]["lo"] > -SCORE_MARGIN:
        return HOLDS, text
    if d["loss@50"]["lo"] > 0 or d["score"]["hi"] < -SCORE_MARGIN:
        return FAILS, text
    return UNSURE, text


def measure(g, **_) -> dict:
    fresh, warm = g.transfer()
    size = g.study.scale.reeval_size   # scores come from the runs' re-evaluation on this many test items
    missing = g.missing_of("transfer") + [f"{r.name}/eval-test-{size}.json" for r in fresh + warm
                                          if len(r.items) < size]
    if not fresh or not warm:
        return not_measured(CLAIM, missing)
    zero = [r for r in warm if r.extra.get("weight", 0) == 0]
    d = paired(fresh, zero)
    verdict, why = decide(d)
    table = [{"start": "fresh", "weight": None, "runs": len(fresh), "score": I.score_interval([r.items for r in fresh]),
              "displacement": None}]
    for w in sorted({r.extra.get("weight", 0) for r in warm}):
        sub = [r for r in warm if r.extra.get("weight", 0) == w]
        table.append({"start": "posterior", "weight": w, "runs": len(sub), "score": I.score_interval([r.items for r in sub]),
                      "displacement": I.LogOLS({"a": [r.extra["source_displacement"] for r in sub]}).mean("a")})
    curves = [{"run": r.name, "start": "fresh" if r in fresh else f"posterior λ={r.extra.get('weight'):g}",
               "val": r.val} for r in fresh + warm]
    items = [len(r.items) for r in fresh + warm]
    stats = {"paired": d, "test_items": int(min(items)) if items else 0}
    return partial(result(CLAIM, stats, verdict, why, {"table": table, "curves": curves}), missing)


def draw(res: dict, folder):
    from ..figures import curves_plot, tradeoff_plot

    fig = res.get("figure") or {}
    paths = []
    if fig.get("table"):
        paths.append(tradeoff_plot(fig["table"], folder / "claim5.png"))
    if fig.get("curves"):
        paths.append(curves_plot(fig["curves"], folder / "claim5_curves.png"))
    return paths


CLAIM = register(Claim(
    key="5", text="Posteriors are a good, controllable starting point for further tuning.",
    rule="holds if, paired by seed, the posterior start (λ = 0) has a lower validation loss at 10, 25 and 50 steps "
         "and a lower area under the curve (each interval's upper bound < 0) and its score is not 5 points lower "
         "(lower bound > −5); does not hold if its loss at 50 steps is higher (lower bound > 0) or its score is "
         "lower by more than 5 (upper bound < −5); else inconclusive. The score–λ trade-off is described",
    measure=measure, draw=draw))
