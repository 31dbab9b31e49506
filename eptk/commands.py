"""What the `eptk` commands do beyond parsing their arguments: one function per command that the CLI calls
(`eptk analyze`, `export` and `import-peft` call eptk.analysis and eptk.peft_io directly).

Heavy modules are imported inside each function, so that `eptk --help` and `eptk priors` stay light.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def tune(settings: dict, *, given=None, method_args=(), resume: Path | None = None, config: Path | None = None,
         overwrite: bool = False, progress: bool = True) -> Path | None:
    """Tune from the command line's settings; or continue the run at `resume` with its own settings (only
    --steps, which extends or shortens it, and the execution settings (config.EXECUTION_ONLY) may be given);
    or rerun a config.json (`config`) with the options given on the command line overriding it. `given`
    names the settings the user typed (default: all of `settings`); `method_args` are the command-line words of
    the method's own options (eptk.options.parse_arguments). Prints the scores; returns the run directory (None
    when a resumed run had nothing to do)."""
    from .config import EXECUTION_ONLY, RESUMABLE, TuneConfig, option
    from .errors import EptkUsageError, NothingToDo
    from .io import check_input
    from .methods import METHODS, option_owners
    from .options import parse_arguments
    from .rerun import reference_run
    from .runs import CONFIG
    from .train import tune as run_tune

    given = {k: settings[k] for k in (settings if given is None else given) if k in settings}
    if resume is not None and config is not None:
        raise EptkUsageError("--resume continues a run with its own settings; --config starts a new one: give one")
    base = TuneConfig.from_run(resume) if resume is not None else \
        TuneConfig.from_file(check_input(config, "--config")) if config is not None else None
    method = given.get("method", base.method if base is not None else settings.get("method", TuneConfig().method))
    if method_args:
        given["options"] = parse_arguments(METHODS[method].Options, list(method_args), method, option_owners)
    if resume is not None:
        cfg = base
        if given.get("out") and Path(given["out"]).resolve() != Path(resume).resolve():
            raise EptkUsageError(f"--resume {resume} continues the run in its own directory; drop --out "
                                 f"{given['out']}")
        differ = cfg.differences(given)
        if differ:
            changeable = ", ".join(map(option, (*RESUMABLE, *EXECUTION_ONLY)))
            raise EptkUsageError(f"--resume {resume}: {'; '.join(differ)}: a resumed run keeps its settings "
                                 f"(only {changeable} may change); start a new run with "
                                 f"--config {Path(resume) / CONFIG} and these options instead")
        for name in given.keys() & {*RESUMABLE, *EXECUTION_ONLY}:
            setattr(cfg, name, given[name])
    elif config is not None:
        cfg = base
        if "method" in given and given["method"] != cfg.method:
            cfg.options = {}  # the config's options belong to its own method
        for name, value in given.items():
            setattr(cfg, name, dict(cfg.options, **value) if name == "options" else value)
    else:
        cfg = TuneConfig(**settings, options=given.get("options", {}))
    try:
        run = run_tune(cfg, resume=resume is not None, overwrite=overwrite, progress=progress,
                       rerun_of=reference_run(config, given) if config is not None else None)
    except NothingToDo as done:
        if os.environ.get("RANK", "0") == "0":
            print(done)
        return None
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        _print_scores(run)
    return run


def _print_scores(run: Path) -> None:
    from .runs import BASELINE, TUNED, RunDir

    result = RunDir(run).eval()
    if result is None:
        return
    if result.get("skipped"):
        print(f"{result['task']} test evaluation skipped ({result['skipped']})")
        print(f"run directory: {run}")
        return
    base, tuned = result[BASELINE], result[TUNED]
    print(f"{result['task']} test ({tuned['n']} examples), {result['metric']}: baseline {base['score']:.1f} -> "
          f"tuned {tuned['score']:.1f}   (answer loss {base['loss']:.3f} -> {tuned['loss']:.3f})")
    print(f"run directory: {run}")


def evaluate(run: Path, task: str | None = None, split: str = "test", size: int = 200, backend: str = "auto", *,
             device: str = "auto", device_map: str = "", offload_dir: str = "", save: bool = False) -> dict:
    """Score a tuned run and the no-prompt baseline on a task split and print the scores (eptk.loading.evaluate_run;
    `save` keeps them in the run)."""
    from .loading import evaluate_run

    summary = evaluate_run(run, task, split, size, backend, device=device, device_map=device_map,
                           offload_dir=offload_dir, save=save)
    print(json.dumps(summary, indent=2))
    return summary


def generate(run: Path, text: str, max_new_tokens: int = 32, sample: bool = False, temperature: float = 1.0,
             seed: int = 0, *, device: str = "auto", device_map: str = "", offload_dir: str = "") -> str:
    """Continue `text` with the tuned prompt in front; print and return the continuation."""
    import torch

    from .config import check_setting
    from .context import check_generation
    from .errors import EptkUsageError, check_range
    from .loading import load_run, run_config
    from .models import check_placement

    check_setting("max_new_tokens", max_new_tokens)
    check_range("--temperature", temperature, 0.0, 100.0, above=True)
    check_setting("seed", seed)
    run_config(run)
    check_placement(device, device_map, offload_dir)
    if not text:
        raise EptkUsageError("the text to continue is empty; give a prompt, e.g. eptk generate RUN \"47+35=\"")
    tuned = load_run(run, device=device, device_map=device_map or None, offload_dir=offload_dir or None)
    enc = tuned.tokenizer(text, return_tensors="pt")
    if enc["input_ids"].shape[1] == 0:
        raise EptkUsageError(f"the text {text!r} has no tokens for this model's tokenizer")
    check_generation(tuned.model, slots=tuned.slots, text_tokens=enc["input_ids"].shape[1], new_tokens=max_new_tokens)
    enc = {k: v.to(tuned.device) for k, v in enc.items()}
    generator = torch.Generator(tuned.device).manual_seed(seed)  # sampling draws where the logits are
    out = tuned.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=temperature, generator=generator)
    answer = tuned.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(answer)
    return answer


def capture(model: str, task: str, layers: str = "all", samples: int = 2048, examples: int = 512, seed: int = 0,
            batch_size: int = 16, out: Path | None = None, device: str = "auto", progress: bool = True, *,
            device_map: str = "", offload_dir: str = "", allow_pickle_weights: bool = False,
            space: str = "activation") -> Path:
    """Capture a task's activation statistics (or its attention keys or values: `space`) into `out`, or into the
    cache tuning reuses; return the folder. Every option is checked before the model loads; `out` is replaced whole
    at the end."""
    from rich.console import Console

    from .capture import capture_task
    from .config import check_setting
    from .errors import EptkUsageError, check_range
    from .families import model_dims
    from .io import check_folder_is_ours, check_output_dir, remove_partials
    from .models import check_model_name, check_placement, load_frozen
    from .spaces import CAPTURE_SPACES, check_layer_spec, parse_layers
    from .stats import is_stats_folder
    from .stats_cache import ensure_stats, stats_folder
    from .tasks import load_task

    if space not in CAPTURE_SPACES:
        raise EptkUsageError(f"--space {space!r}: valid: {', '.join(CAPTURE_SPACES)}")
    check_range("--samples", samples, 1, 10**7)
    check_range("--examples", examples, 1, 10**7)
    check_setting("batch_size", batch_size)
    check_setting("seed", seed)
    check_layer_spec(layers, lowest=0)
    check_model_name(model, allow_pickle_weights)
    dev = check_placement(device, device_map, offload_dir)
    if not load_task(task, seed).examples("train", examples):
        raise EptkUsageError(f"task {task!r} has no train examples to capture")
    if out is not None:
        check_output_dir(out, "--out", replaced=True)
        check_folder_is_ours(out, "--out", "activation statistics", is_stats_folder,
                             hint="choose a new or empty folder (a statistics folder is replaced)")
    loaded = load_frozen(model, dev, device_map=device_map or None, offload_dir=offload_dir or None,
                         allow_pickle_weights=allow_pickle_weights)
    num_layers = model_dims(loaded.model)["num_layers"]
    # keys/values exist for decoder layers 0..L-1 (no layer's keys are the last layer's output)
    chosen = parse_layers(layers, num_layers, lowest=0, highest=num_layers if space == "activation" else num_layers - 1)
    if out is None:
        stats = ensure_stats(loaded, model, task, chosen, samples=samples, seed=seed, n_examples=examples,
                             batch_size=batch_size, progress=progress, space=space)
        folder = stats_folder(loaded, model, task, chosen, samples, seed, examples, space=space)
    else:
        remove_partials(out)  # what a killed capture into `out` left
        stats = capture_task(loaded, model, task, chosen, samples=samples, seed=seed, n_examples=examples,
                             batch_size=batch_size, progress=progress, space=space)
        folder = stats.save(out)
    tokens = int(stats.gaussians[chosen[0]].count)
    what = "activation statistics" if space == "activation" else f"attention {space} statistics"
    Console().print(f"{what} of {model} on {task}: layers {layers} ({len(chosen)}), "
                    f"{stats.meta.get('sequences', '?')} sequences, {tokens} tokens (padding, BOS, first tokens and "
                    f"massive activations excluded)\nwritten to {folder}")
    return folder


def sweep(file: Path, *, jobs: int | None = None, shard: str | None = None, out: Path | None = None,
          analyze: bool = True, dry_run: bool = False, progress: bool = True) -> int:
    """Run (or list, with `dry_run`) a sweep file's runs; print the outcome; return the exit code (1 when a
    run failed)."""
    import sys

    from rich.console import Console

    from .config import check_setting
    from .io import check_output_dir
    from .sweep import check_runs, check_sweep_out, load_sweep, parse_shard, plan, run_sweep, select_shard, \
        summary_name

    parsed_shard = parse_shard(shard)
    if jobs is not None:
        check_setting("jobs", jobs)
    spec = load_sweep(file)
    target = check_output_dir(out if out is not None else spec.default_out(), "--out")
    check_sweep_out(target, spec)
    check_runs(spec.runs, str(file))  # every run of the grid, before the first starts (--dry-run too)
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
              stages=None, dry_run: bool = False, progress: bool = True, report_to: Path | None = None,
              beside=()) -> int:
    """Run the study's stages into `out` (complete items skipped) and write its findings (into `report_to` when
    given; `beside`: other models' report folders, a verdict column each); return the exit code."""
    from .io import check_output_dir
    from .reproduce import reproduce as run_study

    if report_to is not None:
        report_to = check_output_dir(report_to, "--report-to")
    return run_study(out, model=model, quick=quick, jobs=jobs, shard=shard, stages=stages, dry_run=dry_run,
                     progress=progress, report_to=report_to, beside=beside)
