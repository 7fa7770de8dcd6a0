"""One trial data-parallel over several Ray workers: `run_data_parallel(fn, job, out_dir, ...)`.

`fn(job, out_dir, report)` is an engine such as `core.pretrain.pretrain` that reads its rank from
torch.distributed (core/distributed.py). Here it runs once per worker under Ray Train's
`TorchTrainer` (DDP over gloo on CPU, NCCL on GPU) inside the Ray cluster the caller is connected
to: from a driver script, or from inside a Ray Tune trial (the trial then only waits; the workers
hold the resources).

- Before anything starts, the cluster is checked for `workers` x (cpus, gpus) per worker, each
  worker on one node: a trial that can never be placed raises ValueError in one line instead of
  waiting forever.
- Rank 0's `report(metrics)` crosses to the caller's process through a Ray queue and waits there
  until the caller's `report` has returned, so per-epoch metrics arrive live and in order, in the
  caller's thread (Tune's `tune.report` included). If the caller's `report` raises, training
  stops and that exception is raised here (after the checkpoint of the epoch, as in-process).
- A worker's exception is raised here as itself (a NonFiniteLoss stays one), not wrapped.
- `out_dir` must be one folder for all workers: rank 0 writes it, every rank reads the checkpoint
  from it when resuming. On one machine any local path; across nodes a path on storage every
  node mounts at the same place (NFS, a cluster file system), as the study's output root.
- Workers run with `OMP_WAIT_POLICY=PASSIVE` and as many torch threads as CPUs per worker:
  idle OpenMP threads that spin slow everything down on small machines.

Ray Train's own run state goes to a temporary folder (the engine checkpoints into `out_dir`
itself), so resuming means calling this again with the same `out_dir`, on any number of workers.
"""
from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ray

Report = Callable[[dict], None]
Engine = Callable[[Any, Path, Report | None], dict]

WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
# Ray Train's controller notices that its workers finished by polling them, every 2 s by default,
# which a short stage waits out at its end. Ray Train carries this variable from the process that
# calls fit() to its controller. Measured on a 2-core Xeon, a 2-worker run that does nothing: 3.3 s
# from rank 0's return to fit()'s at 2 s, 1.4 s at 0.1 s. A user's own setting is kept.
HEALTH_CHECK_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
_POLL_S = 0.2
_EPS = 1e-9


# ---- can the cluster hold the trial? -------------------------------------------------------------

def _amount(value: float) -> str:
    return f"{value:g}"


def resource_shortfall(workers: int, per_worker: Mapping[str, float],
                       nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why `workers` workers of `per_worker` resources can never run on these nodes, or None.

    Each worker must fit on one node, so besides the cluster's totals the per-node packing counts.
    """
    # Accelerators first: "needs 4 x 1 GPU" is the line to read even when CPUs are short too.
    needed = {k: v for k, v in sorted(per_worker.items(), key=lambda kv: (kv[0] == "CPU", kv[0])) if v > 0}
    desc = " + ".join(f"{_amount(v)} {k}" for k, v in needed.items())
    for name, amount in needed.items():
        total = sum(node.get(name, 0.0) for node in nodes)
        if total + _EPS < workers * amount:
            return f"trial needs {_times(workers)}{_amount(amount)} {name}; the cluster has {_amount(total)} {name}"
    fit = workers_that_fit(needed, nodes) if needed else workers
    if fit < workers:
        if workers == 1:
            return f"trial needs {desc} on one node; no node of the cluster has that"
        return (f"trial needs {workers} workers x {desc}, each on one node; the cluster's nodes "
                f"hold only {fit} such workers")
    return None


def _times(workers: int) -> str:
    return "" if workers == 1 else f"{workers} workers x "


def workers_that_fit(per_worker: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """How many workers of `per_worker` resources these nodes hold at once, each on one node."""
    needed = {k: v for k, v in per_worker.items() if v > 0}
    if not needed:
        raise ValueError("a worker must need some resource, got none")
    return sum(min(math.floor(node.get(k, 0.0) / v + _EPS) for k, v in needed.items()) for node in nodes)


def trials_that_fit(workers: int, per_worker: Mapping[str, float]) -> int:
    """How many trials of `workers` such workers the connected cluster's live nodes run at once."""
    return workers_that_fit(per_worker, _live_nodes()) // workers


def check_cluster(workers: int, per_worker: Mapping[str, float]) -> None:
    """Raise ValueError when the connected Ray cluster's live nodes can never place the workers.

    Called from inside a Ray task or actor (a Tune trial), what the caller itself holds for its
    whole run is not available to its workers and is left out.
    """
    held_node, held = _held_by_caller()
    nodes = _live_nodes(held_node, held)
    reason = resource_shortfall(workers, per_worker, nodes)
    if reason is not None:
        holding = ", ".join(f"{_amount(v)} {k}" for k, v in held.items() if k in per_worker and v > 0)
        raise ValueError(reason + (f" besides the {holding} the calling trial holds" if holding else ""))


def _live_nodes(held_node: str | None = None, held: Mapping[str, float] | None = None) -> list[dict[str, float]]:
    """Each live node's total resources, less `held` on node `held_node`."""
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = dict(node["Resources"])
        if held and node.get("NodeID") == held_node:
            resources = {k: v - held.get(k, 0.0) for k, v in resources.items()}
        nodes.append(resources)
    return nodes


def _held_by_caller() -> tuple[str | None, dict[str, float]]:
    """(node id, resources) this process holds as a Ray task or actor; (None, {}) in a driver."""
    context = ray.get_runtime_context()
    try:
        return context.get_node_id(), dict(context.get_assigned_resources())
    except AssertionError:  # not a worker process: a driver holds nothing
        return None, {}


# ---- rank 0 -> caller ----------------------------------------------------------------------------

class _Stopped(Exception):
    """Rank 0's side of a caller whose `report` raised: end training now."""


class ReportChannel:
    """Two Ray queues between rank 0 and the caller: messages up, acknowledgements down."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        # num_cpus=0: the queues must not take a CPU the workers need.
        self.up = Queue(actor_options={"num_cpus": 0})
        self.down = Queue(actor_options={"num_cpus": 0})

    # worker side
    def report(self, metrics: dict) -> None:
        self.up.put(("epoch", metrics))
        if not self.down.get():
            raise _Stopped("the caller's report raised; stopping")

    def finish(self, result: dict) -> None:
        self.up.put(("result", result))

    # caller side
    def next(self, timeout: float) -> tuple[str, Any] | None:
        from ray.util.queue import Empty

        try:
            return self.up.get(timeout=timeout)
        except (Empty, queue.Empty):
            return None

    def answer(self, go_on: bool) -> None:
        self.down.put(go_on)

    def close(self) -> None:
        for q in (self.up, self.down):
            q.shutdown()


def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker, with torch.distributed already initialised by TorchTrainer."""
    import torch
    from ray import train

    torch.set_num_threads(config["threads"])
    channel: ReportChannel = config["channel"]
    rank = train.get_context().get_world_rank()
    result = config["fn"](config["job"], Path(config["out_dir"]), channel.report if rank == 0 else None)
    if rank == 0:
        channel.finish(dict(result or {}))


def _original_error(error: BaseException) -> BaseException:
    """The exception a worker raised, out of Ray Train's and Ray's wrappers."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        # The rank that failed on its own, not one torn down after it (or a stop we asked for).
        candidates = [failures[rank] for rank in sorted(failures)]
        error = next((e for e in candidates if not _is_teardown(e)), candidates[0])
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError keeps the user's exception here
    return cause if isinstance(cause, BaseException) else error


def _is_teardown(error: BaseException) -> bool:
    """A rank that failed because another one did: its peer vanished from a collective, or it was
    killed. Told by type; gloo alone says it only in the text of a plain RuntimeError."""
    import ray.exceptions
    import torch.distributed

    teardown = (_Stopped, torch.distributed.DistBackendError, ray.exceptions.ActorDiedError,
                ray.exceptions.ActorUnavailableError, ray.exceptions.WorkerCrashedError)
    cause = getattr(error, "cause", None)
    return isinstance(error, teardown) or isinstance(cause, teardown) or "Connection closed by peer" in str(error)


# ---- the call ------------------------------------------------------------------------------------

def run_data_parallel(fn: Engine, job: Any, out_dir: Path, *, workers: int, gpus_per_worker: float = 0.0,
                      cpus_per_worker: float = 1.0, report: Report | None = None) -> dict:
    """Run `fn(job, out_dir, report)` on `workers` Ray Train workers (DDP) and return rank 0's result.

    gloo on CPU workers (`gpus_per_worker == 0`), NCCL on GPU workers; NCCL needs a GPU of its own
    per rank, so several workers cannot share GPUs (`gpus_per_worker < 1`). Ray must be
    initialised (the caller's cluster). Raises ValueError before starting when the cluster
    cannot place the workers.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise ValueError(f"cpus_per_worker must be > 0 and gpus_per_worker >= 0, got {cpus_per_worker}, "
                         f"{gpus_per_worker}")
    if 0 < gpus_per_worker < 1 and workers > 1:
        raise ValueError(f"gpus_per_worker {gpus_per_worker:g} with {workers} workers would put several NCCL ranks "
                         f"on one GPU; use whole GPUs per worker")
    if not ray.is_initialized():
        raise RuntimeError("run_data_parallel needs a running Ray (ray.init) to place its workers")
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    per_worker = {"CPU": float(cpus_per_worker), **({"GPU": float(gpus_per_worker)} if use_gpu else {})}
    check_cluster(workers, per_worker)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, int(cpus_per_worker))
    os.environ.setdefault(*HEALTH_CHECK_ENV)
    channel = ReportChannel()
    try:
        with tempfile.TemporaryDirectory(prefix="ray-train-") as storage:
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={"fn": fn, "job": job, "out_dir": str(out_dir), "channel": channel,
                                   "threads": threads},
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker),
                run_config=RunConfig(
                    name=f"{out_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
                    failure_config=FailureConfig(max_failures=0),  # retries are the caller's (e.g. Tune's)
                    worker_runtime_env={"env_vars": {**WORKER_ENV, "OMP_NUM_THREADS": str(threads)}}),
            )
            return _drive(trainer, channel, report)
    finally:
        channel.close()


def _drive(trainer: Any, channel: ReportChannel, report: Report | None) -> dict:
    """Fit in a background thread; hand rank 0's messages to `report` in this thread."""
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
            failure.append(e)

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    result: dict | None = None
    report_error: BaseException | None = None
    while True:
        done = not thread.is_alive()  # read before the queue: nothing arrives after the fit ended
        message = channel.next(_POLL_S)
        if message is None:
            if done:
                break
            continue
        kind, payload = message
        if kind == "result":
            result = payload
            continue
        try:
            if report is not None and report_error is None:
                report(payload)
        except BaseException as e:  # noqa: BLE001 - stop the workers, then raise it here
            report_error = e
        channel.answer(report_error is None)
    thread.join()
    if report_error is not None:
        raise report_error
    if failure:
        original = _original_error(failure[0])
        if original is failure[0]:
            raise original
        raise original from failure[0]
    if result is None:
        raise RuntimeError("data-parallel training ended without a result from rank 0")
    return result
