"""The decision module on planted results, against values computed independently with scipy.stats."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dashboards import decide


def test_interval_is_the_student_t_interval():
    values = [75.1, 76.3, 74.8, 75.9]
    got = decide.interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got.n == 4 and got.mean == pytest.approx(np.mean(values))
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    assert got.text() == f"{np.mean(values):.1f} ± {(high - low) / 2:.1f} (n=4)"


def test_interval_of_one_value_has_none_and_non_finite_values_are_dropped():
    one = decide.interval([76.2, math.nan])
    assert one.n == 1 and one.mean == 76.2 and math.isnan(one.low) and math.isnan(one.half)
    assert one.text() == "76.2 (n=1)"
    assert decide.interval([]).n == 0 and decide.interval([]).text() == "–"


def test_paired_difference_and_tests_match_scipy():
    base = {0: 75.0, 1: 76.0, 2: 74.5, 3: 75.5}
    arm = {0: 75.8, 1: 76.5, 2: 75.6, 3: 75.9, 4: 99.0}  # seed 4 has no pair: left out
    c = decide.compare("a", "lin_top1", arm, base, margin=1.0)
    a, b = [arm[s] for s in range(4)], [base[s] for s in range(4)]
    d = np.subtract(a, b)
    assert c.difference.n == 4 and c.difference.mean == pytest.approx(d.mean())
    low, high = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert (c.difference.low, c.difference.high) == (pytest.approx(low), pytest.approx(high))
    assert c.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    tost = max(stats.ttest_1samp(d, -1.0, alternative="greater").pvalue,
               stats.ttest_1samp(d, 1.0, alternative="less").pvalue)
    assert c.p_equivalent == pytest.approx(tost)


def test_holm_matches_a_hand_computed_example():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert decide.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert decide.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = decide.holm([math.nan, 0.02])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.02)  # one test only: no adjustment


def planted(rng, mean: float, sd: float, seeds: int = 4) -> dict[int, float]:
    return {s: mean + sd * rng.standard_normal() for s in range(seeds)}


def test_verdicts_on_planted_effects():
    rng = np.random.default_rng(0)
    base = planted(rng, 75.0, 0.3)
    noise = {s: base[s] + e for s, e in enumerate(rng.normal(0, 0.05, 4))}
    arms = {
        "much better": {s: v + 5 for s, v in noise.items()},
        "much worse": {s: v - 5 for s, v in noise.items()},
        "same": {s: v + 0.02 for s, v in noise.items()},
        "noisy": {s: base[s] + d for s, d in enumerate([3.0, -2.5, 2.8, -1.0])},
    }
    family = decide.decide([decide.compare(name, "lin_top1", values, base) for name, values in arms.items()])
    verdicts = {c.arm: c.verdict for c in family}
    assert verdicts == {"much better": decide.BETTER, "much worse": decide.WORSE, "same": decide.EQUIVALENT,
                        "noisy": decide.NOISE}
    raw = [c.p for c in family]
    assert [c.p_adjusted for c in family] == pytest.approx(decide.holm(raw))
    one_seed = decide.decide([decide.compare("x", "lin_top1", {0: 80.0}, {0: 75.0})])[0]
    assert one_seed.verdict == decide.NO_VERDICT and one_seed.text() == "+5.0 (n=1): no verdict"


def test_holm_can_turn_a_single_test_significance_into_noise():
    """p = 0.03 alone is 'better'; as the smallest of three with 0.5 and 0.9 it is 0.09 after Holm."""
    d = np.array([1.0, 1.4, 0.6, 1.2, 0.9])
    base = {s: 75.0 for s in range(5)}
    shift = 0.0
    for shift in np.linspace(0.0, 1.5, 301):  # the shift whose paired p is near 0.03
        if stats.ttest_1samp(d * shift + 0.01 * np.arange(5), 0).pvalue < 0.03:
            break
    arm = {s: 75.0 + v for s, v in enumerate(d * shift + 0.01 * np.arange(5))}
    alone = decide.decide([decide.compare("a", "m", arm, base, margin=0.01)])[0]
    assert alone.verdict == decide.BETTER
    flat = {s: 75.0 + v for s, v in enumerate([0.5, -0.6, 0.4, -0.3, 0.1])}
    family = decide.decide([decide.compare("a", "m", arm, base, margin=0.01),
                            decide.compare("b", "m", flat, base, margin=0.01),
                            decide.compare("c", "m", flat, base, margin=0.01)])
    assert family[0].p_adjusted == pytest.approx(min(1.0, 3 * alone.p))
    assert family[0].verdict == decide.NOISE


def test_agreement_with_the_paper():
    assert decide.agreement(decide.BETTER, 2.0) == decide.REPRODUCED
    assert decide.agreement(decide.WORSE, 2.0) == decide.NOT_REPRODUCED
    assert decide.agreement(decide.EQUIVALENT, 2.0) == decide.NOT_REPRODUCED
    assert decide.agreement(decide.EQUIVALENT, 0.3) == decide.REPRODUCED  # the paper: no practical difference
    assert decide.agreement(decide.BETTER, 0.3) == decide.NOT_REPRODUCED
    assert decide.agreement(decide.NOISE, 5.0) == decide.INCONCLUSIVE
    assert decide.agreement(decide.NO_VERDICT, 5.0) == decide.INCONCLUSIVE
    assert decide.agreement(decide.BETTER, None) == decide.INCONCLUSIVE


def test_trend_matches_scipy_linregress():
    x = [2, 2, 4, 4, 8, 8, 16, 16]
    y = [70.1, 70.5, 71.9, 72.4, 73.2, 73.8, 75.0, 75.4]
    t = decide.trend("lin_top1", x, y)
    fit = stats.linregress(np.log2(x), y)
    half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr
    assert t.slope.mean == pytest.approx(fit.slope) and t.slope.half == pytest.approx(half)
    assert t.p == pytest.approx(fit.pvalue) and t.verdict == decide.RISES
    assert decide.trend("m", x, [-v for v in y]).verdict == decide.FALLS
    flat = decide.trend("m", x, [75.0 + 0.01 * ((-1) ** i) for i in range(8)])
    assert flat.verdict == decide.FLAT
    assert decide.trend("m", [2, 4], [1.0, 2.0]).verdict == decide.NO_VERDICT
    assert decide.trend_agreement(decide.RISES, True) == decide.REPRODUCED
    assert decide.trend_agreement(decide.FLAT, True) == decide.NOT_REPRODUCED
    assert decide.trend_agreement(decide.NOISE, True) == decide.INCONCLUSIVE


def test_y_span_never_zooms_into_noise():
    low, high = decide.y_span([75.9, 76.0], [75.9, 76.0])  # two points 0.1 apart
    assert high - low >= 2.0 and low < 75.9 and high > 76.0
    low, high = decide.y_span([60.0, 70.0], [65.0, 80.0])
    assert low < 60.0 and high > 80.0
    assert decide.y_span([math.nan], [math.nan]) is None


def test_against_baseline_reads_a_results_table():
    rows = []
    jitter = {"r=0.5": [0.1, -0.2, 0.1], "r=0.75": [0.0, 0.0, 0.0], "r=0.9": [0.05, -0.05, 0.02]}
    for seed in range(3):
        for arm, shift in (("r=0.5", -3.0), ("r=0.75", 0.0), ("r=0.9", 0.0)):
            rows.append({"arm": arm, "seed": seed, "status": "done",
                         "lin_top1": 75 + shift + seed + jitter[arm][seed]})
    rows.append({"arm": "r=0.9", "seed": 3, "status": "failed", "lin_top1": math.nan})
    out = decide.against_baseline(pd.DataFrame(rows), "r=0.75", ["lin_top1", "ft_top1"])
    assert [(c.arm, c.metric, c.verdict) for c in out] == [("r=0.5", "lin_top1", decide.WORSE),
                                                          ("r=0.9", "lin_top1", decide.EQUIVALENT)]
    assert out[0].difference.n == 3 and out[0].difference.mean == pytest.approx(-3.0)  # seed effects cancel
