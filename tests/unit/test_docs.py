"""What the documentation states about the code, checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from device_registry.credentials import acl_text

ROOT = Path(__file__).parents[2]


def _docs() -> list[Path]:
    out = [*ROOT.glob("*.md"), *ROOT.glob("*/README.md"), *ROOT.glob("docs/**/*.md")]
    return [*out, *(p for p in (ROOT / "deploy").rglob("*") if p.is_file())]


def test_every_mosquitto_acl_pattern_quoted_in_the_docs_is_one_the_export_writes() -> None:
    written = set(acl_text("cityflux", None).splitlines())
    quoted = {
        (path.relative_to(ROOT), m.group(0))
        for path in _docs()
        for m in re.finditer(r"pattern (?:read|write) cityflux/[^\s`)]+", path.read_text())
    }
    assert quoted, "no ACL pattern quoted"
    assert {q for q in quoted if q[1] not in written} == set()
