"""Claim 6 (eptk's own): deep prompts on early layers, and the attention sink (RULES.md, claim 6). The ablation
replaces the slot states of every layer ≥ k for several k; `--keep-sink` keeps one slot for the model. The
manipulation is checked before the fix is judged: did the kept slot become a sink?"""
from __future__ import annotations

import math

import numpy as np

from .. import inference as I
from .base import FAILS, HOLDS, UNSURE, Claim, converged_share, finite, not_converged, not_measured, partial, register, \
    result

SINK_SHARE = 0.5   # the kept slot's mass over the unprompted model's position-0 mass, for a restored sink


def first_layer(run) -> int:
    """k: the first replaced layer of a deep `last:N` run on its model (30 layers for SmolLM2)."""
    layers = run.settings.get("layers", "")
    n = int(str(layers).split(":")[1])
    return run.extra["num_layers"] - n


def mean_mass(table: dict | None, lowest: int = 1) -> float:
    """The mean over layers ≥ `lowest` and heads of an eval.json mass table ({"layer<l>": [per head]})."""
    if not isinstance(table, dict):
        return math.nan
    values = [float(v) for key, heads in table.items() if int(key[len("layer"):]) >= lowest
              for v in (heads if isinstance(heads, list) else [heads])]
    return float(np.mean(values)) if values else math.nan


def decide(trend: dict, manipulation: bool | None, fix: dict, share: float) -> tuple[str, str]:
    text = (f"ρ(k, best validation loss) {trend['rho']:.2f} (p {trend['p']:.3g}); kept slot "
            f"{'became' if manipulation else 'did not become' if manipulation is not None else 'not measured as'} a sink; "
            f"keep-sink / plain loss {I.fmt(fix)}")
    reason = not_converged(share)   # RULES.md, "Inference": no verdict on runs that did not converge
    if reason:
        return UNSURE, f"{text}; {reason}"
    hurts = finite(trend["rho"], trend["p"]) and trend["rho"] < 0 and trend["p"] < 0.05
    if not finite(trend["rho"], trend["p"]):
        return UNSURE, text
    if not hurts:
        return FAILS, text
    if manipulation and finite(fix["hi"]) and fix["hi"] < 1:
        return HOLDS, text
    if manipulation and finite(fix["lo"]) and fix["lo"] >= 1:
        return FAILS, text
    return UNSURE, text + ("" if manipulation else ": the sink hypothesis was not tested")


def measure(g, **_) -> dict:
    runs = g.tuned("ablation")
    missing = g.missing_of("ablation")
    plain = [r for r in runs if not r.settings.get("keep_sink")]
    kept = [r for r in runs if r.settings.get("keep_sink")]
    if len(plain) < 3:
        return not_measured(CLAIM, missing)
    ks = [first_layer(r) for r in plain]
    trend = I.spearman_test(ks, [r.best_val for r in plain], alternative="less")
    deepest = min(ks)
    arms = {f"k={k}": [r.best_val for r, rk in zip(plain, ks) if rk == k] for k in sorted(set(ks))}
    arms["k=1 keep-sink"] = [r.best_val for r in kept]
    ols = I.LogOLS(arms)
    fix = ols.ratio("k=1 keep-sink", f"k={deepest}") if kept else dict(I.NO_INTERVAL)
    measures = g.sink_measures(kept + [r for r, k in zip(plain, ks) if k == deepest])
    kept_mass = [mean_mass(r.extra["eval"].get("prefix_mass_first_slot")) for r in kept]
    base = measures.get("baseline_position0_mass", math.nan)
    manipulation = None
    if kept_mass and finite(base) and base > 0:
        manipulation = bool(np.mean(kept_mass) >= SINK_SHARE * base)
    share = converged_share(runs)
    verdict, why = decide(trend, manipulation, fix, share)
    table = []
    for k in sorted(set(ks)):
        sub = [r for r, rk in zip(plain, ks) if rk == k]
        table.append(_row(f"layers ≥ {k}", sub, ols.mean(f"k={k}"), measures))
    if kept:
        table.append(_row(f"layers ≥ {deepest}, --keep-sink", kept, ols.mean("k=1 keep-sink"), measures))
    stats = {"trend": trend, "keep_sink_over_plain_loss": fix, "manipulation_check": manipulation, "converged_share": share,
             "unprompted_position0_mass": base,
             "kept_slot_mass": float(np.mean(kept_mass)) if kept_mass else math.nan}
    return partial(result(CLAIM, stats, verdict, why, {"table": table}), missing)


def _row(label: str, runs, loss: dict, measures: dict) -> dict:
    per = [measures.get("runs", {}).get(r.name, {}) for r in runs]
    mean = lambda key: float(np.mean([p[key] for p in per if key in p])) if any(key in p for p in per) else math.nan  # noqa: E731
    return {"variant": label, "runs": len(runs), "best_val_loss": loss,
            "score": I.score_interval([r.items for r in runs if r.items]),
            "slot0_mass": float(np.mean([mean_mass(r.extra["eval"].get("prefix_mass_first_slot")) for r in runs])),
            "trained_slot_mass": float(np.mean([mean_mass(r.extra["eval"].get("prefix_mass_other_slots")) for r in runs])),
            "replaced_norm_over_token_norm": mean("norm_ratio")}


def draw(res: dict, folder):
    from ..figures import table_bars

    table = (res.get("figure") or {}).get("table") or []
    if not table:
        return []
    return [table_bars(table, "best_val_loss", "best validation loss (geometric mean)",
                       "Claim 6: replacing the slot states of layers ≥ k", folder / "claim6.png",
                       label_keys=("variant",))]


CLAIM = register(Claim(
    key="6", text="(eptk) Replacing early slot states hurts deep prompts through the attention sink; leaving the first "
                  "slot to the model fixes it.",
    rule="holds if replacing earlier layers raises the best validation loss (Spearman ρ(k, loss) < 0, permutation "
         "p < 0.05) and, with the kept slot shown to be a sink (≥ 50% of the unprompted model's position-0 mass), "
         "--keep-sink lowers the loss (ratio interval < 1); does not hold if replacing earlier layers does not raise "
         "the loss, or the sink is restored and the loss does not fall (ratio lower bound ≥ 1); else inconclusive",
    measure=measure, draw=draw))
