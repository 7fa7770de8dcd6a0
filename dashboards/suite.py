"""One combined report over a suite of studies, laid out like the paper's ablation section.

It opens with the claims table (every finding of `claims.yaml` whose study is in the suite,
judged on that study's results) and then has a section per study in the paper's order: Table 1a-1f,
Figure 5, Figure 7, Figure 9, Table 2 and the fine-tune-vs-scratch comparison, then any other
study. A section shows the study's verdict (its baseline or trend), its tables with ours (mean ±
interval over seeds) beside the paper's numbers, and its figures, copied as PNG and SVG from the
study's own report (`<study>/report/figures/`), which is drawn first; its link leads there.

Layout under `out_dir`: `report.html` (PNGs inlined), `figures/<study>/<name>.{png,svg}`,
`tables/<study>/<name>.{md,html}`, `tables/claims.{md,csv}`.
"""
from __future__ import annotations

import datetime as dt
import html
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.files import write_text
from dashboards import claims
from dashboards.contract import MlflowLinks, StudyInfo
from dashboards.findings import study_findings
from dashboards.report import (CSS, _error, _findings_section, _img, _link, _status_section, _tables_section, run_url,
                               safe_name, status_line)
from dashboards.tables import get_table, to_markdown

# The paper's ablation section in its order: a figure or table name (dashboards' registries) ->
# (rank, the caption its section gets). A study is placed by the first of its figures and tables
# listed here; one with none of them comes after, in name order.
PAPER_ORDER: dict[str, tuple[int, str]] = {
    "table1a": (10, "Table 1a: decoder depth"),
    "table1b": (11, "Table 1b: decoder width"),
    "table1c": (12, "Table 1c: mask token"),
    "table1d": (13, "Table 1d: reconstruction target"),
    "table1e": (14, "Table 1e: data augmentation"),
    "table1f": (15, "Table 1f: mask sampling"),
    "fig5_mask_ratio": (20, "Figure 5: masking ratio"),
    "fig7_schedule": (30, "Figure 7: training schedules"),
    "fig9_partial_finetune": (40, "Figure 9: partial fine-tuning"),
    "table2": (50, "Table 2: wall-clock time of pre-training"),
    "table2_wallclock": (50, "Table 2: wall-clock time of pre-training"),
    "table3": (60, "Fine-tuning after MAE against training from scratch"),
    "table3_scratch": (60, "Fine-tuning after MAE against training from scratch"),
}


@dataclass(frozen=True)
class SuiteStudy:
    """One study of the suite as the combined report shows it."""

    info: StudyInfo
    results: pd.DataFrame
    figures: Sequence[str]
    tables: Sequence[str]
    report_dir: Path  # the study's own report folder: its figures are copied from there


def section_of(study: SuiteStudy) -> tuple[int, str]:
    """(rank, caption) of the study's section: its paper items', or after them all."""
    items = [PAPER_ORDER[name] for name in (*study.tables, *study.figures) if name in PAPER_ORDER]
    if not items:
        return 1000, f"Study {study.info.name}"
    rank = min(rank for rank, _ in items)
    captions = list(dict.fromkeys(caption for _, caption in sorted(items)))
    return rank, "; ".join(captions)


def judge(studies: Sequence[SuiteStudy]) -> tuple[list[claims.Judged], int]:
    """The claims of the suite's studies, each judged on its study's results; and how many
    claims name a study the suite does not have (left out)."""
    every = claims.load_claims()
    results = {s.info.name: s.results for s in studies}
    tested = [c for c in every if c.study in results]
    return claims.judge_all(tested, results), len(every) - len(tested)


def _claims_section(judged: list[claims.Judged], left_out: int, anchors: Mapping[str, str]) -> str:
    if not judged:
        return "<p>No finding of the paper's ablation section is tested by these studies.</p>"
    rows = []
    for j in judged:
        anchor = anchors.get(j.claim.study)
        study = _link(f"#{anchor}", j.claim.study) if anchor else html.escape(j.claim.study)
        word = html.escape(j.agreement)
        rows.append(f"<tr><td>{html.escape(j.claim.statement)}</td><td>{study}</td>"
                    f'<td class="paper">{html.escape(j.claim.paper)}</td><td>{html.escape(j.evidence)}</td>'
                    f'<td class="verdict-{safe_name(j.agreement)}">{word}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("finding", "study", "paper", "ours", "verdict"))
    note = (f'<p class="note">{left_out} finding{"s" * (left_out != 1)} of studies not in this suite left out. '
            if left_out else '<p class="note">')
    note += ("Verdicts come from dashboards/decide.py, as in each study's report: paired differences over seeds "
             "with their 95% t-intervals (Holm-adjusted where one claim makes several comparisons); with fewer "
             'than two seeds a claim is inconclusive. <a href="tables/claims.md">Markdown</a> · '
             '<a href="tables/claims.csv">CSV</a></p>')
    return (f"<p class=\"status\"><strong>{html.escape(claims.tally(judged))}</strong></p>"
            f'<table class="ablate"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{note}')


def _copy_figure(study: SuiteStudy, name: str, fig_dir: Path) -> Path | None:
    """The study report's PNG and SVG of figure `name` copied under `fig_dir`; the PNG's new path."""
    source = study.report_dir / "figures"
    if not (source / f"{name}.png").is_file():
        return None
    fig_dir.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".svg"):
        if (source / f"{name}{suffix}").is_file():
            shutil.copyfile(source / f"{name}{suffix}", fig_dir / f"{name}{suffix}")
    return fig_dir / f"{name}.png"


def _study_section(study: SuiteStudy, caption: str, anchor: str, out_dir: Path) -> str:
    name, folder = study.info.name, safe_name(study.info.name)
    (out_dir / "tables" / folder).mkdir(parents=True, exist_ok=True)
    table_fns = {table: get_table(table) for table in study.tables}  # names a study file was validated against
    parts = [f'<h2 id="{anchor}">{html.escape(caption)}</h2>',
             f'<p class="meta">study <b>{html.escape(name)}</b> · {html.escape(status_line(study.results))} · '
             f'{_link(os.path.relpath(study.report_dir / "report.html", out_dir), "its own report")} '
             f"(every arm, loss curves, reconstructions, settings and MLflow links)</p>",
             f"<p>{html.escape(study.info.description)}</p>" if study.info.description else "",
             _tables_section(table_fns, study.results, out_dir / "tables" / folder, href=f"tables/{folder}")]
    findings = study_findings(study.results, study.info, table_fns)
    if findings is not None:
        parts.append(_findings_section(findings, href=f"{os.path.relpath(study.report_dir, out_dir)}/tables"))
    for figure in study.figures:
        if figure in ("loss_curves", "eval_curves"):  # curves stay in the study's own report
            continue
        png = _copy_figure(study, figure, out_dir / "figures" / folder)
        if png is None:
            parts.append(f'<p class="note">{html.escape(figure)}: not drawn yet (the study\'s report draws it)</p>')
            continue
        parts.append(f'<figure id="{anchor}-{safe_name(figure)}">{_img(png, f"{name} {figure}")}'
                     f'<figcaption>{html.escape(figure)}: <a href="figures/{folder}/{figure}.svg">SVG</a> · '
                     f'<a href="figures/{folder}/{figure}.png">PNG</a></figcaption></figure>')
    return "".join(parts)


def write_suite_report(out_dir: Path | str, *, name: str, description: str, profile: str,
                       studies: Sequence[SuiteStudy], mlflow: MlflowLinks | None = None) -> Path:
    """Write the combined report under `out_dir`; return the path of its report.html."""
    out_dir = Path(out_dir)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    ordered = sorted(studies, key=lambda s: (section_of(s)[0], s.info.name))
    anchors = {s.info.name: f"study-{safe_name(s.info.name)}" for s in ordered}
    judged, left_out = judge(ordered)
    table = claims.table(judged)
    write_text(out_dir / "tables" / "claims.md", to_markdown(table))
    write_text(out_dir / "tables" / "claims.csv", table.to_csv(index=False))
    drawn = [s.results.assign(arm=s.info.name + "/" + s.results["arm"].astype(str)) for s in ordered
             if len(s.results) and "arm" in s.results]  # arms of two studies may share a name
    every = pd.concat(drawn, ignore_index=True) if drawn else pd.DataFrame()
    captions: dict[str, str] = {}
    for s in ordered:  # a second study under the same paper item (the quickstart's Figure 5) is named in its title
        caption = section_of(s)[1]
        captions[s.info.name] = f"{caption} ({s.info.name})" if caption in captions.values() else caption
    contents = "".join(f'<li>{_link("#" + anchors[s.info.name], captions[s.info.name])} '
                       f"({html.escape(s.info.name)})</li>" for s in ordered)
    sections = []
    for study in ordered:
        try:
            sections.append(_study_section(study, captions[study.info.name], anchors[study.info.name], out_dir))
        except Exception as exc:  # noqa: BLE001 - one study that cannot be shown must not hide the others
            sections.append(f'<h2 id="{anchors[study.info.name]}">{html.escape(study.info.name)}</h2>'
                            f"{_error(study.info.name, exc)}")
    link = ""
    if mlflow is not None and mlflow.experiment_id is not None:
        url = f"{mlflow.tracking_ui.rstrip('/')}/#/experiments/{mlflow.experiment_id}"
        link = (f" · MLflow experiment {_link(url, name)} (every stage of every study, "
                f"comparable across studies)")
        if mlflow.parent_run_id:
            link += f", {_link(run_url(mlflow.tracking_ui, mlflow.experiment_id, mlflow.parent_run_id), 'suite run')}"
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = html.escape(name)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: MAE ablation section</title>
<style>{CSS}
td.verdict-reproduced {{ color: #2e7d32; font-weight: 600; }} td.verdict-not_reproduced {{ color: #b22222;
font-weight: 600; }} td.verdict-inconclusive {{ color: #777; }}</style></head><body>
<h1>{title}: the MAE paper's ablation section</h1>
<p>{html.escape(description)}</p>
<p class="meta">{len(ordered)} studies · profile <b>{html.escape(profile)}</b> · generated {generated}
 · paper numbers: He et al. 2021, ViT-L/16 on ImageNet-1K{link}</p>
{_status_section(every) if len(every) else ""}
<h2>The paper's findings, judged from our runs</h2>
{_claims_section(judged, left_out, anchors)}
<h2>Contents</h2><ul>{contents}</ul>
{"".join(sections)}
</body></html>
"""
    return write_text(out_dir / "report.html", page)
