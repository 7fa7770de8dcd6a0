"""The paper's tables with our numbers beside them.

Every table is `fn(results) -> DataFrame`, one row per axis value, ours and the
paper's columns side by side (`ours ft`, `ours lin`, `paper ft`, `paper lin`), joined
on the axis key. A key only one side has keeps its row with the other side empty,
so a partial study still renders. `aggregate` is the one place where seeds are
averaged; figures use it too.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from dashboards import decide, paper
from dashboards.contract import DONE, FAILED, METRICS, PENDING, arm_state

SHORT = {"ft_top1": "ft", "lin_top1": "lin"}


def axis_columns(results: pd.DataFrame) -> list[str]:
    """Config axes are the columns named by a dotted config key."""
    return [c for c in results.columns if "." in c]


def varying_axes(results: pd.DataFrame) -> list[str]:
    """Axes whose value differs between arms."""
    if results.empty:
        return []
    firsts = results.groupby("arm", sort=False).first()
    return [c for c in axis_columns(results) if firsts[c].nunique(dropna=False) > 1]


def aggregate(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per arm, in first-seen order: its axis values, state, seed counts, and per
    metric `{m}_mean`, `{m}_std` (sample, ddof 1; NaN with one seed), `{m}_min`, `{m}_max`,
    the 95% t-interval `{m}_low`, `{m}_high` and its half-width `{m}_half` (NaN with one seed),
    `{m}_n` over the seeds that are done and have a finite value. A metric column absent
    from `results` is absent from the output too.
    """
    if "arm" not in results.columns:
        return pd.DataFrame(columns=["arm", "state", "seeds_done", "seeds_failed", "seeds_total"])
    if metrics is None:
        metrics = [m for m in METRICS if m in results.columns]
    metrics = [m for m in metrics if m in results.columns]
    axes = axis_columns(results)
    rows = []
    for arm, group in results.groupby("arm", sort=False):
        statuses = group["status"].tolist() if "status" in group else [DONE] * len(group)
        row = {"arm": arm, **{a: group[a].iloc[0] for a in axes},
               "state": arm_state(statuses),
               "seeds_done": sum(s == DONE for s in statuses),
               "seeds_failed": sum(s == FAILED for s in statuses),
               "seeds_total": len(group)}
        done = group[group["status"] == DONE] if "status" in group else group
        for m in metrics:
            values = pd.to_numeric(done[m], errors="coerce").to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            row[f"{m}_n"] = len(values)
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{m}_min"] = values.min() if len(values) else math.nan
            row[f"{m}_max"] = values.max() if len(values) else math.nan
            ci = decide.interval(values)
            row[f"{m}_low"], row[f"{m}_high"], row[f"{m}_half"] = ci.low, ci.high, ci.half
        rows.append(row)
    columns = ["arm", *axes, "state", "seeds_done", "seeds_failed", "seeds_total"]
    return pd.DataFrame(rows, columns=columns + [c for r in rows[:1] for c in r if c not in columns])


def status_counts(results: pd.DataFrame) -> dict[str, int]:
    """Arms by state, plus `total`."""
    states = aggregate(results, metrics=[])["state"] if not results.empty else pd.Series([], dtype=str)
    return {DONE: int((states == DONE).sum()), FAILED: int((states == FAILED).sum()),
            PENDING: int((states == PENDING).sum()), "total": len(states)}


def baseline_arm(results: pd.DataFrame) -> tuple[str | None, str]:
    """The arm speedups are measured against, and why: `results.attrs["baseline_arm"]` when set,
    else the mask-token-in-encoder arm (the deepest decoder among several, as in Table 2),
    else the slowest arm."""
    if results.empty:
        return None, "no arms"
    agg = aggregate(results, ["pretrain_wall_clock_s"])
    chosen = results.attrs.get("baseline_arm")
    if chosen is not None and chosen in set(agg["arm"]):
        return chosen, f"speedup vs arm '{chosen}' (set by the study)"
    if "model.mask_token_in_encoder" in agg:
        with_token = agg[agg["model.mask_token_in_encoder"].map(_is_true)]
        if not with_token.empty:
            if "model.decoder_depth" in with_token:
                with_token = with_token.sort_values("model.decoder_depth", ascending=False, kind="stable")
            arm = with_token["arm"].iloc[0]
            return arm, f"speedup vs arm '{arm}' (mask token in encoder)"
    if "pretrain_wall_clock_s_mean" in agg and agg["pretrain_wall_clock_s_mean"].notna().any():
        arm = agg.loc[agg["pretrain_wall_clock_s_mean"].idxmax(), "arm"]
        return arm, f"no mask-token arm: speedup vs the slowest arm '{arm}'"
    return None, "no wall-clock measured"


def speedups(results: pd.DataFrame) -> tuple[pd.Series, str]:
    """Per arm (index), baseline wall-clock / arm wall-clock; the note says against what."""
    agg = aggregate(results, ["pretrain_wall_clock_s"]).set_index("arm")
    base, note = baseline_arm(results)
    if base is None or "pretrain_wall_clock_s_mean" not in agg:
        return pd.Series(math.nan, index=agg.index), note
    return agg.loc[base, "pretrain_wall_clock_s_mean"] / agg["pretrain_wall_clock_s_mean"], note


def _is_true(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else False


def _seeds_label(row) -> str:
    label = f"{row['seeds_done']}/{row['seeds_total']}"
    return label if row["state"] == DONE else f"{label} {row['state']}"


def _normalise_key(series: pd.Series, like: pd.Series) -> pd.Series:
    """Bring our key values to the paper's type so the join matches (0.75 == 0.7500001, 8 == 8.0)."""
    if pd.api.types.is_bool_dtype(like):
        return series.map(lambda v: _is_true(v) if pd.notna(v) else v).astype(object)
    if pd.api.types.is_numeric_dtype(like):
        return pd.to_numeric(series, errors="coerce").astype(float).round(6)
    return series.astype(object)


def _side_by_side(results: pd.DataFrame, ref: pd.DataFrame, keys: list[str],
                  ours: dict[str, str], theirs: dict[str, str], *, numeric_sort: bool,
                  prepare: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                  derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Join our per-arm means (`ours`: metric -> column) and the paper's rows (`theirs`:
    paper column -> column) on `keys`. Our rows lacking a key column get NaN there.
    `prepare` edits the results before averaging; `derive` adds key columns to the per-arm table."""
    results = prepare(results) if prepare else results
    agg = aggregate(results, list(ours))
    agg = derive(agg) if derive else agg
    left = pd.DataFrame({"arm": agg["arm"], "seeds": agg.apply(_seeds_label, axis=1) if len(agg) else []})
    for k in keys:
        left[k] = _normalise_key(agg[k], ref[k]) if k in agg else math.nan
    for metric, column in ours.items():
        left[column] = agg[f"{metric}_mean"] if f"{metric}_mean" in agg else math.nan
    for metric, column in ours.items():  # the 95% interval next to the means, only when seeds were repeated
        if metric.endswith("top1") and f"{metric}_n" in agg and (agg[f"{metric}_n"] > 1).any():
            left[f"{column} ±"] = agg[f"{metric}_half"]
    right = ref[keys + list(theirs)].rename(columns=theirs).copy()
    right["_paper_order"] = range(len(right))
    for k in keys:
        right[k] = _normalise_key(right[k], ref[k])
    table = left.merge(right, on=keys, how="outer", sort=False)
    if numeric_sort:
        table = table.sort_values(keys, kind="stable", na_position="last")
    else:
        table = table.sort_values("_paper_order", kind="stable", na_position="last")
    ours_columns = [c for column in ours.values() for c in (column, f"{column} ±") if c in left.columns]
    columns = keys + ["arm", "seeds"] + ours_columns + list(theirs.values())
    return table[columns].reset_index(drop=True)


def _accuracy_table(ref: pd.DataFrame, keys: list[str], numeric_sort: bool) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def table(results: pd.DataFrame) -> pd.DataFrame:
        return _side_by_side(results, ref, keys, {"ft_top1": "ours ft", "lin_top1": "ours lin"},
                             {"ft_top1": "paper ft", "lin_top1": "paper lin"}, numeric_sort=numeric_sort)
    return table


table1a = _accuracy_table(paper.TABLE1A, ["model.decoder_depth"], numeric_sort=True)
table1b = _accuracy_table(paper.TABLE1B, ["model.decoder_embed_dim"], numeric_sort=True)
table1d = _accuracy_table(paper.TABLE1D, ["model.target"], numeric_sort=False)
table1e = _accuracy_table(paper.TABLE1E, ["data.augmentation"], numeric_sort=False)
table1f = _accuracy_table(paper.TABLE1F, ["model.mask_sampling", "model.mask_ratio"], numeric_sort=False)
fig5_mask_ratio = _accuracy_table(paper.FIG5, ["model.mask_ratio"], numeric_sort=True)
fig7_schedule = _accuracy_table(paper.FIG7, ["pretrain.epochs"], numeric_sort=True)


def decoder_role(depth) -> str:
    """Table 2 compares three configurations, not depths: the study's default decoder and a
    1-block one. Our default depth differs from the paper's 8, so rows are matched by role."""
    return "1 block" if pd.notna(depth) and float(depth) == 1 else "default"


def _with_decoder_role(agg: pd.DataFrame) -> pd.DataFrame:
    depth = agg["model.decoder_depth"] if "model.decoder_depth" in agg else pd.Series(math.nan, index=agg.index)
    return agg.assign(decoder=depth.map(decoder_role))


def table1c(results: pd.DataFrame) -> pd.DataFrame:
    """Mask token in the encoder: accuracy, training FLOPs relative to the arm without the
    token (default decoder), and pre-training wall-clock. The paper's rows use its default
    decoder, so an arm with a 1-block decoder gets no paper numbers (see `decoder_role`)."""
    ref = paper.TABLE1C.assign(decoder="default")
    table = _side_by_side(results, ref, ["model.mask_token_in_encoder", "decoder"],
                          {"ft_top1": "ours ft", "lin_top1": "ours lin",
                           "train_flops_per_img": "ours FLOPs", "pretrain_wall_clock_s": "ours wall-clock (s)"},
                          {"ft_top1": "paper ft", "lin_top1": "paper lin", "train_flops_ratio": "paper FLOPs ratio"},
                          numeric_sort=False, derive=_with_decoder_role)
    is_without = table["model.mask_token_in_encoder"].map(lambda v: isinstance(v, (bool, np.bool_)) and not v)
    without = table[is_without & (table["decoder"] == "default")]["ours FLOPs"].dropna()
    table.insert(table.columns.get_loc("ours FLOPs"), "ours FLOPs ratio",
                 table["ours FLOPs"] / without.iloc[0] if len(without) else math.nan)
    table = table.drop(columns=[c for c in table.columns if c.startswith("ours FLOPs") and "ratio" not in c])
    table.attrs["notes"] = ["FLOPs ratio: training FLOPs per image relative to the encoder without the mask "
                            "token and with the default decoder"]
    return table


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Wall-clock of pre-training and speedup against the mask-token baseline arm, next to the
    paper's ViT-L and ViT-H hours (800 epochs, 128 TPU-v3 cores), matched on (mask token in
    encoder, decoder role): the default decoder (the paper's 8 blocks, ours whatever the
    profile's is) or a 1-block decoder."""
    ref = paper.TABLE2.assign(decoder=paper.TABLE2["model.decoder_depth"].map(decoder_role))
    keys = ["model.mask_token_in_encoder", "decoder"]
    vit_l = ref[ref["encoder"] == "ViT-L"].reset_index(drop=True)
    vit_h = ref[ref["encoder"] == "ViT-H"][keys + ["wall_clock_h", "speedup"]]
    vit_h = vit_h.rename(columns={"wall_clock_h": "vit_h_wall_clock_h", "speedup": "vit_h_speedup"})
    ref_wide = vit_l.merge(vit_h, on=keys)

    table = _side_by_side(results, ref_wide, keys,
                          {"pretrain_wall_clock_s": "ours wall-clock (s)", "img_per_s": "ours img/s"},
                          {"model.decoder_depth": "paper decoder depth",
                           "wall_clock_h": "paper ViT-L wall-clock (h)", "speedup": "paper ViT-L speedup",
                           "vit_h_wall_clock_h": "paper ViT-H wall-clock (h)", "vit_h_speedup": "paper ViT-H speedup"},
                          numeric_sort=False, derive=_with_decoder_role)
    ours_depth = results.groupby("arm")["model.decoder_depth"].first() if "model.decoder_depth" in results \
        else pd.Series(dtype=float)
    table.insert(table.columns.get_loc("seeds") + 1, "ours decoder depth", table["arm"].map(ours_depth))
    ratio, note = speedups(results)
    table.insert(table.columns.get_loc("ours img/s") + 1, "ours speedup", table["arm"].map(ratio))
    table.attrs["notes"] = [note, "rows matched on mask token and decoder role (default or 1 block), "
                                  "not on depth: our default decoder is smaller than the paper's 8 blocks",
                            "paper: ViT-H with the mask token in the encoder is the paper's estimate",
                            f"paper: decoder width 512, mask ratio 75%; the default decoder costs "
                            f"{paper.DECODER_FLOPS_SHARE:.0%} of ViT-L's FLOPs per token"]
    return table


def blocks_top1(results: pd.DataFrame) -> pd.DataFrame:
    """Figure 9's accuracy per row: fine-tune top-1, and with 0 blocks tuned the linear probe
    (the paper's 0-block point is linear probing) when no fine-tune number is there."""
    results = results.copy()
    ft = results["ft_top1"] if "ft_top1" in results else pd.Series(math.nan, index=results.index)
    if "lin_top1" in results and "finetune.tune_blocks" in results:
        zero = pd.to_numeric(results["finetune.tune_blocks"], errors="coerce") == 0
        ft = ft.where(~(zero & ft.isna()), results["lin_top1"])
    results["blocks_top1"] = ft
    return results


def fig9_partial_finetune(results: pd.DataFrame) -> pd.DataFrame:
    table = _side_by_side(results, paper.FIG9, ["finetune.tune_blocks"], {"blocks_top1": "ours top-1"},
                          {"mae": "paper MAE", "moco_v3": "paper MoCo v3"}, numeric_sort=True,
                          prepare=blocks_top1)
    table.attrs["nan_as"] = {"finetune.tune_blocks": "all"}
    table.attrs["notes"] = ["0.5 blocks: only the MLP sub-block of the last block is tuned",
                            "0 blocks: linear probing; paper 24 blocks = all of ViT-L"]
    return table


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """Pre-trained and fine-tuned against trained from scratch with the same recipe: our arms, then
    the paper's models (no shared key: the rows stack, ours first)."""
    agg = aggregate(results, ["lin_top1", "ft_top1", "scratch_top1"])
    mean = {m: agg[f"{m}_mean"] if f"{m}_mean" in agg else pd.Series(math.nan, index=agg.index)
            for m in ("lin_top1", "ft_top1", "scratch_top1")}
    ours = pd.DataFrame({"model": "ours", "arm": agg["arm"],
                         "seeds": agg.apply(_seeds_label, axis=1) if len(agg) else [],
                         "ours ft": mean["ft_top1"], "ours scratch": mean["scratch_top1"],
                         "ours gain": mean["ft_top1"] - mean["scratch_top1"]})
    if mean["lin_top1"].notna().any():  # e.g. an MAE arm against a random encoder (pretrain.epochs 0)
        ours.insert(3, "ours linear", mean["lin_top1"])
    ref = paper.TABLE3
    theirs = pd.DataFrame({"model": ref["model"], "paper ft": ref["ft_top1"], "paper scratch": ref["scratch_top1"],
                           "paper gain": ref["ft_top1"] - ref["scratch_top1"]})
    table = pd.concat([ours, theirs], ignore_index=True)
    table.attrs["notes"] = ["gain: fine-tuned after MAE pre-training minus trained from scratch, top-1 points",
                            "paper: norm-pixel targets, 1600 epochs of pre-training; scratch with the paper's "
                            "improved recipe"]
    return table


TABLES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "table1a": table1a,
    "table1b": table1b,
    "table1c": table1c,
    "table1d": table1d,
    "table1e": table1e,
    "table1f": table1f,
    "table2": table2,
    "fig5_mask_ratio": fig5_mask_ratio,
    "fig7_schedule": fig7_schedule,
    "fig9_partial_finetune": fig9_partial_finetune,
    "table3": table3,
}


def get_table(name: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; valid: {sorted(TABLES)}") from None


def format_cell(df: pd.DataFrame, column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return df.attrs.get("nan_as", {}).get(column, "–")
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if "." in column:  # an axis value: as written in the config
            return f"{value:g}"
        if column.endswith("depth"):
            return f"{value:g}"
        if "gain" in column or column.endswith("vs baseline"):
            return f"{value:+.1f}"
        if column.startswith("p ("):
            return f"{value:.3g}"
        if "speedup" in column or "ratio" in column:
            return f"{value:.1f}×"
        if column.endswith(" ±"):
            return f"±{value:.1f}"
        if column.endswith("(s)") or column.endswith("img/s"):
            return f"{value:,.0f}"
        return f"{value:.1f}"
    return str(value)


def _rows(df: pd.DataFrame) -> list[list[str]]:
    return [[format_cell(df, c, v) for c, v in zip(df.columns, row)] for row in df.itertuples(index=False)]


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table; numbers right-aligned; `df.attrs["notes"]` as lines below."""
    header = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _rows(df)]
    notes = df.attrs.get("notes", [])
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def to_html(df: pd.DataFrame) -> str:
    """A plain `<table class="ablate">`; paper columns carry class `paper`, ours `ours`."""
    def cls(column: str) -> str:
        side = "paper" if column.startswith("paper") else "ours" if column.startswith("ours") else "key"
        numeric = pd.api.types.is_numeric_dtype(df[column]) and not pd.api.types.is_bool_dtype(df[column])
        return f"{side} num" if numeric else side
    classes = [cls(c) for c in df.columns]
    head = "".join(f'<th class="{k}">{html.escape(str(c))}</th>' for c, k in zip(df.columns, classes))
    body = "".join("<tr>" + "".join(f'<td class="{k}">{html.escape(cell)}</td>' for cell, k in zip(row, classes))
                   + "</tr>\n" for row in _rows(df))
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in df.attrs.get("notes", []))
    return f'<table class="ablate">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n{notes}'
