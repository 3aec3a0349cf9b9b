"""Golden vectors (tests/vectors/<format>/<case>/) and every decoder's documentation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cityflux.decode import describe
from decoders.registry import load_registry

VECTORS = Path(__file__).parents[1] / "vectors"
README = Path(__file__).parents[2] / "decoders" / "README.md"
# tests/vectors/poison/ holds the poison corpus (tests/unit/test_poison.py), not golden cases
CASES = sorted(p for p in VECTORS.glob("*/*") if p.is_dir() and p.parent.name != "poison")


def _source_fields(case: Path) -> dict[str, str]:
    lines = (case / "SOURCE").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_vector_decodes_to_its_expected_output(case: Path) -> None:
    decoder = load_registry().get(case.parent.name)
    fields = _source_fields(case)
    if (case / "frame.hex").exists():
        frame = bytes.fromhex((case / "frame.hex").read_text().strip())
    else:
        frame = (case / "frame.txt").read_text().rstrip("\n").encode()
    got = describe(
        decoder,
        [frame],
        int(fields["received_us"]),
        fields.get("device", ""),
        fields.get("source", "cli"),
    )
    expected = [json.loads(x) for x in (case / "expected.jsonl").read_text().splitlines()]
    assert got == expected
    assert (case / "SOURCE").read_text().strip(), "every vector names its source"


@pytest.mark.parametrize("name", load_registry().names())
def test_every_registered_decoder_has_vectors_and_a_readme_section(name: str) -> None:
    assert any(c.parent.name == name for c in CASES), f"no golden vector for {name}"
    assert f"\n## {name}" in README.read_text(), f"decoders/README.md has no section for {name}"


def test_senml_cbor_and_json_forms_of_the_same_rfc_pack_give_the_same_rows() -> None:
    case = "rfc8428-multiple-measurements"
    cbor = (VECTORS / "senml-cbor" / case / "expected.jsonl").read_text()
    assert cbor == (VECTORS / "senml-json" / case / "expected.jsonl").read_text()
