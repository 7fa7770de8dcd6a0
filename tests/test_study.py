"""Study and profile files: every shipped one loads and plans; bad input is one line, exit 2, nothing created."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.errors import StudyError
from ablate.planning.plan import plan
from ablate.spec.profiles import BUILTIN_DIR, available_profiles, load_profile
from ablate.spec.study import load_study, parse_study
from tests.helpers import BAD, TINY_PROFILE

STUDIES = sorted(Path(__file__).resolve().parents[1].joinpath("studies").glob("*.yaml"))
PROFILES = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))




def test_shipped_files_exist():
    assert {"laptop", "cifar_gpu", "paper"} <= set(PROFILES)
    assert {"quickstart.yaml", "masking_ratio.yaml"} <= {p.name for p in STUDIES}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("study_file", STUDIES, ids=lambda p: p.stem)
def test_every_study_plans_in_every_profile(study_file, profile):
    study = load_study(study_file)
    p = plan(study, load_profile(profile, study.source))
    assert p.runs and p.stages
    assert len(p.runs) == len(p.arms) * len(study.seeds)
    for run in p.runs:
        assert set(run.stages) >= {"pretrain"}
        for sid in run.stages.values():
            assert sid in p.stages


def test_profiles_have_a_description():
    for name in PROFILES:
        assert load_profile(name).description.strip()


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture
def workdir(tmp_path, monkeypatch, ray_starts):
    """A study folder with a tiny profile; the cwd is an empty folder that must stay empty."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text(TINY_PROFILE)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


GOOD = """\
name: s
axes:
  model.mask_ratio: [0.5, 0.75]
evaluations: [linear_probe]
"""



def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_is_one_line_exit_2_and_creates_nothing(workdir, case):
    text, needles = BAD[case]
    study = workdir / "bad.yaml"
    study.write_text(text)
    for command in (["validate"], ["plan"], ["run", "--out", str(workdir / "out")]):
        result = _invoke([*command, str(study), "--profile", "tiny"])
        assert result.exit_code == 2, (command, result.output, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(str(study)), lines[0]
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        assert "Traceback" not in result.output + result.stderr
    assert not (workdir / "out").exists()
    assert os.listdir(workdir / "cwd") == []
    assert sys.modules["ray"].init.calls == []  # no Ray was started (see the ray_starts fixture)


def test_unknown_profile_names_the_available_ones(workdir):
    study = workdir / "good.yaml"
    study.write_text(GOOD)
    result = _invoke(["validate", str(study), "--profile", "nope"])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "--profile" in line and "'nope'" in line
    assert "tiny" in line and "laptop" in line


def test_bad_profile_value_is_blamed_on_the_profile(workdir):
    (workdir / "profiles" / "broken.yaml").write_text(TINY_PROFILE.replace("num_workers: 0", "num_workers: -1"))
    study = workdir / "good.yaml"
    study.write_text(GOOD)
    result = _invoke(["validate", str(study), "--profile", "broken"])
    assert result.exit_code == 2
    assert result.stderr.startswith(str(workdir / "profiles" / "broken.yaml"))
    assert "base.data.num_workers" in result.stderr


def test_missing_study_file(workdir):
    result = _invoke(["validate", str(workdir / "nope.yaml"), "--profile", "tiny"])
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_good_study_validates(workdir):
    study = workdir / "good.yaml"
    study.write_text(GOOD)
    result = _invoke(["validate", str(study), "--profile", "tiny"])
    assert result.exit_code == 0, result.output
    assert "profile tiny: tiny test profile" in result.stdout
    assert "2 arm(s) x 1 seed(s), 4 stage(s)" in result.stdout
    assert os.listdir(workdir / "cwd") == []


def test_dotted_and_nested_overlays_are_the_same():
    nested = parse_study({"name": "a", "base": {"model": {"mask_ratio": 0.6}}})
    dotted = parse_study({"name": "a", "base": {"model.mask_ratio": 0.6}})
    assert nested.base == dotted.base == {"model": {"mask_ratio": 0.6}}


def test_errors_read_file_path_message():
    with pytest.raises(StudyError) as info:
        parse_study({"name": "a", "axes": {"model.mask_ratio": []}}, "x.yaml")
    assert str(info.value) == "x.yaml: axes.model.mask_ratio: expected a non-empty list of values"


def test_profile_lookup_lists_builtins():
    assert {"laptop", "cifar_gpu", "paper"} <= set(available_profiles())


def test_seed_keys_come_from_the_seeds_list(workdir):
    study = workdir / "seeded.yaml"
    study.write_text("name: s\naxes:\n  pretrain.seed: [1, 2]\n")
    result = _invoke(["validate", str(study), "--profile", "tiny"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"{study}: axes.pretrain.seed[0]: seeds are set by the study's `seeds: [...]` " \
                                    f"list, not per key"


def test_a_study_changes_what_it_names_at_a_profile_scale(workdir):
    """`profiles: {<name>: ...}` in a study applies only when that profile runs."""
    study = workdir / "scaled.yaml"
    study.write_text("name: scaled\naxes:\n  model.mask_ratio: [0.5, 0.75]\nprofiles:\n"
                     "  tiny: {base: {model: {decoder_depth: 2}}, axes: {model.mask_ratio: [0.25, 0.5, 0.9]}}\n"
                     "  elsewhere: {axes: {model.mask_ratio: [0.1]}}\nevaluations: [linear_probe]\n")
    s = load_study(study)
    scaled = plan(s, load_profile("tiny", s.source))
    assert [run.arm for run in scaled.runs] == ["mask_ratio=0.25", "mask_ratio=0.5", "mask_ratio=0.9"]
    assert all(stage.config["model"]["decoder_depth"] == 2 for stage in scaled.stages.values())
    assert scaled.study.source == study
    plain = plan(s.model_copy(update={"profiles": {}}), load_profile("tiny", s.source))
    assert [run.arm for run in plain.runs] == ["mask_ratio=0.5", "mask_ratio=0.75"]
