"""Running one stage: its folder in the stage store, the core function, its files. No Ray, no MLflow.

`run_stage` is what a Ray Tune trial calls (ablate/execution/ray_backend.py) and what a test or a debugger
can call directly. The core functions resume from their own checkpoint in the stage folder, so a
retried or re-run stage continues where it stopped.

A data-parallel stage (`stage.workers` > 1) runs its engine through the `launch` the caller
gives (the Ray backend's runs it on Ray Train workers, ablate/execution/distributed.py); everything else
here (the folder, its lock, metrics.jsonl, result.json, the failure record) stays in the caller's
process, and rank 0's per-epoch metrics come back to it through `report`.
"""
from __future__ import annotations

import os
import resource
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import core
from core.errors import Deterministic
from ablate.execution import node, store
from ablate.execution.lease import Lease
from ablate.execution.stage_warnings import recording as recording_warnings
from ablate.execution.storage import Storage, mirror_root
from ablate.planning.plan import Stage
from ablate.presentation import pictures

Report = Callable[[dict], None]


class StageFailed(Exception):
    """A stage failed for good; `error.txt` in its folder says why."""


# The core function behind each stage runner, imported in the worker only (the driver never loads
# torch), called as fn(job, encoder, out_dir, report).
def _pretrain(job, encoder, out_dir: Path, report: Report) -> dict:
    from core.pretrain import pretrain
    return pretrain(job, out_dir, report)


def _linear_probe(job, encoder, out_dir: Path, report: Report) -> dict:
    from core.linear_probe import linear_probe
    return linear_probe(job, encoder, out_dir, report)


def _finetune(job, encoder, out_dir: Path, report: Report) -> dict:
    from core.finetune import finetune
    return finetune(job, encoder, out_dir, report)


CORE_FUNCTIONS: dict[str, Callable[..., dict]] = {
    "pretrain": _pretrain, "linear_probe": _linear_probe, "finetune": _finetune}


@dataclass(frozen=True)
class StageJob:
    """What a stage's engine needs, small and picklable: it is shipped to every data-parallel
    worker, which loads the parent's encoder itself (from storage all workers see)."""

    stage: Stage
    out_root: str


def run_engine(job: StageJob, out_dir: Path, report: Report | None) -> dict:
    """The stage's core function on its parent's encoder: `fn(job, out_dir, report)` as
    `ablate.execution.distributed.run_data_parallel` runs it on each worker, or in process."""
    stage = job.stage
    return CORE_FUNCTIONS[stage.runner](stage.job(), _load_parent_encoder(Path(job.out_root), stage), out_dir, report)


Engine = Callable[[StageJob, Path, Report], dict]
# launch(engine, job, out_dir, report) -> result: where the engine runs (in process, or on workers).
Launch = Callable[[Engine, StageJob, Path, Report], dict]


def in_process(engine: Engine, job: StageJob, out_dir: Path, report: Report) -> dict:
    return engine(job, out_dir, report)


def _load_parent_encoder(out_root: Path, stage: Stage) -> dict | None:
    if stage.parent is None or stage.recipe.get("init") == "random":
        return None
    from core.checkpoint import load_encoder
    return load_encoder(store.stage_dir(out_root, stage.parent))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


WAIT_S = 2.0  # how often a trial that finds its stage leased elsewhere looks again


@contextmanager
def _exclusive(folder: Path, out_root: Path, stage_id: str) -> Iterator[dict | None]:
    """One process per stage at a time, across drivers and machines sharing the root (ablate/execution/lease.py).
    Yields the stage's result when it is (or becomes) done elsewhere, else None with the lease held.
    The driver hands out no stage leased by a live owner; a trial that still meets one (two
    drivers handing it out at once) waits for it to end or go stale."""
    lease = Lease(folder)
    while True:
        done = store.result(out_root, stage_id)
        if done is not None:
            yield done
            return
        if lease.acquire() is None:
            break
        time.sleep(WAIT_S)
    try:
        yield store.result(out_root, stage_id)  # finished between the look and the lease
    finally:
        lease.release()


def run_stage(stage: Stage, out_root: Path, report: Report | None = None, *, threads: int | None = None,
              launch: Launch | None = None) -> dict[str, Any]:
    """Run (or resume) one stage into `<out_root>/stages/<id>/` and return its final metrics.

    Each epoch's metrics go to `metrics.jsonl` (with the time they were recorded) and to `report`. On success
    `result.json` is written last; on a deterministic failure (core.errors.Deterministic, raised
    where it was found: a config this code cannot run, missing data, a non-finite loss)
    `error.txt` is written and StageFailed raised; any other exception is written to `error.txt`
    too and re-raised, for the caller to retry (a retry starts by removing it). `launch` runs the
    engine (default: in this process); a data-parallel stage needs one that places its workers.
    A launch may also wrap the engine (a profiler; the tests' fault injection, tests/faults.py).
    """
    if stage.workers > 1 and launch is None:
        raise ValueError(f"{stage.id} is data-parallel on {stage.workers} workers: run it with a `launch` that places "
                         f"them (ablate.execution.distributed.run_data_parallel), not in process")
    folder = store.stage_dir(out_root, stage.id)
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder, out_root, stage.id) as done:
        if done is not None:  # finished meanwhile by another run sharing the store
            return done
        return _run_locked(stage, out_root, folder, report, threads, launch or in_process)


def run_stage_stored(stage: Stage, storage: Storage, report: Report | None = None, *, threads: int | None = None,
                     launch: Launch | None = None) -> dict[str, Any]:
    """`run_stage` in this node's mirror of the stage store at a storage URI (--storage,
    ablate/execution/storage.py): the stage's folder (to resume) and its parent's encoder come
    down first; what changed goes up after every epoch, and when the stage ends (result.json last)."""
    if stage.workers > 1:
        raise ValueError(f"{stage.id}: a data-parallel stage's ranks write on their own nodes; --storage runs "
                         f"single-worker stages only")
    local = mirror_root(storage.uri)
    storage.pull(local, stage.id, "resume")
    if stage.parent is not None:
        storage.pull(local, stage.parent, "encoder")

    def pushed(row: dict) -> None:
        storage.push(local, stage.id)
        if report is not None:
            report(row)

    try:
        return run_stage(stage, local, pushed, threads=threads, launch=launch)
    finally:
        storage.push(local, stage.id)


def _run_locked(stage: Stage, out_root: Path, folder: Path, report: Report | None, threads: int | None,
                launch: Launch) -> dict[str, Any]:
    (folder / store.ERROR).unlink(missing_ok=True)  # a previous attempt's; this one decides
    store.write_json_atomic(folder / store.CONFIG, dict(stage.config))
    meta = store.read_json(folder / store.META) or {"attempts": []}
    meta.update(id=stage.id, kind=stage.kind, runner=stage.runner, parent=stage.parent, workers=stage.workers)
    meta["attempts"].append({"started_at": _now(), "pid": os.getpid(), **node.describe(stage.recipe.get("device", "auto"))})
    store.write_json_atomic(folder / store.META, meta)
    if threads and stage.recipe.get("threads") is None and stage.workers == 1:  # workers set their own
        import torch
        torch.set_num_threads(threads)

    started = time.time()
    _recover_line(out_root, folder)

    def on_epoch(metrics: dict) -> None:
        row = _record(folder, metrics, time.time())
        if report is not None:
            report(row)

    try:
        with recording_warnings(folder):  # the worker's stderr never reaches the user; the folder does
            result = launch(run_engine, StageJob(stage, str(Path(out_root).resolve())), folder, on_epoch)
    except Deterministic as e:  # typed where it was found (core/errors.py): retrying cannot help
        store.write_error(folder, traceback.format_exc())
        raise StageFailed(f"{type(e).__name__}: {e}") from e
    except Exception as e:
        if store.storage_error(e) is None:  # a full or read-only disk is not the stage's failure: it stays pending
            store.write_error(folder, traceback.format_exc())
        raise
    # SystemExit / KeyboardInterrupt: the run was stopped (Tune stops trials that way on Ctrl-C),
    # the stage did not fail; it stays pending and resumes from its checkpoint.
    result = {k: _plain(v) for k, v in result.items()}
    pictures.draw(folder, f"{stage.kind} {stage.id}")  # before result.json: a done stage has them
    store.write_json_atomic(folder / store.RESULT, {
        **result, "stage_id": stage.id, "kind": stage.kind, "started_at": meta["attempts"][-1]["started_at"],
        "finished_at": _now(), "attempt_wall_s": time.time() - started, "attempts": len(meta["attempts"]),
        # what computed these numbers: the engine's numerics version and the code's commit
        "numerics": core.NUMERICS_VERSION[stage.runner], "commit": node.code_commit(),
        # the peak of the process that ran it (a reused Ray actor: of every stage it ran so far)
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return result


def _recover_line(out_root: Path, folder: Path) -> None:
    """The line of the epoch the newest checkpoint holds, where a worker died after writing that
    checkpoint and before its line (the retry resumes after that epoch, so nothing would write it):
    from the metrics the checkpoint keeps, timed by the checkpoint file."""
    from core.checkpoint import LAST, CheckpointError, safe_load

    path = folder / LAST
    if not path.is_file():
        return
    try:  # mmap: the weights are not read, only the small metrics (the engine loads the weights next)
        metrics = safe_load(path, mmap=True).get("metrics")
    except CheckpointError:  # the engine falls back to the previous one and says so
        return
    if not isinstance(metrics, dict) or "epoch" not in metrics:
        return
    if all(row.get("epoch") != metrics["epoch"] for row in store.epochs(out_root, folder.name)):
        _record(folder, metrics, path.stat().st_mtime)


def _record(folder: Path, metrics: dict, at: float) -> dict:
    """Append one epoch's metrics to the stage's metrics.jsonl with the time `at` (seconds) they
    were recorded; return them as plain numbers."""
    row = {k: _plain(v) for k, v in metrics.items()}
    store.append_jsonl(folder / store.METRICS, {**row, store.TIME: int(at * 1000)})
    return row


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars as Python numbers, for JSON and MLflow."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value
