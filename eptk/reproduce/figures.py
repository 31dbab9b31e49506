"""One figure per measured claim (PNG, matplotlib's Agg canvas through eptk.analysis.plots), drawn from the
claim's `figure` data."""
from __future__ import annotations

import math
from pathlib import Path

from ..analysis.plots import _colours, _figure, _save, plot_trajectories


def _bars(ax, items: list[tuple[str, dict]], ylabel: str, line: float | None = None) -> None:
    """Means with their 95% intervals (no bar where an interval does not exist)."""
    xs = range(len(items))
    means = [i["mean"] for _, i in items]
    lo = [i["mean"] - i["lo"] if math.isfinite(i.get("lo", math.nan)) else 0 for _, i in items]
    hi = [i["hi"] - i["mean"] if math.isfinite(i.get("hi", math.nan)) else 0 for _, i in items]
    ax.bar(xs, means, yerr=[lo, hi], capsize=3, color="#7aa6d6", edgecolor="#1f5fbf")
    ax.set_xticks(list(xs), [label for label, _ in items], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if line is not None:
        ax.axhline(line, color="#d62728", ls="--", lw=1)
    ax.grid(axis="y", alpha=0.3)


def _table_bars(table: list[dict], value: str, ylabel: str, title: str, path: Path, line=None) -> Path:
    items = [(" ".join(str(r[k]) for k in ("method", "prior", "variant", "start") if r.get(k) is not None)
              + (f" λ={r['weight']:g}" if r.get("weight") is not None else ""), r[value]) for r in table
             if r.get(value) and math.isfinite(r[value].get("mean", math.nan))]
    fig = _figure(max(6.0, 0.5 * len(items) + 3), 4.2)
    ax = fig.subplots()
    _bars(ax, items, ylabel, line)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _clusters(table: list[dict], path: Path) -> Path:
    fig = _figure(8, 4.2)
    ax = fig.subplots()
    pairs = list(dict.fromkeys(r["pair"] for r in table))
    colours = _colours(pairs)
    for pair in pairs:
        rows = sorted((r for r in table if r["pair"] == pair), key=lambda r: r["layer"])
        ax.plot([r["layer"] for r in rows], [r["silhouette"]["mean"] for r in rows], "o-", ms=3,
                color=colours[pair], label=pair)
    ax.axhline(0.25, color="#d62728", ls="--", lw=1, label="distinct ≥ 0.25")
    ax.axhline(0.10, color="#666666", ls=":", lw=1, label="shared < 0.10")
    return _finish(fig, ax, path, "layer", "silhouette (seed mean)",
                   "Task clusters: silhouette of per-sequence mean activations")


def _curves(curves: list[dict], path: Path) -> Path:
    fig = _figure(8, 4.2)
    ax = fig.subplots()
    starts = list(dict.fromkeys(c["start"] for c in curves))
    colours = _colours(starts)
    seen = set()
    for c in curves:
        if c["val"]:
            ax.plot([s for s, _ in c["val"]], [v for _, v in c["val"]], lw=1, color=colours[c["start"]],
                    label=None if c["start"] in seen else c["start"])
            seen.add(c["start"])
    ax.set_yscale("log")
    return _finish(fig, ax, path, "step", "validation loss",
                   "Target task: fresh prior vs the source posterior at each prior weight")


def draw(result: dict, folder: Path, trajectory_rows=()) -> list[Path]:
    """The figures of one claim result (none for a claim not measured)."""
    fig, key, paths = result.get("figure") or {}, result["claim"], []
    table = fig.get("table") or []
    if not table and not trajectory_rows:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    if key == "1":
        paths.append(_table_bars(table, "rel_disp", "displacement / distance between priors",
                                 "Claim 1: how far posteriors moved from their prior", folder / "claim1.png", 0.5))
    elif key == "2":
        paths.append(_table_bars(table, "score", "test exact match (%)", "Claim 2: test score by prior",
                                 folder / "claim2.png"))
    elif key == "3" and trajectory_rows:
        paths.append(plot_trajectories(list(trajectory_rows), folder / "claim3.png", group_key=lambda r: r["task"]))
    elif key == "4" and table:
        paths.append(_clusters(table, folder / "claim4.png"))
    elif key == "5":
        paths.append(_table_bars(table, "steps_to_95", "steps to 95% of the improvement",
                                 "Claim 5: steps to 95% by start", folder / "claim5.png"))
        if fig.get("curves"):
            paths.append(_curves(fig["curves"], folder / "claim5_curves.png"))
    elif key == "6":
        paths.append(_table_bars(table, "final_loss", "final training loss (last 10 steps)",
                                 "Claim 6: deep prompts on every layer, with and without the sink",
                                 folder / "claim6.png"))
    return paths
