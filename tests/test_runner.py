"""Contract suite for an execution backend: a two-arm study, a crashed worker, a rerun, a failing stage.

Real Ray (local, started once for the module: tests/conftest.py), real MLflow (sqlite under tmp_path), real core
functions on the test-sized model and synthetic data. Each backend must pass the same tests;
`BACKENDS` lists them: Ray and the in-process serial one.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import store
from tests import faults
from tests.helpers import PROFILE, mlflow_client, mlflow_runs, run, stamps, the_plan

pytestmark = pytest.mark.slow

TWO_ARMS = """\
name: {name}
axes:
  model.mask_ratio: [0.5, 0.75]
evaluations: {evaluations}
figures: [loss_curves]
"""
BACKENDS = ["ray", "serial"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param


@pytest.fixture
def project(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(PROFILE)
    return tmp_path


def write_study(project: Path, name: str, evaluations: str = "[linear_probe]", text: str = TWO_ARMS) -> Path:
    path = project / f"{name}.yaml"
    path.write_text(text.format(name=name, evaluations=evaluations))
    return path


def test_two_arm_study_then_rerun_changes_nothing(project, backend):
    study = write_study(project, "two")
    p = the_plan(study)
    result = run(project, study, backend=backend)
    assert result.exit_code == 0, result.output
    assert "profile tiny: tiny contract-test profile" in result.output

    folder = project / "runs" / "two"
    results = pd.read_csv(folder / "results.csv")
    assert list(results["arm"]) == ["mask_ratio=0.5", "mask_ratio=0.75"]
    assert list(results["model.mask_ratio"]) == [0.5, 0.75]
    assert (results["status"] == "done").all()
    assert results["lin_top1"].notna().all() and results["pretrain_loss"].notna().all()
    history = pd.read_csv(folder / "history.csv")
    loss = history[(history["stage"] == "pretrain") & (history["metric"] == "loss")]
    assert sorted(loss["epoch"].unique()) == [0, 1] and set(loss["arm"]) == set(results["arm"])

    for sid, stage in p.stages.items():
        stage_folder = store.stage_dir(project / "runs", sid)
        assert json.loads((stage_folder / store.CONFIG).read_text()) == dict(stage.config)
        assert store.state(project / "runs", sid) == store.DONE

    runs = mlflow_runs(project, "two")
    parents = [r for r in runs if r["role"] == "study"]
    children = [r for r in runs if r["role"] == "stage"]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    assert sorted(r["stage_id"] for r in children) == sorted(p.stages)  # exactly one run per stage
    assert all(r["status"] == "FINISHED" and r["mlflow.parentRunId"] == parents[0]["id"] for r in children)
    pretrain = next(r for r in children if r["stage"] == "pretrain" and r["arm"] == "mask_ratio=0.5")
    assert pretrain["params"]["model.mask_ratio"] == "0.5" and pretrain["params"]["pretrain.epochs"] == "2"
    assert {"study", "arm", "stage", "profile", "stage_id", "seed"} <= set(pretrain)
    assert "pretrain_loss" in pretrain["metrics"] and "img_per_s" in pretrain["metrics"]
    probe = next(r for r in children if r["stage"] == "linear_probe")
    assert "lin_top1" in probe["metrics"] and probe["params"]["linear_probe.epochs"] == "1"
    # Every stage run carries its lineage (a probe also its pre-training's params, as its parent has
    # them) and pictures of its own (its curves; a pre-training also its reconstructions).
    by_id = {r["stage_id"]: r for r in children}
    for child in children:
        stage = p.stages[child["stage_id"]]
        if stage.parent is not None:
            parent = by_id[stage.parent]["params"]
            assert {k: v for k, v in child["params"].items() if k.startswith(("pretrain.", "model."))} == \
                {k: v for k, v in parent.items() if k.startswith(("pretrain.", "model."))}
        pictures = {a.path for a in mlflow_client(project, "two").list_artifacts(child["id"])}
        assert "curves.png" in pictures
        assert ("reconstructions.png" in pictures) == (stage.kind == "pretrain")
    probes = [r for r in children if r["stage"] == "linear_probe"]
    assert sorted(r["params"]["model.mask_ratio"] for r in probes) == ["0.5", "0.75"]
    # The data each stage read, as MLflow's dataset input: same digest for the same data config.
    inputs = {r["stage_id"]: mlflow_client(project, "two").get_run(r["id"]).inputs.dataset_inputs for r in children}
    for sid, (used,) in inputs.items():
        assert used.dataset.name == "synthetic" and used.dataset.source_type == "code"
        assert json.loads(used.dataset.profile)["train_images"] == 58  # 64 less the 10% validation share
        assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", p.stages[sid].kind)]
    assert len({used.dataset.digest for (used,) in inputs.values()}) == 1

    # The same command again is the resume: nothing reruns, no run is added, and the report,
    # drawn from the same results, is not drawn again.
    before = stamps(project, p.stages)
    page = folder / "report" / "report.html"
    drawn = page.stat().st_mtime_ns
    again = run(project, study, backend=backend)
    assert again.exit_code == 0, again.output
    assert "0 run now" in again.output
    assert stamps(project, p.stages) == before and page.stat().st_mtime_ns == drawn
    after = mlflow_runs(project, "two")
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in runs)
    assert all(r["status"] == "FINISHED" for r in after)

    # --seeds 2 widens the study without editing it: seed 0's stages are reused as they are and
    # seed 1's run; the report then judges each arm against the other's paired seeds.
    wider = run(project, study, "--seeds", "2", backend=backend)
    assert wider.exit_code == 0, wider.output
    assert stamps(project, p.stages) == before
    results = pd.read_csv(folder / "results.csv")
    assert sorted(zip(results["arm"], results["seed"])) == [(a, s) for a in ("mask_ratio=0.5", "mask_ratio=0.75")
                                                           for s in (0, 1)]
    assert (results["status"] == "done").all() and page.stat().st_mtime_ns != drawn
    assert len([r for r in mlflow_runs(project, "two") if r["role"] == "stage"]) == 2 * len(p.stages)
    status = CliRunner().invoke(app, ["status", str(study), "--out", str(project / "runs")])  # remembers 2 seeds
    assert status.exit_code == 0 and "0 failed" in status.output and f"{2 * len(p.stages)} stages" in status.output


def test_worker_crash_is_retried_with_one_run_per_stage(project, backend, monkeypatch):
    study = write_study(project, "crash", evaluations="[]",
                        text="name: {name}\nevaluations: {evaluations}\nfigures: []\n")
    p = the_plan(study)
    (sid,) = p.stages
    faults.install(monkeypatch, "crash:pretrain:0")  # the worker dies hard after epoch 0, once
    from mlflow.tracking import MlflowClient

    history = MlflowClient.get_metric_history

    def no_history(*args, **kw):
        raise AssertionError("the tracker asked MLflow for a metric's history")

    monkeypatch.setattr(MlflowClient, "get_metric_history", no_history)
    result = run(project, study, backend=backend)
    assert result.exit_code == 0, result.output
    assert "retry" in result.output
    folder = store.stage_dir(project / "runs", sid)
    meta = json.loads((folder / "stage.json").read_text())
    assert len(meta["attempts"]) == 2
    assert (folder / store.RESULT).is_file() and not (folder / store.ERROR).exists()
    epochs = [json.loads(line)["epoch"] for line in (folder / store.METRICS).read_text().splitlines()]
    assert epochs[0] == 0 and epochs[-1] == 1  # the retry resumed from the checkpoint: epoch 0 not redone
    assert epochs.count(0) == 1
    runs = mlflow_runs(project, "crash")
    children = [r for r in runs if r["role"] == "stage"]
    assert len(children) == 1 and children[0]["status"] == "FINISHED" and children[0]["retries"] == "1"
    assert len([r for r in runs if r["role"] == "study"]) == 1
    # Every (metric, step) of the retried stage's run exactly once; the crashed attempt's epoch included.
    client = mlflow_client(project, "crash")
    points = {key: sorted(m.step for m in history(client, children[0]["id"], key)) for key in children[0]["metrics"]}
    assert points["pretrain_loss"] == [0, 1] and all(steps == sorted(set(steps)) for steps in points.values()), points


def test_failing_stage_is_recorded_and_the_other_arm_finishes(project, backend, monkeypatch):
    study = write_study(project, "nan")
    p = the_plan(study)
    bad_arm, good_arm = p.runs
    bad = bad_arm.stages["pretrain"]
    faults.install(monkeypatch, f"nan:{bad}:0")
    result = run(project, study, backend=backend)
    assert result.exit_code == 1, result.output
    assert "--rerun-failed" in result.output
    out = project / "runs"
    assert store.state(out, bad) == store.FAILED
    assert "NonFiniteLoss" in store.error(out, bad)
    assert not (store.stage_dir(out, bad) / store.RESULT).exists()
    assert not store.stage_dir(out, bad_arm.stages["linear_probe"]).exists()  # dependant skipped
    assert all(store.state(out, sid) == store.DONE for sid in good_arm.stages.values())
    results = pd.read_csv(out / "nan" / "results.csv").set_index("arm")
    assert results.loc[bad_arm.arm, "status"] == "failed" and "NonFiniteLoss" in results.loc[bad_arm.arm, "error"]
    assert results.loc[good_arm.arm, "status"] == "done" and results["lin_top1"].notna().sum() == 1

    runs = mlflow_runs(project, "nan")
    by_stage = {r["stage_id"]: r for r in runs if r["role"] == "stage"}
    assert by_stage[bad]["status"] == "FAILED" and "NonFiniteLoss" in by_stage[bad]["error"]
    assert all(by_stage[sid]["status"] == "FINISHED" for sid in good_arm.stages.values())
    assert bad_arm.stages["linear_probe"] not in by_stage
    assert next(r for r in runs if r["role"] == "study")["status"] == "FAILED"

    # Failed stages are reported, not retried ...
    monkeypatch.undo()
    again = run(project, study, backend=backend)
    assert again.exit_code == 1 and "0 run now" in again.output
    # ... unless asked; the retry reuses the stage's run.
    fixed = run(project, study, "--rerun-failed", backend=backend)
    assert fixed.exit_code == 0, fixed.output
    assert all(store.state(out, sid) == store.DONE for sid in p.stages)
    runs = mlflow_runs(project, "nan")
    children = [r for r in runs if r["role"] == "stage"]
    assert sorted(r["stage_id"] for r in children) == sorted(p.stages)
    assert all(r["status"] == "FINISHED" for r in runs)
    assert list((store.stage_dir(out, bad)).glob("error-*.txt"))  # the old error is kept beside it


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(project, backend):
    """A real `ablate run` process gets SIGINT mid-stage: runs KILLED, the stage left pending
    (not failed) with its checkpoint, the resume command printed; running it again finishes."""
    import signal
    import subprocess
    import sys
    import time

    study = project / "stop.yaml"
    study.write_text("name: stop\nbase:\n  pretrain: {epochs: 25}\nevaluations: []\nfigures: []\n")
    command = [sys.executable, "-m", "ablate.cli", "run", str(study), "--profile", "tiny", "--out",
               str(project / "runs"), "--backend", backend]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 120
    for line in process.stdout:  # plain lines (not a terminal): wait for the first epoch
        lines.append(line)
        if line.split()[1:2] == ["epoch"] or time.time() > deadline:
            break
    process.send_signal(signal.SIGINT)
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert f"Resume with: ablate run {study} --profile tiny --out {project / 'runs'}" in output
    assert "Traceback" not in output

    (sid,) = the_plan(study).stages
    folder = store.stage_dir(project / "runs", sid)
    assert store.state(project / "runs", sid) == store.PENDING  # stopped, not failed
    assert list(folder.glob("checkpoint-*.pth"))
    runs = mlflow_runs(project, "stop")
    assert sorted(r["status"] for r in runs) == ["KILLED", "KILLED"]

    again = run(project, study, backend=backend)
    assert again.exit_code == 0, again.output
    assert store.state(project / "runs", sid) == store.DONE
    after = mlflow_runs(project, "stop")
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in runs)
    assert all(r["status"] == "FINISHED" for r in after)


def test_the_serial_backend_gives_the_ray_backends_numbers_without_importing_ray(project, ray_session):
    """The same study on both backends: equal numbers to the digit; the serial run never imports Ray
    (in a fresh interpreter, as a user without Ray would run it)."""
    import subprocess
    import sys

    study = write_study(project, "both", text="name: {name}\nevaluations: {evaluations}\nfigures: []\n")
    script = ("import sys\nfrom ablate.cli import app\n"
              f"code = app(['run', {str(study)!r}, '--profile', 'tiny', '--out', {str(project / 'serial')!r}, "
              "'--backend', 'serial'], standalone_mode=False)\n"
              "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
              "import ablate.execution.runner, ablate.execution.events, ablate.execution.serial_backend\n"
              "assert 'ray' not in sys.modules\n")
    serial = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert serial.returncode == 0, serial.stdout + serial.stderr
    on_ray = run(project, study)
    assert on_ray.exit_code == 0, on_ray.output
    numbers = {}
    for name, root in (("serial", project / "serial"), ("ray", project / "runs")):
        table = pd.read_csv(root / "both" / "results.csv")
        numbers[name] = table[["arm", "pretrain_loss", "lin_top1"]].to_dict("records")
    assert numbers["serial"] == numbers["ray"] and len(numbers["ray"]) == 1


def test_stages_of_another_numerics_version_are_shown_and_never_reused_silently(project, monkeypatch):
    """The pre-training engine's numerics version bumped: `ablate status` marks its finished stages,
    `ablate run` refuses in one line until the user chooses; --keep-stale keeps them (recorded),
    --rerun-stale recomputes them and what was computed from them, beside the old folders."""
    import core
    from ablate.execution import node

    study = write_study(project, "ver", text="name: {name}\nevaluations: {evaluations}\nfigures: []\n")
    p = the_plan(study)
    (pre,) = [sid for sid, s in p.stages.items() if s.kind == "pretrain"]
    (probe,) = [sid for sid in p.stages if sid != pre]
    assert run(project, study, backend="serial").exit_code == 0
    out = project / "runs"
    first = {sid: store.result(out, sid) for sid in p.stages}
    assert {sid: r["numerics"] for sid, r in first.items()} == {pre: core.NUMERICS_VERSION["pretrain"],
                                                                probe: core.NUMERICS_VERSION["linear_probe"]}
    assert all(r["commit"] == node.code_commit() and r["commit"] for r in first.values())
    tags = [r for r in mlflow_runs(project, "ver") if r["role"] == "stage"]
    assert all(t["numerics"] == str(core.NUMERICS_VERSION[p.stages[t["stage_id"]].runner])
               and t["code.commit"] == node.code_commit() for t in tags)

    old = core.NUMERICS_VERSION["pretrain"]
    monkeypatch.setitem(core.NUMERICS_VERSION, "pretrain", old + 1)
    status = CliRunner().invoke(app, ["status", str(study), "--out", str(out)])
    assert status.exit_code == 0
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.split()}
    assert f"done (numerics {old})" in lines[pre] and "numerics" not in lines[probe], status.stdout
    assert f"1 finished stage computed by numerics version {old}" in status.stdout
    refused = run(project, study, backend="serial")
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output
    assert "--rerun-stale" in refused.stderr and "--keep-stale" in refused.stderr
    assert {sid: store.result(out, sid) for sid in p.stages} == first  # nothing touched

    kept = run(project, study, "--keep-stale", backend="serial")
    assert kept.exit_code == 0 and "0 run now" in kept.output, kept.output
    assert store.result(out, pre)["numerics_kept"] == [old + 1]
    assert "numerics" not in CliRunner().invoke(app, ["status", str(study), "--out", str(out)]).stdout

    monkeypatch.setitem(core.NUMERICS_VERSION, "pretrain", old + 2)
    again = run(project, study, "--rerun-stale", backend="serial")
    assert again.exit_code == 0 and "2 run now" in again.output, again.output  # the probe read the old encoder
    assert store.result(out, pre)["numerics"] == old + 2
    for sid in p.stages:
        aside = store.stages_root(out) / f"{sid}.numerics-{first[sid]['numerics']}"
        kept_note = {"numerics_kept": [old + 1]} if sid == pre else {}
        assert json.loads((aside / store.RESULT).read_text()) == {**first[sid], **kept_note}
    both = run(project, study, "--rerun-stale", "--keep-stale", backend="serial")
    assert both.exit_code == 2 and "choose one" in both.stderr


def test_clean_frees_the_resume_checkpoints_of_finished_stages_only(project):
    study = write_study(project, "tidy", text="name: {name}\nevaluations: {evaluations}\nfigures: []\n")
    p = the_plan(study)
    assert run(project, study, backend="serial").exit_code == 0
    out = project / "runs"
    unfinished = store.stage_dir(out, "pretrain-000000000000")  # a stage cut short: its checkpoint resumes it
    unfinished.mkdir()
    (unfinished / "checkpoint-last.pth").write_bytes(b"x" * 100)
    checkpoints = sorted(store.stages_root(out).glob("*/checkpoint-*.pth"))
    finished = [c for c in checkpoints if c.parent != unfinished]
    assert {c.parent.name for c in finished} == set(p.stages)  # the last (and previous) of every finished stage
    freed = sum(c.stat().st_size for c in finished) + sum(c.with_name(c.name + ".sha256").stat().st_size
                                                          for c in finished)
    status = CliRunner().invoke(app, ["status", str(study), "--out", str(out)])
    # The study's share of the store (its stage folders) and the whole store (also the unfinished
    # stage of no study here), each with what `ablate clean` would free.
    from ablate.presentation.views import human_bytes
    mine = sum(f.stat().st_size for sid in p.stages for f in store.stage_dir(out, sid).rglob("*") if f.is_file())
    whole = mine + 100
    said = " ".join(status.stdout.split())
    assert (f"store size: tidy {human_bytes(mine)} in {len(p.stages)} stage folders (resume checkpoints of its "
            f"finished stages {human_bytes(freed)}); the whole store {human_bytes(whole)} in {len(p.stages) + 1}") in said, said
    assert "`ablate clean --out" in said
    results = {sid: store.result(out, sid) for sid in p.stages}

    dry = CliRunner().invoke(app, ["clean", "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0 and sorted(store.stages_root(out).glob("*/checkpoint-*.pth")) == checkpoints
    assert f"would remove {2 * len(finished)} resume files of {len(p.stages)} finished stages" in dry.stdout
    done = CliRunner().invoke(app, ["clean", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert human_bytes(freed) in done.stdout
    assert sorted(store.stages_root(out).glob("*/checkpoint-*.pth")) == [unfinished / "checkpoint-last.pth"]
    assert {sid: store.result(out, sid) for sid in p.stages} == results
    assert all((store.stage_dir(out, sid) / "encoder.pth").is_file() for sid in p.stages if sid.startswith("pretrain"))
    again = run(project, study, backend="serial")  # nothing finished needs them: nothing reruns
    assert again.exit_code == 0 and "0 run now" in again.output, again.output
