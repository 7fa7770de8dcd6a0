"""Starting a private local Ray, or joining a running cluster, with one-line errors.

- Without an address the driver always starts its own Ray (`address="local"`): a plain
  `ray.init()` would join whatever cluster Ray's "current cluster" file names, also a stale one
  left by a head that was killed, and then refuse `num_cpus` (environment.md).
- With an address, Ray 2.60's token authentication (on by default for `ray start --head`) is
  used whenever the user has a token in one of Ray's own places (`RAY_AUTH_TOKEN`,
  `RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token`) and has not chosen a mode (`RAY_AUTH_MODE`): Ray
  itself only does that for `address="auto"`. Ray's gRPC retry lines go to a log file instead of
  the terminal; a refused connection is one line saying what to set.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ablate.errors import CannotRun, StorageNotShared, first_line

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
AUTH_HINT = ("set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head prints it), or "
             "RAY_AUTH_TOKEN_PATH to a file holding it, or copy it to ~/.ray/auth_token")


def default_token_file() -> Path:
    return Path.home() / ".ray" / "auth_token"


def token_source() -> str | None:
    """Where a Ray token is found, in Ray's own order of sources; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if Path(path).expanduser().is_file() else None
    return str(default_token_file()) if default_token_file().is_file() else None


def use_token_if_available() -> str | None:
    """Turn on token authentication for this process and its children when a token is there and
    the user chose no mode; returns the token's source (None: nothing changed)."""
    if os.environ.get(AUTH_MODE) is not None:
        return None
    source = token_source()
    if source is None:
        return None
    _set_mode("token")
    return source


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 into `path` (Ray's C++ core logs gRPC retries there, past Python's logging)."""
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def join(address: str) -> str:
    """Connect to the cluster at `address` ('auto' or host:port); returns a one-line description of it."""
    import ray

    token = None
    if address not in ("auto", "local") and os.environ.get(AUTH_MODE) is None and token_source() is not None:
        if cluster_auth_mode(address) == "disabled":
            _set_mode("disabled")  # the cluster runs without tokens: so must its client
        else:
            token = use_token_if_available()
    log = Path(tempfile.gettempdir()) / f"ablate-ray-connect-{os.getpid()}.log"
    try:
        with stderr_to(log):
            if address not in ("auto", "local") and "://" not in address:
                _knock(address)
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, AuthenticationError, ...
        said = log.read_text(errors="replace") if log.is_file() else ""
        if "InvalidAuthToken" in said or "uthenticat" in f"{type(e).__name__} {e}":
            mode = os.environ.get(AUTH_MODE)
            if token is None and mode is not None and mode != "token":
                raise CannotRun(f"--address {address}: the cluster requires token authentication but "
                                f"{AUTH_MODE}={mode} here; unset it or set it to 'token', and {AUTH_HINT}") from None
            why = (f"the cluster refused the token from {token}" if token else
                   "the cluster requires token authentication and no token was found" if token_source() is None else
                   f"the cluster refused the token from {token_source()}")
            raise CannotRun(f"--address {address}: {why}; {AUTH_HINT}") from None
        raise CannotRun(f"--address {address}: cannot join a Ray cluster there ({first_line(e)}); "
                        f"Ray's own log of the attempt: {log}") from None
    log.unlink(missing_ok=True)
    return describe(address, token)


def _knock(address: str) -> None:
    """One connection to the cluster's GCS before `ray.init`, which retries a refused one about
    20 times a second apart: a cluster that wants a token this client lacks (AuthenticationError)
    or no GCS there (RpcError) is then told in under a second, or in the probe's 10 s timeout."""
    try:
        from ray._raylet import InnerGcsClient
    except ImportError:  # another Ray: ray.init says it, only more slowly
        return
    InnerGcsClient.standalone(address, None, 10_000)


_ASK_MODE = """
import logging, sys, ray
from ray._raylet import AuthenticationMode, get_authentication_mode
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
def mode():
    return get_authentication_mode() == AuthenticationMode.TOKEN
print("token" if ray.get(ray.remote(num_cpus=0, max_retries=0)(mode).remote(), timeout=60) else "disabled")
"""


def cluster_auth_mode(address: str) -> str | None:
    """How the cluster at `address` runs: 'token' or 'disabled', asked of one of its own workers by
    a client in token mode (which a cluster of either kind accepts), in a process of its own: a
    head started without tokens (RAY_AUTH_MODE=disabled, ray.cluster_utils) runs a token client's
    tasks, but every actor of it (every Tune trial) dies before it starts, and a process cannot
    switch modes once Ray is loaded. None when it cannot be told (the join then says why)."""
    import subprocess
    import sys

    env = {**os.environ, AUTH_MODE: "token"}
    try:
        done = subprocess.run([sys.executable, "-c", _ASK_MODE, address], env=env, capture_output=True, text=True,
                              timeout=90)
    except subprocess.TimeoutExpired:
        return None
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines and lines[-1] in ("token", "disabled") else None


def _set_mode(mode: str) -> None:
    os.environ[AUTH_MODE] = mode
    try:  # Ray caches its config at import: refresh it, as Ray does when it turns tokens on itself
        from ray._raylet import Config
        Config.initialize("")
    except Exception:  # noqa: BLE001 - an older or newer Ray without it reads the variable at init
        pass


def describe(address: str, token: str | None = None) -> str:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
    gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)
    gcs = ray.get_runtime_context().gcs_address
    auth = f", token from {token}" if token else ""
    return (f"joined Ray cluster at {gcs} (--address {address}{auth}): {len(nodes)} node(s), {cpus:g} CPU, "
            f"{gpus:g} GPU")


def start_local(num_cpus: int) -> None:
    """A private Ray on this machine, never a cluster named in Ray's 'current cluster' file."""
    import ray

    # a local cluster's workers inherit this environment: OpenMP threads that spin-wait between
    # small ops take cores from the trials beside them
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)


# ---- shared storage: every node must see the output root and the data where the driver does ----

STORAGE_TIMEOUT_S = 120.0  # a node that cannot answer in this time (a hung NFS mount) is named too


def _look(probe: str, token: str, data: list[tuple[str, str | None]], storage: str | None = None
          ) -> tuple[str, list[str]]:
    """On one node: its host name and what it cannot see (the driver's probe file under the output
    root, or at the storage URI; a data source)."""
    import socket

    from core.data_files import missing_data

    problems = []
    if storage is not None:
        from ablate.execution.storage import Storage

        try:
            if Storage(storage).read_probe(probe) != token:
                problems.append(f"the storage {storage} is another place there (a probe file differs)")
        except Exception as e:  # noqa: BLE001 - OSError, StorageError: no route, no credentials, no bucket
            problems.append(f"it cannot read the storage {storage} ({type(e).__name__}: {str(e).strip()[:200]})")
    else:
        try:
            if Path(probe).read_text() != token:
                problems.append(f"the output root {Path(probe).parent} is another folder there (a probe file differs)")
        except OSError as e:
            problems.append(f"it does not see the output root {Path(probe).parent} ({type(e).__name__}: "
                            f"{e.strerror or e})")
    for dataset, root in data:
        problem = missing_data(dataset, root)
        if problem is not None:
            problems.append(f"data: {problem}")
    return socket.gethostname(), problems


def check_shared_storage(out_root: Path, data: list[tuple[str, str | None]],
                         timeout_s: float = STORAGE_TIMEOUT_S, storage=None) -> int:
    """Before anything runs on a joined cluster: a zero-CPU task pinned to each alive node reads a
    probe file the driver wrote under `out_root` (or at the `storage` URI, ablate/execution/storage.py)
    and looks for every (dataset, root). Raises StorageNotShared naming the first node that does not
    see them; returns the number of nodes checked. A stage run on such a node would write its
    results on that node's own disk and be lost."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    out_root = Path(out_root).resolve()
    created = [p for p in (out_root, *out_root.parents) if not p.exists()]
    token = uuid.uuid4().hex
    if storage is not None:
        probe, created = storage.write_probe(token), []
    else:
        out_root.mkdir(parents=True, exist_ok=True)
        probe = out_root / f".storage-probe-{token}"
        probe.write_text(token)
    look = ray.remote(num_cpus=0, max_retries=0)(_look)
    fix = ("every node must reach the storage URI (its network, credentials and bucket)" if storage is not None else
           "every node must mount the output root (--out) and the data at the same paths as the driver (NFS or "
           "another shared filesystem), or give --storage a URI every node reaches")
    try:
        refs = {look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe), token, data, None if storage is None else storage.uri): n for n in nodes}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref, node in refs.items():
            where = f"node {node.get('NodeManagerAddress', '?')} ({node['NodeID'][:12]})"
            if ref not in ready:
                raise StorageNotShared(f"{where} did not answer a storage check within {timeout_s:.0f} s (a hung mount?); "
                                       f"fix or remove the node, then run the same command again")
            host, problems = ray.get(ref)
            if problems:
                raise StorageNotShared(f"{where}, host {host}: {problems[0]}; {fix}")
    finally:
        if storage is not None:
            storage.delete(str(probe))
        else:
            probe.unlink(missing_ok=True)
        for folder in created:  # a refused run leaves nothing under --out
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return len(nodes)
