"""Bad and untrusted input: more study files, profiles and command lines that must each give exit
status 2 and one stderr line (naming the file or option, the field and what is allowed), with no
traceback, nothing created and no Ray started; checkpoints that would run code are refused; and
`ablate run` says where it writes and reads before it writes anything.

tests/test_study.py holds the first corpus (BAD); this one extends it.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import store
from tests.helpers import TINY_PROFILE

GOOD = "name: s\nevaluations: [linear_probe]\n"

# name: (file bytes or text, commands it must fail in, what the one line must contain)
ALL = ("validate", "plan", "run")
STUDIES = {
    "grid masking at a ratio it cannot keep": (
        "name: s\nbase:\n  model: {mask_sampling: grid, mask_ratio: 0.6}\n", ALL,
        ["model", "mask_ratio 0.6", "valid ratios: 0.75, 0.9375"]),
    "grid masking over a ratio axis": (
        "name: s\nbase:\n  model: {mask_sampling: grid}\naxes:\n  model.mask_ratio: [0.75, 0.5]\n", ALL,
        ["arm 'mask_ratio=0.5'", "valid ratios: 0.75"]),
    "epochs overflowing a float": ("name: s\nbase:\n  pretrain: {epochs: 1.0e+400}\n", ALL,
                                   ["base.pretrain.epochs", "finite number"]),
    "epochs 1e400 (a string in YAML)": ("name: s\nbase:\n  pretrain: {epochs: 1e400}\n", ALL,
                                        ["base.pretrain.epochs", "valid integer"]),
    "epochs 10**30": ("name: s\nbase:\n  pretrain: {epochs: 1000000000000000000000000000000}\n", ALL,
                      ["base.pretrain.epochs", "less than or equal to 100000"]),
    "seed beyond 32 bits": ("name: s\nseeds: [100000000000000000000000]\n", ALL, ["seeds", "4294967295"]),
    "negative seed": ("name: s\nseeds: [-1]\n", ALL, ["seeds", "greater than or equal to 0"]),
    "negative lr": ("name: s\nbase:\n  pretrain: {blr: -1.5e-4}\n", ALL, ["base.pretrain.blr", "greater than 0"]),
    "infinite lr": ("name: s\nbase:\n  linear_probe: {blr: .inf}\n", ALL, ["base.linear_probe.blr", "finite"]),
    "NaN mask ratio": ("name: s\nbase:\n  model: {mask_ratio: .nan}\n", ALL, ["base.model.mask_ratio", "finite"]),
    "batch size 0": ("name: s\nbase:\n  finetune: {batch_size: 0}\n", ALL,
                     ["base.finetune.batch_size", "greater than or equal to 1"]),
    "zero CPUs": ("name: s\nresources: {cpu: 0}\n", ALL, ["resources.cpu", "greater than 0"]),
    "unknown model variant": ("name: s\nbase:\n  model: {variant: vit_giant}\n", ALL,
                              ["vit_giant", "valid:", "vit_test"]),
    "unknown precision": ("name: s\nbase:\n  pretrain: {precision: fp16}\n", ALL,
                          ["base.pretrain.precision", "'fp32' or 'bf16'"]),
    "mask ratio as words": ("name: s\nbase:\n  model: {mask_ratio: high}\n", ALL,
                            ["base.model.mask_ratio", "valid number"]),
    "seed listed twice": ("name: s\nseeds: [0, 0]\n", ALL, ["seeds", "listed twice"]),
    "arm name with a comma": ("name: s\narms:\n  'a,b': {model.mask_ratio: 0.5}\n", ALL, ["arms.a,b", "','"]),
    "study name too long for a folder": ("name: " + "a" * 300 + "\n", ALL, ["name", "at most 100 characters"]),
    "python name tag": ("name: s\ndescription: !!python/name:os.system\n", ALL, ["YAML", "python/name"]),
    "alias bomb": ("name: s\nx: &a [1, 1, 1, 1, 1, 1, 1, 1]\ny: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "z: [*b, *b, *b, *b, *b, *b, *b, *b]\n", ALL, ["unknown key", "allowed:"]),
    "bytes that are not UTF-8": (b"name: s\ndescription: caf\xe9\n", ALL, ["line 2", "not UTF-8", "0xe9"]),
    "Fashion-MNIST missing from data.root": (
        "name: s\nbase:\n  model: {variant: vit_fmnist}\n  data: {dataset: fashion_mnist, root: EMPTY}\n", ("run",),
        ["base.data.root", "no Fashion-MNIST at", "apt-get install dataset-fashion-mnist", "set data.root"]),
    "ImageNet folder missing": (
        "name: s\nbase:\n  model: {variant: vit_test}\n  data: {dataset: imagefolder, root: EMPTY}\n", ("run",),
        ["base.data.root", "no image folder at", "train/<class>/<image>"]),
}

# name: (arguments, with @STUDY / @FILE / @DIR standing for paths; how the line starts; what it contains)
COMMANDS = {
    "unknown option": (["run", "@STUDY", "--bogus"], "--bogus:", ["no such option", "allowed: --profile"]),
    "non-positive --max-concurrent": (["run", "@STUDY", "--max-concurrent", "0"], "--max-concurrent:",
                                      ["greater than or equal to 1"]),
    "word for --max-concurrent": (["run", "@STUDY", "--max-concurrent", "two"], "--max-concurrent:",
                                  ["valid integer"]),
    "option without its value": (["run", "@STUDY", "--out"], "--out:", ["requires an argument"]),
    "no study file given": (["run"], "STUDY:", ["missing", "--help"]),
    "extra argument": (["validate", "@STUDY", "@STUDY"], "", ["unexpected extra argument"]),
    "unknown command": (["runn", "@STUDY"], "", ["No such command 'runn'", "Commands: validate, plan, run"]),
    "unknown profile name": (["run", "@STUDY", "--profile", "nope"], "--profile:",
                             ["unknown profile 'nope'", "available:", "tiny", "laptop"]),
    "missing profile file": (["run", "@STUDY", "--profile", "@DIR/nope.yaml"], "--profile:", ["no such profile file"]),
    "study file that does not exist": (["run", "@DIR/nope.yaml"], "@DIR/nope.yaml:", ["no such file"]),
    "a folder as the study file": (["validate", "@DIR"], "@DIR:", ["a study is a .yaml file"]),
    "a folder named like a study": (["run", "@DIR/folder.yaml"], "@DIR/folder.yaml:",
                                    ["a folder of studies holds .yaml study files; this one has none"]),
    "a folder of studies without one": (["run", "@DIR/taken"], "@DIR/taken:", ["this one has none"]),
    "a study given twice": (["run", "@STUDY", "@STUDY"], "@STUDY:", ["is listed twice"]),
    "study file of another kind": (["run", "@DIR/study.json"], "@DIR/study.json:", ["a study is a .yaml file"]),
    "--out is a regular file": (["run", "@STUDY", "--out", "@FILE"], "--out:", ["is a file, not a folder"]),
    "--out under a regular file": (["run", "@STUDY", "--out", "@FILE/runs"], "--out:",
                                   ["is a file, so no folder can be made under it"]),
    "--out whose study folder is a file": (["run", "@STUDY", "--out", "@DIR/taken"], "--out:",
                                           ["taken/s is a file, not a folder"]),
    "unknown backend": (["run", "@STUDY", "--backend", "dask"], "--backend:", ["'dask' is not one of", "ray", "serial"]),
    "--address on the serial backend": (["run", "@STUDY", "--backend", "serial", "--address", "auto"], "--address:",
                                        ["only for --backend ray"]),
    "ui port not a number": (["ui", "@STUDY", "--port", "http"], "--port:", ["valid integer"]),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch, ray_starts):
    """A study folder with a tiny profile and an empty data folder; the cwd is an empty folder
    that must stay empty."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(TINY_PROFILE)
    (tmp_path / "empty").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def _one_line(result, start: str, needles: list[str]) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(start), (start, lines[0])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _nothing_started(workdir: Path) -> None:
    assert os.listdir(workdir / "cwd") == []
    assert not (workdir / "out").exists()
    assert sys.modules["ray"].init.calls == []  # no Ray was started (see the ray_starts fixture)


def test_the_corpora_hold_at_least_thirty_cases():
    from tests.helpers import BAD

    assert len(BAD) + len(STUDIES) + len(COMMANDS) >= 30


@pytest.mark.parametrize("case", sorted(STUDIES))
def test_bad_study_file(workdir, case):
    text, commands, needles = STUDIES[case]
    study = workdir / "bad.yaml"
    if isinstance(text, bytes):
        study.write_bytes(text)
    else:
        study.write_text(text.replace("EMPTY", str(workdir / "empty")))
    for command in commands:
        extra = ["--out", str(workdir / "out")] if command == "run" else []
        _one_line(CliRunner().invoke(app, [command, str(study), "--profile", "tiny", *extra]), str(study), needles)
    _nothing_started(workdir)
    assert os.listdir(workdir / "empty") == []


def test_bad_profile_file(workdir):
    """A profile with a YAML syntax error, and one with an unknown key: the line names the profile."""
    study = workdir / "good.yaml"
    study.write_text(GOOD)
    (workdir / "profiles" / "broken.yaml").write_text("description: x\nbase:\n  model: {variant: vit_test\n")
    (workdir / "profiles" / "typo.yaml").write_text(TINY_PROFILE + "resourses: {cpu: 1}\n")
    for name, needles in (("broken", ["line", "YAML syntax error"]), ("typo", ["resourses", "unknown key", "allowed:"])):
        result = CliRunner().invoke(app, ["run", str(study), "--profile", name, "--out", str(workdir / "out")])
        _one_line(result, str(workdir / "profiles" / f"{name}.yaml"), needles)
    _nothing_started(workdir)


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_bad_command_line(workdir, case):
    args, start, needles = COMMANDS[case]
    study = workdir / "good.yaml"
    study.write_text(GOOD)
    (workdir / "file").write_text("not a folder\n")
    (workdir / "folder.yaml").mkdir()
    (workdir / "study.json").write_text("{}")
    (workdir / "taken" / "s").parent.mkdir()
    (workdir / "taken" / "s").write_text("")
    before = sorted(p.name for p in workdir.iterdir())
    paths = {"@STUDY": str(study), "@FILE": str(workdir / "file"), "@DIR": str(workdir)}

    def expand(text: str) -> str:
        for key, value in paths.items():
            text = text.replace(key, value)
        return text

    args = [expand(a) for a in args]
    if args[0] in ("run", "plan", "validate", "status") and "--profile" not in args and len(args) > 1:
        args[2:2] = ["--profile", "tiny"]  # right after the study file
    _one_line(CliRunner().invoke(app, args), expand(start), needles)
    _nothing_started(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == before
    assert (workdir / "file").read_text() == "not a folder\n" and (workdir / "taken" / "s").read_text() == ""


def test_run_says_where_it_writes_and_reads_before_writing_anything(workdir, monkeypatch):
    """The output root and each dataset's location are printed before anything is created."""
    import ablate.execution.runner
    from ablate.execution.runner import Outcome

    seen = {}

    def fake_run_study(plan, out_root, **kwargs):
        seen["existed"] = Path(out_root).exists()
        return Outcome(store.study_dir(out_root, plan.study.name), states={})

    monkeypatch.setattr(ablate.execution.runner, "run_study", fake_run_study)
    study = workdir / "good.yaml"
    study.write_text(GOOD)
    out = workdir / "out"
    result = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert seen == {"existed": False}
    lines = result.stdout.splitlines()
    assert lines[0].startswith("profile tiny: ")
    assert lines[1].startswith(f"output: {out} (stage folders in {out / 'stages'}/")
    assert lines[2] == "data: synthetic (generated in memory, no files)"


def test_run_names_the_real_data_folder(workdir, monkeypatch):
    import ablate.execution.runner
    from ablate.execution.runner import Outcome

    monkeypatch.setattr(ablate.execution.runner, "run_study",
                        lambda plan, out_root, **kw: Outcome(store.study_dir(out_root, plan.study.name), states={}))
    data = workdir / "fmnist"
    data.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / f"{stem}.gz").write_bytes(b"")  # present is all the pre-flight check asks
    study = workdir / "fm.yaml"
    study.write_text(f"name: fm\nbase:\n  model: {{variant: vit_fmnist}}\n  data: {{dataset: fashion_mnist, root: {data}}}\n")
    result = CliRunner().invoke(app, ["run", str(study), "--profile", "tiny", "--out", str(workdir / "out")])
    assert result.exit_code == 0, result.output
    assert f"data: fashion_mnist from {data}" in result.stdout.splitlines()


# ------------------------------------------------------------------------------ untrusted checkpoints
class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.target)!r}).write_text('pwned')",))


def test_a_checkpoint_that_would_run_code_is_refused_on_resume(tmp_path):
    """A pickle planted as a stage's newest checkpoint (with a matching checksum) is not executed:
    the resume refuses it, says so in the stage's warnings, and trains from the start."""
    import hashlib

    import torch

    from ablate.execution.stages import run_stage
    from ablate.planning.plan import plan
    from ablate.spec.profiles import load_profile
    from ablate.spec.study import load_study

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(TINY_PROFILE)
    (tmp_path / "s.yaml").write_text("name: s\nevaluations: []\nfigures: []\n")
    study = load_study(tmp_path / "s.yaml")
    (stage,) = plan(study, load_profile("tiny", study.source)).stages.values()
    folder = store.stage_dir(tmp_path / "runs", stage.id)
    folder.mkdir(parents=True)
    planted = folder / "checkpoint-last.pth"
    torch.save({"model": _Evil(tmp_path / "pwned"), "epoch": 0}, planted)
    (folder / "checkpoint-last.pth.sha256").write_text(hashlib.sha256(planted.read_bytes()).hexdigest() + "\n")
    with pytest.raises(pickle.UnpicklingError):  # what a plain torch.load(weights_only=True) says too
        torch.load(planted, weights_only=True)

    result = run_stage(stage, tmp_path / "runs")
    assert not (tmp_path / "pwned").exists()
    assert result["epochs"] == 1 and store.state(tmp_path / "runs", stage.id) == store.DONE
    (note,) = store.warnings(tmp_path / "runs", stage.id)
    assert "checkpoint-last.pth: cannot be loaded as weights-only" in note["message"]
    assert "starting from the beginning" in note["message"]
    assert [json.loads(line)["epoch"] for line in (folder / store.METRICS).read_text().splitlines()] == [0]


def test_only_a_typed_deterministic_error_fails_a_stage_at_once(tmp_path):
    """A stage fails for good at once only when its code raises core.errors.Deterministic (raised
    where the failure is found); any other error (a KeyError from a bug, a flaky disk) goes back to
    the backend to retry. The Ray backend tells a dead worker from Ray's error types, not its text."""
    from types import SimpleNamespace

    from ray.exceptions import ActorDiedError

    from ablate.execution.ray_backend import _worker_died
    from ablate.execution.stages import StageFailed, run_stage
    from ablate.planning.plan import plan
    from ablate.spec.profiles import load_profile
    from ablate.spec.study import load_study
    from core.errors import ConfigError, Deterministic, NonFiniteLoss

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(TINY_PROFILE)
    (tmp_path / "s.yaml").write_text("name: s\nevaluations: []\nfigures: []\n")
    study = load_study(tmp_path / "s.yaml")
    (stage,) = plan(study, load_profile("tiny", study.source)).stages.values()

    def raising(error):
        def launch(engine, job, out_dir, report):
            raise error
        return launch

    for error in (ConfigError("a lattice that does not fit"), NonFiniteLoss("loss nan at epoch 0")):
        with pytest.raises(StageFailed, match=type(error).__name__):
            run_stage(stage, tmp_path / "runs", launch=raising(error))
        assert type(error).__name__ in store.error(tmp_path / "runs", stage.id)
    for error in (KeyError("a bug"), ValueError("an untyped value error"), RuntimeError("worker lost")):
        with pytest.raises(type(error)):
            run_stage(stage, tmp_path / "runs", launch=raising(error))
    assert issubclass(ConfigError, ValueError) and issubclass(NonFiniteLoss, FloatingPointError)
    assert not issubclass(ValueError, Deterministic)

    def trial(error):
        return SimpleNamespace(get_pickled_error=lambda: error)

    assert _worker_died(trial(ActorDiedError())) and _worker_died(trial(None))
    assert not _worker_died(trial(KeyError("died")))  # the word is not the type
    wrapped = RuntimeError("trial failed")
    wrapped.__cause__ = ActorDiedError()
    assert _worker_died(trial(wrapped))
