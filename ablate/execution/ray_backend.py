"""Where stages run: Ray Tune trials, one `tune.Tuner` for all the stages a run can reach.

Imports from `ray.tune` only (environment.md: mixing in `ray.train` objects fails in confusing
ways). The stages are not a grid but a graph (pre-training, then its evaluations), so the Tuner's
search algorithm is `StageOrder`: it suggests a stage the moment its parent is done, and never
one whose parent failed. An evaluation therefore starts as soon as its own pre-training ends,
not when the slowest pre-training of the study does, and one Tuner (one set of reused actors)
serves the whole run. Each trial runs `ablate.execution.stages.run_stage` with the study's resources,
`reuse_actors=True` and `FailureConfig(max_failures=2)`: a crashed worker is retried and the
stage resumes from its own checkpoint. Deterministic failures (a non-finite loss) are not
retried. No `Tuner.restore`: the stage store makes rerunning the same command the resume.

Data-parallel stages (`stage.workers` > 1) run their engine under Ray Train's TorchTrainer from
inside their trial (ablate/execution/distributed.py). Such a trial only waits and relays rank 0's metrics to
`tune.report`, so it holds next to nothing (`DRIVER_BUNDLE`): its workers, placed by Ray Train in
a placement group of their own, hold the CPUs and GPUs. Tune does not see those, so a run with
data-parallel stages runs at most as many trials at once as the cluster can place
(`concurrent_trials`); a data-parallel trial started anyway waits inside Ray Train, holding nothing.
Before anything starts, a trial the live nodes can never place is refused (ClusterTooSmall).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ray import tune
from ray.tune.search import Searcher

from ablate.errors import ClusterTooSmall
from ablate.execution import lease, ray_cluster, store
from ablate.execution.events import MAX_FAILURES, Interrupted, Listeners, numeric
from ablate.execution.order import WaveOrder
from ablate.execution.search import Searches
from ablate.execution.stages import Launch
from ablate.execution.storage import Storage
from ablate.planning.plan import Stage
from ablate.spec.study import Resources

# What a data-parallel trial itself holds while its workers train: Tune refuses an all-zero
# request, and any CPU fraction would be missing when the workers need every CPU of a node. One
# byte of Ray's `memory` resource (every node has it) takes nothing anybody needs.
DRIVER_BUNDLE = {"memory": 1}
PHASE = "ablate_phase"  # epoch | done | failed, in every result a trial reports
STAGE = "ablate_stage_id"
# Keys Tune adds to every result; not ours to log.
_TUNE_KEYS = {"done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s",
              "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
              "checkpoint_dir_name", "experiment_tag", "should_checkpoint"}


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, shipped once through the object store (`tune.with_parameters`)."""

    out_root: str
    stages: Mapping[str, Stage]
    threads: int
    launch: Launch | None = None  # how a single-worker stage's engine runs (RayBackend's `launch`)
    resources: Resources = Resources()  # per worker of a data-parallel stage
    storage: str | None = None  # the stage store's URI (--storage): trials work in their node's mirror of it


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune trainable: run one stage, reporting each epoch and then its outcome."""
    from ablate.execution.stages import StageFailed, run_stage, run_stage_stored
    from ablate.execution.storage import Storage

    stage = context.stages.get(config["stage_id"]) or Stage(**config["stage"])  # a search's candidate: in its config

    def report(metrics: dict) -> None:
        tune.report({**metrics, PHASE: "epoch", STAGE: stage.id})

    try:
        launch = _data_parallel(stage, context.resources) if stage.workers > 1 else context.launch
        if context.storage is not None:
            result = run_stage_stored(stage, Storage(context.storage), report, threads=context.threads, launch=launch)
        else:
            result = run_stage(stage, Path(context.out_root), report, threads=context.threads, launch=launch)
    except StageFailed as e:  # deterministic: report it and end the trial normally (no retry)
        tune.report({PHASE: "failed", STAGE: stage.id, "error": str(e)[:2000]})
        return
    tune.report({**result, PHASE: "done", STAGE: stage.id})


def _data_parallel(stage: Stage, resources: Resources) -> Launch:
    """The stage's launch on `stage.workers` Ray Train workers."""
    from ablate.execution.distributed import run_data_parallel

    def launch(engine, job, out_dir, report):
        return run_data_parallel(engine, job, out_dir, workers=stage.workers, cpus_per_worker=resources.cpu,
                                 gpus_per_worker=resources.gpu, report=report)

    return launch


class TrialResources:
    """Per trial (`tune.with_resources` takes a callable of the trial's config): a single-worker
    stage holds the study's resources; a data-parallel one `DRIVER_BUNDLE`, its workers the rest."""

    def __init__(self, stages: Sequence[Stage], resources: Resources) -> None:
        self.workers = {stage.id: stage.workers for stage in stages}
        self.resources = resources

    def __call__(self, config: dict[str, Any]) -> tune.PlacementGroupFactory:
        workers = self.workers.get(config["stage_id"]) or config["stage"]["workers"]
        if workers > 1:
            return tune.PlacementGroupFactory([DRIVER_BUNDLE])
        return tune.PlacementGroupFactory([self.resources.per_worker()])


def check_cluster(stages: Sequence[Stage], resources: Resources) -> None:
    """Raise ClusterTooSmall, in one line, when the connected cluster can never run some trial of the wave."""
    from ablate.execution.distributed import check_cluster as check

    for workers in sorted({s.workers for s in stages}, reverse=True):
        try:
            check(workers, resources.per_worker())
        except ValueError as e:
            raise ClusterTooSmall(str(e)) from None


def concurrent_trials(stages: Sequence[Stage], resources: Resources, limit: int | None) -> int | None:
    """How many trials of the wave to run at once: `limit`, or with data-parallel stages (whose
    workers Tune does not count) as many as the cluster places at once; None leaves it to Tune."""
    if limit is not None or all(s.workers == 1 for s in stages):
        return limit
    from ablate.execution.distributed import trials_that_fit

    sizes = {s.workers for s in stages}
    return max(1, sum(trials_that_fit(workers, resources.per_worker()) for workers in sizes))


class StageOrder(Searcher):
    """Tune's search algorithm over a study's stage graph: each `suggest` hands out a stage whose
    parent is done (pre-trainings first, they unlock the most), None while the only stages left
    wait for a running parent, and FINISHED when none is left: stages below a parent that failed
    are never started (the runner marks them blocked)."""

    def __init__(self, stages: Sequence[Stage], out_root: Path, listeners: Listeners | None = None,
                 searches: Searches | None = None) -> None:
        super().__init__()
        self.order = WaveOrder(stages, out_root, searches)
        self.known = {s.id for s in stages}
        self.out_root = Path(out_root)
        self.listeners = listeners
        self.trials: dict[str, str] = {}  # Tune trial id -> stage id
        self.elsewhere: dict[str, str] = {}  # stage id -> the live owner of its lease ("host/pid")

    def __getstate__(self) -> dict:
        # Tune saves its searcher with the experiment; the listeners and searches stay in this process.
        return {**self.__dict__, "listeners": None, "order": None}

    def _held_elsewhere(self, stage: Stage) -> bool:
        """Another driver's trial runs this stage now (a live lease): not handed out, so no Ray
        slot waits for it; once it is done there, it counts as ended done here."""
        folder = store.stage_dir(self.out_root, stage.id)
        if store.state(self.out_root, stage.id) == store.DONE:
            self.order.take(stage)
            self.order.end(stage.id, True)
            if self.listeners is not None:
                self.listeners.stage_ended(stage.id, store.DONE, None)
            return True
        owner = lease.live_holder(folder)
        if owner is None:
            return False
        if self.elsewhere.get(stage.id) != str(owner) and self.listeners is not None:
            self.listeners.stage_elsewhere(stage.id, str(owner))
        self.elsewhere[stage.id] = str(owner)
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        for stage in self.order.ready():
            if not self._held_elsewhere(stage):
                self.order.take(stage)
                return self._config(trial_id, stage)
        candidate = self.order.propose()
        if candidate is not None:
            return self._config(trial_id, candidate)
        self.order.drop_orphans()
        return None if self.order.open else Searcher.FINISHED

    def _config(self, trial_id: str, stage: Stage) -> dict:
        """The trial's config: its stage id, and the stage itself where it is a search's candidate
        (not in the stage map the trials were given)."""
        self.trials[trial_id] = stage.id
        if stage.id in self.known:
            return {"stage_id": stage.id}
        return {"stage_id": stage.id, "stage": dataclasses.asdict(stage)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        sid = self.trials.get(trial_id)
        if sid is not None:
            self.order.end(sid, store.state(self.out_root, sid) == store.DONE)


class PruneStopper(tune.Stopper):
    """Driver side: each epoch a search's candidate reports goes to its pruner (ablate/execution/search.py);
    True stops the trial (its worker leaves the stage at that report, SystemExit)."""

    def __init__(self, searches: Searches | None) -> None:
        self.searches = searches

    def __getstate__(self) -> dict:
        return {"searches": None}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if self.searches is None or result.get(PHASE) != "epoch" or STAGE not in result:
            return False
        return self.searches.epoch(result[STAGE], metrics_of(result))

    def stop_all(self) -> bool:
        return False


def metrics_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """Our metrics from a Tune result: numbers only, Tune's bookkeeping dropped."""
    return numeric({k: v for k, v in result.items() if k not in _TUNE_KEYS and k not in (PHASE, STAGE)})


class StageEvents(tune.Callback):
    """Driver side: Tune trial events -> stage events (tracking, live view), and the failure
    record of a stage whose worker died on every attempt."""

    def __init__(self, listeners: Listeners, out_root: Path, storage: Storage | None = None) -> None:
        self.listeners, self.out_root, self.storage = listeners, Path(out_root), storage
        self.ended: set[str] = set()
        self.storage_errors: list[OSError] = []  # trials stopped by a full or read-only disk

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into the experiment state; the listeners (database client,
        # live view) stay in this process, the only one that calls them.
        return {"out_root": self.out_root, "ended": set(), "listeners": None, "storage_errors": [], "storage": None}

    def _pull(self, sid: str) -> None:
        """With --storage: the stage's records from the URI into --out, before anything reads them."""
        if self.storage is not None:
            try:
                self.storage.pull(self.out_root, sid)
            except OSError:  # the URI did not answer this time; the next event, or the wave's end, copies it
                pass

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.listeners.stage_started(trial.config["stage_id"])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._pull(trial.config["stage_id"])
        if result.get(PHASE) == "epoch":
            self.listeners.stage_epoch(trial.config["stage_id"], metrics_of(result))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.listeners.stage_retrying(trial.config["stage_id"], _error_text(trial))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial.config["stage_id"])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        sid = trial.config["stage_id"]
        self._pull(sid)
        folder = store.stage_dir(self.out_root, sid)
        full = _storage_error(trial)
        if full is None and store.state(self.out_root, sid) != store.DONE:
            try:  # a worker that died without a word on a disk that is full now: the disk's fault, not the stage's
                store.check_writable(folder)
            except OSError as e:  # another OSError (a vanished folder) leaves the failure as it is
                full = store.storage_error(e)
        if full is not None:
            self.storage_errors.append(full)
        elif store.state(self.out_root, sid) != store.DONE:
            # A worker that died wrote no error.txt of its own (one there is an earlier attempt's).
            if not (folder / store.ERROR).is_file() or _worker_died(trial):
                store.write_error(folder, f"failed after {MAX_FAILURES + 1} attempts; last error:\n{_error_text(trial)}")
        self._ended(sid)

    def _ended(self, sid: str) -> None:
        self.ended.add(sid)
        self.listeners.stage_ended(sid, store.state(self.out_root, sid), store.error_line(self.out_root, sid) or None)


def _storage_error(trial) -> OSError | None:
    """Whether the trial's last error is a full or read-only disk: not the stage's failure, so it
    stays pending (the driver then stops the study in one line and the same command resumes it)."""
    try:
        return store.storage_error(trial.get_pickled_error())
    except Exception:  # noqa: BLE001 - an error that cannot be unpickled is not a storage error we know of
        return None


def _worker_died(trial) -> bool:
    """Whether the trial's last error is its worker process, or its node, dying (Ray's own types,
    found through store.causes), or no error was recorded at all."""
    from ray.exceptions import LocalRayletDiedError, NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

    try:
        exc = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - unreadable: nothing tells us the stage's own code raised it
        return True
    if exc is None:  # no error at all: the worker ended without a word
        return True
    died = (RayActorError, WorkerCrashedError, NodeDiedError, OutOfMemoryError, LocalRayletDiedError)
    return any(isinstance(e, died) for e in store.causes(exc))


def _error_text(trial) -> str:
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - the error file may be unreadable; say so
        text = None
    return str(text or "the trial's worker ended without an error message (killed?)")


class RayBackend:
    """A private local Ray by default (this machine's CPUs, no dashboard, workers' logs kept off the
    terminal; never a stale or foreign cluster); `address` joins a running cluster ("auto" or
    host:port, with the user's Ray token where there is one), and `say` is told which one.
    `launch` runs each single-worker stage's engine in its trial (ablate/execution/stages.py; default: as
    it is); it travels to the workers, so it must pickle."""

    def __init__(self, address: str | None = None, max_concurrent: int | None = None,
                 say: Callable[[str], None] | None = None, launch: Launch | None = None,
                 storage: Storage | None = None):
        self.address, self.max_concurrent, self.say, self.launch = address, max_concurrent, say, launch
        self.storage = storage
        self._started = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.address:
            joined = ray_cluster.join(self.address)
            if self.say is not None:
                self.say(joined)
        else:
            ray_cluster.start_local(num_cpus=len(os.sched_getaffinity(0)))
        self._started = True

    def close(self) -> None:
        if self._started:
            import ray
            ray.shutdown()
            self._started = False

    def admit(self, stages: Sequence[Stage], resources: Resources, out_root: Path) -> None:
        """Join (or start) Ray and refuse, with ClusterTooSmall, a trial its nodes can never place;
        on a joined cluster, also a node that does not see the output root or the data."""
        if stages:
            self._ensure_ray()
            check_cluster(stages, resources)
            if self.address:
                from ablate.execution.preflight import data_sources
                nodes = ray_cluster.check_shared_storage(out_root, data_sources(stages), storage=self.storage)
                where = (f"the storage {self.storage.uri}" if self.storage is not None else
                         f"the output root {Path(out_root).resolve()}")
                if self.say is not None:
                    self.say(f"storage checked on {nodes} node{'s' * (nodes > 1)}: {where} and the data are seen "
                             f"where the driver sees them")

    def run_wave(self, wave: int, stages: Sequence[Stage], all_stages: Mapping[str, Stage], *, out_root: Path,
                 resources: Resources, listeners: Listeners, searches: Searches | None = None) -> None:
        """Run one wave of stages to the end; each ends done or failed in the store.

        Tune's experiment folder goes in this machine's temporary folder, not under `out_root`: only
        Tuner.restore needs it, which we never use (the stage store is the state), and Tune's own
        writes there must not fail on a full output disk before ours can say so in one line.

        Raises Interrupted when Ctrl-C stopped it (Tune stops its trials on the first one).
        """
        self._ensure_ray()
        check_cluster(stages, resources)  # before anything starts: a trial that can never run is refused
        # Tune's own CSV/JSON/TensorBoard loggers would duplicate what the store and MLflow keep.
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the new output engine prints a box even at verbose=0
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Tune logs every failed trial attempt with its full traceback; the live view says "retry"
        # instead, and a stage that fails for good keeps the traceback in its error.txt.
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
        listeners.wave_started(wave, [s.id for s in stages])
        context = TrialContext(str(Path(out_root).resolve()), dict(all_stages), threads=max(1, int(resources.cpu)),
                               launch=self.launch, resources=resources,
                               storage=None if self.storage is None else self.storage.uri)
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                        TrialResources(stages, resources))
        events = StageEvents(listeners, Path(out_root), self.storage)
        at_once = concurrent_trials(stages, resources, self.max_concurrent)
        order = StageOrder(stages, Path(out_root), listeners, searches)
        name = f"wave{wave}-{time.strftime('%Y%m%d-%H%M%S')}"
        scratch = tempfile.mkdtemp(prefix="ablate-tune-")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=order, num_samples=len(stages) + (searches.left() if searches else 0),
                                        reuse_actors=True, max_concurrent_trials=at_once,
                                        trial_name_creator=lambda t: t.config["stage_id"],
                                        # a stage may be a second trial of the wave (a pruned candidate resumed)
                                        trial_dirname_creator=lambda t: f"{t.config['stage_id']}-{t.trial_id}"),
            run_config=tune.RunConfig(
                name=name,
                storage_path=scratch,
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                verbose=0,
                callbacks=[events],
                stop=PruneStopper(searches),
            ),
        )
        try:
            tuner.fit()
        except KeyboardInterrupt:
            raise Interrupted() from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # each stage's error.txt keeps its trial's error
        if events.storage_errors:  # the disk, not the stages: they stay pending and the study stops in one line
            raise events.storage_errors[0]
        # Neither ended nor dropped below a failed parent: Tune stopped early (SIGINT).
        proposed = order.order.proposed
        unfinished = [sid for sid in [*(s.id for s in stages), *proposed]
                      if sid not in events.ended and sid not in order.order.ended]
        if unfinished:  # Tune stops its trials on SIGINT and returns without finishing them
            raise Interrupted()
