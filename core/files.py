"""One way to write a file that a crash or a full disk never leaves half-written.

`replacing(path)` yields a temporary path beside `path` to write to; when the block ends without
an error the temporary file replaces `path` in one rename (atomic on POSIX), otherwise it is
removed. So a file is whole or as it was before, never half of one. Used by the engines'
checkpoints, the stage store, the results tables and the report; imports nothing heavy, so the
dashboards (which never import torch) use it too.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replacing(path: Path | str, *, sync: bool = False, private: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` (same folder, so the rename stays on one disk) that replaces
    `path` when the block succeeds; `sync` flushes it to the disk first (checkpoints); `private`
    names it after this process, for a file several processes may replace at once (a lease)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp" if private else f"{path.name}.tmp")
    try:
        yield tmp
        if sync:
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> Path:
    """Replace `path` by `text` (UTF-8) atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
