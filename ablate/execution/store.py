"""The stage store: one folder per stage, shared by every study under an output root.

    <out_root>/stages/<stage_id>/
        config.json      resolved config, written when the stage starts
        metrics.jsonl    one line per reported epoch, with the time it was recorded (`TIME`); a
                         retry resumed from an older checkpoint repeats an epoch: the first counts
        result.json      final metrics, written atomically last: present = done
        error.txt        why it failed for good (absent while it can still succeed)
        warnings.jsonl   warnings the stage's own code raised (a damaged checkpoint skipped, ...)
        ...              the core function's own files (checkpoints, encoder.pth, reconstructions.npz)

A stage is done when `result.json` exists, failed when `error.txt` exists without it, pending
otherwise; rerunning a study is resuming it. The study's own folder is `<out_root>/<study name>/`.

Files are replaced atomically (a temporary file, then a rename; the temporary file is removed when
the write fails), so a full or read-only disk leaves the previous version or nothing, never half a
file: an error record that cannot be written leaves the stage pending, and a rerun resumes it.
"""
from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from core.files import write_text

DONE, FAILED, PENDING, BLOCKED = "done", "failed", "pending", "blocked"  # blocked: a parent failed
PRUNED = "pruned"  # a search's candidate its pruner stopped: ended, with no result (ablate/execution/search.py)
CONFIG, METRICS, RESULT, ERROR = "config.json", "metrics.jsonl", "result.json", "error.txt"
PRUNE = "pruned.json"  # why and at which epoch a candidate was pruned
WARNINGS = "warnings.jsonl"
TIME = "time_ms"  # in each metrics.jsonl line: when the epoch was recorded (ms), its MLflow timestamp
META = "stage.json"  # the stage's attempts: when, which process, which host, Ray node and device
DEFAULT_OUT = Path("runs")
# The disk refused a write: full, over quota or read-only. Not a stage's fault: nothing to retry
# until someone frees space, so the study stops and a rerun resumes it.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def stages_root(out_root: Path) -> Path:
    return Path(out_root) / "stages"


def stage_dir(out_root: Path, stage_id: str) -> Path:
    return stages_root(out_root) / stage_id


def study_dir(out_root: Path, study_name: str) -> Path:
    return Path(out_root) / study_name


def write_json_atomic(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """One JSON line at the end of `path`. A line cut short by a crash or a full disk is ended
    first, so the new line is never glued onto it (readers skip the cut one)."""
    with Path(path).open("a+b") as f:
        f.seek(0, os.SEEK_END)
        cut = False
        if f.tell():
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        f.write((b"\n" if cut else b"") + json.dumps(row).encode() + b"\n")


def storage_error(exc: BaseException | None) -> OSError | None:
    """The OSError in `exc` or its causes that says the disk refused a write (STORAGE_ERRNOS)."""
    return next((e for e in causes(exc) if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS), None)


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on: a worker's exception comes back wrapped in Ray's
    RayTaskError, the original as `.cause`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__


def check_writable(*folders: Path) -> None:
    """Raise the OSError of a disk that refuses a small write (full, over quota, read-only)."""
    for folder in folders:
        probe = Path(folder) / ".write-probe"
        try:
            with probe.open("wb") as f:
                f.write(bytes(4096))
                f.flush()
                os.fsync(f.fileno())
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def state(out_root: Path, stage_id: str) -> str:
    folder = stage_dir(out_root, stage_id)
    if (folder / RESULT).is_file():
        return DONE
    if (folder / ERROR).is_file():
        return FAILED
    if (folder / PRUNE).is_file():
        return PRUNED
    return PENDING


def states(out_root: Path, stage_ids: Iterable[str], parents: dict[str, str | None]) -> dict[str, str]:
    """Each stage's state; a pending stage whose parent failed (or is blocked) is blocked."""
    out = {sid: state(out_root, sid) for sid in stage_ids}
    for sid in out:  # parents come first in a plan's order
        parent = parents.get(sid)
        if out[sid] == PENDING and parent is not None and out.get(parent) in (FAILED, BLOCKED):
            out[sid] = BLOCKED
    return out


def numerics_of(done: dict[str, Any]) -> int:
    """The numerics version a finished stage was computed with (stages from before versions: 1)."""
    return int(done.get("numerics", 1))


def stale(out_root: Path, runners: dict[str, str]) -> dict[str, int]:
    """Finished stages (stage id -> its engine, `Stage.runner`) computed by another numerics version
    of their engine than this code's (core.NUMERICS_VERSION) that the user has not chosen to keep:
    stage id -> the version they were computed with."""
    import core

    out = {}
    for sid, runner in runners.items():
        done = result(out_root, sid)
        now = core.NUMERICS_VERSION[runner]
        if done is not None and numerics_of(done) != now and now not in done.get("numerics_kept", []):
            out[sid] = numerics_of(done)
    return out


def keep_stale(out_root: Path, stage_id: str, runner: str) -> None:
    """The user keeps a stage of another numerics version: recorded in its result.json."""
    import core

    path = stage_dir(out_root, stage_id) / RESULT
    done = read_json(path)
    kept = sorted({*done.get("numerics_kept", []), core.NUMERICS_VERSION[runner]})
    write_json_atomic(path, {**done, "numerics_kept": kept})


def set_aside(out_root: Path, stage_id: str) -> Path:
    """Move a stage's folder out of the way (to `<id>.numerics-<v>`, kept) so the stage runs anew."""
    folder = stage_dir(out_root, stage_id)
    base = folder.with_name(f"{stage_id}.numerics-{numerics_of(result(out_root, stage_id) or {})}")
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    os.replace(folder, target)
    return target


RESUME_FILES = ("checkpoint-last.pth", "checkpoint-prev.pth")  # with their .sha256: only a resume reads them


def _folders(out_root: Path, stage_ids: Iterable[str] | None) -> list[Path]:
    """The stage folders under the output root, or those of `stage_ids` that exist."""
    if stage_ids is not None:
        return [f for f in (stage_dir(out_root, sid) for sid in stage_ids) if f.is_dir()]
    root = stages_root(out_root)
    return sorted(f for f in root.iterdir() if f.is_dir()) if root.is_dir() else []


def resume_files(out_root: Path, stage_ids: Iterable[str] | None = None) -> list[Path]:
    """The resume checkpoints of finished stages (all, or of `stage_ids`; a pruned candidate is
    finished too): nothing reads them again (children read the parent's encoder.pth; a done or
    pruned stage is never resumed), and they are most of the store."""
    return [folder / f"{n}{ext}" for folder in _folders(out_root, stage_ids)
            if (folder / RESULT).is_file() or (folder / PRUNE).is_file()
            for n in RESUME_FILES for ext in ("", ".sha256") if (folder / f"{n}{ext}").is_file()]


def disk_usage(out_root: Path, stage_ids: Iterable[str] | None = None) -> tuple[int, int, int]:
    """(stage folders, bytes, bytes of resume files `ablate clean` would free) of the whole stage
    store, or of the folders of `stage_ids` (one study's share: a stage shared by studies counts
    in each)."""
    folders = _folders(out_root, stage_ids)
    ids = None if stage_ids is None else [f.name for f in folders]
    return len(folders), size_of(p for f in folders for p in f.rglob("*") if p.is_file()), \
        size_of(resume_files(out_root, ids))


def size_of(files: Iterable[Path]) -> int:
    """Bytes of `files` (each a file)."""
    return sum(p.stat().st_size for p in files)


def result(out_root: Path, stage_id: str) -> dict[str, Any] | None:
    return read_json(stage_dir(out_root, stage_id) / RESULT)


def pruned(out_root: Path, stage_id: str) -> dict[str, Any]:
    """Why and when a search's pruner stopped the stage (pruned.json); {} where it did not."""
    return read_json(stage_dir(out_root, stage_id) / PRUNE) or {}


def error(out_root: Path, stage_id: str) -> str | None:
    path = stage_dir(out_root, stage_id) / ERROR
    return path.read_text() if path.is_file() else None


def error_line(out_root: Path, stage_id: str) -> str:
    """The last non-empty line of error.txt: the exception, for tables."""
    text = error(out_root, stage_id) or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def write_error(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / ERROR, text if text.endswith("\n") else text + "\n")


def clear_error(folder: Path) -> None:
    """Keep the old error beside the stage (error-<time>.txt) and make it pending again."""
    path = folder / ERROR
    if path.is_file():
        os.replace(path, folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}.txt")


def epochs(out_root: Path, stage_id: str, *, timed: bool = False) -> list[dict[str, Any]]:
    """The per-epoch reports, one per epoch in epoch order. An epoch repeated by a retry that
    resumed from an older checkpoint counts as first recorded (on CPU the repeat is bit-identical;
    MLflow holds the first). `timed` keeps each line's recording time (`TIME`), not a metric."""
    path = stage_dir(out_root, stage_id) / METRICS
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        by_epoch.setdefault(row.get("epoch"), row)
    rows = [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (e is None, e))]
    return rows if timed else [{k: v for k, v in row.items() if k != TIME} for row in rows]


def warnings(out_root: Path, stage_id: str) -> list[dict[str, Any]]:
    """The warnings a stage recorded (`{"time", "message"}` each), oldest first."""
    path = stage_dir(out_root, stage_id) / WARNINGS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "message" in row:
            out.append(row)
    return out


def attempts(out_root: Path, stage_id: str) -> list[dict[str, Any]]:
    """The stage's attempts, oldest first: `started_at`, `pid`, `host`, `device` and, under Ray, `ray_node_id`."""
    meta = read_json(stage_dir(out_root, stage_id) / META)
    rows = meta.get("attempts") if isinstance(meta, dict) else None
    return [a for a in rows if isinstance(a, dict)] if isinstance(rows, list) else []


def ran_on(out_root: Path, stage_id: str) -> str:
    """'host (device)' of the stage's last attempt; '' before its first."""
    tried = attempts(out_root, stage_id)
    if not tried or "host" not in tried[-1]:
        return ""
    last = tried[-1]
    return f"{last['host']} ({last.get('device', '?')})"
