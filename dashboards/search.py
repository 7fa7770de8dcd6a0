"""The report's searches: per searched evaluation of an arm, Optuna's own figures over its seeds
(optimisation history, the objective against each searched field, and with several fields their
importances), the per-epoch values a pruner judged (drawn here, a colour per seed) and the values each
seed chose.

Input: `searches`, label ("<arm> · <evaluation>") -> {seed: optuna Study}, as loaded from the
study's Optuna storage (ablate/execution/search.py). Figures are Optuna's matplotlib
visualisations but for the per-epoch one; the seeds' candidates are pooled into one in-memory study for the
pooled plots.
"""
from __future__ import annotations

import html
import math
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from dashboards.contract import search_candidates
from dashboards.figures import save_figure

Searches = Mapping[str, Mapping[int, Any]]


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def pooled(studies: Mapping[int, Any]) -> Any:
    """Every seed's finished candidates in one in-memory study (same direction)."""
    optuna = _optuna()
    first = next(iter(studies.values()))
    pool = optuna.create_study(direction=first.direction)
    for study in studies.values():
        pool.add_trials([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    return pool


def _finished(study: Any, state: str) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == state]


def _figure(draw: Callable[[], Any], title: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = draw()
    ax = out[0] if hasattr(out, "__len__") and not hasattr(out, "figure") else out
    if hasattr(ax, "flat"):  # an array of axes (a slice plot of several fields)
        ax = ax.flat[0]
    fig = ax.figure
    fig.suptitle(title, fontsize=10)
    if len(fig.axes) == 1:  # Optuna lays out its several-panel figures (and their colour bar) itself
        fig.set_size_inches(max(fig.get_size_inches()[0], 6.4), max(fig.get_size_inches()[1], 4.0))
        fig.tight_layout()
    return fig


def figures(label: str, studies: Mapping[int, Any], metric: str = "validation metric") -> dict[str, Any]:
    """Optuna's figures for one searched evaluation of an arm: name -> matplotlib figure."""
    import optuna.visualization.matplotlib as vis

    pool = pooled(studies)
    complete = _finished(pool, "COMPLETE")
    out: dict[str, Any] = {}
    if not complete:
        return out
    out["history"] = _figure(lambda: vis.plot_optimization_history(
        [studies[s] for s in sorted(studies)], target_name=metric), f"{label}: optimisation history (each seed)")
    out["slice"] = _figure(lambda: vis.plot_slice(pool, target_name=metric),
                           f"{label}: candidates over the searched values (every seed)")
    if any(t.intermediate_values for t in pool.get_trials(deepcopy=False)):
        out["epochs"] = per_epoch(label, studies, metric)
    if len(complete[0].params) > 1 and len(complete) >= 2:
        try:  # fANOVA needs scikit-learn (MLflow installs it) and two distinct values of a field
            out["importance"] = _figure(lambda: vis.plot_param_importances(pool, target_name=metric),
                                        f"{label}: importance of each searched field (fANOVA, every seed)")
        except (ImportError, RuntimeError, ValueError):
            pass
    return out


def per_epoch(label: str, studies: Mapping[int, Any], metric: str = "validation metric"):
    """Every complete or pruned candidate's per-epoch values (what a pruner judged), a colour per seed,
    pruned ones dashed and ending in a cross. Optuna's `plot_intermediate_values` labels each candidate in a
    legend, which three seeds of eight candidates overflow; here the legend names the seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = plt.get_cmap("tab10")
    for i, seed in enumerate(sorted(studies)):
        color = colors(i % 10)
        for t in search_candidates(studies[seed]):
            if not t.intermediate_values or t.state.name not in ("COMPLETE", "PRUNED"):
                continue
            steps = sorted(t.intermediate_values)
            values = [t.intermediate_values[k] for k in steps]
            pruned = t.state.name == "PRUNED"
            ax.plot(steps, values, color=color, alpha=0.8, lw=1.2, ls="--" if pruned else "-", marker=".")
            if pruned:
                ax.plot(steps[-1:], values[-1:], color=color, marker="x", ms=8, ls="none")
    handles = [plt.Line2D([], [], color=colors(i % 10), label=f"seed {seed}") for i, seed in enumerate(sorted(studies))]
    handles += [plt.Line2D([], [], color="0.4", ls="-", label="complete"),
                plt.Line2D([], [], color="0.4", ls="--", marker="x", label="pruned")]
    ax.legend(handles=handles, fontsize=8)
    ax.set_xlabel("epochs done")
    ax.set_ylabel(metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{label}: per-epoch values (pruned candidates stop early)", fontsize=10)
    fig.tight_layout()
    return fig


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


def chosen_table(label: str, studies: Mapping[int, Any]) -> str:
    """Per seed: the chosen values (the best complete candidate), its validation metric, and the
    candidates by state."""
    rows = []
    params: list[str] = []
    for study in studies.values():
        for t in study.get_trials(deepcopy=False):
            params += [p for p in t.params if p not in params]
    for seed in sorted(studies):
        study = studies[seed]
        trials = search_candidates(study)
        done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
        best = (max if study.direction.name == "MAXIMIZE" else min)(done, key=lambda t: t.value) if done else None
        counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "RUNNING", "FAIL")}
        cells = [f"<td>{seed}</td>"]
        cells += [f'<td class="num">{_value(best.params.get(p)) if best else "–"}</td>' for p in params]
        cells.append(f'<td class="num">{f"{best.value:.2f}" if best else "–"}</td>')
        cells.append(f'<td class="num">{trials.index(best) + 1 if best else "–"}</td>')
        cells.append('<td class="num">' + " · ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = ["seed", *(f"chosen {p}" for p in params), "its validation metric", "found at candidate", "candidates"]
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table class="ablate"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def section(searches: Searches, fig_dir: Path, img: Callable[[Path, str], str], describe: str = "",
            metric: str = "validation metric") -> str:
    """The report's searches section: per searched evaluation of an arm, the chosen values per seed
    and Optuna's figures (PNG and SVG under `fig_dir`, inlined with `img`)."""
    if not searches:
        return ""
    parts = [f'<p class="note">{html.escape(describe)}</p>' if describe else ""]
    for label, studies in searches.items():
        stem = "search_" + re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
        parts.append(f'<section id="{stem}"><h3>{html.escape(label)}</h3>{chosen_table(label, studies)}')
        try:
            drawn = figures(label, studies, metric)
        except Exception as exc:  # noqa: BLE001 - a figure Optuna cannot draw is a line, not the report's end
            parts.append(f'<p class="error">{html.escape(label)}: {type(exc).__name__}: {html.escape(str(exc))}</p>')
            drawn = {}
        for kind, fig in drawn.items():
            name = f"{stem}_{kind}"
            png, _ = save_figure(fig, fig_dir, name)
            plt.close(fig)
            parts.append(f'<figure id="figure-{name}">{img(png, name)}<figcaption>{html.escape(label)}, {kind}: '
                         f'<a href="figures/{name}.svg">SVG</a> · <a href="figures/{name}.png">PNG</a>'
                         f'</figcaption></figure>')
        if not drawn:
            parts.append('<p class="note">No candidate is complete yet.</p>')
        elif "importance" not in drawn:
            parts.append('<p class="note">One field searched: its importance is 1 by definition, so no '
                         'importance figure (Optuna\'s fANOVA importances are drawn when several are searched).</p>')
        parts.append("</section>")
    return "".join(parts)
