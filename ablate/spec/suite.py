"""A suite: several studies run, tracked and reported as one (`ablate run studies/`).

What `ablate run` and `ablate report` are given names the suite:
- a folder: every study file in it (its `*.yaml`, name order; not the profiles below it, nor a
  suite file in it), the suite named after the folder;
- a suite file: a YAML mapping with `studies:` (paths relative to the file) and an optional `name`
  and `description`;
- several study files: those, the suite named after them.
One study file is no suite: it runs as it always has.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ablate.errors import StudyError, validated
from ablate.spec.study import NAME_PATTERN
from ablate.spec.yamlfile import read_mapping


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    files: tuple[Path, ...]  # the study files, in the order they are given
    source: Path | None = None  # the folder or suite file it came from; None for a list of files


class SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, pattern=NAME_PATTERN, max_length=100)
    description: str = ""
    studies: list[str] = Field(min_length=1)


def is_suite_file(path: Path) -> bool:
    """A YAML file whose top level names `studies:` (a study file never does)."""
    try:
        return "studies" in read_mapping(path)
    except StudyError:  # not YAML, or not a mapping: load_study says what is wrong with it
        return False


def study_files(folder: Path) -> list[Path]:
    """The study files of a folder (its own *.yaml, not the profiles below it, nor a suite file), in name order."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
                   and not is_suite_file(p))
    if not files:
        raise StudyError(folder, "", "a folder of studies holds .yaml study files; this one has none")
    return files


def load_suite(paths: Sequence[Path]) -> Suite | None:
    """The suite `paths` name, or None when they name one study file. StudyError (one line) for a
    path that does not exist, a suite file that is not one, or a study listed twice."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise StudyError("STUDY", "", "give a study file, a folder of them or a suite file")
    for path in paths:
        if not path.exists():
            raise StudyError(path, "", "no such file or folder")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        name = _name(folder.resolve().name)
        return Suite(name, f"every study in {folder}", tuple(study_files(folder)), folder)
    if len(paths) == 1 and is_suite_file(paths[0]):
        return _from_file(paths[0])
    if len(paths) == 1:
        return None
    for path in paths:
        if path.is_dir() or is_suite_file(path):
            raise StudyError(path, "", "several arguments are study files; give a folder or a suite file alone")
    _once(paths, None)
    stems = sorted(p.stem for p in paths)
    digest = hashlib.sha256("\0".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:8]
    return Suite(_name(f"suite-{digest}"), f"the studies {', '.join(stems)}", tuple(paths))


def _from_file(path: Path) -> Suite:
    spec = validated(SuiteFile, read_mapping(path), path)
    files = []
    for i, entry in enumerate(spec.studies):
        file = (path.parent / entry)
        if not file.is_file():
            raise StudyError(path, f"studies[{i}]", f"{file}: no such study file")
        files.append(file)
    _once(files, path)
    return Suite(spec.name or _name(path.stem), spec.description, tuple(files), path)


def _once(files: Sequence[Path], source: Path | None) -> None:
    seen: dict[Path, int] = {}
    for i, file in enumerate(files):
        key = file.resolve()
        if key in seen:
            where = f"studies[{i}]" if source is not None else ""
            raise StudyError(source or file, where, f"{file} is listed twice")
        seen[key] = i


def _name(text: str) -> str:
    """A folder name for the suite's results (the same rule as a study's name)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "suite"
    return name[:100]


def describe(suite: Suite) -> dict[str, Any]:
    """The suite as its run record keeps it."""
    return {"suite": suite.name, "description": suite.description, "source": str(suite.source or ""),
            "study_files": [str(p) for p in suite.files]}
