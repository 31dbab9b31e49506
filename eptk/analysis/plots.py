"""Figures of `eptk analyze`, as PNG files. Each function takes already-projected points and
writes one figure; matplotlib is imported inside them and used through its Agg canvas only
(no pyplot, no global backend switch)."""
from __future__ import annotations

import math
from pathlib import Path

PRIOR_COLOUR = "#1f5fbf"
POSTERIOR_COLOUR = "#d62728"
REFERENCE_COLOUR = "#8c8c8c"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _small_multiples(n: int, panel_width: float, panel_height: float):
    """A figure with n axes on a grid of at most 4 columns (unused cells hidden); returns (fig, axes)."""
    rows, cols = _grid(n)
    fig = _figure(panel_width * cols, panel_height * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _label_once():
    """A labeller that names each legend entry the first time only (one legend line per prior)."""
    seen = set()

    def label(name):
        if name in seen:
            return None
        seen.add(name)
        return name
    return label


def _axis_labels(ax, explained) -> None:
    if explained is None:  # a t-SNE map: its axes carry no variance
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        return

    def pct(v):
        return "?" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"

    ax.set_xlabel(f"PC1 ({pct(explained[0])} var.)")
    ax.set_ylabel(f"PC2 ({pct(explained[1])} var.)")


def _opaque_legend(legend) -> None:
    """Legend markers at full opacity, whatever the alpha of the (dense) points they stand for."""
    for handle in getattr(legend, "legend_handles", getattr(legend, "legendHandles", [])):
        handle.set_alpha(1.0)


def _spread(values, count: int) -> list:
    """At most `count` items, evenly spaced, first and last kept."""
    if len(values) <= count:
        return list(values)
    idx = sorted({round(i * (len(values) - 1) / (count - 1)) for i in range(count)})
    return [values[i] for i in idx]


def plot_run_pca(run: str, panels: list[dict], path, *, max_panels: int = 12) -> Path:
    """Small multiples, one per prompt block: the reference (grey), prior samples (blue),
    posterior (red) and arrows prior → posterior in a 2-D PCA of the reference.
    Each panel: title, reference [n, 2] or None, reference_label, prior [P, 2] or None,
    posterior [P, 2] or None, explained (2 variance shares), fit_on."""
    panels = _spread(panels, max_panels)
    fig, axes = _small_multiples(len(panels), 4.2, 3.8)
    for ax, panel in zip(axes, panels):
        ref, prior, post = panel.get("reference"), panel.get("prior"), panel.get("posterior")
        if ref is not None and len(ref):
            ax.scatter(ref[:, 0], ref[:, 1], s=4, c=REFERENCE_COLOUR, alpha=0.25, linewidths=0,
                       label=panel.get("reference_label") or "reference", rasterized=True)
        if prior is not None:
            ax.scatter(prior[:, 0], prior[:, 1], s=22, c=PRIOR_COLOUR, label="prior", zorder=3)
        if post is not None:
            ax.scatter(post[:, 0], post[:, 1], s=22, c=POSTERIOR_COLOUR, marker="^", label="posterior", zorder=4)
        if prior is not None and post is not None and prior.shape == post.shape:
            delta = post - prior
            ax.quiver(prior[:, 0], prior[:, 1], delta[:, 0], delta[:, 1], angles="xy", scale_units="xy", scale=1,
                      color="#444444", alpha=0.7, width=0.004, headwidth=4, headlength=5, zorder=2)
        ax.set_title(f"{panel['title']}\nPCA fitted on {panel.get('fit_on', 'reference')}", fontsize=9)
        _axis_labels(ax, panel.get("explained", [None, None]))
        ax.tick_params(labelsize=7)
        _opaque_legend(ax.legend(fontsize=7, loc="best", markerscale=1.5))
    fig.suptitle(f"{run}: where the prompt vectors moved", fontsize=12)
    return _save(fig, path)


def _colours(keys) -> dict:
    from matplotlib import colormaps

    keys = list(dict.fromkeys(keys))
    cmap = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def plot_val_curves(curves: list[dict], path) -> Path:
    """Validation loss against step, one line per run (dicts with run, prior, steps, values),
    coloured by prior; the legend names each prior once."""
    colours = _colours(c["prior"] for c in curves)
    fig = _figure(8, 5)
    ax = fig.subplots()
    label_once = _label_once()
    for c in curves:
        label = label_once(c["prior"])
        ax.plot(c["steps"], c["values"], marker="o", ms=3, lw=1.5, color=colours[c["prior"]], label=label, alpha=0.85)
        ax.annotate(c["run"], (c["steps"][-1], c["values"][-1]), fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss by prior")
    ax.grid(alpha=0.3)
    ax.legend(title="prior", fontsize=8)
    return _save(fig, path)


def plot_score_vs_distance(points: list[dict], path) -> Path:
    """Final tuned score against the posterior's distance from the data (dicts with run, prior,
    distance, score), coloured by prior, with the region boundary at distance 1."""
    colours = _colours(p["prior"] for p in points)
    fig = _figure(7, 5)
    ax = fig.subplots()
    label_once = _label_once()
    for p in points:
        label = label_once(p["prior"])
        ax.scatter([p["distance"]], [p["score"]], s=50, color=colours[p["prior"]], label=label, zorder=3)
        ax.annotate(p["run"], (p["distance"], p["score"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axvline(1.0, color="#666666", ls="--", lw=1, label="data 99% boundary")
    ax.set_xlabel("posterior Mahalanobis distance / data 99% radius")
    ax.set_ylabel("tuned score")
    ax.set_title("Final score vs distance from the data")
    ax.grid(alpha=0.3)
    ax.legend(title="prior", fontsize=8)
    return _save(fig, path)


def plot_task_clusters(panels: list[dict], path, *, max_panels: int = 12) -> Path:
    """Per-layer PCA maps of captured activations, one colour per task (panels: title,
    explained, groups {task: [n, 2]})."""
    panels = _spread(panels, max_panels)
    colours = _colours(t for p in panels for t in p["groups"])
    fig, axes = _small_multiples(len(panels), 4, 3.6)
    for ax, panel in zip(axes, panels):
        for task, pts in panel["groups"].items():
            ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.4, color=colours[task], label=task, linewidths=0, rasterized=True)
        ax.set_title(panel["title"], fontsize=10)
        _axis_labels(ax, panel["explained"])
        ax.tick_params(labelsize=7)
        _opaque_legend(ax.legend(fontsize=7, markerscale=3))
    method = "t-SNE" if panels and panels[0]["explained"] is None else "PCA"
    fig.suptitle(f"Task activations per layer ({method} of the captured samples)", fontsize=12)
    return _save(fig, path)


def plot_prefix_mass(run: str, mass: dict, path) -> Path | None:
    """Heat map of attention mass on the prompt, layer × head, from eval.json `prefix_mass`
    ({"layer<l>": [per-head floats]}). Returns None when there is nothing plottable."""
    import re

    import numpy as np

    items = []
    for key, values in mass.items():
        m = re.fullmatch(r"layer(\d+)", str(key))
        try:
            if m and isinstance(values, (list, tuple)) and values:
                items.append((int(m.group(1)), [float(v) for v in values]))
        except (TypeError, ValueError):  # not per-head floats: leave the layer out
            continue
    if not items:
        return None
    items.sort()
    heads = max(len(v) for _, v in items)
    grid = np.full((len(items), heads), np.nan)
    for i, (_, v) in enumerate(items):
        grid[i, :len(v)] = v
    fig = _figure(max(4.5, 0.45 * heads + 2.5), max(3.0, 0.3 * len(items) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(grid))))
    ax.set_yticks(range(len(items)), [str(l) for l, _ in items], fontsize=7)
    ax.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{run}: attention mass on the prompt")
    fig.colorbar(im, ax=ax, label="mean probability on prompt slots")
    return _save(fig, path)


def plot_trajectories(rows: list[dict], path, *, group_key=lambda r: r["run"]) -> Path:
    """Step and spread ratios of generated trajectories (rows of eptk.analysis.trajectories) by layer: one marker
    per group (default: run) and layer at the mean over trajectories, bars ±1 standard deviation; the dashed line
    at 1 is the data itself (random data tokens, the data's own spread)."""
    import numpy as np

    groups = list(dict.fromkeys(group_key(r) for r in rows))
    layers = sorted({r["layer"] for r in rows})
    colours = _colours(groups)
    fig = _figure(max(7.0, 1.2 * len(layers) + 4), 4.6)
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(groups))
    for ax, key, title in ((axes[0], "step_ratio", "step length / random walk over the data"),
                           (axes[1], "spread_ratio", "spread / the data's spread")):
        for g, group in enumerate(groups):
            xs, means, sds = [], [], []
            for i, layer in enumerate(layers):
                vals = [r[key] for r in rows if group_key(r) == group and r["layer"] == layer
                        and r.get(key) is not None and math.isfinite(r[key])]
                if vals:
                    xs.append(i - 0.4 + width * (g + 0.5))
                    means.append(float(np.mean(vals)))
                    sds.append(float(np.std(vals)))
            ax.errorbar(xs, means, yerr=sds, fmt="o", ms=4, capsize=2, color=colours[group], label=str(group))
        ax.axhline(1.0, color="#666666", ls="--", lw=1)
        ax.set_xticks(range(len(layers)), [str(l) for l in layers])
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Generated trajectories against the task's captured activations", fontsize=12)
    return _save(fig, path)
