"""A suite of studies as one run (`ablate run studies/`): one pool of trials over every study's
stages, a stage two studies share run once, each study tracked and reported as if run alone, and
the suite besides (its combined report opening with the paper's findings judged, its MLflow
experiment); interrupted and resumed like one study; and what names a suite, with its errors.

Real Ray (the test process's, tests/conftest.py) or the serial backend, real MLflow (sqlite under
tmp_path), the test-sized model on synthetic data.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import store
from ablate.planning.plan import plan, union
from ablate.spec.profiles import load_profile
from ablate.spec.study import load_study
from ablate.spec.suite import load_suite
from tests import faults
from tests.helpers import PROFILE, mlflow_client, mlflow_runs, stamps

# Two studies of the paper's ablation section, small: their arms at mask ratio 0.75 with the
# default decoder (1 block for vit_test) are the same arm, so its stages are shared.
MASKING_RATIO = """\
name: masking_ratio
axes:
  model.mask_ratio: [0.25, 0.75]
evaluations: [linear_probe]
figures: [fig5_mask_ratio, loss_curves]
tables: [fig5_mask_ratio]
trend: model.mask_ratio
"""
DECODER_DEPTH = """\
name: decoder_depth
base:
  model: {mask_ratio: 0.75}
axes:
  model.decoder_depth: [1, 2]
evaluations: [linear_probe]
figures: [loss_curves]
tables: [table1a]
"""


def project(root: Path) -> Path:
    folder = root / "studies"
    (folder / "profiles").mkdir(parents=True)
    (folder / "profiles" / "tiny.yaml").write_text(PROFILE)
    (folder / "masking_ratio.yaml").write_text(MASKING_RATIO)
    (folder / "decoder_depth.yaml").write_text(DECODER_DEPTH)
    return folder


def plans_of(folder: Path, seeds: int) -> list:
    suite = load_suite([folder])
    return [plan(load_study(f).with_seeds(seeds), load_profile("tiny", f)) for f in suite.files]


def ablate(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def child_runs(out: Path, experiment: str) -> list[dict]:
    runs = mlflow_runs(out.parent, experiment) if out.name == "runs" else []
    return [r for r in runs if r["role"] == "stage"]


def test_a_folder_of_studies_runs_as_one_pool_with_each_studys_report_and_the_suites(tmp_path, ray_session,
                                                                                      monkeypatch):
    folder = project(tmp_path)
    out = tmp_path / "runs"
    plans = plans_of(folder, seeds=1)
    whole = union("studies", plans)
    assert sum(len(p.stages) for p in plans) == 8 and len(whole.stages) == 6  # 2 shared: a pretrain and its probe

    result = ablate("run", str(folder), "--profile", "tiny", "--out", str(out))
    assert result.exit_code == 0, result.output
    # One pool: every stage of both studies in one wave (Tune's trials), none waiting for a study.
    assert "wave 1: 6 stages to run" in result.output and "wave 2" not in result.output
    assert all(len(store.attempts(out, sid)) == 1 for sid in whole.stages)  # a shared stage ran once
    assert "the paper's findings: 0 reproduced, 0 not reproduced, 2 inconclusive (of 2)" in result.output

    # Each study as if run alone: its table, report and MLflow experiment with a run per stage, once.
    for p in plans:
        table = pd.read_csv(out / p.study.name / "results.csv")
        assert len(table) == 2 and set(table["status"]) == {"done"}
        assert (out / p.study.name / "report" / "report.html").is_file()
        runs = child_runs(out, p.study.name)
        assert sorted(r["stage_id"] for r in runs) == sorted(p.stages)
        assert {r["status"] for r in runs} == {"FINISHED"}
    # The suite's experiment: every distinct stage once, with its lineage, comparable across studies.
    suite_runs = child_runs(out, "studies")
    assert sorted(r["stage_id"] for r in suite_runs) == sorted(whole.stages)
    probe = next(r for r in suite_runs if r["kind"] == "linear_probe")
    assert {"pretrain.epochs", "model.mask_ratio", "linear_probe.blr"} <= set(probe["params"])
    assert any("masking_ratio/" in r["arm"] for r in suite_runs) and any("decoder_depth/" in r["arm"]
                                                                       for r in suite_runs)

    # The combined report: the findings first, then the studies in the paper's order.
    page = (out / "studies" / "report" / "report.html").read_text()
    heads = [page.index(text) for text in ("The paper's findings, judged from our runs", 'id="study-decoder_depth"',
                                           'id="study-masking_ratio"')]
    assert heads == sorted(heads)
    assert "Table 1a: decoder depth" in page and "Figure 5: masking ratio" in page
    assert "Linear probing peaks at a high masking ratio (60-90%)" in page  # a claim of each study
    assert "A deeper decoder gives a better linear probe (8 blocks against 1)" in page
    claims = pd.read_csv(out / "studies" / "report" / "tables" / "claims.csv")
    assert set(claims["study"]) == {"masking_ratio", "decoder_depth"} and len(claims) == 2
    for suffix in (".png", ".svg"):  # the study's figure, beside the paper's, as PNG and SVG
        assert (out / "studies" / "report" / "figures" / "masking_ratio" / f"fig5_mask_ratio{suffix}").is_file()

    # The same command again runs nothing, and MLflow's tables are replaced, not appended to.
    before = stamps(tmp_path, whole.stages)
    again = ablate("run", str(folder), "--profile", "tiny", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "6/6 distinct stages done (0 run now, 6 already done)" in again.output
    assert stamps(tmp_path, whole.stages) == before
    assert len(child_runs(out, "studies")) == 6
    calls = []  # `ablate ui studies/`: the suite's experiment, where every stage of every study is
    monkeypatch.setattr("subprocess.run", lambda command, check: calls.append(command))
    opened = ablate("ui", str(folder), "--out", str(out))
    assert opened.exit_code == 0 and calls[0][3] == f"sqlite:///{(out / 'studies' / 'mlflow.db').resolve()}", opened.output
    client = mlflow_client(tmp_path, "masking_ratio")
    parent = next(r for r in mlflow_runs(tmp_path, "masking_ratio") if r["role"] == "study")
    summary = Path(client.download_artifacts(parent["id"], "summary.json", str(tmp_path)))
    assert len(pd.read_json(summary, orient="split")) == 2  # one row per arm after two runs


def test_an_interrupted_suite_resumes_and_its_report_is_drawn_from_what_is_done(tmp_path, monkeypatch):
    folder = project(tmp_path)
    out = tmp_path / "runs"
    plans = plans_of(folder, seeds=1)
    whole = union("studies", plans)
    pretrains = [sid for sid, s in whole.stages.items() if s.kind == "pretrain"]
    # Ctrl-C in the first probe's first epoch: the serial backend runs every pre-training first.
    faults.install(monkeypatch, "sigint:linear_probe:0")
    cut = ablate("run", str(folder), "--profile", "tiny", "--out", str(out), "--backend", "serial")
    assert cut.exit_code == 130, cut.output
    assert f"Resume with: ablate run {folder} --profile tiny --out {out}" in cut.output
    assert all(store.state(out, sid) == store.DONE for sid in pretrains)
    done = [sid for sid in whole.stages if store.state(out, sid) == store.DONE]
    assert len(done) < len(whole.stages)
    page = (out / "studies" / "report" / "report.html").read_text()  # drawn on the way out
    arms_done = re.search(r"(\d) of 4 arms done", page)
    assert arms_done and int(arms_done.group(1)) < 4

    # `ablate status` and `ablate report` of the suite at any time, from what is done.
    monkeypatch.undo()
    status = ablate("status", str(folder), "--out", str(out))
    assert status.exit_code == 0, status.output
    assert f"{len(done)} done, 0 failed, 0 blocked, {len(whole.stages) - len(done)} pending of 6 stages" in status.output
    drawn = ablate("report", str(folder), "--out", str(out))
    assert drawn.exit_code == 0, drawn.output
    assert "studies: combined report" in drawn.output and "(2 of 2 studies have results)" in drawn.output

    before = stamps(tmp_path, done)
    resumed = ablate("run", str(folder), "--profile", "tiny", "--out", str(out), "--backend", "serial")
    assert resumed.exit_code == 0, resumed.output
    assert stamps(tmp_path, done) == before  # nothing finished ran again
    assert all(store.state(out, sid) == store.DONE for sid in whole.stages)
    for name, stage_ids in [*((p.study.name, p.stages) for p in plans), ("studies", whole.stages)]:
        runs = child_runs(out, name)
        assert sorted(r["stage_id"] for r in runs) == sorted(stage_ids)  # each once, also those cut short
        assert {r["status"] for r in runs} == {"FINISHED"}
    page = (out / "studies" / "report" / "report.html").read_text()
    assert "4 of 4 arms done" in page


def test_a_suite_file_or_several_study_files_name_a_suite_and_bad_ones_are_one_line(tmp_path, ray_starts):
    folder = project(tmp_path)
    (folder / "paper.yaml").write_text("name: paper\ndescription: both\nstudies: [masking_ratio.yaml, "
                                       "decoder_depth.yaml]\n")
    suite = load_suite([folder / "paper.yaml"])
    assert suite.name == "paper" and [f.name for f in suite.files] == ["masking_ratio.yaml", "decoder_depth.yaml"]
    # The folder's studies leave the suite file and the profiles below it out.
    assert [f.name for f in load_suite([folder]).files] == ["decoder_depth.yaml", "masking_ratio.yaml"]
    several = load_suite([folder / "masking_ratio.yaml", folder / "decoder_depth.yaml"])
    assert several.name.startswith("suite-") and len(several.files) == 2
    assert load_suite([folder / "masking_ratio.yaml"]) is None  # one study file is a study

    shown = ablate("plan", str(folder / "paper.yaml"), "--profile", "tiny", "--out", str(tmp_path / "runs"))
    assert shown.exit_code == 0, shown.output
    assert "2 studies: 6 distinct stages (2 shared with a study above them, counted once)" in shown.output

    bad = {  # paths relative to the suite file
        "missing.yaml": ("studies: [studies/masking_ratio.yaml, nowhere.yaml]\n", "missing.yaml: studies[1]: "),
        "twice.yaml": ("studies: [studies/masking_ratio.yaml, ./studies/masking_ratio.yaml]\n", "is listed twice"),
        "empty.yaml": ("studies: []\n", "empty.yaml: studies"),
        "unknown.yaml": ("studies: [studies/masking_ratio.yaml]\nseeds: [1]\n", "unknown.yaml: seeds"),
    }
    for name, (text, expected) in bad.items():
        (tmp_path / name).write_text(text)
        result = ablate("run", str(tmp_path / name), "--profile", "tiny", "--out", str(tmp_path / "runs"))
        assert result.exit_code == 2, (name, result.output)
        assert len(result.output.strip().splitlines()) == 1 and expected in result.output, (name, result.output)
    # Studies that take other resources cannot share one pool: refused in one line, before anything.
    (folder / "decoder_depth.yaml").write_text(DECODER_DEPTH + "resources: {cpu: 2}\n")
    (folder / "target.yaml").write_text("name: target\nevaluations: [linear_probe]\n")
    result = ablate("run", str(folder), "--profile", "tiny", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "decoder_depth.yaml: resources: a suite runs its studies as one pool of trials" in result.output
    assert not (tmp_path / "runs").exists() and ray_starts == []
