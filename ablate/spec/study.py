"""The study file: a base overlay plus small named arms, evaluations and what to draw.

A study is frozen, extra keys are refused, and it names no code: every overlay key is a field of
one of the five config sections below. The full merged config of every arm is validated when the
study is planned (`ablate.planning.plan`), so an axis value that breaks a config is caught before any run.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from core.config import DataConfig, ModelConfig, PretrainConfig
from core.eval_config import FinetuneConfig, LinearProbeConfig
from ablate.errors import StudyError, validated
from ablate.spec.yamlfile import read_mapping

# Overlay sections: the study's name for each part of a resolved config, and its config class.
SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "pretrain": PretrainConfig,
    "linear_probe": LinearProbeConfig,
    "finetune": FinetuneConfig,
}
EVALUATIONS = ("linear_probe", "finetune", "partial_finetune", "scratch")
Evaluation = Literal["linear_probe", "finetune", "partial_finetune", "scratch"]
# Fields the seed list sets in every stage (one (arm, seed) pair is one repetition).
SEED_FIELDS = ("pretrain.seed", "linear_probe.seed", "finetune.seed")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Overlay = dict[str, dict[str, Any]]  # section -> field -> value


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def split_key(key: str, path: str) -> tuple[str, str]:
    """'model.mask_ratio' -> ('model', 'mask_ratio'), or a StudyError saying what exists."""
    section, _, name = str(key).partition(".")
    if section not in SECTIONS:
        raise StudyError(None, path, f"unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
    if not name:
        raise StudyError(None, path, f"expected a dotted key '{section}.<field>'")
    if name not in SECTIONS[section].model_fields:
        raise StudyError(None, path, f"unknown key; allowed in {section}: {', '.join(SECTIONS[section].model_fields)}")
    return section, name


def normalise_overlay(raw: Any, path: str) -> Overlay:
    """Nested (`model: {mask_ratio: 0.75}`) or dotted (`model.mask_ratio: 0.75`) keys -> nested."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StudyError(None, path, f"expected a mapping of config keys, got {type(raw).__name__}")
    out: Overlay = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if "." in str(key):
            section, name = split_key(key, key_path)
            out.setdefault(section, {})[name] = value
            continue
        if key not in SECTIONS:
            raise StudyError(None, key_path, f"unknown section; allowed: {', '.join(SECTIONS)}")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise StudyError(None, key_path, f"expected a mapping of {key} fields, got {type(value).__name__}")
        for name, field_value in value.items():
            split_key(f"{key}.{name}", f"{key_path}.{name}")
            out.setdefault(key, {})[name] = field_value
    return out


class PartialFinetune(Frozen):
    """Figure 9: fine-tune only the last k blocks ('all' = end to end, 0.5 = the last MLP)."""

    blocks: list[float | Literal["all"]] = Field(min_length=1)


class Resources(Frozen):
    """What one trial takes. With `workers` 1, `cpu` and `gpu` are the trial's (a fractional gpu
    packs several trials on one GPU; Ray does not cap their memory). With `workers` N > 1 they are
    per worker: pre-training and fine-tuning stages run data-parallel on N workers of that size
    (ablate/execution/distributed.py), the other stages on one."""

    workers: int = Field(1, ge=1, strict=True)
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)

    @model_validator(mode="after")
    def _whole_gpus(self) -> Resources:
        if self.workers > 1 and not float(self.gpu).is_integer():
            raise ValueError(f"with workers > 1 each worker needs whole GPUs (one NCCL rank per GPU), got gpu "
                             f"{self.gpu:g}")
        return self

    def per_worker(self) -> dict[str, float]:
        """Ray resource names -> amounts, for one worker (or the single-worker trial)."""
        return {"CPU": float(self.cpu), **({"GPU": float(self.gpu)} if self.gpu > 0 else {})}

    def describe(self, workers: int = 1) -> str:
        """'2 workers x 1 CPU', '10 CPU + 1 GPU': what a trial on `workers` workers takes."""
        one = " + ".join(f"{amount:g} {name}" for name, amount in self.per_worker().items())
        return one if workers == 1 else f"{workers} workers x {one}"


class Range(Frozen):
    """One searched field: a range (`low`..`high`, `log` scale, `int` values) or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = Field(False, alias="int")
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.integer:
                raise ValueError("give either choices: [...] or low/high (with log, int), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices: [...]")
        if not self.low < self.high:
            raise ValueError(f"low {self.low:g} must be below high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low:g}")
        if self.integer and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"an int range needs whole low and high, got {self.low:g} and {self.high:g}")
        return self

    def grid(self, points: int) -> list[Any]:
        """`points` values evenly spaced over the range (on the log scale if `log`), or the choices."""
        if self.choices is not None:
            return list(self.choices)
        import numpy as np

        values = (np.geomspace if self.log else np.linspace)(self.low, self.high, points)
        if self.integer:
            return list(dict.fromkeys(int(round(v)) for v in values))
        return [float(f"{v:.6g}") for v in values]


class Search(Frozen):
    """Per arm and seed, try `budget` candidates for one evaluation's recipe fields (`space`), or the
    pre-training's (each candidate a pre-training and the arm's evaluations on it, judged on the
    evaluation `metric` names; never pruned: pre-training has no per-epoch validation metric), and
    keep the best by a VALIDATION metric (never the test one); the arm reports that candidate's test
    metrics. `sampler: tpe` (Optuna's TPE, adaptive: each candidate is proposed from the results so
    far, after `startup` random ones) or `grid` (the fixed list: each range at evenly spaced points).
    The `pruner` stops a candidate whose per-epoch validation metric is behind the complete ones' at
    the same epoch: `best` (default) behind the best, `quartile` out of their top quarter, `median`
    below their median; `halving` is successive halving; `none`. At most
    `parallel` candidates of one search run at once. `storage`: an Optuna storage URL (e.g. a
    database server's, for drivers on several machines); default a journal file in the study folder."""

    space: dict[str, Range] = Field(min_length=1)
    budget: int = Field(8, ge=1, le=256)
    metric: str = "ft_val_top1"
    mode: Literal["max", "min"] = "max"
    sampler: Literal["tpe", "grid"] = "tpe"
    startup: int | None = Field(None, ge=1)
    pruner: Literal["best", "quartile", "median", "halving", "none"] | None = None  # default best; pretrain none
    parallel: int = Field(2, ge=1)
    storage: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_param(cls, data: Any) -> Any:
        """The earlier one-field form `{param, low, high, log, trials}` -> space and budget."""
        if isinstance(data, dict) and "param" in data:
            data = dict(data)
            param = data.pop("param")
            bounds = {k: data.pop(k) for k in ("low", "high", "log") if k in data}
            data.setdefault("space", {param: bounds})
            if "trials" in data:
                data["budget"] = data.pop("trials")
        return data

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise StudyError(None, "search.space", "expected a mapping of dotted key -> {low, high[, log, int]} "
                                                   "or {choices: [...]}")
        sections = set()
        for key in value:
            section, _ = split_key(key, f"search.space.{key}")
            if section not in ("pretrain", "linear_probe", "finetune"):
                raise StudyError(None, f"search.space.{key}", "only pretrain.*, linear_probe.* and finetune.* fields "
                                                              "can be searched (recipe fields)")
            sections.add(section)
        if len(sections) > 1:
            raise StudyError(None, "search.space", "one search tunes one stage's recipe: pretrain.*, linear_probe.* "
                                                   "or finetune.* fields, not several")
        return value

    @model_validator(mode="after")
    def _check(self) -> Search:
        if self.section == "pretrain":
            if self.metric not in ("lin_val_top1", "lin_val_top5", "ft_val_top1", "ft_val_top5"):
                raise StudyError(None, "search.metric", f"a pre-training search is judged on an evaluation's "
                                                        f"validation metric: lin_val_top1, lin_val_top5, ft_val_top1 "
                                                        f"or ft_val_top5, got {self.metric!r}")
            if self.pruner not in (None, "none"):
                raise StudyError(None, "search.pruner", "a pre-training search is not pruned: pre-training has no "
                                                        "per-epoch validation metric (pruner: none)")
        else:
            prefix = {"linear_probe": "lin_val_", "finetune": "ft_val_"}[self.section]
            if not self.metric.startswith(prefix):
                raise StudyError(None, "search.metric", f"searching {self.params[0]} is judged on a validation "
                                                        f"metric of that stage: '{prefix}top1' or '{prefix}top5', "
                                                        f"got {self.metric!r}")
        if self.startup is not None and self.startup > self.budget:
            raise StudyError(None, "search.startup", f"{self.startup} random start-up candidates exceed the budget "
                                                     f"of {self.budget}")
        if self.sampler == "grid":
            self.grid()  # a grid that does not fit the budget is refused here
        return self

    @property
    def params(self) -> list[str]:
        return list(self.space)

    @property
    def total(self) -> int:
        """How many candidates the search runs: the budget, or a grid's size where it is smaller."""
        return self.budget if self.sampler == "tpe" else len(self.grid())

    @property
    def section(self) -> str:
        return self.params[0].partition(".")[0]

    @property
    def pruning(self) -> str:
        # best by default: on the laptop fine-tune (BENCHMARKS.md, 3 seeds of 8 candidates) TPE with it found
        # each seed's best within 0.5 points of a grid's at 0.50 of its compute; median stopping took 0.65,
        # the top quarter 0.59 (same bests); successive halving 0.48 but ended 0.83 points below
        return self.pruner or ("none" if self.section == "pretrain" else "best")

    @property
    def objective(self) -> str:
        """The runner of the stage whose result holds `metric` (linear_probe or finetune)."""
        return "linear_probe" if self.metric.startswith("lin_") else "finetune"

    @property
    def startup_trials(self) -> int:
        """TPE's random start-up candidates: `startup`, or a third of the budget (at most 10).
        Optuna's default 10 would make a laptop budget of 8 pure random search."""
        return self.startup if self.startup is not None else min(10, max(1, -(-self.budget // 3)))

    def grid(self) -> list[dict[str, Any]]:
        """The grid sampler's candidates: every combination of the choices, with each range at as
        many evenly spaced points as fit the budget (all of it with one range)."""
        import itertools
        import math

        fixed = math.prod(len(r.choices) for r in self.space.values() if r.choices is not None)
        ranges = sum(1 for r in self.space.values() if r.choices is None)
        points = int(math.floor((self.budget / fixed) ** (1 / ranges) + 1e-9)) if ranges else 1
        if fixed > self.budget or (ranges and points < 2):
            raise StudyError(None, "search.budget", f"a grid over this space needs more than {self.budget} "
                                                    f"candidates (at least {fixed * 2 ** ranges}); raise the budget "
                                                    f"or use sampler: tpe")
        axes = [r.grid(points) for r in self.space.values()]
        return [dict(zip(self.params, combo)) for combo in itertools.product(*axes)]


class AtScale(Frozen):
    """What a study changes at one profile's scale (`profiles: {<profile>: ...}` in the study):
    a base overlay merged over the study's base, axis values replacing the study's, and the
    blocks of a partial fine-tune. E.g. decoder widths [128 ... 1024] for the paper but
    [32 ... 256] on the laptop's 128-wide encoder."""

    base: Overlay = {}
    axes: dict[str, list[Any]] = {}
    partial_finetune: PartialFinetune | None = None
    baseline: str | None = None  # the baseline arm's name at this scale, where the arms differ

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, value: Any) -> Overlay:
        return normalise_overlay(value, "base")

    @field_validator("axes", mode="before")
    @classmethod
    def _axes(cls, value: Any) -> dict[str, list[Any]]:
        return _grid(value, "axes")


class Tracking(Frozen):
    """MLflow: None keeps a sqlite database in the study's output folder."""

    uri: str | None = None


class Study(Frozen):
    name: str = Field(pattern=NAME_PATTERN, max_length=100)  # a folder name: the OS refuses 256+ bytes
    description: str = ""
    base: Overlay = {}
    axes: dict[str, list[Any]] = {}
    zip: dict[str, list[Any]] = {}
    arms: dict[str, Overlay] = {}
    evaluations: list[Evaluation] = ["linear_probe", "finetune"]
    partial_finetune: PartialFinetune | None = None
    seeds: list[int] = Field([0], min_length=1)
    resources: Resources | None = None  # None: the profile's
    search: Search | None = None
    tracking: Tracking = Tracking()
    figures: list[str] = []
    tables: list[str] = []
    profiles: dict[str, AtScale] = {}  # profile name -> what changes at its scale
    # The study's question: each arm against a baseline arm (the paper's grey row), or a trend along
    # one axis (e.g. the schedule). Differences inside +-equivalence_margin points count as none.
    baseline: str | None = None
    trend: str | None = None
    equivalence_margin: float = Field(1.0, gt=0, allow_inf_nan=False)

    _source: Path | None = PrivateAttr(None)

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, value: Any) -> Overlay:
        return normalise_overlay(value, "base")

    @field_validator("arms", mode="before")
    @classmethod
    def _arms(cls, value: Any) -> dict[str, Overlay]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise StudyError(None, "arms", f"expected a mapping of arm name -> overlay, got {type(value).__name__}")
        for name in value:
            if not re.fullmatch(r"[^\s,=][^,=]*", str(name)):
                raise StudyError(None, f"arms.{name}", "an arm name must not be empty or contain ',' or '='")
        return {str(name): normalise_overlay(overlay, f"arms.{name}") for name, overlay in value.items()}

    @field_validator("axes", "zip", mode="before")
    @classmethod
    def _grid(cls, value: Any, info) -> dict[str, list[Any]]:
        return _grid(value, info.field_name)

    @field_validator("evaluations", "seeds", "figures", "tables")
    @classmethod
    def _unique(cls, value: list[Any], info) -> list[Any]:
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        if repeated:
            raise StudyError(None, info.field_name, f"listed twice: {', '.join(repeated)}")
        return value

    @field_validator("figures")
    @classmethod
    def _figures(cls, value: list[str]) -> list[str]:
        from dashboards.figures import FIGURES  # matplotlib: imported when a study is read, not with ablate

        return _check_names(value, "figures", FIGURES)

    @field_validator("tables")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        from dashboards.tables import TABLES

        return _check_names(value, "tables", TABLES)

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        lengths = {key: len(values) for key, values in self.zip.items()}
        if len(set(lengths.values())) > 1:
            raise StudyError(None, "zip", "lists must have the same length, got "
                             + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        both = sorted(set(self.axes) & set(self.zip))
        if both:
            raise StudyError(None, f"zip.{both[0]}", "also an axis; a key moves in the grid or in the zip, not both")
        if ("partial_finetune" in self.evaluations) != (self.partial_finetune is not None):
            raise StudyError(None, "partial_finetune", "give `partial_finetune: {blocks: [...]}` exactly when "
                                                       "'partial_finetune' is in evaluations")
        for name, scale in self.profiles.items():
            extra = sorted(set(scale.axes) - set(self.axes))
            if extra:
                raise StudyError(None, f"profiles.{name}.axes.{extra[0]}", "not an axis of the study; a profile "
                                 f"replaces the values of: {', '.join(self.axes) or 'no axes'}")
            if scale.partial_finetune is not None and self.partial_finetune is None:
                raise StudyError(None, f"profiles.{name}.partial_finetune", "the study has no partial_finetune")
        if self.baseline is not None and self.trend is not None:
            raise StudyError(None, "trend", "a study is judged against a baseline arm or along a trend, not both")
        if self.trend is not None and self.trend not in self.varied_keys:
            raise StudyError(None, "trend", f"{self.trend!r} is not a key the arms vary; "
                                            f"allowed: {', '.join(self.varied_keys) or 'none'}")
        if self.search is not None:
            needed = self.search.objective if self.search.section == "pretrain" else self.search.section
            if needed not in self.evaluations:
                raise StudyError(None, "search.metric" if self.search.section == "pretrain" else "search.space",
                                 f"searches {self.search.params[0]}, judged on {self.search.metric}, but '{needed}' "
                                 f"is not in evaluations")
        return self

    @property
    def source(self) -> Path | None:
        return self._source

    def at(self, profile: str) -> Study:
        """This study at one profile's scale: its `profiles` entry for that name applied."""
        scale = self.profiles.get(profile)
        if scale is None:
            return self
        base = {section: dict(fields) for section, fields in self.base.items()}
        for section, fields in scale.base.items():
            base.setdefault(section, {}).update(fields)
        return self.model_copy(update={"base": base, "axes": {**self.axes, **scale.axes},
                                       "partial_finetune": scale.partial_finetune or self.partial_finetune,
                                       "baseline": scale.baseline or self.baseline})

    def with_seeds(self, count: int | None) -> Study:
        """The study widened (or narrowed) to `count` seeds: its own seeds first, then the next unused
        integers, so the stages of the seeds already run keep their ids and are reused."""
        if count is None:
            return self
        seeds, candidate = list(self.seeds[:count]), 0
        while len(seeds) < count:
            if candidate not in seeds:
                seeds.append(candidate)
            candidate += 1
        widened = self.model_copy(update={"seeds": seeds})
        widened._source = self._source
        return widened

    @property
    def varied_keys(self) -> list[str]:
        """Dotted keys that differ between arms, in the order the study names them."""
        keys = [*self.axes, *self.zip]
        for overlay in self.arms.values():
            keys += [f"{section}.{name}" for section, fields in overlay.items() for name in fields]
        if self.partial_finetune is not None:
            keys.append("finetune.tune_blocks")
        return list(dict.fromkeys(keys))


def _grid(value: Any, field: str) -> dict[str, list[Any]]:
    """axes / zip: dotted key -> a non-empty list of values."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(None, field, f"expected a mapping of dotted key -> list of values, got {type(value).__name__}")
    for key, values in value.items():
        split_key(key, f"{field}.{key}")
        if not isinstance(values, list) or not values:
            raise StudyError(None, f"{field}.{key}", "expected a non-empty list of values")
    return value


def _check_names(value: list[str], field: str, registry: Mapping[str, Any]) -> list[str]:
    """Names from one of the dashboards' registries."""
    unknown = [v for v in value if v not in registry]
    if unknown:
        raise StudyError(None, f"{field}[{value.index(unknown[0])}]",
                         f"unknown name {unknown[0]!r}; allowed: {', '.join(sorted(registry))}")
    return value


def parse_study(data: dict[str, Any], source: Path | str | None = None) -> Study:
    """A Study from plain data, or a one-line StudyError naming the file and the field."""
    study = validated(Study, data, source)
    study._source = Path(source) if source is not None else None
    return study


def load_study(path: Path | str) -> Study:
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise StudyError(path, "", "a study is a .yaml file")
    return parse_study(read_mapping(path), path)
