"""Progress bars on stderr (rich), switched by a `show_progress` flag; shared by every stage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


class ProgressBar:
    """A handle on one task of a rich progress display (or a no-op when disabled)."""

    def __init__(self, progress: Progress | None, task_id: int | None) -> None:
        self._progress = progress
        self._task = task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **kwargs: object) -> None:
        """Change `total`, `completed` or `description` of the bar."""
        if self._progress is not None:
            self._progress.update(self._task, **kwargs)


@contextmanager
def progress_bar(
    description: str, total: float | None = None, unit: str = "frames", enabled: bool = True
) -> Iterator[ProgressBar]:
    """A progress bar with count, rate and ETA on stderr; yields a `ProgressBar`.

    Example:
        >>> with progress_bar("labelling", total=100) as bar:  # doctest: +SKIP
        ...     bar.advance(8)
    """
    if not enabled:
        yield ProgressBar(None, None)
        return
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield ProgressBar(progress, progress.add_task(description, total=total))
