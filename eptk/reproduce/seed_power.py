"""Claim 2's seeds per arm (docs/findings/RULES.md, "Seeds per arm (power)"): every arm starts with the converged
stage's first seeds; once an arm has run them all, the power formulas on its observed score SD (stalled runs
included) give the seeds it needs, at most CAP. One module serves the stage that trains those seeds and the claim
that reads "not measured" until they are in.

It imports little of eptk (`runs.RunDir`, inference's bootstrap floor, the budget rounds of `budget.py`), so that a
checkout frozen for a study's training can take it and budget.py as a patch (docs/findings/background/) and train
the seeds the report asks for.
"""
from __future__ import annotations

import json
import math
from statistics import stdev

from .inference import MIN_BOOTSTRAP_GROUPS

CAP = 20   # RULES.md: each arm grows to the larger n, capped at 20 seeds


def seeds_needed(sd: float, *, margin: float = 10.0, half_width: float = 5.0, alpha: float = 0.05,
                 power: float = 0.8, floor: int = MIN_BOOTSTRAP_GROUPS, cap: int = CAP) -> dict:
    """Seeds per arm from an observed SD of run scores (RULES.md, "Seeds per arm"): the larger of a TOST at
    `margin` with `power` at a true difference of 0, and a difference interval of ±`half_width`; at least
    `floor` (a bootstrap's groups), at most `cap`."""
    from scipy.stats import norm

    tost_n = 2 * sd ** 2 * (norm.ppf(1 - alpha) + norm.ppf(1 - (1 - power) / 2)) ** 2 / margin ** 2
    width_n = 2 * (norm.ppf(1 - alpha / 2) * sd / half_width) ** 2
    need = max(floor, math.ceil(max(tost_n, width_n)))
    return {"tost": tost_n, "width": width_n, "n": min(cap, need), "capped": need > cap}


def arm_need(scores: list[float], runs: int, first: int) -> dict:
    """The seeds one arm needs: `first` until it has run that many (or its scores give no SD), then the power
    formulas on the SD of the scores it has."""
    sd = stdev(scores) if len(scores) > 1 else math.nan
    if runs < first or not math.isfinite(sd):
        return {"n": first, "sd": sd}
    return dict(seeds_needed(sd, floor=first, cap=CAP), sd=sd)


def test_items(path) -> tuple[list[float], int]:
    """Per-item exact match (0/1) of the run's largest test evaluation that kept its items, and its size."""
    from ..runs import RunDir

    best: tuple[list[float], int] = ([], 0)
    for summary, items in RunDir(path).evaluations():
        if items is None or summary.get("split", "test") != "test":
            continue
        rows = [json.loads(line) for line in items.read_text().splitlines() if line.strip()]
        if len(rows) > best[1]:
            best = ([float(r["exact_match"]) for r in rows], len(rows))
    return best


def score_of(items: list[float], evaluation: dict | None) -> float | None:
    """A run's test score in percent: exact match over its kept items, else its evaluation's own score."""
    if items:
        return 100.0 * sum(items) / len(items)
    tuned = (evaluation or {}).get("tuned")
    return tuned.get("score") if isinstance(tuned, dict) else None


def arm_seeds(study) -> dict[str, int]:
    """Arm name -> how many seeds (0, 1, ...) the converged stage holds for it now: what the power rule asks of the
    runs finished in the study folder, and never fewer than reach its highest finished seed (a finished run is
    never dropped because a later SD asks for fewer). Under RULES.md amendment 1 the rule reads the runs as they
    are at the round's budget B: each run from the folder that holds it now (its finished `v3-` continuation, else
    the version-2 run), and an arm grows only once every run it has is settled at B (stopped early by then, or
    trained to it); until then it keeps the seeds it has."""
    from ..runs import RunDir
    from .budget import current_path, moves_on, rounds, standing

    first = len(study.scale.converged_seeds)
    done = {}   # arm name -> {seed: the folder of its finished run}
    for arm in study.converged_arms():
        name = study.arm_name(arm)
        paths = {seed: current_path(study.out, f"{name}-s{seed}") for seed in range(CAP)}
        done[name] = {seed: path for seed, path in paths.items() if RunDir(path).is_complete()}
    standings = {path: standing(path) for runs in done.values() for path in runs.values()}
    scores = {path: score_of(test_items(path)[0], RunDir(path).eval()) for path in standings}

    def seeds_at(budget: int) -> dict[str, int]:
        seeds = {}
        for name, runs in done.items():
            settled = all(standings[path].settled_at(budget) for path in runs.values())
            known = [scores[path] for path in runs.values() if scores[path] is not None] if settled else []
            seeds[name] = max(arm_need(known, len(runs), first)["n"], max(runs, default=-1) + 1)
        return seeds

    # the round under way is the first whose runs, with the seeds the rule asks at its budget, are not all settled
    # at it with fewer than 90% stopped early (so a round ends only once the seeds it grew are in)
    for budget in rounds(study.scale.converged["steps"]):
        seeds = seeds_at(budget)
        unfinished = sum(len(set(range(n)) - set(done[name])) for name, n in seeds.items())
        if not moves_on([*standings.values(), *[None] * unfinished], budget):
            break
    return seeds
