"""The last resort: an exception nothing else caught becomes one line and a traceback file.

The line names what failed (the exception and where it was raised) and where the full traceback
was written: the study's folder once it exists (set by the command with `write_into`), otherwise
the user's cache folder (`$XDG_CACHE_HOME/mae-ablate`, `~/.cache/mae-ablate`, or the temp folder),
so a run refused early still creates nothing under `--out`. This path never raises itself.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path

_folder: Path | None = None  # the study folder, once the command knows it exists


def write_into(folder: Path | None) -> None:
    """Crash logs of this command go into `folder` (when it exists at the time of the crash)."""
    global _folder
    _folder = Path(folder) if folder is not None else None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mae-ablate"


def _candidates() -> list[Path]:
    out = [_folder] if _folder is not None and _folder.is_dir() else []
    return out + [cache_dir(), Path(tempfile.gettempdir()) / "mae-ablate"]


def write_log(error: BaseException) -> Path | None:
    """The traceback in the first folder that takes it; None if none does (a full disk)."""
    text = "".join(traceback.format_exception(error))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in _candidates():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = (folder / name).absolute()
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def origin(error: BaseException) -> str:
    """'ablate/planning/plan.py:123 in _plan': the innermost frame of the exception."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    last = frames[-1]
    here = Path(last.filename)
    try:
        here = here.relative_to(Path(__file__).resolve().parents[2])
    except ValueError:
        pass
    return f"{here}:{last.lineno} in {last.name}"


def report(error: BaseException) -> str:
    """One line for the terminal; the traceback goes to a file."""
    try:
        message = " ".join(str(error).split())[:300]
        what = f"{type(error).__name__}: {message}" if message else type(error).__name__
        path = write_log(error)
        where = f"full traceback in {path}" if path else "the traceback could not be written (disk full?)"
        return f"ablate: unexpected error {what} (at {origin(error)}); {where}; please report it with that file"
    except BaseException:  # noqa: BLE001 - the last resort must not raise
        return f"ablate: unexpected error {type(error).__name__}"
