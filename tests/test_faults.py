"""Reliability under real faults: a worker and a driver killed with SIGKILL, a checkpoint truncated
on disk, a disk that fills up or is read-only, eight trials logging at once, determinism through
a crash, and a NaN arm in the report.

Real processes (`ablate run` in a subprocess where a process must die), real local Ray, real
MLflow (sqlite under tmp_path), the test-sized model on synthetic data; the in-process tests run
on the serial backend unless Ray is what they test (then they share tests/test_runner.py's Ray).
Kills and crashes come from the stage's own progress (tests/faults.py, through the backends'
`launch` seam): a worker kills itself, or the driver, right after a given epoch. Mount-based tests
need root and CAP_SYS_ADMIN and are skipped, saying why, without them.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import lease, store
from ablate.execution.stages import run_stage
from tests import faults
from tests.helpers import PROFILE, mlflow_runs, run, stamps, the_plan

pytestmark = pytest.mark.slow

# Epochs of 8 steps (128 synthetic images, batch 16); the faults strike after the first epoch
# (tests/faults.py), so the killed pre-training has epochs to resume on both sides of the kill.
PRETRAIN_EPOCHS = 4
DETERMINISM = """\
name: {name}
base:
  data: {{synthetic_size: 128}}
  pretrain: {{epochs: %d}}
  linear_probe: {{epochs: 2}}
  finetune: {{epochs: 2, mixup: 0.8, cutmix: 1.0, drop_path: 0.1, reprob: 0.25, rand_augment: rand-m9-mstd0.5-inc1}}
evaluations: [linear_probe, finetune]
figures: []
""" % PRETRAIN_EPOCHS
# What must be bit-equal between runs of the same study and seed (timings never are).
EXACT = ["pretrain_loss", "lin_top1", "lin_top5", "ft_top1", "ft_top5", "train_flops_per_img"]
TIMINGS = {"img_per_s", "epoch_time_s", "pretrain_wall_clock_s"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


def make_project(folder: Path) -> Path:
    (folder / "profiles").mkdir(parents=True)
    (folder / "profiles" / "tiny.yaml").write_text(PROFILE)
    return folder


def write(project: Path, name: str, text: str) -> Path:
    path = project / f"{name}.yaml"
    path.write_text(text.format(name=name))
    return path


ROOT = Path(__file__).resolve().parents[1]


def start(project: Path, study: Path, log: Path, *, fault: str = "") -> subprocess.Popen:
    """`ablate run` in a process (and session) of its own, output into `log`, its stages run
    through tests/faults.py's Fault(`fault`) (none: as they are)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tests.faults", fault, "run", str(study), "--profile", "tiny", "--out",
               str(project / "runs")]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env=env, cwd=project)


def wait_until(condition, timeout: float, what: str) -> float:
    """Poll `condition` until true; the seconds it took."""
    started = time.time()
    while not condition():
        if time.time() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.time() - started


def epochs_reported(project: Path, sid: str) -> list[int]:
    path = store.stage_dir(project / "runs", sid) / store.METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line)["epoch"])
        except (json.JSONDecodeError, KeyError):
            pass
    return rows


def attempts(project: Path, sid: str) -> list[dict]:
    return (store.read_json(store.stage_dir(project / "runs", sid) / "stage.json") or {"attempts": []})["attempts"]


alive = lease.process_running  # a zombie is dead, only not reaped


def session_processes(session: int) -> set[int]:
    """Live processes of a session (a process started with start_new_session leads its own)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def metric_points(project: Path, name: str) -> dict[str, dict[str, list[int]]]:
    """stage id -> metric -> the steps logged, one entry per logged point."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'runs' / name / 'mlflow.db'}")
    points = {}
    for r in mlflow_runs(project, name):
        if r["role"] == "stage":
            points[r["stage_id"]] = {k: [m.step for m in client.get_metric_history(r["id"], k)] for k in r["metrics"]}
    return points


def assert_one_point_per_step(points: dict[str, dict[str, list[int]]]) -> None:
    for sid, metrics in points.items():
        for key, steps in metrics.items():
            repeated = [s for s, n in collections.Counter(steps).items() if n > 1]
            assert not repeated, f"{sid}: {key} logged twice at steps {repeated}"


def assert_runs_closed(project: Path, name: str, stage_ids) -> list[dict]:
    runs = mlflow_runs(project, name)
    children = [r for r in runs if r["role"] == "stage"]
    assert sorted(r["stage_id"] for r in children) == sorted(stage_ids)  # exactly one run per stage
    assert len([r for r in runs if r["role"] == "study"]) == 1
    assert all(r["status"] == "FINISHED" for r in runs), [(r.get("stage_id"), r["status"]) for r in runs]
    return children


# ------------------------------------------------------------------------------ a. worker SIGKILL
@pytest.fixture(scope="module")
def disturbed(root):
    """The determinism study, disturbed: its pre-training worker gets a real SIGKILL (sent by
    itself) after its first epoch's checkpoint and before that epoch's line in metrics.jsonl, the
    narrowest window of a real kill; both evaluations crash once (os._exit)."""
    project = make_project(root / "disturbed")
    study = write(project, "det", DETERMINISM)
    p = the_plan(study)
    (pre,) = [sid for sid, s in p.stages.items() if s.kind == "pretrain"]
    started = time.time()
    process = start(project, study, project / "run.log", fault="sigkill:pretrain:0:before-line,crash:linear_probe:0,crash:finetune:0")
    try:
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    victim = attempts(project, pre)[0]["pid"]
    killed_after = [int((store.stage_dir(project / "runs", pre) / ".fault-sigkill").read_text().split()[-1])]
    return {"project": project, "study": study, "plan": p, "pretrain": pre, "victim": victim,
            "killed_after": killed_after, "rc": process.returncode, "output": (project / "run.log").read_text(),
            "seconds": time.time() - started}


def test_worker_killed_with_sigkill_resumes_from_its_checkpoint(disturbed):
    project, p, pre = disturbed["project"], disturbed["plan"], disturbed["pretrain"]
    output = disturbed["output"]
    assert disturbed["rc"] == 0, output
    assert "Traceback" not in output and "retry" in output
    assert disturbed["killed_after"] and disturbed["killed_after"][-1] < PRETRAIN_EPOCHS - 1  # killed mid-stage
    assert not alive(disturbed["victim"])
    pids = [a["pid"] for a in attempts(project, pre)]
    assert len(pids) == 2 and pids[0] == disturbed["victim"] and pids[1] != pids[0]
    epochs = epochs_reported(project, pre)
    # Resumed, not restarted: no epoch ran twice, and none is missing: the killed epoch's line,
    # which its worker never wrote, was recovered from its checkpoint by the retry.
    assert epochs == list(range(PRETRAIN_EPOCHS))
    for sid in p.stages:
        assert store.state(project / "runs", sid) == store.DONE
        assert len(attempts(project, sid)) == 2  # the evaluations crashed once each (os._exit)
    children = assert_runs_closed(project, "det", p.stages)
    assert all(r["retries"] == "1" for r in children)
    points = metric_points(project, "det")
    assert_one_point_per_step(points)
    assert sorted(points[pre]["pretrain_loss"]) == sorted(epochs)
    print(f"\nworker SIGKILL after epoch {disturbed['killed_after'][-1]}: attempts {pids}, "
          f"{len(epochs)}/{PRETRAIN_EPOCHS} epochs reported, none twice; {len(children)} stage runs, all FINISHED "
          f"with retries=1; {disturbed['seconds']:.0f} s for the study")


def test_an_epoch_written_but_never_reported_still_reaches_mlflow(root):
    """The race behind the SIGKILL test's occasional gap: the worker writes epoch 0 to
    metrics.jsonl and dies before its report crosses to the driver. The retry resumes after
    epoch 0, so only the stage's file has it; the tracker logs it from there, once."""
    from ablate.tracking.tracker import StudyTracker

    project = make_project(root / "unreported")
    study = write(project, "gap", "name: {name}\nevaluations: []\nfigures: []\n")
    p = the_plan(study)
    (sid,) = p.stages
    tracker = StudyTracker(p, project / "runs", project / "runs" / "gap").open()
    tracker.stage_started(sid)
    metrics = store.stage_dir(project / "runs", sid) / store.METRICS
    metrics.parent.mkdir(parents=True, exist_ok=True)
    store.append_jsonl(metrics, {"epoch": 0, "loss": 0.9})  # written, then the worker was killed
    tracker.stage_retrying(sid, "worker died")
    store.append_jsonl(metrics, {"epoch": 1, "loss": 0.8})  # the retry's epoch arrives as a report
    tracker.stage_epoch(sid, {"epoch": 1, "loss": 0.8})
    tracker.stage_ended(sid, store.DONE, None)
    tracker.close("FINISHED")
    points = metric_points(project, "gap")[sid]
    assert sorted(points["pretrain_loss"]) == [0, 1], points
    assert_one_point_per_step({sid: points})


# ------------------------------------------------------------------------------ b. driver SIGKILL
def test_driver_killed_with_sigkill_then_the_same_command_finishes(root):
    project = make_project(root / "driver")
    study = write(project, "dkill", "name: {name}\nbase:\n  data: {{synthetic_size: 128}}\n"
                                    "arms:\n  short: {{pretrain.epochs: 2}}\n  long: {{pretrain.epochs: 40}}\n"
                                    "evaluations: []\nfigures: []\n")
    p = the_plan(study)
    short, long = (run_.stages["pretrain"] for run_ in p.runs)
    out = project / "runs"
    # The long stage's worker kills the driver at its first epoch after the short stage is done
    # (about its 15th of 40 here: the short one is done once its pictures are drawn).
    driver = start(project, study, project / "first.log", fault=f"kill-driver:{long}:0:when-done={short}")
    try:
        assert driver.wait(timeout=300) == -signal.SIGKILL, (project / "first.log").read_text()
        assert store.state(out, short) == store.DONE and store.state(out, long) == store.PENDING
        session = session_processes(driver.pid)
        before = stamps(project, [short])
        worker = attempts(project, long)[-1]["pid"]
        # Ray's workers notice that their raylet died with the driver and exit: no orphan keeps
        # the stage's lock (or writes its folder) while the rerun runs.
        worker_gone_s = wait_until(lambda: not alive(worker), 60, f"the orphaned trial worker {worker} to exit")
        left = {pid for pid in session_processes(driver.pid) if alive(pid)}
        runs = {r["stage_id"]: r["status"] for r in mlflow_runs(project, "dkill") if r["role"] == "stage"}
        assert runs[long] == "RUNNING"  # as the killed driver left it
        # The killed driver's trial worker held the long stage's lease; with it gone the lease is stale.
        held = lease.holder(store.stage_dir(out, long))
        assert held is not None and held.pid == worker and held.gone()
        assert lease.live_holder(store.stage_dir(out, long)) is None
        before_kill = epochs_reported(project, long)

        rerun_started = time.time()
        again = start(project, study, project / "second.log")
        again.wait(timeout=300)
        rerun_s = time.time() - rerun_started
        output = (project / "second.log").read_text()
        assert again.returncode == 0, output
        assert "Traceback" not in output
        assert stamps(project, [short]) == before  # the finished stage was not rerun
        assert len(attempts(project, long)) == 2 and store.state(out, long) == store.DONE
        # The rerun took the stale lease over and resumed from the stage's checkpoint: no epoch twice.
        after = epochs_reported(project, long)
        assert after[:len(before_kill)] == before_kill and after == list(range(40)), (before_kill, after)
        assert_runs_closed(project, "dkill", p.stages)
        points = metric_points(project, "dkill")
        assert_one_point_per_step(points)
        # Epochs the worker reported after the driver died reach MLflow on the rerun, from metrics.jsonl.
        assert sorted(points[long]["pretrain_loss"]) == sorted(set(epochs_reported(project, long)))
        print(f"\ndriver SIGKILL: {len(session)} processes in its session, {len(left)} still alive "
              f"{worker_gone_s:.1f} s later when its trial worker had exited; rerun finished in {rerun_s:.0f} s")
    finally:
        for pid in session_processes(driver.pid):  # what the killed driver left behind (ours)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------------------ d. full or read-only disk
def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def mounted(tmp_path):
    """mount(kind, path, options) -> path; unmounted afterwards. Skips without the right to mount."""
    done: list[Path] = []

    def mount(kind: str, path: Path, *options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        args = ["--bind", str(path), str(path)] if kind == "bind" else ["-t", kind, *options, kind, str(path)]
        result = _mount(*args)
        if result.returncode:
            pytest.skip(f"cannot mount here (needs root with CAP_SYS_ADMIN): {result.stderr.strip()}")
        done.append(path)
        if kind == "bind" and options:
            result = _mount("-o", f"remount,{','.join(options)},bind", str(path))
            assert result.returncode == 0, result.stderr
        return path

    yield mount
    for path in reversed(done):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_read_only_output_is_refused_before_anything(tmp_path, mounted):
    project = make_project(tmp_path / "project")
    study = write(project, "ro", "name: {name}\nevaluations: []\nfigures: []\n")
    read_only = mounted("bind", tmp_path / "ro", "ro")
    result = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(read_only / "runs")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("--out: ") and "read-only file system" in lines[0], lines
    assert "Traceback" not in result.output and not (read_only / "runs").exists()


def test_disk_full_mid_run_stops_in_one_line_and_resumes(tmp_path, mounted):
    """The output folder's disk fills up mid-stage: one line, exit 1, no half-written file, the
    stage left pending (not failed); with space again the same command finishes it."""
    from core.checkpoint import safe_load

    project = make_project(tmp_path / "project")
    disk = mounted("tmpfs", tmp_path / "disk", "-o", "size=24m")
    study = write(project, "full", "name: {name}\nbase:\n  pretrain: {{epochs: %d}}\nevaluations: []\nfigures: []\n"
                  % PRETRAIN_EPOCHS)
    (sid,) = the_plan(study).stages
    (project / "runs").symlink_to(disk)
    process = start(project, study, project / "run.log", fault=f"fill-disk:{sid}:0")  # after its first epoch
    filler = disk / "filler"
    try:
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    output = (project / "run.log").read_text()
    assert process.returncode == 1, output
    assert "Traceback" not in output
    said = [line for line in output.splitlines() if line.startswith("cannot run full:")]
    assert len(said) == 1 and said[0].startswith("cannot run full: cannot write"), output
    assert "No space left on device" in said[0] and "run the same command again" in said[0]
    files = [p for p in disk.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name], "half-written temporary files left behind"
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())  # every JSON file is whole
    folder = store.stage_dir(project / "runs", sid)
    for checkpoint in folder.glob("checkpoint-*.pth"):
        safe_load(checkpoint)  # checksum verified: whole
    assert store.state(project / "runs", sid) == store.PENDING and not (folder / store.ERROR).exists(), \
        store.error_line(project / "runs", sid)

    filler.unlink()
    again = run(project, study, backend="serial")  # the same study resumes; the backend does not matter here
    assert again.exit_code == 0, again.output
    assert store.state(project / "runs", sid) == store.DONE
    epochs = [e["epoch"] for e in store.epochs(project / "runs", sid)]
    last = PRETRAIN_EPOCHS - 1
    assert epochs[-1] == last and len(set(epochs)) >= last  # at most the epoch cut by the full disk is missing
    assert_runs_closed(project, "full", [sid])
    assert_one_point_per_step(metric_points(project, "full"))
    print(f"\ndisk full mid-stage: exit 1, one line; {len(files)} files left, no temporary one, every JSON and "
          f"checkpoint whole; the rerun resumed and logged {len(set(epochs))}/{PRETRAIN_EPOCHS} epochs")


# ------------------------------------------------------------------------------ c. truncated checkpoint
def test_truncated_checkpoint_is_skipped_and_the_user_is_told(tmp_path):
    project = make_project(tmp_path)
    study = write(project, "trunc", "name: {name}\nbase:\n  pretrain: {{epochs: 4}}\nevaluations: []\nfigures: []\n")
    p = the_plan(study)
    (sid,) = p.stages
    out = project / "runs"

    def stop_after_epoch_1(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # as Ctrl-C: the stage stays pending with its checkpoints

    with pytest.raises(KeyboardInterrupt):
        run_stage(p.stages[sid], out, stop_after_epoch_1)
    folder = store.stage_dir(out, sid)
    last = folder / "checkpoint-last.pth"
    assert last.is_file() and (folder / "checkpoint-prev.pth").is_file()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated on disk

    result = run(project, study, backend="serial")
    assert result.exit_code == 0, result.output
    shown = [line for line in result.output.splitlines() if "warning" in line and "checksum mismatch" in line]
    assert len(shown) == 1 and "checkpoint-last.pth" in shown[0] and "previous checkpoint" in shown[0], result.output
    epochs = [json.loads(line) for line in (folder / store.METRICS).read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1, 1, 2, 3]  # epoch 1 again, from the epoch-0 checkpoint
    assert epochs[1]["loss"] == epochs[2]["loss"]  # and exactly as the first time
    assert "checksum mismatch" in store.warnings(out, sid)[0]["message"]

    status = CliRunner().invoke(app, ["status", str(study), "--profile", "tiny", "--out", str(out)])
    assert status.exit_code == 0 and f"warning {sid}" in status.stdout and "checksum mismatch" in status.stdout
    (child,) = [r for r in mlflow_runs(project, "trunc") if r["role"] == "stage"]
    assert "checksum mismatch" in child["warnings"]
    points = metric_points(project, "trunc")
    assert_one_point_per_step(points)
    assert sorted(points[sid]["pretrain_loss"]) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ e. 8 trials at once
def test_eight_concurrent_trials_log_every_point_once(tmp_path, ray_session):
    """8 arms at 0.25 CPU each, so Ray may run all 8 trials at once on 2 CPUs; they report to one
    driver, which logs every epoch's every metric exactly once."""
    project = make_project(tmp_path)
    ratios, epochs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 3
    study = write(project, "eight", f"name: {{name}}\naxes:\n  model.mask_ratio: {ratios}\n"
                                    f"base:\n  pretrain: {{{{epochs: {epochs}}}}}\n"
                                    "resources: {{cpu: 0.25}}\nevaluations: []\nfigures: []\n")
    p = the_plan(study)
    assert len(p.stages) == 8
    result = run(project, study)
    assert result.exit_code == 0, result.output
    out = project / "runs"
    spans = [(store.result(out, sid)["started_at"], store.result(out, sid)["finished_at"]) for sid in p.stages]
    # Ray starts trial workers one after another, each importing torch on 2 busy cores (a few
    # seconds), so the first trials may end before the last start; several always overlap.
    at_once = max(sum(1 for s, f in spans if s <= t <= f) for t, _ in spans)
    assert at_once >= 4, f"at most {at_once} trials ran at once: {spans}"

    assert_runs_closed(project, "eight", p.stages)
    points = metric_points(project, "eight")
    assert_one_point_per_step(points)
    per_epoch = {"pretrain_loss", "lr", "img_per_s", "epoch_time_s", "pretrain_wall_clock_s", "train_flops_per_img"}
    for sid, metrics in points.items():
        assert per_epoch <= set(metrics)
        assert all(sorted(metrics[k]) == list(range(epochs)) for k in per_epoch), metrics
    first = next(iter(p.stages))
    epoch_keys = {("pretrain_loss" if k == "loss" else k) for row in store.epochs(out, first) for k in row if k != "epoch"}
    final_only = {k for k, v in store.result(out, first).items() if isinstance(v, (int, float))
                  and k not in epoch_keys | {"epochs", "attempts", "attempt_wall_s", "numerics"}}
    expected = 8 * epochs * len(epoch_keys) + 8 * len(final_only)
    total = sum(len(steps) for metrics in points.values() for steps in metrics.values())
    assert total == expected, (total, expected, sorted(epoch_keys), sorted(final_only))
    print(f"\n8 trials, up to {at_once} at once: {total} metric points = "
          f"8 stages x {epochs} epochs x {len(epoch_keys)} per-epoch metrics + 8 x {len(final_only)} final-only "
          f"({', '.join(sorted(final_only))})")

    # Runs a killed driver would have left RUNNING are ended by the next run, adding no point.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'eight' / 'mlflow.db'}")
    for run_id in [r["id"] for r in mlflow_runs(project, "eight") if r["role"] == "stage"][:2]:
        client.update_run(run_id, status="RUNNING")
    again = run(project, study)
    assert again.exit_code == 0 and "0 run now" in again.output, again.output
    assert_runs_closed(project, "eight", p.stages)
    assert sum(len(s) for m in metric_points(project, "eight").values() for s in m.values()) == expected


# ------------------------------------------------------------------------------ f. determinism
def _exact_history(folder: Path) -> pd.DataFrame:
    history = pd.read_csv(folder / "history.csv")
    history = history[~history["metric"].isin(TIMINGS)]
    return history.sort_values(["arm", "seed", "stage", "metric", "epoch"]).reset_index(drop=True)


def test_same_seed_same_numbers_also_through_crashes(tmp_path, disturbed):
    """The determinism study run undisturbed into another --out folder, on the serial backend in
    this process, gives, bit for bit on CPU, the numbers of the run disturbed by a SIGKILL and two
    crashes (`disturbed`, on Ray in its own process): every epoch's randomness is a function of the
    seed and the epoch, the evaluations' RNG states are in their checkpoints, and the backend that
    ran a stage does not enter its numbers."""
    project = make_project(tmp_path)
    study = write(project, "det", DETERMINISM)
    result = run(project, study, backend="serial")
    assert result.exit_code == 0, result.output
    folders = [project / "runs" / "det", disturbed["project"] / "runs" / "det"]
    assert the_plan(study).stages.keys() == disturbed["plan"].stages.keys()  # the same stages, other folders
    quiet, disturbed_table = (pd.read_csv(f / "results.csv") for f in folders)
    assert quiet[EXACT].notna().all().all()
    pd.testing.assert_frame_equal(quiet[EXACT], disturbed_table[EXACT], check_exact=True)
    history, disturbed_history = (_exact_history(f) for f in folders)
    merged = history.merge(disturbed_history, on=["arm", "seed", "stage", "metric", "epoch"], suffixes=("", "_d"))
    # The killed pre-training may lack the epoch between its last checkpoint and the kill.
    assert len(merged) >= len(history) - history[history["stage"] == "pretrain"]["metric"].nunique()
    assert (merged["value"] == merged["value_d"]).all(), merged[merged["value"] != merged["value_d"]]
    print(f"\ndeterminism: {len(EXACT)} result columns and {len(merged)} of {len(history)} per-epoch values "
          f"bit-equal between the undisturbed and the disturbed run")


# ------------------------------------------------------------------------------ g. a NaN arm in the report
def test_nan_arm_is_marked_failed_in_the_figure_and_the_table(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    study = write(project, "nanfig", "name: {name}\naxes:\n  model.mask_ratio: [0.5, 0.75]\n"
                                     "base:\n  pretrain: {{epochs: 1}}\nevaluations: [linear_probe]\n"
                                     "figures: [fig5_mask_ratio, loss_curves]\ntables: [fig5_mask_ratio]\n")
    p = the_plan(study)
    bad = p.runs[0].stages["pretrain"]
    faults.install(monkeypatch, f"nan:{bad}:0")
    result = run(project, study, backend="serial")
    assert result.exit_code == 1, result.output
    report = project / "runs" / "nanfig" / "report"
    figure = (report / "figures" / "fig5_mask_ratio.svg").read_text()
    assert "failed: mask_ratio=0.5" in figure  # an 'x' at the bottom of the panel, named in the legend
    assert "mask_ratio=0.5 (failed)" in (report / "figures" / "loss_curves.svg").read_text()
    table = (report / "tables" / "fig5_mask_ratio.md").read_text()
    row = next(line for line in table.splitlines() if "| 0.5 " in line or "| 0.50" in line)
    assert "failed" in row, table
    assert "failed" in (report / "report.html").read_text()
