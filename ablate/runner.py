"""Running a planned study: waves of stages on a backend, tracked, tabled and reported.

Rerunning the same command is the resume: finished stages are skipped (never rerun), stages cut
short continue from their checkpoints, failed ones stay failed unless `rerun_failed`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from rich.console import Console

from ablate import results, store
from ablate.errors import CannotRun
from ablate.events import Listeners
from ablate.plan import Plan, Stage
from ablate.progress import LiveView
from ablate.study import Resources
from ablate.tracking import StudyTracker

RUN_INFO = "run.json"  # in the study folder: the profile and study file of the last run


class Backend(Protocol):
    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...

    def run_wave(self, wave: int, stages: Sequence[Stage], all_stages: dict[str, Stage], *, out_root: Path,
                 resources: Resources, listeners: Listeners, experiment_dir: Path) -> None: ...


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
    return [s for s in plan.stages.values()
            if states[s.id] == store.PENDING and (s.parent is None or states[s.parent] == store.DONE)]


def current_states(plan: Plan, out_root: Path) -> dict[str, str]:
    return store.states(out_root, plan.stages, {s.id: s.parent for s in plan.stages.values()})


def run_study(plan: Plan, out_root: Path = store.DEFAULT_OUT, *, backend: Backend | None = None,
              rerun_failed: bool = False, console: Console | None = None) -> Outcome:
    out_root = Path(out_root)
    console = console or Console()
    study_dir = store.study_dir(out_root, plan.study.name)
    states = current_states(plan, out_root)
    if rerun_failed:
        for sid, state in states.items():
            if state == store.FAILED:
                store.clear_error(store.stage_dir(out_root, sid))
        states = current_states(plan, out_root)
    study_dir.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(study_dir / RUN_INFO, {
        "study": plan.study.name, "study_file": str(plan.study.source or ""), "profile": plan.profile.name,
        "profile_file": str(plan.profile.source or ""), "out_root": str(out_root), "started_at": time.strftime("%c")})

    tracker = StudyTracker(plan, out_root, study_dir)
    try:
        tracker.open()  # the database exists before any trial starts
    except Exception as e:  # noqa: BLE001 - any store error: say where, in one line
        raise CannotRun(f"tracking store {tracker.uri}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    tracker.backfill(states)
    view = LiveView(plan, states, console=console)
    listeners = Listeners([tracker, view], warn=lambda text: console.print(text, style="yellow"))
    outcome = Outcome(study_dir, states, mlflow=tracker.info())
    if backend is None:
        from ablate.ray_backend import RayBackend
        backend = RayBackend()
    from ablate.ray_backend import Interrupted

    try:
        with view, backend:
            wave = 0
            while todo := runnable(plan, states):
                wave += 1
                backend.run_wave(wave, todo, dict(plan.stages), out_root=out_root, resources=plan.resources,
                                 listeners=listeners, experiment_dir=study_dir / "ray")
                outcome.ran += [s.id for s in todo]
                for stage in todo:  # a stage must end done or failed, or the next wave would retry it
                    if store.state(out_root, stage.id) == store.PENDING:
                        store.write_error(store.stage_dir(out_root, stage.id),
                                          "the trial ended without a result or an error")
                states = current_states(plan, out_root)
                view.states = dict(states)
                _publish(plan, out_root, study_dir, outcome, tracker, final=False, console=console)
    except (Interrupted, KeyboardInterrupt):
        outcome.interrupted = True
        outcome.states = current_states(plan, out_root)
        _publish(plan, out_root, study_dir, outcome, tracker, final=True, console=console)
        tracker.close("KILLED")
        return outcome
    except BaseException:
        tracker.close("FAILED")
        raise
    outcome.states = current_states(plan, out_root)
    _publish(plan, out_root, study_dir, outcome, tracker, final=True, console=console)
    try:
        (study_dir / "ray").rmdir()  # the backend's scratch folder, when it left nothing
    except OSError:
        pass
    failed = outcome.count(store.FAILED) + outcome.count(store.BLOCKED)
    tracker.log_study_metrics({k: outcome.count(k) for k in (store.DONE, store.FAILED, store.BLOCKED)})
    tracker.close("FAILED" if failed else "FINISHED")
    return outcome


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
        tracker.log_study_artifacts(paths)


def last_profile(study_dir: Path) -> str | None:
    """The profile the study last ran with: its file when that still exists, else its name."""
    info = last_run(study_dir)
    if info.get("profile_file") and Path(info["profile_file"]).is_file():
        return info["profile_file"]
    return info.get("profile")


def last_run(study_dir: Path) -> dict:
    info = store.read_json(Path(study_dir) / RUN_INFO)
    return info if isinstance(info, dict) else {}
