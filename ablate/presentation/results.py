"""The study's tables, read from the stage store: results.csv (one row per arm and seed) and
history.csv (long: arm, seed, stage, epoch, metric, value), then the dashboards' report.

Tables are rebuilt from the stage folders every time, so they are right after a crash, a resume,
or when another study filled some of the shared stages.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import pandas as pd

import dashboards
from ablate.execution import search, store
from ablate.execution.search import best_candidate
from ablate.planning.plan import ArmRun, Plan
from ablate.spec.suite import Suite
from core.files import replacing, write_text
from dashboards.contract import DONE, FAILED, HISTORY_COLUMNS, KEYS, METRICS, PENDING, MlflowLinks, Status, StudyInfo

RESULTS, HISTORY, REPORT = "results.csv", "history.csv", "report"
INPUTS_DIGEST = ".drawn-from.sha256"  # in the report folder: what the report was last drawn from
DASHBOARDS = Path(dashboards.__file__).resolve().parent
# Which metrics each stage contributes to its row, and under which column name.
COLUMNS: dict[str, dict[str, str]] = {
    "pretrain": {"pretrain_loss": "pretrain_loss", "pretrain_wall_clock_s": "pretrain_wall_clock_s",
                 "img_per_s": "img_per_s", "train_flops_per_img": "train_flops_per_img"},
    "linear_probe": {"lin_top1": "lin_top1", "lin_top5": "lin_top5", "lin_val_top1": "lin_val_top1"},
    "finetune": {"ft_top1": "ft_top1", "ft_top5": "ft_top5", "ft_val_top1": "ft_val_top1"},
    "partial_finetune": {"ft_top1": "ft_top1", "ft_top5": "ft_top5", "ft_val_top1": "ft_val_top1"},
    "scratch": {"ft_top1": "scratch_top1", "ft_top5": "scratch_top5"},
}


def _row_status(stage_states: list[str]) -> Status:
    if stage_states and all(s == store.DONE for s in stage_states):
        return DONE
    if any(s in (store.FAILED, store.BLOCKED) for s in stage_states):
        return FAILED
    return PENDING


CHOSEN = "chosen."  # results.csv: `chosen.<searched key>` (`scratch.chosen.<key>`), the best candidate's values


def chosen_stages(plan: Plan, out_root: Path, run: ArmRun) -> dict[str, str]:
    """The arm's stage per name, with a searched evaluation resolved to its best candidate."""
    chosen = dict(run.stages)
    for name in run.searches:
        best, _ = best_candidate(plan, out_root, run, name)
        if best is not None:
            task = plan.searches[run.searches[name]]
            chosen.update({stage.kind: stage.id for stage in search.candidate_stages(plan, task, best)})
    return {name: chosen[name] for name in sorted(chosen, key=lambda n: n != "pretrain")}


def results_table(plan: Plan, out_root: Path, states: dict[str, str] | None = None) -> pd.DataFrame:
    states = states or store.states(out_root, plan.stages, {s.id: s.parent for s in plan.stages.values()})
    rows = []
    finished = search.finished(plan, out_root) if plan.searches else {}
    for run in plan.runs:
        ids = [*run.stages.values(), *(sid for c in run.candidates.values() for sid in c)]
        stage_states = [states.get(sid, store.PENDING) for sid in run.stages.values()]
        status = _row_status(stage_states) if stage_states else DONE  # a searched pre-training: the search says
        row: dict[str, Any] = dict(zip(KEYS, (plan.study.name, run.arm, run.seed, status)))
        bests = {name: best_candidate(plan, out_root, run, name) for name in run.searches}
        if run.searches and row["status"] == DONE:  # a search is done when its budget is spent (or all failed)
            picked = [best for best, _ in bests.values()]
            spent = all(finished.get(run.searches[name], False) for name in run.searches)
            row["status"] = DONE if spent and all(p is not None for p in picked) else (FAILED if spent else PENDING)
        row.update(run.axes)
        for name, sid in chosen_stages(plan, out_root, run).items():
            result = store.result(out_root, sid) or {}
            for key, column in COLUMNS.get(name, {}).items():
                if key in result:
                    row[column] = result[key]
        for name in run.searches:
            task = plan.searches[run.searches[name]]
            best, value = bests[name]
            # an arm's scratch baseline and its fine-tune can both be searched (the same finetune.* fields)
            prefix = "scratch." if name == "scratch" else ""
            row[f"{prefix}search_metric"] = value
            row[f"{prefix}search_candidates"] = len(run.candidates.get(name, ()))
            row[f"{prefix}search_pruned"] = sum(states.get(sid) == store.PRUNED for sid in run.candidates.get(name, ()))
            if best is not None:
                for key, chosen in task.values(plan.stages[best]).items():
                    row[f"{prefix}{CHOSEN}{key}"] = chosen
                if len(task.spec.params) == 1:
                    row[f"{prefix}search_value"] = task.values(plan.stages[best])[task.spec.params[0]]
        errors = [store.error_line(out_root, sid) for sid in ids if states.get(sid) == store.FAILED]
        blocked = [sid for sid in ids if states.get(sid) == store.BLOCKED]
        if errors:
            row["error"] = errors[0]
        elif blocked:
            row["error"] = f"not run: {blocked[0]} needs a stage that failed"
        rows.append(row)
    columns = [*KEYS, *plan.axis_keys, *METRICS]
    df = pd.DataFrame(rows)
    for c in columns:
        if c not in df:
            df[c] = math.nan
    extra = [c for c in df.columns if c not in columns]
    return df[columns + extra]


def history_table(plan: Plan, out_root: Path) -> pd.DataFrame:
    rows = []
    for run in plan.runs:
        for name, sid in chosen_stages(plan, out_root, run).items():
            for report in store.epochs(out_root, sid):
                epoch = report.get("epoch")
                for metric, value in report.items():
                    if metric != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.append((run.arm, run.seed, name, epoch, metric, float(value)))
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


def recon_files(plan: Plan, out_root: Path) -> dict[str, Path]:
    """Per arm, the reconstructions its (first seed's) pre-training drew."""
    out: dict[str, Path] = {}
    for run in plan.runs:
        pre = chosen_stages(plan, out_root, run).get("pretrain") if run.searches else run.stages.get("pretrain")
        path = store.stage_dir(out_root, pre) / "reconstructions.npz" if pre else None
        if run.arm not in out and path is not None and path.is_file():
            out[run.arm] = path
    return out


def write_tables(plan: Plan, out_root: Path, study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    study_dir.mkdir(parents=True, exist_ok=True)
    results, history = results_table(plan, out_root), history_table(plan, out_root)
    for df, name in ((results, RESULTS), (history, HISTORY)):
        with replacing(study_dir / name) as tmp:  # a full disk leaves the previous table, never half of one
            df.to_csv(tmp, index=False)
    return results, history


def study_info(plan: Plan) -> StudyInfo:
    """The study as the report shows it."""
    study = plan.study
    run = plan.runs[0]  # its pre-training: planned, or searched (the search's base recipe)
    first = (plan.stages[run.stages["pretrain"]].config if "pretrain" in run.stages
             else plan.searches[run.searches["pretrain"]].base)
    settings = {"data.dataset": first["data"]["dataset"], "model.variant": first["model"]["variant"],
                "data.train_limit": first["data"]["train_limit"], "pretrain.epochs": first["pretrain"]["epochs"],
                "evaluations": list(study.evaluations), "seeds": list(study.seeds)}
    for run in plan.runs[:1]:
        for name, sid in run.stages.items():
            if name != "pretrain":
                settings[f"{name}.epochs"] = plan.stages[sid].epochs
    axes = {key: list(dict.fromkeys(_hashable(r.axes[key]) for r in plan.runs)) for key in plan.axis_keys}
    return StudyInfo(name=study.name, description=study.description, profile=plan.profile.name,
                     profile_description=plan.profile.description, dataset=first["data"]["dataset"], axes=axes,
                     settings=settings, baseline=study.baseline, trend=study.trend,
                     equivalence_margin=study.equivalence_margin)


def write_report(plan: Plan, out_root: Path, study_dir: Path, results: pd.DataFrame, history: pd.DataFrame,
                 mlflow: dict | None = None, *, force: bool = False) -> Path:
    """The dashboards' report (figures and tables) into `<study dir>/report/`. `mlflow`: the
    tracker's links, in the plain form the study's last-run record keeps. Not drawn again when
    nothing it is drawn from changed since it was last drawn (unless `force`): rerunning a
    finished study costs no drawing."""
    from dashboards.report import write_report as dashboards_report  # matplotlib: only when drawing

    folder, study, recon = study_dir / REPORT, study_info(plan), recon_files(plan, out_root)
    digest = _inputs_digest(plan, study, results, history, mlflow, recon, searched(plan, out_root))
    return _drawn(folder, digest, force, lambda: dashboards_report(
        folder, study=study, results=results, history=history, figures=list(plan.study.figures),
        tables=list(plan.study.tables), recon_files=recon, mlflow=MlflowLinks.from_mapping(mlflow),
        searches=search_studies(plan, out_root), search_note=" ".join(search.describe(plan)),
        search_metric=next((t.spec.metric for t in plan.searches.values()), "validation metric")))


def searched(plan: Plan, out_root: Path) -> list[str]:
    """What the searches' state is read from: each storage file with its size and time (in the digest)."""
    out = []
    for url in sorted({search.storage_url(t, out_root) for t in plan.searches.values()}):
        path = Path(url)
        out.append(f"{url}:{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.is_file() else url)
    return out


def search_studies(plan: Plan, out_root: Path) -> dict[str, dict[int, Any]]:
    """The report's searches: "<arms> · <evaluation>" -> {seed: its Optuna study} (a search that
    several arms share, e.g. one scratch baseline, under all their names)."""
    grouped: dict[str, dict[int, Any]] = {}
    for tid, task in plan.searches.items():
        users = [(run, name) for run in plan.runs for name, t in run.searches.items() if t == tid]
        label = f"{', '.join(dict.fromkeys(run.arm for run, _ in users))} · {users[0][1]}"
        study = search.load(task, out_root)
        if study is not None:
            grouped.setdefault(label, {})[task.seed] = study
    return grouped


def _drawn(folder: Path, digest: str, force: bool, draw: Callable[[], Path]) -> Path:
    """`folder`'s report.html, drawn by `draw` unless it was last drawn from inputs of this digest
    (kept beside it) and not `force`d."""
    page, stamp = folder / "report.html", folder / INPUTS_DIGEST
    if not force and page.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return page
    path = draw()
    write_text(stamp, digest)
    return path


def _dashboards_code(h: Any) -> None:
    """The dashboards' code and claims into a digest: a change there redraws every report."""
    for source in sorted([*DASHBOARDS.glob("*.py"), *DASHBOARDS.glob("*.yaml")]):
        h.update(source.read_bytes())


def _inputs_digest(plan: Plan, study: StudyInfo, results: pd.DataFrame, history: pd.DataFrame, mlflow: dict | None,
                   recon: dict[str, Path], searches: list[str] | None = None) -> str:
    """A digest of everything the report is drawn from, the dashboards' own code included."""
    h = hashlib.sha256()
    for part in (results.to_csv(index=False), history.to_csv(index=False), repr(study),
                 json.dumps(mlflow, sort_keys=True, default=str), repr((plan.study.figures, plan.study.tables)),
                 repr(searches or [])):
        h.update(part.encode() + b"\0")
    for arm, path in sorted(recon.items()):
        stat = path.stat()
        h.update(f"{arm}:{path}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
    _dashboards_code(h)
    return h.hexdigest()


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def write_suite_report(suite: Suite, plans: list[Plan], out_root: Path, folder: Path, mlflow: dict | None = None,
                       *, force: bool = False) -> Path:
    """The combined report of a suite into `<suite folder>/report/`, from each study's results
    (rebuilt from the stage store) and the figures of each study's own report, which is written
    first. Not drawn again when nothing it is drawn from changed (unless `force`)."""
    from dashboards.suite import SuiteStudy
    from dashboards.suite import write_suite_report as dashboards_suite

    studies = [SuiteStudy(study_info(p), results_table(p, out_root), list(p.study.figures), list(p.study.tables),
                          store.study_dir(out_root, p.study.name) / REPORT) for p in plans]
    h = hashlib.sha256(json.dumps([suite.name, suite.description, plans[0].profile.name, mlflow], sort_keys=True,
                                  default=str).encode())
    for s in studies:
        h.update(s.results.to_csv(index=False).encode() + repr(s.info).encode())
        stamp = s.report_dir / INPUTS_DIGEST  # the study's figures, as last drawn
        h.update(stamp.read_bytes() if stamp.is_file() else b"-")
    _dashboards_code(h)
    report = folder / REPORT
    return _drawn(report, h.hexdigest(), force, lambda: dashboards_suite(
        report, name=suite.name, description=suite.description, profile=plans[0].profile.name, studies=studies,
        mlflow=MlflowLinks.from_mapping(mlflow)))
