"""A transient progress bar for long steps that are not a training loop (captures, VAE training, generation)."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_bar(enabled: bool, description: str, total: int | None):
    """Yields `advance(n=1)`; draws a rich bar (removed when done) only when `enabled`."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
