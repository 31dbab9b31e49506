"""`eptk reproduce`: the paper's claims measured on one model, resumably, with a findings report.

stages.py says which runs, captures and trajectories the study holds (full or --quick); run.py runs them
(training through eptk.sweep); gather.py reads what exists; claims/ holds one module per claim (its statistic,
rule and figure; docs/findings/RULES.md) and inference.py the statistics they use (scipy, statsmodels);
provenance.py reads from git when the rules and runs were committed; report.py and figures.py write FINDINGS.md,
findings.html, runs.csv, claims.json and figures/; beside.py puts other models' verdicts beside this one's.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .stages import STAGES, Study, parse_stages

__all__ = ["STAGES", "Study", "parse_stages", "reproduce"]


def reproduce(out, *, model: str, quick: bool = False, jobs: int | None = None, shard: str | None = None,
              stages=None, dry_run: bool = False, progress: bool = True, console=None, n_perm: int = 999,
              report_to=None, beside=()) -> int:
    """Run (or, with `dry_run`, list) the chosen stages; the report stage writes the findings from whatever is
    complete. Returns 1 when a run failed, else 0."""
    from rich.console import Console

    from ..config import check_setting
    from ..errors import EptkUsageError
    from ..io import check_output_dir
    from ..models import check_model_name
    from ..sweep import parse_shard
    from . import run as R
    from .beside import load_beside

    # Every check before anything is written: a bad model would otherwise fail each run of a stage.
    chosen = parse_stages(stages)
    parsed = parse_shard(shard)
    if jobs is not None:
        check_setting("jobs", jobs)
    check_model_name(model)
    if beside and "report" not in chosen:
        raise EptkUsageError("--beside adds columns to the report; add the report stage (--stages report)")
    others = load_beside(beside, model)
    study = Study.build(model, check_output_dir(out, "--out"), quick=quick)
    study.check_folder()
    if dry_run:
        R.dry_run(study, chosen, parsed)
        return 0
    console = console or Console()
    failed, models = 0, {}
    for stage in chosen:
        console.print(f"[bold]stage {stage}[/]")
        if stage in R.TRAINING:
            failed += R.run_training(study, stage, jobs=jobs, shard=parsed, progress=progress, console=console)
        elif stage == "captures":
            R.run_captures(study, parsed, models=models, progress=progress, console=console)
        elif stage == "trajectories":
            R.run_trajectories_stage(study, parsed, models=models, progress=progress, console=console)
        elif stage == "tokens":
            R.run_captures(study, parsed, models=models, progress=progress, console=console, content_only=True)
        elif stage == "reeval":
            failed += R.run_reevaluations(study, parsed, console=console)
        elif stage == "report":
            _report(study, n_perm=n_perm, console=console, into=report_to, beside=others)
    return 1 if failed else 0


def _report(study: Study, *, n_perm: int, console, into=None, beside=()) -> None:
    from ..config import versions
    from .claims import measure_claims
    from .gather import Gathered
    from .report import write_report

    g = Gathered(study)
    results = measure_claims(g, n_perm=n_perm)
    command = "eptk " + " ".join(shlex.quote(_portable(a)) for a in sys.argv[1:]) if sys.argv[1:] else "eptk reproduce"
    files = write_report(g, results, command=command, versions=versions(), into=into, beside=beside)
    for r in results:
        console.print(f"claim {r['claim']}: {r['verdict']} — {r['why']}", markup=False, highlight=False)
    console.print(f"report: {files['FINDINGS.md']}, {files['findings.html']}", markup=False)


def _portable(arg: str) -> str:
    """A command-line argument as the report prints it: a path relative to the working directory, never a folder
    of this machine outside it."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.name
