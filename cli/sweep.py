"""`eptk sweep SWEEP.toml [--jobs N] [--shard I/N] [--out DIR]`: a grid of tuning runs (thin over eptk.sweep)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="sweep file (TOML): grid keys priors, methods, layers, tokens, seeds, "
                                          "tasks; fixed tune settings under [fixed]; see examples/*.toml"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="runs at a time (default: one per GPU, else 1); "
                                                                  "each job gets its own CUDA_VISIBLE_DEVICES"),
    shard: Optional[str] = typer.Option(None, help="I/N: only every N-th run, starting at run I (0-based), "
                                                   "e.g. one shard per machine"),
    out: Optional[Path] = typer.Option(None, help="sweep directory (default: the file's `out`, else sweeps/<file stem>)"),
    analyze: bool = typer.Option(True, "--analyze/--no-analyze", help="run `eptk analyze` on the sweep at the end"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the runs and what would happen to each; run nothing"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Run a grid of `eptk tune` runs into one directory: complete runs skipped, interrupted ones resumed."""
    from rich.console import Console

    from eptk.errors import EptkUsageError
    from eptk.sweep import load_sweep, parse_shard, plan, run_sweep, select_shard, summary_name

    parsed_shard = parse_shard(shard)
    if jobs is not None and jobs < 1:
        raise EptkUsageError(f"--jobs must be at least 1 (got {jobs})")
    spec = load_sweep(file)
    target = out if out is not None else spec.default_out()
    console = Console()
    if dry_run:
        rows = plan(select_shard(spec.runs, parsed_shard), target)
        for row in rows:
            typer.echo(f"{row['run'].index:4d}  {row['action']:9s}  {row['run'].name}")
        typer.echo(f"{len(rows)} of {len(spec.runs)} runs -> {target}")
        return
    summary = run_sweep(spec, target, jobs=jobs, shard=parsed_shard, analyze=analyze, progress=not quiet,
                        console=console)
    counts = summary["counts"]
    parts = [f"{counts[k]} {k}" for k in ("done", "resumed", "skipped", "failed") if counts.get(k)]
    typer.echo(f"sweep: {len(summary['runs'])} runs ({', '.join(parts) or 'none'}) -> {target}/"
               f"{summary_name(parsed_shard)}")
    analysis = summary.get("analysis") or {}
    if analysis.get("status") == "done":
        typer.echo(f"analysis: {analysis['out']}/report.html")
    elif analysis.get("status") == "failed":
        typer.echo(f"analysis failed (exit {analysis.get('exit_code')}); see {target}/logs/analyze.err")
    if counts.get("failed"):
        failed = [r["name"] for r in summary["runs"] if r["status"] == "failed"]
        typer.echo(f"failed: {', '.join(failed)} (exit codes and stderr tails in {summary_name(parsed_shard)}; "
                   f"rerun the same command to retry them)", err=True)
        raise typer.Exit(1)
