"""Rule files: YAML validated with pydantic; errors name the file, the line and the field.

```yaml
rules:
  - name: pm25-high                 # one active alert per (rule, device)
    table: env_readings             # the table whose committed rows the rule reads
    where: metric == "pm2_5"        # which rows (optional)
    when: value > 75                # raise once this held for `for`
    for: 10m
    clear: value < 60               # hysteresis: a separate clear condition (default: not when)
    clear_for: 5m
    severity: warning               # info | warning | critical
```

Expressions are the safe language of :mod:`alerts.expr`, checked against the table's
columns when the file is loaded.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alerts.expr import ExprError, Expression, compile_expr
from decoders.base import TableSpec
from ingest.yamlfile import DocumentError, describe, line_of, load_document

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str | float) -> float:
    """Seconds in ``90``, ``"30s"``, ``"10m"``, ``"1.5h"``, ``"2d"``."""
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 1h")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class Severity(StrEnum):
    """How loud an alert is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Rule(BaseModel):
    """A threshold rule with duration and hysteresis."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    table: str
    where: str | None = None
    when: str
    for_s: Annotated[float, Field(alias="for", ge=0)] = 0.0
    clear: str | None = None
    clear_for_s: Annotated[float, Field(alias="clear_for", ge=0)] = 0.0
    severity: Severity = Severity.WARNING
    value: str | None = Field(
        None, description="expression reported as the alert's value (default: the value column)"
    )
    description: str = ""

    @field_validator("for_s", "clear_for_s", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        if isinstance(v, str | int | float):
            return parse_duration(v)
        raise ValueError("a duration like 30s, 10m, 1h")


class RulesFile(BaseModel):
    """The document."""

    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]


class CompiledRule:
    """A rule with its expressions compiled against its table's columns."""

    def __init__(self, rule: Rule, spec: TableSpec) -> None:
        cols = [c for c in spec.column_names if c != "device_id"]
        self.rule = rule
        self.spec = spec
        self.where: Expression | None = compile_expr(rule.where, cols) if rule.where else None
        self.when = compile_expr(rule.when, cols)
        self.clear: Expression | None = compile_expr(rule.clear, cols) if rule.clear else None
        value = rule.value or ("value" if "value" in cols else None)
        self.value: Expression | None = compile_expr(value, cols) if value else None
        self.for_us = int(rule.for_s * 1e6)
        self.clear_for_us = int(rule.clear_for_s * 1e6)


def load_rules(path: Path, tables: dict[str, TableSpec]) -> list[CompiledRule]:
    """Read, validate and compile a rules file; ``DocumentError`` says file:line: problem."""
    data, node = load_document(path)
    try:
        doc = RulesFile.model_validate(data)
    except ValidationError as exc:
        raise DocumentError(describe(path, node, exc)) from None
    out: list[CompiledRule] = []
    seen: set[str] = set()
    for i, rule in enumerate(doc.rules):
        where = f"{path}:{line_of(node, ['rules', i])}: rules[{i}]"
        if rule.name in seen:
            raise DocumentError(f"{where}.name: duplicate rule {rule.name!r}")
        seen.add(rule.name)
        spec = tables.get(rule.table)
        if spec is None:
            raise DocumentError(
                f"{where}.table: unknown table {rule.table!r} (known: {', '.join(sorted(tables))})"
            )
        try:
            out.append(CompiledRule(rule, spec))
        except ExprError as exc:
            field = _failing_field(rule, spec)
            line = line_of(node, ["rules", i, field])
            raise DocumentError(f"{path}:{line}: rules[{i}].{field}: {exc}") from None
    return out


def _failing_field(rule: Rule, spec: TableSpec) -> str:
    cols = [c for c in spec.column_names if c != "device_id"]
    for field, text in (
        ("where", rule.where),
        ("when", rule.when),
        ("clear", rule.clear),
        ("value", rule.value),
    ):
        if text:
            try:
                compile_expr(text, cols)
            except ExprError:
                return field
    return "value"
