"""`eptk capture`: activation statistics of a model on a task's train examples (argument parsing over
eptk.commands)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from eptk.config import TuneConfig
from eptk.tasks import task_choices

from .app import DEVICE_HELP, DEVICE_MAP_HELP, OFFLOAD_HELP, app

D = TuneConfig()


@app.command("capture")
def capture(
    model: str = typer.Option(D.model, help="smollm2 (default), gemma3-270m, tiny, tiny:<family>, a local dir, a .gguf, a hub id"),
    task: str = typer.Option(D.task, help=task_choices()),
    layers: str = typer.Option("all", help="activation layers: all (0..L), last:N (the inputs of the last N decoder "
                                           "layers, L-N..L-1, as in tune), or a comma list like 0,14,30 "
                                           "(0 = token embeddings, L = last layer output)"),
    samples: int = typer.Option(2048, help="token activations kept per layer (seeded reservoir)"),
    examples: int = typer.Option(512, help="train examples captured (prompt + answer)"),
    seed: int = typer.Option(0, help="seed of the task's examples and of the reservoirs"),
    batch_size: int = typer.Option(16, help="examples per forward"),
    out: Optional[Path] = typer.Option(None, help="folder for stats.safetensors + meta.json, new or replaced whole "
                                                  "(default: the statistics cache that tuning reuses)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    device_map: str = typer.Option("", help=DEVICE_MAP_HELP),
    offload_dir: str = typer.Option("", help=OFFLOAD_HELP),
    space: str = typer.Option("activation", help="what is captured: activation (hidden states), key or value (each "
                                                 "decoder layer's attention keys or values after RoPE, kv heads "
                                                 "concatenated: the space of a prefix's keys/values; layers 0..L-1)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    allow_pickle_weights: bool = typer.Option(False, help="load a model whose weights exist only as pickle files "
                                              "(unpickling can run code): off unless asked"),
) -> None:
    """Capture per-layer activation statistics (mean, covariance, token samples) of a task, or of its attention
    keys or values (--space)."""
    from eptk import commands

    commands.capture(model, task, layers, samples, examples, seed, batch_size, out, device, progress=not quiet,
                     device_map=device_map, offload_dir=offload_dir, allow_pickle_weights=allow_pickle_weights,
                     space=space)
