"""A progress bar on stderr that appears only for work that takes more than a moment."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class DelayedProgress:
    """A rich progress bar on stderr, shown once the work has run for ``delay`` seconds.

    Short runs print nothing; ``--json`` output on stdout is never touched.
    """

    def __init__(self, description: str, total: int, delay: float = 1.0, enabled: bool = True) -> None:
        self.description = description
        self.total = total
        self.delay = delay
        self.enabled = enabled and sys.stderr is not None
        self._progress: Progress | None = None
        self._task = None
        self._started = time.perf_counter()

    def __enter__(self) -> "DelayedProgress":
        self._started = time.perf_counter()
        return self

    def update(self, completed: int, status: str = "") -> None:
        """Set the completed count and a short status text."""
        if not self.enabled:
            return
        if self._progress is None:
            if time.perf_counter() - self._started < self.delay:
                return
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, status="")
        self._progress.update(self._task, completed=completed, status=status)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
