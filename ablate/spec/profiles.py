"""Loading profiles: where and at which scale a study runs (`--profile`, default laptop).

A profile is `studies/profiles/<name>.yaml`: a description line, the base model/data/pretrain/
linear_probe/finetune settings for its machine, per-trial resources, and the pre-training speed
measured there (for `ablate plan`'s cost estimate). Merge order: profile base, study base, arm.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, field_validator

from ablate.errors import StudyError, validated
from ablate.spec.study import Frozen, Overlay, Resources, normalise_overlay
from ablate.spec.yamlfile import read_mapping

DEFAULT_PROFILE = "laptop"
# Next to the study file first (`<study dir>/profiles/`), then the repository's own.
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "studies" / "profiles"


class Profile(Frozen):
    description: str = Field(min_length=1)
    base: Overlay = {}
    resources: Resources = Resources()
    # MAE pre-training images per second per model variant at mask ratio 0.75 on this profile's
    # machine, one worker at `resources`; other stages and ratios are scaled from it by FLOPs, a
    # data-parallel stage by its worker count.
    throughput: dict[str, float] = {}
    _name: str = PrivateAttr("custom")
    _source: Path | None = PrivateAttr(None)

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, value: Any) -> Overlay:
        return normalise_overlay(value, "base")

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> Path | None:
        return self._source


def profile_dirs(study_path: Path | None) -> list[Path]:
    dirs = [Path(study_path).resolve().parent / "profiles"] if study_path is not None else []
    return [d for d in dict.fromkeys([*dirs, BUILTIN_DIR]) if d.is_dir()]


def available_profiles(study_path: Path | None = None) -> list[str]:
    return sorted({p.stem for d in profile_dirs(study_path) for p in d.glob("*.yaml")})


def find_profile(name: str, study_path: Path | None = None) -> Path:
    """A profile name (looked up next to the study, then built in) or a path to a profile file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml"):
        if as_path.is_file():
            return as_path
        raise StudyError("--profile", "", f"no such profile file {name}")
    for directory in profile_dirs(study_path):
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise StudyError("--profile", "", f"unknown profile {name!r}; available: "
                     f"{', '.join(available_profiles(study_path)) or 'none found'}")


def parse_profile(data: dict[str, Any], name: str, source: Path | str | None = None) -> Profile:
    profile = validated(Profile, data, source)
    profile._name, profile._source = name, Path(source) if source is not None else None
    return profile


def load_profile(name: str = DEFAULT_PROFILE, study_path: Path | None = None) -> Profile:
    path = find_profile(name, study_path)
    return parse_profile(read_mapping(path), path.stem, path)
