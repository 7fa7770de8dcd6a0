"""Ray as users meet it: a stale "current cluster" file, a head started with Ray's defaults (token
authentication on), and the last-resort error path.

Each `ablate run` here is a real subprocess with its own HOME (where Ray keeps its token) and its
own Ray temp folder, so the stale file and the token are the test's alone; the head is a real
`ray start --head`, stopped by its process group (never `ray stop`, which stops every Ray).
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from ablate.execution import ray_cluster
from tests.helpers import tiny_profile

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent
PROFILE = tiny_profile("cluster-test", finetune=False)
STUDY = "name: tiny\naxes:\n  model.mask_ratio: [0.5, 0.75]\nevaluations: [linear_probe]\nfigures: []\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The user's HOME, shared by the head and its clients in this module (Ray's token is there)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def project(tmp_path, home):
    (tmp_path / "home").symlink_to(home)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(PROFILE)
    (tmp_path / "tiny.yaml").write_text(STUDY)
    return tmp_path


def clean_env(home: Path, ray_tmp: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONUNBUFFERED="1")
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = ray_tmp
    return env


def ablate(project: Path, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ablate"), *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=timeout)


def results(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "tiny" / "results.csv").set_index("arm")[["lin_top1", "pretrain_loss"]]


@pytest.fixture(scope="module")
def head(home):
    """`ray start --head` with Ray's defaults, in its own process group and temp folder, by a user
    who has a Ray token (any earlier local `ray.init` writes ~/.ray/auth_token): Ray then turns
    token authentication on."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    env = clean_env(home)
    subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "Token authentication is enabled" in output
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGKILL)  # the head's daemons share the group of `ray start`


def test_stale_current_cluster_file_and_token_cluster_give_the_same_results(project, head):
    """A plain run starts a private Ray despite a stale 'current cluster' file (left untouched);
    `--address` to a head with token authentication finds the user's token by itself; both give
    the same numbers to the digit, and every stage's MLflow run names the node it ran on."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    stale = Path(ray_tmp) / "ray_current_cluster"
    stale.write_text("127.0.0.1:1\n")  # a head that was killed: nothing listens there
    local = ablate(project, "run", "tiny.yaml", "--profile", "tiny", "--out", "local",
                   env=clean_env(project / "home", ray_tmp))
    assert local.returncode == 0, local.stderr + local.stdout
    assert stale.read_text() == "127.0.0.1:1\n"

    joined = ablate(project, "run", "tiny.yaml", "--profile", "tiny", "--out", "cluster", "--address", head,
                    env=clean_env(project / "home"))
    assert joined.returncode == 0, joined.stderr + joined.stdout
    assert "joined Ray cluster" in joined.stdout and "token from" in joined.stdout
    for proc in (local, joined):
        assert "Traceback" not in proc.stderr + proc.stdout and "InvalidAuthToken" not in proc.stderr
    pd.testing.assert_frame_equal(results(project / "local"), results(project / "cluster"))

    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{project / 'cluster' / 'tiny' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.role = 'stage'")
    assert len(runs) == 4
    for run in runs:
        tags = run.data.tags
        assert tags["node.host"] == socket.gethostname() and len(tags["node.ray_node_id"]) >= 32
        assert tags["node.device"] == ray_cluster_cpu()
    from typer.testing import CliRunner

    from ablate.cli import app

    status = CliRunner().invoke(app, ["status", str(project / "tiny.yaml"), "--profile", "tiny", "--out",
                                      str(project / "cluster")])  # reads files only: no Ray, in process
    assert status.exit_code == 0 and socket.gethostname() in status.output


def ray_cluster_cpu() -> str:
    from ablate.execution.node import cpu_model
    return cpu_model()


def test_a_token_cluster_without_a_token_is_one_line(project, head):
    """No token anywhere (another HOME): one line that says what to set; Ray's gRPC retries stay
    off the terminal; nothing is created under --out."""
    other = project / "elsewhere"
    other.mkdir()
    refused = ablate(project, "run", "tiny.yaml", "--profile", "tiny", "--out", "out", "--address", head,
                     env=clean_env(other))
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "requires token authentication and no token was found" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]
    assert not (project / "out" / "tiny").exists()


def test_token_is_used_only_where_the_user_has_one(tmp_path, monkeypatch):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(var, "")  # recorded as it was, so that what the code sets is undone too
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_cluster.token_source() is None and ray_cluster.use_token_if_available() is None
    assert "RAY_AUTH_MODE" not in os.environ
    token = tmp_path / "token"
    token.write_text("x" * 32)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert ray_cluster.use_token_if_available() == f"RAY_AUTH_TOKEN_PATH ({token})"
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's own choice is kept
    assert ray_cluster.use_token_if_available() is None and os.environ["RAY_AUTH_MODE"] == "disabled"


def test_unexpected_error_is_one_line_with_the_traceback_in_a_file(project, monkeypatch):
    """The last resort: an exception nothing else handles is one line naming it and the file that
    holds its traceback; before the study folder exists that file is in the user's cache, so
    nothing is created under --out; afterwards it is in the study folder."""
    from typer.testing import CliRunner

    from ablate import cli
    from ablate.execution import preflight

    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_CACHE_HOME", str(project / "cache"))

    def broken(*args, **kwargs):
        raise RuntimeError("injected\nsecond line")

    monkeypatch.setattr(preflight, "check_output", broken)
    result = CliRunner().invoke(cli.app, ["run", "tiny.yaml", "--profile", "tiny", "--out", "out"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "RuntimeError: injected second line" in lines[0] and "test_cluster.py" in lines[0] and "in broken" in lines[0]
    (log,) = (project / "cache" / "mae-ablate").glob("crash-*.log")
    assert str(log) in lines[0] and "Traceback" in log.read_text() and "injected" in log.read_text()
    assert not (project / "out").exists()

    (project / "out" / "tiny").mkdir(parents=True)  # the study folder exists: the traceback goes there
    result = CliRunner().invoke(cli.app, ["run", "tiny.yaml", "--profile", "tiny", "--out", "out"])
    assert result.exit_code == 1
    (log,) = (project / "out" / "tiny").glob("crash-*.log")
    assert str(log) in result.stderr


def test_abort_is_one_line(project, monkeypatch):
    """Click's Abort (typer's vendored click has no `exceptions.Abort`; it used to crash the handler)."""
    import typer
    from typer.testing import CliRunner

    from ablate import cli

    monkeypatch.chdir(project)

    def abort(*args, **kwargs):
        raise typer.Abort()

    monkeypatch.setattr(cli, "load", abort)
    result = CliRunner().invoke(cli.app, ["plan", "tiny.yaml"])
    assert result.exit_code == cli.EXIT_INTERRUPTED and result.stderr.strip() == "aborted"
    assert "Traceback" not in result.output


@pytest.fixture
def two_nodes(monkeypatch):
    """A two-node Ray cluster on this machine (ray.cluster_utils) without token authentication,
    stopped by its handle."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # its nodes inherit it

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    yield cluster.address
    cluster.shutdown()


def test_a_cluster_whose_nodes_do_not_see_the_output_root_is_refused_or_runs_through_a_storage_uri(project,
                                                                                                   two_nodes):
    """The driver writes a probe under --out and a task on each node must read it there. A driver
    whose --out is a tmpfs of its own mount namespace (a local disk the nodes do not have) is
    refused in one line naming a node. Given `--storage` (a folder every node sees), the same
    driver runs the study across both nodes: the trials work in their node's mirror and copy the
    stage store there; the driver reads every result from it. Also for a user who has a Ray token
    while this cluster runs without token authentication."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = project / "out"
    out.mkdir()
    private = (f"mount -t tmpfs tmpfs {out} && exec {VENV_BIN / 'ablate'} run tiny.yaml --profile tiny "
               f"--out {out} --address {two_nodes}")
    refused = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", private], cwd=project,
                             env=env, capture_output=True, text=True, timeout=300)
    if "unshare failed" in refused.stderr or "mount:" in refused.stderr:
        pytest.skip(f"cannot make a private mount here (needs root with CAP_SYS_ADMIN): {refused.stderr.strip()}")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stdout + refused.stderr
    assert lines[0].startswith("cannot run tiny: node ") and "does not see the output root" in lines[0], lines
    assert "at the same paths as the driver" in lines[0] and "--storage" in lines[0]
    assert "Traceback" not in refused.stdout

    # The user has a Ray token (~/.ray/auth_token) but this cluster runs without token authentication:
    # a client in token mode would see every trial die before it starts, so it joins without.
    user = project / "user"
    subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=clean_env(user), check=True,
                   capture_output=True)
    assert (user / ".ray" / "auth_token").is_file()
    shared = project / "shared-store"
    stored = (f"mount -t tmpfs tmpfs {out} && {VENV_BIN / 'ablate'} run tiny.yaml --profile tiny --out {out} "
              f"--address {two_nodes} --storage {shared} && cat {out}/tiny/results.csv")
    ran = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", stored], cwd=project,
                         env=clean_env(user), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"storage checked on 2 nodes: the storage {shared}" in ran.stdout and "token from" not in ran.stdout
    assert "Traceback" not in ran.stdout + ran.stderr and "4/4 stages done" in ran.stdout
    table = pd.read_csv(io.StringIO(ran.stdout[ran.stdout.index("study,arm,"):])).set_index("arm")
    assert (table["lin_top1"] > 0).all() and (table["status"] == "done").all()
    assert not any(out.iterdir())  # the driver's --out was its own tmpfs: nothing reached this folder
    ran_on = set()
    for folder in (shared / "stages").iterdir():  # the store at the URI: every stage done, on both nodes
        assert (folder / "result.json").is_file()
        ran_on |= {a["ray_node_id"] for a in json.loads((folder / "stage.json").read_text())["attempts"]}
    assert len(list((shared / "stages").iterdir())) == 4 and len(ran_on) == 2
    assert not list(shared.glob(".storage-probe-*"))


def test_a_node_lost_mid_stage_costs_only_its_work_the_stage_resumes_on_another(project, monkeypatch):
    """Two 1-CPU worker nodes (and a head that runs nothing): the node running a pre-training is
    removed after its third epoch; the trial is retried on the surviving node from its checkpoint."""
    import time

    from ray.cluster_utils import Cluster

    from ablate.execution import store
    from ablate.planning.plan import plan
    from ablate.spec.profiles import load_profile
    from ablate.spec.study import load_study

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    (project / "long.yaml").write_text("name: long\nbase:\n  pretrain: {epochs: 120}\nevaluations: []\nfigures: []\n")
    s = load_study(project / "long.yaml")
    (sid,) = plan(s, load_profile("tiny", s.source)).stages
    out = project / "out"
    folder = store.stage_dir(out, sid)
    driver = subprocess.Popen([str(VENV_BIN / "ablate"), "run", "long.yaml", "--profile", "tiny", "--out", "out",
                               "--address", cluster.address], cwd=project, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while len(store.epochs(out, sid)) < 3:  # the stage's own progress: three epochs written
            assert time.time() < deadline and driver.poll() is None, "the stage never reached its third epoch"
            time.sleep(0.05)
        first = store.attempts(out, sid)[0]["ray_node_id"]
        (victim,) = [n for n in workers if n.node_id == first]
        cluster.remove_node(victim)
        output = driver.communicate(timeout=300)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
        cluster.shutdown()
    assert driver.returncode == 0, output
    assert "Traceback" not in output and "retry" in output
    tried = store.attempts(out, sid)
    assert len(tried) == 2 and tried[1]["ray_node_id"] != first  # the retry ran on the surviving node
    epochs = [json.loads(line)["epoch"] for line in (folder / store.METRICS).read_text().splitlines()]
    assert store.state(out, sid) == store.DONE and epochs[-1] == 119 and set(epochs) == set(range(120))
    assert epochs.count(0) == 1 and epochs.count(1) == 1  # the retry resumed from a checkpoint, not from epoch 0
