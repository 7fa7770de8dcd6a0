"""What `ablate run` checks before it writes or starts anything: that the output folder can take
the study's files, and that every stage's data is where its config says. A problem is one line
naming the option, or the file and field the value came from (a StudyError: exit status 2), so
nothing is created and no Ray is started. Then it says where everything goes and comes from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ablate.errors import StudyError
from ablate.execution import store
from ablate.planning.plan import Plan, Stage
from core.data_files import describe, missing_data

MIN_FREE_BYTES = 1 << 20  # below this the first checkpoint cannot be written
_UNSET = object()


def check_output(out: Path, study_name: str) -> None:
    """The output root, its stage store and the study's folder are (or can be made) writable folders."""
    out = Path(out)
    for path in (out, store.stages_root(out), store.study_dir(out, study_name)):
        if path.exists() and not path.is_dir():
            raise StudyError("--out", "", f"{path} is a file, not a folder; give --out a folder (it is created if "
                                          f"missing)")
    existing = out.absolute()
    while not existing.exists() and existing.parent != existing:  # the nearest folder that exists decides
        existing = existing.parent
    if not existing.is_dir():
        raise StudyError("--out", "", f"{out}: {existing} is a file, so no folder can be made under it; give "
                                      f"--out a folder")
    for path in (existing, store.stages_root(out), store.study_dir(out, study_name)):
        if path.is_dir():
            _check_writable(out, path)


def _check_writable(out: Path, folder: Path) -> None:
    try:
        stats = os.statvfs(folder)
    except OSError:
        stats = None
    if stats is not None and stats.f_flag & os.ST_RDONLY:
        raise StudyError("--out", "", f"{out}: {folder} is on a read-only file system; give --out a writable folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StudyError("--out", "", f"{out}: no permission to write in {folder}; give --out a writable folder")
    if stats is not None and stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES:
        free = stats.f_bavail * stats.f_frsize
        raise StudyError("--out", "", f"{out}: the disk holding {folder} is full ({free:,} bytes free); free some "
                                      f"space or give --out a folder on another disk")


def check_storage(uri: str, plan: Plan):
    """--storage: a URI this machine can write and read, and no data-parallel stage (its ranks write
    on their own nodes); StudyError (one line) otherwise. Returns the opened Storage."""
    from ablate.execution.storage import Storage, StorageError

    parallel = sorted({s.workers for s in plan.stages.values() if s.workers > 1})
    if parallel:
        raise StudyError(plan.study.source, "resources.workers", f"{parallel[0]} workers a stage: with --storage, "
                         f"stages run on one worker each (the ranks of a data-parallel stage write on their own "
                         f"nodes); run them without --storage, with --out on a mount every node shares")
    storage = Storage(uri)
    try:
        storage.check()
    except StorageError as e:
        raise StudyError(None, "", f"{e}; check the URI and this machine's credentials for it") from None
    return storage


def data_sources(stages: Iterable[Stage]) -> list[tuple[str, str | None]]:
    """The distinct (dataset, data.root) of these stages, in their order."""
    seen: dict[tuple[str, str | None], None] = {}
    for stage in stages:
        data = stage.config["data"]
        seen.setdefault((data["dataset"], data.get("root")), None)
    return list(seen)


def check_data(plan: Plan) -> None:
    """Every stage's dataset can be read (or, for CIFAR, downloaded) where its config says."""
    for dataset, root in data_sources(plan.stages.values()):
        problem = missing_data(dataset, root)
        if problem is None:
            continue
        key, value = ("data.root", root) if root is not None else ("data.dataset", dataset)
        file, path = _origin(plan, key, value)
        raise StudyError(file, path, problem)


def _origin(plan: Plan, key: str, value: Any) -> tuple[Path | None, str]:
    """Where in the study or profile `key` was set to `value` (merge order reversed: arm, axes, zip,
    study base, profile base); the profile for a default nobody set."""
    section, name = key.split(".", 1)
    study, profile = plan.study, plan.profile
    for arm, overlay in study.arms.items():
        if overlay.get(section, {}).get(name, _UNSET) == value:
            return study.source, f"arms.{arm}.{key}"
    for field in ("axes", "zip"):
        values = getattr(study, field).get(key) or []
        if value in values:
            return study.source, f"{field}.{key}[{values.index(value)}]"
    if study.base.get(section, {}).get(name, _UNSET) == value:
        return study.source, f"base.{key}"
    if profile.base.get(section, {}).get(name, _UNSET) == value:
        return profile.source, f"base.{key}"
    return profile.source or study.source, f"{key} (default)"


def summary(plan: Plan, out: Path, *, data_checked: bool = True, studies: int = 1) -> list[str]:
    """Where the run writes and reads, said before it writes anything. `studies`: how many a
    suite's plan (ablate.planning.plan.union) runs."""
    out = Path(out).absolute()
    folder = store.study_dir(out, plan.study.name)
    where = (f"each study's results, report and MLflow database in {out}/<study>/, the suite's combined report "
             f"and MLflow database in {folder}/" if studies > 1 else
             f"this study's results, report and MLflow database in {folder}/")
    lines = [f"output: {out} (stage folders in {store.stages_root(out)}/, {where})"]
    note = "" if data_checked else " (not checked here: the trials read it on the cluster's nodes)"
    lines += [f"data: {describe(dataset, root)}{note}" for dataset, root in data_sources(plan.stages.values())]
    if plan.study.tracking.uri:
        lines.append(f"MLflow: {plan.study.tracking.uri}")
    return lines
