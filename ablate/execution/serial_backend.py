"""The serial backend: every stage of a wave in this process, one after another, without Ray.

For a breakpoint in core/ (it stops in your own process), for a machine without Ray, and for the
tests that are not about Ray. It keeps the Ray backend's contract (ablate/execution/events.py; one test
suite runs over both): pre-trainings first, a child once its parent is done and never below a
parent that failed, MAX_FAILURES retries from the stage's checkpoint, the same events and files.
A data-parallel stage needs Ray's workers and is refused before anything starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ablate.errors import CannotRun
from ablate.execution import store
from ablate.execution.events import MAX_FAILURES, Interrupted, Listeners, numeric
from ablate.execution.order import WaveOrder
from ablate.execution.search import Pruned, Searches
from ablate.execution.stages import Launch, StageFailed, run_stage, run_stage_stored
from ablate.execution.storage import Storage
from ablate.planning.plan import Stage
from ablate.spec.study import Resources


class WorkerCrashed(BaseException):
    """What a `launch` raises to stand for a worker process that died (there is none here): not an
    Exception, so nothing in the engine catches it on the way out; retried as a dead Ray worker is."""


class SerialBackend:
    """`launch` runs each stage's engine (ablate/execution/stages.py; default: as it is), for a profiler or
    the tests' fault injection (tests/faults.py)."""

    def __init__(self, launch: Launch | None = None, storage: Storage | None = None) -> None:
        self.launch, self.storage = launch, storage

    def __enter__(self) -> SerialBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def admit(self, stages: Sequence[Stage], resources: Resources, out_root: Path | None = None) -> None:
        for stage in stages:
            if stage.workers > 1:
                raise CannotRun(f"{stage.id} is data-parallel on {stage.workers} workers, which the serial backend "
                                f"cannot place: run it with --backend ray")

    def run_wave(self, wave: int, stages: Sequence[Stage], all_stages: dict[str, Stage], *, out_root: Path,
                 resources: Resources, listeners: Listeners, searches: Searches | None = None) -> None:
        self.admit(stages, resources)
        listeners.wave_started(wave, [s.id for s in stages])
        order = WaveOrder(stages, out_root, searches)
        while order.open:
            stage = order.next()
            if stage is None:  # in one process nothing else runs meanwhile: what waits now will never run
                if order.drop_orphans():
                    continue
                if order.waiting:
                    raise RuntimeError(f"stages wait on parents outside the wave: {[s.id for s in order.waiting]}")
                break  # only searches below a parent that did not end done
            order.end(stage.id, self._run(stage, Path(out_root), resources, listeners, searches))

    def _run(self, stage: Stage, out_root: Path, resources: Resources, listeners: Listeners,
             searches: Searches | None = None) -> bool:
        """One stage to its end (done, failed or pruned), retried as the Ray backend retries a trial."""
        for attempt in range(MAX_FAILURES + 1):
            listeners.stage_started(stage.id)
            try:
                self._stage(stage, out_root, listeners, threads=max(1, int(resources.cpu)), searches=searches)
            except (StageFailed, Pruned):  # deterministic: its error.txt is written, no retry; or pruned
                break
            except KeyboardInterrupt:
                raise Interrupted() from None
            except (Exception, WorkerCrashed) as e:
                if store.storage_error(e) is not None:
                    raise  # the disk, not the stage: it stays pending and the study stops in one line
                error = "the worker died" if isinstance(e, WorkerCrashed) else f"{type(e).__name__}: {e}"
                if attempt == MAX_FAILURES:
                    folder = store.stage_dir(out_root, stage.id)
                    if not (folder / store.ERROR).is_file():  # a crashed worker left no traceback
                        store.write_error(folder, f"failed after {MAX_FAILURES + 1} attempts; last error:\n{error}")
                    break
                listeners.stage_retrying(stage.id, error)
                continue
            break
        if self.storage is not None:
            self.storage.pull(out_root, stage.id)
        state = store.state(out_root, stage.id)
        listeners.stage_ended(stage.id, state, store.error_line(out_root, stage.id) or None)
        return state == store.DONE

    def _stage(self, stage: Stage, out_root: Path, listeners: Listeners, threads: int,
               searches: Searches | None = None) -> None:
        """Run the stage in `out_root`, or with --storage in this machine's mirror of the storage URI
        (its records copied into `out_root` before each epoch's event, as the Ray backend does). A
        search's candidate that its pruner stops raises Pruned at that epoch."""
        def report(row: dict) -> None:
            if self.storage is not None:
                self.storage.pull(out_root, stage.id)
            listeners.stage_epoch(stage.id, numeric(row))
            if searches is not None and searches.epoch(stage.id, numeric(row)):
                raise Pruned(stage.id)

        if self.storage is None:
            run_stage(stage, out_root, report, threads=threads, launch=self.launch)
            return

        run_stage_stored(stage, self.storage, report, threads=threads, launch=self.launch)
