"""The paper's claims, each measured: a statistic, its 95% interval over seeds, and a verdict by a rule
stated in docs/findings/RULES.md (RULES below; the report prints them next to the results; RULES.md says when they were written).

Inputs are plain data (tensors, lists, dicts) gathered by eptk.reproduce.gather, so every claim can be
recomputed and tested without a model. A claim whose inputs are not there yet (a stage not run) is
"not measured", with the runs it misses (`not_measured`). Each `claim_*` returns a dict with `claim`, `rule`,
`statistics` (named intervals and values), `verdict` ("holds" / "does not hold" / "inconclusive"),
`why` (one line: which part of the rule decided) and `figure` (the data its plot needs).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import metrics as M
from .intervals import bootstrap_interval, fmt, t_interval, welch_interval

HOLDS, FAILS, UNSURE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"

RULES = {
    "1": "holds if the CI upper bound of rel_disp < 0.5 and the CI lower bound of own_prior_share > 0.5; "
         "does not hold if rel_disp's CI lower bound > 1 or own_prior_share's CI upper bound < 0.5; else inconclusive",
    "2": "holds if, for every method, the CI of EM(region:new) − EM(region:data) lies within ±10 points and at most 5% "
         "of region:new posterior vectors are inside the data's 99% region; does not hold if for some method that CI "
         "lies entirely below −10 points; else inconclusive",
    "3": "holds (not localized) if the CI lower bounds of step_ratio ≥ 0.75 and of spread_ratio ≥ 0.5; does not hold "
         "(localized) if the CI upper bound of step_ratio < 0.75 or of spread_ratio < 0.5; else inconclusive",
    "4": "a pair is distinct at a layer when its seed-mean silhouette ≥ 0.25 and every seed's permutation p < 0.01, "
         "and shares a cluster when the silhouette < 0.10; holds if both arith pairs are distinct and qa-vs-fill shares "
         "a cluster, each in ≥ 75% of layers; does not hold if qa-vs-fill is distinct in ≥ 75% of layers or an arith "
         "pair is distinct in < 25%; else inconclusive",
    "5": "holds if the CI upper bound of Δsteps (posterior λ=0 − fresh) < 0, the CI lower bound of Δscore > −5 points "
         "and Spearman ρ(λ, displacement) has a CI upper bound < 0; does not hold if Δsteps' CI lower bound > 0 or "
         "Δscore's CI upper bound < −5 points; else inconclusive",
    "6": "holds if deep `all` without --keep-sink ends above `last:3` (final-loss CI lower bound > last:3's CI upper "
         "bound) and --keep-sink lowers `all`'s final loss (Welch CI of the difference entirely < 0); does not hold "
         "if `all` ends at or below last:3 (CI upper bound ≤ last:3's CI lower bound) or --keep-sink raises it (CI > 0); "
         "else inconclusive",
}

CLAIMS = {
    "1": "Priors strongly affect the position of the tuned embeddings (posteriors stay near their prior).",
    "2": "Models work with embeddings from new regions of activation space about as well as from the data's own region.",
    "3": "Generated trajectories are not localized in activation space.",
    "4": "Distant tasks (arithmetic vs NLP) form distinct activation clusters; NLP tasks (QA, fill-in) share one.",
    "5": "Posteriors are a good, controllable starting point for further tuning.",
    "6": "(eptk) Replacing early slot states removes the attention sink; leaving the first slot to the model fixes it.",
}


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def result(key: str, statistics: dict, verdict: str, why: str, figure: dict | None = None, **extra) -> dict:
    return {"claim": key, "text": CLAIMS[key], "rule": RULES[key], "statistics": statistics, "verdict": verdict,
            "why": why, "figure": figure or {}, **extra}


def not_measured(key: str, missing: list[str]) -> dict:
    """A claim whose inputs are missing: which (runs, captures, trajectories), never an error."""
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    return result(key, {}, NOT_MEASURED, f"missing {len(missing)}: {shown}", missing=missing)


# ---- claim 1: priors decide the posterior's position -----------------------------------------------

@dataclass
class TunedRun:
    """What the claims read of one run."""
    name: str
    method: str
    prior: str
    seed: int
    layers: str = ""
    task: str = "arith"
    prior_tensors: dict = field(default_factory=dict)      # block -> [P, d]
    posterior_tensors: dict = field(default_factory=dict)  # block -> [P, d]
    score: float | None = None                             # test exact match, percent
    baseline: float | None = None
    losses: list = field(default_factory=list)             # (step, training loss)
    val: list = field(default_factory=list)                # (step, validation loss)
    extra: dict = field(default_factory=dict)


def slot_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over slots of ‖a_i − b_i‖ (rows are slots; the posterior's slot i grew from the prior's slot i)."""
    return float((a.double() - b.double()).norm(dim=-1).mean())


def claim_priors_position(runs: list[TunedRun]) -> dict:
    by_method: dict[str, list[TunedRun]] = defaultdict(list)
    for run in runs:
        if run.prior_tensors and run.posterior_tensors:
            by_method[run.method].append(run)
    items = []   # per (run, block): seed, rel_disp, own
    per_prior: dict[tuple, list] = defaultdict(list)
    for method, group in by_method.items():
        blocks = sorted(set.intersection(*(set(r.prior_tensors) & set(r.posterior_tensors) for r in group)))
        for block in blocks:
            between = [slot_distance(a.prior_tensors[block], b.prior_tensors[block])
                       for i, a in enumerate(group) for b in group[i + 1:] if a.prior != b.prior]
            if not between:
                continue
            scale = float(np.median(between))
            for run in group:
                post = run.posterior_tensors[block]
                disp = slot_distance(post, run.prior_tensors[block])
                nearest = min(group, key=lambda c: slot_distance(post, c.prior_tensors[block]))
                item = {"run": run.name, "method": method, "prior": run.prior, "seed": run.seed, "block": block,
                        "rel_disp": disp / scale if scale > 0 else math.nan, "own": float(nearest is run),
                        "nearest": nearest.name, "candidates": len(group)}
                items.append(item)
                per_prior[(method, run.prior)].append(item)
    seeds = sorted({i["seed"] for i in items})
    groups = [[i for i in items if i["seed"] == s] for s in seeds]
    rel = bootstrap_interval(groups, lambda xs: float(np.nanmean([x["rel_disp"] for x in xs])))
    own = bootstrap_interval(groups, lambda xs: float(np.mean([x["own"] for x in xs])))
    chance = float(np.mean([1.0 / i["candidates"] for i in items])) if items else math.nan
    table = []
    for (method, prior), its in sorted(per_prior.items()):
        by_seed = defaultdict(list)
        for i in its:
            by_seed[i["seed"]].append(i)
        table.append({"method": method, "prior": prior,
                      "rel_disp": t_interval([np.nanmean([x["rel_disp"] for x in v]) for v in by_seed.values()]),
                      "own_prior_share": t_interval([np.mean([x["own"] for x in v]) for v in by_seed.values()])})
    if not _finite(rel["hi"], own["lo"]):
        verdict, why = UNSURE, "too few seeds for an interval"
    elif rel["hi"] < 0.5 and own["lo"] > 0.5:
        verdict, why = HOLDS, f"rel_disp {fmt(rel)} < 0.5 and own_prior_share {fmt(own)} > 0.5"
    elif rel["lo"] > 1 or own["hi"] < 0.5:
        verdict, why = FAILS, f"rel_disp {fmt(rel)}, own_prior_share {fmt(own)}"
    else:
        verdict, why = UNSURE, f"rel_disp {fmt(rel)}, own_prior_share {fmt(own)}: between the bounds"
    return result("1", {"rel_disp": rel, "own_prior_share": own, "chance_share": chance,
                        "blocks": len(items)}, verdict, why, {"table": table}, items=items)


# ---- claim 2: new regions work as well as the data's ---------------------------------------------

def claim_new_region(runs: list[TunedRun], new_inside: dict[str, float]) -> dict:
    """`new_inside`: run name -> share of its region:new posterior vectors inside the data's 99% region."""
    scores: dict[tuple, list] = defaultdict(list)
    for run in runs:
        if run.score is not None:
            scores[(run.method, run.prior)].append(run.score)
    table = [{"method": m, "prior": p, "score": t_interval(v)} for (m, p), v in sorted(scores.items())]
    methods = sorted({m for m, _ in scores})
    deltas = {m: welch_interval(scores.get((m, "region:new"), []), scores.get((m, "region:data"), []))
              for m in methods}
    inside = float(np.mean(list(new_inside.values()))) if new_inside else math.nan
    known = {m: d for m, d in deltas.items() if _finite(d["lo"], d["hi"])}
    if not known:
        verdict, why = UNSURE, "no region:new / region:data pair with an interval"
    elif any(d["hi"] < -10 for d in known.values()):
        m = next(m for m, d in known.items() if d["hi"] < -10)
        verdict, why = FAILS, f"{m}: Δ {fmt(deltas[m], 1)} points lies below −10"
    elif len(known) == len(methods) and all(-10 <= d["lo"] and d["hi"] <= 10 for d in known.values()) \
            and _finite(inside) and inside <= 0.05:
        verdict, why = HOLDS, "; ".join(f"{m}: Δ {fmt(d, 1)}" for m, d in known.items()) + \
            f"; inside share {inside:.2f}"
    else:
        verdict, why = UNSURE, "; ".join(f"{m}: Δ {fmt(d, 1)}" for m, d in deltas.items()) + \
            (f"; inside share {inside:.2f}" if _finite(inside) else "")
    return result("2", {"delta_new_minus_data": deltas, "new_inside_share": inside}, verdict, why,
                  {"table": table}, inside_by_run=new_inside)


# ---- claim 3: trajectories ------------------------------------------------------------------------

def claim_trajectories(rows: list[dict]) -> dict:
    """rows: one per (task, layer, trajectory) with the fields of eptk.metrics.trajectory_against_data plus task
    and layer (eptk.analysis.trajectories measures them)."""
    rows = [r for r in rows if r["points"] >= 3]
    tasks = sorted({r["task"] for r in rows})
    groups = [[r for r in rows if r["task"] == t] for t in tasks] if len(tasks) > 1 else [[r] for r in rows]
    step = bootstrap_interval(groups, lambda xs: float(np.mean([x["step_ratio"] for x in xs])))
    spread = bootstrap_interval(groups, lambda xs: float(np.mean([x["spread_ratio"] for x in xs])))
    ordered = float(np.mean([r["order_p"] < 0.05 for r in rows])) if rows else math.nan
    table = []
    for task in tasks:
        for layer in sorted({r["layer"] for r in rows if r["task"] == task}):
            sub = [r for r in rows if r["task"] == task and r["layer"] == layer]
            table.append({"task": task, "layer": layer, "n": len(sub),
                          "step_ratio": t_interval([r["step_ratio"] for r in sub]),
                          "spread_ratio": t_interval([r["spread_ratio"] for r in sub]),
                          "order_significant_share": float(np.mean([r["order_p"] < 0.05 for r in sub]))})
    if not _finite(step["lo"], spread["lo"]):
        verdict, why = UNSURE, "too few trajectories for an interval"
    elif step["lo"] >= 0.75 and spread["lo"] >= 0.5:
        verdict, why = HOLDS, f"step_ratio {fmt(step)} ≥ 0.75, spread_ratio {fmt(spread)} ≥ 0.5"
    elif step["hi"] < 0.75 or spread["hi"] < 0.5:
        verdict, why = FAILS, f"step_ratio {fmt(step)}, spread_ratio {fmt(spread)}: localized"
    else:
        verdict, why = UNSURE, f"step_ratio {fmt(step)}, spread_ratio {fmt(spread)}"
    return result("3", {"step_ratio": step, "spread_ratio": spread, "order_significant_share": ordered,
                        "trajectories": len(rows)}, verdict, why, {"table": table})


# ---- claim 4: task clusters -------------------------------------------------------------------------

def silhouette_test(a: torch.Tensor, b: torch.Tensor, *, n_perm: int = 200, seed: int = 0) -> tuple[float, float]:
    """Silhouette of two labelled point sets and its permutation p-value (labels shuffled)."""
    x = torch.cat([a, b]).double()
    dist = torch.cdist(x, x)  # once: each permutation only relabels
    labels = np.array([0] * a.shape[0] + [1] * b.shape[0])
    observed = M.silhouette_from_distances(dist, labels)
    rng = np.random.default_rng(seed)
    null = [M.silhouette_from_distances(dist, rng.permutation(labels)) for _ in range(n_perm)]
    return observed, (1 + sum(v >= observed - 1e-12 for v in null)) / (1 + n_perm)


PAIRS = (("arith", "qa"), ("arith", "fill"), ("qa", "fill"))


def claim_task_clusters(rows: list[dict]) -> dict:
    """rows: one per (seed, layer, pair) with silhouette, p, nc1, frechet."""
    layers = sorted({r["layer"] for r in rows})
    table, status = [], defaultdict(list)
    for layer in layers:
        for pair in PAIRS:
            sub = [r for r in rows if r["layer"] == layer and tuple(r["pair"]) == pair]
            if not sub:
                continue
            sil = t_interval([r["silhouette"] for r in sub])
            distinct = sil["mean"] >= 0.25 and all(r["p"] < 0.01 for r in sub)
            shared = sil["mean"] < 0.10
            status[pair].append((distinct, shared))
            table.append({"layer": layer, "pair": "-".join(pair), "silhouette": sil,
                          "p_max": max(r["p"] for r in sub), "nc1": t_interval([r["nc1"] for r in sub]),
                          "frechet": t_interval([r["frechet"] for r in sub]), "distinct": distinct, "shared": shared})
    share = lambda pair, k: float(np.mean([s[k] for s in status[pair]])) if status[pair] else math.nan  # noqa: E731
    stats = {f"{a}-{b}": {"distinct_share": share((a, b), 0), "shared_share": share((a, b), 1)} for a, b in PAIRS}
    aq, af, qf = (stats[f"{a}-{b}"] for a, b in PAIRS)
    if not layers:
        verdict, why = UNSURE, "no captured layers"
    elif aq["distinct_share"] >= 0.75 and af["distinct_share"] >= 0.75 and qf["shared_share"] >= 0.75:
        verdict, why = HOLDS, (f"arith distinct from qa in {aq['distinct_share']:.0%} and from fill in "
                               f"{af['distinct_share']:.0%} of layers; qa and fill share in {qf['shared_share']:.0%}")
    elif qf["distinct_share"] >= 0.75 or min(aq["distinct_share"], af["distinct_share"]) < 0.25:
        verdict, why = FAILS, (f"qa-vs-fill distinct in {qf['distinct_share']:.0%} of layers; arith distinct from "
                               f"qa {aq['distinct_share']:.0%}, from fill {af['distinct_share']:.0%}")
    else:
        verdict, why = UNSURE, (f"arith distinct from qa {aq['distinct_share']:.0%}, from fill "
                                f"{af['distinct_share']:.0%}; qa-fill shared {qf['shared_share']:.0%}, distinct "
                                f"{qf['distinct_share']:.0%} of layers")
    return result("4", stats, verdict, why, {"table": table})


# ---- claim 5: posteriors as starting points ---------------------------------------------------------

def steps_to_95(curve: list[tuple[int, float]]) -> int | None:
    """First step with 95% of the final improvement over the first point (step 0 = before training)."""
    return M.steps_to_fraction([s for s, _ in curve], [v for _, v in curve], 0.95)


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def claim_transfer(fresh: list[TunedRun], warm: list[TunedRun]) -> dict:
    """fresh: target-task runs from a fresh prior; warm: from `posterior:` priors, with extra['weight'] (λ)
    and extra['displacement'] (mean slot distance of the posterior from the source posterior)."""
    s_fresh = [steps_to_95(r.val) for r in fresh]
    zero = [r for r in warm if r.extra.get("weight", 0) == 0]
    s_warm = [steps_to_95(r.val) for r in zero]
    dsteps = welch_interval([s for s in s_warm if s is not None], [s for s in s_fresh if s is not None])
    dscore = welch_interval([r.score for r in zero], [r.score for r in fresh])
    seeds = sorted({r.seed for r in warm})
    groups = [[r for r in warm if r.seed == s] for s in seeds]
    rho = bootstrap_interval(groups, lambda xs: spearman([x.extra["weight"] for x in xs],
                                                         [x.extra["displacement"] for x in xs]))
    weights = sorted({r.extra.get("weight", 0) for r in warm})
    table = [{"start": "fresh", "weight": None, "steps_to_95": t_interval(s_fresh),
              "score": t_interval([r.score for r in fresh]), "displacement": None}]
    for w in weights:
        sub = [r for r in warm if r.extra.get("weight", 0) == w]
        table.append({"start": "posterior", "weight": w, "steps_to_95": t_interval([steps_to_95(r.val) for r in sub]),
                      "score": t_interval([r.score for r in sub]),
                      "displacement": t_interval([r.extra["displacement"] for r in sub])})
    if not _finite(dsteps["hi"], dscore["lo"]):
        verdict, why = UNSURE, "too few runs for an interval"
    elif dsteps["hi"] < 0 and dscore["lo"] > -5 and _finite(rho["hi"]) and rho["hi"] < 0:
        verdict, why = HOLDS, f"Δsteps {fmt(dsteps, 0)}, Δscore {fmt(dscore, 1)}, ρ {fmt(rho)}"
    elif dsteps["lo"] > 0 or dscore["hi"] < -5:
        verdict, why = FAILS, f"Δsteps {fmt(dsteps, 0)}, Δscore {fmt(dscore, 1)}"
    else:
        verdict, why = UNSURE, f"Δsteps {fmt(dsteps, 0)}, Δscore {fmt(dscore, 1)}, ρ {fmt(rho)}"
    return result("5", {"delta_steps": dsteps, "delta_score": dscore, "spearman_weight_displacement": rho},
                  verdict, why, {"table": table,
                                 "curves": [{"run": r.name, "start": "fresh" if r in fresh else
                                             f"posterior λ={r.extra.get('weight')}", "val": r.val}
                                            for r in fresh + warm]})


# ---- claim 6: the attention sink --------------------------------------------------------------------

def final_loss(run: TunedRun, last: int = 10) -> float:
    tail = [v for _, v in run.losses[-last:] if v is not None and math.isfinite(v)]
    return float(np.mean(tail)) if tail else math.nan


def claim_sink(all_plain: list[TunedRun], all_sink: list[TunedRun], last3: list[TunedRun]) -> dict:
    lp, ls, l3 = ([final_loss(r) for r in g] for g in (all_plain, all_sink, last3))
    plain, sink, ref = t_interval(lp), t_interval(ls), t_interval(l3)
    fix = welch_interval(ls, lp)
    table = [{"variant": name, "final_loss": t_interval([final_loss(r) for r in g]),
              "score": t_interval([r.score for r in g]),
              "slot_mass": t_interval([r.extra.get("prompt_mass") for r in g]),
              "sink_mass": t_interval([r.extra.get("sink_mass") for r in g])}
             for name, g in (("all", all_plain), ("all --keep-sink", all_sink), ("last:3", last3))]
    if not _finite(plain["lo"], ref["hi"], fix["hi"]):
        verdict, why = UNSURE, "too few runs for an interval"
    elif plain["lo"] > ref["hi"] and fix["hi"] < 0:
        verdict, why = HOLDS, f"all {fmt(plain)} > last:3 {fmt(ref)}; keep-sink − plain {fmt(fix)}"
    elif plain["hi"] <= ref["lo"] or fix["lo"] > 0:
        verdict, why = FAILS, f"all {fmt(plain)}, last:3 {fmt(ref)}; keep-sink − plain {fmt(fix)}"
    else:
        verdict, why = UNSURE, f"all {fmt(plain)}, last:3 {fmt(ref)}; keep-sink − plain {fmt(fix)}"
    return result("6", {"all_final_loss": plain, "all_keep_sink_final_loss": sink, "last3_final_loss": ref,
                        "keep_sink_minus_plain": fix}, verdict, why, {"table": table})
