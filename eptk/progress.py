"""The one progress bar: `eptk tune`'s steps, a sweep's runs, analyze's runs, and long steps that are not a
training loop (captures, VAE training, generation)."""
from __future__ import annotations

from contextlib import contextmanager


class Bar:
    """A rich bar `title | bar | done/total | texts… | elapsed (or, with eta, remaining)`, started at once;
    nothing at all when not `enabled`. `texts` are rich TextColumn templates (`{task.fields[loss]}`,
    `{task.description}`); `fields` are the fields' starting values."""

    def __init__(self, enabled: bool, title: str, total: int | None, *texts: str, completed: int = 0,
                 description: str = "", console=None, transient: bool = False, eta: bool = False, **fields):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.progress = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), *map(TextColumn, texts),
                                 TimeRemainingColumn() if eta else TimeElapsedColumn(), console=console,
                                 transient=transient)
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, completed=completed, **fields)

    def advance(self, n: int = 1, **fields) -> None:
        """n more done (0: only new field values or `description`)."""
        if self.enabled and (n or fields):
            self.progress.update(self.task, advance=n, **fields)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def progress_bar(enabled: bool, description: str, total: int | None):
    """Yields `advance(n=1)`; draws a bar (removed when done) only when `enabled`."""
    with Bar(enabled, "{task.description}", total, description=description, transient=True) as bar:
        yield bar.advance
