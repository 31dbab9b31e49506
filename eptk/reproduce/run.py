"""Running the study's stages, resumably and shardably: training stages through eptk.sweep's scheduler
(complete runs skipped, checkpointed runs resumed, one line per run), captures and trajectories in this
process (one model load), each item skipped when its output exists. Shard I/N takes every N-th item of
each stage, as `eptk sweep --shard` does."""
from __future__ import annotations

from pathlib import Path

from ..errors import EptkUsageError
from ..runs import RunDir
from ..stats import is_stats_folder
from ..sweep import Sweep, plan, run_sweep, select_shard, summary_name
from .stages import TASKS, Study

TRAINING = ("main", "transfer", "sink", "converged", "ablation")
V1_TRAINING = ("main", "transfer", "sink")   # the runs `reeval` scores again on more test items


def _waiting(study: Study, stage: str, runs: list) -> tuple[list, list]:
    """(ready, waiting): a transfer run waits until the main run it starts from is complete."""
    if stage != "transfer":
        return runs, []
    ready, waiting = [], []
    for run in runs:
        source = study.source_of(run)
        done = source is None or RunDir(study.run_dir(source)).is_complete()
        (ready if done else waiting).append(run)
    return ready, waiting


def dry_run(study: Study, stages, shard) -> list[dict]:
    """What each stage would do with each of its items, printed one line each; nothing runs or is written."""
    rows = []
    for stage in stages:
        if stage in TRAINING:
            ready, waiting = _waiting(study, stage, select_shard(study.stage_runs[stage], shard))
            for row in plan(ready, study.out):
                rows.append({"stage": stage, "item": row["run"].name, "action": row["action"]})
            rows += [{"stage": stage, "item": r.name, "action": "waits"} for r in waiting]
        elif stage == "captures":
            for c in select_shard(study.captures(), shard):
                done = is_stats_folder(study.capture_dir(c))
                rows.append({"stage": stage, "item": f"captures/{c.name}", "action": "skip" if done else "fresh"})
        elif stage == "tokens":
            for c in select_shard(study.token_captures(), shard):
                done = is_stats_folder(study.token_dir(c))
                rows.append({"stage": stage, "item": f"tokens/{c.name}", "action": "skip" if done else "fresh"})
        elif stage == "reeval":
            for run in select_shard(reeval_runs(study), shard):
                rows.append({"stage": stage, "item": f"{run.name}/{reeval_file(study)}",
                             "action": _reeval_action(study, run)})
        elif stage == "trajectories":
            for run in select_shard(study.trajectory_runs(), shard):
                rows.append({"stage": stage, "item": f"trajectories/{run.name}", "action": _trajectory_action(study, run)})
    for row in rows:
        print(f"{row['stage']:12s} {row['action']:9s} {row['item']}")
    counts = {}
    for row in rows:
        counts[row["action"]] = counts.get(row["action"], 0) + 1
    print(f"{len(rows)} items ({', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'}) -> {study.out}")
    return rows


def _trajectory_action(study: Study, run) -> str:
    from ..analysis.write import has_trajectories

    if has_trajectories(study.trajectory_dir(run)):
        return "skip"
    return "fresh" if RunDir(study.run_dir(run)).is_complete() else "waits"


def run_training(study: Study, stage: str, *, jobs, shard, progress: bool, console) -> int:
    """One training stage through the sweep scheduler; returns the number of failed runs. The converged stage
    goes on with the seeds the power rule adds once an arm's first seeds are in (seed_power), until none is added."""
    failed = _train(study, stage, jobs=jobs, shard=shard, progress=progress, console=console)
    while stage == "converged" and not failed and (added := study.regrow_converged()):
        console.print(f"the power rule (RULES.md) adds {len(added)} converged run{'s' * (len(added) != 1)}: "
                      f"{', '.join(added)}",
                      markup=False, highlight=False)
        failed = _train(study, stage, jobs=jobs, shard=shard, progress=progress, console=console)
    return failed


def _train(study: Study, stage: str, *, jobs, shard, progress: bool, console) -> int:
    ready, waiting = _waiting(study, stage, select_shard(study.stage_runs[stage], shard))
    for run in waiting:
        console.print(f"⏸ {run.name}: waits for {study.source_of(run).name} (rerun when it is complete)",
                      markup=False, highlight=False)
    if not ready:
        return 0
    sweep = Sweep(path=Path(f"reproduce {stage}"), grid={}, fixed={"model": study.model}, out=str(study.out),
                  runs=ready)
    summary = run_sweep(sweep, study.out, jobs=jobs, shard=None, analyze=False, progress=progress, console=console,
                        summary=summary_name(shard, f"reproduce-{stage}.json"))
    return summary["counts"].get("failed", 0)


def run_captures(study: Study, shard, *, models: dict, progress: bool, console, content_only: bool = False) -> int:
    """Claim 4's captures: every task's train split at every layer, each seed; version 1's keep per-sequence means
    of every token (`captures/`), version 2's the content tokens only, with the template variants (`tokens/`)."""
    from ..capture import capture_task
    from ..families import model_dims

    items, folder = (study.token_captures(), study.token_dir) if content_only else (study.captures(), study.capture_dir)
    todo = [c for c in select_shard(items, shard) if not is_stats_folder(folder(c))]
    for c in todo:
        loaded = _model(study, models)
        layers = list(range(model_dims(loaded.model)["num_layers"] + 1))
        stats = capture_task(loaded, study.model, c.task, layers, samples=study.scale.capture_samples, seed=c.seed,
                             n_examples=study.scale.capture_examples, progress=progress, content_only=content_only)
        stats.save(folder(c))
        console.print(f"✓ {folder(c).parent.name}/{c.name} ({stats.meta.get('sequences', '?')} sequences)",
                      markup=False)
    return 0


def run_trajectories_stage(study: Study, shard, *, models: dict, progress: bool, console) -> int:
    """Claim 3's trajectories: each selected main run's prompt generating on every task's test prompts."""
    from ..analysis.trajectories import run_trajectories
    from ..analysis.write import write_trajectories

    for run in select_shard(study.trajectory_runs(), shard):
        action = _trajectory_action(study, run)
        if action == "waits":
            console.print(f"⏸ trajectories/{run.name}: waits for the run to finish", markup=False)
        if action != "fresh":
            continue
        _model(study, models)
        rows, notes = run_trajectories([study.run_dir(run)], n=study.scale.trajectories,
                                       new_tokens=study.scale.trajectory_tokens, tasks=TASKS, models=models,
                                       progress=progress)
        if not rows:
            raise EptkUsageError(f"trajectories of {run.name}: nothing measured ({'; '.join(notes)})")
        write_trajectories(study.trajectory_dir(run), rows)
        console.print(f"✓ trajectories/{run.name} ({len(rows)} rows)", markup=False)
    return 0


def reeval_runs(study: Study) -> list:
    return [run for stage in V1_TRAINING for run in study.stage_runs[stage]]


def reeval_file(study: Study) -> str:
    return f"eval-test-{study.scale.reeval_size}.json"


def _reeval_action(study: Study, run) -> str:
    if (study.run_dir(run) / reeval_file(study)).is_file():
        return "skip"
    return "fresh" if RunDir(study.run_dir(run)).is_complete() else "waits"


def run_reevaluations(study: Study, shard, *, console) -> int:
    """Version-1 runs scored again from their posteriors on the study's 1,000 test items (`eptk eval --save`):
    the per-item predictions version 2 reads, without retraining. Returns the number that failed."""
    from ..loading import evaluate_run

    failed = 0
    for run in select_shard(reeval_runs(study), shard):
        if _reeval_action(study, run) != "fresh":
            continue
        try:
            summary = evaluate_run(study.run_dir(run), size=study.scale.reeval_size, save=True)
        except EptkUsageError as exc:
            failed += 1
            console.print(f"✗ {run.name}: {exc}", markup=False, highlight=False)
            continue
        console.print(f"✓ {run.name}: {summary['tuned']['score']:.1f} on {summary['tuned']['n']} test items",
                      markup=False, highlight=False)
    return failed


def _model(study: Study, models: dict):
    from ..models import load_model

    if study.model not in models:
        models[study.model] = load_model(study.model)
    return models[study.model]
