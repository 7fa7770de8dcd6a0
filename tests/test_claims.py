"""The paper's findings as claims: every predicate kind on planted results, its numbers against
scipy computed here independently, and the shipped claims file against the shipped studies."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dashboards import claims, decide
from dashboards.contract import METRICS

ROOT = Path(__file__).resolve().parents[1]


def planted(values: dict[str, list[float]], metric: str = "lin_top1", axis: str | None = None,
            position: dict[str, float] | None = None, extra: dict[str, dict[str, list[float]]] | None = None
            ) -> pd.DataFrame:
    """A results table: arm -> one value per seed (seed k paired across arms)."""
    rows = []
    for arm, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            row = {"study": "s", "arm": arm, "seed": seed, "status": "done", metric: value}
            if axis:
                row[axis] = position[arm]
            for other, by_arm in (extra or {}).items():
                row[other] = by_arm[arm][seed]
            rows.append(row)
    return pd.DataFrame(rows)


def claim(kind: str, **fields) -> claims._Claim:
    base = {"id": "c", "study": "s", "statement": "a statement", "paper": "the paper's numbers", "metric": "lin_top1"}
    (parsed,) = claims._CLAIMS.validate_python([{**base, "kind": kind, **fields}])
    return parsed


def holm(p: list[float]) -> list[float]:
    """Holm's adjustment written out: sorted ascending, scaled by (m - rank), kept monotone."""
    order = np.argsort(p)
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


# ---- sign ----------------------------------------------------------------------------------------

BASE = [70.0, 71.0, 69.5, 70.5]


def test_sign_follows_the_paired_t_test_both_ways_and_says_when_it_cannot_tell():
    higher = [b + d for b, d in zip(BASE, [1.0, 1.5, 0.8, 1.2])]
    results = planted({"a": higher, "b": BASE})
    p = stats.ttest_rel(higher, BASE).pvalue
    assert p < 0.05
    positive = claim("sign", a={"arm": "a"}, b={"arm": "b"}, sign="positive").judge(results)
    assert positive.agreement == decide.REPRODUCED and f"p = {p:.3g}" in positive.evidence
    assert "+1.1 [" in positive.evidence  # mean paired difference (1.0 + 1.5 + 0.8 + 1.2) / 4
    low, high = stats.t.interval(0.95, 3, loc=1.125, scale=stats.sem([1.0, 1.5, 0.8, 1.2]))
    assert f"[{low:+.1f}, {high:+.1f}]" in positive.evidence
    negative = claim("sign", a={"arm": "a"}, b={"arm": "b"}, sign="negative").judge(results)
    assert negative.agreement == decide.NOT_REPRODUCED

    noisy = planted({"a": [b + d for b, d in zip(BASE, [1.0, -1.0, 0.5, -0.4])], "b": BASE})
    assert stats.ttest_rel(noisy[noisy.arm == "a"].lin_top1, BASE).pvalue > 0.05
    judged = claim("sign", a={"arm": "a"}, b={"arm": "b"}, sign="positive").judge(noisy)
    assert judged.agreement == decide.INCONCLUSIVE and "within noise" in judged.evidence

    one_seed = claim("sign", a={"arm": "a"}, b={"arm": "b"}, sign="positive").judge(planted({"a": [75.0], "b": [70.0]}))
    assert one_seed.agreement == decide.INCONCLUSIVE and "no interval" in one_seed.evidence


def test_sign_compares_two_metrics_of_one_arm():
    """Fine-tuning after MAE against training from scratch: one arm, two metrics, paired by seed."""
    ft, scratch = [80.0, 81.0, 79.5], [72.0, 73.5, 71.0]
    results = planted({"mae": ft}, metric="ft_top1", extra={"scratch_top1": {"mae": scratch}})
    judged = claim("sign", metric="ft_top1", a={"arm": "mae"}, b={"arm": "mae", "metric": "scratch_top1"},
                   sign="positive").judge(results)
    assert judged.agreement == decide.REPRODUCED
    assert "mae ft_top1 - mae scratch_top1" in judged.evidence
    assert f"p = {stats.ttest_rel(ft, scratch).pvalue:.3g}" in judged.evidence


# ---- argmax_in_range -----------------------------------------------------------------------------

POSITION = {"r25": 0.25, "r50": 0.5, "r75": 0.75, "r90": 0.9}


def test_argmax_in_range_needs_the_best_arm_inside_to_beat_every_arm_outside_after_holm():
    values = {"r25": [60.0, 61.0, 59.0, 60.5], "r50": [68.0, 69.2, 67.1, 68.4],
              "r75": [73.0, 74.1, 72.6, 73.8], "r90": [70.0, 71.0, 69.0, 70.2]}
    results = planted(values, axis="model.mask_ratio", position=POSITION)
    c = claim("argmax_in_range", axis="model.mask_ratio", range=[0.6, 0.9])
    judged = c.judge(results)
    p = [stats.ttest_rel(values["r75"], values[o]).pvalue for o in ("r25", "r50")]
    assert max(holm(p)) < 0.05
    assert judged.agreement == decide.REPRODUCED
    assert judged.evidence.startswith("best inside [0.6, 0.9]: r75 ")
    assert "r75 - r25" in judged.evidence and "r75 - r50" in judged.evidence and "r90 -" not in judged.evidence

    # An arm outside the range better than the best inside: not reproduced.
    outside_best = {**values, "r50": [v + 3 + 0.1 * i for i, v in enumerate(values["r75"])]}
    assert c.judge(planted(outside_best, axis="model.mask_ratio", position=POSITION)).agreement == \
        decide.NOT_REPRODUCED
    # One arm outside only within noise of the best: inconclusive, though the means point the paper's way.
    close = {**values, "r50": [v + d for v, d in zip(values["r75"], [-0.6, 0.4, -0.9, 0.3])]}
    assert np.mean(close["r50"]) < np.mean(close["r75"])
    assert c.judge(planted(close, axis="model.mask_ratio", position=POSITION)).agreement == decide.INCONCLUSIVE
    # Nothing outside the range to beat.
    inside_only = planted({k: values[k] for k in ("r75", "r90")}, axis="model.mask_ratio", position=POSITION)
    judged = c.judge(inside_only)
    assert judged.agreement == decide.INCONCLUSIVE and "no measured arm outside" in judged.evidence


def test_holm_inside_argmax_matters_when_one_comparison_is_borderline():
    """Two arms outside: one clearly beaten, one at an unadjusted p between 0.025 and 0.05, which
    Holm's second step (p x 1) keeps only when the first (p x 2) passes: both orders checked."""
    best = [73.0, 74.0, 72.5, 73.5, 73.2]
    diffs = [0.4, 0.1, 0.9, 0.2, 0.6]
    borderline = [b - d for b, d in zip(best, diffs)]
    p_border = stats.ttest_rel(best, borderline).pvalue
    assert 0.0 < p_border < 0.05
    values = {"r75": best, "r50": borderline, "r25": [b - 10 - 0.1 * i for i, b in enumerate(best)]}
    results = planted(values, axis="model.mask_ratio", position=POSITION)
    judged = claim("argmax_in_range", axis="model.mask_ratio", range=[0.6, 0.9]).judge(results)
    expected = holm([stats.ttest_rel(best, values["r25"]).pvalue, p_border])
    assert (judged.agreement == decide.REPRODUCED) == (max(expected) < 0.05)


# ---- trend ---------------------------------------------------------------------------------------

def test_trend_is_the_slope_per_doubling_with_its_interval():
    epochs = {"e2": 2, "e4": 4, "e8": 8, "e16": 16}
    noise = [[0.3, -0.2, 0.1], [-0.1, 0.2, -0.3], [0.2, 0.0, -0.2], [-0.3, 0.1, 0.2]]
    values = {arm: [60 + 2.0 * math.log2(x) + n for n in noise[i]] for i, (arm, x) in enumerate(epochs.items())}
    results = planted(values, axis="pretrain.epochs", position=epochs)
    judged = claim("trend", axis="pretrain.epochs", direction="rises").judge(results)
    fit = stats.linregress(np.log2(results["pretrain.epochs"]), results["lin_top1"])
    assert judged.agreement == decide.REPRODUCED and f"{fit.slope:+.2f} per doubling" in judged.evidence
    falls = claim("trend", axis="pretrain.epochs", direction="falls").judge(results)
    assert falls.agreement == decide.NOT_REPRODUCED


# ---- ratio_exceeds and gap_fraction --------------------------------------------------------------

def test_an_exact_ratio_is_decided_by_one_seed_and_a_measured_one_by_its_interval():
    flops = planted({"w": [3.25e9], "wo": [1.0e9]}, metric="train_flops_per_img")
    c = claim("ratio_exceeds", metric="train_flops_per_img", a={"arm": "w"}, b={"arm": "wo"}, value=2.0, exact=True)
    judged = c.judge(flops)
    assert judged.agreement == decide.REPRODUCED and "= 3.25 (counted" in judged.evidence
    below = claim("ratio_exceeds", metric="train_flops_per_img", a={"arm": "w"}, b={"arm": "wo"}, value=4.0,
                  exact=True)
    assert below.judge(flops).agreement == decide.NOT_REPRODUCED

    a, b = [30.0, 33.0, 29.0, 31.0], [10.0, 10.5, 10.2, 9.8]
    ratios = [x / y for x, y in zip(a, b)]
    low, high = stats.t.interval(0.95, 3, loc=np.mean(ratios), scale=stats.sem(ratios))
    measured = planted({"w": a, "wo": b}, metric="img_per_s")
    for value, word in ((low - 0.01, decide.REPRODUCED), (high + 0.01, decide.NOT_REPRODUCED),
                        ((low + high) / 2, decide.INCONCLUSIVE)):
        c = claim("ratio_exceeds", metric="img_per_s", a={"arm": "w"}, b={"arm": "wo"}, value=value)
        judged = c.judge(measured)
        assert judged.agreement == word, (value, judged)
    assert f"{np.mean(ratios):.2f} ± {(high - low) / 2:.2f} (n=4)" in judged.evidence
    one = claim("ratio_exceeds", metric="img_per_s", a={"arm": "w"}, b={"arm": "wo"}, value=2.0)
    assert one.judge(planted({"w": [30.0], "wo": [10.0]}, metric="img_per_s")).agreement == decide.INCONCLUSIVE


def test_gap_fraction_is_per_seed_with_its_interval():
    low, arm, high = [70.0, 71.0, 69.0], [78.0, 78.5, 77.0], [82.0, 83.0, 81.5]
    fractions = [(a - lo) / (hi - lo) for lo, a, hi in zip(low, arm, high)]
    lo_ci, hi_ci = stats.t.interval(0.95, 2, loc=np.mean(fractions), scale=stats.sem(fractions))
    results = planted({"b0": low, "b1": arm, "all": high}, metric="ft_top1")
    c = claim("gap_fraction", metric="ft_top1", arm="b1", low="b0", high="all", value=0.5)
    judged = c.judge(results)
    assert judged.agreement == (decide.REPRODUCED if lo_ci > 0.5 else decide.INCONCLUSIVE)
    assert f"{np.mean(fractions):.2f} ± {(hi_ci - lo_ci) / 2:.2f} (n=3)" in judged.evidence
    over = claim("gap_fraction", metric="ft_top1", arm="b1", low="b0", high="all", value=0.9)
    assert over.judge(results).agreement == (decide.NOT_REPRODUCED if hi_ci < 0.9 else decide.INCONCLUSIVE)
    assert hi_ci < 0.9 and lo_ci > 0.5  # the planted numbers decide both ways


# ---- the shipped claims --------------------------------------------------------------------------

def test_the_shipped_claims_name_real_studies_arms_axes_and_metrics():
    from ablate.planning.plan import plan
    from ablate.spec.profiles import load_profile
    from ablate.spec.study import load_study

    shipped = claims.load_claims()
    assert {c.kind for c in shipped} == set(claims.KINDS)  # every predicate kind is used
    assert len(shipped) >= 8
    for c in shipped:
        study = load_study(ROOT / "studies" / f"{c.study}.yaml")
        p = plan(study.with_seeds(1), load_profile("laptop", study.source))
        arms = {run.arm for run in p.runs}
        assert set(c.arms()) <= arms, (c.id, c.arms(), arms)
        assert c.metric in METRICS, c.id
        if hasattr(c, "axis"):
            assert c.axis in study.axes, (c.id, c.axis)


def test_claims_judged_together_and_counted():
    shipped = claims.load_claims()
    sign = next(c for c in shipped if c.kind == "sign" and c.study == "mask_token")
    results = planted({"encoder_w_mask_token": [60.0, 61.0, 59.0], "encoder_wo_mask_token": [70.0, 70.5, 69.0]})
    judged = claims.judge_all([sign, *[c for c in shipped if c.study == "schedule"]], {"mask_token": results})
    assert [j.agreement for j in judged] == [decide.REPRODUCED, decide.INCONCLUSIVE]
    assert judged[1].evidence == "study schedule not run"
    assert claims.tally(judged) == ("1 of 2 of the paper's findings reproduced at this scale "
                                    "(0 not reproduced, 1 inconclusive)")
    table = claims.table(judged)
    assert list(table.columns) == ["study", "finding", "paper", "ours", "verdict"] and len(table) == 2


@pytest.mark.parametrize("text, words", [
    ("- {id: x, study: s, statement: t, paper: p, metric: m, kind: best_of}\n", ["claim 0", "kind", "kinds:"]),
    ("- {id: x, study: s, statement: t, paper: p, metric: m, kind: sign, a: {arm: a}, sign: positive}\n",
     ["claim 0.sign.b", "Field required"]),
    ("- {id: x, study: s, statement: t, paper: p, metric: m, kind: trend, axis: a, direction: up}\n",
     ["claim 0.trend.direction"]),
    ("- {id: x, study: s, statement: t, paper: p, metric: m, kind: trend, axis: a, direction: rises}\n" * 2,
     ["claim id 'x' appears 2 times"]),
    ("- [unclosed\n", ["not YAML"]),
])
def test_a_bad_claims_file_is_one_line_naming_the_claim_and_field(tmp_path, text, words):
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    with pytest.raises(claims.ClaimsError) as info:
        claims.load_claims(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for word in words:
        assert word in message, (word, message)
