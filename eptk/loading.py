"""`eptk.load_run`: a run directory back to a tuned, callable model."""
from __future__ import annotations

from pathlib import Path

from .errors import EptkUsageError
from .families import model_dims
from .methods import method_from_config
from .models import LoadedModel, load_frozen
from .prompts import PromptedModel
from .runs import BASELINE, CONFIG, SCORE_KEYS, TUNED, RunDir, is_run


def load_run(path, *, device: str = "auto", backend: str = "auto", tensors: str = "posterior",
             device_map: str | None = None, offload_dir: str | None = None,
             loaded: LoadedModel | None = None) -> PromptedModel:
    """The frozen model plus the run's posterior (or `tensors="prior"`), on `device` (auto: CUDA when present,
    in bfloat16 there; float32 on the CPU) or dispatched over devices by `device_map`. `loaded`: the run's
    model, already loaded (several runs of one model share it; remove each one's hooks when done)."""
    path = Path(path)
    if not is_run(path):
        raise EptkUsageError(f"{path} is not a run directory (no {CONFIG})")
    run = RunDir(path)
    config = run.config()
    values = run.tensors(tensors, "prompt tensors")  # a damaged file fails before the model loads
    if loaded is None:
        loaded = load_frozen(config["model"], device, device_map=device_map, offload_dir=offload_dir,
                             trust_remote_code=bool(config.get("trust_remote_code", False)),
                             allow_pickle_weights=bool(config.get("allow_pickle_weights", False)))
    elif loaded.name != config["model"]:
        raise EptkUsageError(f"run {path} was tuned on model {config['model']!r}, not {loaded.name!r}")
    dims = model_dims(loaded.model)
    if config.get("hidden_size") not in (None, dims["hidden_size"]):
        raise EptkUsageError(f"run {path} was tuned with width {config.get('hidden_size')}, model has "
                             f"{dims['hidden_size']}")
    prompted = PromptedModel(loaded.model, loaded.tokenizer, method_from_config(config, dims), values, backend)
    if config.get("sink_token_id") not in (None, prompted.sink_token_id):
        raise EptkUsageError(f"run {path} kept token {config['sink_token_id']} in its sink slot; this tokenizer's "
                             f"is {prompted.sink_token_id}")
    prompted.config = config
    return prompted


def run_logits(path, input_ids, attention_mask, **kwargs):
    """The logits of a run's tuned model on one batch (its hooks removed after): what a PEFT export, an import
    or a reloaded run is compared against."""
    import torch

    tuned = load_run(path, **kwargs)
    try:
        with torch.no_grad():
            return tuned(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        tuned.remove_hooks()


def evaluate_run(run: Path, task: str | None = None, split: str = "test", size: int = 200, backend: str = "auto", *,
                 device: str = "auto", device_map: str = "", offload_dir: str = "", save: bool = False) -> dict:
    """Score a tuned run and the no-prompt baseline on a task split (the scorer that writes eval.json); with
    `save`, keep the evaluation and its per-item predictions in the run (eval-<split>-<size>.json beside
    predictions-<split>-<size>.jsonl), e.g. to score a finished run on more test items without retraining.
    Returns the scores (task, split, metric; baseline and tuned score, loss, n)."""
    from eptk.kernels import BACKENDS

    from .config import versions
    from .context import check_examples
    from .errors import check_choice, check_range
    from .evaluate import evaluate as score_both, item_rows
    from .models import check_placement
    from .tasks import load_task

    check_range("--size", size, 1, 10**7)
    check_choice("--backend", backend, BACKENDS)
    config = run_config(run)
    if save and not RunDir(run).is_complete():
        raise EptkUsageError(f"--save keeps a finished run's evaluation: {run} has not finished (no eval.json)")
    check_placement(device, device_map, offload_dir)
    the_task = load_task(task or config["task"], int(config.get("seed", 0)))
    examples = the_task.examples(split, size)
    if not examples:
        raise EptkUsageError(f"task {the_task.name!r} has no {split} examples to score")
    tuned = load_run(run, backend=backend, device=device, device_map=device_map or None, offload_dir=offload_dir or None)
    check_examples(tuned.model, tuned.tokenizer, examples, slots=tuned.slots, where=f"task {the_task.name}, {split} split",
                   new_tokens=the_task.max_answer_tokens, generates=True)
    result = score_both(tuned, the_task, examples, split, prefix_mass=False)
    rows = item_rows(result)
    if save:
        RunDir(run).write_eval(dict(result, versions=versions()), rows, name=f"{split}-{size}")
    summary = {k: result[k] for k in ("task", "split", "metric")}
    summary.update({which: {k: result[which][k] for k in SCORE_KEYS} for which in (BASELINE, TUNED)})
    return summary


def run_config(run: Path) -> dict:
    """The config of the run `run` names, refused before any model loads when it is not a run."""
    if not is_run(run):
        raise EptkUsageError(f"{run} is not a run directory (no {CONFIG})")
    config = RunDir(run).config()
    if not isinstance(config, dict) or "task" not in config or "model" not in config:
        raise EptkUsageError(f"{Path(run) / CONFIG} is not an eptk run config (no task or model)")
    return config
