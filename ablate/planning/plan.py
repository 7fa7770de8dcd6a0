"""What to run: `plan(study, profile) -> Plan`, pure (no Ray, no MLflow, nothing written).

A study expands into arms (grid x zip x named arms x partial-fine-tune blocks) and seeds. Each
(arm, seed) is a small graph of stages: pretrain -> its evaluations (linear_probe, finetune,
partial_finetune, scratch; scratch does not depend on pre-training). A stage is identified by the
hash of its fully resolved config plus its parent's id, so one pre-training shared by several
arms or evaluations is one stage, and finished stages are found again by later runs and studies.

A study with `search:` has, per (arm, seed), a `SearchTask` in place of its searched evaluation:
its candidates are not planned but proposed while the study runs, from the results so far
(ablate/execution/search.py), and each becomes a stage like any other (the same values, the same
stage id). A plan is therefore fixed except for those candidates, which `Plan.add_candidate` adds.

With `resources: {workers: N}` (N > 1) pre-training and fine-tuning stages (fine-tune, partial
fine-tune, scratch) are data-parallel on N workers; linear probing stays on one. The worker count
of a data-parallel stage is part of its identity: N workers train with N times the batch per
optimizer step (batch_size x N x accum_iter), so they compute another result than one worker.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ValidationError

from core.config import MAX_EPOCHS, DataConfig, ModelConfig, PretrainJob
from core.data_files import train_images
from core.eval_config import FinetuneJob, LinearProbeJob
from ablate.errors import StudyError, from_validation
from ablate.spec.profiles import Profile
from ablate.spec.study import SECTIONS, SEED_FIELDS, Resources, Search, Study

ID_LENGTH = 12  # hex digits of sha256: collisions are out of reach for any realistic store
# What a scratch classifier never uses: the decoder, the masking and the reconstruction target,
# and the pre-training augmentation. Reset to their defaults in the scratch stage, so one scratch
# baseline serves every arm that shares the encoder and the fine-tuning recipe.
PRETRAIN_ONLY_MODEL_FIELDS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "mask_ratio",
                              "mask_sampling", "mask_token_in_encoder", "loss_on", "target", "pca_components",
                              "codebook_size", "codebook_path")
PRETRAIN_ONLY_DATA_FIELDS = ("augmentation",)
# Per runner: the job class and the name of its recipe section inside the job.
JOBS: dict[str, tuple[type[BaseModel], str, str]] = {
    "pretrain": (PretrainJob, "pretrain", "pretrain"),
    "linear_probe": (LinearProbeJob, "probe", "linear_probe"),
    "finetune": (FinetuneJob, "finetune", "finetune"),
}
# Runners whose core function is rank-aware (DDP when torch.distributed is initialised). Linear
# probing is not: it trains a head on features computed once, and runs on one worker.
DATA_PARALLEL_RUNNERS = frozenset({"pretrain", "finetune"})


@dataclass(frozen=True)
class Stage:
    """One unit of work: a core function, its resolved job config, and the stage it needs first."""

    id: str
    kind: str  # pretrain | linear_probe | finetune | partial_finetune | scratch
    runner: str  # pretrain | linear_probe | finetune
    config: Mapping[str, Any]  # the job as JSON data: {"model", "data", "pretrain" | "probe" | "finetune"}
    parent: str | None = None
    workers: int = 1  # data-parallel workers (resources.workers for DATA_PARALLEL_RUNNERS, else 1)

    @property
    def recipe(self) -> Mapping[str, Any]:
        return self.config[JOBS[self.runner][1]]

    @property
    def epochs(self) -> int:
        return int(self.recipe["epochs"])

    def job(self) -> BaseModel:
        return JOBS[self.runner][0].model_validate(self.config)

    def flat_config(self) -> dict[str, Any]:
        """The resolved config under the study's dotted names (`linear_probe.blr`, not `probe.blr`)."""
        section = JOBS[self.runner]
        out: dict[str, Any] = {}
        for name, values in self.config.items():
            prefix = section[2] if name == section[1] else name
            out.update({f"{prefix}.{k}": v for k, v in values.items()})
        if self.workers > 1:
            out["resources.workers"] = self.workers
        return out


@dataclass(frozen=True)
class ArmRun:
    """One row of the results: an arm at one seed, and the stage it runs for each evaluation."""

    arm: str
    seed: int
    axes: Mapping[str, Any]  # varied dotted key -> its resolved value in this arm
    stages: Mapping[str, str]  # stage name -> stage id, in dependency order
    # Searched evaluations: stage name -> its SearchTask's id, and the candidate stage ids proposed so
    # far (Plan.add_candidate; the best by validation metric counts).
    searches: Mapping[str, str] = field(default_factory=dict)
    candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchTask:
    """One search: a stage of one (arm, seed) whose recipe fields `spec.space` are searched, an
    evaluation or the pre-training. `name` is its Optuna study's name in the study's storage; `base`
    the stage's config at the study's recipe, which each candidate's values overlay. A pre-training
    search's candidate is the pre-training and, on it, each of the arm's evaluations (`children`:
    kind, runner, config, workers); the one of runner `spec.objective` holds the metric."""

    study: str
    name: str  # "<arm>/seed<k>/<stage name>"
    seed: int
    kind: str
    runner: str
    base: Mapping[str, Any]
    parent: str | None
    workers: int
    spec: Search
    children: tuple[tuple[str, str, Mapping[str, Any], int], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.study}:{self.name}"

    def stages(self, values: Mapping[str, Any]) -> list[Stage]:
        """The candidate at `values`: its stage, then (a pre-training search) its evaluations."""
        first = self.stage(values)
        return [first, *(Stage(stage_id(kind, config, first.id, workers), kind, runner, config, first.id, workers)
                         for kind, runner, config, workers in self.children)]

    def objective(self, stages: list[Stage]) -> Stage:
        """Of a candidate's stages, the one whose result holds the metric."""
        if not self.children:
            return stages[0]
        return next(s for s in stages[1:] if s.runner == self.spec.objective)

    def stage(self, values: Mapping[str, Any]) -> Stage:
        """The candidate stage at `values` (dotted key -> value); raises StudyError naming the
        search when they make an invalid recipe."""
        section = JOBS[self.runner][1]
        recipe = dict(self.base[section])
        recipe.update({key.split(".", 1)[1]: value for key, value in values.items()})
        try:
            recipe = _dump(SECTIONS[self.spec.section].model_validate(recipe))
        except ValidationError as e:
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in values.items())
            raise from_validation(None, e, where=lambda p: (None, "search"), suffix=f" (candidate {shown})") from None
        config = {**self.base, section: recipe}
        sid = stage_id(self.kind, config, self.parent, self.workers)
        return Stage(sid, self.kind, self.runner, config, self.parent, self.workers)

    def values(self, stage: Stage) -> dict[str, Any]:
        """The searched values of one of its candidates."""
        return {key: stage.recipe[key.split(".", 1)[1]] for key in self.spec.params}


@dataclass(frozen=True)
class Plan:
    study: Study
    profile: Profile
    runs: tuple[ArmRun, ...]
    stages: dict[str, Stage]  # every stage once, parents before children; searches' candidates last
    resources: Resources
    searches: Mapping[str, SearchTask] = field(default_factory=dict)  # SearchTask.id -> task

    def add_candidate(self, task_id: str, stages: list[Stage]) -> bool:
        """A search's candidate (its stages: SearchTask.stages) joins the plan (the one way a plan
        grows, while its study runs); False if the plan has no such search."""
        if task_id not in self.searches:
            return False
        for one in stages:
            self.stages.setdefault(one.id, one)
        stage = stages[0]
        for run in self.runs:
            for name, tid in run.searches.items():
                if tid == task_id and stage.id not in run.candidates.get(name, ()):
                    run.candidates[name] = (*run.candidates.get(name, ()), stage.id)
        return True

    def search_of(self, stage_id: str) -> SearchTask | None:
        """The search that proposed a candidate stage (or, in a pre-training search, the candidate
        it evaluates), or None for a planned stage."""
        stage = self.stages.get(stage_id)
        for run in self.runs:
            for name, ids in run.candidates.items():
                if stage_id in ids or (stage is not None and stage.parent in ids):
                    return self.searches[run.searches[name]]
        return None

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(r.arm for r in self.runs))

    def trial_resources(self, stage_id: str) -> str:
        """What the stage's trial takes, e.g. '2 workers x 1 CPU' or '1 CPU'."""
        return self.resources.describe(self.stages[stage_id].workers)

    @property
    def axis_keys(self) -> list[str]:
        return self.study.varied_keys

    def users(self, stage_id: str) -> list[tuple[ArmRun, str]]:
        """The (arm run, stage name) pairs that use a stage (a shared stage has several)."""
        out = []
        for run in self.runs:
            for name, sid in run.stages.items():
                if sid == stage_id:
                    out.append((run, name))
            for name, ids in run.candidates.items():
                out += [(run, f"{name}#{i + 1}") for i, sid in enumerate(ids) if sid == stage_id]
                parent = self.stages[stage_id].parent if stage_id in self.stages else None
                out += [(run, f"{name}#{i + 1}/{self.stages[stage_id].kind}") for i, sid in enumerate(ids)
                        if sid == parent]  # an evaluation of a pre-training search's candidate
        return out

    def children(self, stage_id: str) -> list[str]:
        return [s.id for s in self.stages.values() if s.parent == stage_id]


# ---------------------------------------------------------------------------------- hashing
def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def stage_id(kind: str, config: Mapping[str, Any], parent: str | None, workers: int = 1) -> str:
    """`<kind>-<sha256[:12]>` of the resolved config, the parent id and, for a data-parallel stage,
    the worker count (left out at 1, so single-worker ids do not depend on it). The kind prefix is
    for people reading folders; it is a function of the config, so it is not hashed."""
    identity = {"config": config, "parent": parent, **({"workers": workers} if workers > 1 else {})}
    digest = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
    return f"{kind}-{digest[:ID_LENGTH]}"


def stage_workers(runner: str, resources: Resources) -> int:
    """Workers a stage of `runner` runs on: resources.workers if it is data-parallel, else 1."""
    return resources.workers if runner in DATA_PARALLEL_RUNNERS else 1


# ---------------------------------------------------------------------------------- arms
@dataclass
class _Arm:
    name: str
    overlay: dict[str, Any]  # dotted key -> value
    origin: dict[str, str]  # dotted key -> where in the study file it is set


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _labels(keys: list[str]) -> dict[str, str]:
    """Short labels for arm names: the field name, or the full key where two sections share it."""
    last = [k.rpartition(".")[2] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def expand_arms(study: Study) -> list[_Arm]:
    """Named arms x grid (axes) x zip x partial-fine-tune blocks, named from their values."""
    labels = _labels(study.varied_keys)
    named = [_Arm(name, {f"{s}.{k}": v for s, fields in ov.items() for k, v in fields.items()},
                  {f"{s}.{k}": f"arms.{name}.{s}.{k}" for s, fields in ov.items() for k in fields})
             for name, ov in study.arms.items()] or [_Arm("", {}, {})]
    grid_keys = list(study.axes)
    grid = [[(key, i, v) for i, v in enumerate(study.axes[key])] for key in grid_keys]
    zipped = [[(key, i, values[i]) for key, values in study.zip.items()]
              for i in range(len(next(iter(study.zip.values()))))] if study.zip else [[]]
    blocks = _partial_blocks(study)

    arms = []
    for arm, cell, row, block in itertools.product(named, itertools.product(*grid), zipped, blocks):
        overlay, origin, parts = dict(arm.overlay), dict(arm.origin), [arm.name] if arm.name else []
        settings = [(key, value, f"axes.{key}[{i}]") for key, i, value in cell]
        settings += [(key, value, f"zip.{key}[{i}]") for key, i, value in row]
        if block is not None:
            i, value = block
            settings.append(("finetune.tune_blocks", None if value == "all" else value,
                             f"partial_finetune.blocks[{i}]"))
        for key, value, where in settings:
            if key in arm.overlay:
                raise StudyError(None, where, f"{key} is also set by arm {arm.name!r}; set each key in one place")
            overlay[key], origin[key] = value, where
            parts.append(f"{labels[key]}={'all' if key == 'finetune.tune_blocks' and value is None else format_value(value)}")
        arms.append(_Arm(",".join(parts) or "base", overlay, origin))
    names = [a.name for a in arms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StudyError(None, "axes", f"two arms would both be named {repeated[0]!r}; repeated values?")
    return arms


def _partial_blocks(study: Study) -> list[tuple[int, Any] | None]:
    if study.partial_finetune is None:
        return [None]
    blocks = list(enumerate(study.partial_finetune.blocks))
    if "finetune" in study.evaluations and not any(v == "all" for _, v in blocks):
        blocks.append((len(blocks), "all"))  # end-to-end fine-tuning is the 'all blocks' point
    return blocks


# ---------------------------------------------------------------------------------- resolving
class _Resolver:
    """Merges profile base, study base and an arm overlay, and validates each section, blaming the
    file and field a bad value came from."""

    def __init__(self, study: Study, profile: Profile):
        self.study, self.profile = study, profile
        self.origin: dict[str, tuple[Path | None, str]] = {}
        self.merged: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for source, overlay in ((profile.source, profile.base), (study.source, study.base)):
            for section, fields in overlay.items():
                for name, value in fields.items():
                    self.merged[section][name] = value
                    self.origin[f"{section}.{name}"] = (source, f"base.{section}.{name}")

    def resolve(self, arm: _Arm, seed: int) -> dict[str, BaseModel]:
        for key in SEED_FIELDS:  # one list of seeds, so every stage of a repetition shares it
            if key in arm.overlay or key in self.origin:
                file, path = (self.study.source, arm.origin[key]) if key in arm.overlay else self.origin[key]
                raise StudyError(file, path, "seeds are set by the study's `seeds: [...]` list, not per key")
        merged = {s: dict(f) for s, f in self.merged.items()}
        origin = dict(self.origin)
        for key, value in arm.overlay.items():
            section, name = key.split(".", 1)
            merged[section][name] = value
            origin[key] = (self.study.source, arm.origin[key])
        for key in SEED_FIELDS:
            section, name = key.split(".", 1)
            merged[section][name] = seed
            origin[key] = (self.study.source, "seeds")

        def where(path: str, section: str) -> tuple[Path | None, str]:
            if path in origin:
                return origin[path]
            return self.study.source, f"arm {arm.name!r}: {path or section}"

        configs = {}
        for section, cls in SECTIONS.items():
            configs[section] = self._validate(cls, merged[section], lambda p, s=section: where(_under(s, p), s))
        model, data = configs["model"], configs["data"]
        jobs = {"pretrain": (PretrainJob, {"pretrain": configs["pretrain"]}),
                "linear_probe": (LinearProbeJob, {"probe": configs["linear_probe"]}),
                "finetune": (FinetuneJob, {"finetune": configs["finetune"]})}
        for runner, (cls, recipe) in jobs.items():
            if runner in ("linear_probe", "finetune") and not self._uses(runner):
                continue
            # Cross-section checks (channels, tune_blocks <= depth): blamed on the arm.
            self._validate(cls, {"model": model, "data": data, **recipe}, lambda p, r=runner: where(_job_path(p), r))
        return configs

    def _uses(self, runner: str) -> bool:
        evaluations = set(self.study.evaluations)
        if runner == "finetune":
            return bool(evaluations & {"finetune", "partial_finetune", "scratch"})
        return runner in evaluations

    @staticmethod
    def _validate(cls: type[BaseModel], data: dict[str, Any],
                  where: Callable[[str], tuple[Path | None, str]]) -> BaseModel:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise from_validation(None, e, where=where) from None


def _under(section: str, path: str) -> str:
    return f"{section}.{path}" if path else section


def _job_path(path: str) -> str:
    """A job's error location under the study's names: probe.blr -> linear_probe.blr."""
    head, _, rest = path.partition(".")
    renamed = {"probe": "linear_probe"}.get(head, head)
    return f"{renamed}.{rest}" if rest else (renamed if head else "")


# ---------------------------------------------------------------------------------- stages
def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _eval_kind(finetune: Mapping[str, Any]) -> str:
    if finetune["init"] == "random":
        return "scratch"
    return "finetune" if finetune["tune_blocks"] is None else "partial_finetune"


def scratch_model(model: ModelConfig) -> ModelConfig:
    """The classifier's model with every pre-training-only field back at the variant's default."""
    keep = {k: v for k, v in model.model_dump().items() if k not in PRETRAIN_ONLY_MODEL_FIELDS}
    return ModelConfig.model_validate(keep)  # the variant fills the rest


def plan(study: Study, profile: Profile) -> Plan:
    """Expand a study into arm runs and a deduplicated stage graph; validate every arm's config."""
    try:
        return _plan(study, profile)
    except StudyError as e:
        if e.file is None:
            raise StudyError(study.source, e.path, e.message) from None
        raise


def _plan(study: Study, profile: Profile) -> Plan:
    study = study.at(profile.name)  # the study's own changes for this scale, if it has any
    resolver = _Resolver(study, profile)
    resources = study.resources or profile.resources
    stages: dict[str, Stage] = {}
    runs: list[ArmRun] = []
    tasks: dict[str, SearchTask] = {}
    by_content: dict[str, str] = {}  # a search's config, parent and seed -> its id

    def add(kind: str, runner: str, config: dict[str, Any], parent: str | None) -> str:
        workers = stage_workers(runner, resources)
        sid = stage_id(kind, config, parent, workers)
        stages.setdefault(sid, Stage(sid, kind, runner, config, parent, workers))
        return sid

    arms = expand_arms(study)
    if study.baseline is not None and study.baseline not in {a.name for a in arms}:
        scaled = profile.name in study.profiles and study.profiles[profile.name].baseline is not None
        where = f"profiles.{profile.name}.baseline" if scaled else "baseline"
        raise StudyError(study.source, where, f"no arm is named {study.baseline!r} at profile {profile.name}; "
                                              f"arms: {', '.join(a.name for a in arms)}")
    for arm in arms:
        for seed in study.seeds:
            configs = with_min_steps(resolver.resolve(arm, seed), resources)
            model, data = _dump(configs["model"]), _dump(configs["data"])
            pre_config = {"model": model, "data": data, "pretrain": _dump(configs["pretrain"])}
            searched_pretrain = study.search is not None and study.search.section == "pretrain"
            # a searched pre-training is proposed while the study runs, its evaluations with it
            pre = None if searched_pretrain else add("pretrain", "pretrain", pre_config, None)
            ids, searches, children = ({} if searched_pretrain else {"pretrain": pre}), {}, []

            def search(runner: str, recipe: dict[str, Any], m: dict[str, Any], d: dict[str, Any], parent: str | None,
                       arm_name: str = arm.name, seed: int = seed, evaluations: tuple = ()) -> str:
                """The id of the search of this stage: one search for arms whose searched stage is
                the same (e.g. a scratch baseline no arm's pre-training changes), like a shared stage."""
                task = _search_task(study, arm_name, seed, runner, recipe, m, d, parent, resources, evaluations)
                content = canonical_json({"base": task.base, "parent": parent, "seed": seed, "kind": task.kind,
                                          "children": [list(c) for c in evaluations]})
                return tasks.setdefault(by_content.setdefault(content, task.id), task).id

            def evaluation(runner: str, recipe: dict[str, Any], parent: str | None, m=model, d=data) -> tuple[str, str]:
                section = JOBS[runner][1]
                kind = "linear_probe" if runner == "linear_probe" else _eval_kind(recipe)
                config = {"model": m, "data": d, section: recipe}
                if searched_pretrain and recipe.get("init") != "random":  # on each candidate (scratch reads none)
                    children.append((kind, runner, config, stage_workers(runner, resources)))
                    return kind, ""
                return kind, add(kind, runner, config, parent)

            for name in study.evaluations:
                if name == "scratch":
                    recipe = {**_dump(configs["finetune"]), "init": "random", "tune_blocks": None}
                    d = {**data, **{k: DataConfig.model_fields[k].default for k in PRETRAIN_ONLY_DATA_FIELDS}}
                    m = _dump(scratch_model(configs["model"]))
                    if study.search is not None and study.search.section == "finetune":  # tuned for itself too
                        searches["scratch"] = search("finetune", recipe, m, d, None)
                    else:
                        ids["scratch"] = evaluation("finetune", recipe, None, m, d)[1]
                    continue
                if name == "partial_finetune" and "finetune" in study.evaluations:
                    continue  # the finetune evaluation below runs this arm's tune_blocks
                runner = "linear_probe" if name == "linear_probe" else "finetune"
                recipe = _dump(configs[runner])
                if study.search is not None and study.search.section == runner:
                    tid = search(runner, recipe, model, data, pre)
                    searches[tasks[tid].kind] = tid
                else:
                    kind, sid = evaluation(runner, recipe, pre)
                    if sid:
                        ids[kind] = sid
            if searched_pretrain:
                tid = search("pretrain", pre_config["pretrain"], model, data, None, evaluations=tuple(children))
                searches["pretrain"] = tid
            axes = {key: _resolved(configs, key) for key in study.varied_keys}
            runs.append(ArmRun(arm.name, seed, axes, ids, searches))
    ordered = {sid: s for sid, s in stages.items() if s.parent is None}
    ordered.update({sid: s for sid, s in stages.items() if s.parent is not None})
    return Plan(study, profile, tuple(runs), ordered, resources, tasks)


def with_min_steps(configs: dict[str, BaseModel], resources: Resources) -> dict[str, BaseModel]:
    """Each recipe with `epochs` raised to reach its `min_steps` optimizer steps on the training
    split (its size counted from the data config; unchanged when it cannot be counted, e.g. an
    image folder that is not on this machine), `warmup_epochs` scaled alike. A pre-training of 0
    epochs stays 0 (no pre-training)."""
    data = configs["data"]
    images = train_images(data.dataset, data.root, data.synthetic_size, data.val_fraction, data.train_limit)
    out = dict(configs)
    for section, runner in (("pretrain", "pretrain"), ("linear_probe", "linear_probe"), ("finetune", "finetune")):
        recipe = configs[section]
        if not recipe.min_steps or images is None or recipe.epochs == 0:
            continue
        per_step = recipe.batch_size * recipe.accum_iter * stage_workers(runner, resources)
        steps_per_epoch = max(1, images // per_step)
        epochs = min(MAX_EPOCHS, max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch)))
        # the whole schedule stretches: warmup keeps its share of the training (a 12-block ViT-T
        # fine-tuned at the laptop's lr collapsed with a warmup of 0.5 of 13 short epochs)
        warmup = recipe.warmup_epochs * epochs / recipe.epochs
        out[section] = recipe.model_copy(update={"epochs": epochs, "warmup_epochs": warmup})
    return out


def _search_task(study: Study, arm: str, seed: int, runner: str, recipe: dict[str, Any], model: dict[str, Any],
                 data: dict[str, Any], parent: str | None, resources: Resources, children: tuple = ()) -> SearchTask:
    """The (arm, seed)'s searched stage; each end of every range (and each choice) must make a
    valid recipe, so a bad range is refused before anything runs."""
    kind = runner if runner in ("pretrain", "linear_probe") else _eval_kind(recipe)
    task = SearchTask(study.name, f"{arm}/seed{seed}/{kind}", seed, kind, runner,
                      {"model": model, "data": data, JOBS[runner][1]: recipe}, parent,
                      stage_workers(runner, resources), study.search, children)
    for key, space in study.search.space.items():
        for value in space.choices if space.choices is not None else (space.low, space.high):
            try:
                task.stage({key: int(value) if space.integer else value})
            except StudyError as e:
                raise StudyError(study.source, f"search.space.{key}", e.message) from None
    return task


def _resolved(configs: Mapping[str, BaseModel], key: str) -> Any:
    section, name = key.split(".", 1)
    value = getattr(configs[section], name)
    return list(value) if isinstance(value, tuple) else value



def union(name: str, plans: list[Plan], description: str = "", source: Path | None = None) -> Plan:
    """Several studies' plans as one (a suite): every stage once (a stage two studies share is one
    stage), parents before children, and every arm run under `<study>/<arm>`. The studies must run at
    one profile on one pool of trials: the same resources. Raises StudyError naming the study
    whose resources differ."""
    first = plans[0]
    kinds = [p.resources for p in plans]
    usual = max(kinds, key=kinds.count)  # the odd one out is named: the most common resources are the suite's
    for other in plans:
        if other.resources != usual:
            model = plans[kinds.index(usual)]
            raise StudyError(other.study.source, "resources",
                             f"a suite runs its studies as one pool of trials, so they take the same resources: "
                             f"{other.resources.describe(other.resources.workers)} here, "
                             f"{usual.describe(usual.workers)} in {model.study.source or model.study.name}; "
                             f"give them the same `resources` (or none)")
    stages: dict[str, Stage] = {}
    for p in plans:  # each plan lists parents first; a parent another plan listed is earlier still
        for sid, stage in p.stages.items():
            stages.setdefault(sid, stage)
    # the same `candidates` dict as the study's run: a candidate added to one is in both
    runs = tuple(ArmRun(f"{p.study.name}/{r.arm}", r.seed, r.axes, r.stages, r.searches, r.candidates)
                 for p in plans for r in p.runs)
    searches = {tid: task for p in plans for tid, task in p.searches.items()}
    evaluations = list(dict.fromkeys(e for p in plans for e in p.study.evaluations))
    seeds = sorted({s for p in plans for s in p.study.seeds})
    # Not validated again: its studies were (a suite with partial fine-tuning in some study has no blocks of its own).
    study = Study.model_construct(name=name, description=description, evaluations=evaluations, seeds=seeds)
    study._source = Path(source) if source is not None else None
    return Plan(study, first.profile, runs, stages, usual, searches)
