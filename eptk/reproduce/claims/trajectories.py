"""Claim 3: generated trajectories are not localized in activation space (RULES.md, claim 3): each trajectory's
step and spread ratios against its own task's activations, their mean from a mixed model with seeds and prompts
as grouping factors (intervals over seeds and prompts, not over tasks)."""
from __future__ import annotations

import numpy as np

from .. import inference as I
from .base import FAILS, HOLDS, UNSURE, Claim, finite, not_measured, partial, register, result

STEP, SPREAD = 0.75, 0.5


def ratio_intervals(rows: list[dict]) -> dict:
    """step_ratio and spread_ratio means (MixedLM on the log scale: seed random intercept, prompt component)."""
    rows = [r for r in rows if r["points"] >= 3 and r["step_ratio"] > 0 and r["spread_ratio"] > 0]
    seeds = [r["seed"] for r in rows]
    prompts = [f"{r['task']}|{r['prompt']}" for r in rows]
    return {key: I.mixed_log_mean([r[key] for r in rows], seeds, prompts) for key in ("step_ratio", "spread_ratio")}


def decide(step: dict, spread: dict) -> tuple[str, str]:
    text = f"step_ratio {I.fmt(step)}, spread_ratio {I.fmt(spread)}"
    if not finite(step["lo"], spread["lo"]):
        return UNSURE, "too few seeds for an interval: " + text
    if step["lo"] >= STEP and spread["lo"] >= SPREAD:
        return HOLDS, text + f" ≥ {STEP}, {SPREAD}"
    if step["hi"] < STEP or spread["hi"] < SPREAD:
        return FAILS, text + ": localized"
    return UNSURE, text


def measure(g, **_) -> dict:
    rows, missing = g.trajectory_rows()
    if not rows:
        return not_measured(CLAIM, missing)
    overall = ratio_intervals(rows)
    verdict, why = decide(overall["step_ratio"], overall["spread_ratio"])
    table = []
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        per = ratio_intervals(sub)
        table.append({"task": task, "trajectories": len(sub), "step_ratio": per["step_ratio"],
                      "spread_ratio": per["spread_ratio"],
                      "order_significant_share": float(np.mean([r["order_p"] < 0.05 for r in sub]))})
    stats = {**overall, "trajectories": len(rows), "seeds": len({r["seed"] for r in rows})}
    return partial(result(CLAIM, stats, verdict, why, {"table": table, "rows": rows}), missing)


def draw(res: dict, folder):
    from ...analysis.plots import plot_trajectories

    rows = (res.get("figure") or {}).get("rows") or []
    if not rows:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    return [plot_trajectories(rows, folder / "claim3.png", group_key=lambda r: r["task"])]


CLAIM = register(Claim(
    key="3", text="Generated trajectories are not localized in activation space.",
    rule="holds (not localized) if the lower bounds of the step_ratio and spread_ratio means (mixed model over seeds "
         "and prompts) are ≥ 0.75 and ≥ 0.5; does not hold (localized) if an upper bound is below them; "
         "else inconclusive",
    measure=measure, draw=draw))
