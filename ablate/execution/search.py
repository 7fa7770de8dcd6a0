"""Searches while a study runs: Optuna proposes each candidate from the results so far, and its
pruner stops candidates whose per-epoch validation metric is clearly behind.

Each search (`ablate.planning.plan.SearchTask`: one evaluation of one arm and seed) is an Optuna
study named `<arm>/seed<k>/<evaluation>` in an Optuna storage: by default the journal file
`optuna.journal` in the study's folder (on the driver's disk; any storage URL with `search.storage`,
e.g. a database server's). The storage is the search's whole state, so rerunning the same command
continues it: a candidate is a stage like any other (the same values hash to the same stage),
finished candidates are never run again, one a killed driver left running resumes from its
checkpoint, and the number of candidates stays the budget.

Both backends ask `propose` for a candidate when a slot is free and nothing planned is ready, call
`epoch` with each epoch a candidate reports (True: prune it; its stage folder gets `pruned.json`
and the backend stops it), and tell `stage_ended` how each ended. Everything here runs in the
driver's process.

Reproducible as far as Optuna allows: each proposal's sampler is seeded with the search's seed and
the number of candidates before it, so a search that runs one candidate at a time (`parallel: 1`)
proposes the same candidates on every run, interrupted or not. With several candidates at once,
which ones are running when another is proposed depends on timing, and so may the proposal.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ablate.execution import store
from ablate.planning.plan import JOBS, ArmRun, Plan, SearchTask, Stage
from ablate.spec.study import Search
from dashboards.contract import SEARCH_RETRIED, search_candidates

STORAGE_FILE = "optuna.journal"
STAGE_ATTR = "stage_id"  # each Optuna trial's user attribute: its candidate's stage
ParentDone = Callable[[str | None], "bool | None"]  # True: done; False: will never be; None: not yet


LIVE = ("RUNNING", "COMPLETE", "PRUNED", "FAIL")  # a candidate's states (WAITING: a grid point enqueued, not asked)


def trials_of(study) -> list:
    """The search's candidates: its Optuna trials but a grid point enqueued and not yet proposed, and
    a failed one that `--rerun-failed` ran again as a new trial (Optuna's finished trials are final)."""
    return [t for t in search_candidates(study) if t.state.name in LIVE]


def enqueue_grid(task: SearchTask, study) -> None:
    """The grid's next point not yet proposed (in the grid's order, low to high) as Optuna's next trial."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state.name == "WAITING" for t in trials):  # enqueued by a run stopped before it asked
        return
    asked = [t.params for t in trials]
    for point in task.spec.grid():
        if point not in asked:
            study.enqueue_trial(point)
            return


class Pruned(BaseException):
    """Raised into a candidate's engine (serial backend) when its pruner stops it: not an Exception,
    so nothing in the engine takes it for the stage's failure (the Ray backend stops the trial)."""


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(task: SearchTask, out_root: Path) -> str:
    """Where a search's Optuna study is kept: `search.storage`, or the study folder's journal file."""
    return task.spec.storage or str(store.study_dir(out_root, task.study) / STORAGE_FILE)


def storage(task: SearchTask, out_root: Path):
    """The Optuna storage of a search (what `optuna.load_study(storage=...)` takes)."""
    from ablate.errors import CannotRun
    from ablate.tracking.tracker import NETWORK_FILESYSTEMS, filesystem_type

    optuna = _optuna()
    url = storage_url(task, out_root)
    if url.startswith("sqlite:///"):
        kind = filesystem_type(Path(url.removeprefix("sqlite:///")).parent)
        if kind in NETWORK_FILESYSTEMS:
            raise CannotRun(f"search.storage {url}: a sqlite file on a {kind} mount is not safe; leave search.storage "
                            f"out (a journal file in the study folder) or give a database server's URL")
    if task.spec.storage:
        return optuna.storages.RDBStorage(url) if "://" in url else url
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))


def first_rung(epochs: int) -> int:
    """Successive halving's first rung: after a quarter of the epochs (at least one). The laptop
    fine-tune's validation top-1 after its first of 8 epochs (in warm-up) ranks the final one
    poorly (Spearman 0.28-0.88 over three seeds of an 8-point blr grid), after two far better
    (0.69-0.90); replaying those 24 curves in random orders, a first rung after 1 epoch kept 38%
    of the compute but lost 0.23 points of the best final top-1 on average (0.75 at the 90th
    percentile), after 2 epochs 52% and 0.08 (0.25). Measured in BENCHMARKS.md."""
    return max(1, round(epochs / 4))


KEPT = {"median": 50.0, "quartile": 25.0, "best": 0.0}  # pruners keeping a top percentile of the complete ones


def pruner(task: SearchTask):
    """The search's pruner, on the candidate's epochs (step = epochs finished). `halving`:
    successive halving (rungs after a quarter of the epochs, then 3 and 9 times that, a third
    promoted at each; while a rung has fewer than three candidates, only the best so far goes on).
    The others stop a candidate whose best value so far is below a bar made of the complete
    candidates' values at the same epoch, once two are complete and from a quarter of the epochs
    on: `median` their median, `quartile` their upper quartile (it goes on only while in the top
    quarter), `best` the best of them (it goes on only while ahead of every complete one)."""
    optuna = _optuna()
    epochs = int(task.base[JOBS[task.runner][1]]["epochs"])
    if task.spec.pruning == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung(epochs), reduction_factor=3)
    if task.spec.pruning in KEPT:  # Optuna's MedianPruner is its PercentilePruner at 50
        return optuna.pruners.PercentilePruner(KEPT[task.spec.pruning], n_startup_trials=2,
                                               n_warmup_steps=first_rung(epochs))
    return optuna.pruners.NopPruner()


def sampler(task: SearchTask, number: int):
    """The sampler of the search's `number`-th proposal, seeded by the search's seed and `number`.
    A grid's candidates are enqueued (`enqueue_grid`): its sampler draws nothing. (Not Optuna's
    GridSampler: it calls `study.stop()` when its grid is spent, which raises outside `optimize`.)"""
    if task.spec.sampler == "grid":
        return _optuna().samplers.RandomSampler(seed=proposal_seed(task.seed, number))
    return tpe_sampler(task.spec, task.seed, number)


def proposal_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number) % 2**32


def tpe_sampler(spec: Search, seed: int, number: int):
    """TPE for the `number`-th proposal of a search of `spec` at `seed` (benchmarks/bench_search.py
    replays searches with it)."""
    optuna = _optuna()
    options = dict(n_startup_trials=spec.startup_trials, seed=proposal_seed(seed, number), constant_liar=True,
                   multivariate=len(spec.params) > 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `gamma`: deprecated in Optuna 4.9, to go in 6.0
        try:
            return optuna.samplers.TPESampler(**options, gamma=good_share)
        except TypeError:  # an Optuna without it: its own default (a tenth)
            return optuna.samplers.TPESampler(**options)


def good_share(n: int) -> int:
    """TPE's "good" candidates of the `n` so far: a quarter (Hyperopt's default), at most 25. Optuna's
    default, a tenth, leaves a laptop budget of 8 one good candidate to model: on a planted
    objective over 4 decades its proposals after the start-up stayed 0.97 decades off the optimum
    (median, 24 searches of 10), against 0.45 with a quarter."""
    return max(1, min(math.ceil(0.25 * n), 25))


def distributions(task: SearchTask) -> dict[str, Any]:
    optuna = _optuna()
    out = {}
    for key, space in task.spec.space.items():
        if space.choices is not None:
            out[key] = optuna.distributions.CategoricalDistribution(space.choices)
        elif space.integer:
            out[key] = optuna.distributions.IntDistribution(int(space.low), int(space.high), log=space.log)
        else:
            out[key] = optuna.distributions.FloatDistribution(space.low, space.high, log=space.log)
    return out


def load(task: SearchTask, out_root: Path, *, create: bool = False):
    """The search's Optuna study; None where it has none yet (and `create` is False)."""
    optuna = _optuna()
    if not create and not task.spec.storage and not Path(storage_url(task, out_root)).is_file():
        return None
    direction = "maximize" if task.spec.mode == "max" else "minimize"
    if create:
        return optuna.create_study(study_name=task.name, storage=storage(task, out_root), direction=direction,
                                   load_if_exists=True, pruner=pruner(task), sampler=sampler(task, 0))
    try:
        return optuna.load_study(study_name=task.name, storage=storage(task, out_root), pruner=pruner(task))
    except KeyError:  # the storage has no study of that name
        return None


def stored(task: SearchTask, out_root: Path) -> list:
    """The search's candidates in its storage so far (none before it has one)."""
    study = load(task, out_root)
    return trials_of(study) if study is not None else []


def candidates(task: SearchTask, trials: list) -> Iterator[tuple[Any, list[Stage]]]:
    """Each trial with its candidate's stages (a trial of other fields, from an edited study file, is left out)."""
    for trial in trials:
        if set(trial.params) == set(task.spec.params):
            yield trial, task.stages(trial.params)


def found(plan: Plan, out_root: Path) -> Plan:
    """The plan with every candidate its searches' storages list (for `status` and `report`, which
    run no search): the same plan object, grown."""
    for task in plan.searches.values():
        for _, stages in candidates(task, stored(task, out_root)):
            plan.add_candidate(task.id, stages)
    return plan


def counts(plan: Plan, out_root: Path) -> dict[str, dict[str, int]]:
    """Per search (its id): candidates by Optuna state (COMPLETE, PRUNED, RUNNING, FAIL) and its budget."""
    out = {}
    for tid, task in plan.searches.items():
        trials = stored(task, out_root)
        row = {"budget": task.spec.total}
        for trial in trials:
            row[trial.state.name] = row.get(trial.state.name, 0) + 1
        out[tid] = row
    return out


def candidate_stages(plan: Plan, task: SearchTask, candidate: str) -> list[Stage]:
    """A candidate's stages (a pre-training search's: the pre-training and its evaluations)."""
    return task.stages(task.values(plan.stages[candidate])) if task.children else [plan.stages[candidate]]


def best_candidate(plan: Plan, out_root: Path, run: ArmRun, name: str) -> tuple[str | None, float]:
    """The search's candidate with the best validation metric among those done (a pruned one has
    none; a pre-training's is its evaluation's), and that metric."""
    task = plan.searches[run.searches[name]]
    spec = task.spec
    best, best_value = None, math.nan
    for sid in run.candidates.get(name, ()):
        judged = task.objective(candidate_stages(plan, task, sid))
        value = (store.result(out_root, judged.id) or {}).get(spec.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if best is None or (value > best_value if spec.mode == "max" else value < best_value):
            best, best_value = sid, float(value)
    return best, best_value


def finished(plan: Plan, out_root: Path) -> dict[str, bool]:
    """Per search (its id): whether its budget is spent, every candidate ended (complete, pruned, failed)."""
    out = {}
    for tid, task in plan.searches.items():
        trials = stored(task, out_root)
        out[tid] = len(trials) >= task.spec.total and all(t.state.is_finished() for t in trials)
    return out


def corners(task: SearchTask) -> list[list[Stage]]:
    """Candidates (each its stages) at the base recipe and at each end of every range: the costliest
    bounds the search's cost."""
    samples = [task.stages({})]
    for key, space in task.spec.space.items():
        for value in space.choices if space.choices is not None else (space.low, space.high):
            samples.append(task.stages({key: int(value) if space.integer else value}))
    return samples


def describe(plan: Plan) -> list[str]:
    """What each distinct search spec does, in words: space, sampler, start-up, pruner, budget."""
    lines = []
    for spec in {id(t.spec): t.spec for t in plan.searches.values()}.values():
        count = sum(1 for t in plan.searches.values() if t.spec is spec)
        space = ", ".join(f"{k} in {v.choices}" if v.choices is not None else
                          f"{k} in [{v.low:g}, {v.high:g}]{' log' if v.log else ''}{' int' if v.integer else ''}"
                          for k, v in spec.space.items())
        how = (f"Optuna TPE, {spec.startup_trials} random start-up candidate(s), then each proposed from the results "
               f"so far" if spec.sampler == "tpe" else "a fixed grid (every range at evenly spaced points)")
        pruner = {"halving": "successive halving on the per-epoch", "median": "median stopping on the per-epoch",
                  "quartile": "top-quarter stopping on the per-epoch", "best": "stopping behind the best on the "
                  "per-epoch", "none": "no pruning; judged on the final"}[spec.pruning]
        if spec.section == "pretrain":
            how += "; each candidate a pre-training and the arm's evaluations on it"
        lines.append(f"search: {count} search(es) of {spec.total} candidates over {space}; {how}; {pruner} "
                     f"{spec.metric}; at most {spec.parallel} at once each. Costs above are upper bounds (pruned "
                     f"candidates stop early).")
    return lines


def report(trial, value: float, step: int) -> None:
    """An epoch's value as the trial's intermediate value. An epoch reported again (a stage resumed
    from a checkpoint before its last recorded epoch repeats it, bit for bit on CPU) keeps the first,
    as Optuna does, without Optuna's warning on the user's terminal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is already reported", category=UserWarning)
        trial.report(value, step)


class Searches:
    """The searches of one run. `plans`: every plan a candidate joins (a suite's studies and the
    suite itself); the first holds every search."""

    def __init__(self, plans: Sequence[Plan], out_root: Path) -> None:
        self.plans, self.out_root = list(plans), Path(out_root)
        self.tasks = {tid: task for plan in self.plans for tid, task in plan.searches.items()}
        self.studies: dict[str, Any] = {}
        self.running: dict[str, list[tuple[str, Any]]] = {}  # stage id -> (task id, Optuna trial) running it
        self.proposed: list[str] = []  # candidate stage ids handed out in this run

    def __bool__(self) -> bool:
        return bool(self.tasks)

    # ------------------------------------------------------------------ resuming
    def open(self, rerun_failed: bool = False) -> None:
        """Load (or create) every search's Optuna study; its candidates join the plans, and a
        candidate a killed driver left running is settled from its stage (done, pruned, failed) or
        is pending again, to resume from its checkpoint. With `rerun_failed`, a candidate whose stage
        failed runs again as a new trial of the same values, in the failed one's place in the budget."""
        optuna = _optuna()
        for tid, task in self.tasks.items():
            study = self.studies[tid] = load(task, self.out_root, create=True)
            for trial, stages in candidates(task, trials_of(study)):
                self._join(tid, stages)
                live = optuna.trial.Trial(study, trial._trial_id) if trial.state.name == "RUNNING" else None
                if rerun_failed and trial.state.name == "FAIL":
                    failed = [s.id for s in stages if store.state(self.out_root, s.id) == store.FAILED]
                    if failed:
                        live = self._retry(tid, trial, failed)
                if live is not None:
                    self.running.setdefault(task.objective(stages).id, []).append((tid, live))
        self.settle()  # those whose stages ended meanwhile; the others are pending again, to be run

    def _retry(self, tid: str, failed_trial, failed_stages: list[str]):
        """A new trial of a failed candidate's values (its stages' errors cleared, to run again); the
        failed trial is left out of the candidates from now on."""
        study, task = self.studies[tid], self.tasks[tid]
        for stage_id in failed_stages:
            store.clear_error(store.stage_dir(self.out_root, stage_id))
        study.set_user_attr(SEARCH_RETRIED, [*study.user_attrs.get(SEARCH_RETRIED, []), failed_trial.number])
        study.enqueue_trial(failed_trial.params, skip_if_exists=False)
        trial = study.ask(distributions(task))
        trial.set_user_attr(STAGE_ATTR, failed_trial.user_attrs.get(STAGE_ATTR))
        return trial

    def _join(self, tid: str, stages: list[Stage]) -> list[Stage]:
        for plan in self.plans:
            plan.add_candidate(tid, stages)
        return stages

    # ------------------------------------------------------------------ proposing
    def _remaining(self, tid: str) -> int:
        """Candidates the search has still to propose."""
        return max(0, self.tasks[tid].spec.total - len(trials_of(self.studies[tid])))

    def _live(self, tid: str) -> int:
        return sum(1 for entries in self.running.values() for t, _ in entries if t == tid)

    def propose(self, parent_done: ParentDone) -> list[Stage]:
        """A candidate to run now: its stages still to run, the first startable now and the others
        (a pre-training search's evaluations) once it is done; [] while every search whose parent is
        done is at its budget or at `parallel` running candidates. A proposal equal to a finished
        candidate is told its result at once (same values, same stages) and counts toward the budget."""
        optuna = _optuna()
        self.settle()  # a candidate whose end was not told (a listener that failed) frees its slot here
        for tid, task in self.tasks.items():
            study = self.studies[tid]
            while parent_done(task.parent) and self._live(tid) < task.spec.parallel:
                trials = trials_of(study)
                if len(trials) >= task.spec.total:
                    break
                study.sampler = sampler(task, len(trials))
                if task.spec.sampler == "grid":
                    enqueue_grid(task, study)
                trial = study.ask(distributions(task))
                try:
                    stages = task.stages(trial.params)
                except Exception as e:  # noqa: BLE001 - values the config refuses: that candidate fails
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    study.set_user_attr(f"refused_{trial.number}", str(e)[:300])
                    continue
                trial.set_user_attr(STAGE_ATTR, stages[0].id)
                self._join(tid, stages)
                judged = task.objective(stages)
                self.running.setdefault(judged.id, []).append((tid, trial))
                self._report_recorded(trial, judged.id, task.spec.metric)
                if len(self.running[judged.id]) > 1:  # the same values as a candidate running now
                    continue
                state = store.state(self.out_root, judged.id)
                if state == store.PRUNED:  # stopped by a search's pruner: this trial runs it on from its checkpoint
                    (store.stage_dir(self.out_root, judged.id) / store.PRUNE).unlink(missing_ok=True)
                    state = store.PENDING
                if state != store.PENDING:
                    self.stage_ended(judged.id, state, None)
                    continue
                todo = [s for s in stages if store.state(self.out_root, s.id) != store.DONE]
                self.proposed += [s.id for s in todo if s.id not in self.proposed]
                return todo
        return []

    def _report_recorded(self, trial, stage_id: str, metric: str) -> None:
        """The epochs the candidate's stage has already recorded (a finished stage, one running for
        another search, one resumed after a prune or a stop), as the trial's intermediate values: the
        pruner's bar at each epoch is made of the complete candidates' values there, so a trial told
        its result without them would leave the bar empty."""
        for row in store.epochs(self.out_root, stage_id):
            value = row.get(metric)
            if isinstance(value, (int, float)) and isinstance(row.get("epoch"), int):
                report(trial, float(value), row["epoch"] + 1)

    def may_propose(self, parent_done: ParentDone) -> bool:
        """Whether some search may still propose a candidate in this run (now or once a running
        candidate or a parent ends)."""
        for tid, task in self.tasks.items():
            if parent_done(task.parent) is not False and self._remaining(tid):
                return True
        return False

    def samples(self) -> list[Stage]:
        """The stages of one candidate per search (at its base recipe): what its trials will take."""
        return [s for task in self.tasks.values() for s in task.stages({})]

    def samples_left(self) -> list[Stage]:
        """Stages like those of each candidate still to propose (at its search's base recipe), for estimates."""
        return [s for tid, task in self.tasks.items() for _ in range(self._remaining(tid)) for s in task.stages({})]

    def settle(self) -> None:
        """Each candidate still running in Optuna whose judged stage ended is told how (one below a
        pre-training that failed: failed); one whose stage is pending was cut short by a stop and
        stays running, to be run again."""
        for stage_id in list(self.running):
            state = store.state(self.out_root, stage_id)
            if state == store.PENDING:
                tid = self.running[stage_id][0][0]
                parent = self.plans[0].stages[stage_id].parent  # the first plan holds every candidate
                if parent is not None and self.tasks[tid].children and \
                        store.state(self.out_root, parent) in (store.FAILED, store.PRUNED):
                    state = store.BLOCKED
            if state != store.PENDING:
                self.stage_ended(stage_id, state, None)

    def left(self) -> int:
        """The stages of the candidates still to propose, over every search (an upper bound of the
        trials to come; a pre-training search's candidate is its pre-training and evaluations)."""
        return sum(self._remaining(tid) * (1 + len(task.children)) for tid, task in self.tasks.items())

    # ------------------------------------------------------------------ results
    def epoch(self, stage_id: str, metrics: dict[str, Any]) -> bool:
        """A running candidate's epoch: its validation metric goes to Optuna as an intermediate
        value; True when the pruner stops it (its folder then says so in pruned.json). A stage that
        several searches proposed (the same values) stops only when each one's pruner says so; a
        search whose pruner said so first has its trial pruned there, and the others go on."""
        entries = self.running.get(stage_id)
        if not entries or "epoch" not in metrics:
            return False
        tid, _ = entries[0]
        task = self.tasks[tid]
        value = metrics.get(task.spec.metric)
        if not isinstance(value, (int, float)):
            return False
        step = int(metrics["epoch"]) + 1
        last = step >= self.plans[0].stages[stage_id].epochs  # trained to the end: nothing left to save
        pruned = _optuna().trial.TrialState.PRUNED
        for entry in list(entries):
            trial = entry[1]
            report(trial, float(value), step)
            if last or not trial.should_prune():  # asked once: successive halving records a rung when asked
                continue
            if len(entries) == 1:
                break
            self.studies[entry[0]].tell(trial, state=pruned, skip_if_finished=True)
            entries.remove(entry)
        else:
            return False
        store.write_json_atomic(store.stage_dir(self.out_root, stage_id) / store.PRUNE, {
            "epoch": step - 1, "epochs_done": step, "metric": task.spec.metric, "value": value,
            "pruner": task.spec.pruning, "search": task.name, "trials": [t.number for _, t in entries],
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self._tell(stage_id, pruned)
        return True

    def stage_ended(self, stage_id: str, state: str, error: str | None) -> None:
        """Tell Optuna how a candidate ended: its validation metric (done), pruned, or failed. A
        stage still pending (the run was stopped) stays running in Optuna, to resume next time."""
        if stage_id not in self.running:
            return
        optuna = _optuna()
        if state == store.DONE:
            tid, _ = self.running[stage_id][0]
            value = (store.result(self.out_root, stage_id) or {}).get(self.tasks[tid].spec.metric)
            if isinstance(value, (int, float)):
                self._tell(stage_id, optuna.trial.TrialState.COMPLETE, float(value))
            else:
                self._tell(stage_id, optuna.trial.TrialState.FAIL)
        elif state == store.PRUNED:
            self._tell(stage_id, optuna.trial.TrialState.PRUNED)
        elif state in (store.FAILED, store.BLOCKED):
            self._tell(stage_id, optuna.trial.TrialState.FAIL)

    def _tell(self, stage_id: str, state, value: float | None = None) -> None:
        for tid, trial in self.running.pop(stage_id, []):
            self.studies[tid].tell(trial, value if state.name == "COMPLETE" else None, state=state,
                                   skip_if_finished=True)

    # the other listener events
    def wave_started(self, wave: int, stage_ids: Sequence[str]) -> None: ...

    def stage_started(self, stage_id: str) -> None: ...

    def stage_epoch(self, stage_id: str, metrics: dict) -> None: ...

    def stage_retrying(self, stage_id: str, error: str) -> None: ...
