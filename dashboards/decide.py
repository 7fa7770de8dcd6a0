"""Every interval and every verdict of a report: one place, one set of words.

Seeds are the unit of replication, and they are paired across arms (seed k of every arm shares
its data order and initialisation), so an arm is compared with the study's baseline arm by the
per-seed differences:

- An interval is a Student-t 95% confidence interval of a mean over n seeds (none with n < 2).
- A difference to the baseline is the mean of the paired per-seed differences with its own
  t-interval, and the paired t-test's p-value.
- Many arms are compared with one baseline at once: the verdicts control the family-wise error at
  5% with Holm's step-down adjustment over the arms of one metric. The intervals shown are the
  per-comparison 95% intervals (they say how large a difference is; the verdict says whether it
  is told apart from noise after the adjustment).
- A verdict is one of VERDICTS: `better` / `worse` when the Holm-adjusted two-sided p < 0.05;
  `equivalent` when two one-sided tests (TOST) put the difference inside +-margin (a study's
  equivalence margin, in the metric's units), Holm-adjusted p < 0.05; otherwise `within noise`:
  not told apart from the baseline, which is NOT a claim that they are equal. With fewer than two
  paired seeds there is no verdict.
- A comparison with the paper (AGREEMENT) asks whether our verdict has the paper's sign:
  `reproduced`, `not reproduced` or `inconclusive`.
- A trend (a study whose question is "does it keep rising", e.g. the schedule) is the slope of the
  metric against log2 of the axis over every (arm, seed) point, with its t-interval: `rises`,
  `falls` or `within noise`, or `flat` when the interval lies inside +-margin per doubling.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dashboards.contract import DONE


def _stats():
    """scipy.stats, imported when an interval is computed: the figures module imports this one, and
    a stage's worker draws its own pictures with it without computing any (scipy.stats: 0.5-0.7 s)."""
    from scipy import stats

    return stats

LEVEL = 0.95
ALPHA = 1 - LEVEL
DEFAULT_MARGIN = 1.0  # top-1 points: differences smaller than this count as "no practical difference"
BETTER, WORSE, EQUIVALENT, NOISE, NO_VERDICT = "better", "worse", "equivalent", "within noise", "no verdict"
VERDICTS = (BETTER, WORSE, EQUIVALENT, NOISE, NO_VERDICT)
RISES, FALLS, FLAT = "rises", "falls", "flat"
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
AGREEMENT = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% t-interval over n values; `low`/`high` are NaN when n < 2."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    def text(self, digits: int = 1) -> str:
        """'76.2 ± 0.4 (n=3)', or '76.2 (n=1)' without an interval."""
        if math.isnan(self.mean):
            return "–"
        if math.isnan(self.half):
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f} (n={self.n})"


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[np.isfinite(array)]


def interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of `values` (non-finite ones dropped) with its Student-t interval."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(_stats().t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline on one metric: the paired difference (arm - baseline) and
    its verdict. `p` is the paired t-test's two-sided p-value, `p_equivalent` the TOST p-value
    for |difference| < margin, both before adjustment; `p_adjusted*` after Holm."""

    arm: str
    metric: str
    difference: Interval
    p: float
    p_equivalent: float
    margin: float
    higher_is_better: bool = True
    p_adjusted: float = math.nan
    p_equivalent_adjusted: float = math.nan
    verdict: str = NO_VERDICT

    def difference_text(self, digits: int = 1) -> str:
        """'+1.2 [+0.4, +2.0] (n=3)': the mean paired difference and its interval."""
        d = self.difference
        if math.isnan(d.mean):
            return "–"
        if math.isnan(d.half):
            return f"{d.mean:+.{digits}f} (n={d.n})"
        return f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}] (n={d.n})"

    def text(self, digits: int = 1) -> str:
        """The difference and the verdict: '+1.2 [+0.4, +2.0] (n=3): better'."""
        if math.isnan(self.difference.mean):
            return NO_VERDICT
        return f"{self.difference_text(digits)}: {self.verdict}"


def paired_values(arm: Mapping[int, float], base: Mapping[int, float]) -> np.ndarray:
    """arm[seed] - base[seed] over the seeds both have with finite values, in seed order."""
    seeds = sorted(s for s in set(arm) & set(base)
                   if np.isfinite(float(arm[s])) and np.isfinite(float(base[s])))
    return np.array([float(arm[s]) - float(base[s]) for s in seeds], dtype=float)


def compare(arm: str, metric: str, arm_values: Mapping[int, float], base_values: Mapping[int, float],
            margin: float = DEFAULT_MARGIN, higher_is_better: bool = True) -> Comparison:
    """The unadjusted comparison of one arm with the baseline (seed -> value on both sides)."""
    d = paired_values(arm_values, base_values)
    diff = interval(d)
    n = len(d)
    if n < 2:
        return Comparison(arm, metric, diff, math.nan, math.nan, margin, higher_is_better)
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # identical differences: the sign is certain, equivalence is a matter of the margin
        p = 0.0 if diff.mean != 0 else 1.0
        p_eq = 0.0 if abs(diff.mean) < margin else 1.0
    else:
        se = sd / math.sqrt(n)
        p = float(2 * _stats().t.sf(abs(diff.mean) / se, n - 1))
        p_lower = float(_stats().t.sf((diff.mean + margin) / se, n - 1))  # H0: d <= -margin
        p_upper = float(_stats().t.cdf((diff.mean - margin) / se, n - 1))  # H0: d >= +margin
        p_eq = max(p_lower, p_upper)
    return Comparison(arm, metric, diff, p, p_eq, margin, higher_is_better)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(list(p_values), dtype=float)
    out = np.full(len(p), math.nan)
    tested = [i for i in range(len(p)) if np.isfinite(p[i])]
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(sorted(tested, key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def decide(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm-adjust a family (one metric, every arm against the baseline) and give each a verdict."""
    from dataclasses import replace

    p_adj = holm([c.p for c in comparisons])
    p_eq_adj = holm([c.p_equivalent for c in comparisons])
    out = []
    for c, pa, pe in zip(comparisons, p_adj, p_eq_adj):
        if math.isnan(pa):
            verdict = NO_VERDICT
        elif pa < alpha:
            verdict = BETTER if (c.difference.mean > 0) == c.higher_is_better else WORSE
        elif pe < alpha:
            verdict = EQUIVALENT
        else:
            verdict = NOISE
        out.append(replace(c, p_adjusted=pa, p_equivalent_adjusted=pe, verdict=verdict))
    return out


def agreement(verdict: str, paper_difference: float | None, margin: float = DEFAULT_MARGIN,
              higher_is_better: bool = True) -> str:
    """Does our verdict show the paper's difference (arm - baseline, in the metric's units)?

    The paper's difference counts as a direction when it is at least `margin`; below that the
    paper shows no practical difference, which our `equivalent` reproduces."""
    if paper_difference is None or not math.isfinite(paper_difference) or verdict in (NO_VERDICT, NOISE):
        return INCONCLUSIVE
    if abs(paper_difference) < margin:
        return REPRODUCED if verdict == EQUIVALENT else NOT_REPRODUCED
    paper_says = BETTER if (paper_difference > 0) == higher_is_better else WORSE
    return REPRODUCED if verdict == paper_says else NOT_REPRODUCED


@dataclass(frozen=True)
class Trend:
    """The slope of a metric per doubling of an axis, with its t-interval, and its verdict."""

    metric: str
    slope: Interval
    p: float
    verdict: str

    def text(self, digits: int = 2) -> str:
        s = self.slope
        if math.isnan(s.half):
            return f"{NO_VERDICT} (n={s.n})"
        return (f"{s.mean:+.{digits}f} per doubling [{s.low:+.{digits}f}, {s.high:+.{digits}f}] "
                f"(n={s.n}): {self.verdict}")


def trend(metric: str, x: Sequence[float], y: Sequence[float], margin: float = DEFAULT_MARGIN,
          alpha: float = ALPHA) -> Trend:
    """Least-squares slope of y on log2(x) over every (arm, seed) point, with a t-interval on
    n - 2 degrees of freedom: rises / falls when the two-sided p < alpha, flat when the whole
    interval lies inside +-margin per doubling, within noise otherwise."""
    xy = np.array([(a, b) for a, b in zip(x, y) if np.isfinite(a) and np.isfinite(b) and a > 0], dtype=float)
    n = len(xy)
    if n < 3 or len(np.unique(xy[:, 0])) < 2:
        return Trend(metric, Interval(math.nan, math.nan, math.nan, n), math.nan, NO_VERDICT)
    fit = _stats().linregress(np.log2(xy[:, 0]), xy[:, 1])
    half = float(_stats().t.ppf(1 - alpha / 2, n - 2) * fit.stderr)
    slope = Interval(float(fit.slope), float(fit.slope) - half, float(fit.slope) + half, n)
    if fit.pvalue < alpha:
        verdict = RISES if fit.slope > 0 else FALLS
    elif -margin < slope.low and slope.high < margin:
        verdict = FLAT
    else:
        verdict = NOISE
    return Trend(metric, slope, float(fit.pvalue), verdict)


def trend_agreement(verdict: str, paper_rises: bool | None) -> str:
    """Does our trend show the paper's direction (True: the paper's metric rises along the axis)?"""
    if paper_rises is None or verdict in (NO_VERDICT, NOISE):
        return INCONCLUSIVE
    return REPRODUCED if verdict == (RISES if paper_rises else FALLS) else NOT_REPRODUCED


def y_span(lows: Sequence[float], highs: Sequence[float], minimum: float = 2.0) -> tuple[float, float] | None:
    """A y-range covering every interval and at least `minimum` wide (centred), so that an axis
    never zooms into noise and turns a 0.1-point difference into a slope; None without data."""
    values = _finite([*lows, *highs])
    if not len(values):
        return None
    low, high = float(values.min()), float(values.max())
    pad = max(minimum - (high - low), 0.0) / 2 + 0.08 * max(high - low, minimum)
    return low - pad, high + pad


# ------------------------------------------------------------------------------ from a results table
def done_rows(results):
    """The rows of a results table whose (arm, seed) is done (all rows of a table without `status`)."""
    return results[results["status"] == DONE] if "status" in results else results


def by_seed(results, arm: str, metric: str) -> dict[int, float]:
    """seed -> value of `metric` for one arm, over the seeds that are done (a results table:
    one row per arm and seed, with `arm`, `seed`, `status` columns)."""
    if metric not in results or results.empty:
        return {}
    rows = done_rows(results[results["arm"] == arm])
    out = {}
    for seed, value in zip(rows["seed"], rows[metric]):
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[int(seed)] = value
    return out


def against_baseline(results, baseline: str, metrics: Sequence[str],
                     margin: float = DEFAULT_MARGIN) -> list[Comparison]:
    """Every other arm against `baseline` on each metric, Holm-adjusted per metric (one family
    per metric: the arms of one table column), in the table's arm order."""
    arms = [a for a in dict.fromkeys(results["arm"]) if a != baseline] if "arm" in results else []
    out: list[Comparison] = []
    for metric in metrics:
        base = by_seed(results, baseline, metric)
        if not base:
            continue
        family = [compare(arm, metric, by_seed(results, arm, metric), base, margin) for arm in arms]
        out += decide(family)
    return out
