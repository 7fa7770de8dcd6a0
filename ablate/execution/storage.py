"""A storage URI for the stage store (`--storage`), for clusters whose nodes share no POSIX mount.

The stage store stays a folder of files (ablate/execution/store.py); `--storage` adds a copy of it
at a URI that every node reaches: a local path or a mount (`/mnt/shared/runs`, `file:///...`),
`s3://bucket/prefix` (also S3-compatible stores: `?endpoint_override=host:port&scheme=http`), or
any other scheme pyarrow's filesystems open (`gs://`, `hdfs://`), as Ray Train's `storage_path`.
Credentials come from where pyarrow looks for them on each node (for S3: AWS_* variables,
~/.aws, the instance's role); nothing is shipped with the trials.

- A trial runs its stage in a node-local mirror of the store (`mirror_root`): it first copies the
  stage's folder (its checkpoints, to resume) and its parent's (the encoder) down from the URI,
  then copies what changed back up after every epoch and when the stage ends, `result.json` last
  (present = done, as on disk).
- The driver copies each stage's records down into its own `--out` (everything but the resume
  checkpoints and the encoder) when the run starts and whenever a trial reports, so tracking,
  tables, the report and `ablate status` read local files as before.

One driver at a time per URI: the stage leases (ablate/execution/lease.py) need a POSIX folder that
every driver sees, and an object store gives neither `fcntl` nor an atomic rename. A path on a
shared POSIX mount needs no `--storage`: pass it as `--out` and drivers cooperate through it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ablate.errors import first_line
from ablate.execution import store

# Only the trial that resumes the stage reads these (and the child stages read the encoder): the
# driver does not copy them down.
TRIAL_ONLY = ("checkpoint-last.pth", "checkpoint-prev.pth", "encoder.pth")
NEVER = ("lease.json",)  # a lease is about one machine's processes: it stays in the mirror


class StorageError(Exception):
    """The storage URI cannot be opened or read; the message is one line naming it."""


def _trial_only(name: str) -> bool:
    return name.removesuffix(".sha256") in TRIAL_ONLY


def _skipped(name: str) -> bool:
    return name in NEVER or name.endswith(".tmp")


@dataclass
class Storage:
    """The stage store's copy at `uri` (picklable: it travels to the trials as the URI alone)."""

    uri: str
    _fs: object | None = field(default=None, repr=False, compare=False)
    _root: str = field(default="", repr=False, compare=False)
    _sent: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)
    _cleared: set[str] = field(default_factory=set, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"])

    @property
    def fs(self):
        if self._fs is None:
            import pyarrow.fs as pafs

            uri = self.uri
            if "://" not in uri:  # a plain path: absolute, as every node must read it the same
                uri = Path(uri).expanduser().resolve().as_uri()
            try:
                self._fs, self._root = pafs.FileSystem.from_uri(uri)
            except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError: an unknown scheme, a bad query
                raise StorageError(f"--storage {self.uri}: {first_line(e)}") from None
            self._root = self._root.rstrip("/")
        return self._fs

    def _key(self, *parts: str) -> str:
        self.fs  # noqa: B018 - opens it, setting the root
        return "/".join([self._root, *parts])

    # ---- files -------------------------------------------------------------------------------

    def _listing(self, stage_id: str) -> list[str]:
        """The names of the stage's files at the URI, `result.json` last ([] when it has none)."""
        import pyarrow.fs as pafs

        folder = self._key("stages", stage_id)
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=False))
        return sorted((info.base_name for info in infos if info.type == pafs.FileType.File),
                      key=lambda name: name == store.RESULT)

    def _download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(key) as source:
            data = source.read()
        from core.files import replacing

        with replacing(target, private=True) as tmp:  # whole or not at all, also beside a reader
            tmp.write_bytes(data)

    def _upload(self, source: Path, key: str) -> None:
        import pyarrow.fs as pafs

        data = source.read_bytes()
        if isinstance(self.fs, pafs.LocalFileSystem):  # a mount: a temporary name, then a rename
            self.fs.create_dir(key.rsplit("/", 1)[0], recursive=True)
            tmp = f"{key}.{os.getpid()}.tmp"
            with self.fs.open_output_stream(tmp) as sink:
                sink.write(data)
            self.fs.move(tmp, key)
            return
        with self.fs.open_output_stream(key) as sink:  # an object store: an object appears whole
            sink.write(data)

    def pull(self, out_root: Path, stage_id: str, what: str = "records") -> None:
        """Copy the stage's files from the URI into `<out_root>/stages/<id>/`: its records (what the
        driver reads), with the encoder (what a child stage reads), or everything (`resume`: what
        the trial that runs it reads, its checkpoints too). A file that never changes once written
        (config.json, result.json) is not copied again, and the records of a stage done here are
        final: `result.json` is written last at the URI and copied last here."""
        folder = store.stage_dir(out_root, stage_id)
        if what == "records" and (folder / store.RESULT).is_file():
            return
        for name in self._listing(stage_id):
            if _skipped(name) or (_trial_only(name) and what == "records"):
                continue
            if what == "encoder" and _trial_only(name) and not name.startswith("encoder"):
                continue
            local = folder / name
            if name in (store.CONFIG, store.RESULT) and local.is_file():
                continue
            self._download(self._key("stages", stage_id, name), local)

    def push(self, out_root: Path, stage_id: str) -> None:
        """Copy what changed in the stage's local folder to the URI; `result.json` goes last, so a
        stage is done at the URI only once everything it wrote is there. An error record cleared
        here (a retry starts by clearing it) is cleared there too."""
        folder = store.stage_dir(out_root, stage_id)
        if not folder.is_dir():
            return
        files = sorted((p for p in folder.iterdir() if p.is_file() and not _skipped(p.name)),
                       key=lambda p: p.name == store.RESULT)
        for path in files:
            stat = path.stat()
            seen = (stat.st_size, stat.st_mtime_ns)
            if self._sent.get(str(path)) == seen:
                continue
            self._upload(path, self._key("stages", stage_id, path.name))
            self._sent[str(path)] = seen
        if (folder / store.ERROR).is_file():
            self._cleared.discard(stage_id)
        elif stage_id not in self._cleared:
            try:
                self.fs.delete_file(self._key("stages", stage_id, store.ERROR))
            except OSError:  # FileNotFoundError: there was none
                pass
            self._cleared.add(stage_id)

    def pull_records(self, out_root: Path, stage_ids: Iterable[str]) -> None:
        """The driver's copy of every given stage's records (at the start of a run)."""
        for stage_id in stage_ids:
            self.pull(out_root, stage_id)

    def check(self) -> None:
        """Open the URI and write, read and delete a probe there; StorageError says what failed."""
        import uuid

        token = uuid.uuid4().hex
        try:
            self.fs.create_dir(self._root, recursive=True)
            key = self.write_probe(token)
            if self.read_probe(key) != token:
                raise StorageError(f"--storage {self.uri}: a file written there reads back differently")
            self.fs.delete_file(key)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - OSError from pyarrow: no such bucket, access denied, no network
            raise StorageError(f"--storage {self.uri}: cannot write and read there ({first_line(e)})") from None

    def write_probe(self, token: str) -> str:
        key = self._key(f".storage-probe-{token}")
        with self.fs.open_output_stream(key) as sink:
            sink.write(token.encode())
        return key

    def read_probe(self, key: str) -> str:
        with self.fs.open_input_stream(key) as source:
            return source.read().decode()

    def delete(self, key: str) -> None:
        try:
            self.fs.delete_file(key)
        except OSError:
            pass


def mirror_root(uri: str) -> Path:
    """This node's working copy of the store at `uri` (one per URI, in the node's temporary folder)."""
    return Path(tempfile.gettempdir()) / "ablate-mirror" / hashlib.sha1(uri.encode()).hexdigest()[:16]
