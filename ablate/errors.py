"""Bad input, said in one line: `file: field.path: message`, exit status 2.

Every check of a study or profile raises `StudyError`; the CLI prints it to stderr without a
traceback and stops before anything is created (no run, no Ray session, no output folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

EXIT_BAD_INPUT = 2
EXIT_CANNOT_RUN = 1


class StudyError(Exception):
    """A study or profile that cannot run, located by file and field path."""

    def __init__(self, file: Path | str | None, path: str, message: str):
        self.file, self.path, self.message = file, path, message
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [str(self.file) if self.file else None, self.path or None, self.message]
        return ": ".join(p for p in parts if p).replace("\n", " ")


class CannotRun(Exception):
    """A valid study that cannot start here: no Ray cluster at the address, tracking store
    unreachable. One line, exit status 1."""

    exit_code = EXIT_CANNOT_RUN


class ClusterTooSmall(CannotRun):
    """A trial the connected Ray cluster can never place (more workers, CPUs or GPUs than its live
    nodes have), refused before its wave starts instead of waiting forever. Exit status 2: what
    the study asks for is wrong for this cluster, as bad input is."""

    exit_code = EXIT_BAD_INPUT


class StorageNotShared(CannotRun):
    """A node of the joined cluster does not see the output root or the data where the driver
    does, refused before anything starts. Exit status 2: the --out given is wrong for this cluster."""

    exit_code = EXIT_BAD_INPUT


def first_line(e: BaseException) -> str:
    """An exception's first line (300 characters at most), or its type's name when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def loc_path(loc: tuple[Any, ...]) -> str:
    """('axes', 'model.mask_ratio', 2) -> 'axes.model.mask_ratio[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class a location points into (for 'allowed keys' hints)."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def message_of(error: dict[str, Any], model: type[BaseModel] | None = None) -> str:
    """Pydantic's message for one error, with the allowed keys for an unknown one."""
    if error["type"] == "extra_forbidden":
        parent = _model_at(model, tuple(error["loc"][:-1]))
        allowed = f"; allowed: {', '.join(parent.model_fields)}" if parent is not None else ""
        return f"unknown key{allowed}"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if error["type"] not in ("missing",) and "input" in error and not isinstance(error["input"], (dict, list)):
        msg += f" (got {error['input']!r})"
    return msg


def from_validation(file: Path | str | None, err: ValidationError, *, prefix: str = "",
                    model: type[BaseModel] | None = None,
                    where: Callable[[str], tuple[Path | str | None, str]] | None = None,
                    suffix: str = "") -> StudyError:
    """The first error of a ValidationError as one StudyError line (the count of others appended).

    `where` maps the error's dotted path to the (file, path) the offending value came from, so a
    value set in a profile is blamed on the profile and an axis value on the axis.
    """
    errors = err.errors()
    first = errors[0]
    path = loc_path(tuple(first["loc"]))
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    if where is not None:
        file, path = where(path)
    message = message_of(first, model) + suffix
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return StudyError(file, path, message)


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: Any, source: Path | str | None) -> Model:
    """`model` from plain data read from `source`, or a one-line StudyError naming the file and the field."""
    try:
        return model.model_validate(data)
    except StudyError as e:  # raised by a validator, which does not know the file
        raise StudyError(source, e.path, e.message) from None
    except ValidationError as e:
        raise from_validation(source, e, model=model) from None
