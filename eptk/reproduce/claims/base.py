"""What every claim module shares: the verdict words, the registry, the result record, and `TunedRun` (what the
claims read of one run, built by eptk.reproduce.gather)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..budget import CONVERGED_SHARE  # (defined there: budget.py also runs in the frozen study checkouts)

HOLDS, FAILS, UNSURE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"
STALL_LOSS = 0.6          # a run whose best validation loss is at least this stalled (RULES.md, "Inference")


def converged_share(runs) -> float:
    """The share of `runs` whose training stopped early (NaN when none says)."""
    stopped = [r.stopped_early for r in runs if r.stopped_early is not None]
    return sum(map(bool, stopped)) / len(stopped) if stopped else math.nan


def not_converged(share: float) -> str | None:
    """Why a verdict on runs with this converged share must be inconclusive, or None when it may be read."""
    if finite(share) and share >= CONVERGED_SHARE:
        return None
    return f"only {share:.0%} of runs stopped early (needs ≥ {CONVERGED_SHARE:.0%}): not converged"


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    rule: str                      # one line; docs/findings/RULES.md holds the whole rule
    measure: Callable              # (Gathered, **options) -> result dict
    draw: Callable | None = None   # (result, folder) -> [figure paths]


CLAIMS: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    if claim.key in CLAIMS:
        raise ValueError(f"claim {claim.key} registered twice")
    CLAIMS[claim.key] = claim
    return claim


def result(claim: Claim, statistics: dict, verdict: str, why: str, figure: dict | None = None, **extra) -> dict:
    return {"claim": claim.key, "text": claim.text, "rule": claim.rule, "statistics": statistics,
            "verdict": verdict, "why": why, "figure": figure or {}, **extra}


def named(missing: list[str]) -> str:
    """The first few missing inputs, and how many more."""
    return ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")


def not_measured(claim: Claim, missing: list[str]) -> dict:
    """A claim whose inputs are missing: which (runs, captures, trajectories), never an error."""
    return result(claim, {}, NOT_MEASURED, f"missing {len(missing)}: {named(missing)}", missing=list(missing))


def partial(res: dict, missing: list[str]) -> dict:
    """A result that may lack some of its inputs. The rules judge a claim on all of them (claim 1: "for every
    method" of the whole grid), so with any missing it reads not measured; what the inputs there are would give
    stays in the statistics and in `provisional`, and the reason says both."""
    if missing:
        res["missing"] = list(missing)
        if res["verdict"] == NOT_MEASURED:
            res["why"] += f" (partial: {len(missing)} input(s) missing)"
        else:
            res["why"] = (f"{len(missing)} of its inputs are not in yet ({named(missing)}); on the inputs there are "
                          f"it would read {res['verdict']}: {res['why']}")
            res["provisional"], res["verdict"] = res["verdict"], NOT_MEASURED
    return res


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
    score: float | None = None                             # test exact match, percent (items when there are)
    baseline: float | None = None
    items: list = field(default_factory=list)              # per test item: exact match 0/1 (largest evaluation)
    losses: list = field(default_factory=list)             # (step, training loss)
    val: list = field(default_factory=list)                # (step, validation loss)
    settings: dict = field(default_factory=dict)           # the run's settings in the study
    extra: dict = field(default_factory=dict)

    @property
    def best_val(self) -> float:
        values = [v for _, v in self.val if v is not None and math.isfinite(v)]
        return min(values) if values else math.nan

    @property
    def stalled(self) -> bool:
        return math.isfinite(self.best_val) and self.best_val >= STALL_LOSS

    @property
    def stopped_early(self) -> bool | None:
        stop = self.extra.get("early_stop")
        return None if not stop else bool(stop.get("stopped"))


def slot_distance(a, b) -> float:
    """Mean over slots of ‖a_i − b_i‖ (rows are slots; the posterior's slot i grew from the prior's slot i)."""
    return float((a.double() - b.double()).norm(dim=-1).mean())


def finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)
