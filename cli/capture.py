"""`eptk capture`: activation statistics of a model on a task's train examples (thin over eptk.capture)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command("capture")
def capture(
    model: str = typer.Option("smollm2", help="smollm2 (default), tiny, tiny:<family>, a local dir, a .gguf, a hub id"),
    task: str = typer.Option("arith", help="arith[:OPS[:DIGITS]], qa, fill, squad, math, c4, hf:<name>, jsonl:<path>"),
    layers: str = typer.Option("all", help="activation layers: all (0..L), last:N, or a comma list like 0,14,30 "
                                           "(0 = token embeddings, L = last layer output)"),
    samples: int = typer.Option(2048, help="token activations kept per layer (seeded reservoir)"),
    examples: int = typer.Option(512, help="train examples captured (prompt + answer)"),
    seed: int = typer.Option(0, help="seed of the task's examples and of the reservoirs"),
    batch_size: int = typer.Option(16, help="examples per forward"),
    out: Optional[Path] = typer.Option(None, help="folder for stats.safetensors + meta.json "
                                                  "(default: the statistics cache that tuning reuses)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Capture per-layer activation statistics (mean, covariance, token samples) of a task."""
    import torch
    from rich.console import Console

    from eptk.capture import capture_task, ensure_stats, parse_capture_layers, stats_folder
    from eptk.errors import EptkUsageError
    from eptk.models import load_model, model_dims
    from eptk.train import resolve_device

    if samples < 1 or examples < 1 or batch_size < 1:
        raise EptkUsageError("--samples, --examples and --batch-size must be at least 1")
    dev = resolve_device(device)
    loaded = load_model(model, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    dims = model_dims(loaded.model)
    chosen = parse_capture_layers(layers, dims["num_layers"])
    if out is None:
        stats = ensure_stats(loaded, model, task, chosen, samples=samples, seed=seed, n_examples=examples,
                             batch_size=batch_size, progress=not quiet)
        folder = stats_folder(loaded, model, task, chosen, samples, seed, examples)
    else:
        stats = capture_task(loaded, model, task, chosen, samples=samples, seed=seed, n_examples=examples,
                             batch_size=batch_size, progress=not quiet)
        folder = stats.save(out)
    tokens = int(stats.gaussians[chosen[0]].count)
    Console().print(f"activation statistics of {model} on {task}: layers {layers} ({len(chosen)}), "
                    f"{stats.meta.get('sequences', '?')} sequences, {tokens} tokens (padding, BOS, first tokens and massive activations excluded)\n"
                    f"written to {folder}")
