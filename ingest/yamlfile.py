"""Reading YAML/JSON documents so that validation errors name the file and the line.

pydantic reports where a value failed as a path (``profiles.2.report_interval_s``); the
composed YAML node tree maps that path back to a line, so an operator reads
``profiles.yaml:14: profiles[2].report_interval_s: Input should be greater than 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class DocumentError(ValueError):
    """A file that cannot be read or does not validate; the message names file and line."""


def load_document(path: Path) -> tuple[Any, yaml.Node | None]:
    """The parsed document and its node tree (YAML is a superset of JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DocumentError(f"{path}: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DocumentError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return data, node


def line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the value at ``loc`` (as deep as the tree goes)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == key]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def describe(path: Path, node: yaml.Node | None, exc: ValidationError, prefix: str = "") -> str:
    """Every validation error as ``file:line: field: problem`` lines."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        field = prefix + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc)
        line = line_of(node, loc)
        where = f"{path}:{line}" if line else str(path)
        field = field.lstrip(".")
        msg = err["msg"].removeprefix("Value error, ")  # pydantic's wording for our checks
        lines.append(f"{where}: {field}: {msg}" if field else f"{where}: {msg}")
    return "\n".join(lines)
