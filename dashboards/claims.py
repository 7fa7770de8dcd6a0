"""The paper's ablation findings as claims our runs can test, each judged reproduced, not
reproduced or inconclusive (the words of `dashboards.decide.AGREEMENT`).

The claims are data (`claims.yaml` beside this file): the study that tests a claim, the
statement, the paper's numbers behind it, and one of five predicate kinds. Every interval and
test comes from `dashboards.decide`; seeds are paired across arms.

- `argmax_in_range`: the arm with the best mean `metric` has its `axis` value inside `range`, and
  beats every arm outside it. Reproduced when the best arm inside beats each arm outside
  (paired differences, Holm-adjusted over the arms outside); not reproduced when an arm outside
  beats it; inconclusive otherwise.
- `trend`: `metric` rises (or falls) along `axis`: `decide.trend`'s slope per doubling, then
  `decide.trend_agreement`.
- `sign`: operand a minus operand b has the claimed sign. An operand is an arm and, where it is not
  the claim's, a metric (fine-tuning after MAE against training from scratch compares two
  metrics of one arm). Paired per-seed differences, a two-sided paired t-test: reproduced when
  significant with the claimed sign, not reproduced when significant with the other, inconclusive
  otherwise. A sign claim has no equivalence margin: a difference too small to tell is not a
  reproduction of a direction.
- `ratio_exceeds`: a / b exceeds `value`: the per-seed ratios' 95% t-interval lies above it
  (reproduced) or below it (not reproduced). With `exact: true` (a counted quantity the same for
  every seed, such as FLOPs) one seed decides.
- `gap_fraction`: arm recovers more than `value` of the gap from `low` to `high`: the per-seed
  (arm - low) / (high - low), its interval above or below `value`.

With fewer than two paired seeds every claim but an exact ratio is inconclusive, and says why.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from dashboards import decide

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")


@dataclass(frozen=True)
class Judged:
    """One claim judged on one study's results: the agreement word and the numbers that decide it."""

    claim: "Claim"
    agreement: str
    evidence: str


class _Claim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    study: str
    statement: str
    paper: str
    metric: str

    def judge(self, results: pd.DataFrame) -> Judged:
        raise NotImplementedError

    def arms(self) -> tuple[str, ...]:
        """The arms the claim names (none for an axis claim)."""
        return ()

    def _judged(self, agreement: str, evidence: str) -> Judged:
        return Judged(self, agreement, evidence)  # type: ignore[arg-type]


class Operand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    arm: str
    metric: str | None = None

    def values(self, results: pd.DataFrame, metric: str) -> dict[int, float]:
        return decide.by_seed(results, self.arm, self.metric or metric)

    def name(self, metric: str) -> str:
        return f"{self.arm} {self.metric or metric}"


def _one_seed(n: int) -> str:
    return f"{n} paired seed{'s' if n != 1 else ''}: no interval (run --seeds 3 or more)"


class ArgmaxInRange(_Claim):
    kind: Literal["argmax_in_range"]
    axis: str
    range: tuple[float, float]

    def judge(self, results: pd.DataFrame) -> Judged:
        done = _done(results)
        if self.axis not in done or self.metric not in done:
            return self._judged(decide.INCONCLUSIVE, f"no {self.metric} along {self.axis} in the results")
        position = {arm: float(x) for arm, x in zip(done["arm"], pd.to_numeric(done[self.axis], errors="coerce"))}
        means = {arm: decide.interval(decide.by_seed(done, arm, self.metric).values()) for arm in position}
        low, high = self.range
        inside = [a for a in position if low <= position[a] <= high and not math.isnan(means[a].mean)]
        outside = [a for a in position if not low <= position[a] <= high and not math.isnan(means[a].mean)]
        if not inside or not outside:
            missing = "inside" if not inside else "outside"
            return self._judged(decide.INCONCLUSIVE,
                                f"the study has no measured arm {missing} {self.axis} in [{low:g}, {high:g}]")
        best = max(inside, key=lambda a: means[a].mean)
        family = decide.decide([decide.compare(other, self.metric, decide.by_seed(done, best, self.metric),
                                               decide.by_seed(done, other, self.metric), margin=0.0)
                                for other in outside])  # each: best - other
        said = "; ".join(f"{best} - {c.arm}: {c.difference_text()}, {c.verdict}" for c in family)
        evidence = f"best inside [{low:g}, {high:g}]: {best} {means[best].text()}; {said}"
        if any(c.verdict == decide.WORSE for c in family):
            return self._judged(decide.NOT_REPRODUCED, evidence)
        if all(c.verdict == decide.BETTER for c in family):
            return self._judged(decide.REPRODUCED, evidence)
        return self._judged(decide.INCONCLUSIVE, evidence)


class Trend(_Claim):
    kind: Literal["trend"]
    axis: str
    direction: Literal["rises", "falls"]

    def judge(self, results: pd.DataFrame) -> Judged:
        done = _done(results)
        if self.axis not in done or self.metric not in done:
            return self._judged(decide.INCONCLUSIVE, f"no {self.metric} along {self.axis} in the results")
        t = decide.trend(self.metric, pd.to_numeric(done[self.axis], errors="coerce"),
                         pd.to_numeric(done[self.metric], errors="coerce"))
        return self._judged(decide.trend_agreement(t.verdict, self.direction == "rises"),
                            f"{self.metric} along {self.axis}: {t.text()}")


class Sign(_Claim):
    kind: Literal["sign"]
    a: Operand
    b: Operand
    sign: Literal["positive", "negative"]

    def arms(self) -> tuple[str, ...]:
        return self.a.arm, self.b.arm

    def judge(self, results: pd.DataFrame) -> Judged:
        done = _done(results)
        c, = decide.decide([decide.compare(self.a.arm, self.metric, self.a.values(done, self.metric),
                                           self.b.values(done, self.metric), margin=0.0)])
        evidence = f"{self.a.name(self.metric)} - {self.b.name(self.metric)}: {c.difference_text()}"
        if c.verdict == decide.NO_VERDICT:
            return self._judged(decide.INCONCLUSIVE, f"{evidence}; {_one_seed(c.difference.n)}")
        claimed = decide.BETTER if self.sign == "positive" else decide.WORSE
        evidence += f", p = {c.p_adjusted:.3g}"
        if c.verdict == claimed:
            return self._judged(decide.REPRODUCED, evidence)
        if c.verdict in (decide.BETTER, decide.WORSE):
            return self._judged(decide.NOT_REPRODUCED, evidence)
        return self._judged(decide.INCONCLUSIVE, f"{evidence}, {c.verdict}")


class RatioExceeds(_Claim):
    kind: Literal["ratio_exceeds"]
    a: Operand
    b: Operand
    value: float
    exact: bool = False

    def arms(self) -> tuple[str, ...]:
        return self.a.arm, self.b.arm

    def judge(self, results: pd.DataFrame) -> Judged:
        done = _done(results)
        a, b = self.a.values(done, self.metric), self.b.values(done, self.metric)
        ratios = [a[s] / b[s] for s in sorted(set(a) & set(b)) if b[s] != 0]
        what = f"{self.a.name(self.metric)} / {self.b.name(self.metric)}"
        if not ratios:
            return self._judged(decide.INCONCLUSIVE, f"{what}: not measured")
        if self.exact and np.ptp(ratios) == 0:
            word = decide.REPRODUCED if ratios[0] > self.value else decide.NOT_REPRODUCED
            return self._judged(word, f"{what} = {ratios[0]:.2f} (counted, every seed the same) against {self.value:g}")
        return _against(self, decide.interval(ratios), f"{what}", digits=2)


class GapFraction(_Claim):
    kind: Literal["gap_fraction"]
    arm: str
    low: str
    high: str
    value: float

    def arms(self) -> tuple[str, ...]:
        return self.arm, self.low, self.high

    def judge(self, results: pd.DataFrame) -> Judged:
        done = _done(results)
        arm, low, high = (decide.by_seed(done, name, self.metric) for name in (self.arm, self.low, self.high))
        seeds = sorted(set(arm) & set(low) & set(high))
        fractions = [(arm[s] - low[s]) / (high[s] - low[s]) for s in seeds if high[s] != low[s]]
        what = f"({self.arm} - {self.low}) / ({self.high} - {self.low}) of {self.metric}"
        if not fractions:
            return self._judged(decide.INCONCLUSIVE, f"{what}: not measured")
        return _against(self, decide.interval(fractions), what, digits=2)


def _against(claim: _Claim, estimate: decide.Interval, what: str, digits: int) -> Judged:
    """An estimate's interval above `claim.value` (reproduced), below it (not), or across it."""
    value = claim.value  # type: ignore[attr-defined]
    evidence = f"{what} = {estimate.text(digits)} against {value:g}"
    if math.isnan(estimate.half):
        return claim._judged(decide.INCONCLUSIVE, f"{evidence}; {_one_seed(estimate.n)}")
    if estimate.low > value:
        return claim._judged(decide.REPRODUCED, evidence)
    if estimate.high < value:
        return claim._judged(decide.NOT_REPRODUCED, evidence)
    return claim._judged(decide.INCONCLUSIVE, evidence)


def _done(results: pd.DataFrame) -> pd.DataFrame:
    if results.empty or "arm" not in results:
        return pd.DataFrame({"arm": [], "seed": []})
    return decide.done_rows(results)


Claim = Annotated[Union[ArgmaxInRange, Trend, Sign, RatioExceeds, GapFraction], Field(discriminator="kind")]
KINDS = ("argmax_in_range", "trend", "sign", "ratio_exceeds", "gap_fraction")
_CLAIMS = TypeAdapter(list[Claim])


class ClaimsError(ValueError):
    """A claims file that cannot be read: one line naming the file, the claim and the field."""


def load_claims(path: Path = CLAIMS_FILE) -> list[_Claim]:
    try:
        data = yaml.safe_load(Path(path).read_text())
        claims = _CLAIMS.validate_python(data)
    except yaml.YAMLError as e:
        raise ClaimsError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ClaimsError(f"{path}: claim {where}: {error['msg']} (kinds: {', '.join(KINDS)})") from None
    ids = Counter(c.id for c in claims)
    if twice := [i for i, n in ids.items() if n > 1]:
        raise ClaimsError(f"{path}: claim id {twice[0]!r} appears {ids[twice[0]]} times")
    return claims


def judge_all(claims: Sequence[_Claim], results: Mapping[str, pd.DataFrame]) -> list[Judged]:
    """Each claim judged on its study's results (study name -> results table); a study not in
    `results` leaves its claims inconclusive."""
    return [c.judge(results[c.study]) if c.study in results else
            Judged(c, decide.INCONCLUSIVE, f"study {c.study} not run") for c in claims]  # type: ignore[arg-type]


def tally(judged: Sequence[Judged]) -> str:
    """'4 of 10 of the paper's findings reproduced at this scale (1 not reproduced, 5 inconclusive)'."""
    counts = Counter(j.agreement for j in judged)
    return (f"{counts[decide.REPRODUCED]} of {len(judged)} of the paper's findings reproduced at this scale "
            f"({counts[decide.NOT_REPRODUCED]} not reproduced, {counts[decide.INCONCLUSIVE]} inconclusive)")


def table(judged: Sequence[Judged]) -> pd.DataFrame:
    """The claims table a report opens with: one row per claim."""
    return pd.DataFrame([{"study": j.claim.study, "finding": j.claim.statement, "paper": j.claim.paper,
                          "ours": j.evidence, "verdict": j.agreement} for j in judged],
                        columns=["study", "finding", "paper", "ours", "verdict"])
