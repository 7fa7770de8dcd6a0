"""Dashboards: figures, tables, reconstructions and the report, from hand-made results.

The paper's numbers are typed here a second time from the reference (section 3), so a
typo in `dashboards/paper.py` shows up as a failure.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboards import paper
from dashboards.contract import DONE, FAILED, PENDING, MlflowLinks, Status, StudyInfo, arm_state
from dashboards.figures import FIGURES, get_figure, save_figure
from dashboards.recon import load_reconstructions, reconstruction_grid
from dashboards.report import run_url, status_line, write_report
from dashboards.tables import TABLES, aggregate, speedups, status_counts, to_html, to_markdown

REPO = Path(__file__).resolve().parents[1]

# --- hand-made studies -------------------------------------------------------------------

RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9]


def _row(study, arm, seed, status, axes, **metrics):
    base = {m: math.nan for m in ("lin_top1", "lin_top5", "ft_top1", "ft_top5", "pretrain_loss",
                                  "pretrain_wall_clock_s", "img_per_s", "train_flops_per_img")}
    if status == "done":
        base.update(metrics)
    return {"study": study, "arm": arm, "seed": seed, "status": status, **axes, **base}


def _defaults(**overrides):
    axes = {"model.mask_ratio": 0.75, "model.decoder_depth": 2, "model.decoder_embed_dim": 64,
            "model.mask_token_in_encoder": False, "model.target": "pixel", "data.augmentation": "crop_random",
            "model.mask_sampling": "random", "pretrain.epochs": 20, "finetune.tune_blocks": math.nan}
    axes.update(overrides)
    return axes


def mask_ratio_study() -> pd.DataFrame:
    """Fashion-MNIST-like sweep, 2 seeds: r90 failed (both seeds), r80 pending, r10 seed 1 failed."""
    rows = []
    for ratio in RATIOS:
        arm = f"r{round(ratio * 100)}"
        for seed in (0, 1):
            status = "failed" if arm == "r90" else "pending" if arm == "r80" else "done"
            if arm == "r10" and seed == 1:
                status = "failed"
            peak = 1 - (ratio - 0.7) ** 2
            rows.append(_row("mask_ratio", arm, seed, status, _defaults(**{"model.mask_ratio": ratio}),
                             ft_top1=88.0 + 3 * peak + 0.2 * seed, ft_top5=99.5,
                             lin_top1=70.0 + 12 * peak - 0.4 * seed, lin_top5=98.0,
                             pretrain_loss=0.02 + 0.03 * ratio + 0.001 * seed,
                             pretrain_wall_clock_s=900 * (1 - ratio) + 300 + 10 * seed,
                             img_per_s=600 + 400 * ratio, train_flops_per_img=2e8 * (1 - ratio) + 3e7))
    return pd.DataFrame(rows)


def history_for(results: pd.DataFrame, epochs: int = 20) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for (arm, seed), group in results.groupby(["arm", "seed"], sort=False):
        status = group["status"].iloc[0]
        if status == "pending":
            continue
        last = epochs if status == "done" else epochs // 3  # a failed trial stops early
        floor = float(group["pretrain_loss"].iloc[0]) if status == "done" else 0.05
        for epoch in range(last):
            loss = floor + 0.25 * math.exp(-epoch / 4) + 0.002 * rng.standard_normal()
            rows += [(arm, seed, "pretrain", epoch, "loss", loss), (arm, seed, "pretrain", epoch, "lr", 1e-3)]
        if status == "done":
            for epoch in range(10):
                rows.append((arm, seed, "linear_probe", epoch, "lin_val_top1",
                             float(group["lin_top1"].iloc[0]) * (1 - 0.3 * math.exp(-epoch / 2))))
                rows.append((arm, seed, "finetune", epoch, "ft_val_top1",
                             float(group["ft_top1"].iloc[0]) * (1 - 0.2 * math.exp(-epoch / 2))))
    return pd.DataFrame(rows, columns=["arm", "seed", "stage", "epoch", "metric", "value"])


def sampling_study() -> pd.DataFrame:
    arms = {"random75": ("random", 0.75, 90.1, 80.2, 0.030), "block50": ("block", 0.5, 89.5, 79.0, 0.034),
            "block75": ("block", 0.75, 88.9, 74.5, 0.041), "grid75": ("grid", 0.75, 89.2, 76.3, 0.021)}
    return pd.DataFrame([_row("sampling", arm, seed, "done",
                              _defaults(**{"model.mask_sampling": s, "model.mask_ratio": r}),
                              ft_top1=ft + 0.1 * seed, lin_top1=lin - 0.2 * seed, pretrain_loss=loss)
                         for arm, (s, r, ft, lin, loss) in arms.items() for seed in (0, 1)])


def schedule_study() -> pd.DataFrame:
    return pd.DataFrame([_row("schedule", f"e{e}", 0, "failed" if e == 80 else "done",
                              _defaults(**{"pretrain.epochs": e}), ft_top1=86 + math.log2(e), lin_top1=60 + 3 * math.log2(e))
                         for e in (5, 10, 20, 40, 80)])


def partial_study() -> pd.DataFrame:
    blocks = {"b0": 0, "b_half": 0.5, "b1": 1, "b2": 2, "b_all": math.nan}
    return pd.DataFrame([_row("partial", arm, 0, "done", _defaults(**{"finetune.tune_blocks": b}),
                              ft_top1=math.nan if b == 0 else 85 + (3 if math.isnan(b) else b), lin_top1=76.0)
                         for arm, b in blocks.items()])


def wallclock_study() -> pd.DataFrame:
    arms = {"token_d8": (True, 8, 3000.0), "notoken_d8": (False, 8, 1100.0), "notoken_d1": (False, 1, 800.0)}
    return pd.DataFrame([_row("wallclock", arm, seed, "done",
                              _defaults(**{"model.mask_token_in_encoder": tok, "model.decoder_depth": d}),
                              pretrain_wall_clock_s=s + 50 * seed, img_per_s=1e6 / s, ft_top1=89.0, lin_top1=78.0,
                              train_flops_per_img=3.3e8 if tok else 1e8)
                         for arm, (tok, d, s) in arms.items() for seed in (0, 1)])


def scratch_study() -> pd.DataFrame:
    """MAE + fine-tune against scratch; arm `big` failed."""
    arms = {"small": (89.0, 86.0), "base": (90.5, 86.2), "big": (math.nan, math.nan)}
    return pd.DataFrame([{**_row("scratch", arm, seed, "failed" if arm == "big" else "done", _defaults(),
                                 ft_top1=ft + 0.2 * seed), "scratch_top1": sc - 0.2 * seed,
                          "error": "RuntimeError: out of memory" if arm == "big" else math.nan}
                         for arm, (ft, sc) in arms.items() for seed in (0, 1)])


def scratch_history(results: pd.DataFrame) -> pd.DataFrame:
    done = results[results["status"] == "done"]
    rows = [(r.arm, r.seed, stage, e, "ft_val_top1", top * (1 - 0.3 * math.exp(-e / 3)))
            for r in done.itertuples() for stage, top in (("finetune", r.ft_top1), ("scratch", r.scratch_top1))
            for e in range(15)]
    return pd.DataFrame(rows, columns=["arm", "seed", "stage", "epoch", "metric", "value"])


STUDY_FOR_FIGURE = {"fig5_mask_ratio": mask_ratio_study, "fig7_schedule": schedule_study,
                    "fig9_partial_finetune": partial_study, "loss_curves": sampling_study,
                    "eval_curves": mask_ratio_study, "table2_wallclock": wallclock_study,
                    "table3_scratch": scratch_study}


def write_npz(path: Path, channels: int, ratios=(0.5, 0.75, 0.9), n: int = 4, size: int = 28, patch: int = 4):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    original = np.stack([np.clip(0.5 + 0.5 * np.sin(6 * xx * (i + 1)) * np.cos(4 * yy), 0, 1) for i in range(n)])
    original = np.repeat(original[..., None], channels, axis=-1)
    if channels == 3:
        original[..., 1] *= 0.6
    grid = size // patch
    masked, recon = [], []
    for ratio in ratios:
        keep = rng.random((n, grid, grid)) >= ratio
        mask = np.repeat(np.repeat(keep, patch, 1), patch, 2)[..., None]
        masked.append(np.where(mask, original, 0.5))
        recon.append(np.where(mask, original, np.clip(original + 0.15 * rng.standard_normal(original.shape), 0, 1)))
    np.savez(path, ratios=np.array(ratios), original=original, masked=np.stack(masked), recon=np.stack(recon))
    return path


# --- the rule: dashboards read results, never models --------------------------------------

def test_dashboards_do_not_import_torch():
    code = ("import sys, dashboards, dashboards.paper, dashboards.figures, dashboards.tables, dashboards.recon, "
            "dashboards.report; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_no_torch_in_dashboard_sources():
    for path in (REPO / "dashboards").glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+torch", path.read_text(), re.M), path


# --- figures ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FIGURES))
@pytest.mark.parametrize("data", ["own study", "other study", "empty"])
def test_every_figure_draws_and_saves(name, data, tmp_path):
    if data == "own study":
        results = STUDY_FOR_FIGURE[name]()
    elif data == "other study":  # lacks the figure's axis or metric columns
        results = schedule_study().drop(columns=["pretrain_wall_clock_s", "model.mask_ratio", "finetune.tune_blocks"])
    else:
        results = mask_ratio_study().iloc[:0]
    history = history_for(results) if len(results) else pd.DataFrame()
    if name == "table3_scratch" and data == "own study":
        history = scratch_history(results)
    fig = get_figure(name)(results, history)
    if data != "own study":  # drawing is the check; saving is checked once per figure
        fig.canvas.draw()
        return
    paths = save_figure(fig, tmp_path, name)
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_unknown_figure_names_the_valid_ones():
    with pytest.raises(KeyError, match="fig5_mask_ratio"):
        get_figure("fig6")


def _line(fig, gid):
    lines = [l for ax in fig.axes for l in ax.get_lines() if l.get_gid() == gid]
    assert len(lines) == 1, [l.get_gid() for ax in fig.axes for l in ax.get_lines()]
    return lines[0]


def test_fig5_paper_series_is_the_reference():
    fig = FIGURES["fig5_mask_ratio"](mask_ratio_study(), pd.DataFrame())
    ft, lin = _line(fig, "paper:ft_top1"), _line(fig, "paper:lin_top1")
    np.testing.assert_allclose(ft.get_xdata(), [10, 20, 30, 40, 50, 60, 70, 75, 80, 90])
    np.testing.assert_allclose(ft.get_ydata(), [83.2, 83.4, 83.4, 84.7, 84.9, 85.0, 84.9, 84.9, 84.5, 83.0])
    np.testing.assert_allclose(lin.get_xdata(), [10, 20, 30, 40, 50, 60, 70, 75, 80, 90])
    np.testing.assert_allclose(lin.get_ydata(), [54.6, 58.9, 61.7, 67.0, 69.9, 71.8, 73.2, 73.5, 71.8, 66.1])
    for gid in ("paper:ft_top1", "paper:lin_top1"):  # the paper is on its own panels, not ours
        ax = next(a for a in fig.axes if a.get_gid() == gid)
        assert not any((l.get_gid() or "").startswith("ours") for l in ax.get_lines())


def test_mean_and_spread_against_hand_computation():
    results = mask_ratio_study()
    agg = aggregate(results).set_index("arm")
    # r50, seeds 0 and 1: ft = 88 + 3 * (1 - 0.04) + {0, 0.2}
    ft = [88 + 3 * 0.96, 88 + 3 * 0.96 + 0.2]
    assert agg.loc["r50", "ft_top1_mean"] == pytest.approx((ft[0] + ft[1]) / 2)
    assert agg.loc["r50", "ft_top1_std"] == pytest.approx(abs(ft[1] - ft[0]) / math.sqrt(2))
    assert (agg.loc["r50", "ft_top1_min"], agg.loc["r50", "ft_top1_max"]) == pytest.approx((ft[0], ft[1]))
    # r10: seed 1 failed, so only seed 0 counts; r90 failed, r80 pending: no value
    assert agg.loc["r10", "ft_top1_n"] == 1 and agg.loc["r10", "state"] == "failed"
    assert agg.loc["r10", "ft_top1_mean"] == pytest.approx(88 + 3 * (1 - 0.36))
    assert math.isnan(agg.loc["r10", "ft_top1_std"])
    assert math.isnan(agg.loc["r90", "ft_top1_mean"]) and math.isnan(agg.loc["r80", "lin_top1_mean"])

    fig = FIGURES["fig5_mask_ratio"](results, pd.DataFrame())
    line = _line(fig, "ours:ft_top1:")
    drawn = dict(zip(np.round(line.get_xdata(), 6), line.get_ydata()))
    assert drawn[50.0] == pytest.approx((ft[0] + ft[1]) / 2)
    assert 90.0 not in drawn and 80.0 not in drawn
    # the error bar of r50 is the 95% t-interval of 2 seeds: mean +- t(0.975, 1) x sd / sqrt(2), t = 12.7062
    half = 12.706204736 * (abs(ft[1] - ft[0]) / math.sqrt(2)) / math.sqrt(2)
    mean = (ft[0] + ft[1]) / 2
    assert (agg.loc["r50", "ft_top1_low"], agg.loc["r50", "ft_top1_high"]) == pytest.approx((mean - half, mean + half))
    ax = next(a for a in fig.axes if a.get_gid() == "ours:ft_top1")
    segments = [s for c in ax.collections for s in getattr(c, "get_segments", lambda: [])()]
    assert any(np.allclose(s, [[50, mean - half], [50, mean + half]]) for s in segments)
    low, high = ax.get_ylim()
    assert low < mean - half and high > mean + half  # every interval inside the axis


def test_status_counts():
    assert status_counts(mask_ratio_study()) == {"done": 7, "failed": 2, "pending": 1, "total": 10}
    assert status_line(mask_ratio_study()) == "7 of 10 arms done (2 failed, 1 pending)"
    assert status_line(sampling_study()) == "4 of 4 arms done"


def test_fig5_marks_failed_and_pending_arms():
    fig = FIGURES["fig5_mask_ratio"](mask_ratio_study(), pd.DataFrame())
    ax = next(a for a in fig.axes if a.get_gid() == "ours:ft_top1")
    labels = ax.get_legend_handles_labels()[1]
    assert "failed: r90" in labels and "pending: r80" in labels
    assert "2 failed" in fig.subfigs[0].get_suptitle()


def test_fig9_half_block_at_half():
    fig = FIGURES["fig9_partial_finetune"](partial_study(), pd.DataFrame())
    half = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "paper:mae_half_block"]
    np.testing.assert_allclose(half[0].get_offsets(), [[0.5, 79.1]])
    mae = _line(fig, "paper:mae")
    np.testing.assert_allclose(mae.get_ydata(), [73.5, 81.0, 83.1, 84.2, 84.4, 84.6, 84.7, 84.9])
    np.testing.assert_allclose(_line(fig, "paper:moco_v3").get_ydata(),
                               [77.6, 79.9, 80.8, 81.6, 81.9, 83.2, 83.8, 84.1])
    ours = _line(fig, "ours:blocks_top1:")
    # b0 has no fine-tune number: its point is the linear probe (76); the half block sits at 0.5
    assert dict(zip(ours.get_xdata(), ours.get_ydata()))[0.0] == pytest.approx(76.0)
    assert dict(zip(ours.get_xdata(), ours.get_ydata()))[0.5] == pytest.approx(85.5)


def test_paper_numbers_match_reference():
    def rows(df, *cols):
        return [tuple(r) for r in df[list(cols)].itertuples(index=False)]
    assert rows(paper.TABLE1A, "model.decoder_depth", "ft_top1", "lin_top1") == [
        (1, 84.8, 65.5), (2, 84.9, 70.0), (4, 84.9, 71.9), (8, 84.9, 73.5), (12, 84.4, 73.3)]
    assert rows(paper.TABLE1C, "model.mask_token_in_encoder", "ft_top1", "lin_top1", "train_flops_ratio") == [
        (True, 84.2, 59.6, 3.3), (False, 84.9, 73.5, 1.0)]
    assert rows(paper.TABLE1F, "model.mask_sampling", "model.mask_ratio", "ft_top1", "lin_top1") == [
        ("random", 0.75, 84.9, 73.5), ("block", 0.5, 83.9, 72.3), ("block", 0.75, 82.8, 63.9),
        ("grid", 0.75, 84.0, 66.0)]
    assert rows(paper.TABLE2, "encoder", "model.mask_token_in_encoder", "model.decoder_depth", "wall_clock_h",
                "speedup") == [("ViT-L", True, 8, 42.4, 1.0), ("ViT-L", False, 8, 15.4, 2.8),
                               ("ViT-L", False, 1, 11.6, 3.7), ("ViT-H", True, 8, 119.6, 1.0),
                               ("ViT-H", False, 8, 34.5, 3.5), ("ViT-H", False, 1, 29.3, 4.1)]
    assert list(paper.TABLE2["estimated"]) == [False, False, False, True, False, False]
    half = paper.FIG9[paper.FIG9["finetune.tune_blocks"] == 0.5]
    assert half["mae"].item() == 79.1 and math.isnan(half["moco_v3"].item())
    assert rows(paper.TABLE3.fillna(-1), "model", "ft_top1", "scratch_top1") == [
        ("ViT-B", 83.6, 82.3), ("ViT-L", 85.9, 82.6), ("ViT-H", 86.9, 83.1), ("ViT-H (448 px)", 87.8, -1)]


# --- tables -------------------------------------------------------------------------------

def test_table1a_puts_paper_next_to_ours():
    results = pd.concat([mask_ratio_study().query("arm == 'r75'").assign(**{"model.decoder_depth": d}, arm=f"d{d}")
                         for d in (1, 2, 8, 3)])
    table = TABLES["table1a"](results).set_index("model.decoder_depth")
    assert list(table.index) == [1, 2, 3, 4, 8, 12]
    assert (table.loc[8, "paper ft"], table.loc[8, "paper lin"]) == (84.9, 73.5)
    assert (table.loc[1, "paper ft"], table.loc[1, "paper lin"]) == (84.8, 65.5)
    assert table.loc[8, "arm"] == "d8" and table.loc[8, "ours ft"] == pytest.approx(88 + 3 * 0.9975 + 0.1)
    assert math.isnan(table.loc[12, "ours ft"]) and math.isnan(table.loc[3, "paper ft"])
    assert "ours ft ±" in table


def test_table1_paper_values():
    expect = {
        "table1b": ("model.decoder_embed_dim", {128: (84.9, 69.1), 256: (84.8, 71.3), 512: (84.9, 73.5),
                                                768: (84.4, 73.1), 1024: (84.3, 73.1)}),
        "table1d": ("model.target", {"pixel": (84.9, 73.5), "norm_pixel": (85.4, 73.9), "pca": (84.6, 72.3),
                                     "token": (85.3, 71.6)}),
        "table1e": ("data.augmentation", {"none": (84.0, 65.7), "crop_fixed": (84.7, 73.1),
                                          "crop_random": (84.9, 73.5), "crop_random_jitter": (84.3, 71.9)}),
        "fig7_schedule": ("pretrain.epochs", {100: (82.3, 57.3), 200: (83.3, 64.4), 400: (84.3, 69.7),
                                              800: (84.9, 73.5), 1600: (85.1, 75.1)}),
    }
    for name, (key, values) in expect.items():
        table = TABLES[name](pd.DataFrame(columns=["arm", "seed", "status"])).set_index(key)
        for k, (ft, lin) in values.items():
            assert (table.loc[k, "paper ft"], table.loc[k, "paper lin"]) == (ft, lin), (name, k)


def test_table1f_joins_on_sampling_and_ratio():
    table = TABLES["table1f"](sampling_study())
    block75 = table[(table["model.mask_sampling"] == "block") & (table["model.mask_ratio"] == 0.75)].iloc[0]
    assert block75["arm"] == "block75" and (block75["paper ft"], block75["paper lin"]) == (82.8, 63.9)
    assert block75["ours ft"] == pytest.approx(88.95)
    grid = table[table["model.mask_sampling"] == "grid"].iloc[0]
    assert (grid["paper ft"], grid["paper lin"], grid["ours lin"]) == (84.0, 66.0, pytest.approx(76.2))
    assert list(table["model.mask_sampling"]) == ["random", "block", "block", "grid"]


def test_table1c_flops_ratio_and_wallclock():
    table = TABLES["table1c"](wallclock_study())
    with_token = table[table["model.mask_token_in_encoder"].map(lambda v: v is True or v == True)].iloc[0]  # noqa: E712
    assert (with_token["paper ft"], with_token["paper lin"], with_token["paper FLOPs ratio"]) == (84.2, 59.6, 3.3)
    assert with_token["ours FLOPs ratio"] == pytest.approx(3.3)
    assert with_token["ours wall-clock (s)"] == pytest.approx(3025.0)


def test_table2_speedup_against_mask_token_arm():
    results = wallclock_study()
    ratio, note = speedups(results)
    assert ratio["notoken_d8"] == pytest.approx(3025 / 1125) and ratio["token_d8"] == 1.0
    assert "token_d8" in note
    table = TABLES["table2"](results).set_index("arm")
    assert table.loc["notoken_d1", "ours speedup"] == pytest.approx(3025 / 825)
    assert (table.loc["notoken_d1", "paper ViT-L wall-clock (h)"], table.loc["notoken_d1", "paper ViT-L speedup"]) \
        == (11.6, 3.7)
    assert (table.loc["token_d8", "paper ViT-H wall-clock (h)"], table.loc["notoken_d8", "paper ViT-H speedup"]) \
        == (119.6, 3.5)
    # our default decoder (2 blocks) still meets the paper's 8-block rows: matched by role
    small = results.assign(**{"model.decoder_depth": results["model.decoder_depth"].replace(8, 2)})
    table = TABLES["table2"](small).set_index("arm")
    assert len(table) == 3 and table.loc["notoken_d8", "paper ViT-L wall-clock (h)"] == 15.4
    assert table.loc["notoken_d8", "ours decoder depth"] == 2 and table.loc["notoken_d8", "paper decoder depth"] == 8


def test_markdown_and_html_rendering():
    table = TABLES["fig9_partial_finetune"](partial_study())
    md = to_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| finetune.tune_blocks | arm |")
    assert len({line.count("|") for line in lines if line.startswith("|")}) == 1
    assert "| all | b_all |" in md and "| 0.5 | b_half |" in md and "79.1" in md
    page = to_html(TABLES["table2"](wallclock_study()))
    assert page.count("<tr>") == 1 + len(paper.TABLE2[paper.TABLE2["encoder"] == "ViT-L"])
    assert 'class="paper num"' in page and "estimate" in page and "2.7×" in page


def test_table3_stacks_ours_and_paper():
    table = TABLES["table3"](scratch_study())
    ours = table[table["model"] == "ours"].set_index("arm")
    assert ours.loc["base", "ours ft"] == pytest.approx(90.6) and ours.loc["base", "ours scratch"] == pytest.approx(86.1)
    assert ours.loc["base", "ours gain"] == pytest.approx(4.5) and math.isnan(ours.loc["big", "ours ft"])
    paper_rows = table[table["model"] != "ours"].set_index("model")
    assert list(paper_rows.index) == ["ViT-B", "ViT-L", "ViT-H", "ViT-H (448 px)"]
    assert (paper_rows.loc["ViT-L", "paper ft"], paper_rows.loc["ViT-L", "paper scratch"]) == (85.9, 82.6)
    assert paper_rows.loc["ViT-B", "paper gain"] == pytest.approx(1.3)
    assert "| ViT-H | – | – | – | – | – | 86.9 | 83.1 | +3.8 |" in to_markdown(table)


def test_eval_curves_put_scratch_dashed_beside_finetune():
    results = scratch_study()
    fig = FIGURES["eval_curves"](results, scratch_history(results))
    assert len(fig.axes) == 1  # no linear-probe history: no empty panel
    scratch = _line(fig, "ours:scratch:ft_val_top1:base")
    assert scratch.get_linestyle() == "--" and _line(fig, "ours:finetune:ft_val_top1:base").get_linestyle() == "-"
    assert scratch.get_color() == _line(fig, "ours:finetune:ft_val_top1:base").get_color()


# --- reconstructions ----------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_reconstruction_grid(channels, tmp_path):
    path = write_npz(tmp_path / "arm.npz", channels)
    fig = reconstruction_grid(path)
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2  # one mosaic per panel
    assert all((im.get_cmap().name == "gray") == (channels == 1) for im in images)
    arrays = load_reconstructions(path)
    size, gap = 28 + 1, 1
    fig2, fig4 = (np.asarray(im.get_array()) for im in images)
    fig2, fig4 = (a[..., None] if a.ndim == 2 else a for a in (fig2, fig4))
    # Figure 2: 4 rows x (masked, reconstruction, original) at the ratio nearest 75%; Figure 4: 3 rows
    # x (2 per ratio + the original)
    assert fig2.shape[:2] == (4 * size - gap, 3 * size - gap) and fig4.shape[:2] == (3 * size - gap, 7 * size - gap)
    tile = lambda a, i, j: a[i * size:i * size + 28, j * size:j * size + 28]  # noqa: E731
    r75 = list(arrays["ratios"]).index(0.75)
    for i in range(4):
        assert np.allclose(tile(fig2, i, 0), arrays["masked"][r75, i]) and np.allclose(tile(fig2, i, 2),
                                                                                     arrays["original"][i])
    assert np.allclose(tile(fig4, 2, 3), arrays["recon"][1, 2]) and np.all(fig4[28, :] == 1.0)  # a white gap row
    assert all(p.stat().st_size > 0 for p in save_figure(fig, tmp_path, "recon"))


# --- report -------------------------------------------------------------------------------

MLFLOW = MlflowLinks(tracking_uri="sqlite:///mlflow.db", experiment_id="3", parent_run_id="p0",
                     run_ids={"r75": {"0": "a1", "1": "a2"}, "r50": {"0": "b1", "1": "b2"}, "r10": {"0": "c1"}})
STUDY = StudyInfo(name="mask_ratio", description="Figure 5: masking ratio 10-90%.", profile="laptop",
                  dataset="fashion_mnist", axes={"model.mask_ratio": RATIOS},
                  settings={"data.dataset": "fashion_mnist", "seeds": [0, 1]})


def render_mask_ratio_report(out_dir: Path, figures=("fig5_mask_ratio", "loss_curves"),
                             tables=("fig5_mask_ratio", "table2")) -> Path:
    results = mask_ratio_study()
    recon = {"r75": write_npz(out_dir.parent / "r75.npz", 1), "r90": out_dir.parent / "missing.npz"}
    return write_report(out_dir, study=STUDY, results=results, history=history_for(results),
                        figures=list(figures),
                        tables=tables, recon_files=recon, mlflow=MLFLOW)


def test_report(tmp_path):
    report = render_mask_ratio_report(tmp_path / "report")
    page = report.read_text()
    assert "7 of 10 arms done" in page and "2 failed" in page and "1 pending" in page
    for name in ("fig5_mask_ratio", "loss_curves"):
        assert re.search(rf'<figure id="figure-{name}"><img alt="{name}" [^>]*src="data:image/png;base64,', page)
        assert (tmp_path / "report/figures" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "report/figures" / f"{name}.svg").stat().st_size > 0
    for name in ("fig5_mask_ratio", "table2"):
        assert (tmp_path / "report/tables" / f"{name}.md").read_text().startswith("|")
        assert f'id="table-{name}"' in page
    assert 'id="recon-r75"' in page and "r90: no reconstructions yet" in page
    assert "http://127.0.0.1:5000/#/experiments/3/runs/b2" in page
    assert "http://127.0.0.1:5000/#/experiments/3/runs/p0" in page
    assert "ablate ui mask_ratio" in page
    assert "ours (fashion_mnist, profile laptop)" in page and "fashion_mnist" in page


def test_report_with_nothing_done(tmp_path):
    results = mask_ratio_study().assign(status="pending")
    for c in ("ft_top1", "lin_top1", "pretrain_loss"):
        results[c] = math.nan
    report = write_report(tmp_path, study=StudyInfo(name="s"), results=results, history=pd.DataFrame(),
                          figures=sorted(FIGURES), tables=sorted(TABLES), recon_files={}, mlflow=None)
    page = report.read_text()
    assert "0 of 10 arms done" in page and "could not be drawn" not in page
    assert page.count("data:image/png;base64,") == len(FIGURES)


def test_report_of_a_study_without_axes_shows_its_errors(tmp_path):
    """A study with no axes (arms named by their evaluations); errors come as a column."""
    study = StudyInfo(name="scratch_vs_mae", description="d", profile="laptop", profile_description="2 cores",
                      dataset="fashion_mnist", settings={"evaluations": ["finetune", "scratch"], "seeds": [0, 1]})
    results = scratch_study()
    page = write_report(tmp_path, study=study, results=results, history=scratch_history(results),
                        figures=["eval_curves", "table3_scratch"], tables=["table3"], recon_files={},
                        mlflow=None).read_text()
    assert "ours (fashion_mnist, profile laptop)" in page and "2 of 3 arms done" in page
    assert "RuntimeError: out of memory" in page and "profile_description" in page


def test_the_contract_survives_the_last_run_record():
    """ablate keeps the tracker's links as JSON (seeds become strings); they come back as MlflowLinks."""
    plain = {"tracking_uri": "sqlite:///m.db", "experiment_id": 3, "parent_run_id": "p", "experiment_name": "s",
             "run_ids": {"r75": {0: "a", 1: "b"}}}
    links = MlflowLinks.from_mapping(json.loads(json.dumps(plain)))
    assert links == MlflowLinks(tracking_uri="sqlite:///m.db", experiment_id="3", parent_run_id="p",
                                run_ids={"r75": {"0": "a", "1": "b"}})
    assert MlflowLinks.from_mapping(None) is None and MlflowLinks.from_mapping({}) is None
    assert [arm_state(s) for s in ([DONE, DONE], [DONE, FAILED, PENDING], [DONE, PENDING], [])] == [
        DONE, FAILED, PENDING, PENDING]
    assert StudyInfo(name="s", dataset="cifar10", profile="laptop").ours_label == "ours (cifar10, profile laptop)"
    assert StudyInfo(name="s").ours_label == "ours" and Status("done") is DONE and DONE == "done"


def test_report_rejects_unknown_names(tmp_path):
    with pytest.raises(KeyError, match="valid"):
        write_report(tmp_path, study=StudyInfo(name="s"), results=mask_ratio_study(), history=pd.DataFrame(),
                     figures=["nope"], tables=[], recon_files={}, mlflow=None)
    assert not (tmp_path / "report.html").exists()


def test_run_url():
    assert run_url("http://127.0.0.1:5000/", 7, "abc") == "http://127.0.0.1:5000/#/experiments/7/runs/abc"


# --- what the study shows -----------------------------------------------------------------------

def three_seed_sweep() -> pd.DataFrame:
    """3 seeds of 4 ratios, planted: 0.75 best on linear probing, 0.9 a few points below, 0.5 within
    a hair of it (seed noise shared by every arm: seeds are paired)."""
    rows = []
    noise = {0: 0.0, 1: 0.6, 2: -0.5}
    planted = {"r20": (70.0, 86.0), "r50": (75.95, 88.0), "r75": (76.0, 88.0), "r90": (73.0, 87.9)}
    jitter = {"r20": (0.1, -0.1, 0.05), "r50": (0.15, -0.12, 0.02), "r75": (0.0, 0.0, 0.0), "r90": (0.2, -0.3, 0.1)}
    for arm, (lin, ft) in planted.items():
        ratio = int(arm[1:]) / 100
        for seed in range(3):
            rows.append(_row("mask_ratio", arm, seed, "done", _defaults(**{"model.mask_ratio": ratio}),
                             lin_top1=lin + noise[seed] + jitter[arm][seed], ft_top1=ft + 1.5 * noise[seed] + 2 * jitter[arm][seed]))
    return pd.DataFrame(rows)


def test_report_opens_with_a_verdict_per_arm_against_the_baseline(tmp_path):
    study = replace(STUDY, baseline="r75", equivalence_margin=1.0)
    page = write_report(tmp_path, study=study, results=three_seed_sweep(), history=pd.DataFrame(),
                        figures=["fig5_mask_ratio"], tables=["fig5_mask_ratio"]).read_text()
    shows = page[page.index("What the study shows"):page.index("<h2>Arms</h2>")]
    assert "over 3 paired seeds" in shows and "Holm" in shows and "±1 points" in shows
    findings = pd.read_csv(tmp_path / "tables" / "findings.csv")
    lin = findings[findings["metric"] == "linear probing"].set_index("arm")
    assert lin.loc["r20", "verdict"] == "worse" and lin.loc["r90", "verdict"] == "worse"
    assert lin.loc["r50", "verdict"] == "equivalent"
    # The paper (Figure 5): 25% and 90% are below 75% on linear probing by more than the margin; 50% too
    assert lin.loc["r20", "paper ordering"] == "reproduced" and lin.loc["r90", "paper ordering"] == "reproduced"
    assert lin.loc["r50", "paper ordering"] == "not reproduced"
    assert "worse" in shows and "reproduced" in shows


def test_one_seed_says_no_verdict_is_possible(tmp_path):
    results = three_seed_sweep().query("seed == 0")
    page = write_report(tmp_path, study=replace(STUDY, baseline="r75"), results=results, history=pd.DataFrame(),
                        figures=["fig5_mask_ratio"], tables=["fig5_mask_ratio"]).read_text()
    assert "One seed per arm: no interval and no verdict is possible" in page
    findings = pd.read_csv(tmp_path / "tables" / "findings.csv")
    assert set(findings["verdict"]) == {"no verdict"}
    fig = FIGURES["fig5_mask_ratio"](results, pd.DataFrame())
    ours_title = fig.subfigs[0].get_suptitle()
    assert "1 seed per arm: no interval" in ours_title


def test_a_trend_study_is_judged_as_a_trend(tmp_path):
    rows = []
    for epochs, lin in ((2, 60.0), (4, 63.0), (8, 66.2), (16, 69.0)):
        for seed, noise in enumerate((0.0, 0.4, -0.3)):
            rows.append(_row("schedule", f"epochs={epochs}", seed, "done", _defaults(**{"pretrain.epochs": epochs}),
                             lin_top1=lin + noise, ft_top1=80.0 + 0.05 * noise))
    page = write_report(tmp_path, study=replace(STUDY, name="schedule", trend="pretrain.epochs"),
                        results=pd.DataFrame(rows), history=pd.DataFrame(), figures=[],
                        tables=["fig7_schedule"]).read_text()
    findings = pd.read_csv(tmp_path / "tables" / "findings.csv").set_index("metric")
    assert findings.loc["linear probing", "verdict"] == "rises"
    assert findings.loc["linear probing", "paper ordering"] == "reproduced"  # Figure 7 rises too
    assert findings.loc["fine-tuning", "verdict"] == "flat"
    assert "per doubling" in page
    # The paper's finding this study tests (dashboards/claims.yaml), judged in the same words.
    claims = page[page.index("The paper's findings tested here"):page.index("<h2>Arms</h2>")]
    assert "1 of 1 of the paper&#x27;s findings reproduced at this scale" in claims
    assert "Longer pre-training keeps improving the linear probe" in claims and "reproduced" in claims
    assert "Figure 7: lin top-1 57.3" in (tmp_path / "tables" / "claims.md").read_text()


def test_the_search_per_epoch_figure_names_seeds_not_candidates():
    """Three seeds of eight candidates (some pruned): a line per finished candidate in its seed's
    colour, pruned ones dashed and stopped where the pruner stopped them; the legend names the
    seeds (Optuna's own figure listed 24 candidates and overflowed)."""
    import optuna

    from dashboards.search import per_epoch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies, drawn = {}, []
    for seed in range(3):
        study = optuna.create_study(direction="maximize")
        for k in range(8):
            trial = study.ask()
            epochs = 2 if k % 3 == 2 else 6  # every third candidate pruned after 2 of 6 epochs
            curve = [50 + 5 * e + k + seed for e in range(epochs)]
            for e, value in enumerate(curve, start=1):
                trial.report(value, e)
            pruned = epochs < 6
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else None,
                       values=None if pruned else curve[-1])
            drawn.append((seed, pruned, list(range(1, epochs + 1)), curve))
        study.ask()  # a running candidate is not drawn
        studies[seed] = study
    fig = per_epoch("mae · finetune", studies, "ft_val_top1")
    ax = fig.axes[0]
    curves = [line for line in ax.get_lines() if line.get_marker() == "."]
    assert len(curves) == len(drawn) == 24
    by_seed: dict[int, set] = {}
    for line, (seed, pruned, steps, values) in zip(curves, drawn):
        assert list(line.get_xdata()) == steps and list(line.get_ydata()) == values
        assert line.get_linestyle() == ("--" if pruned else "-")
        by_seed.setdefault(seed, set()).add(line.get_color())
    assert all(len(colors) == 1 for colors in by_seed.values())  # one colour per seed ...
    assert len(set.union(*by_seed.values())) == 3  # ... a different one each
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert [(list(c.get_xdata()), list(c.get_ydata())) for c in crosses] == [
        (steps[-1:], values[-1:]) for _, pruned, steps, values in drawn if pruned]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1", "seed 2", "complete", "pruned"]
    assert ax.get_xlabel() == "epochs done" and ax.get_ylabel() == "ft_val_top1"
