"""What a study shows, in words: each arm against the baseline arm (or the trend along an axis),
and whether the paper's ordering holds. Every number and word comes from `dashboards.decide`.

The paper's difference for an arm is read from the study's own tables (their `paper lin` /
`paper ft` columns beside our arms), so no paper number is written twice.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from dashboards import decide
from dashboards.contract import StudyInfo

# The accuracies a verdict is given for, with their names in words and their paper columns.
JUDGED = {"lin_top1": ("linear probing", "paper lin"), "ft_top1": ("fine-tuning", "paper ft"),
          "scratch_top1": ("training from scratch", None)}


@dataclass
class Findings:
    """The opening of a report: sentences, and one row per (arm or trend, metric)."""

    sentences: list[str]
    rows: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)  # agreement word -> how many comparisons


def paper_values(tables: Sequence[pd.DataFrame], column: str) -> dict[str, float]:
    """arm -> the paper's number beside it in any of the study's tables."""
    out: dict[str, float] = {}
    for table in tables:
        if "arm" not in table or column not in table:
            continue
        for arm, value in zip(table["arm"], table[column]):
            if isinstance(arm, str) and pd.notna(value) and arm not in out:
                out[arm] = float(value)
    return out


def _seeds(results: pd.DataFrame) -> int:
    if results.empty or "seed" not in results:
        return 0
    done = decide.done_rows(results)
    return int(done.groupby("arm")["seed"].nunique().max()) if len(done) else 0


def against_baseline(results: pd.DataFrame, baseline: str, tables: Sequence[pd.DataFrame],
                     margin: float = decide.DEFAULT_MARGIN) -> Findings:
    metrics = [m for m in JUDGED if m in results and results[m].notna().any()]
    comparisons = decide.against_baseline(results, baseline, metrics, margin)
    rows, counts = [], {word: 0 for word in decide.AGREEMENT}
    for c in comparisons:
        what, column = JUDGED[c.metric]
        paper = paper_values(tables, column) if column else {}
        paper_diff = paper[c.arm] - paper[baseline] if c.arm in paper and baseline in paper else None
        agree = decide.agreement(c.verdict, paper_diff, margin) if paper_diff is not None else None
        if agree is not None:
            counts[agree] += 1
        ours = decide.interval(decide.by_seed(results, c.arm, c.metric).values())
        rows.append({"arm": c.arm, "metric": what, "ours": ours.text(), "vs baseline": c.difference_text(),
                     "verdict": c.verdict, "p (Holm)": c.p_adjusted,
                     "paper vs baseline": paper_diff if paper_diff is not None else math.nan,
                     "paper ordering": agree or "–"})
    seeds = _seeds(results)
    base = f"the baseline arm {baseline}"
    if seeds < 2:
        sentences = [f"One seed per arm: no interval and no verdict is possible, so differences between arms "
                     f"cannot be told from seed-to-seed noise. Run more seeds (ablate run <study> --seeds 3) "
                     f"to judge each arm against {base}."]
    else:
        arms = len({c.arm for c in comparisons})
        sentences = [f"Each arm against {base}, over {seeds} paired seeds (95% t-intervals of the per-seed "
                     f"differences; verdicts Holm-adjusted over the {arms} arms of each metric; "
                     f"'equivalent' means inside ±{margin:g} points, 'within noise' means not told apart, "
                     f"not equal)."]
        for metric in metrics:
            said = [f"{c.arm} {c.verdict} ({c.difference_text()})" for c in comparisons if c.metric == metric]
            if said:
                sentences.append(f"{JUDGED[metric][0].capitalize()}: " + "; ".join(said) + ".")
    judged = sum(counts.values())
    if judged:
        sentences.append(f"The paper's ordering against its baseline row: {counts[decide.REPRODUCED]} of {judged} "
                         f"comparisons reproduced, {counts[decide.NOT_REPRODUCED]} not reproduced, "
                         f"{counts[decide.INCONCLUSIVE]} inconclusive.")
    return Findings(sentences, pd.DataFrame(rows), counts)


def along_trend(results: pd.DataFrame, axis: str, tables: Sequence[pd.DataFrame],
                margin: float = decide.DEFAULT_MARGIN) -> Findings:
    """The slope per doubling of `axis` for each accuracy, and whether the paper's direction holds."""
    done = decide.done_rows(results)
    rows, counts = [], {word: 0 for word in decide.AGREEMENT}
    sentences = []
    for metric, (what, column) in JUDGED.items():
        if metric not in done or axis not in done or not done[metric].notna().any():
            continue
        t = decide.trend(metric, pd.to_numeric(done[axis], errors="coerce"), pd.to_numeric(done[metric], errors="coerce"),
                         margin)
        paper_rises = _paper_rises(tables, axis, column) if column else None
        agree = decide.trend_agreement(t.verdict, paper_rises) if paper_rises is not None else None
        if agree is not None:
            counts[agree] += 1
        rows.append({"axis": axis, "metric": what, "slope per doubling": t.text(), "verdict": t.verdict,
                     "paper": "–" if paper_rises is None else ("rises" if paper_rises else "falls"),
                     "paper ordering": agree or "–"})
        sentences.append(f"{what.capitalize()} along {axis}: {t.text()}.")
    seeds = _seeds(results)
    lead = (f"The trend along {axis}: least-squares slope of each accuracy per doubling of {axis} over every "
            f"(arm, seed) point, with its 95% interval ({seeds} seed{'s' if seeds != 1 else ''} per arm; 'flat' "
            f"means inside ±{margin:g} points per doubling, 'within noise' means not told apart).")
    judged = sum(counts.values())
    if judged:
        sentences.append(f"The paper's direction: {counts[decide.REPRODUCED]} of {judged} reproduced, "
                         f"{counts[decide.NOT_REPRODUCED]} not reproduced, {counts[decide.INCONCLUSIVE]} inconclusive.")
    return Findings([lead, *sentences], pd.DataFrame(rows), counts)


def _paper_rises(tables: Sequence[pd.DataFrame], axis: str, column: str) -> bool | None:
    for table in tables:
        if axis in table and column in table:
            rows = table[[axis, column]].dropna()
            rows = rows.assign(_x=pd.to_numeric(rows[axis], errors="coerce")).dropna().sort_values("_x")
            if len(rows) >= 2:
                return bool(rows[column].iloc[-1] > rows[column].iloc[0])
    return None


def study_findings(results: pd.DataFrame, study: StudyInfo, table_fns: Mapping[str, Callable]) -> Findings | None:
    """The study's own question: `baseline` (an arm) or `trend` (an axis key); None when it names neither."""
    if results.empty or "arm" not in results:
        return None
    tables = []
    for fn in table_fns.values():
        try:
            tables.append(fn(results))
        except Exception:  # noqa: BLE001 - a table that cannot be drawn only loses its paper numbers here
            continue
    margin = float(study.equivalence_margin or decide.DEFAULT_MARGIN)
    if study.trend:
        return along_trend(results, study.trend, tables, margin)
    if study.baseline and study.baseline in set(results["arm"]):
        return against_baseline(results, study.baseline, tables, margin)
    return None
