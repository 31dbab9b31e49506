"""`eptk sweep SWEEP.toml [--jobs N] [--shard I/N] [--out DIR]`: a grid of tuning runs (over eptk.commands)."""
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
    from eptk import commands

    code = commands.sweep(file, jobs=jobs, shard=shard, out=out, analyze=analyze, dry_run=dry_run, progress=not quiet)
    if code:
        raise typer.Exit(code)
