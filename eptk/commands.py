"""What the `eptk` commands do beyond parsing their arguments: one function per command that the CLI calls
(`eptk analyze`, `export` and `import-peft` call eptk.analysis and eptk.peft_io directly).

Heavy modules are imported inside each function, so that `eptk --help` and `eptk priors` stay light.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def tune(settings: dict, *, resume: Path | None = None, config: Path | None = None, overwrite: bool = False,
         progress: bool = True) -> Path:
    """Tune from the command line's settings, or continue the run at `resume` (its own settings), or rerun a
    config.json (`config`, into settings["out"] when given); print the scores; return the run directory."""
    from .config import TuneConfig
    from .train import tune as run_tune

    if resume is not None:
        cfg = TuneConfig.from_run(resume)
    elif config is not None:
        cfg = TuneConfig.from_file(config, out=settings.get("out") or None)
    else:
        cfg = TuneConfig(**settings)
    run = run_tune(cfg, resume=resume is not None, overwrite=overwrite, progress=progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_scores(run)
    return run


def _print_scores(run: Path) -> None:
    from .runs import RunDir

    result = RunDir(run).eval()
    if result is None:
        return
    base, tuned = result["baseline"], result["tuned"]
    print(f"{result['task']} test ({tuned['n']} examples), {result['metric']}: baseline {base['score']:.1f} -> "
          f"tuned {tuned['score']:.1f}   (answer loss {base['loss']:.3f} -> {tuned['loss']:.3f})")
    print(f"run directory: {run}")


def evaluate(run: Path, task: str | None = None, split: str = "test", size: int = 200, backend: str = "auto", *,
             device: str = "auto", device_map: str = "", offload_dir: str = "") -> dict:
    """Score a tuned run and the no-prompt baseline on a task split (the scorer that writes eval.json)."""
    from .evaluate import evaluate as score_both
    from .loading import load_run
    from .tasks import load_task

    tuned = load_run(run, backend=backend, device=device, device_map=device_map or None, offload_dir=offload_dir or None)
    the_task = load_task(task or tuned.config["task"], int(tuned.config.get("seed", 0)))
    result = score_both(tuned, the_task, the_task.examples(split, size), split, prefix_mass=False)
    summary = {k: result[k] for k in ("task", "split", "metric")}
    summary.update({which: {k: result[which][k] for k in ("score", "loss", "n")} for which in ("baseline", "tuned")})
    print(json.dumps(summary, indent=2))
    return summary


def generate(run: Path, text: str, max_new_tokens: int = 32, sample: bool = False, temperature: float = 1.0,
             seed: int = 0, *, device: str = "auto", device_map: str = "", offload_dir: str = "") -> str:
    """Continue `text` with the tuned prompt in front; print and return the continuation."""
    import torch

    from .loading import load_run

    tuned = load_run(run, device=device, device_map=device_map or None, offload_dir=offload_dir or None)
    enc = {k: v.to(tuned.device) for k, v in tuned.tokenizer(text, return_tensors="pt").items()}
    generator = torch.Generator(tuned.device).manual_seed(seed)  # sampling draws where the logits are
    out = tuned.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=temperature, generator=generator)
    answer = tuned.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(answer)
    return answer


def capture(model: str, task: str, layers: str = "all", samples: int = 2048, examples: int = 512, seed: int = 0,
            batch_size: int = 16, out: Path | None = None, device: str = "auto", progress: bool = True, *,
            device_map: str = "", offload_dir: str = "") -> Path:
    """Capture a task's activation statistics into `out`, or into the cache tuning reuses; return the folder."""
    from rich.console import Console

    from .capture import capture_task
    from .errors import EptkUsageError
    from .families import model_dims
    from .models import frozen_dtype, load_model, resolve_device
    from .spaces import parse_layers
    from .stats_cache import ensure_stats, stats_folder

    if samples < 1 or examples < 1 or batch_size < 1:
        raise EptkUsageError("--samples, --examples and --batch-size must be at least 1")
    dev = resolve_device(device)
    loaded = load_model(model, device=dev, dtype=frozen_dtype(dev), device_map=device_map or None,
                        offload_dir=offload_dir or None)
    num_layers = model_dims(loaded.model)["num_layers"]
    chosen = parse_layers(layers, num_layers, lowest=0, highest=num_layers)
    if out is None:
        stats = ensure_stats(loaded, model, task, chosen, samples=samples, seed=seed, n_examples=examples,
                             batch_size=batch_size, progress=progress)
        folder = stats_folder(loaded, model, task, chosen, samples, seed, examples)
    else:
        stats = capture_task(loaded, model, task, chosen, samples=samples, seed=seed, n_examples=examples,
                             batch_size=batch_size, progress=progress)
        folder = stats.save(out)
    tokens = int(stats.gaussians[chosen[0]].count)
    Console().print(f"activation statistics of {model} on {task}: layers {layers} ({len(chosen)}), "
                    f"{stats.meta.get('sequences', '?')} sequences, {tokens} tokens (padding, BOS, first tokens and "
                    f"massive activations excluded)\nwritten to {folder}")
    return folder


def sweep(file: Path, *, jobs: int | None = None, shard: str | None = None, out: Path | None = None,
          analyze: bool = True, dry_run: bool = False, progress: bool = True) -> int:
    """Run (or list, with `dry_run`) a sweep file's runs; print the outcome; return the exit code (1 when a
    run failed)."""
    import sys

    from rich.console import Console

    from .errors import EptkUsageError
    from .sweep import load_sweep, parse_shard, plan, run_sweep, select_shard, summary_name

    parsed_shard = parse_shard(shard)
    if jobs is not None and jobs < 1:
        raise EptkUsageError(f"--jobs must be at least 1 (got {jobs})")
    spec = load_sweep(file)
    target = out if out is not None else spec.default_out()
    if dry_run:
        rows = plan(select_shard(spec.runs, parsed_shard), target)
        for row in rows:
            print(f"{row['run'].index:4d}  {row['action']:9s}  {row['run'].name}")
        print(f"{len(rows)} of {len(spec.runs)} runs -> {target}")
        return 0
    summary = run_sweep(spec, target, jobs=jobs, shard=parsed_shard, analyze=analyze, progress=progress,
                        console=Console())
    counts = summary["counts"]
    parts = [f"{counts[k]} {k}" for k in ("done", "resumed", "skipped", "failed") if counts.get(k)]
    print(f"sweep: {len(summary['runs'])} runs ({', '.join(parts) or 'none'}) -> {target}/{summary_name(parsed_shard)}")
    analysis = summary.get("analysis") or {}
    if analysis.get("status") == "done":
        print(f"analysis: {analysis['out']}/report.html")
    elif analysis.get("status") == "failed":
        print(f"analysis failed (exit {analysis.get('exit_code')}); see {target}/logs/analyze.err")
    if counts.get("failed"):
        failed = [r["name"] for r in summary["runs"] if r["status"] == "failed"]
        print(f"failed: {', '.join(failed)} (exit codes and stderr tails in {summary_name(parsed_shard)}; "
              f"rerun the same command to retry them)", file=sys.stderr)
        return 1
    return 0


def priors() -> None:
    """Print every prior family with its arguments and a one-line description."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .priors import PRIORS

    table = Table(title="priors (--prior family[:args])")
    table.add_column("spec", style="bold")
    table.add_column("needs stats")
    table.add_column("what it samples")
    for family in PRIORS.values():
        table.add_row(escape(f"{family.name}{family.args}"), "yes" if family.needs_stats else "", escape(family.description))
    Console().print(table)


def reproduce(out: Path, *, model: str, quick: bool = False, jobs: int | None = None, shard: str | None = None,
              stages=None, dry_run: bool = False, progress: bool = True) -> int:
    """Run the study's stages into `out` (complete items skipped) and write its findings; return the exit code."""
    from .reproduce import reproduce as run_study

    return run_study(out, model=model, quick=quick, jobs=jobs, shard=shard, stages=stages, dry_run=dry_run,
                     progress=progress)
