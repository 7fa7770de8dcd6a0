"""Drivers that share an output root: the stage lease (ablate/execution/lease.py), and two `ablate run` of one
study started together, each a real subprocess with its own Ray, one sqlite MLflow store."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablate.execution import lease, store
from ablate.execution.lease import Lease
from tests.helpers import tiny_profile

ROOT = Path(__file__).resolve().parents[1]


def write_lease(folder: Path, host: str, pid: int, beat: float) -> None:
    (folder / lease.LEASE).write_text(json.dumps({"host": host, "pid": pid, "started": beat, "beat": beat}))


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_lease_is_exclusive_and_names_its_owner(tmp_path):
    mine = Lease(tmp_path)
    assert mine.acquire() is None
    held = lease.holder(tmp_path)
    assert (held.host, held.pid) == (socket.gethostname(), os.getpid())
    write_lease(tmp_path, socket.gethostname(), os.getppid(), time.time())  # another live process here
    other = Lease(tmp_path).acquire()
    assert other is not None and other.pid == os.getppid() and str(other) == f"{socket.gethostname()}/{os.getppid()}"
    mine.beat()  # the heartbeat never overwrites a lease it no longer holds
    assert lease.holder(tmp_path).pid == os.getppid()
    mine.release()  # nor does releasing remove it
    assert lease.holder(tmp_path).pid == os.getppid()


def test_a_stale_lease_is_taken_over(tmp_path):
    write_lease(tmp_path, socket.gethostname(), dead_pid(), time.time())  # its process is gone
    assert lease.live_holder(tmp_path) is None
    taker = Lease(tmp_path)
    assert taker.acquire() is None and lease.holder(tmp_path).pid == os.getpid()
    taker.release()
    assert not (tmp_path / lease.LEASE).exists() and lease.live_holder(tmp_path) is None

    write_lease(tmp_path, "another-host", 1, time.time() - lease.STALE_S - 1)  # heartbeat stopped elsewhere
    assert Lease(tmp_path).acquire() is None
    write_lease(tmp_path, "another-host", 1, time.time())  # alive elsewhere: kept
    assert str(Lease(tmp_path).acquire()) == "another-host/1"


def test_a_lease_of_an_exited_process_not_yet_reaped_is_stale(tmp_path):
    """A killed driver's trial worker can stay a zombie until its parent reaps it: its pid still
    answers kill(pid, 0), but it holds nothing, and its lease is taken over at once."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 60
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline, "the child never exited"
            time.sleep(0.01)  # the child's own exit, seen from /proc: it is a zombie now, not reaped
        os.kill(child.pid, 0)  # still answers
        write_lease(tmp_path, socket.gethostname(), child.pid, time.time())  # a fresh heartbeat
        assert lease.holder(tmp_path).gone() and lease.live_holder(tmp_path) is None
        assert Lease(tmp_path).acquire() is None and lease.holder(tmp_path).pid == os.getpid()
    finally:
        child.wait()
    assert lease.process_running(os.getpid()) and not lease.process_running(child.pid)


def test_the_heartbeat_keeps_a_lease_alive(tmp_path):
    mine = Lease(tmp_path)
    assert mine.acquire() is None
    write_lease(tmp_path, socket.gethostname(), os.getpid(), time.time() - lease.STALE_S - 1)  # as if it stalled
    assert lease.holder(tmp_path).gone()  # a live pid with a stopped heartbeat is hung (or the pid reused)
    mine.beat()
    assert not lease.holder(tmp_path).gone() and time.time() - lease.holder(tmp_path).beat < lease.STALE_S
    mine.release()


PROFILE = tiny_profile("concurrency-test", pretrain_epochs=3, probe_epochs=2, finetune=False)
STUDY = "name: shared\naxes:\n  model.mask_ratio: [0.5, 0.75]\nevaluations: [linear_probe]\nfigures: []\n"
# Another study on the same root, as quickstart and masking_ratio are: its 0.75 arm is the shared
# study's (those stages run once, by whichever driver leases them first), its 0.9 arm its own.
OTHER = "name: other\naxes:\n  model.mask_ratio: [0.75, 0.9]\nevaluations: [linear_probe]\nfigures: []\n"


@pytest.mark.slow
def test_two_drivers_on_one_root_run_each_stage_once_with_one_mlflow_run_each(tmp_path):
    """Two drivers of one study and a third of another study sharing one arm with it, started
    together: every stage computed once, one MLflow run per stage per study. Side by side: the
    first study's 0.5 pre-training holds its lease after its epoch 1 until the other study's own
    0.9 pre-training is done (tests/faults.py `hold`, driven by that stage's progress), which can
    only end if the lease is per stage, not per output root."""
    (tmp_path / "tiny.yaml").write_text(PROFILE)
    (tmp_path / "shared.yaml").write_text(STUDY)
    (tmp_path / "other.yaml").write_text(OTHER)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}

    from ablate.planning.plan import plan
    from ablate.spec.profiles import load_profile
    from ablate.spec.study import load_study

    def plan_of(study: str):
        s = load_study(tmp_path / study)
        return plan(s, load_profile(str(tmp_path / "tiny.yaml"), s.source))

    def pretrain_of(p, arm: str) -> str:
        return next(run.stages["pretrain"] for run in p.runs if run.arm == arm)

    shared_plan, other_plan = plan_of("shared.yaml"), plan_of("other.yaml")
    held, awaited = pretrain_of(shared_plan, "mask_ratio=0.5"), pretrain_of(other_plan, "mask_ratio=0.9")
    hold = f"hold:{held}:1:when-done={awaited}"

    def command(study: str, *fault: str) -> list[str]:
        runner = ["-m", "tests.faults", *fault] if fault else ["-m", "ablate.cli"]
        return [sys.executable, *runner, "run", str(tmp_path / study), "--profile", str(tmp_path / "tiny.yaml"),
                "--out", str(tmp_path / "runs")]

    drivers = [subprocess.Popen(command(study, *fault), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for study, fault in (("shared.yaml", (hold,)), ("shared.yaml", (hold,)), ("other.yaml", ()))]
    outputs = [d.communicate(timeout=600)[0] for d in drivers]
    for driver, output in zip(drivers, outputs):
        assert driver.returncode == 0, output[-3000:]
        assert "Traceback" not in output

    stages, others = shared_plan.stages, other_plan.stages
    common = set(stages) & set(others)
    assert len(common) == 2 and len(set(others) - common) == 2  # the 0.75 arm's pre-training and probe
    out = tmp_path / "runs"
    for sid in {**stages, **others}:  # computed once: one attempt, by one driver's trial
        assert len(store.attempts(out, sid)) == 1, sid
        assert not (store.stage_dir(out, sid) / lease.LEASE).exists()
    assert (store.stage_dir(out, held) / ".fault-hold").is_file()  # it was held, and the awaited stage ran meanwhile
    held_epochs = store.epochs(out, held, timed=True)
    assert held_epochs[-1][store.TIME] >= store.epochs(out, awaited, timed=True)[-1][store.TIME]
    assert "other: 4/4 stages done" in outputs[2]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'shared' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags["role"] == "study"]
    children = [r for r in runs if r.data.tags["role"] == "stage"]
    assert len(parents) == 1 and sorted(r.data.tags["stage_id"] for r in children) == sorted(stages)
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in children:  # every (run, metric, step) once
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.data.tags["stage_id"], key, steps)
        if run.data.tags["kind"] == "pretrain":
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "pretrain_loss")) == [0, 1, 2]
