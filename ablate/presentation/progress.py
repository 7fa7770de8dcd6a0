"""The live view while a study runs: stages done / running / failed / pending, and each running
stage's epoch and latest metric. A rich table on a terminal; plain lines otherwise (CI, logs)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ablate.execution import store
from ablate.planning.cost import estimate, parallel_trials
from ablate.planning.plan import Plan, Stage

PLAIN_EVERY_S = 10.0  # plain output: at most one epoch line per stage this often (and the last epoch)
# The metric worth watching per stage kind.
# Fine-tuning reads the test split at its last epoch only: before that its validation accuracy.
HEADLINE = {"pretrain": ("loss",), "linear_probe": ("lin_top1",), "finetune": ("ft_top1", "ft_val_top1"),
            "partial_finetune": ("ft_top1", "ft_val_top1"), "scratch": ("ft_top1", "ft_val_top1")}


class TimeLeft:
    """The run's time left: the planner's cost estimate of each stage still to run (ablate/planning/cost.py),
    scaled by how long the stages of its kind this run finished took against their own estimates (of
    any kind while none of its own has finished: the cost model is off by different factors for
    pre-training and fine-tuning), over the trials that run at once (the most seen running so far;
    before any, as many as fit on this machine). None when the profile has no measured speed for a
    stage's model."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.estimates = {sid: estimate(stage, plan.profile).seconds for sid, stage in plan.stages.items()}
        self.kinds = {sid: stage.kind for sid, stage in plan.stages.items()}
        self.slots = parallel_trials(plan)
        self.more: Callable[[], list[Stage]] = list  # stages like the candidates searches will still propose
        self.seen_at_once = 0
        self.spent: dict[str, float] = {}  # per stage kind: seconds its finished stages took
        self.expected: dict[str, float] = {}  # and their estimates

    def running(self, count: int) -> None:
        self.seen_at_once = max(self.seen_at_once, count)

    def _estimate(self, stage: Stage) -> float | None:
        if stage.id not in self.estimates:  # a search's candidate, proposed during the run
            self.estimates[stage.id] = estimate(stage, self.plan.profile).seconds
            self.kinds[stage.id] = stage.kind
        return self.estimates[stage.id]

    def ended(self, stage_id: str, seconds: float) -> None:
        expected, kind = self._estimate(self.plan.stages[stage_id]), self.kinds.get(stage_id)
        if expected and kind:
            self.spent[kind] = self.spent.get(kind, 0.0) + seconds
            self.expected[kind] = self.expected.get(kind, 0.0) + expected

    def scale(self, kind: str) -> float:
        if self.expected.get(kind):
            return self.spent[kind] / self.expected[kind]
        total = sum(self.expected.values())
        return sum(self.spent.values()) / total if total > 0 else 1.0

    def seconds(self, states: dict[str, str], running: dict[str, float]) -> float | None:
        """Seconds left, given each stage's state and the running ones' seconds so far."""
        self.running(len(running))
        left = 0.0
        for sid, state in states.items():
            if state != store.PENDING:
                continue
            expected = self._estimate(self.plan.stages[sid])
            if expected is None:
                return None
            left += max(expected * self.scale(self.kinds[sid]) - running.get(sid, 0.0), 0.0)
        for stage in self.more():
            expected = self._estimate(stage)  # a candidate at its search's base recipe: one estimate per search
            if expected is None:
                return None
            left += expected * self.scale(stage.kind)
        return left / max(self.seen_at_once or self.slots, 1)


def left_text(seconds: float | None) -> str:
    if seconds is None:
        return "time left unknown"
    if seconds < 90:
        return "under 2 min left"
    return f"about {seconds / 60:.0f} min left" if seconds < 5400 else f"about {seconds / 3600:.1f} h left"


def stage_label(plan: Plan, stage_id: str) -> str:
    users = plan.users(stage_id)
    arms = list(dict.fromkeys(run.arm for run, _ in users))
    name = users[0][1] if users else plan.stages[stage_id].kind
    arm = arms[0] if len(arms) == 1 else f"{len(arms)} arms"
    return f"{arm}/{name}"


class LiveView:
    def __init__(self, plan: Plan, states: dict[str, str], console: Console | None = None,
                 live: bool | None = None, out_root: Path | None = None):
        self.plan = plan
        self.out_root = out_root  # where stages record their warnings (ablate/execution/stage_warnings.py)
        self._warned: set[tuple[float, str]] = set()
        self.states = dict(states)
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.running: dict[str, dict[str, Any]] = {}
        self.wave = 0
        self.started = time.time()
        self._live: Live | None = None
        self.time_left = TimeLeft(plan)

    # ------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> LiveView:
        if self.live:
            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _say(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, highlight=False)
        else:
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------------- counts
    def counts(self) -> dict[str, int]:
        values = list(self.states.values())
        return {"done": values.count(store.DONE), "running": len(self.running),
                "failed": values.count(store.FAILED), "blocked": values.count(store.BLOCKED),
                "pruned": values.count(store.PRUNED),
                "pending": values.count(store.PENDING) - len(self.running), "total": len(values)}

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{c['done']}/{c['total']} done", f"{c['running']} running", f"{c['failed']} failed",
                 f"{c['pending']} pending"]
        if c["blocked"]:
            parts.append(f"{c['blocked']} blocked")
        if c["pruned"]:
            parts.append(f"{c['pruned']} pruned")
        if c["pending"] or c["running"]:
            now = time.time()
            running = {sid: now - info["since"] for sid, info in self.running.items()}
            parts.append(left_text(self.time_left.seconds(self.states, running)))
        return ", ".join(parts)

    def render(self) -> Group:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("stage", "id", "epoch", "metric", "time"):
            table.add_column(column)
        now = time.time()
        for sid, info in self.running.items():
            epoch = info.get("epoch")
            epochs = self.plan.stages[sid].epochs
            metric = info.get("metric")
            table.add_row(stage_label(self.plan, sid), sid, f"{epoch + 1}/{epochs}" if epoch is not None else f"-/{epochs}",
                          f"{metric[0]} {metric[1]:.4g}" if metric else "", f"{now - info['since']:.0f}s")
        head = Text(f"{self.plan.study.name} · wave {self.wave} · {self.summary()} · "
                    f"{time.time() - self.started:.0f}s", style="bold")
        return Group(head, table) if self.running else Group(head)

    # ------------------------------------------------------------------------- listener
    def wave_started(self, wave: int, stage_ids: Sequence[str]) -> None:
        self.wave = wave
        more = len(self.time_left.more())
        searched = f" and up to {more} stages of search candidates" if more else ""
        self._say(f"wave {wave}: {len(stage_ids)} stage{'s' if len(stage_ids) != 1 else ''}{searched} to run "
                  f"({self.summary()})")

    def stage_started(self, stage_id: str) -> None:
        self.running.setdefault(stage_id, {"since": time.time()})
        self.states.setdefault(stage_id, store.PENDING)  # a search's candidate, new to the plan
        self.time_left.running(len(self.running))
        if self._live is None:
            self._say(f"start   {stage_label(self.plan, stage_id)} ({stage_id})")

    def stage_epoch(self, stage_id: str, metrics: dict[str, Any]) -> None:
        info = self.running.setdefault(stage_id, {"since": time.time()})
        info["epoch"] = int(metrics.get("epoch", 0))
        key = next((k for k in HEADLINE.get(self.plan.stages[stage_id].kind, ()) if k in metrics), None)
        if key is not None:
            info["metric"] = (key, float(metrics[key]))
        self._show_warnings(stage_id)
        last = info["epoch"] + 1 == self.plan.stages[stage_id].epochs
        if self._live is None and (last or time.time() - info.get("said", 0.0) >= PLAIN_EVERY_S):
            info["said"] = time.time()
            metric = f"  {key} {float(metrics[key]):.4g}" if key is not None else ""
            self._say(f"epoch   {stage_label(self.plan, stage_id)} {info['epoch'] + 1}/{self.plan.stages[stage_id].epochs}"
                      f"{metric}")

    def stage_elsewhere(self, stage_id: str, owner: str) -> None:
        self._say(f"elsewhere {stage_label(self.plan, stage_id)} ({stage_id}): running elsewhere: {owner}; "
                  f"this run goes on with other stages and takes it up when it is done (or its owner is gone)")

    def stage_retrying(self, stage_id: str, error: str) -> None:
        last = [line for line in (error or "").splitlines() if line.strip()]
        self._say(f"retry   {stage_label(self.plan, stage_id)}: the trial failed "
                  f"({last[-1][:160] if last else 'worker died'}); resuming from its checkpoint")

    def stage_ended(self, stage_id: str, state: str, error: str | None) -> None:
        self._show_warnings(stage_id)
        info = self.running.pop(stage_id, None)
        if info is not None and state == store.DONE:
            self.time_left.ended(stage_id, time.time() - info["since"])
        self.states[stage_id] = state
        if state == store.FAILED:
            self._say(f"FAILED  {stage_label(self.plan, stage_id)} ({stage_id}): {error or 'see error.txt'}")
        else:
            self._say(f"{state:<7} {stage_label(self.plan, stage_id)} ({self.summary()})")

    def _show_warnings(self, stage_id: str) -> None:
        """Warnings the stage recorded since this run started (a worker's stderr is not shown)."""
        if self.out_root is None:
            return
        for note in store.warnings(self.out_root, stage_id):
            key = (float(note.get("time", 0.0)), str(note["message"]))
            if key[0] >= self.started - 1.0 and key not in self._warned:
                self._warned.add(key)
                self._say(f"warning {stage_label(self.plan, stage_id)}: {key[1]}")
