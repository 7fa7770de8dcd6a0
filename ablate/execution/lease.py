"""Who runs a stage: a lease file in the stage's folder, naming its owner, kept alive by a heartbeat.

Several drivers (people, studies) may share one output root, on one machine or on a POSIX shared
mount (NFS) seen by several. A stage runs in exactly one place at a time:

- `lease.json` is created with O_CREAT | O_EXCL (atomic on local disks and on NFS v3 and later);
  it names its owner (host, pid, start time) and the time of its last heartbeat;
- the owner's heartbeat thread rewrites it every BEAT_S seconds (an atomic replace);
- a lease is stale when its owner is gone: on the same host, its pid no longer runs (exited,
  also when not yet reaped: a zombie); anywhere,
  its heartbeat is older than STALE_S (clocks of the machines sharing a root are assumed to be
  within a few seconds of each other, as NTP keeps them). A stale lease is taken over: renamed
  aside (only one of several takers can rename it), then created anew;
- the owner removes it when the stage ends (done, failed or stopped).

Object stores (`s3://`) have no exclusive create: there, one driver at a time.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.files import replacing

LEASE = "lease.json"
BEAT_S = 5.0
STALE_S = 30.0


@dataclass(frozen=True)
class Holder:
    """The owner a lease names."""

    host: str
    pid: int
    started: float
    beat: float

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}"

    def gone(self, now: float | None = None) -> bool:
        """Its process is gone (same host) or its heartbeat stopped (any host)."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not process_running(self.pid):
            return True
        return now - self.beat > STALE_S


def process_running(pid: int) -> bool:
    """The process exists on this host and has not exited. A zombie (dead, not yet reaped by its
    parent, as a killed driver's trial worker can stay for a while) holds nothing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux): os.kill's answer stands
        return True


def holder(folder: Path) -> Holder | None:
    """Who holds the stage folder's lease; None when nobody does (or the file is unreadable)."""
    try:
        data = json.loads((Path(folder) / LEASE).read_text())
        return Holder(str(data["host"]), int(data["pid"]), float(data["started"]), float(data["beat"]))
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def live_holder(folder: Path) -> Holder | None:
    """The lease's owner when it is alive; None when nobody holds it or its owner is gone."""
    found = holder(folder)
    return None if found is None or found.gone() else found


class Lease:
    """The right to run one stage. `acquire()` takes it (taking over a stale one) or returns the
    live holder; while held, a daemon thread keeps its heartbeat; `release()` gives it back."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LEASE
        self.me = Holder(socket.gethostname(), os.getpid(), time.time(), time.time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, beat: float) -> bytes:
        return json.dumps({"host": self.me.host, "pid": self.me.pid, "started": self.me.started,
                           "beat": beat}).encode()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._record(time.time()))
        except BaseException:  # a full disk: no empty lease left behind, the error is the caller's
            self.path.unlink(missing_ok=True)
            raise
        return True

    def acquire(self) -> Holder | None:
        """Take the lease: None when taken (now ours), else the live holder that keeps it."""
        for _ in range(3):  # created; or a stale one moved aside, then created
            if self._create():
                self._start_heartbeat()
                return None
            found = holder(self.path.parent)
            if found is not None and not found.gone():
                if (found.host, found.pid) == (self.me.host, self.me.pid):  # ours already (a retry in process)
                    self._start_heartbeat()
                    return None
                return found
            aside = self.path.with_name(f"{LEASE}.stale-{time.time_ns()}")
            try:
                os.replace(self.path, aside)  # one taker wins; the others find a fresh lease next
                aside.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        found = holder(self.path.parent)
        return found if found is not None else self.me

    def beat(self) -> None:
        """Refresh the heartbeat (the thread does this every BEAT_S seconds), unless the lease was
        taken over meanwhile (this process stalled past STALE_S)."""
        found = holder(self.path.parent)
        if found is None or (found.host, found.pid) != (self.me.host, self.me.pid):
            return
        with replacing(self.path, private=True) as tmp:  # a full disk: the old beat stays, whole
            tmp.write_bytes(self._record(time.time()))

    def _start_heartbeat(self) -> None:
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(BEAT_S):
                try:
                    self.beat()
                except OSError:  # a full disk: the lease may go stale, and someone takes over
                    pass

        self._thread = threading.Thread(target=run, name=f"lease {self.path.parent.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=BEAT_S)
            self._thread = None
        found = holder(self.path.parent)
        if found is not None and (found.host, found.pid) == (self.me.host, self.me.pid):
            self.path.unlink(missing_ok=True)
