"""The paper's figures, drawn from results tables: ours and the paper's on separate panels.

A figure is `fn(results, history) -> matplotlib.figure.Figure`; it reads result tables
only and never a model. Figures are built on `matplotlib.figure.Figure` with an Agg
canvas, so they touch no global pyplot state and need no display.

Conventions in every figure:
- Ours on the left, titled with `results.attrs["ours_label"]` (the report sets it to
  e.g. "ours (fashion_mnist, profile laptop)"), the paper on the right.
- Several seeds: the mean, with error bars of its 95% t-interval (dashboards.decide); one seed:
  no bars, and the figure says that no interval is possible. An accuracy axis spans at least
  2 points (`decide.y_span`), so that noise never looks like a slope.
- An arm without a value is an 'x' at the bottom of the panel, named in the legend
  (red: failed, grey: pending or not measured); a missing column is said in the panel.
- Lines and axes carry a `gid` ("ours:<metric>:<series>", "paper:<metric>") so tests and
  tools can read the drawn data back.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory

from core.files import replacing
from dashboards import decide, paper
from dashboards.contract import DONE, FAILED, PENDING, ours_label as label_of
from dashboards.tables import aggregate, blocks_top1, speedups, status_counts, varying_axes

PAPER_LABEL = f"paper ({paper.SETTING})"
PAPER_COLOR = "black"
FAILED_COLOR = "firebrick"
MISSING_COLOR = "0.55"
TOP1_ALIASES = ("top1", "acc1", "test_top1", "test_acc1")  # accepted in history when the stage's own name is absent
METRIC_TITLES = {"ft_top1": "fine-tuning", "lin_top1": "linear probing"}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, directory: Path | str, name: str) -> list[Path]:
    """Write `name.png` (150 dpi) and `name.svg` under `directory`; return both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.svg"]
    with replacing(paths[0]) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    with matplotlib.rc_context({"svg.fonttype": "none"}), replacing(paths[1]) as tmp:  # text stays text in SVG
        fig.savefig(tmp, format="svg")
    return paths


def ours_label(results: pd.DataFrame) -> str:
    """The report's label for our numbers (`results.attrs["ours_label"]`), else one from the data."""
    if results.attrs.get("ours_label"):
        return str(results.attrs["ours_label"])
    datasets = results["data.dataset"].dropna() if "data.dataset" in results else []
    return label_of(str(datasets.iloc[0]) if len(datasets) else None)


def _status_note(results: pd.DataFrame, spread: str = "bars") -> str:
    """"7 of 10 arms done, 2 failed, 1 pending" and, with repeated seeds, a second line on the spread."""
    counts = status_counts(results)
    if counts["total"] == 0:
        return "no arms yet"
    parts = [f"{counts[DONE]} of {counts['total']} arms done"]
    parts += [f"{counts[s]} {s}" for s in (FAILED, PENDING) if counts[s]]
    seeds = int(results.groupby("arm")["seed"].nunique().max()) if "seed" in results else 1
    note = ", ".join(parts)
    if seeds > 1:
        return note + f"\n{seeds} seeds per arm: mean, {spread} 95% interval"
    return note + "\n1 seed per arm: no interval, differences may be noise"


def _say(ax: Axes, text: str) -> None:
    """A panel that cannot be drawn says why, in its middle."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color=FAILED_COLOR, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _series(agg: pd.DataFrame, results: pd.DataFrame, x: str) -> list[tuple[str, pd.DataFrame]]:
    """Arms split into lines by the other axes that vary between them (e.g. mask sampling in a
    ratio sweep); a single line when only `x` varies."""
    others = [a for a in varying_axes(results) if a != x and a in agg]
    if not others:
        return [("", agg)]
    keyed = agg.assign(_series=agg[others].astype(str).agg(", ".join, axis=1) if len(others) > 1
                       else agg[others[0]].astype(str))
    label_keys = ", ".join(_short(o) for o in others)
    return [(f"{label_keys}={name}", part) for name, part in keyed.groupby("_series", sort=False)]


def _mark_missing(ax: Axes, xs: np.ndarray, arms: list[str], states: list[str]) -> None:
    """'x' at the bottom of the panel for arms without a value, named in the legend."""
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    for state, color in ((FAILED, FAILED_COLOR), (PENDING, MISSING_COLOR), (DONE, MISSING_COLOR)):
        pick = [i for i, s in enumerate(states) if s == state]
        if not pick:
            continue
        what = {DONE: "not measured"}.get(state, state)
        names = ", ".join(arms[i] for i in pick)
        ax.scatter(xs[pick], np.full(len(pick), 0.04), transform=transform, marker="x", s=70, linewidths=2,
                   color=color, clip_on=False, zorder=5, label=f"{what}: {names}")


def _draw_ours(ax: Axes, results: pd.DataFrame, x: str, metric: str, to_x: Callable[[pd.Series], np.ndarray],
               *, prepared: pd.DataFrame | None = None) -> bool:
    """Mean and 95% interval of `metric` per arm against axis `x`; False when nothing could be drawn."""
    source = prepared if prepared is not None else results
    missing = [c for c in (x, metric) if c not in source.columns]
    if results.empty:
        _say(ax, "no results yet")
        return False
    if missing:
        _say(ax, "not in the results: " + ", ".join(missing))
        return False
    agg = aggregate(source, [metric])
    seeds = int(agg[f"{metric}_n"].max()) if len(agg) else 0
    drew = False
    spans: list[tuple[np.ndarray, np.ndarray]] = []
    for i, (name, part) in enumerate(_series(agg, source, x)):
        part = part.assign(_x=to_x(part[x])).sort_values("_x")
        have = part[part[f"{metric}_mean"].notna() & np.isfinite(part["_x"])]
        if len(have):
            mean = have[f"{metric}_mean"].to_numpy(float)
            low, high = have[f"{metric}_low"].to_numpy(float), have[f"{metric}_high"].to_numpy(float)
            err = np.nan_to_num(np.vstack([mean - low, high - mean]))
            spans.append((np.fmin(low, mean), np.fmax(high, mean)))
            label = name or "ours"
            bars = ax.errorbar(have["_x"].to_numpy(float), mean, yerr=err if seeds > 1 else None, marker="o", capsize=3,
                               color=f"C{i}", label=label)
            bars.lines[0].set_gid(f"ours:{metric}:{name}")
            drew = True
            fewer = have[have[f"{metric}_n"] < seeds]
            if len(fewer):  # a mean over fewer seeds than the rest: hollow ring, named
                names = ", ".join(f"{a} ({n} of {seeds})" for a, n in zip(fewer["arm"], fewer[f"{metric}_n"]))
                ax.scatter(fewer["_x"].to_numpy(float), fewer[f"{metric}_mean"].to_numpy(float), s=140,
                           facecolors="none", edgecolors=FAILED_COLOR, linewidths=1.5, zorder=6,
                           label=f"fewer seeds: {names}")
        lacking = part[part[f"{metric}_mean"].isna() & np.isfinite(part["_x"])]
        if len(lacking):
            _mark_missing(ax, lacking["_x"].to_numpy(float), lacking["arm"].tolist(), lacking["state"].tolist())
    if not drew:
        ax.text(0.5, 0.5, f"no {metric} yet", transform=ax.transAxes, ha="center", va="center", color=MISSING_COLOR)
        ax.set_yticks([])
    elif metric.endswith("top1"):  # never zoom into noise: at least 2 points, every interval inside
        span = decide.y_span(np.concatenate([lo for lo, _ in spans]), np.concatenate([hi for _, hi in spans]))
        if span is not None:
            ax.set_ylim(*span)
    ax.grid(alpha=0.3)
    ax.set_gid(f"ours:{metric}")
    return True


def _label_sides(y: np.ndarray) -> list[int]:
    """+1 (above) or -1 (below) per point: below where the point lies under its neighbours'
    mean, so a value label does not sit on the line leaving it."""
    sides = []
    for i, yi in enumerate(y):
        neighbours = [y[j] for j in (i - 1, i + 1) if 0 <= j < len(y) and np.isfinite(y[j])]
        sides.append(-1 if neighbours and yi < np.mean(neighbours) else 1)
    return sides


def _draw_paper(ax: Axes, x: np.ndarray, y: np.ndarray, metric: str, label: str, *, color: str = PAPER_COLOR,
                marker: str = "s", values: bool = True, side: int | None = None) -> Line2D:
    """The paper's series with its value written at each point, as in the paper's figures."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(y)
    (line,) = ax.plot(x[keep], y[keep], marker=marker, color=color, label=label, gid=f"paper:{metric}")
    if values:
        sides = _label_sides(y[keep]) if side is None else [side] * int(keep.sum())
        for xi, yi, si in zip(x[keep], y[keep], sides):
            ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(0, 6 * si), ha="center",
                        va="bottom" if si > 0 else "top", fontsize=7, color=color,
                        bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))
    ax.margins(y=0.12)
    ax.grid(alpha=0.3)
    ax.set_gid(f"paper:{metric}")
    return line


def _column_legend(sub, axes: list[Axes]) -> None:
    """One legend under a column of panels, entries merged by label, so no legend covers data."""
    merged: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            merged.setdefault(label, handle)
    if merged:
        wide = max(len(label) for label in merged) > 40
        sub.legend(list(merged.values()), list(merged), loc="outside lower center", fontsize=8,
                   ncols=1 if wide else min(len(merged), 3), frameon=False)


def _panel_columns(fig: Figure, results: pd.DataFrame, rows: int,
                   paper_label: str = PAPER_LABEL) -> tuple[list[Axes], list[Axes]]:
    left, right = fig.subfigures(1, 2, wspace=0.04)
    left.suptitle(f"{ours_label(results)}\n{_status_note(results)}", fontsize=11)
    right.suptitle(f"{paper_label}\nnumbers as printed in the paper", fontsize=11)
    return list(np.atleast_1d(left.subplots(rows, 1))), list(np.atleast_1d(right.subplots(rows, 1)))


def _metric_vs_axis(results: pd.DataFrame, axis: str, ref: pd.DataFrame, *, title: str, xlabel: str,
                    to_x: Callable[[pd.Series], np.ndarray], log2_x: bool = False) -> Figure:
    fig = new_figure(11, 7.5)
    fig.suptitle(title, fontsize=13)
    ours_axes, paper_axes = _panel_columns(fig, results, 2)
    for metric, ax_ours, ax_paper in zip(("ft_top1", "lin_top1"), ours_axes, paper_axes):
        name = METRIC_TITLES[metric]
        if _draw_ours(ax_ours, results, axis, metric, to_x):
            ax_ours.set_xlabel(xlabel)
            ax_ours.set_ylabel(f"{name} top-1 (%)")
            xs = np.unique(to_x(results[axis])[np.isfinite(to_x(results[axis]))])
            if log2_x and len(xs) and (xs > 0).all():
                ax_ours.set_xscale("log", base=2)
            if 0 < len(xs) <= 12:
                ax_ours.set_xticks(xs, [f"{v:g}" for v in xs])
                ax_ours.minorticks_off()
        ax_ours.set_title(name)
        px = to_x(ref[axis])
        _draw_paper(ax_paper, px, ref[metric].to_numpy(float), metric, "MAE ViT-L/16")
        if log2_x:
            ax_paper.set_xscale("log", base=2)
        ax_paper.set_xticks(px, [f"{v:g}" for v in px])
        ax_paper.minorticks_off()
        ax_paper.set_title(name)
        ax_paper.set_xlabel(xlabel)
        ax_paper.set_ylabel(f"{name} top-1 (%)")
        ax_paper.legend(fontsize=7, loc="lower center")
    _column_legend(ours_axes[0].get_figure(root=False), ours_axes)
    return fig


def fig5_mask_ratio(results: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Figure 5: fine-tuning and linear-probing top-1 against the masking ratio."""
    return _metric_vs_axis(results, "model.mask_ratio", paper.FIG5, title="Masking ratio (Figure 5)",
                           xlabel="masking ratio (%)",
                           to_x=lambda s: pd.to_numeric(s, errors="coerce").to_numpy(float) * 100)


def fig7_schedule(results: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Figure 7: accuracy against the length of pre-training."""
    return _metric_vs_axis(results, "pretrain.epochs", paper.FIG7, title="Training schedule (Figure 7)",
                           xlabel="pre-training epochs", log2_x=True,
                           to_x=lambda s: pd.to_numeric(s, errors="coerce").to_numpy(float))


def _block_positions(blocks: np.ndarray, depth: float | None) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                                       list[float], list[str]]:
    """Fine-tuned block counts on evenly spaced positions (as the paper's Figure 9), a half
    block halfway between 0 and 1, NaN ("all blocks") at the encoder depth or past the end."""
    finite = blocks[np.isfinite(blocks)]
    fractional = bool((finite % 1 != 0).any())
    whole = sorted({float(b) for b in finite if float(b).is_integer()} | ({0.0, 1.0} if fractional else set()))
    has_all = bool(np.isnan(blocks).any())
    if has_all and depth is not None and np.isfinite(depth):
        whole = sorted(set(whole) | {float(depth)})
    whole = whole or [0.0]

    def to_pos(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        pos = np.interp(values, whole, np.arange(len(whole)), right=np.nan) if len(whole) > 1 else np.zeros_like(values)
        all_pos = whole.index(float(depth)) if has_all and depth is not None and float(depth) in whole else len(whole)
        return np.where(np.isnan(values), all_pos, pos)

    ticks = list(range(len(whole)))
    labels = [f"{b:g}" for b in whole]
    if has_all and (depth is None or not np.isfinite(depth)):
        ticks.append(len(whole))
        labels.append("all")
    if fractional:
        ticks.append(0.5)
        labels.append("½")
    return to_pos, ticks, labels


def fig9_partial_finetune(results: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Figure 9: top-1 against the number of last blocks fine-tuned; the MLP-only half block at
    0.5 is a star. With 0 blocks our point is the linear probe when no fine-tune ran."""
    fig = new_figure(12, 5)
    fig.suptitle("Partial fine-tuning (Figure 9)", fontsize=13)
    (ax_ours,), (ax_paper,) = _panel_columns(fig, results, 1)
    xlabel = "blocks fine-tuned (last k; ½ = MLP of the last block)"
    column = "finetune.tune_blocks"
    if column in results and not results.empty:
        prepared = blocks_top1(results)
        depth = None
        if "model.depth" in results and results["model.depth"].notna().any():
            depth = float(pd.to_numeric(results["model.depth"], errors="coerce").max())
        to_pos, ticks, labels = _block_positions(pd.to_numeric(results[column], errors="coerce").to_numpy(float), depth)
        if _draw_ours(ax_ours, results, column, "blocks_top1", lambda s: to_pos(pd.to_numeric(s, errors="coerce")),
                      prepared=prepared):
            ax_ours.set_xticks(ticks, labels)
            half = aggregate(prepared, ["blocks_top1"])
            half = half[pd.to_numeric(half[column], errors="coerce") == paper.FIG9_HALF_BLOCK]
            half = half[half["blocks_top1_mean"].notna()]
            if len(half):
                ax_ours.scatter([0.5] * len(half), half["blocks_top1_mean"], marker="*", s=220, color="C0",
                                zorder=6, label="half block (MLP only)")
            if "lin_top1" in results and results["lin_top1"].notna().any():
                # The paper's 0-block point is its linear probe (LARS, BatchNorm head); our 0-block
                # arm is the fine-tune recipe with every block frozen. Both are shown.
                ax_ours.scatter([0.0], [results["lin_top1"].mean()], marker="D", s=60, facecolors="none",
                                edgecolors="C2", linewidths=1.5, zorder=6, label="linear probe (0 blocks, LARS)")
            _column_legend(ax_ours.get_figure(root=False), [ax_ours])
    else:
        _say(ax_ours, "no results yet" if results.empty else f"not in the results: {column}")
    ax_ours.set_xlabel(xlabel)
    ax_ours.set_ylabel("top-1 (%)")
    ax_ours.set_title("fine-tuning the last blocks (0 = the head alone)")

    ref = paper.FIG9
    to_pos, ticks, labels = _block_positions(ref[column].to_numpy(float), None)
    whole = ref[ref[column] != paper.FIG9_HALF_BLOCK]
    _draw_paper(ax_paper, to_pos(whole[column]), whole["mae"].to_numpy(float), "mae", "MAE", color="C3")
    _draw_paper(ax_paper, to_pos(whole[column]), whole["moco_v3"].to_numpy(float), "moco_v3", "MoCo v3",
                color="C7", marker="o", side=-1)
    half = ref[ref[column] == paper.FIG9_HALF_BLOCK]["mae"].iloc[0]
    ax_paper.scatter([0.5], [half], marker="*", s=260, color="C3", zorder=6, gid="paper:mae_half_block",
                     label=f"MAE, half block (MLP only): {half:.1f}")
    ax_paper.set_xticks(ticks, labels)
    ax_paper.set_xlabel(xlabel)
    ax_paper.set_ylabel("top-1 (%)")
    ax_paper.set_title("fine-tuning the last blocks (24 = all)")
    ax_paper.legend(fontsize=8, loc="lower right")
    return fig


def _history_curves(ax: Axes, results: pd.DataFrame, history: pd.DataFrame, stage: str, metric: str, *,
                    linestyle: str = "-", tag: str = "", list_missing: bool = True) -> bool:
    """One line per arm (mean over seeds, band min-max), arms without a curve named in the legend.
    An arm keeps its colour across calls on the same results, so stages can share a panel."""
    needed = {"arm", "seed", "stage", "epoch", "metric", "value"}
    if history is None or history.empty or not needed <= set(history.columns):
        _say(ax, f"no {stage} history yet")
        return False
    in_stage = history[history["stage"] == stage]
    metric = next((m for m in (metric, *TOP1_ALIASES) if (in_stage["metric"] == m).any()), metric)
    rows = in_stage[(in_stage["metric"] == metric) & np.isfinite(pd.to_numeric(in_stage["value"], errors="coerce"))]
    arms = list(dict.fromkeys(list(results["arm"]) if "arm" in results else []))
    arms += [a for a in dict.fromkeys(rows["arm"]) if a not in arms]
    states = dict(zip(aggregate(results, [])["arm"], aggregate(results, [])["state"])) if not results.empty else {}
    colors = matplotlib.colormaps["tab10" if len(arms) <= 10 else "tab20"]
    positive = True
    for i, arm in enumerate(arms):
        curve = rows[rows["arm"] == arm].groupby("epoch")["value"].agg(["mean", "min", "max", "count"])
        state = states.get(arm, DONE)
        suffix = "" if state == DONE else f" ({state})"
        if curve.empty:
            if list_missing:
                ax.plot([], [], marker="x", linestyle="none", label=f"{arm}{tag}: no curve{suffix}",
                        color=FAILED_COLOR if state == FAILED else MISSING_COLOR)
            continue
        color = colors(i % colors.N)
        seeds = rows[rows["arm"] == arm]["seed"].nunique()
        ax.plot(curve.index, curve["mean"], color=color, linestyle=linestyle, label=f"{arm}{tag}{suffix}",
                gid=f"ours:{stage}:{metric}:{arm}")
        if seeds > 1:
            ax.fill_between(curve.index, curve["min"], curve["max"], color=color, alpha=0.2, linewidth=0)
        positive &= bool((curve["min"] > 0).all())
    if rows.empty and list_missing:
        ax.text(0.5, 0.5, f"no '{metric}' values in {stage} history", transform=ax.transAxes, ha="center",
                color=MISSING_COLOR)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        values = rows["value"].to_numpy(float)
        values = values[np.isfinite(values)]
        if positive and len(values) and values.max() / max(values.min(), 1e-12) > 5:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncols=2 if len(arms) > 8 else 1)
    return True


def loss_curves(results: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Pre-training loss against epoch, one line per arm. With mask sampling varied, the paper's
    Table 1f remark on loss is written beside it (the paper gives no curves)."""
    fig = new_figure(9, 5.5)
    ax = fig.subplots()
    _history_curves(ax, results, history, "pretrain", "loss")
    title = f"Pre-training loss — {ours_label(results)}, {_status_note(results, 'band')}"
    if "model.mask_sampling" in varying_axes(results):
        title += f"\n{paper.TABLE1F_LOSS_NOTE} (Table 1f)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("pre-training epoch")
    ax.set_ylabel("reconstruction loss (masked patches)")
    return fig


# Panels of `eval_curves`: (title, [(stage, metric, line style, legend tag)]); a panel is drawn
# when history has any of its stages.
# Validation accuracy: fine-tuning reads the test split once, at its last epoch.
EVAL_PANELS = (
    ("linear probing", [("linear_probe", "lin_val_top1", "-", "")]),
    ("fine-tuning", [("finetune", "ft_val_top1", "-", ""), ("partial_finetune", "ft_val_top1", "-", " (partial)"),
                     ("scratch", "ft_val_top1", "--", " (scratch)")]),
)


def eval_curves(results: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Validation top-1 against epoch of the evaluation stages, one line per arm: linear probing, and
    fine-tuning with training from scratch dashed in the same panel (Table 3's comparison)."""
    have = set(history["stage"]) if history is not None and "stage" in history else set()
    panels = [(title, [s for s in stages if s[0] in have]) for title, stages in EVAL_PANELS]
    panels = [(title, stages) for title, stages in panels if stages]
    fig = new_figure(12 if len(panels) > 1 else 8, 5)
    fig.suptitle(f"Evaluation during training — {ours_label(results)}, {_status_note(results, 'band')}",
                 fontsize=12)
    if not panels:
        ax = fig.subplots()
        _say(ax, "no evaluation history yet")
        return fig
    for ax, (title, stages) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        for i, (stage, metric, linestyle, tag) in enumerate(stages):
            _history_curves(ax, results, history, stage, metric, linestyle=linestyle, tag=tag, list_missing=i == 0)
        ax.set_title(title + (" (dashed: from scratch)" if any(s[0] == "scratch" for s in stages) else ""))
        ax.set_xlabel("epoch of " + " / ".join(s[0].replace("_", "-") for s in stages))
        ax.set_ylabel("validation top-1 (%)")
    return fig


def _time_unit(seconds: float) -> tuple[float, str]:
    if not np.isfinite(seconds) or seconds < 300:
        return 1.0, "s"
    if seconds < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def table2_wallclock(results: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Table 2 as bars: pre-training wall-clock per arm, speedup against the mask-token arm."""
    fig = new_figure(12, 5.5)
    fig.suptitle("Wall-clock time of pre-training (Table 2)", fontsize=13)
    (ax_ours,), (ax_paper,) = _panel_columns(fig, results, 1)
    metric = "pretrain_wall_clock_s"
    if results.empty or metric not in results:
        _say(ax_ours, "no results yet" if results.empty else f"not in the results: {metric}")
    else:
        agg = aggregate(results, [metric])
        ratio, note = speedups(results)
        longest = float(np.nanmax(agg[f"{metric}_max"])) if agg[f"{metric}_max"].notna().any() else np.nan
        scale, unit = _time_unit(longest)
        xs = np.arange(len(agg))
        mean = agg[f"{metric}_mean"].to_numpy(float) / scale
        seeds = int(agg[f"{metric}_n"].max())
        err = None
        if seeds > 1:
            err = np.nan_to_num(np.vstack([mean - agg[f"{metric}_min"].to_numpy(float) / scale,
                                           agg[f"{metric}_max"].to_numpy(float) / scale - mean]))
        bars = ax_ours.bar(xs, np.nan_to_num(mean), yerr=err, capsize=4, color="C0", gid=f"ours:{metric}")
        tops = np.fmax(mean, agg[f"{metric}_max"].to_numpy(float) / scale)  # above the error bar
        for x, arm, value, top in zip(xs, agg["arm"], mean, tops):
            if np.isfinite(value) and np.isfinite(ratio[arm]):
                ax_ours.annotate(f"{ratio[arm]:.1f}×", (x, top), textcoords="offset points", xytext=(0, 4),
                                 ha="center", va="bottom", fontsize=9, fontweight="bold")
        lacking = agg[agg[f"{metric}_mean"].isna()]
        if len(lacking):
            _mark_missing(ax_ours, xs[lacking.index.to_numpy()], lacking["arm"].tolist(), lacking["state"].tolist())
        if len(lacking):
            ax_ours.legend(fontsize=7, loc="upper right")
        ax_ours.set_xticks(xs, agg["arm"], rotation=20 if len(agg) > 3 else 0, ha="right" if len(agg) > 3 else "center")
        ax_ours.set_ylabel(f"pre-training wall-clock ({unit})")
        ax_ours.set_title(f"bar labels: {note}", fontsize=9)
        ax_ours.margins(y=0.15)
        ax_ours.grid(axis="y", alpha=0.3)

    ref = paper.TABLE2
    labels = [f"{enc}\n{'w/' if tok else 'w/o'} [M]\ndepth {d}" for enc, tok, d in
              zip(ref["encoder"], ref["model.mask_token_in_encoder"], ref["model.decoder_depth"])]
    colors = ["C2" if enc == "ViT-L" else "C1" for enc in ref["encoder"]]
    xs = np.arange(len(ref)) + (ref["encoder"] == "ViT-H").to_numpy() * 0.5
    bars = ax_paper.bar(xs, ref["wall_clock_h"], color=colors, gid="paper:wall_clock_h",
                        hatch=["//" if e else "" for e in ref["estimated"]], edgecolor="white")
    for x, h, s, est in zip(xs, ref["wall_clock_h"], ref["speedup"], ref["estimated"]):
        ax_paper.annotate(f"{h:.1f} h\n{s:.1f}×" + (" (est.)" if est else ""), (x, h), textcoords="offset points",
                          xytext=(0, 3), ha="center", va="bottom", fontsize=8)
    ax_paper.set_xticks(xs, labels, fontsize=8)
    ax_paper.set_ylabel("wall-clock, 800 epochs, 128 TPU-v3 cores (h)")
    ax_paper.set_title("decoder 512 wide, mask ratio 75%; [M] = mask token in encoder", fontsize=9)
    ax_paper.margins(y=0.18)
    ax_paper.grid(axis="y", alpha=0.3)
    ax_paper.legend(handles=[bars[0], bars[3]], labels=["ViT-L", "ViT-H (hatched: estimated)"], fontsize=8,
                    loc="upper left")
    return fig


def _paired_bars(ax: Axes, labels: list[str], first: np.ndarray, second: np.ndarray, names: tuple[str, str],
                 colors: tuple[str, str], gid: str, spread: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Two bars per group with the difference written above; the y axis starts near the lowest bar so
    differences of a few points stay visible."""
    xs = np.arange(len(labels))
    for offset, values, name, color, err in ((-0.2, first, names[0], colors[0], spread[0] if spread else None),
                                             (0.2, second, names[1], colors[1], spread[1] if spread else None)):
        ax.bar(xs + offset, np.nan_to_num(values), width=0.4, color=color, label=name, yerr=err, capsize=3,
               gid=f"{gid}:{name}")
    for x, a, b in zip(xs, first, second):
        if np.isfinite(a) and np.isfinite(b):
            ax.annotate(f"{a - b:+.1f}", (x, max(a, b)), textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize=9, fontweight="bold")
    finite = np.concatenate([first[np.isfinite(first)], second[np.isfinite(second)]])
    if len(finite):
        ax.set_ylim(max(0.0, finite.min() - 5), min(100.0, finite.max() + 3))
    ax.set_xticks(xs, labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def table3_scratch(results: pd.DataFrame, history: pd.DataFrame) -> Figure:
    """Table 3's baseline: fine-tuned after MAE pre-training against trained from scratch, per arm."""
    fig = new_figure(12, 5)
    fig.suptitle("MAE pre-training against training from scratch (Table 3)", fontsize=13)
    (ax_ours,), (ax_paper,) = _panel_columns(fig, results, 1, paper_label="paper (ViT-B/L/H, ImageNet-1K)")
    missing = [c for c in ("ft_top1", "scratch_top1") if c not in results]
    if results.empty or missing:
        _say(ax_ours, "no results yet" if results.empty else "not in the results: " + ", ".join(missing))
    else:
        agg = aggregate(results, ["ft_top1", "scratch_top1"])
        means = [agg[f"{m}_mean"].to_numpy(float) for m in ("ft_top1", "scratch_top1")]
        spread = None
        if max(agg["ft_top1_n"].max(), agg["scratch_top1_n"].max()) > 1:
            spread = tuple(np.nan_to_num(np.vstack([mean - agg[f"{m}_min"], agg[f"{m}_max"] - mean]))
                           for m, mean in zip(("ft_top1", "scratch_top1"), means))
        _paired_bars(ax_ours, agg["arm"].tolist(), means[0], means[1], ("MAE + fine-tune", "from scratch"),
                     ("C0", "C7"), "ours", spread)
        lacking = agg[agg["ft_top1_mean"].isna() & agg["scratch_top1_mean"].isna()]
        if len(lacking):
            _mark_missing(ax_ours, lacking.index.to_numpy(float), lacking["arm"].tolist(), lacking["state"].tolist())
            ax_ours.legend(fontsize=8, loc="upper left")
        ax_ours.set_ylabel("test top-1 (%)")
        ax_ours.set_title("labels: gain in top-1 points", fontsize=9)
    ref = paper.TABLE3[paper.TABLE3["scratch_top1"].notna()]
    _paired_bars(ax_paper, ref["model"].tolist(), ref["ft_top1"].to_numpy(float), ref["scratch_top1"].to_numpy(float),
                 ("MAE (norm-pix, 1600 ep.)", "from scratch"), ("C3", "C7"), "paper")
    ax_paper.set_ylabel("ImageNet-1K top-1 (%)")
    ax_paper.set_title("labels: gain in top-1 points", fontsize=9)
    return fig


def stage_curves(epochs: pd.DataFrame, title: str) -> Figure:
    """One stage's own per-epoch metrics (columns `epoch` and one per metric): the loss on the
    left, accuracies on the right, for the stage's MLflow run."""
    fig = new_figure(9, 3.4)
    fig.suptitle(title, fontsize=10)
    loss_ax, acc_ax = fig.subplots(1, 2)
    metrics = [c for c in epochs.columns if c != "epoch" and pd.api.types.is_numeric_dtype(epochs[c])]
    losses = [m for m in metrics if "loss" in m]
    accuracies = [m for m in metrics if "top1" in m]
    x = epochs["epoch"].to_numpy(float) + 1 if "epoch" in epochs else np.arange(1, len(epochs) + 1)
    for ax, names, ylabel in ((loss_ax, losses, "loss"), (acc_ax, accuracies, "top-1 (%)")):
        for name in names:
            ax.plot(x, epochs[name].to_numpy(float), marker="o" if len(x) <= 12 else None, ms=3, label=name)
        if names:
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            _say(ax, f"no {ylabel} reported")
    return fig


FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame], Figure]] = {
    "fig5_mask_ratio": fig5_mask_ratio,
    "fig7_schedule": fig7_schedule,
    "fig9_partial_finetune": fig9_partial_finetune,
    "loss_curves": loss_curves,
    "eval_curves": eval_curves,
    "table2_wallclock": table2_wallclock,
    "table3_scratch": table3_scratch,
}


def get_figure(name: str) -> Callable[[pd.DataFrame, pd.DataFrame], Figure]:
    try:
        return FIGURES[name]
    except KeyError:
        raise KeyError(f"unknown figure {name!r}; valid: {sorted(FIGURES)}") from None
