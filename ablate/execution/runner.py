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
from ablate.execution.search import Searches
from ablate.execution.storage import Storage
from ablate.planning.plan import Plan, Stage, union
from ablate.presentation import results
from ablate.presentation.progress import LiveView
from ablate.spec.suite import Suite
from ablate.spec.suite import describe as describe_suite
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
    studies: list[Outcome] = field(default_factory=list)  # a suite's: each study's own

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


def _done(out_root: Path, stage_id: str | None) -> bool:
    return stage_id is None or store.state(out_root, stage_id) == store.DONE


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
    return run_plans([plan], None, out_root, backend=backend, rerun_failed=rerun_failed, console=console,
                     tracking_uri=tracking_uri, storage=storage)


def run_suite(suite: Suite, plans: Sequence[Plan], out_root: Path, *, backend: Backend, rerun_failed: bool = False,
              console: Console | None = None, tracking_uri: str | None = None, storage: Storage | None = None
              ) -> Outcome:
    """Several studies as one run (`ablate run studies/`): their stages as one pool on one backend
    (a stage two studies share runs once; no study waits for another), each study tracked, tabled
    and reported as if run alone, and the suite besides: its folder `<out>/<suite name>/` with the
    combined report, and an MLflow experiment of the same name holding a run per stage of every
    study. The outcome is the suite's, with each study's in `studies`. As `run_study` otherwise."""
    return run_plans(list(plans), suite, out_root, backend=backend, rerun_failed=rerun_failed, console=console,
                     tracking_uri=tracking_uri, storage=storage)


def run_plans(plans: list[Plan], suite: Suite | None, out_root: Path, *, backend: Backend, rerun_failed: bool,
              console: Console | None, tracking_uri: str | None, storage: Storage | None) -> Outcome:
    try:
        return _run(plans, suite, Path(out_root), backend=backend, rerun_failed=rerun_failed,
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


@dataclass
class Member:
    """One study of a run (or the suite itself): its plan, folder, tracker and outcome, and whether
    a stage of it ended since its tables and report were last written."""

    plan: Plan
    tracker: StudyTracker
    outcome: Outcome
    changed: bool = True

    @property
    def folder(self) -> Path:
        return self.outcome.study_dir

    def stage_ended(self, stage_id: str, state: str, error: str | None) -> None:
        if stage_id in self.plan.stages:
            self.changed = True


def _open(plan: Plan, out_root: Path, tracking_uri: str | None, console: Console) -> Member:
    folder = store.study_dir(out_root, plan.study.name)
    tracker = StudyTracker(plan, out_root, folder, uri=tracking_uri)
    try:
        tracker.open()  # the database exists before any trial starts; nothing is created if it cannot be opened
    except Exception as e:  # noqa: BLE001 - any store error: say where, in one line
        raise CannotRun(f"tracking store {tracker.uri}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    if tracker.note:
        console.print(f"tracking: {tracker.note}", style="yellow")
    return Member(plan, tracker, Outcome(folder, {}))


def _run(plans: list[Plan], suite: Suite | None, out_root: Path, *, backend: Backend, rerun_failed: bool,
         console: Console, tracking_uri: str | None, storage: Storage | None) -> Outcome:
    whole = plans[0] if suite is None else union(suite.name, plans, suite.description, suite.source)
    if storage is not None:  # what earlier runs, from any machine, left at the URI
        storage.pull_records(out_root, whole.stages)
    searches = Searches([whole, *(p for p in plans if p is not whole)], out_root)  # a study's, or a suite's and its studies'
    if searches:
        searches.open(rerun_failed)  # earlier runs' candidates join the plans; one left running is pending again
    states = current_states(whole, out_root)
    # a trial the cluster can never place is refused before the study folder or its MLflow run exist
    backend.admit(runnable(whole, states) + searches.samples(), whole.resources, out_root)
    members: list[Member] = []
    try:
        for plan in plans if suite is None else [*plans, whole]:
            members.append(_open(plan, out_root, tracking_uri, console))
    except BaseException:
        for member in members:
            _tracking(console, member.tracker.close, "FAILED", quiet=True)
        raise
    top = members[-1]  # the study, or the suite
    if rerun_failed:
        for sid, state in states.items():
            if state == store.FAILED:
                store.clear_error(store.stage_dir(out_root, sid))
        states = current_states(whole, out_root)
    for member in members:
        plan = member.plan
        member.folder.mkdir(parents=True, exist_ok=True)
        record = {"study": plan.study.name, "study_file": str(plan.study.source or ""), "profile": plan.profile.name,
                  "profile_file": str(plan.profile.source or ""), "out_root": str(out_root),
                  "started_at": time.strftime("%c"), "seeds": list(plan.study.seeds),
                  "seed_count": len(plan.study.seeds)}
        if suite is not None:
            record.update(describe_suite(suite) if member is top else {"suite": suite.name})
        store.write_json_atomic(member.folder / RUN_INFO, record)
        member.tracker.backfill({sid: states[sid] for sid in plan.stages})  # runs a killed driver left RUNNING
    view = LiveView(whole, states, console=console, out_root=out_root)
    outcome = top.outcome
    outcome.states = states
    if suite is not None:
        outcome.studies = [m.outcome for m in members[:-1]]

    def publish(final: bool) -> None:
        for member in members:
            if final or member.changed:
                member.changed = False
                # a search's candidate proposed since the states were read: its state from the store
                member.outcome.states = {sid: outcome.states.get(sid) or store.state(out_root, sid)
                                         for sid in member.plan.stages}
                _publish(member, out_root, final=final, console=console,
                         suite=(suite, members[:-1]) if suite is not None and member is top else None)

    partial = PartialReport(lambda: publish(False))
    listeners = Listeners([searches, *(m.tracker for m in members), view, partial, *members],
                          warn=lambda text: console.print(text, style="yellow"))
    view.time_left.more = searches.samples_left
    try:
        with view, backend:
            wave = 0
            while (todo := runnable(whole, states)) or searches.may_propose(lambda p: _done(out_root, p)):
                wave += 1
                proposed = len(searches.proposed)
                backend.run_wave(wave, todo, dict(whole.stages), out_root=out_root, resources=whole.resources,
                                 listeners=listeners, searches=searches)
                candidates = searches.proposed[proposed:]
                todo = [*todo, *(whole.stages[sid] for sid in candidates)]
                outcome.ran += [s.id for s in todo]
                if storage is not None:
                    storage.pull_records(out_root, [s.id for s in todo])
                try:
                    store.check_writable(store.stages_root(out_root), *(m.folder for m in members))
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
                searches.settle()  # a candidate whose trial ended without a word is told it failed
                states = current_states(whole, out_root)
                if not todo:  # the searches could propose nothing more (a running candidate's slot never freed)
                    break
                outcome.states = states
                view.states = dict(states)
                if runnable(whole, states):  # another wave follows: show what is done meanwhile, at the usual pace
                    partial.when_due()
    except (Interrupted, KeyboardInterrupt):
        outcome.interrupted = True
        outcome.states = current_states(whole, out_root)
        _finish(members, outcome, publish, console, "KILLED")
        return outcome
    except BaseException:
        for member in members:
            _tracking(console, member.tracker.close, "FAILED", quiet=True)  # the error that stopped it is the news
        raise
    outcome.states = current_states(whole, out_root)
    _finish(members, outcome, publish, console, None)
    return outcome


def _finish(members: list[Member], outcome: Outcome, publish: Callable[[bool], None], console: Console,
            status: str | None) -> None:
    """The final tables and reports, then each member's parent run ended: `status`, or FINISHED
    unless a stage of it failed or is blocked."""
    publish(True)
    for member in members:
        member.outcome.interrupted = outcome.interrupted
        member.outcome.ran = [sid for sid in outcome.ran if sid in member.plan.stages]
        counts = {k: member.outcome.count(k) for k in (store.DONE, store.FAILED, store.BLOCKED)}
        if status is None:
            _tracking(console, member.tracker.log_study_metrics, counts)
        failed = counts[store.FAILED] + counts[store.BLOCKED]
        _tracking(console, member.tracker.close, status or ("FAILED" if failed else "FINISHED"))


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


def _publish(member: Member, out_root: Path, *, final: bool, console: Console,
             suite: tuple[Suite, list[Member]] | None = None) -> None:
    """results.csv, history.csv and the report (the suite's: the combined report over its
    studies); at the end also onto the parent run."""
    plan, folder, outcome, tracker = member.plan, member.folder, member.outcome, member.tracker
    table, history = results.write_tables(plan, out_root, folder)
    outcome.mlflow = tracker.info()
    info = store.read_json(folder / RUN_INFO) or {}
    store.write_json_atomic(folder / RUN_INFO, {**info, "mlflow": outcome.mlflow})
    try:
        if suite is None:
            outcome.report = results.write_report(plan, out_root, folder, table, history, mlflow=outcome.mlflow)
        else:
            spec, studies = suite
            outcome.report = results.write_suite_report(spec, [m.plan for m in studies], out_root, folder,
                                                         mlflow=outcome.mlflow)
    except Exception as e:  # noqa: BLE001 - a figure bug must not lose the study's results
        console.print(f"warning: the report of {plan.study.name} could not be drawn ({type(e).__name__}: {e})",
                      style="yellow")
    if final:
        paths = [folder / results.RESULTS, folder / results.HISTORY]
        if outcome.report is not None:
            paths.append(Path(outcome.report) if Path(outcome.report).is_dir() else Path(outcome.report).parent)
        for source in (plan.study.source, plan.profile.source):
            if source is not None and Path(source).is_file():
                paths.append(Path(source))
        _tracking(console, tracker.log_study_artifacts, paths)
        _tracking(console, tracker.log_study_summary, table)
        if plan.searches:
            _tracking(console, tracker.mark_chosen)


def last_profile(study_dir: Path) -> str | None:
    """The profile the study last ran with: its file when that still exists, else its name."""
    info = last_run(study_dir)
    if info.get("profile_file") and Path(info["profile_file"]).is_file():
        return info["profile_file"]
    return info.get("profile")


def last_run(study_dir: Path) -> dict:
    info = store.read_json(Path(study_dir) / RUN_INFO)
    return info if isinstance(info, dict) else {}
