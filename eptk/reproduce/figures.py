"""The plots the claim modules draw (PNG, matplotlib's Agg canvas through eptk.analysis.plots)."""
from __future__ import annotations

import math
from pathlib import Path

from ..analysis.plots import _colours, _figure, _save


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _bars(ax, items: list[tuple[str, dict]], ylabel: str) -> None:
    """Means with their 95% intervals (no bar where an interval does not exist)."""
    xs = range(len(items))
    means = [i["mean"] for _, i in items]
    lo = [i["mean"] - i["lo"] if _finite(i.get("lo")) else 0 for _, i in items]
    hi = [i["hi"] - i["mean"] if _finite(i.get("hi")) else 0 for _, i in items]
    ax.bar(xs, means, yerr=[lo, hi], capsize=3, color="#7aa6d6", edgecolor="#1f5fbf")
    ax.set_xticks(list(xs), [label for label, _ in items], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def table_bars(table: list[dict], value: str, ylabel: str, title: str, path: Path, *, label_keys=("method", "prior"),
               line: float | None = None) -> Path:
    """One bar per table row: the row's interval `value`, labelled by `label_keys`."""
    items = [(" ".join(str(r[k]) for k in label_keys if r.get(k) is not None), r[value]) for r in table
             if isinstance(r.get(value), dict) and _finite(r[value].get("mean"))]
    fig = _figure(max(6.0, 0.55 * len(items) + 3), 4.4)
    ax = fig.subplots()
    _bars(ax, items, ylabel)
    if line is not None:
        ax.axhline(line, color="#d62728", ls="--", lw=1)
    ax.set_title(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


def block_scatter(rows: list[dict], path: Path) -> Path:
    """Claim 1: each block's Mantel ρ against its identification share (chance marked), coloured by method."""
    fig = _figure(7, 4.4)
    ax = fig.subplots()
    colours = _colours([r["method"] for r in rows])
    for method in colours:
        sub = [r for r in rows if r["method"] == method]
        ax.scatter([r["mantel_rho"] for r in sub], [r["identified"] for r in sub], color=colours[method], label=method)
        for r in sub:
            ax.annotate(r["block"], (r["mantel_rho"], r["identified"]), fontsize=6)
    if rows:
        ax.axhline(rows[0]["chance"], color="#666666", ls=":", lw=1, label="chance")
    ax.axvline(0.5, color="#d62728", ls="--", lw=1, label="ρ = 0.5")
    return _finish(fig, ax, path, "Mantel ρ (prior vs posterior distances)", "posteriors nearest their own prior",
                   "Claim 1: do priors decide where posteriors end up?")


def curves_plot(curves: list[dict], path: Path) -> Path:
    fig = _figure(8, 4.2)
    ax = fig.subplots()
    colours = _colours([c["start"] for c in curves])
    seen = set()
    for c in curves:
        if c["val"]:
            ax.plot([s for s, _ in c["val"]], [v for _, v in c["val"]], lw=1, color=colours[c["start"]],
                    label=None if c["start"] in seen else c["start"])
            seen.add(c["start"])
    ax.set_yscale("log")
    return _finish(fig, ax, path, "step", "validation loss",
                   "Claim 5: target task from a fresh prior and from the source posterior (each λ)")


def tradeoff_plot(table: list[dict], path: Path) -> Path:
    """Claim 5: score (with its interval) against the prior weight λ; the fresh start as a band."""
    fig = _figure(7, 4.2)
    ax = fig.subplots()
    warm = [r for r in table if r["start"] == "posterior" and _finite(r["score"].get("mean"))]
    xs = [max(r["weight"], 0.1) for r in warm]
    ax.errorbar(xs, [r["score"]["mean"] for r in warm],
                yerr=[[r["score"]["mean"] - r["score"]["lo"] if _finite(r["score"].get("lo")) else 0 for r in warm],
                      [r["score"]["hi"] - r["score"]["mean"] if _finite(r["score"].get("hi")) else 0 for r in warm]],
                fmt="o-", capsize=3, label="from the source posterior")
    for r in table:
        if r["start"] == "fresh" and _finite(r["score"].get("lo")):
            ax.axhspan(r["score"]["lo"], r["score"]["hi"], color="#cccccc", alpha=0.5, label="fresh prior (95%)")
    ax.set_xscale("log")
    return _finish(fig, ax, path, "prior weight λ (0 drawn at 0.1)", "test exact match (%)",
                   "Claim 5: the score–control trade-off")


def silhouettes_plot(table: list[dict], path: Path) -> Path:
    """Claim 4: per layer, each pair's content-token silhouette and the template null."""
    fig = _figure(8, 4.4)
    ax = fig.subplots()
    pairs = ["arith-qa", "arith-fill", "qa-fill", "template_null"]
    colours = _colours(pairs)
    for pair in pairs:
        ax.plot([r["layer"] for r in table], [r[pair] for r in table], "o-", ms=3, color=colours[pair],
                ls="--" if pair == "template_null" else "-", label=pair.replace("_", " "))
    return _finish(fig, ax, path, "layer", "silhouette (mean of capture seeds)",
                   "Claim 4: content-token silhouettes against the template null")
