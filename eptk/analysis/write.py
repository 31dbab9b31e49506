"""Writing what `eptk analyze` found: summary.csv/json, details.json, tasks.csv/json, frechet.csv, plots/
and report.html under the output folder (this module alone names those files)."""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

from ..io import write_json_atomic, write_text_atomic

TRAJECTORIES = "trajectories.csv"
from .columns import FRECHET_COLUMNS, SUMMARY_COLUMNS, TASK_COLUMNS, num
from .findings import FINDINGS_COLUMNS


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: "" if _clean(r.get(c)) is None else r.get(c) for c in columns})
    write_text_atomic(path, buf.getvalue())


def _write_rows_json(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    write_json_atomic(path, [{c: _clean(r.get(c)) for c in columns} for r in rows])


def safe_name(name: str, used: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    safe, i = base, 2
    while safe in used:
        safe, i = f"{base}_{i}", i + 1
    used.add(safe)
    return safe


def write_tables(out: Path, rows, details, task_rows, frechet_rows) -> dict[str, Path]:
    """The summary, details and (with two or more tasks) task-cluster tables; returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    columns = list(SUMMARY_COLUMNS)
    _write_csv(out / "summary.csv", rows, columns)
    _write_rows_json(out / "summary.json", rows, columns)
    files["summary.csv"], files["summary.json"] = out / "summary.csv", out / "summary.json"
    write_json_atomic(out / "details.json", details)
    files["details.json"] = out / "details.json"
    if task_rows or frechet_rows:
        _write_csv(out / "tasks.csv", task_rows, list(TASK_COLUMNS))
        _write_csv(out / "frechet.csv", frechet_rows, list(FRECHET_COLUMNS))
        write_json_atomic(out / "tasks.json", {"clusters": [{c: _clean(r.get(c)) for c in TASK_COLUMNS} for r in task_rows],
                                               "frechet": [{c: _clean(r.get(c)) for c in FRECHET_COLUMNS} for r in frechet_rows]})
        files.update({"tasks.csv": out / "tasks.csv", "frechet.csv": out / "frechet.csv", "tasks.json": out / "tasks.json"})
    return files


def write_trajectories(out: Path, rows: list[dict]) -> dict[str, Path]:
    """trajectories.csv: one row per run × test prompt × prompted layer (columns: analysis/trajectories.py)."""
    from .trajectories import TRAJECTORY_COLUMNS

    _write_csv(out / TRAJECTORIES, rows, list(TRAJECTORY_COLUMNS))
    return {TRAJECTORIES: out / TRAJECTORIES}


def has_trajectories(out: Path) -> bool:
    return (Path(out) / TRAJECTORIES).is_file()


def read_trajectories(out: Path) -> list[dict]:
    """The rows `write_trajectories` wrote, numbers as numbers (empty cells as None)."""
    from .trajectories import TRAJECTORY_TEXT

    with open(Path(out) / TRAJECTORIES, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (v if k in TRAJECTORY_TEXT else _number(v)) for k, v in r.items()} for r in rows]


def _number(text):
    """A CSV cell as int (layer, index, count), float, or None when empty."""
    if text in ("", None):
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def write_report(out: Path, *, table_rows, rows, task_rows, frechet_rows, figures, notes, details) -> Path:
    from .report import write_report as render

    render(out / "report.html", findings=table_rows, findings_columns=FINDINGS_COLUMNS, rows=rows,
           columns=SUMMARY_COLUMNS, task_rows=task_rows, frechet_rows=frechet_rows, figures=figures,
           notes=notes, details=details)
    return out / "report.html"


def make_plots(folder: Path, rows, run_panels, curves, prefix_masses, cluster_panels, notes,
               trajectory_rows=()) -> list[dict]:
    from . import plots as P

    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    if trajectory_rows:
        path = folder / "trajectories.png"
        P.plot_trajectories(list(trajectory_rows), path)
        figures.append({"path": path, "title": "Generated trajectories",
                        "caption": "Step length against a random walk over the task's captured activations, and "
                                   "spread against the data's, per run and layer (mean ± sd over test prompts)."})
    for name, safe, panels in run_panels:
        if panels:
            path = folder / f"run_{safe}_pca.png"
            P.plot_run_pca(name, panels, path)
            figures.append({"path": path, "title": f"{name}: prior → posterior (PCA)",
                            "caption": "PCA fitted on the reference (grey); prior samples blue, posterior red, arrows prior→posterior."})
    if curves:
        path = folder / "val_curves.png"
        P.plot_val_curves(curves, path)
        figures.append({"path": path, "title": "Validation loss by prior", "caption": "One line per run, coloured by prior."})
    points = []
    for name in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == name]
        dist = [num(r.get("post_maha_rel")) for r in rs if num(r.get("post_maha_rel")) is not None]
        score = num(rs[0].get("tuned_score"))
        if dist and score is not None:
            points.append({"run": name, "prior": str(rs[0].get("prior")), "distance": sum(dist) / len(dist), "score": score})
    if points:
        path = folder / "score_vs_distance.png"
        P.plot_score_vs_distance(points, path)
        figures.append({"path": path, "title": "Final score vs distance from the data",
                        "caption": "x: posterior Mahalanobis distance / data 99% radius (mean over blocks; ≤ 1 = inside)."})
    elif rows:
        notes.append("score-vs-distance plot needs finished runs and --stats for their task")
    if cluster_panels:
        path = folder / "task_clusters.png"
        P.plot_task_clusters(cluster_panels, path)
        figures.append({"path": path, "title": "Task clusters per layer (PCA)", "caption": "Captured activations, one colour per task."})
    for name, safe, mass in prefix_masses:
        path = folder / f"run_{safe}_prefix_mass.png"
        if P.plot_prefix_mass(name, mass, path):
            figures.append({"path": path, "title": f"{name}: attention mass on the prompt",
                            "caption": "Mean softmax probability on the prompt slots, layer × head."})
    return figures
