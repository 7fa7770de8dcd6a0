"""Running a planned study: waves of stages on a backend, tracked, tabled and reported.

Rerunning the same command is the resume: finished stages are skipped (never rerun), stages cut
short continue from their checkpoints, failed ones stay failed unless `rerun_failed`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console

from ablate.errors import CannotRun
from ablate.execution import store
from ablate.execution.events import Backend, Interrupted, Listeners
from ablate.execution.storage import Storage
from ablate.planning.plan import Plan, Stage
from ablate.presentation import results
from ablate.presentation.progress import LiveView
from ablate.tracking.tracker import StudyTracker

RUN_INFO = "run.json"  # in the study folder: the profile and study file of the last run


@dataclass
class Outcome:
    study_dir: Path
    states: dict[str, str]
    ran: list[str] = field(default_factory=list)
    interrupted: bool = False
    report: Path | None = None
    mlflow: dict | None = None

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s == state)


def runnable(plan: Plan, states: dict[str, str]) -> list[Stage]:
    """Every pending stage this run can reach: its parent is done or is itself one of them (the
    backend starts each as soon as its parent is done)."""
    reachable: dict[str, Stage] = {}
    for s in plan.stages.values():  # plan order: a parent before its children
        if states[s.id] == store.PENDING and (s.parent is None or states[s.parent] == store.DONE
                                               or s.parent in reachable):
            reachable[s.id] = s
    return list(reachable.values())


def current_states(plan: Plan, out_root: Path) -> dict[str, str]:
    return store.states(out_root, plan.stages, {s.id: s.parent for s in plan.stages.values()})


def run_study(plan: Plan, out_root: Path, *, backend: Backend, rerun_failed: bool = False,
              console: Console | None = None, tracking_uri: str | None = None, storage: Storage | None = None
              ) -> Outcome:
    """Run the plan's runnable stages wave by wave, then write tables and the report.

    A full or read-only disk (store.STORAGE_ERRNOS) stops the study with CannotRun, one line:
    every file is written atomically, so finished stages are kept, the others stay pending with
    their last good checkpoint, and the same command resumes once there is space. `tracking_uri`
    (an MLflow server or database) replaces the study's own (a sqlite file in its folder by default).
    `storage` (--storage, a URI the backend's trials write the stage store to): its stages' records
    are copied into `out_root` when the run starts and after each wave; the backend must be given it too.
    """
    try:
        return _run_study(plan, Path(out_root), backend=backend, rerun_failed=rerun_failed,
                          console=console or Console(), tracking_uri=tracking_uri, storage=storage)
    except CannotRun:
        raise
    except Exception as e:
        error = store.storage_error(e)
        if error is None:
            raise
        raise CannotRun(storage_message(error, Path(out_root))) from e


def storage_message(error: OSError, out_root: Path) -> str:
    where = f"cannot write {error.filename}" if error.filename else f"cannot write under {out_root.absolute()}"
    return (f"{where}: {error.strerror or error}; free some space (or make it writable) and run the same command "
            f"again: finished stages are kept and the others resume from their last checkpoint")


def _run_study(plan: Plan, out_root: Path, *, backend: Backend, rerun_failed: bool,
               console: Console, tracking_uri: str | None, storage: Storage | None) -> Outcome:
    study_dir = store.study_dir(out_root, plan.study.name)
    if storage is not None:  # what earlier runs, from any machine, left at the URI
        storage.pull_records(out_root, plan.stages)
    states = current_states(plan, out_root)
    # a trial the cluster can never place is refused before the study folder or its MLflow run exist
    backend.admit(runnable(plan, states), plan.resources, out_root)
    tracker = StudyTracker(plan, out_root, study_dir, uri=tracking_uri)
    try:
        tracker.open()  # the database exists before any trial starts; nothing is created if it cannot be opened
    except Exception as e:  # noqa: BLE001 - any store error: say where, in one line
        raise CannotRun(f"tracking store {tracker.uri}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    if tracker.note:
        console.print(f"tracking: {tracker.note}", style="yellow")
    if rerun_failed:
        for sid, state in states.items():
            if state == store.FAILED:
                store.clear_error(store.stage_dir(out_root, sid))
        states = current_states(plan, out_root)
    study_dir.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(study_dir / RUN_INFO, {
        "study": plan.study.name, "study_file": str(plan.study.source or ""), "profile": plan.profile.name,
        "profile_file": str(plan.profile.source or ""), "out_root": str(out_root), "started_at": time.strftime("%c"),
        "seeds": list(plan.study.seeds), "seed_count": len(plan.study.seeds)})
    tracker.backfill(states)  # runs a killed driver left RUNNING are brought in line with the store
    view = LiveView(plan, states, console=console, out_root=out_root)
    outcome = Outcome(study_dir, states, mlflow=tracker.info())
    partial = PartialReport(lambda: _publish(plan, out_root, study_dir, outcome, tracker, final=False, console=console))
    listeners = Listeners([tracker, view, partial], warn=lambda text: console.print(text, style="yellow"))
    try:
        with view, backend:
            wave = 0
            while todo := runnable(plan, states):
                wave += 1
                backend.run_wave(wave, todo, dict(plan.stages), out_root=out_root, resources=plan.resources,
                                 listeners=listeners)
                outcome.ran += [s.id for s in todo]
                if storage is not None:
                    storage.pull_records(out_root, [s.id for s in todo])
                try:
                    store.check_writable(store.stages_root(out_root), study_dir)
                except OSError as e:  # a full disk fails every stage alike, also one whose worker died without a word
                    if store.storage_error(e) is not None:
                        for stage in todo:  # not the stages' failures: pending again, their error kept beside
                            if store.state(out_root, stage.id) == store.FAILED:
                                store.clear_error(store.stage_dir(out_root, stage.id))
                    raise
                for stage in todo:  # a stage that could run must end done or failed, or the next wave would retry it
                    could_run = stage.parent is None or store.state(out_root, stage.parent) == store.DONE
                    if could_run and store.state(out_root, stage.id) == store.PENDING:
                        store.write_error(store.stage_dir(out_root, stage.id),
                                          "the trial ended without a result or an error")
                states = current_states(plan, out_root)
                view.states = dict(states)
                if runnable(plan, states):  # another wave follows: show what is done meanwhile, at the usual pace
                    partial.when_due()
    except (Interrupted, KeyboardInterrupt):
        outcome.interrupted = True
        outcome.states = current_states(plan, out_root)
        _publish(plan, out_root, study_dir, outcome, tracker, final=True, console=console)
        _tracking(console, tracker.close, "KILLED")
        return outcome
    except BaseException:
        _tracking(console, tracker.close, "FAILED", quiet=True)  # the error that stopped the study is the news
        raise
    outcome.states = current_states(plan, out_root)
    _publish(plan, out_root, study_dir, outcome, tracker, final=True, console=console)
    failed = outcome.count(store.FAILED) + outcome.count(store.BLOCKED)
    _tracking(console, tracker.log_study_metrics, {k: outcome.count(k) for k in (store.DONE, store.FAILED, store.BLOCKED)})
    _tracking(console, tracker.close, "FAILED" if failed else "FINISHED")
    return outcome


def _tracking(console: Console, call, *args, quiet: bool = False) -> None:
    """A closing call to the tracking store: a failure is one warning line, never the study's end
    (runs it leaves RUNNING are brought in line by the next run, StudyTracker.backfill)."""
    try:
        call(*args)
    except Exception as e:  # noqa: BLE001 - e.g. the database's disk is full
        if not quiet:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            console.print(f"warning: MLflow could not be updated ({type(e).__name__}: {first}); the next run of "
                          f"this study brings its runs up to date", style="yellow")


class PartialReport:
    """Redraws the tables and the report when a stage or a wave ends, at most once every `every_s` seconds,
    so that a long study shows its partial results while it runs (drawing takes a few seconds of
    the driver's time; the trials run on meanwhile)."""

    def __init__(self, publish: Callable[[], None], every_s: float = 60.0) -> None:
        self.publish, self.every_s = publish, every_s
        self.last = time.monotonic()

    def stage_ended(self, stage_id: str, state: str, error: str | None) -> None:
        self.when_due()

    def when_due(self) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self.publish()
            self.last = time.monotonic()

    def wave_started(self, wave: int, stage_ids: Sequence[str]) -> None: ...

    def stage_started(self, stage_id: str) -> None: ...

    def stage_epoch(self, stage_id: str, metrics: dict) -> None: ...

    def stage_retrying(self, stage_id: str, error: str) -> None: ...


def _publish(plan: Plan, out_root: Path, study_dir: Path, outcome: Outcome, tracker: StudyTracker, *, final: bool,
             console: Console) -> None:
    """results.csv, history.csv and the report; at the end also onto the parent run."""
    table, history = results.write_tables(plan, out_root, study_dir)
    outcome.mlflow = tracker.info()
    info = store.read_json(study_dir / RUN_INFO) or {}
    store.write_json_atomic(study_dir / RUN_INFO, {**info, "mlflow": outcome.mlflow})
    try:
        outcome.report = results.write_report(plan, out_root, study_dir, table, history, mlflow=outcome.mlflow)
    except Exception as e:  # noqa: BLE001 - a figure bug must not lose the study's results
        console.print(f"warning: the report could not be drawn ({type(e).__name__}: {e})", style="yellow")
    if final:
        paths = [study_dir / results.RESULTS, study_dir / results.HISTORY]
        if outcome.report is not None:
            paths.append(Path(outcome.report) if Path(outcome.report).is_dir() else Path(outcome.report).parent)
        for source in (plan.study.source, plan.profile.source):
            if source is not None:
                paths.append(Path(source))
        _tracking(console, tracker.log_study_artifacts, paths)
        _tracking(console, tracker.log_study_summary, table)


def last_profile(study_dir: Path) -> str | None:
    """The profile the study last ran with: its file when that still exists, else its name."""
    info = last_run(study_dir)
    if info.get("profile_file") and Path(info["profile_file"]).is_file():
        return info["profile_file"]
    return info.get("profile")


def last_run(study_dir: Path) -> dict:
    info = store.read_json(Path(study_dir) / RUN_INFO)
    return info if isinstance(info, dict) else {}
