"""Fault injection for the tests, through the backends' public `launch` seam (ablate/execution/stages.py).

`Fault(rules)` is a launch: it runs the stage's engine as it is and, right after an epoch is
recorded and reported, does what a rule says for that stage, driven by the engine's own progress
(no timer, no polling). A rule is `do:stage:epoch`, several comma-separated; `stage` is a stage id
or a kind (`pretrain` matches `pretrain-<hash>`), and the rule fires at the first reported epoch
>= `epoch`, once per stage (a mark in its folder), so a retried attempt runs clean:

    crash        the worker process exits at once (os._exit), as a killed one: no exception, no cleanup;
                 on the serial backend, which has no worker, it raises WorkerCrashed instead
    sigkill      the worker process sends itself SIGKILL (Ray backend only)
    nan          raises the NonFiniteLoss a diverging loss raises: a deterministic failure, every attempt
    sigint       SIGINT to the driver that built the Fault, as Ctrl-C (on the serial backend, which runs the
                 stage in the driver: the KeyboardInterrupt it raises there)
    kill-driver  SIGKILL to the driver that built the Fault (Ray backend only), at the first epoch
                 >= `epoch` after the stage named by `when-done=<stage id>` (optional 4th field) is done
    fill-disk    writes `<out_root>/filler` until the output root's disk is full, and goes on
    hold         waits there until the stage named by `when-done=<stage id>` is done (any driver's),
                 holding the stage's lease meanwhile; gives up with an error after HOLD_S
    plant        not a fault: the stage runs `planted` instead of its engine (a validation metric that is a
                 known function of the fine-tune's, or the pre-training's, blr: for the search tests); `plant:<kind>:0`

A 4th field `after-done=<n>` holds a rule back until `n` stages of the target kind are done.

A 4th field `before-line` strikes before the epoch is recorded instead: after the engine wrote
that epoch's checkpoint, before its line in metrics.jsonl (the narrowest window of a real kill).

`python -m tests.faults RULES <ablate arguments>` runs the CLI with its backend built with this launch.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
from functools import partial
from pathlib import Path

from ablate import cli
from ablate.execution import store
from ablate.execution.serial_backend import WorkerCrashed
from core.errors import NonFiniteLoss

ACTIONS = ("crash", "sigkill", "sigint", "nan", "kill-driver", "fill-disk", "hold", "plant")
HOLD_S = 300.0


class Fault:
    def __init__(self, rules: str, *, serial: bool = False):
        self.serial = serial
        self.driver = os.getpid()  # built in the driver; the rules run in the trials' workers
        self.rules = []
        for part in filter(None, (rules or "").split(",")):
            do, target, epoch, *when = part.strip().split(":")
            if do not in ACTIONS:
                raise ValueError(f"unknown fault {do!r}; valid: {list(ACTIONS)}")
            before = "before-line" in when
            done = next((w.removeprefix("when-done=") for w in when if w.startswith("when-done=")), None)
            count = next((int(w.removeprefix("after-done=")) for w in when if w.startswith("after-done=")), 0)
            self.rules.append((do, target, int(epoch), done, before, count))

    def __call__(self, engine, job, out_dir: Path, report):
        """The launch: the engine in this process, its report between the rules that strike before
        the epoch's line and those that strike after it."""
        def reporting(metrics: dict) -> None:
            epoch = int(metrics.get("epoch", -1))
            self._check(job, Path(out_dir), epoch, before=True)
            report(metrics)
            self._check(job, Path(out_dir), epoch, before=False)
        if any(do == "plant" and _matches(job.stage.id, target) for do, target, *_ in self.rules):
            engine = planted
        return engine(job, out_dir, reporting)

    def _check(self, job, folder: Path, epoch: int, *, before: bool) -> None:
        stage = job.stage
        for do, target, at, done, strikes_before, count in self.rules:
            if do == "plant" or strikes_before != before or epoch < at or not _matches(stage.id, target):
                continue
            if count and _done_of(Path(job.out_root), target) < count:
                continue
            if do == "nan":
                raise NonFiniteLoss(f"non-finite loss nan at epoch {epoch} (injected)")
            if do == "hold" and not (folder / ".fault-hold").exists():
                (folder / ".fault-hold").write_text(f"at epoch {epoch}\n")
                _hold_until_done(Path(job.out_root), done)
                continue
            if done is not None and store.state(Path(job.out_root), done) != store.DONE:
                continue
            mark = folder / f".fault-{do}"
            if mark.exists():
                continue
            mark.write_text(f"at epoch {epoch}\n")
            if do == "kill-driver":
                os.kill(self.driver, signal.SIGKILL)
            elif do == "sigint" and self.serial:
                raise KeyboardInterrupt()  # what Ctrl-C raises in the driver, which runs the stage here
            elif do == "sigint":
                os.kill(self.driver, signal.SIGINT)
            elif do == "fill-disk":
                _fill(Path(job.out_root) / "filler")
            elif do == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.serial:
                raise WorkerCrashed()
            else:
                os._exit(3)


def _matches(stage_id: str, target: str) -> bool:
    return stage_id == target or stage_id.startswith(f"{target}-")


def _done_of(out_root: Path, kind: str) -> int:
    return sum(1 for f in store.stages_root(out_root).glob(f"{kind}-*/{store.RESULT}"))


PLANTED_OPTIMUM = 3e-3  # the fine-tune blr at which `planted` peaks


def planted_top1(blr: float, optimum: float = PLANTED_OPTIMUM) -> float:
    """The planted objective: 90 at the optimum, 40 points less per decade squared away from it."""
    return 90.0 - 40.0 * (math.log10(blr) - math.log10(optimum)) ** 2


def planted(job, out_dir: Path, report) -> dict:
    """A stand-in engine: a pre-training of one epoch that learns nothing, a linear probe whose
    validation top-1 is planted_top1 of its pre-training's blr, and a fine-tune whose
    validation top-1 at epoch e of E is planted_top1(blr) * (e + 1) / E (so every epoch ranks the
    candidates as the last does), its test top-1 one point below. The optimum is
    PLANTED_OPTIMUM, or the number in `<out_root>/planted-optimum.txt` where there is one."""
    stage = job.stage
    if stage.runner == "pretrain":
        report({"epoch": 0, "loss": 1.0})
        return {"pretrain_loss": 1.0}
    if stage.runner == "linear_probe":  # a function of its pre-training's blr
        parent = json.loads((store.stage_dir(Path(job.out_root), stage.parent) / store.CONFIG).read_text())
        top1 = planted_top1(parent["pretrain"]["blr"])
        report({"epoch": 0, "lin_val_top1": top1, "lin_top1": top1 - 1.0})
        return {"lin_top1": top1 - 1.0, "lin_top5": 99.0, "lin_val_top1": top1}
    recipe = stage.recipe
    planted_file = Path(job.out_root) / "planted-optimum.txt"
    optimum = float(planted_file.read_text()) if planted_file.is_file() else PLANTED_OPTIMUM
    final = planted_top1(recipe["blr"], optimum)
    epochs = int(recipe["epochs"])
    for epoch in range(epochs):
        report({"epoch": epoch, "train_loss": 1.0, "ft_val_top1": final * (epoch + 1) / epochs})
    return {"ft_top1": final - 1.0, "ft_top5": 99.0, "ft_val_top1": final}


def _hold_until_done(out_root: Path, stage_id: str) -> None:
    """Wait on another stage's progress (its result.json), not on a clock: HOLD_S is a bound only."""
    import time

    deadline = time.monotonic() + HOLD_S
    while store.state(out_root, stage_id) != store.DONE:
        if time.monotonic() > deadline:
            raise RuntimeError(f"held for {HOLD_S:.0f} s and {stage_id} never finished")
        time.sleep(0.05)


def _fill(path: Path) -> None:
    """Take every byte left on the disk of `path`."""
    with path.open("wb") as f:
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError:
            pass


def make_backend(rules: str, name, *args, **kw):
    """ablate.cli.make_backend with every stage run through Fault(rules)."""
    return _real_make_backend(name, *args, launch=Fault(rules, serial=name is cli.BackendName.serial), **kw)


_real_make_backend = cli.make_backend


def install(monkeypatch, rules: str) -> None:
    """For a test that runs the CLI in its own process (typer's CliRunner)."""
    monkeypatch.setattr(cli, "make_backend", partial(make_backend, rules))


if __name__ == "__main__":
    cli.make_backend = partial(make_backend, sys.argv[1])
    cli.app(sys.argv[2:], prog_name="ablate")
