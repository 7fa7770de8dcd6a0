"""What `ablate` hands the dashboards, defined once: the names of the metrics and of the result
columns, the statuses, the study's description and its MLflow links.

`ablate` (which runs studies) writes these; the dashboards (which draw them) read them, and
import nothing from `ablate`. Two tables travel as pandas frames:
- results: one row per (arm, seed): `KEYS`, then the arm's axes (dotted config keys such as
  `model.mask_ratio`), then `METRICS` (NaN where not measured), then optional extras (`error`,
  `search_metric`, `search_value`);
- history: long, `HISTORY_COLUMNS`, one row per (arm, seed, stage, epoch, metric).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A row's status (one arm and seed), and an arm's state over its seeds (`arm_state`)."""

    DONE = "done"  # every stage of the row finished
    FAILED = "failed"  # a stage failed, or could not run because one it needs failed
    PENDING = "pending"  # queued or running


DONE, FAILED, PENDING = Status.DONE, Status.FAILED, Status.PENDING

KEYS = ("study", "arm", "seed", "status")
METRICS = ("lin_top1", "lin_top5", "ft_top1", "ft_top5", "scratch_top1", "pretrain_loss", "pretrain_wall_clock_s",
           "img_per_s", "train_flops_per_img")
# The metrics an arm's row in the report shows, with their column titles.
METRIC_LABELS = {"ft_top1": "ft top-1 (%)", "lin_top1": "lin top-1 (%)", "scratch_top1": "scratch top-1 (%)",
                 "pretrain_loss": "pre-train loss", "pretrain_wall_clock_s": "wall-clock (s)", "img_per_s": "img/s"}
HISTORY_COLUMNS = ("arm", "seed", "stage", "epoch", "metric", "value")
DEFAULT_TRACKING_UI = "http://127.0.0.1:5000"
# A search's Optuna study attribute: the numbers of its failed trials that `--rerun-failed` ran again as new
# trials of the same values (Optuna's finished trials are final); they are not candidates any more.
SEARCH_RETRIED = "retried"


def search_candidates(study: Any) -> list:
    """A search's candidates: its Optuna trials but those it ran again as new ones."""
    retried = set(study.user_attrs.get(SEARCH_RETRIED, []))
    return [t for t in study.get_trials(deepcopy=False) if t.number not in retried]


def arm_state(statuses: list[str]) -> Status:
    """An arm's state from its seeds' statuses: done when every seed is done, failed when any
    seed failed, pending otherwise."""
    if statuses and all(s == DONE for s in statuses):
        return DONE
    if any(s == FAILED for s in statuses):
        return FAILED
    return PENDING


def ours_label(dataset: str | None = None, profile: str | None = None) -> str:
    """How figures and the report title our numbers: "ours (<dataset>, profile <profile>)"."""
    parts = [p for p in (dataset, f"profile {profile}" if profile else None) if p]
    return f"ours ({', '.join(parts)})" if parts else "ours"


@dataclass(frozen=True)
class StudyInfo:
    """The study as the report shows it. `axes`: dotted key -> the values its arms take;
    `settings`: dotted key -> value (shown as they are); `baseline` (an arm) or `trend` (an axis
    key) is the study's own question, judged within `equivalence_margin` points (None: the
    decision module's default)."""

    name: str
    description: str = ""
    profile: str = ""
    profile_description: str = ""
    dataset: str = ""
    axes: Mapping[str, list[Any]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    trend: str | None = None
    equivalence_margin: float | None = None

    @property
    def ours_label(self) -> str:
        return ours_label(self.dataset, self.profile)

    def entries(self) -> dict[str, Any]:
        """The study's own entries for the report's settings table (what is not shown elsewhere)."""
        entries = {"profile": self.profile, "profile_description": self.profile_description,
                   "baseline": self.baseline, "trend": self.trend, "equivalence_margin": self.equivalence_margin}
        return {k: v for k, v in entries.items() if v not in (None, "")}


@dataclass(frozen=True)
class MlflowLinks:
    """Where the study's runs are: the tracking store, its UI, the study's experiment and parent
    run, and per arm the pre-training run of each seed (seed -> run id)."""

    tracking_uri: str = "?"
    tracking_ui: str = DEFAULT_TRACKING_UI
    experiment_id: str | None = None
    parent_run_id: str | None = None
    run_ids: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | None) -> MlflowLinks | None:
        """From the plain form a study's last-run record keeps (unknown keys ignored)."""
        if not value:
            return None
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__ and v is not None}
        if known.get("experiment_id") is not None:
            known["experiment_id"] = str(known["experiment_id"])
        return cls(**known)
