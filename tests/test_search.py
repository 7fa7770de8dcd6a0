"""Searches that learn from results (ablate/execution/search.py): Optuna proposes each candidate
from the results so far and prunes the ones clearly behind; its storage in the study folder is the
search's state, so a driver killed mid-search is continued by the same command.

The candidates run a planted engine (tests/faults.py `planted`: a validation top-1 that is a known
function of the fine-tune's blr, peaking at a planted optimum), so the proposals can be checked
against an objective known exactly; the driver, Optuna, the stage store and MLflow are real.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ablate.cli import app
from ablate.execution import search, store
from ablate.execution.runner import run_study
from ablate.execution.serial_backend import SerialBackend
from tests import faults
from tests.helpers import PROFILE, mlflow_runs, run, the_plan

ROOT = Path(__file__).resolve().parents[1]
PLANT = "plant:pretrain:0,plant:finetune:0,plant:linear_probe:0"
STUDY = """\
name: {name}
evaluations: [finetune]
base:
  finetune: {{epochs: {epochs}}}
search:
  space:
    finetune.blr: {{low: 1.0e-5, high: 1.0e-1, log: true}}
  budget: {budget}
  startup: {startup}
  pruner: {pruner}
  parallel: {parallel}
"""


def write_study(root: Path, name: str = "lr", *, epochs: int = 3, budget: int = 10, startup: int = 3,
                pruner: str = "none", parallel: int = 1) -> Path:
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "profiles" / "tiny.yaml").write_text(PROFILE)
    path = root / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, epochs=epochs, budget=budget, startup=startup, pruner=pruner,
                                 parallel=parallel))
    return path


def write_pretrain_study(root: Path, name: str, budget: int) -> Path:
    """pretrain.blr searched, judged on the linear probe's validation top-1."""
    study = write_study(root, name)
    study.write_text(f"name: {name}\nevaluations: [linear_probe]\nsearch:\n  space:\n"
                     f"    pretrain.blr: {{low: 1.0e-5, high: 1.0e-1, log: true}}\n"
                     f"  budget: {budget}\n  startup: 2\n  metric: lin_val_top1\n")
    return study


def run_planted(study: Path, out: Path, rules: str = PLANT, rerun_failed: bool = False):
    return run_study(the_plan(study), out, backend=SerialBackend(launch=faults.Fault(rules, serial=True)),
                     console=Console(file=open(os.devnull, "w")), rerun_failed=rerun_failed)


def trials(out: Path, study_name: str, task: str = "base/seed0/finetune") -> list:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(out / study_name / search.STORAGE_FILE)))
    return optuna.load_study(study_name=task, storage=storage).get_trials()


def decades(trial) -> float:
    return math.log10(trial.params["finetune.blr"])


def test_proposals_after_the_start_up_follow_the_results(tmp_path):
    """The same search (same seed) against two planted optima: the random start-up candidates are
    the same, the ones TPE proposes after them move to each optimum."""
    found = {}
    for optimum in (3e-3, 3e-5):
        root = tmp_path / f"opt{optimum:g}"
        study = write_study(root, budget=12)
        (root / "runs").mkdir()
        (root / "runs" / "planted-optimum.txt").write_text(str(optimum))
        outcome = run_planted(study, root / "runs")
        assert not outcome.interrupted
        found[optimum] = trials(root / "runs", "lr")
    first, second = found[3e-3], found[3e-5]
    assert len(first) == len(second) == 12 and all(t.state.name == "COMPLETE" for t in first + second)
    assert [t.params for t in first[:3]] == [t.params for t in second[:3]]  # start-up: results not used yet
    assert [t.params for t in first[3:]] != [t.params for t in second[3:]]
    for optimum, other in ((3e-3, 3e-5), (3e-5, 3e-3)):
        later = [decades(t) for t in found[optimum][3:]]
        own = sorted(abs(d - math.log10(optimum)) for d in later)[len(later) // 2]
        away = sorted(abs(d - math.log10(other)) for d in later)[len(later) // 2]
        # the range spans 4 decades: uniform proposals would be about 1 decade off the optimum (median)
        assert own < 0.6 and own < away, (optimum, later)
        best = max(found[optimum], key=lambda t: t.value)
        assert abs(decades(best) - math.log10(optimum)) < 0.3
        assert best.value == pytest.approx(faults.planted_top1(best.params["finetune.blr"], optimum))


def test_pruned_candidates_stop_early_and_the_best_complete_one_is_the_arms_result(tmp_path):
    """Successive halving on the planted per-epoch validation metric: candidates behind at a rung
    stop there (pruned.json, fewer epochs, PRUNED in Optuna's storage and tagged in MLflow), the
    budget is spent exactly, and the arm's result is the best complete candidate's test top-1."""
    study = write_study(tmp_path, "pr", epochs=6, budget=8, startup=2, pruner="halving")
    out = tmp_path / "runs"
    outcome = run_planted(study, out)
    assert not outcome.interrupted
    found = trials(out, "pr")
    states = [t.state.name for t in found]
    assert len(found) == 8 and set(states) == {"COMPLETE", "PRUNED"}, states
    by_stage = {t.user_attrs[search.STAGE_ATTR]: t for t in found}
    assert len(by_stage) == 8  # 8 distinct candidates, each a stage
    for sid, trial in by_stage.items():
        epochs = store.epochs(out, sid)
        if trial.state.name == "PRUNED":
            assert store.state(out, sid) == store.PRUNED and len(epochs) < 6
            why = store.read_json(store.stage_dir(out, sid) / store.PRUNE)
            assert why["epochs_done"] == len(epochs) and why["metric"] == "ft_val_top1"
            assert sorted(trial.intermediate_values) == list(range(1, len(epochs) + 1))
        else:
            assert store.state(out, sid) == store.DONE and len(epochs) == 6
            assert trial.value == pytest.approx(faults.planted_top1(trial.params["finetune.blr"]))
    best = max((t for t in found if t.state.name == "COMPLETE"), key=lambda t: t.value)
    row = pd.read_csv(out / "pr" / "results.csv").iloc[0]
    assert row["status"] == "done" and row["search_candidates"] == 8 and row["search_pruned"] == states.count("PRUNED")
    assert row["chosen.finetune.blr"] == pytest.approx(best.params["finetune.blr"])
    assert row["ft_top1"] == pytest.approx(best.value - 1.0) and row["search_metric"] == pytest.approx(best.value)
    runs = {r["stage_id"]: r for r in mlflow_runs(tmp_path, "pr") if r["role"] == "stage" and r["kind"] == "finetune"}
    assert set(runs) == set(by_stage)
    for sid, r in runs.items():
        pruned = by_stage[sid].state.name == "PRUNED"
        assert r["search.state"] == ("PRUNED" if pruned else "COMPLETE") and r["search"] == "base/seed0/finetune"
        assert r["status"] == ("KILLED" if pruned else "FINISHED")
        assert float(r["params"]["finetune.blr"]) == pytest.approx(by_stage[sid].params["finetune.blr"])
        assert r["search.best"] == str(sid == best.user_attrs[search.STAGE_ATTR]).lower()
    # the report: the chosen value beside the metrics, and Optuna's figures of the search
    page = (out / "pr" / "report" / "report.html").read_text()
    assert "<h2>Searches</h2>" in page and "chosen finetune.blr" in page and "chosen.finetune.blr (per seed)" in page
    for kind in ("history", "slice", "epochs"):
        assert f'<figure id="figure-search_base_finetune_{kind}"><img' in page, kind
        assert (out / "pr" / "report" / "figures" / f"search_base_finetune_{kind}.svg").is_file()
    # compute: pruned candidates ran fewer epochs than the grid of the same budget would
    ran = sum(len(store.epochs(out, sid)) for sid in by_stage)
    print(f"\n8 candidates, {states.count('PRUNED')} pruned: {ran} of {8 * 6} epochs")
    assert ran < 8 * 6


def ablate(root: Path, study: Path, fault: str, log: Path, backend: str = "serial", *extra: str,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """`ablate run` in a process of its own with tests/faults.py's rules (the planted engine)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tests.faults", fault, "run", str(study), "--profile", "tiny", "--out",
               str(root / "runs"), "--backend", backend, *extra]
    with log.open("w") as output:
        return subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=root, timeout=timeout)


def test_rerun_failed_runs_a_failed_candidate_again_as_a_new_trial_in_its_place(tmp_path):
    """Candidates 2 and 3 of 3 fail (a NaN loss): their trials are FAIL and the arm's result is the one
    complete candidate. The same command reruns nothing; with --rerun-failed each failed candidate runs
    again as a new trial of the same values (Optuna's finished trials are final), the failed trials
    leave the count, so the search still holds its budget of 3, and the result is the best of 3."""
    study = write_study(tmp_path, "rf", budget=3, startup=3)
    out = tmp_path / "runs"
    run_planted(study, out, PLANT + ",nan:finetune:0:after-done=1")
    first = trials(out, "rf")
    assert [t.state.name for t in first] == ["COMPLETE", "FAIL", "FAIL"]
    failed_stages = [t.user_attrs[search.STAGE_ATTR] for t in first if t.state.name == "FAIL"]
    assert all(store.state(out, sid) == store.FAILED for sid in failed_stages)
    row = pd.read_csv(out / "rf" / "results.csv").iloc[0]
    assert row["chosen.finetune.blr"] == pytest.approx(first[0].params["finetune.blr"])

    run_planted(study, out)  # failed stages are reported, not retried
    assert [t.state.name for t in trials(out, "rf")] == ["COMPLETE", "FAIL", "FAIL"]
    run_planted(study, out, rerun_failed=True)
    after = trials(out, "rf")
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert [t.params for t in after[3:]] == [t.params for t in first[1:]]  # the same values, run again
    assert [t.user_attrs[search.STAGE_ATTR] for t in after[3:]] == failed_stages
    assert all(store.state(out, sid) == store.DONE for sid in failed_stages)
    assert [len(t.intermediate_values) for t in after[3:]] == [3, 3]  # its epochs, for the pruner's bar
    (task,) = the_plan(study).searches.values()
    counted = search.stored(task, out)
    assert [t.number for t in counted] == [0, 3, 4]  # the budget: 3 candidates, all complete
    assert search.counts(the_plan(study), out)[task.id] == {"budget": 3, "COMPLETE": 3}  # what `ablate status` shows
    best = max(counted, key=lambda t: t.value)
    row = pd.read_csv(out / "rf" / "results.csv").iloc[0]
    assert row["chosen.finetune.blr"] == pytest.approx(best.params["finetune.blr"]) and row["search_candidates"] == 3
    run_planted(study, out, rerun_failed=True)  # nothing failed now: nothing runs, no trial is added
    assert len(trials(out, "rf")) == 5


def test_driver_killed_mid_search_then_the_same_command_spends_the_budget_without_rerunning(tmp_path):
    """SIGKILL of the driver in the middle of a candidate (after one complete), then the same
    command: no finished candidate runs again, the interrupted one is run to its end, and the
    search ends with exactly its budget of candidates, each one stage and one MLflow run."""
    study = write_study(tmp_path, "kill", epochs=6, budget=7, startup=2, pruner="halving")
    out = tmp_path / "runs"
    first = ablate(tmp_path, study, f"{PLANT},kill-driver:finetune:1:after-done=1", tmp_path / "first.log")
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    before = trials(out, "kill")
    running = [t for t in before if t.state.name == "RUNNING"]
    assert len(running) == 1 and 2 <= len(before) < 7, [t.state.name for t in before]
    cut = running[0].user_attrs[search.STAGE_ATTR]
    assert store.state(out, cut) == store.PENDING and len(store.epochs(out, cut)) >= 2
    ended = {t.user_attrs[search.STAGE_ATTR]: t.state.name for t in before if t.state.is_finished()}
    marks = {sid: (store.stage_dir(out, sid) / (store.RESULT if state == "COMPLETE" else store.PRUNE)).stat().st_mtime_ns
             for sid, state in ended.items()}

    again = ablate(tmp_path, study, PLANT, tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert again.returncode == 0 and "Traceback" not in log, log
    after = trials(out, "kill")
    assert len(after) == 7 and all(t.state.is_finished() for t in after)
    assert [t.params for t in after[:len(before)]] == [t.params for t in before]  # the same trials, continued
    assert after[running[0].number].state.name in ("COMPLETE", "PRUNED")
    for sid, stamp in marks.items():  # not run again
        name = store.RESULT if ended[sid] == "COMPLETE" else store.PRUNE
        assert (store.stage_dir(out, sid) / name).stat().st_mtime_ns == stamp
        assert len(store.attempts(out, sid)) == 1
    assert len(store.attempts(out, cut)) == 2
    runs = [r for r in mlflow_runs(tmp_path, "kill") if r["role"] == "stage" and r["kind"] == "finetune"]
    assert sorted(r["stage_id"] for r in runs) == sorted(t.user_attrs[search.STAGE_ATTR] for t in after)
    assert all(r["status"] in ("FINISHED", "KILLED") for r in runs)


def test_on_ray_candidates_are_trials_of_the_one_wave_and_pruned_ones_are_stopped(tmp_path, ray_session, monkeypatch):
    """Real Ray Tune trials: two arms' searches (sharing one pre-training) hand out their candidates
    as trials of the run's one wave once it is done; a candidate the pruner stops is stopped in its
    worker at that epoch (Tune's stopper) and recorded as pruned. `ablate status` counts them."""
    study = write_study(tmp_path, "ray", epochs=6, budget=5, startup=2, pruner="halving", parallel=2)
    study.write_text(study.read_text() + "arms:\n  a: {}\n  b: {finetune.layer_decay: 0.7}\n")
    faults.install(monkeypatch, PLANT)
    result = run(tmp_path, study)
    assert result.exit_code == 0, result.output
    assert "wave 1: 1 stage and up to 10 stages of search candidates to run" in result.output
    assert "wave 2" not in result.output
    out = tmp_path / "runs"
    for arm in ("a", "b"):
        found = trials(out, "ray", f"{arm}/seed0/finetune")
        assert len(found) == 5 and all(t.state.is_finished() for t in found)
        pruned = [t for t in found if t.state.name == "PRUNED"]
        assert pruned, [t.state.name for t in found]
        for trial in pruned:  # stopped in its worker: no epoch after the one the pruner judged
            sid = trial.user_attrs[search.STAGE_ATTR]
            assert len(store.epochs(out, sid)) == max(trial.intermediate_values) < 6
            assert store.state(out, sid) == store.PRUNED and len(store.attempts(out, sid)) == 1
    table = pd.read_csv(out / "ray" / "results.csv")
    assert list(table["status"]) == ["done", "done"] and table["chosen.finetune.blr"].notna().all()
    status = CliRunner().invoke(app, ["status", str(study), "--profile", "tiny", "--out", str(out)])
    assert status.exit_code == 0, status.output
    assert "search a/seed0/finetune: 5 of 5 candidates:" in status.output and "pruned" in status.output


def test_plan_shows_each_search_its_budget_and_a_bound_of_its_cost_and_a_shared_search_once(tmp_path):
    study = write_study(tmp_path, "pl", budget=5)
    study.write_text(study.read_text().replace("evaluations: [finetune]", "evaluations: [finetune, scratch]")
                     + "arms:\n  a: {}\n  b: {model.mask_ratio: 0.5}\n")
    shown = CliRunner().invoke(app, ["plan", str(study), "--profile", "tiny", "--out", str(tmp_path / "runs")])
    assert shown.exit_code == 0, shown.output
    rows = [line.split() for line in shown.output.splitlines() if " search " in line and line.split()[0] in "ab"]
    assert [(r[0], r[2]) for r in rows] == [("a", "finetune"), ("a", "scratch"), ("b", "finetune"), ("b", "scratch")]
    assert "5 of 5 candidates" in shown.output and "shared" in rows[3]  # one scratch search serves both arms
    assert ("search: 3 search(es) of 5 candidates over finetune.blr in [1e-05, 0.1] log; Optuna TPE, 3 random "
            "start-up candidate(s)") in shown.output
    assert not (tmp_path / "runs").exists()  # nothing written


def test_values_two_searches_propose_are_one_stage_run_once(tmp_path, monkeypatch):
    """Two studies of one suite with the same search but for the pruner, one seed: their proposals
    from the same history are the same values, so the same stage, run once (the second search is
    told its result and its per-epoch values without running it)."""
    folder = tmp_path / "pair"
    folder.mkdir()
    for name, pruner in (("halv", "halving"), ("full", "none")):
        write_study(folder, name, epochs=6, budget=4, startup=3, pruner=pruner)
    faults.install(monkeypatch, PLANT)
    out = tmp_path / "runs"
    done = CliRunner().invoke(app, ["run", str(folder), "--profile", "tiny", "--out", str(out), "--backend", "serial"])
    assert done.exit_code == 0, done.output
    halving, full = trials(out, "halv"), trials(out, "full")
    assert [t.params for t in halving[:3]] == [t.params for t in full[:3]]  # the start-up: same seed
    for a, b in zip(halving[:3], full[:3]):
        sid = a.user_attrs[search.STAGE_ATTR]
        assert b.user_attrs[search.STAGE_ATTR] == sid and len(store.attempts(out, sid)) == 1
        assert a.value == b.value == store.result(out, sid)["ft_val_top1"]
        # the search told the result of a stage it did not run has its epochs too: its pruner's bar
        recorded = {row["epoch"] + 1: row["ft_val_top1"] for row in store.epochs(out, sid)}
        assert len(recorded) == 6 and a.intermediate_values == b.intermediate_values == recorded


def test_on_ray_a_candidate_one_search_pruned_that_another_proposes_later_resumes_in_the_same_wave(tmp_path):
    """Two studies of one suite, the same search but for the pruner, on Ray with one slot: the
    halving search runs first and prunes candidates; the other, proposing the same values later in
    the same wave, gets each pruned stage handed out again as a new trial, resumed to its end (it
    once waited for them forever). Every stage has one MLflow run in each experiment, all ended,
    the one a study adopted done included."""
    folder = tmp_path / "pair"
    folder.mkdir()
    for name, pruner in (("a_halv", "halving"), ("b_full", "none")):
        write_study(folder, name, epochs=6, budget=4, startup=3, pruner=pruner)
    done = ablate(tmp_path, folder, PLANT, tmp_path / "run.log", "ray", "--max-concurrent", "1", timeout=300)
    log = (tmp_path / "run.log").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "Warning" not in log, log  # a resumed stage's repeated epochs are not Optuna's warning on the terminal
    out = tmp_path / "runs"
    halving, full = trials(out, "a_halv"), trials(out, "b_full")
    assert [t.params for t in halving[:3]] == [t.params for t in full[:3]]
    resumed = [t.user_attrs[search.STAGE_ATTR] for t in halving if t.state.name == "PRUNED"]
    assert resumed and all(t.state.name == "COMPLETE" for t in full)
    for sid in resumed:
        trial = next(t for t in full if t.user_attrs[search.STAGE_ATTR] == sid)
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6]
        assert store.state(out, sid) == store.DONE and len(store.attempts(out, sid)) == 2
        assert trial.value == store.result(out, sid)["ft_val_top1"]
    for name in ("a_halv", "b_full", "pair"):
        runs = [r for r in mlflow_runs(tmp_path, name) if r["role"] == "stage"]
        assert len(runs) == len({r["stage_id"] for r in runs}) == 5, name  # the pre-training and 4 candidates
        assert {r["status"] for r in runs} == {"FINISHED"}, (name, [(r["stage_id"], r["status"]) for r in runs])


@pytest.mark.parametrize("pruner, kept", [("median", [79.5, 81.0, 83.0]), ("quartile", [81.0, 83.0]),
                                           ("best", [83.0]), ("null", [83.0]), ("none", [77.0, 79.5, 81.0, 83.0])])
def test_each_pruner_keeps_what_it_says_of_the_complete_candidates_at_the_same_epoch(tmp_path, pruner, kept):
    """The study file's pruner names against a naive reading of what each says, on 4 complete
    candidates whose validation top-1 after 2 of 8 epochs is 70, 78, 80 and 82 (median 79, upper
    quartile 80.5, best 82): a candidate is stopped there when it is below that bar, never before
    the first rung (2 epochs) nor while fewer than 2 candidates are complete. No pruner named: best."""
    task = next(iter(the_plan(write_study(tmp_path, "p", epochs=8, pruner=pruner)).searches.values()))
    study = optuna.create_study(direction="maximize", pruner=search.pruner(task))
    for value in (70.0, 78.0, 80.0, 82.0):
        trial = study.ask()
        for step in (1, 2, 3):
            trial.report(value - 10.0 * (step != 2), step)  # other epochs far below: only epoch 2 decides
        study.tell(trial, value)
    for value in (77.0, 79.5, 81.0, 83.0):
        trial = study.ask()
        trial.report(60.0, 1)
        assert not trial.should_prune()  # before the first rung
        trial.report(value, 2)
        assert bool(trial.should_prune()) == (value not in kept), (pruner, value)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # not a complete candidate: the bars stay
    alone = optuna.create_study(direction="maximize", pruner=search.pruner(task))
    first = alone.ask()
    first.report(82.0, 2)
    alone.tell(first, 82.0)
    trial = alone.ask()
    trial.report(50.0, 2)
    assert not trial.should_prune()  # one complete candidate is no bar yet


def test_a_stage_two_running_searches_share_stops_only_when_both_pruners_say_so(tmp_path):
    """Searches.epoch on a candidate two searches proposed at once (as on Ray, where both have a
    free slot): halving prunes its own trial at the first rung, where a candidate before it was
    better; the stage runs on for the search without a pruner, which gets its result."""
    from ablate.planning.plan import union

    paths = [write_study(tmp_path, name, epochs=6, budget=4, startup=3, pruner=pruner)
             for name, pruner in (("halv", "halving"), ("full", "none"))]
    plans = [the_plan(path) for path in paths]
    whole = union("pair", plans)
    out = tmp_path / "runs"
    searches = search.Searches([whole, *plans], out)
    searches.open()
    ready = lambda parent: True  # noqa: E731 - the pre-training counts as done
    tid = {p.study.name: next(iter(p.searches)) for p in plans}

    def epochs(sid: str, values: list[float]) -> list[bool]:
        return [searches.epoch(sid, {"epoch": e, "ft_val_top1": v}) for e, v in enumerate(values)]

    def finish(sid: str, value: float) -> None:
        store.stage_dir(out, sid).mkdir(parents=True, exist_ok=True)
        store.write_json_atomic(store.stage_dir(out, sid) / store.RESULT, {"ft_val_top1": value})
        searches.stage_ended(sid, store.DONE, None)

    (first,) = searches.propose(ready)
    assert searches.propose(ready) == []  # the other search proposed the same values: the same stage
    assert [tid_ for tid_, _ in searches.running[first.id]] == [tid["halv"], tid["full"]]
    assert epochs(first.id, [80.0] * 6) == [False] * 6
    finish(first.id, 80.0)
    (second,) = searches.propose(ready)
    assert searches.propose(ready) == [] and second.id != first.id
    # at the first rung it is behind the first candidate: halving prunes its trial, the stage goes on
    assert epochs(second.id, [50.0] * 6) == [False] * 6
    finish(second.id, 60.0)
    states = {name: [t.state.name for t in searches.studies[t_].get_trials()] for name, t_ in tid.items()}
    assert states == {"halv": ["COMPLETE", "PRUNED"], "full": ["COMPLETE", "COMPLETE"]}
    assert searches.studies[tid["full"]].get_trials()[1].value == 60.0
    assert not (store.stage_dir(out, second.id) / store.PRUNE).exists()


def test_a_grid_search_proposes_its_points_in_order_and_ends_at_its_size(tmp_path):
    study = write_study(tmp_path, "gr", budget=5, startup=1)
    study.write_text(study.read_text().replace("budget: 5", "budget: 5\n  sampler: grid"))
    outcome = run_planted(study, tmp_path / "runs")
    assert not outcome.interrupted
    found = trials(tmp_path / "runs", "gr")
    points = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert [t.params["finetune.blr"] for t in found] == pytest.approx(points)
    assert [t.state.name for t in found] == ["COMPLETE"] * 5
    row = pd.read_csv(tmp_path / "runs" / "gr" / "results.csv").iloc[0]
    assert row["status"] == "done" and row["chosen.finetune.blr"] == pytest.approx(1e-3)  # nearest 3e-3


def test_a_pretraining_search_runs_each_candidate_with_its_evaluations_and_is_judged_on_one(tmp_path):
    """pretrain.blr searched, judged on the linear probe's validation top-1 (planted as a function
    of the pre-training's blr): each candidate is a pre-training and its probe, never pruned, and the
    arm's results are the best candidate's pre-training and probe."""
    study = write_pretrain_study(tmp_path, "pre", budget=5)
    p = the_plan(study)
    assert p.stages == {} and p.searches[p.runs[0].searches["pretrain"]].spec.pruning == "none"
    out = tmp_path / "runs"
    assert not run_planted(study, out).interrupted
    found = trials(out, "pre", "base/seed0/pretrain")
    assert [t.state.name for t in found] == ["COMPLETE"] * 5
    for trial in found:
        pre = trial.user_attrs[search.STAGE_ATTR]
        probe = [s for s in store.stages_root(out).iterdir()
                 if (store.read_json(s / store.CONFIG) or {}).get("probe") and
                 (store.read_json(s / store.META) or {}).get("parent") == pre]
        assert len(probe) == 1 and store.state(out, pre) == store.DONE
        assert trial.value == pytest.approx(faults.planted_top1(trial.params["pretrain.blr"]))
    best = max(found, key=lambda t: t.value)
    row = pd.read_csv(out / "pre" / "results.csv").iloc[0]
    assert row["status"] == "done" and row["chosen.pretrain.blr"] == pytest.approx(best.params["pretrain.blr"])
    assert row["lin_top1"] == pytest.approx(best.value - 1.0) and row["pretrain_loss"] == 1.0
    runs = [r for r in mlflow_runs(tmp_path, "pre") if r["role"] == "stage"]
    assert len(runs) == 10 and all(r["search"] == "base/seed0/pretrain" for r in runs)


def test_a_pretraining_search_is_not_pruned_and_is_judged_on_an_evaluation_it_runs(tmp_path):
    from ablate.errors import StudyError
    from ablate.spec.study import parse_study

    space = {"pretrain.blr": {"low": 1e-4, "high": 1e-2, "log": True}}
    with pytest.raises(StudyError, match="search.pruner"):
        parse_study({"name": "s", "search": {"space": space, "metric": "lin_val_top1", "pruner": "halving"}})
    with pytest.raises(StudyError, match="search.metric.*'linear_probe' is not in evaluations"):
        parse_study({"name": "s", "evaluations": ["finetune"], "search": {"space": space, "metric": "lin_val_top1"}})
    with pytest.raises(StudyError, match="search.metric"):
        parse_study({"name": "s", "search": {"space": space, "metric": "pretrain_loss"}})


def test_on_ray_a_pretraining_candidates_evaluation_follows_it_as_a_trial(tmp_path, ray_session, monkeypatch):
    study = write_pretrain_study(tmp_path, "rpre", budget=3)
    faults.install(monkeypatch, PLANT)
    result = run(tmp_path, study)
    assert result.exit_code == 0, result.output
    assert "rpre: 6/6 stages done" in result.output
    found = trials(tmp_path / "runs", "rpre", "base/seed0/pretrain")
    assert [t.state.name for t in found] == ["COMPLETE"] * 3


def test_two_fields_searched_get_optunas_importance_figure(tmp_path):
    study = write_study(tmp_path, "two", budget=6, startup=3)
    study.write_text(study.read_text().replace(
        "  budget: 6", "    finetune.layer_decay: {choices: [0.65, 0.75]}\n  budget: 6"))
    assert not run_planted(study, tmp_path / "runs").interrupted
    found = trials(tmp_path / "runs", "two")
    assert len(found) == 6 and all(set(t.params) == {"finetune.blr", "finetune.layer_decay"} for t in found)
    page = (tmp_path / "runs" / "two" / "report" / "report.html").read_text()
    assert '<figure id="figure-search_base_finetune_importance"><img' in page
    row = pd.read_csv(tmp_path / "runs" / "two" / "results.csv").iloc[0]
    assert row["chosen.finetune.layer_decay"] in (0.65, 0.75) and "search_value" not in row
