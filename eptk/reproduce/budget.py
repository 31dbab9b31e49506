"""Claim 2's training budget by RULES.md amendment 1: rounds of 1,200, 1,800 and 2,400 steps. In a round every
claim-2 run that used its whole budget without stopping is continued to the round's budget (a `v3-` copy of its
version-2 folder, resumed with `--steps B`: the run that budget would have trained from the start); the next
round begins when every run has stopped early or reached the budget and fewer than 90% stopped early. One module
serves the report (which folder holds a run now, the budget it is read at, what is still short of it), the
converged stage's seeds (seed_power) and the listing of the continuations to train (eptk.reproduce.continuations).
It imports only `runs`, so that the checkouts frozen for the studies can take it as a patch
(docs/findings/background/seed-power.patch)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..runs import CONFIG, EVAL, RunDir

ROUND_FACTORS = (2, 3, 4)     # amendment 1: 1,200, 1,800 and 2,400 steps after version 2's 600
CONVERGED_SHARE = 0.9         # RULES.md, "Convergence": below this share stopped early, not converged
V2, V3 = "v2-", "v3-"


def rounds(first: int) -> tuple[int, ...]:
    """The rounds' budgets after a version-2 budget of `first` steps (the quick study's runs are shorter)."""
    return tuple(factor * first for factor in ROUND_FACTORS)


def continued_name(name: str) -> str:
    """The folder a version-2 run is continued in: `v3-` for `v2-`."""
    return V3 + name.removeprefix(V2)


def current_path(out: Path, name: str) -> Path:
    """The folder that holds a claim-2 run now: its continuation once that has finished, else the version-2 run."""
    continued = Path(out) / continued_name(name)
    return continued if RunDir(continued).is_complete() else Path(out) / name


@dataclass(frozen=True)
class Standing:
    """A finished run as the budget rule reads it."""
    budget: int       # the steps it was trained to (--steps, extensions included)
    stopped: bool     # its early stopping ended it before (or at) its budget
    step: int         # where it ended

    @classmethod
    def of(cls, budget: int, early_stop: dict | None) -> "Standing":
        """From a run's budget (config.json's steps) and its eval.json's `early_stop` record (None: none kept)."""
        stop = early_stop or {}
        return cls(budget=budget, stopped=bool(stop.get("stopped")), step=int(stop.get("step", budget)))

    def settled_at(self, budget: int) -> bool:
        """Whether this run holds what a budget of `budget` would have trained: it stopped by then, or it was
        trained at least that far (a later round's run reached `budget` without stopping)."""
        return self.stopped_by(budget) or self.budget >= budget

    def stopped_by(self, budget: int) -> bool:
        return self.stopped and self.step <= budget


def standing(path: Path) -> Standing | None:
    """A finished run's budget and stop (None while it is not finished)."""
    path = Path(path)
    if not RunDir(path).is_complete():
        return None
    return Standing.of(int(json.loads((path / CONFIG).read_text())["steps"]),
                       json.loads((path / EVAL).read_text()).get("early_stop"))


def under_way(path: Path, first: int) -> Standing | None:
    """A continuation still training (no eval.json yet), read at the largest round budget b it is known to have
    used whole without stopping, which is all the rule reads of a run at b: the round before the one it trains
    for (config.json's steps: it was listed for that round because it used the one before whole), or one its
    newest checkpoint reached (a stop ends the training and writes eval.json; this covers extend.sh's first
    seconds, when it has dropped the earlier round's eval.json and eptk has not yet written the new steps).
    None when neither passes the first round's budget: its version-2 run says as much. Without it, a later round's
    continuation would read as its version-2 run while it trains: the round would seem back at its first, with
    only that run listed."""
    path = Path(path)
    if not (path / CONFIG).is_file() or RunDir(path).is_complete():
        return None
    steps = int(json.loads((path / CONFIG).read_text()).get("steps", 0))
    budgets = rounds(first)
    known = [earlier for earlier, budget in zip(budgets, budgets[1:]) if budget == steps]
    known += [budget for budget in budgets if budget <= RunDir(path).checkpoint_step()]
    return Standing(budget=max(known), stopped=False, step=max(known)) if known else None


def further(out: Path, name: str, held: Standing | None, first: int) -> Standing | None:
    """A run as the rule reads it: `held` (the folder current_path gives), or its continuation under way where
    that has gone further."""
    going = under_way(Path(out) / continued_name(name), first)
    return going if going is not None and (held is None or going.budget > held.budget) else held


def share_stopped(standings: list[Standing], budget: int) -> float:
    return sum(s.stopped_by(budget) for s in standings) / len(standings) if standings else math.nan


def moves_on(standings: list[Standing | None], budget: int) -> bool:
    """Whether the round of `budget` is over and the next begins: every run (None: one not finished) settled at
    it, and fewer than 90% stopped early by it."""
    settled = bool(standings) and all(s is not None and s.settled_at(budget) for s in standings)
    return settled and share_stopped(standings, budget) < CONVERGED_SHARE


def round_budget(standings: list[Standing | None], first: int) -> int:
    """The budget of the round under way: the first round's, or the next one's once every run has settled at a
    round's budget with fewer than 90% stopped early (at the last round's, that share is read as it is)."""
    budgets = rounds(first)
    return next((budget for budget in budgets[:-1] if not moves_on(standings, budget)), budgets[-1])


@dataclass(frozen=True)
class Reading:
    """Where a model's claim 2 stands under the amendment."""
    budget: int              # the round's budget
    share: float             # the share of finished runs stopped early by it
    first_share: float       # the same at version 2's budget
    continuing: list         # finished runs short of the round's budget (names)


def reading(standings: dict[str, Standing], unfinished: int, first: int,
            firsts: list[Standing] | None = None) -> Reading:
    """`standings`: finished runs by name; `unfinished`: how many of the claim's runs have not finished; `firsts`:
    the same runs as their version-2 folders stand (default: `standings`), for the share at version 2's budget."""
    budget = round_budget([*standings.values(), *[None] * unfinished], first)
    finished = list(standings.values())
    return Reading(budget=budget, share=share_stopped(finished, budget),
                   first_share=share_stopped(finished if firsts is None else firsts, first),
                   continuing=sorted(name for name, s in standings.items() if not s.settled_at(budget)))


def to_continue(out: Path, names: list[str], first: int) -> tuple[int, list[tuple[Path, Path, int]]]:
    """(the round's budget, [(the folder to continue from, the continuation's folder, its budget)]): every finished
    run of `names` (version-2 names) that used its whole budget, shorter than the round's, without stopping."""
    current = {name: current_path(out, name) for name in names}
    standings = {name: standing(path) for name, path in current.items()}
    for name, held in list(standings.items()):   # a continuation under way goes on in its own folder
        standings[name] = further(out, name, held, first)
        if standings[name] is not held:
            current[name] = Path(out) / continued_name(name)
    finished = {name: s for name, s in standings.items() if s is not None}
    at = reading(finished, len(standings) - len(finished), first)
    # a finished run short of the round's budget is one that used its whole, smaller budget without stopping
    short = set(at.continuing)                   # (listed in the study's own order: seed-major)
    return at.budget, [(current[name], Path(out) / continued_name(name), at.budget) for name in names if name in short]
