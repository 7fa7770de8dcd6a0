"""Reading a YAML file strictly: plain data only, no duplicate keys, errors as one line.

`yaml.SafeLoader` builds no Python objects (`!!python/...` tags are refused), so a study file
cannot name code to import or run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ablate.errors import StudyError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file, or a StudyError naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(path, "", "no such file") from None
    except IsADirectoryError:
        raise StudyError(path, "", "is a folder; give a .yaml file") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise StudyError(path, f"line {line}", f"not UTF-8 text (byte 0x{e.object[e.start]:02x}); save the file "
                                               f"as UTF-8") from None
    except OSError as e:
        raise StudyError(path, "", f"cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise StudyError(path, where, f"YAML syntax error: {what}") from None
    except yaml.YAMLError as e:
        raise StudyError(path, "", f"YAML error: {str(e).splitlines()[0]}") from None
    if data is None:
        raise StudyError(path, "", "file is empty; expected a mapping of keys")
    if not isinstance(data, dict):
        raise StudyError(path, "", f"expected a mapping of keys at the top level, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise StudyError(path, str(bad[0]), "keys must be strings")
    return data
