"""`eptk reproduce [--out DIR] [--quick] [--jobs N] [--shard I/N] [--model M] [--stages ...] [--beside DIR]`:
the paper's claims measured, with a findings report (over eptk.commands)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from eptk.config import TuneConfig

from .app import app


@app.command()
def reproduce(
    out: Path = typer.Option(Path("reproduction"), help="study directory: every run, capture, trajectory table and "
                                                        "the report (FINDINGS.md, findings.html, runs.csv, claims.json)"),
    quick: bool = typer.Option(False, help="a reduced study (fewer priors, seeds 0-1, a few steps) that writes the "
                                           "same files in minutes, e.g. with --model tiny"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="training runs at a time (default: one per GPU, "
                                                                  "else 1)"),
    shard: Optional[str] = typer.Option(None, help="I/N: every N-th item of each stage, starting at I (0-based)"),
    model: str = typer.Option(TuneConfig().model, help="model of every run (smollm2, gemma3-270m, tiny, a hub id, ...)"),
    stages: Optional[List[str]] = typer.Option(None, "--stages", help="stages to run, repeated or comma-separated: "
                                               "main, transfer, sink, captures, trajectories, converged, ablation, "
                                               "reeval, tokens, report (default: all)"),
    report_to: Optional[Path] = typer.Option(None, help="write the report (FINDINGS.md, findings.html, runs.csv, "
                                             "claims.json, figures/) here instead of the study directory"),
    beside: Optional[List[Path]] = typer.Option(None, "--beside", help="another model's report folder (its "
                                                "--report-to, with claims.json), repeated: a verdict column per model"),
    dry_run: bool = typer.Option(False, "--dry-run", "--plan", help="list every item and what would happen to it "
                                                                   "(skip, resume, fresh, waits); run nothing"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Run the reproduction study (resumable like `eptk sweep`) and write its findings with verdicts."""
    from eptk import commands

    code = commands.reproduce(out, model=model, quick=quick, jobs=jobs, shard=shard, stages=stages, dry_run=dry_run,
                              progress=not quiet, report_to=report_to, beside=beside or ())
    if code:
        raise typer.Exit(code)
