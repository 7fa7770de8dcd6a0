"""A per-epoch progress bar on an interactive terminal; silent otherwise (logs, Ray workers, CI)."""
from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    def __init__(self, description: str, total: int):
        self._bar = None
        if sys.stderr.isatty():
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True)
            self._task = self._bar.add_task(description, total=total, status="")

    def __enter__(self) -> EpochProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def update(self, **fields: float) -> None:
        if self._bar is not None:
            status = "  ".join(f"{k} {v:.4f}" for k, v in fields.items())
            self._bar.update(self._task, advance=1, status=status)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
