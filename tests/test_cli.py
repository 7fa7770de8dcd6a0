"""The CLI in-process (typer's CliRunner): help, plan, status, ui, report; nothing run, nothing written."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import store
from ablate.planning.plan import plan
from ablate.spec.profiles import load_profile
from ablate.spec.study import load_study
from tests.helpers import tiny_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILE = tiny_profile("cli-test", threads=False, resources=False, throughput=True)
STUDY = """\
name: cli
description: two ratios
axes:
  model.mask_ratio: [0.5, 0.75]
evaluations: [linear_probe, finetune]
figures: [loss_curves]
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(PROFILE)
    (tmp_path / "cli.yaml").write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("validate", "plan", "run", "status", "ui", "report", "clean"):
        assert command in result.stdout
    run_help = invoke("run", "--help").stdout
    for option in ("--profile", "--out", "--address", "--rerun-failed", "--max-concurrent", "--backend",
                   "--tracking-uri"):
        assert option in run_help


def test_plan_prints_the_stage_table_and_writes_nothing(project):
    before = sorted(os.listdir(project))
    result = invoke("plan", "cli.yaml", "--profile", "tiny")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("profile tiny: tiny cli-test profile")
    p = plan(load_study(project / "cli.yaml"), load_profile("tiny", project / "cli.yaml"))
    for sid in p.stages:
        assert sid in out
    assert "mask_ratio=0.5" in out and "linear_probe" in out and "pending" in out
    assert "2 arm(s) x 1 seed(s): 6 distinct stages" in out
    assert "to run:" in out and "img/s" in out and "GPU-hours" not in out  # a CPU profile
    assert sorted(os.listdir(project)) == before


def test_plan_on_a_gpu_profile_prints_gpu_hours_and_where_its_speed_comes_from():
    """GPU-hours = each stage's estimated seconds x its workers x the GPUs of a worker, summed."""
    from ablate.planning.cost import estimate

    study_file = ROOT / "studies" / "masking_ratio.yaml"
    result = invoke("plan", str(study_file), "--profile", "paper")
    assert result.exit_code == 0, result.output
    p = plan(load_study(study_file), load_profile("paper", study_file))
    expected = sum(estimate(s, p.profile).seconds * s.workers * p.profile.resources.gpu for s in p.stages.values())
    out = " ".join(result.stdout.split())
    assert f"({expected / 3600:,.1f} GPU-hours)" in out
    assert "from the throughput of paper.yaml" in out and "vit_large_patch16 2175 img/s" in out


def test_plan_of_a_folder_counts_each_shared_stage_once_and_costs_the_whole_suite(tmp_path):
    """`ablate plan studies/`: a row per study; a stage several studies share counted once, in the
    first study that has it; the suite's GPU-hours on the paper profile are the sum over distinct
    stages (recomputed here from cost.estimate)."""
    from ablate.planning.cost import estimate

    folder = ROOT / "studies"
    result = invoke("plan", str(folder), "--profile", "paper", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    plans = []
    for path in sorted(folder.glob("*.yaml")):
        study = load_study(path)
        plans.append(plan(study, load_profile("paper", study.source)))
    distinct = {sid: (p, stage) for p in plans for sid, stage in reversed(list(p.stages.items()))}
    shared = sum(len(p.stages) for p in plans) - len(distinct)
    assert shared > 0  # the quickstart's and other studies' default arms are the masking ratio study's
    lines = result.stdout.splitlines()
    for p in plans:
        assert any(line.split()[:1] == [p.study.name] for line in lines), p.study.name
    out = " ".join(result.stdout.split())
    assert f"{len(plans)} studies: {len(distinct)} distinct stages ({shared} shared" in out
    gpu_hours = sum(estimate(stage, p.profile).seconds * stage.workers * p.profile.resources.gpu
                    for p, stage in distinct.values()) / 3600
    assert f"({gpu_hours:,.1f} GPU-hours)" in out and "from the throughput of paper.yaml" in out
    assert not (tmp_path / "runs").exists()  # nothing written

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = invoke("plan", str(empty))
    assert refused.exit_code == 2 and refused.stderr.strip() == f"{empty}: a folder of studies holds .yaml study " \
                                                                 "files; this one has none"


def test_plan_and_status_see_done_and_failed_stages(project):
    p = plan(load_study(project / "cli.yaml"), load_profile("tiny", project / "cli.yaml"))
    pre_a, pre_b = (r.stages["pretrain"] for r in p.runs)
    out = project / "runs"
    store.stage_dir(out, pre_a).mkdir(parents=True)
    store.write_json_atomic(store.stage_dir(out, pre_a) / store.RESULT, {"pretrain_loss": 0.5})
    store.write_error(store.stage_dir(out, pre_b), "Traceback ...\nFloatingPointError: non-finite loss")
    result = invoke("status", "cli.yaml", "--profile", "tiny")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert "done" in lines[pre_a] and "pretrain_loss 0.5" in lines[pre_a]
    assert "failed" in lines[pre_b] and "FloatingPointError" in lines[pre_b]
    for run in p.runs[1:]:
        assert "blocked" in lines[run.stages["linear_probe"]]
    assert "1 done, 1 failed, 2 blocked, 2 pending of 6 stages" in result.stdout
    planned = invoke("plan", "cli.yaml", "--profile", "tiny").stdout
    assert "1 done, 1 failed, 2 blocked, 2 to run" in planned


def test_ui_needs_a_database_then_runs_mlflow_on_localhost(project, monkeypatch):
    missing = invoke("ui", "cli.yaml")
    assert missing.exit_code == 1 and "no MLflow database" in missing.stderr
    (project / "runs" / "cli").mkdir(parents=True)
    (project / "runs" / "cli" / "mlflow.db").write_bytes(b"")
    calls = []
    monkeypatch.setattr("subprocess.run", lambda command, check: calls.append(command))
    result = invoke("ui", "cli.yaml", "--port", "5055")
    assert result.exit_code == 0, result.output
    (command,) = calls
    assert command[1:3] == ["ui", "--backend-store-uri"]
    assert command[3] == f"sqlite:///{(project / 'runs' / 'cli' / 'mlflow.db').resolve()}"
    assert command[4:] == ["--host", "127.0.0.1", "--port", "5055"]


def test_tracking_uri_logs_elsewhere_and_a_dead_server_is_one_line(project, monkeypatch):
    """--tracking-uri: the runs go to that database (here a sqlite file outside the output root, as
    on a cluster whose output root is a network mount), none to the study folder; the resume line
    and `ablate ui` keep it. A server that does not answer is one line, at once, not MLflow's
    minutes of retries."""
    import socket
    import time

    from mlflow.tracking import MlflowClient

    (project / "one.yaml").write_text("name: one\nevaluations: []\nfigures: []\n")
    central = project / "local-disk" / "central.db"
    central.parent.mkdir()
    uri = f"sqlite:///{central}"
    result = invoke("run", "one.yaml", "--profile", "tiny", "--backend", "serial", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    assert not (project / "runs" / "one" / "mlflow.db").exists() and central.is_file()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("one").experiment_id])
    assert sorted(r.data.tags["role"] for r in runs) == ["stage", "study"]
    assert all(r.info.status == "FINISHED" for r in runs)
    calls = []
    monkeypatch.setattr("subprocess.run", lambda command, check: calls.append(command))
    assert invoke("ui", "one.yaml").exit_code == 0 and calls[0][3] == f"sqlite:///{central.resolve()}"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    dead = invoke("run", "one.yaml", "--profile", "tiny", "--backend", "serial", "--tracking-uri",
                  f"http://127.0.0.1:{port}")
    assert dead.exit_code == 1 and time.monotonic() - started < 30, dead.output
    lines = dead.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot run one: tracking store http://127.0.0.1:{port}"), dead.stderr
    assert "no MLflow server answers there" in lines[0] and "Traceback" not in dead.output


def test_filesystem_type_is_the_longest_mount_point_above_the_path(tmp_path):
    from ablate.tracking.tracker import filesystem_type

    mounts = ("overlay / overlay rw 0 0\n"
              "server:/export /mnt/shared nfs4 rw,relatime 0 0\n"
              "/dev/sda1 /mnt/shared/local ext4 rw 0 0\n"
              "server:/x /mnt/with\\040space cifs rw 0 0\n"
              "broken-line\n")
    assert filesystem_type(Path("/mnt/shared/runs/study"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/shared/local/runs"), mounts) == "ext4"
    assert filesystem_type(Path("/mnt/sharedother/runs"), mounts) == "overlay"  # a prefix of the name is not a parent
    assert filesystem_type(Path("/mnt/with space/runs"), mounts) == "cifs"
    assert filesystem_type(Path("/mnt/shared"), mounts) == "nfs4"
    assert filesystem_type(tmp_path) is not None  # this machine's own /proc/self/mounts


def test_an_output_root_on_a_network_mount_keeps_the_mlflow_database_on_this_machine(project, monkeypatch):
    """sqlite is not safe on NFS: with --out on a network mount (its type as /proc/self/mounts says,
    faked here) the study's database goes to this machine's disk, the user is told in one line, the
    rerun and `ablate ui` find it, and the study folder holds no mlflow.db; artifacts stay there."""
    from mlflow.tracking import MlflowClient

    import ablate.tracking.tracker as tracker

    out = (project / "runs").resolve()
    real = tracker.filesystem_type
    monkeypatch.setattr(tracker, "filesystem_type",
                        lambda path, mounts=None: "nfs4" if str(Path(path).resolve()).startswith(str(out)) else
                        real(path, mounts))
    monkeypatch.setenv("XDG_CACHE_HOME", str(project / "local-cache"))
    (project / "one.yaml").write_text("name: one\nevaluations: []\nfigures: []\n")
    result = invoke("run", "one.yaml", "--profile", "tiny", "--backend", "serial")
    assert result.exit_code == 0, result.output
    (db,) = (project / "local-cache" / "mae-ablate" / "mlflow").glob("one-*.db")
    line = next(line for line in result.output.splitlines() if line.startswith("tracking:"))
    assert "is on a nfs4 mount, where sqlite is not safe" in line and str(db) in line
    assert not (out / "one" / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("one")
    assert experiment.artifact_location.startswith((out / "one" / "mlartifacts").as_uri())
    again = invoke("run", "one.yaml", "--profile", "tiny", "--backend", "serial")
    assert again.exit_code == 0 and "0 run now" in again.output, again.output
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["role"] for r in runs) == ["stage", "study"]  # the rerun found them: nothing added
    calls = []
    monkeypatch.setattr("subprocess.run", lambda command, check: calls.append(command))
    assert invoke("ui", "one.yaml").exit_code == 0 and calls[0][3] == f"sqlite:///{db}"


def test_report_rebuilds_tables_from_the_store(project):
    missing = invoke("report", "cli.yaml", "--profile", "tiny")
    assert missing.exit_code == 1 and "run it first" in missing.stderr
    p = plan(load_study(project / "cli.yaml"), load_profile("tiny", project / "cli.yaml"))
    out = project / "runs"
    for run in p.runs:
        for name, sid in run.stages.items():
            folder = store.stage_dir(out, sid)
            folder.mkdir(parents=True, exist_ok=True)
            metrics = {"pretrain": {"pretrain_loss": 0.4}, "linear_probe": {"lin_top1": 50.0},
                       "finetune": {"ft_top1": 60.0}}[name]
            (folder / store.METRICS).write_text(json.dumps({"epoch": 0, "loss": 0.9}) + "\n")
            store.write_json_atomic(folder / store.RESULT, metrics)
    (out / "cli").mkdir()
    result = invoke("report", "cli.yaml", "--profile", "tiny")
    assert result.exit_code == 0, result.output
    assert "results:" in result.stdout and "(2 rows)" in result.stdout
    import pandas as pd

    results = pd.read_csv(out / "cli" / "results.csv")
    assert list(results["status"]) == ["done", "done"] and list(results["ft_top1"]) == [60.0, 60.0]
    history = pd.read_csv(out / "cli" / "history.csv")
    assert set(history["stage"]) == {"pretrain", "linear_probe", "finetune"}


def test_validate_shipped_studies():
    for study in sorted((ROOT / "studies").glob("*.yaml")):
        result = invoke("validate", str(study))
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("profile laptop: ")


def test_the_live_views_time_left_is_the_estimates_scaled_by_what_finished_over_the_trials_at_once(project):
    """ablate/presentation/progress.py TimeLeft against a naive sum: the planner's estimate of each stage
    still to run (less what a running one has done), scaled by finished stages' actual/estimated
    seconds, over the most trials seen at once (before any: as many as fit here)."""
    from ablate.planning.cost import estimate, parallel_trials
    from ablate.presentation.progress import LiveView, TimeLeft

    p = plan(load_study(project / "cli.yaml"), load_profile("tiny", project / "cli.yaml"))
    expected = {sid: estimate(stage, p.profile).seconds for sid, stage in p.stages.items()}
    assert all(e and e > 0 for e in expected.values())
    states = {sid: store.PENDING for sid in p.stages}
    left = TimeLeft(p)
    assert left.seconds(states, {}) == pytest.approx(sum(expected.values()) / parallel_trials(p))

    first, second, *rest = p.stages  # two pre-trainings: one took three times its estimate
    states[first] = store.DONE
    left.ended(first, 3 * expected[first])
    running = {second: expected[second]}  # running for as long as its estimate, 3x that expected
    naive = (3 * expected[second] - expected[second]) + sum(3 * expected[sid] for sid in rest)
    assert left.seconds(states, running) == pytest.approx(naive / 1)  # one trial seen running at once
    left.running(2)  # two at once from now on
    assert left.seconds(states, running) == pytest.approx(naive / 2)
    # Each kind is scaled by its own finished stages (a kind none of whose stages finished: by all of
    # them): a probe that took its estimate leaves the other probes at 1x, pre-trainings at 3x.
    probe = next(sid for sid in rest if p.stages[sid].kind == "linear_probe")
    states[probe] = store.DONE
    left.ended(probe, expected[probe])
    pooled = (3 * expected[first] + expected[probe]) / (expected[first] + expected[probe])
    scale = {"pretrain": 3.0, "linear_probe": 1.0, "finetune": pooled}
    naive = sum(scale[p.stages[sid].kind] * expected[sid] for sid in rest if sid != probe)
    naive += 3 * expected[second] - expected[second]
    assert left.seconds(states, running) == pytest.approx(naive / 2)
    assert left.seconds({sid: store.DONE for sid in p.stages}, {}) == 0

    view = LiveView(p, {sid: store.PENDING for sid in p.stages}, live=False)
    view.stage_started(first)
    view.stage_started(second)
    view.stage_ended(first, store.DONE, None)
    assert view.time_left.seen_at_once == 2  # the trials that ran at once, not those left when one ends
    assert view.summary().endswith("min left") or view.summary().endswith("under 2 min left")
    unmeasured = dataclasses.replace(p, profile=p.profile.model_copy(update={"throughput": {}}))  # no speed given
    assert TimeLeft(unmeasured).seconds({sid: store.PENDING for sid in p.stages}, {}) is None
