"""Profile files: the shipped example validates; errors name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from decoders.registry import load_registry
from device_registry.profiles import DocumentError, load_profiles

EXAMPLE = Path(__file__).parents[2] / "deploy" / "registry" / "profiles.example.yaml"


def test_the_example_profiles_validate_against_the_decoders() -> None:
    profiles = load_profiles(EXAMPLE, set(load_registry().names()))
    assert {p.kind for p in profiles} >= {"air", "env", "streetlight", "gantry", "ev", "parking"}
    tables = {t.name for t in load_registry().tables()}
    for p in profiles:
        assert set(p.tables) <= tables, p.name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "profiles:\n  - name: a\n    kind: env\n    decoder: hj212\n"
            "    report_interval_s: 60\n    colour: red\n",
            "{f}:6: profiles[0].colour: Extra inputs are not permitted",
        ),
        (
            "profiles:\n  - name: Bad Name\n    kind: env\n    decoder: hj212\n"
            "    report_interval_s: 60\n",
            "{f}:2: profiles[0].name: String should match pattern",
        ),
        (
            "profiles:\n  - name: a\n    kind: env\n    decoder: hj212\n"
            "    report_interval_s: 60\n    retention: forever\n",
            "{f}:6: profiles[0].retention: String should match pattern",
        ),
        ("profiles: [\n", "{f}:2: not valid YAML"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(DocumentError) as err:
        load_profiles(f, {"hj212"})
    assert message.format(f=f) in str(err.value)
