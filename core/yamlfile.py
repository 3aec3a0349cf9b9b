"""Reading YAML/JSON documents so that validation errors name the file and the line.

pydantic reports where a value failed as a path (``profiles.2.report_interval_s``); the
composed YAML node tree maps that path back to a line, so an operator reads
``profiles.yaml:14: profiles[2].report_interval_s: Input should be greater than 0``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails


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


def _walk(node: yaml.Node | None, loc: Sequence[int | str]) -> tuple[yaml.Node | None, bool]:
    """The node at ``loc``, as deep as the tree goes, and whether it went all the way."""
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == key]
            if not match:
                return node, False
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return node, False
            node = node.value[key]
        else:
            return node, False
    return node, True


def line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the value at ``loc`` (as deep as the tree goes)."""
    found, _ = _walk(node, loc)
    return found.start_mark.line + 1 if found is not None else None


def error_message(err: ErrorDetails, node: yaml.Node | None, loc: Sequence[int | str]) -> str:
    """pydantic's message for one error; where a string was expected and YAML read an
    unquoted word as something else (``off`` → false, ``0012`` → 12), it says to quote it."""
    msg = err["msg"].removeprefix("Value error, ")  # pydantic's wording for our checks
    if err["type"] != "string_type" or isinstance(err.get("input"), str):
        return msg
    found, exact = _walk(node, loc)
    if exact and isinstance(found, yaml.ScalarNode) and found.style is None:
        text = str(found.value)
        read = json.dumps(err["input"], default=str)  # a date or time: its ISO text
        msg += f"{':' if msg else ''} YAML reads {text} as {read}; "
        msg += f'quote it: "{text}"'
    return msg


def describe(path: Path, node: yaml.Node | None, exc: ValidationError, prefix: str = "") -> str:
    """Every validation error as ``file:line: field: problem`` lines."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        field = prefix + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc)
        line = line_of(node, loc)
        where = f"{path}:{line}" if line else str(path)
        field = field.lstrip(".")
        msg = error_message(err, node, loc)
        lines.append(f"{where}: {field}: {msg}" if field else f"{where}: {msg}")
    return "\n".join(lines)
