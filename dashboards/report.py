"""One self-contained HTML report per study: status, figures, tables, reconstructions,
settings and links to the MLflow runs. Renders whatever is there: pending and failed arms
are counted and shown, never an error.

Layout under `out_dir`: `figures/<name>.{png,svg}`, `tables/<name>.{md,html}`,
`figures/recon_<arm>.{png,svg}` and `report.html`, which embeds every PNG as base64 so the
file can be mailed alone; the SVG/PNG/MD links beside each item are relative.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from core.files import write_text
from dashboards import claims, search
from dashboards.contract import DONE, FAILED, METRIC_LABELS, PENDING, MlflowLinks, StudyInfo
from dashboards.figures import get_figure, save_figure
from dashboards.findings import Findings, study_findings
from dashboards.recon import reconstruction_grid
from dashboards.tables import (aggregate, axis_columns, format_cell, get_table, status_counts, to_html, to_markdown,
                               varying_axes)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1320px;
       padding: 0 24px 48px; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
.meta { color: #555; }
.status { font-size: 1.15em; padding: 10px 14px; background: #f3f6fa; border-left: 4px solid #3a6ea5; }
.status .failed { color: #b22222; font-weight: 600; } .status .pending { color: #777; }
.bar { display: flex; height: 8px; width: 360px; margin-top: 6px; border-radius: 4px; overflow: hidden;
       background: #ddd; }
.bar .done { background: #2e8b57; } .bar .failed { background: #b22222; }
table.ablate { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
table.ablate th, table.ablate td { border: 1px solid #d0d0d0; padding: 3px 8px; }
table.ablate th { background: #f0f0f0; }
table.ablate th.paper { background: #ececec; color: #333; } table.ablate td.paper { background: #fafafa; color: #444; }
table.ablate td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.state-failed { color: #b22222; font-weight: 600; } td.error-line { color: #b22222; font-size: 0.85em; } td.state-pending { color: #777; }
p.note { font-size: 0.85em; color: #555; margin: 2px 0; }
figure { margin: 16px 0 28px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.error { color: #b22222; background: #fff3f3; padding: 8px; border: 1px solid #f0c0c0; }
pre { background: #f7f7f7; padding: 10px; overflow-x: auto; font-size: 0.85em; }
code { background: #f3f3f3; padding: 1px 4px; }
.findings { font-size: 1.02em; max-width: 1000px; }
"""


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "arm"


def status_line(results: pd.DataFrame) -> str:
    """"3 of 5 arms done", plus failed and pending counts when there are any."""
    counts = status_counts(results)
    line = f"{counts[DONE]} of {counts['total']} arms done"
    extra = [f"{counts[s]} {s}" for s in (FAILED, PENDING) if counts[s]]
    return line + (" (" + ", ".join(extra) + ")" if extra else "")


def run_url(tracking_ui: str, experiment_id: Any, run_id: str) -> str:
    return f"{tracking_ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _runs_of(mlflow: MlflowLinks, arm: str) -> list[tuple[str, str]]:
    """The arm's pre-training runs as (label, run id), one per seed."""
    return [(f"seed {seed}", str(run_id)) for seed, run_id in (mlflow.run_ids.get(arm) or {}).items()]


def _link(url: str, text: str) -> str:
    return f'<a href="{html.escape(url, quote=True)}">{html.escape(text)}</a>'


def _img(path: Path, alt: str) -> str:
    """The PNG inline as base64, shown at 100 dpi (saved at 150) so figures keep a readable size."""
    data = path.read_bytes()
    width = int.from_bytes(data[16:20], "big")  # PNG IHDR
    return (f'<img alt="{html.escape(alt, quote=True)}" style="width: min(100%, {width * 2 // 3}px)" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">')


def _arms_table(results: pd.DataFrame, study: StudyInfo, mlflow: MlflowLinks | None) -> str:
    if results.empty or "arm" not in results:
        return "<p>No arms yet.</p>"
    axes = [a for a in study.axes if a in results] or varying_axes(results) or axis_columns(results)[:4]
    metrics = [m for m in METRIC_LABELS if m in results]
    agg = aggregate(results, metrics)
    errors = {}
    if "error" in results:  # the first error line per arm, as the orchestration records it
        for arm, error in zip(results["arm"], results["error"]):
            if isinstance(error, str) and error and arm not in errors:
                errors[arm] = error
    chosen = [c for c in results.columns if "chosen." in str(c)]  # a search's chosen values, per seed
    head = ["arm", *axes, "state", "seeds done", *(METRIC_LABELS[m] for m in metrics)]
    head += [f"{c} (per seed)" for c in chosen] + (["MLflow"] if mlflow else [])
    head += ["error"] if errors else []
    rows = []
    for _, row in agg.iterrows():
        cells = [f"<td>{html.escape(str(row['arm']))}</td>"]
        cells += [f"<td>{html.escape(format_cell(agg, a, row[a]))}</td>" for a in axes]
        cells.append(f'<td class="state-{row["state"]}">{row["state"]}</td>')
        cells.append(f'<td class="num">{row["seeds_done"]}/{row["seeds_total"]}</td>')
        for m in metrics:
            mean, half = row[f"{m}_mean"], row[f"{m}_half"]
            text = "–" if pd.isna(mean) else (f"{mean:.4g}" if m in ("pretrain_loss",) else f"{mean:,.1f}")
            if pd.notna(half):
                text += f" ± {half:.2g}"
            cells.append(f'<td class="num">{html.escape(text)}</td>')
        for c in chosen:
            values = results.loc[results["arm"] == row["arm"], c].dropna()
            cells.append(f'<td class="num">{html.escape(", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values) or "–")}</td>')
        if mlflow:
            links = [_link(run_url(mlflow.tracking_ui, mlflow.experiment_id, rid), label)
                     for label, rid in _runs_of(mlflow, row["arm"])]
            cells.append("<td>" + (" ".join(links) or "–") + "</td>")
        if errors:
            error = errors.get(row["arm"], "")
            short = error if len(error) <= 90 else error[:87] + "..."
            cells.append(f'<td class="error-line" title="{html.escape(error, quote=True)}">{html.escape(short)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    note = ('<p class="note">± is the half-width of the 95% t-interval of the mean over seeds (none with one '
            'seed); values only from seeds that are done.</p>')
    return f'<table class="ablate"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>{note}'


def _findings_section(findings: Findings | None, href: str = "tables") -> str:
    if findings is None:
        return ('<p>This study names no baseline arm and no trend axis (<code>baseline:</code> or '
                '<code>trend:</code> in its file), so no verdict is drawn.</p>')
    text = "".join(f"<p>{html.escape(sentence)}</p>" for sentence in findings.sentences)
    table = to_html(findings.rows) if len(findings.rows) else ""
    return (f'<div class="findings">{text}</div>{table}<p class="note"><a href="{href}/findings.md">Markdown</a> · '
            f'<a href="{href}/findings.csv">CSV</a></p>' if table else f'<div class="findings">{text}</div>')


def _claims_section(judged: list[claims.Judged]) -> str:
    """The paper's findings this study tests (dashboards/claims.yaml), each with its verdict."""
    if not judged:
        return ""
    return (f"<h3>The paper's findings tested here</h3><p>{html.escape(claims.tally(judged))}.</p>"
            f"{to_html(claims.table(judged).drop(columns='study'))}")


def _mlflow_section(study: StudyInfo, mlflow: MlflowLinks | None) -> str:
    how = (f"<p>Open the MLflow UI with <code>ablate ui {html.escape(study.name)}</code>; the links below assume it "
           f"listens on the address shown.</p>")
    if not mlflow:
        return how + "<p>No MLflow tracking was recorded for this report.</p>"
    ui, experiment = mlflow.tracking_ui, mlflow.experiment_id
    items = [f"<li>tracking store: <code>{html.escape(mlflow.tracking_uri)}</code></li>",
             f"<li>UI: {_link(ui, ui)}</li>"]
    if experiment is not None:
        url = f"{ui.rstrip('/')}/#/experiments/{experiment}"
        items.append(f"<li>experiment: {_link(url, experiment)}</li>")
    if mlflow.parent_run_id:
        items.append("<li>study (parent) run: "
                     + _link(run_url(ui, experiment, mlflow.parent_run_id), mlflow.parent_run_id) + "</li>")
    for arm in mlflow.run_ids:
        links = ", ".join(_link(run_url(ui, experiment, rid), f"{label} {rid}") for label, rid in _runs_of(mlflow, arm))
        items.append(f"<li>{html.escape(str(arm))}: {links}</li>")
    return how + "<ul>" + "".join(items) + "</ul>"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        return [item for k, v in value.items() for item in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, value)]


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value, default=str)


def _settings_section(study: StudyInfo) -> str:
    """The study's entries, axes and settings as key/value tables, nested keys dotted."""
    parts = []
    for title, value in (("Study", study.entries()), ("Axes", study.axes), ("Settings", study.settings)):
        if not value:
            continue
        if not isinstance(value, Mapping):
            value = {"value": value}
        rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td>"
                       f"<td>{html.escape(_plain(v))}</td></tr>"
                       for k, v in _flatten(value))
        parts.append(f'<h3>{title}</h3><table class="ablate"><tbody>{rows}</tbody></table>')
    return "".join(parts) or "<p>No settings given.</p>"


def _error(name: str, exc: Exception) -> str:
    return f'<p class="error">{html.escape(name)} could not be drawn: {html.escape(type(exc).__name__)}: ' \
           f"{html.escape(str(exc))}</p>"


def _status_section(results: pd.DataFrame) -> str:
    counts = status_counts(results)
    total = max(counts["total"], 1)
    runs_done = int((results["status"] == DONE).sum()) if "status" in results else 0
    return (f'<div class="status"><strong>{counts[DONE]} of {counts["total"]} arms done</strong>'
            + "".join(f' · <span class="{s}">{counts[s]} {s}</span>' for s in (FAILED, PENDING) if counts[s])
            + f" · runs (arm × seed): {runs_done} of {len(results)} done"
            f'<div class="bar"><div class="done" style="width:{100 * counts[DONE] / total:.1f}%"></div>'
            f'<div class="failed" style="width:{100 * counts[FAILED] / total:.1f}%"></div></div></div>')


def _figures_section(figure_fns: Mapping[str, Callable], results: pd.DataFrame, history: pd.DataFrame,
                     fig_dir: Path) -> str:
    """Each figure as PNG and SVG under `fig_dir`, inlined; one that fails to draw is a line in the page."""
    parts = []
    for name, fn in figure_fns.items():
        try:
            png, _ = save_figure(fn(results, history), fig_dir, name)
        except Exception as exc:  # one broken figure must not hide the rest of a partial study
            parts.append(f'<figure id="figure-{name}"><h3>{name}</h3>{_error(name, exc)}</figure>')
            continue
        parts.append(f'<figure id="figure-{name}">{_img(png, name)}'
                     f'<figcaption>{name}: <a href="figures/{name}.svg">SVG</a> · '
                     f'<a href="figures/{name}.png">PNG</a></figcaption></figure>')
    return "".join(parts) or "<p>No figures requested.</p>"


def _tables_section(table_fns: Mapping[str, Callable], results: pd.DataFrame, table_dir: Path,
                    href: str = "tables") -> str:
    """Each table as Markdown and HTML under `table_dir` (linked from the page as `href`/...), inlined."""
    parts = []
    for name, fn in table_fns.items():
        try:
            table = fn(results)
        except Exception as exc:
            parts.append(f'<section id="table-{name}"><h3>{name}</h3>{_error(name, exc)}</section>')
            continue
        write_text(table_dir / f"{name}.md", to_markdown(table))
        write_text(table_dir / f"{name}.html", to_html(table))
        parts.append(f'<section id="table-{name}"><h3>{name}</h3>{to_html(table)}'
                     f'<p class="note"><a href="{href}/{name}.md">Markdown</a> · '
                     f'<a href="{href}/{name}.html">HTML</a></p></section>')
    return "".join(parts) or "<p>No tables requested.</p>"


def _recon_section(recon_files: Mapping[str, Path | str], fig_dir: Path) -> str:
    """Per arm, its pre-training's reconstructions drawn under `fig_dir`; a missing file is a line."""
    parts = []
    for arm, path in recon_files.items():
        stem = f"recon_{safe_name(arm)}"
        if not Path(path).exists():
            parts.append(f'<p class="note">{html.escape(str(arm))}: no reconstructions yet '
                         f"({html.escape(str(path))} is missing)</p>")
            continue
        try:
            png, _ = save_figure(reconstruction_grid(path, title=f"Reconstructions: arm {arm}"), fig_dir, stem)
        except Exception as exc:
            parts.append(_error(f"reconstructions of {arm}", exc))
            continue
        parts.append(f'<figure id="recon-{safe_name(arm)}">{_img(png, f"reconstructions {arm}")}'
                     f'<figcaption>arm {html.escape(str(arm))}: '
                     f'<a href="figures/{stem}.svg">SVG</a></figcaption></figure>')
    return "".join(parts) or "<p>No reconstructions saved.</p>"


def write_report(out_dir: Path | str, *, study: StudyInfo, results: pd.DataFrame, history: pd.DataFrame,
                 figures: list[str], tables: list[str], recon_files: Mapping[str, Path | str] | None = None,
                 mlflow: MlflowLinks | None = None, searches: search.Searches | None = None,
                 search_note: str = "", search_metric: str = "validation metric") -> Path:
    """Write figures (PNG+SVG), tables (MD+HTML), reconstructions and `report.html` under
    `out_dir`; return the report's path. Unknown figure or table names raise before anything
    is written; a figure that fails to draw is reported in the page, not raised."""
    figure_fns = {name: get_figure(name) for name in figures}
    table_fns = {name: get_table(name) for name in tables}
    out_dir = Path(out_dir)
    fig_dir, table_dir = out_dir / "figures", out_dir / "tables"
    fig_dir.mkdir(parents=True, exist_ok=True)
    table_dir.mkdir(parents=True, exist_ok=True)
    results = results.copy()
    results.attrs["ours_label"] = results.attrs.get("ours_label") or study.ours_label
    history = history if history is not None else pd.DataFrame()
    findings = study_findings(results, study, table_fns)
    if findings is not None and len(findings.rows):
        write_text(table_dir / "findings.md", to_markdown(findings.rows))
        write_text(table_dir / "findings.csv", findings.rows.to_csv(index=False))
    judged = claims.judge_all([c for c in claims.load_claims() if c.study == study.name], {study.name: results})
    if judged:
        write_text(table_dir / "claims.md", to_markdown(claims.table(judged)))
    name = html.escape(study.name)
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{name}: MAE ablation report</title>
<style>{CSS}</style></head><body>
<h1>{name}</h1>
<p>{html.escape(study.description)}</p>
<p class="meta">profile <b>{html.escape(study.profile or "?")}</b>
 · {html.escape(results.attrs["ours_label"])}
 · generated {generated} · paper numbers: He et al. 2021, ViT-L/16 on ImageNet-1K (plotted on separate panels)</p>
{_status_section(results)}
<h2>What the study shows</h2>
{_findings_section(findings)}
{_claims_section(judged)}
<h2>Arms</h2>
{_arms_table(results, study, mlflow)}
{"<h2>Searches</h2>" + search.section(searches, fig_dir, _img, search_note, search_metric) if searches else ""}
<h2>Figures</h2>
{_figures_section(figure_fns, results, history, fig_dir)}
<h2>Tables</h2>
{_tables_section(table_fns, results, table_dir)}
<h2>Reconstructions</h2>
{_recon_section(recon_files or {}, fig_dir)}
<h2>Settings</h2>
{_settings_section(study)}
<h2>MLflow</h2>
{_mlflow_section(study, mlflow)}
</body></html>
"""
    return write_text(out_dir / "report.html", page)
