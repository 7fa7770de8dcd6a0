"""Warnings a stage's own code raises, kept in the stage's folder so that the user sees them.

A trial's stderr never reaches the terminal (`ray.init(log_to_driver=False)` keeps Ray's worker
logs off it), so a warning such as "checkpoint-last.pth: checksum mismatch (file truncated or
corrupted); falling back to the previous checkpoint" would be lost. While a stage runs,
`recording(folder)` appends every warning raised from core/ or ablate/ to
`<stage folder>/warnings.jsonl`; the live view prints those recorded since the run started,
`ablate status` lists them, and the stage's MLflow run carries them in its `warnings` tag.
Library warnings (torch, timm) stay in the worker's log only.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ablate.execution import store

OWN_MODULES = r"(core|ablate)(\.|$)"
OWN_DIRS = tuple(Path(__file__).resolve().parents[2] / name for name in ("core", "ablate"))


def _ours(filename: str) -> bool:
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(d) for d in OWN_DIRS)


def add(folder: Path, message: str) -> None:
    store.append_jsonl(Path(folder) / store.WARNINGS, {"time": time.time(), "message": message})


@contextmanager
def recording(folder: Path) -> Iterator[None]:
    """Record our own warnings raised inside the block in `folder` (and still show them as usual)."""
    with warnings.catch_warnings():  # restores the filters and `showwarning` on the way out
        warnings.filterwarnings("always", module=OWN_MODULES)  # a resumed stage warns again in a reused worker
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if _ours(filename):
                text = str(message) if category is UserWarning else f"{category.__name__}: {message}"
                try:
                    add(folder, text)
                except OSError:  # a full disk must not turn a warning into a failure
                    pass
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
