"""Claim 2: a prompt from a new region of activation space works about as well as one from the data's region
(RULES.md, claim 2): early-stopped runs from region:data and region:new under two step sizes per method, the
region:data positive control, TOST at ±10 points, stalls as an outcome."""
from __future__ import annotations

import math

import numpy as np

from ...config import TuneConfig
from .. import inference as I
from ..budget import Standing, further, reading
from ..seed_power import arm_need
from .base import CONVERGED_SHARE, FAILS, HOLDS, NOT_MEASURED, UNSURE, Claim, converged_share, finite, \
    not_converged, not_measured, partial, register, result

MARGIN = 10.0              # points of exact match
CONTROL_INSIDE = 0.5       # region:data posteriors mostly inside the data's 99% region
NEW_OUTSIDE = 0.05         # region:new posteriors at most this share inside


def step_of(arm: dict) -> str:
    return f"--lr-scale {arm['lr_scale']}" if "lr_scale" in arm else f"lr {arm['lr']:g}"


def arm_summary(runs) -> dict:
    """One arm's numbers: score (GEE over items), stall rate (Wilson), score without stalls, positions (of the runs
    `placed`: a run whose data statistics are not at hand has none)."""
    scores = [r.score for r in runs if r.score is not None]
    stalled = [r for r in runs if r.stalled]
    kept = [r for r in runs if not r.stalled]
    inside = [r.extra["position"]["inside_share"] for r in runs if r.extra.get("position")]
    distance = [r.extra["position"]["distance"] for r in runs if r.extra.get("position")]
    best_steps = [r.extra["early_stop"]["best_step"] for r in runs if r.extra.get("early_stop")]
    counts = sorted({len(r.items) for r in runs if r.items})   # the test split may hold fewer than asked
    return {"runs": len(runs), "test_items": items_range(counts),
            "score": I.score_interval([r.items for r in runs if r.items]),
            "stall_rate": I.wilson(len(stalled), len(runs)),
            "score_without_stalls": I.score_interval([r.items for r in kept if r.items]),
            "inside_share": float(np.mean(inside)) if inside else math.nan, "placed": len(inside),
            "distance": float(np.median(distance)) if distance else math.nan,
            "stopped_early": converged_share(runs),
            "best_step": float(np.median(best_steps)) if best_steps else math.nan,
            "scores": scores, "best_val": [r.best_val for r in runs]}


def items_range(counts: list[int]) -> str:
    """'865', or '865-1,000' when the runs of an arm were scored on different numbers of test items."""
    if not counts:
        return ""
    return f"{counts[0]:,}" if counts[0] == counts[-1] else f"{counts[0]:,}-{counts[-1]:,}"


def compare(data: dict, new: dict) -> dict:
    """region:new against region:data at one method and step size."""
    control = finite(data["inside_share"]) and data["inside_share"] >= CONTROL_INSIDE
    outside = finite(new["inside_share"]) and new["inside_share"] <= NEW_OUTSIDE
    return {"control_passes": control, "new_outside": outside,
            "delta": I.bootstrap_difference(new["scores"], data["scores"]),
            "tost": I.tost(new["scores"], data["scores"], MARGIN),
            "at_equal_val_loss": equal_loss_difference(data, new)}


def equal_loss_difference(data: dict, new: dict) -> dict:
    """score ~ arm + best validation loss (statsmodels OLS): region:new − region:data at the same loss."""
    import statsmodels.api as sm

    y = data["scores"] + new["scores"]
    loss = data["best_val"][:len(data["scores"])] + new["best_val"][:len(new["scores"])]
    if len(y) < 4 or len(y) != len(loss) or not all(map(math.isfinite, loss)):
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": len(y)}
    x = np.column_stack([np.ones(len(y)), [0.0] * len(data["scores"]) + [1.0] * len(new["scores"]), loss])
    fit = sm.OLS(np.array(y, dtype=float), x).fit()
    lo, hi = fit.conf_int(alpha=0.05)[1]
    return {"mean": float(fit.params[1]), "lo": float(lo), "hi": float(hi), "n": len(y)}


def decide(comparisons: dict, share: float) -> tuple[str, str]:
    """comparisons: method -> step -> compare(...). The verdict of RULES.md claim 2."""
    reason = not_converged(share)
    if reason:
        return UNSURE, reason
    readable = {m: {s: c for s, c in steps.items() if c["control_passes"] and c["new_outside"]}
                for m, steps in comparisons.items()}
    text = "; ".join(f"{m} {s}: Δ {I.fmt(c['delta'], 1)}, TOST p {c['tost']['p']:.3g}"
                     + ("" if c["control_passes"] else ", control fails")
                     + ("" if c["new_outside"] else ", region:new not outside")
                     for m, steps in comparisons.items() for s, c in steps.items())
    if readable and all(any(c["tost"]["p"] < 0.05 for c in steps.values()) for steps in readable.values()):
        return HOLDS, text
    failing = [m for m, steps in readable.items()
               if steps and all(finite(c["delta"]["hi"]) and c["delta"]["hi"] < -MARGIN for c in steps.values())]
    if failing:
        return FAILS, f"{', '.join(failing)}: Δ below −{MARGIN:g} at every readable step size; " + text
    return UNSURE, text


def measure(g, **_) -> dict:
    arms = g.study.converged_arms()
    missing = g.missing_of("converged")
    summaries, table = {}, []
    for arm in arms:
        runs = g.tuned("converged", **arm)
        if runs:
            summaries[g.study.arm_name(arm)] = (arm, arm_summary(runs))
    if not summaries:
        return not_measured(CLAIM, missing)
    comparisons: dict[str, dict] = {}
    for name, (arm, s) in summaries.items():
        table.append({"method": arm["method"], "step": step_of(arm), "prior": arm["prior"], "runs": s["runs"],
                      "test_items": s["test_items"], "score": s["score"], "stall_rate": s["stall_rate"],
                      "score_without_stalls": s["score_without_stalls"],
                      "inside_share": s["inside_share"], "placed": s["placed"], "distance": s["distance"],
                      "stopped_early": s["stopped_early"], "best_step": s["best_step"]})
    for name, (arm, s) in summaries.items():
        if arm["prior"] != "region:data":
            continue
        partner = g.study.arm_name(dict(arm, prior="region:new"))
        if partner in summaries:
            comparisons.setdefault(arm["method"], {})[step_of(arm)] = compare(s, summaries[partner][1])
    runs = [r for arm in arms for r in g.tuned("converged", **arm)]
    first = g.study.scale.converged["steps"]
    # a run parked mid-continuation is read where its version-2 folder stands, at the round its continuation has
    # passed
    at = reading({r.name: further(g.study.out, r.name, standing_of(r), first) for r in runs}, len(missing), first,
                 [first_standing(g, r) for r in runs])
    share = at.share
    seeds = seed_plan(g, summaries, at.continuing)
    short = [f"{name} needs {need['n']} seeds (has {summaries[name][1]['runs']})" for name, need in seeds.items()
             if summaries[name][1]["runs"] < need["n"]]
    short += [f"{g.study.arm_name(arm)} has no finished run" for arm in arms if g.study.arm_name(arm) not in summaries]
    verdict, why = decide(comparisons, share)
    if short:
        verdict, why = NOT_MEASURED, "seeds the power rule asks for are not all in: " + "; ".join(short)
    if at.continuing:
        verdict, why = NOT_MEASURED, (f"{len(at.continuing)} of {len(runs)} runs are still short of the round's budget "
                                      f"of {at.budget:,} steps (RULES.md amendment 1)" + (f"; {why}" if short else ""))
    if finite(at.first_share) and at.first_share < CONVERGED_SHARE:
        why += (f" (version 2's budget of {first:,} steps: {at.first_share:.0%} of runs stopped early, so its verdict "
                f"was inconclusive, not converged; superseded by amendment 1's rounds, now at {at.budget:,} steps)")
    stats = {"comparisons": comparisons, "converged_share": share, "budget": at.budget,
             "first_budget": {"steps": first, "converged_share": at.first_share}, "continuing": at.continuing,
             "seeds": seeds}
    rows = [{"method": m, "step": s, "delta_new_minus_data": c["delta"], "tost_p": c["tost"]["p"],
             "control_passes": c["control_passes"], "new_outside": c["new_outside"],
             "delta_at_equal_val_loss": c["at_equal_val_loss"]} for m, steps in comparisons.items()
            for s, c in steps.items()]
    # the positive control reads every run's position: a run not placed (its statistics not on this machine) is an
    # input missing, never an arm's share read from the runs that happen to be placed
    unplaced = [r for r in runs if not r.extra.get("position")]
    if unplaced:
        why += f"; {placing_hint(g.study.model, unplaced)}"
    return partial(result(CLAIM, stats, verdict, why, {"table": table, "comparisons": rows,
                                                       "seeds": seed_rows(summaries, seeds),
                                                       "continued_runs": continued_rows(g, runs)}),
                   missing + [f"positions/{r.name}" for r in unplaced])


def placing_hint(model: str, runs) -> str:
    """How runs not placed get their positions: each recorded its task's statistics at its seed in eptk's cache
    (a key of model, task, seed and samples), and `eptk capture` with those makes the same entry again."""
    default = TuneConfig.stats_samples
    wanted = sorted({(r.task, r.seed, r.extra.get("stats_samples") or default) for r in runs})
    commands = "; ".join(f"`eptk capture --model {model} --task {task} --seed {seed}"
                         + (f" --samples {samples}`" if samples != default else "`") for task, seed, samples in wanted)
    return (f"{len(runs)} run(s) not placed: the data statistics they recorded are not in this machine's cache "
            f"({commands} makes them again)")


def continued_rows(g, runs) -> list[dict]:
    """Each run read from its finished continuation (amendment 1): its score and stop at version 2's budget, then
    at the larger one, so the report shows what continuing changed; and whether the continuation's first steps
    repeated the version-2 run's (`departs_at`, below)."""
    from ...runs import RunDir
    from ..gather import val_curve
    from ..seed_power import score_of, test_items

    rows = []
    for r in runs:
        path = g.paths.get(r.name)
        if path is None or path.name == r.name:
            continue
        first = g.study.out / r.name
        evaluation = RunDir(first).eval()
        before = (evaluation or {}).get("early_stop") or {}
        stop = r.extra.get("early_stop") or {}
        rows.append({"run": r.name, "score_at_first_budget": score_of(test_items(first)[0], evaluation),
                     "best_step_at_first_budget": before.get("best_step"), "budget": r.extra.get("budget"),
                     "stopped_at": stop.get("step") if stop.get("stopped") else None, "best_step": stop.get("best_step"),
                     "score": r.score, "departs_at": departs_at(val_curve(RunDir(first).metrics()), r.val)})
    return rows


def departs_at(first: list, continued: list) -> int | None:
    """The first step of the version-2 run's validation curve at which its continuation's validation loss differs
    from it (None: equal at every such step). A continuation resumed from the run's checkpoint repeats those steps
    by construction; one trained again from the start (its checkpoint lost with a machine) repeats them only if
    the arithmetic did, and where it departs, its score at the larger budget belongs to another trajectory than the
    version-2 score beside it."""
    later = dict(continued)
    return next((step for step, loss in first if step in later and later[step] != loss), None)


def first_standing(g, run) -> Standing:
    """A run as its version-2 folder stands, where a continuation holds it now: a continuation trained again from
    step 0 on another machine follows another trajectory (departs_at) and may stop before version 2's budget
    where the version-2 run did not, which is not what version 2 measured."""
    path = g.paths.get(run.name)
    if path is None or path.name == run.name:
        return standing_of(run)
    from ...runs import RunDir

    evaluation = RunDir(g.study.out / run.name).eval() or {}
    return Standing.of(g.study.scale.converged["steps"], evaluation.get("early_stop"))


def standing_of(run) -> Standing:
    """A run as the budget rule reads it (RULES.md amendment 1): the steps it was trained to, and its stop."""
    return Standing.of(int(run.extra.get("budget") or 0), run.extra.get("early_stop"))


def seed_plan(g, summaries: dict, continuing=()) -> dict:
    """Seeds each arm needs by RULES.md (10, then the power formulas on the arm's observed SD, at most 20): the
    same rule the converged stage grows its arms by (seed_power.arm_seeds). An arm with runs `continuing` (names
    of runs short of the round's budget, amendment 1) is read at that budget only once they reach it: until then
    it needs the seeds it started with."""
    first = len(g.study.scale.converged_seeds)
    waiting = {name.rsplit("-s", 1)[0] for name in continuing}   # run name: the arm's, then -s<seed>
    return {name: arm_need([] if name in waiting else s["scores"], s["runs"], first)
            for name, (_, s) in summaries.items()}


def seed_rows(summaries: dict, seeds: dict) -> list[dict]:
    """The power reasoning per arm, as the report shows it: the SD of its run scores, the seeds a TOST at ±10
    points and a ±5-point interval would need at that SD, the seeds asked (at least the first ones, at most 20)
    and the runs it has. An arm still waiting for its first seeds has no SD-based need yet."""
    rows = []
    for name, (arm, s) in summaries.items():
        need = seeds[name]
        rows.append({"method": arm["method"], "step": step_of(arm), "prior": arm["prior"], "runs": s["runs"],
                     "score_sd": need.get("sd", math.nan), "seeds_for_tost": ceil_or_nan(need.get("tost")),
                     "seeds_for_interval": ceil_or_nan(need.get("width")), "seeds_asked": need["n"],
                     "capped": bool(need.get("capped", False))})
    return rows


def ceil_or_nan(x) -> float:
    return float(math.ceil(x)) if finite(x) else math.nan


def score_label(table: list[dict]) -> str:
    """The score axis says how many test items each run was scored on, as measured (the rules ask 1,000; a task's
    test split can hold fewer, and then every item of it is scored)."""
    counts = sorted({row["test_items"] for row in table if row.get("test_items")})
    return "test exact match (%)" + (f", {' or '.join(counts)} items per run" if counts else "")


def draw(res: dict, folder):
    from ..figures import table_bars

    table = (res.get("figure") or {}).get("table") or []
    if not table:
        return []
    return [table_bars(table, "score", score_label(table), "Claim 2: score by prior and step size",
                       folder / "claim2.png", label_keys=("method", "step", "prior")),
            table_bars(table, "stall_rate", "stalled runs (share)", "Claim 2: stall rate by arm",
                       folder / "claim2_stalls.png", label_keys=("method", "step", "prior"))]


CLAIM = register(Claim(
    key="2", text="Models work with embeddings from new regions of activation space about as well as from the data's "
                  "own region.",
    rule="holds if, for every method, at a step size whose region:data posteriors are mostly inside the data "
         "(positive control) and whose region:new posteriors are outside (≤ 5% inside), TOST shows EM(new) − "
         "EM(data) within ±10 points (p < 0.05); does not hold if for some method that difference's 95% interval "
         "lies below −10 at every such step size; else inconclusive (also when fewer than 90% of runs converged)",
    measure=measure, draw=draw))
