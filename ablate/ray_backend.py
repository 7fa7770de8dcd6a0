"""Where stages run: Ray Tune trials, one `tune.Tuner` per wave of runnable stages.

Imports from `ray.tune` only (environment.md: mixing in `ray.train` objects fails in confusing
ways). A wave is every pending stage whose parent is done; its trials are a grid over stage ids,
each running `ablate.stages.run_stage` with the study's resources, `reuse_actors=True` and
`FailureConfig(max_failures=2)`: a crashed worker is retried and the stage resumes from its own
checkpoint. Deterministic failures (a non-finite loss) are not retried. No `Tuner.restore`:
the stage store makes rerunning the same command the resume.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ray import tune

from ablate import store
from ablate.errors import CannotRun
from ablate.events import Listeners
from ablate.plan import Stage
from ablate.stages import FAULT_ENV
from ablate.study import Resources

MAX_FAILURES = 2
PHASE = "ablate_phase"  # epoch | done | failed, in every result a trial reports
STAGE = "ablate_stage_id"
# Keys Tune adds to every result; not ours to log.
_TUNE_KEYS = {"done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s",
              "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
              "checkpoint_dir_name", "experiment_tag", "should_checkpoint"}


class Interrupted(Exception):
    """The study was stopped (Ctrl-C); finished stages are kept and running ones resume next time."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, shipped once through the object store (`tune.with_parameters`)."""

    out_root: str
    stages: Mapping[str, Stage]
    threads: int
    fault: str | None


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune trainable: run one stage, reporting each epoch and then its outcome."""
    from ablate.stages import Fault, StageFailed, run_stage

    stage = context.stages[config["stage_id"]]

    def report(metrics: dict) -> None:
        tune.report({**metrics, PHASE: "epoch", STAGE: stage.id})

    try:
        result = run_stage(stage, Path(context.out_root), report, threads=context.threads,
                           fault=Fault(context.fault))
    except StageFailed as e:  # deterministic: report it and end the trial normally (no retry)
        tune.report({PHASE: "failed", STAGE: stage.id, "error": str(e)[:2000]})
        return
    tune.report({**result, PHASE: "done", STAGE: stage.id})


def metrics_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """Our metrics from a Tune result: numbers only, Tune's bookkeeping dropped."""
    return {k: v for k, v in result.items()
            if k not in _TUNE_KEYS and k not in (PHASE, STAGE) and isinstance(v, (int, float))
            and not isinstance(v, bool)}


class StageEvents(tune.Callback):
    """Driver side: Tune trial events -> stage events (tracking, live view), and the failure
    record of a stage whose worker died on every attempt."""

    def __init__(self, listeners: Listeners, out_root: Path) -> None:
        self.listeners, self.out_root = listeners, Path(out_root)
        self.ended: set[str] = set()

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks into the experiment state; the listeners (database client,
        # live view) stay in this process, the only one that calls them.
        return {"out_root": self.out_root, "ended": set(), "listeners": None}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.listeners.stage_started(trial.config["stage_id"])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get(PHASE) == "epoch":
            self.listeners.stage_epoch(trial.config["stage_id"], metrics_of(result))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.listeners.stage_retrying(trial.config["stage_id"], _error_text(trial))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial.config["stage_id"])

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        sid = trial.config["stage_id"]
        folder = store.stage_dir(self.out_root, sid)
        if store.state(self.out_root, sid) != store.DONE:
            text = _error_text(trial)
            if not (folder / store.ERROR).is_file() or "RayActorError" in text or "died" in text:
                store.write_error(folder, f"failed after {MAX_FAILURES + 1} attempts; last error:\n{text}")
        self._ended(sid)

    def _ended(self, sid: str) -> None:
        self.ended.add(sid)
        self.listeners.stage_ended(sid, store.state(self.out_root, sid), store.error_line(self.out_root, sid) or None)


def _error_text(trial) -> str:
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - the error file may be unreadable; say so
        text = None
    return str(text or "the trial's worker ended without an error message (killed?)")


class RayBackend:
    """Local Ray by default (`ray.init` with this machine's CPUs, no dashboard, workers' logs kept
    off the terminal); `address` joins a running cluster ("auto" or host:port)."""

    def __init__(self, address: str | None = None, max_concurrent: int | None = None):
        self.address, self.max_concurrent = address, max_concurrent
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
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise CannotRun(f"--address {self.address}: cannot join a Ray cluster there "
                                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        else:
            ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
        self._started = True

    def close(self) -> None:
        if self._started:
            import ray
            ray.shutdown()
            self._started = False

    def run_wave(self, wave: int, stages: Sequence[Stage], all_stages: Mapping[str, Stage], *, out_root: Path,
                 resources: Resources, listeners: Listeners, experiment_dir: Path) -> None:
        """Run one wave of stages to the end; each ends done or failed in the store.

        Raises Interrupted when Ctrl-C stopped it (Tune stops its trials on the first one).
        """
        self._ensure_ray()
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
                               fault=os.environ.get(FAULT_ENV))
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                        {"cpu": resources.cpu, "gpu": resources.gpu})
        events = StageEvents(listeners, Path(out_root))
        name = f"wave{wave}-{time.strftime('%Y%m%d-%H%M%S')}"
        tuner = tune.Tuner(
            trainable,
            param_space={"stage_id": tune.grid_search([s.id for s in stages])},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=self.max_concurrent,
                                        trial_name_creator=lambda t: t.config["stage_id"],
                                        trial_dirname_creator=lambda t: t.config["stage_id"]),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(Path(experiment_dir).resolve()),
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                verbose=0,
                callbacks=[events],
            ),
        )
        try:
            tuner.fit()
        except KeyboardInterrupt:
            raise Interrupted() from None
        finally:
            # Tune's experiment folder is only needed by Tuner.restore, which we never use: the
            # stage store is the state (and each stage's error.txt keeps its trial's error).
            shutil.rmtree(Path(experiment_dir) / name, ignore_errors=True)
        unfinished = [s.id for s in stages if s.id not in events.ended]
        if unfinished:  # Tune stops its trials on SIGINT and returns without finishing them
            raise Interrupted()
