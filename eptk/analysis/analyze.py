"""`eptk analyze`: read run directories (and optional activation statistics), measure where the prompt
vectors went, and write the tables, figures and report.

One row per run × prompt block. A block is one set of P prompt vectors living in one space: `soft`
(slot inputs to layer 0, token-embedding space), `deep.<l>` (hidden states entering decoder layer l),
`prefix.<l>.key` / `prefix.<l>.value` (layer l's attention keys/values, each slot's heads
concatenated into one vector); the method that names a tensor says which.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import EptkUsageError
from ..io import check_output_dir
from ..progress import Bar
from ..runs import CONFIG, PREFIX_MASS, find_runs
from .columns import num
from .findings import findings, print_findings, wide_console
from .measure import AnalysisOptions, analyze_run, task_cluster_metrics
from .read import TaskActivations, VocabCache, VocabSource, load_stats, read_run, stats_named_by_runs
from .trajectories import run_trajectories
from .write import make_plots, safe_name, write_report, write_tables, write_trajectories


@dataclass
class AnalysisResult:
    out: Path
    rows: list[dict]
    task_rows: list[dict]
    frechet_rows: list[dict]
    findings: list[dict]
    files: dict[str, Path]
    notes: list[str]
    details: dict


def analyze_runs(paths: Sequence, out="analysis", *, stats: Sequence = (), vocab: VocabSource = "auto",
                 plots: bool = True, options: AnalysisOptions | None = None, console=None,
                 progress: bool = True, device: str = "auto") -> AnalysisResult:
    """Analyze every run under `paths` and write the results to `out`.

    stats: activation-statistics folders (`eptk capture` output) or loaded TaskActivations; a run
      uses the one whose task (and model, when both say) matches its config; two or more tasks
      also give the cross-task cluster metrics.
    vocab: where vocabulary embeddings come from, for the layer-0 neighbour and collapse metrics:
      "auto" (load config `model` through eptk.models.load_model), a mapping model name →
      Vocabulary or (embeddings [V, d], token strings), a callable name → the same or None, or
      None to skip them. A model that cannot be loaded only skips those metrics, with a note.
    device: where "auto" loads those models, and the models that generate trajectories (auto: CUDA when
      present, in bfloat16 there).
    Writes summary.csv, summary.json, details.json, report.html, plots/*.png and, with two or
    more tasks, tasks.csv/json and frechet.csv; with `options.trajectories` N, trajectories.csv (N generated
    trajectories per complete run, eptk/analysis/trajectories.py); prints the findings table to `console`.
    """
    opts = options or AnalysisOptions()
    opts.validate()
    console = console or wide_console()
    out = check_output_dir(out, "--out")
    run_dirs = find_runs(paths)
    pca_cache: dict = {}
    stats = list(stats) + stats_named_by_runs(paths, stats)
    loaded_stats = [s if isinstance(s, TaskActivations) else load_stats(s) for s in stats]
    vocabs = VocabCache(vocab, device)
    notes: list[str] = []
    rows: list[dict] = []
    details: dict = {}
    run_panels: list[tuple[str, str, list[dict]]] = []
    curves, prefix_masses = [], []
    used_names: set = set()
    display_names: set = set()

    with Bar(progress, "[bold]analyze[/]", len(run_dirs), "{task.description}", console=console, transient=True) as bar:
        for run_dir in run_dirs:
            bar.advance(0, description=str(run_dir))
            try:
                run = read_run(run_dir)
            except EptkUsageError as exc:
                notes.append(f"{run_dir}: skipped ({exc})")
                bar.advance()
                continue
            name = run.name
            i = 2
            while name in display_names:
                name, i = f"{run.name} ({i})", i + 1
            run.name = name
            display_names.add(name)
            run_rows, run_details, panels = analyze_run(run, vocabs=vocabs, stats=loaded_stats, opts=opts, pca_cache=pca_cache)
            rows += run_rows
            if run_details:
                details[run.name] = run_details
            safe = safe_name(run.name, used_names)
            run_panels.append((run.name, safe, panels))
            val = [(r["step"], r["val_loss"]) for r in run.metrics if num(r.get("val_loss")) is not None and r.get("step") is not None]
            if val:
                curves.append({"run": run.name, "prior": str(run.config.get("prior")), "steps": [s for s, _ in val],
                               "values": [v for _, v in val]})
            mass = (run.eval or {}).get(PREFIX_MASS)
            if isinstance(mass, dict) and mass:
                prefix_masses.append((run.name, safe, mass))
            notes += [f"{run.name}: {n}" for n in run.notes]
            bar.advance()
    notes = vocabs.notes + notes
    if not rows:
        raise EptkUsageError(f"no readable runs under {', '.join(str(p) for p in paths)}: a run directory holds {CONFIG}")

    task_rows, frechet_rows, cluster_panels = task_cluster_metrics(loaded_stats, seed=opts.seed,
                                                                   projection=opts.cluster_projection)
    if loaded_stats and not task_rows and not frechet_rows:
        notes.append("task cluster metrics need statistics of two or more tasks of one model")
    trajectory_rows = []
    if opts.trajectories:
        trajectory_rows, trajectory_notes = run_trajectories(run_dirs, n=opts.trajectories,
                                                             new_tokens=opts.trajectory_tokens, n_perm=opts.n_perm,
                                                             progress=progress, device=device)
        notes += trajectory_notes

    files = write_tables(out, rows, details, task_rows, frechet_rows)
    if opts.trajectories:
        files.update(write_trajectories(out, trajectory_rows))
    figures: list[dict] = []
    if plots:
        figures = make_plots(out / "plots", rows, run_panels, curves, prefix_masses, cluster_panels, notes,
                             trajectory_rows)
        for fig in figures:
            files[f"plots/{fig['path'].name}"] = fig["path"]
    table_rows = findings(rows)
    files["report.html"] = write_report(out, table_rows=table_rows, rows=rows, task_rows=task_rows,
                                        frechet_rows=frechet_rows, figures=figures, notes=notes, details=details)
    print_findings(table_rows, console)
    for note in notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    console.print(f"wrote {out}/ (summary.csv, summary.json, report.html, {len(figures)} plots)", highlight=False)
    return AnalysisResult(out, rows, task_rows, frechet_rows, table_rows, files, notes, details)
