"""What `eptk tune` checks before it loads a model, captures statistics or writes a file: every setting,
the model name, the device, the task and its splits, the prior and what it names, and the run
directory (`--out`, or the run `--resume` continues). Bad input fails here with one line and nothing
on disk changed; what needs the model (layer ranges, widths, the context window: `check_context`) is
checked right after it loads, still before anything is written."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TuneConfig, default_run_name
from .context import check_examples
from .errors import EptkUsageError, NothingToDo
from .models import check_model_name, check_placement
from .priors import PriorContext, check_prior
from .runs import RunDir, check_out_dir
from .tasks import Example, load_task


@dataclass
class TunePlan:
    out: Path
    device: torch.device
    task: object
    train: list[Example]
    val: list[Example]    # empty: --eval-size 0, no validation
    test: list[Example]   # empty: --test-size 0, no test evaluation
    resume_step: int = 0  # --resume: the step of the newest checkpoint (0: none, start over)
    run_steps: int = 0    # --resume: the steps the run's config.json records


def check_tune(cfg: TuneConfig, *, resume: bool = False, overwrite: bool = False,
               default_device: str | None = None) -> TunePlan:
    """Resolve and check everything `eptk tune` needs short of the model itself; writes nothing."""
    if resume and overwrite:
        raise EptkUsageError("--resume continues a run and --overwrite replaces one; give one of them")
    device, task, train, val, test = check_inputs(cfg, default_device)
    out = Path(cfg.out or default_run_name(cfg))
    check_out_dir(out, overwrite=overwrite, resume=resume)
    plan = TunePlan(out, device, task, train, val, test)
    if resume:
        _check_resume(RunDir(out), cfg, plan)
    return plan


def check_inputs(cfg: TuneConfig, default_device: str | None = None):
    """Every setting and what it names, short of the run directory: the settings' ranges and choices, the layer
    spec, the model name, the device placement, the task and the splits it must fill, the prior and what it
    names. Returns (device, task, train, validation, test examples). `eptk sweep` checks each of its runs here
    before the first starts."""
    cfg.validate()
    check_model_name(cfg.model, cfg.allow_pickle_weights)
    device = check_placement(cfg.device, cfg.device_map, cfg.offload_dir, default=default_device)
    task = load_task(cfg.task, cfg.seed)
    train = task.examples("train", cfg.train_size)
    if not train:
        raise EptkUsageError(f"task {cfg.task!r} has no training examples")
    val = split_examples(task, cfg, "validation", cfg.eval_size, "--eval-size 0 skips validation")
    test = split_examples(task, cfg, "test", cfg.test_size, "--test-size 0 skips the test evaluation")
    check_prior(cfg.prior, PriorContext(task=cfg.task, model=cfg.model, seed=cfg.seed))
    return device, task, train, val, test


def check_context(plan: TunePlan, cfg: TuneConfig, model, tokenizer, method) -> None:
    """Once the model has loaded, before anything is written: each split's examples after the prompt's slots fit
    the model's context window (eptk.context); the test split also with the answer tokens scoring generates."""
    for split, examples in (("train", plan.train), ("validation", plan.val), ("test", plan.test)):
        check_examples(model, tokenizer, examples, slots=method.slots, where=f"task {cfg.task}, {split} split",
                       new_tokens=plan.task.max_answer_tokens, generates=split == "test", tokens_option="--tokens",
                       sink=method.slots - method.tokens)


def split_examples(task, cfg: TuneConfig, split: str, size: int, skip_hint: str) -> list[Example]:
    """`size` examples of a split (none for size 0); a split the task cannot fill at all is refused rather
    than scored as 0."""
    if size == 0:
        return []
    examples = task.examples(split, size)
    if not examples:
        raise EptkUsageError(f"task {cfg.task!r} has no {split} examples; {skip_hint}")
    return examples


def _check_resume(run: RunDir, cfg: TuneConfig, plan: TunePlan) -> None:
    """Where a resumed run stands: refuse to shorten it below what it has done; say so when it is done."""
    plan.run_steps = int(run.config().get("steps", cfg.steps))
    plan.resume_step = run.checkpoint_step()
    if cfg.steps < plan.resume_step:
        raise EptkUsageError(f"--resume {run.path}: the run has done {plan.resume_step} steps; --steps must be at "
                             f"least {plan.resume_step} (got {cfg.steps})")
    if run.is_complete() and cfg.steps == plan.run_steps:
        raise NothingToDo(f"{run.path} is complete ({plan.run_steps} steps); nothing to do (--steps N with "
                          f"N > {plan.run_steps} extends it)")
