"""Generated trajectories: greedy continuations of a task's test prompts with a run's tuned prompt (or the frozen
model), the generated tokens' hidden states at every prompted layer, and how localized they are against the task's
captured token activations at that layer (eptk.metrics.trajectory_against_data). `eptk analyze --trajectories N`
and `eptk reproduce` (claim 3) both measure them here.

Continuations have exactly `new_tokens` tokens (EOS does not stop them), so every trajectory has the same length.
Prompted layers: a soft prompt's layer 0; a deep prompt's layer 0 and its deep layers; a prefix prompt (keys and
values at every layer, no residual-stream vectors) is measured at layer 0 and at the last layer's output.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import metrics as M
from ..errors import EptkUsageError
from ..progress import progress_bar

TRAJECTORY_TOKENS = 16

TRAJECTORY_COLUMNS = {
    "run": "run name (`frozen` for the model without a prompt)",
    "model": "model",
    "task": "task of the prompts (the run's task)",
    "trajectory": "index of the test prompt (test split of the task, the run's seed)",
    "layer": "layer of the states (0 = token embeddings, l = the input of decoder layer l)",
    "prompt": "the prompt text",
    "generated": "the generated tokens, decoded (special tokens kept)",
    "points": "generated tokens in the trajectory",
    "mean_step": "mean distance between consecutive generated states",
    "walk_step": "mean step of a random walk over the task's captured token activations at the layer",
    "step_ratio": "mean_step / walk_step (1 = as far apart as random data tokens)",
    "radius": "mean distance of the trajectory's states to their centroid",
    "data_radius": "mean distance of the captured token activations to their mean",
    "spread_ratio": "radius / data_radius",
    "order_p": "one-sided permutation p-value (200 shuffled orders): small = consecutive states closer than in random order",
}


TRAJECTORY_TEXT = ("run", "model", "task", "prompt", "generated")  # the columns that are not numbers


def prompted_layers(method, num_layers: int) -> list[int]:
    """The layers where a method puts residual-stream vectors; layer 0 and the last layer's output otherwise."""
    layers = sorted({spec.layer for spec in method.tensor_specs().values() if spec.residual})
    return layers or [0, num_layers]


def measure_trajectories(prompted, task_spec: str, seed: int, layers: Sequence[int],
                         data: Callable[[int], torch.Tensor], *, n: int, new_tokens: int = TRAJECTORY_TOKENS,
                         n_perm: int = 200, label: dict | None = None, progress: bool = False) -> list[dict]:
    """One row per (test prompt, layer) of the task: a trajectory of `prompted` against `data(layer)` [m,d]."""
    from ..capture import generated_states
    from ..tasks import load_task

    prompts = [e.prompt for e in load_task(task_spec, seed).examples("test", n)]
    if not prompts:
        raise EptkUsageError(f"task {task_spec!r} has no test examples to generate from")
    with progress_bar(progress, f"trajectories: {label.get('run') if label else ''} on {task_spec}",
                      len(prompts)) as advance:
        generated = generated_states(prompted, prompts, list(layers), new_tokens, advance=advance)
    rows = []
    for i, g in enumerate(generated):
        for layer in layers:
            stats = M.trajectory_against_data(g.states[layer], data(layer), n_perm=n_perm, seed=seed * 1000 + i)
            rows.append({**(label or {}), "task": task_spec, "trajectory": i, "layer": layer, "prompt": g.prompt,
                         "generated": g.text, **stats})
    return rows


def run_trajectories(run_dirs: Sequence[Path], *, n: int, new_tokens: int = TRAJECTORY_TOKENS, n_perm: int = 200,
                     tasks: Sequence[str] | None = None, models: dict | None = None,
                     progress: bool = True, device: str = "cpu") -> tuple[list[dict], list[str]]:
    """Trajectories of every complete run (its posterior) on its task's test prompts (or on each of `tasks`),
    against that task's captured activations (the cached statistics of capture seed 0, captured now when
    missing). Each model is loaded once, on `device` (`models`: name -> loaded model, shared between calls)."""
    from ..families import model_dims
    from ..loading import load_run
    from ..models import load_frozen
    from ..runs import RunDir
    from ..stats_cache import REFERENCE_SEED, StatsCache

    rows, notes = [], []
    models = {} if models is None else models
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        config = run.config()
        name = str(config.get("name") or run.path.name)
        if not run.is_complete() or not config.get("task"):
            notes.append(f"{name}: no trajectories ({'not finished' if config.get('task') else 'no task'})")
            continue
        model = str(config.get("model"))
        if model not in models:
            models[model] = load_frozen(model, device)
        loaded = models[model]
        prompted = load_run(run_dir, loaded=loaded)
        try:
            stats = StatsCache(loaded, model, config["task"], seed=REFERENCE_SEED, progress=progress)
            layers = prompted_layers(prompted.method, model_dims(loaded.model)["num_layers"])
            for task in tasks or [config["task"]]:
                rows += measure_trajectories(prompted, task, int(config.get("seed", 0)), layers,
                                             lambda l, t=task: stats(t, l).samples, n=n, new_tokens=new_tokens,
                                             n_perm=n_perm, label={"run": name, "model": model}, progress=progress)
        finally:
            prompted.remove_hooks()
    return rows, notes
