"""The six claims measured on what the study holds so far: each from its gathered inputs, or "not measured"
with what it misses (a stage not run, runs not finished)."""
from __future__ import annotations

from . import claims as C
from .gather import Gathered


def measure_claims(g: Gathered, *, n_perm: int = 200) -> list[dict]:
    results = [_priors(g), _new_region(g), _trajectories(g), _clusters(g, n_perm), _transfer(g), _sink(g)]
    for r in results:
        r.setdefault("missing", [])
    return results


def _partial(result: dict, missing: list[str]) -> dict:
    """A verdict on the runs there are, saying which are not there yet."""
    if missing:
        result["missing"] = missing
        result["why"] += f" (partial: {len(missing)} input(s) missing)"
    return result


def _priors(g: Gathered) -> dict:
    runs = g.tuned("main")
    if not runs:
        return C.not_measured("1", g.missing_of("main"))
    return _partial(C.claim_priors_position(runs), g.missing_of("main"))


def _new_region(g: Gathered) -> dict:
    needed = g.missing_of("main", prior="region:new") + g.missing_of("main", prior="region:data")
    new = g.tuned("main", prior="region:new")
    if not new or not g.tuned("main", prior="region:data"):
        return C.not_measured("2", needed)
    inside = {r.name: g.inside_share(r) for r in new}
    inside = {k: v for k, v in inside.items() if v is not None}
    missing = needed + ([] if inside else ["statistics of the data region (captures/arith-s0)"])
    return _partial(C.claim_new_region(g.tuned("main"), inside), missing)


def _trajectories(g: Gathered) -> dict:
    rows, missing = g.trajectory_rows()
    if not rows:
        return C.not_measured("3", missing)
    return _partial(C.claim_trajectories(rows), missing)


def _clusters(g: Gathered, n_perm: int) -> dict:
    missing = g.missing_captures()
    rows = g.cluster_rows(n_perm=n_perm)
    if not rows:
        return C.not_measured("4", missing)
    return _partial(C.claim_task_clusters(rows), missing)


def _transfer(g: Gathered) -> dict:
    fresh, warm = g.transfer()
    missing = g.missing_of("transfer")
    if not fresh or not warm:
        return C.not_measured("5", missing)
    return _partial(C.claim_transfer(fresh, warm), missing)


def _sink(g: Gathered) -> dict:
    plain, sink = g.tuned("sink", keep_sink=False), g.tuned("sink", keep_sink=True)
    last3 = g.tuned("main", method="deep", prior="normal")
    missing = g.missing_of("sink") + g.missing_of("main", method="deep", prior="normal")
    if not plain or not sink or not last3:
        return C.not_measured("6", missing)
    return _partial(C.claim_sink(plain, sink, last3), missing)
