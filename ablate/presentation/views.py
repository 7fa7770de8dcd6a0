"""What the CLI prints: the plan's stage table with costs, the stage store's status, a run's outcome."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ablate.execution import lease, search, store
from ablate.execution.runner import Outcome, current_states
from ablate.planning.cost import estimate, parallel_trials
from ablate.planning.plan import Plan, Stage
from ablate.presentation.results import RESULTS
from ablate.spec.suite import Suite


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:,.1f} h"


def resources_summary(plan: Plan) -> str:
    """Which stage kinds take which trial resources, e.g. 'pretrain, finetune on 2 workers x 1 CPU;
    linear_probe on 1 CPU'."""
    kinds: dict[int, list[str]] = {}
    for stage in plan.stages.values():
        names = kinds.setdefault(stage.workers, [])
        if stage.kind not in names:
            names.append(stage.kind)
    if len(kinds) <= 1:
        return f"per trial {plan.resources.describe(next(iter(kinds), 1))}"
    return "; ".join(f"{', '.join(names)} on {plan.resources.describe(workers)}"
                     for workers, names in sorted(kinds.items(), reverse=True))


class ToRun:
    """The cost of the stages still to run (each counted once), summed as `ablate plan` prints it."""

    def __init__(self) -> None:
        self.images, self.unknown, self.gpu_seconds = 0, False, 0.0
        self.seconds: dict[tuple[int, int], float] = {}  # (slots, workers) -> trial seconds: sizes pack differently

    def add(self, plan: Plan, sid: str, stage: Stage | None = None, times: int = 1) -> None:
        """The stage `sid` of the plan, or `times` stages like `stage` (a search's candidates to come)."""
        stage = stage or plan.stages[sid]
        cost = estimate(stage, plan.profile)
        cost = type(cost)(cost.images * times, None if cost.seconds is None else cost.seconds * times)
        self.images += cost.images
        self.unknown |= cost.seconds is None
        key = (parallel_trials(plan, stage.workers), stage.workers)
        self.seconds[key] = self.seconds.get(key, 0.0) + (cost.seconds or 0.0)
        self.gpu_seconds += (cost.seconds or 0.0) * stage.workers * plan.resources.gpu

    @property
    def trial_seconds(self) -> float:
        return sum(self.seconds.values())

    def timing(self) -> str:
        """'~12.0 min of trial time (3.0 GPU-hours), about 6.0 min with 2 trial(s) at once, ...'."""
        if self.unknown:
            return "time unknown: the profile has no measured speed for this model variant"
        workers = {w for _, w in self.seconds}
        size = {w: "" if len(workers) == 1 else "single-worker " if w == 1 else f"{w}-worker " for w in workers}
        by_workers = sorted(self.seconds, key=lambda key: key[1])
        at_once = " and ".join(dict.fromkeys(f"{n} {size[w]}trial(s)" for n, w in by_workers))
        wall = sum(seconds / slots for (slots, _), seconds in self.seconds.items())
        gpu_hours = f" ({self.gpu_seconds / 3600:,.1f} GPU-hours)" if self.gpu_seconds else ""
        return (f"~{duration(self.trial_seconds)} of trial time{gpu_hours}, about {duration(wall)} with "
                f"{at_once or '1 trial(s)'} at once, plus Ray start-up and about 10 s per stage"
                f"{' (20 s more to start a data-parallel one)' if any(w > 1 for w in workers) else ''}")


def speeds(plan: Plan) -> str:
    """The profile's measured speeds and the file they come from."""
    speed = ", ".join(f"{k} {v:g} img/s" for k, v in plan.profile.throughput.items()) or "none given"
    source = plan.profile.source
    where = f"the throughput of {source.name}, whose comments say where it was measured" if source else "the profile"
    return f"Speeds (MAE pre-training, one worker, from {where}): {speed}."


def plan_table(plan: Plan, out_root: Path, console: Console) -> None:
    study = plan.study
    states = current_states(plan, out_root)
    console.print(f"study {study.name}: {study.description}".rstrip(": "))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in (("arm", "left"), ("seed", "right"), ("stage", "left"), ("stage id", "left"),
                            ("state", "left"), ("resources", "left"), ("images", "right"), ("~time", "right")):
        table.add_column(column, justify=justify, no_wrap=column in ("stage id", "resources", "images"))
    seen: set[str] = set()
    todo = ToRun()
    for run in plan.runs:
        named = list(run.stages.items()) + [(f"{name}#{i + 1}", sid) for name, ids in run.candidates.items()
                                            for i, sid in enumerate(ids)]
        for name, sid in named:
            cost = estimate(plan.stages[sid], plan.profile)
            state = states[sid] if sid not in seen else f"{states[sid]}, shared"
            if sid not in seen and states[sid] != store.DONE:
                todo.add(plan, sid)
            seen.add(sid)
            table.add_row(run.arm, str(run.seed), name, sid, state, plan.trial_resources(sid), f"{cost.images:,}",
                          duration(cost.seconds))
        for name, tid in run.searches.items():  # candidates still to propose: the budget's upper bound
            task = plan.searches[tid]
            left = task.spec.total - len(run.candidates.get(name, ()))
            if tid in seen:  # one search that several arms share (like a shared stage)
                table.add_row(run.arm, str(run.seed), f"{name} search", "", "shared", "", "", "")
                continue
            seen.add(tid)
            if left <= 0:
                continue
            costliest = max(search.corners(task), key=lambda group: sum(estimate(st, plan.profile).images
                                                                       for st in group))
            images = sum(estimate(st, plan.profile).images for st in costliest)
            seconds = [estimate(st, plan.profile).seconds for st in costliest]
            for one in costliest:
                todo.add(plan, one.id, one, left)
            total = None if None in seconds else sum(seconds) * left
            table.add_row(run.arm, str(run.seed), f"{name} search", f"{left} of {task.spec.total} candidates",
                          f"to propose ({task.spec.sampler})", plan.resources.describe(costliest[0].workers),
                          f"<={images * left:,}", f"<={duration(total)}")
    console.print(table)
    counts = {s: list(states.values()).count(s) for s in (store.DONE, store.FAILED, store.BLOCKED, store.PENDING)}
    console.print(f"{len(plan.arms)} arm(s) x {len(study.seeds)} seed(s): {len(plan.stages)} distinct stages, "
                  f"{counts[store.DONE]} done, {counts[store.FAILED]} failed, {counts[store.BLOCKED]} blocked, "
                  f"{counts[store.PENDING]} to run; {resources_summary(plan)}")
    console.print(f"to run: {todo.images:,} images; {todo.timing()}. {speeds(plan)}")
    for line in search.describe(plan):
        console.print(line)
    console.print(f"stage folders: {store.stages_root(out_root)}/<stage id>/ (nothing was run or written)")


def suite_table(plans: list[Plan], out_root: Path, console: Console) -> None:
    """Several studies planned together (`ablate plan studies/`): one row per study, a stage that
    several studies share counted once, where it first appears, and the whole suite's cost."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in (("study", "left"), ("arms", "right"), ("seeds", "right"), ("stages", "right"),
                            ("shared", "right"), ("done", "right"), ("to run", "right"), ("~trial time", "right")):
        table.add_column(column, justify=justify)
    seen: set[str] = set()
    total = ToRun()
    done = 0
    for plan in plans:
        states = current_states(plan, out_root)
        new = [sid for sid in plan.stages if sid not in seen]
        pending = [sid for sid in new if states[sid] != store.DONE]
        own = ToRun()
        for sid in pending:
            own.add(plan, sid)
            total.add(plan, sid)
        done += len(new) - len(pending)
        seen.update(plan.stages)
        table.add_row(plan.study.name, str(len(plan.arms)), str(len(plan.study.seeds)), str(len(plan.stages)),
                      str(len(plan.stages) - len(new)), str(len(new) - len(pending)), str(len(pending)),
                      "?" if own.unknown else duration(own.trial_seconds))
    console.print(table)
    console.print(f"{len(plans)} studies: {len(seen)} distinct stages ({sum(len(p.stages) for p in plans) - len(seen)} "
                  f"shared with a study above them, counted once), {done} done, {len(seen) - done} to run.")
    console.print(f"to run: {total.images:,} images; {total.timing()}. {speeds(plans[0])}")
    console.print(f"stage folders: {store.stages_root(out_root)}/<stage id>/ (nothing was run or written)")


def status_table(plan: Plan, out_root: Path, console: Console) -> None:
    states = current_states(plan, out_root)
    stale = store.stale(out_root, {sid: stage.runner for sid, stage in plan.stages.items()})
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("stage id", "stage", "arms", "state", "epochs", "ran on", "result / error"):
        table.add_column(column, no_wrap=column == "stage id")
    for sid, stage in plan.stages.items():
        users = plan.users(sid)
        arms = list(dict.fromkeys(run.arm for run, _ in users))
        reported = len(store.epochs(out_root, sid))
        result = store.result(out_root, sid) or {}
        shown = {k: v for k, v in result.items() if k in ("pretrain_loss", "lin_top1", "ft_top1")}
        detail = (store.error_line(out_root, sid) if states[sid] == store.FAILED
                  else ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        if states[sid] == store.BLOCKED:
            detail = f"waits for {stage.parent}, which failed"
        if states[sid] == store.PRUNED:
            why = store.pruned(out_root, sid)
            detail = f"pruned after {why.get('epochs_done', '?')} epoch(s): {why.get('metric')} {why.get('value', '?')}"
        owner = lease.live_holder(store.stage_dir(out_root, sid)) if states[sid] == store.PENDING else None
        if owner is not None:
            detail = f"running now: {owner}"
        table.add_row(sid, users[0][1] if users else stage.kind,
                      arms[0] if len(arms) == 1 else f"{len(arms)} arms",
                      f"{states[sid]} (numerics {stale[sid]})" if sid in stale else states[sid],
                      f"{reported}/{stage.epochs}", store.ran_on(out_root, sid), detail[:120])
    console.print(table)
    for sid in plan.stages:  # what the stage's own code warned about while it ran (its folder's warnings.jsonl)
        for note in store.warnings(out_root, sid):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(note.get("time", 0))))
            console.print(f"warning {sid} ({stamp}): {note['message']}")
    counts = {s: list(states.values()).count(s)
              for s in (store.DONE, store.FAILED, store.BLOCKED, store.PRUNED, store.PENDING)}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n or s != store.PRUNED)
                  + f" of {len(states)} stages (store: {store.stages_root(out_root)})")
    for line in search_status(plan, out_root):
        console.print(line)
    console.print(store_line(out_root, plan))
    if stale:
        console.print(stale_line(stale))


def search_status(plan: Plan, out_root: Path) -> list[str]:
    """Per search: candidates complete, pruned, running, failed of its budget, and the best so far."""
    from ablate.execution.search import best_candidate

    lines = []
    counts = search.counts(plan, out_root)
    for run in plan.runs:
        for name, tid in run.searches.items():
            task, c = plan.searches[tid], counts[tid]
            line = (f"search {run.arm}/seed{run.seed}/{name}: {sum(v for k, v in c.items() if k != 'budget')} of "
                    f"{c['budget']} candidates: {c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} pruned, "
                    f"{c.get('RUNNING', 0)} running, {c.get('FAIL', 0)} failed")
            best, value = best_candidate(plan, out_root, run, name)
            if best is not None:
                chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in task.values(plan.stages[best]).items())
                line += f"; best {task.spec.metric} {value:.4g} at {chosen} ({best})"
            lines.append(line)
    if plan.searches:
        where = {search.storage_url(t, out_root) for t in plan.searches.values()}
        lines.append(f"Optuna storage: {', '.join(sorted(where))} (optuna.load_study(study_name='<arm>/seed<k>/"
                     f"<evaluation>', storage=...))")
    return lines


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def store_line(out_root: Path, plan: Plan) -> str:
    """What this study's stages hold on disk, what the whole store holds (every study under this
    output root), and what `ablate clean` frees of each."""
    mine, mine_size, mine_free = store.disk_usage(out_root, plan.stages)
    folders, size, freeable = store.disk_usage(out_root)
    return (f"store size: {plan.study.name} {human_bytes(mine_size)} in {mine} stage folders (resume checkpoints "
            f"of its finished stages {human_bytes(mine_free)}); the whole store {human_bytes(size)} in {folders} "
            f"(resume checkpoints {human_bytes(freeable)}; `ablate clean --out {out_root}` removes them)")


def stale_line(stale: dict[str, int]) -> str:
    import core

    versions = ", ".join(str(v) for v in sorted(set(stale.values())))
    now = ", ".join(f"{k} {v}" for k, v in core.NUMERICS_VERSION.items())
    return (f"{len(stale)} finished stage{'s' * (len(stale) > 1)} computed by numerics version {versions} of their "
            f"engine in core/ (this code: {now}) will not be reused silently: `ablate run` with --rerun-stale "
            f"recomputes them (their folders kept as <id>.numerics-<v>), with --keep-stale uses them as they are")


def outcome_summary(plan: Plan, outcome: Outcome, console: Console, *, resume: str) -> int:
    """Print how the run ended; return the exit status (0 all done, 1 some failed)."""
    states = outcome.states
    counts = _counts(outcome)
    reused = counts[store.DONE] - sum(1 for sid in outcome.ran if states.get(sid) == store.DONE)
    pruned = outcome.count(store.PRUNED)
    console.print(f"{plan.study.name}: {counts[store.DONE]}/{len(states)} stages done ({len(outcome.ran)} run now, "
                  f"{max(reused, 0)} already done), {counts[store.FAILED]} failed, {counts[store.BLOCKED]} blocked, "
                  + (f"{pruned} pruned (search candidates stopped early), " if pruned else "")
                  + f"{counts[store.PENDING]} pending")
    _failed_lines(outcome, console)
    console.print(f"results: {Path(outcome.study_dir) / RESULTS}")
    if outcome.report is not None:
        console.print(f"report: {outcome.report}")
    if outcome.mlflow:
        console.print(f"MLflow: {outcome.mlflow['tracking_uri']} (experiment {outcome.mlflow['experiment_name']!r}); "
                      f"browse with: ablate ui {plan.study.source or plan.study.name}")
    return _exit_status(outcome, counts, console, resume)


def _counts(outcome: Outcome) -> dict[str, int]:
    return {state: outcome.count(state) for state in (store.DONE, store.FAILED, store.BLOCKED, store.PENDING)}


def _failed_lines(outcome: Outcome, console: Console) -> None:
    for sid, state in outcome.states.items():
        if state == store.FAILED:
            console.print(f"  failed {sid}: {store.error_line(Path(outcome.study_dir).parent, sid)}")


def _exit_status(outcome: Outcome, counts: dict[str, int], console: Console, resume: str) -> int:
    """130 interrupted (and how to resume), 1 some stage failed or is blocked (and how to retry), else 0."""
    if outcome.interrupted:
        console.print(f"interrupted: finished stages are kept and cut ones continue from their checkpoints. "
                      f"Resume with: {resume}")
        return 130
    if counts[store.FAILED] or counts[store.BLOCKED]:
        console.print(f"some stages failed (see error.txt in their folders); retry them with: {resume} --rerun-failed")
        return 1
    return 0


def suite_summary(suite: Suite, plans: list[Plan], outcome: Outcome, console: Console, *, resume: str) -> int:
    """How a suite's run ended: a line per study, then the suite's stages, the paper's findings
    tallied and the combined report; returns the exit status (0 all done, 1 some failed)."""
    for plan, own in zip(plans, outcome.studies):
        counts = _counts(own)
        failed = f", {counts[store.FAILED]} failed" if counts[store.FAILED] else ""
        blocked = f", {counts[store.BLOCKED]} blocked" if counts[store.BLOCKED] else ""
        console.print(f"  {plan.study.name}: {counts[store.DONE]}/{len(own.states)} stages done{failed}{blocked}; "
                      f"report: {own.report or 'not drawn'}")
    states = outcome.states
    counts = _counts(outcome)
    ran = sum(1 for sid in outcome.ran if states.get(sid) == store.DONE)
    console.print(f"{suite.name}: {len(plans)} studies, {counts[store.DONE]}/{len(states)} distinct stages done "
                  f"({ran} run now, {max(counts[store.DONE] - ran, 0)} already done), {counts[store.FAILED]} failed, "
                  f"{counts[store.BLOCKED]} blocked, {counts[store.PENDING]} pending")
    _failed_lines(outcome, console)
    if outcome.report is not None:
        console.print(f"{claims_tally(Path(outcome.report).parent)}; combined report: {outcome.report}")
    if outcome.mlflow:
        console.print(f"MLflow: {outcome.mlflow['tracking_uri']} (experiment {outcome.mlflow['experiment_name']!r}: "
                      f"every stage of every study; each study also has its own experiment)")
    return _exit_status(outcome, counts, console, resume)


def claims_tally(report_dir: Path) -> str:
    """'the paper's findings: 4 reproduced, 1 not reproduced, 5 inconclusive (of 10)', from the
    combined report's claims table."""
    import csv

    from dashboards.decide import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

    path = Path(report_dir) / "tables" / "claims.csv"
    if not path.is_file():
        return "the paper's findings: not judged"
    with path.open(newline="") as handle:
        verdicts = [row["verdict"] for row in csv.DictReader(handle)]
    words = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    return ("the paper's findings: " + ", ".join(f"{verdicts.count(w)} {w}" for w in words)
            + f" (of {len(verdicts)})")
