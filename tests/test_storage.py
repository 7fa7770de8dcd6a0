"""`--storage`: the stage store at a URI (ablate/execution/storage.py), tested on S3 through moto's
S3 server (real HTTP, pyarrow's own S3 client, offline). The stages run in this machine's mirror of
the URI, as a trial on a node without the driver's disk does; the multi-node case (nodes that do
not see the driver's --out) is in tests/test_cluster.py.
"""
from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import store
from ablate.execution.runner import run_study
from ablate.execution.serial_backend import SerialBackend
from ablate.execution.storage import Storage, mirror_root
from tests.helpers import PROFILE, the_plan

pytestmark = pytest.mark.slow
STUDY = ("name: stored\nbase:\n  pretrain: {{epochs: {epochs}}}\naxes:\n  model.mask_ratio: [0.5, 0.75]\n"
         "evaluations: [linear_probe]\nfigures: [loss_curves]\n")


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint (moto's server on a free port) with one bucket: (pyarrow filesystem, endpoint)."""
    moto_server = pytest.importorskip("moto.server", reason="moto is in the test extra (scripts/setup.sh)")
    import pyarrow.fs as pafs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    fs = pafs.S3FileSystem(access_key="test", secret_key="test", endpoint_override=endpoint, scheme="http",
                           region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("bucket")
    yield fs, endpoint
    server.stop()


@pytest.fixture
def uri(s3, monkeypatch, request):
    _, endpoint = s3
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED":
                       "true"}.items():
        monkeypatch.setenv(key, value)
    uri = f"s3://bucket/{request.node.name[:40]}?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    yield uri
    shutil.rmtree(mirror_root(uri), ignore_errors=True)


def objects(fs, prefix: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path.removeprefix(prefix + "/"): i.size for i in infos if i.type == pafs.FileType.File}


def write_study(project: Path, epochs: int) -> Path:
    (project / "profiles").mkdir(exist_ok=True)
    (project / "profiles" / "tiny.yaml").write_text(PROFILE)
    study = project / "stored.yaml"
    study.write_text(STUDY.format(epochs=epochs))
    return study


def steps_logged(out: Path) -> dict[str, dict[str, list[int]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'stored' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stored")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags["role"] == "stage"]
    return {r.data.tags["stage_id"]: {k: [m.step for m in client.get_metric_history(r.info.run_id, k)]
                                      for k in r.data.metrics} for r in runs}


def test_a_study_on_s3_runs_from_any_output_root_and_its_driver_keeps_no_weights(tmp_path, s3, uri):
    fs, _ = s3
    study = write_study(tmp_path, epochs=2)
    plan = the_plan(study)
    first = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(tmp_path / "a"),
                                     "--backend", "serial", "--storage", uri])
    assert first.exit_code == 0, first.output
    stored = objects(fs, f"bucket/{uri.split('/', 3)[3].split('?')[0]}")
    for sid, stage in plan.stages.items():
        assert f"stages/{sid}/result.json" in stored and f"stages/{sid}/metrics.jsonl" in stored
        if stage.kind == "pretrain":
            assert stored[f"stages/{sid}/encoder.pth"] > 10_000  # the child stages read it from there
        local = store.stage_dir(tmp_path / "a", sid)
        assert store.state(tmp_path / "a", sid) == store.DONE
        assert not list(local.glob("*.pth")), sorted(p.name for p in local.iterdir())  # records only
    assert not [k for k in stored if ".storage-probe-" in k or k.endswith(".tmp") or k.endswith("lease.json")]
    points = steps_logged(tmp_path / "a")
    assert len(points) == len(plan.stages)
    assert all(collections.Counter(steps)[s] == 1 for metrics in points.values() for steps in metrics.values()
               for s in steps)

    # Another output root (another machine's driver) with the same URI: every stage is reused from
    # there, the tables are the same, and nothing runs.
    shutil.rmtree(mirror_root(uri))
    second = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(tmp_path / "b"),
                                      "--backend", "serial", "--storage", uri])
    assert second.exit_code == 0, second.output
    assert f"0 run now, {len(plan.stages)} already done" in second.output
    assert (tmp_path / "a" / "stored" / "results.csv").read_text().split("\n")[1:] == \
        (tmp_path / "b" / "stored" / "results.csv").read_text().split("\n")[1:]
    assert not mirror_root(uri).exists()  # nothing ran, so nothing was copied to a mirror


def test_a_stage_stopped_on_one_machine_resumes_on_another_from_the_checkpoint_at_the_uri(tmp_path, uri):
    """Ctrl-C after pre-training epoch 1 of 3 (its checkpoint copied up as it was written); then
    another driver and another mirror (another machine): the stage resumes at epoch 2."""
    study = write_study(tmp_path, epochs=3)
    plan = the_plan(study)
    storage = Storage(uri)
    storage.check()
    pretrain = next(s for s in plan.stages.values() if s.kind == "pretrain")

    def stop_after_epoch_1(engine, job, out_dir, report):
        def reporting(metrics: dict) -> None:
            report(metrics)
            if job.stage.id == pretrain.id and metrics.get("epoch") == 1:
                raise KeyboardInterrupt
        return engine(job, out_dir, reporting)

    stopped = run_study(plan, tmp_path / "a", backend=SerialBackend(stop_after_epoch_1, storage=storage),
                        storage=storage)
    assert stopped.interrupted and store.state(tmp_path / "a", pretrain.id) == store.PENDING
    shutil.rmtree(mirror_root(uri))  # the first machine is gone

    again = Storage(uri)
    done = run_study(plan, tmp_path / "b", backend=SerialBackend(storage=again), storage=again)
    assert not done.interrupted and all(state == store.DONE for state in done.states.values())
    epochs = [row["epoch"] for row in store.epochs(tmp_path / "b", pretrain.id)]
    assert epochs == [0, 1, 2]  # epochs 0 and 1 from the first machine, 2 resumed on the second
    assert len(store.attempts(tmp_path / "b", pretrain.id)) == 2
    assert sorted(steps_logged(tmp_path / "b")[pretrain.id]["pretrain_loss"]) == [0, 1, 2]


def test_a_storage_uri_that_cannot_be_used_is_one_line_and_nothing_is_written(tmp_path, s3, monkeypatch):
    _, endpoint = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    study = write_study(tmp_path, epochs=1)
    for uri, says in ((f"s3://no-such-bucket/x?endpoint_override={endpoint}&scheme=http&region=us-east-1",
                       "cannot write and read there"),
                      ("nosuchscheme://somewhere/x", "--storage nosuchscheme://somewhere/x")):
        result = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(tmp_path / "out"),
                                          "--backend", "serial", "--storage", uri])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and says in lines[-1], result.output
        assert "Traceback" not in result.output and "check the URI" in lines[-1]
        assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(tmp_path / "out"),
                                      "--storage", str(tmp_path / "store"), "--rerun-stale"])
    assert result.exit_code == 2 and result.output.strip().startswith("--rerun-stale: not with --storage")
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()
