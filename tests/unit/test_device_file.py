"""Reading device files: the vectorised CSV path gives exactly what validating every line in
Python gives (same rows, same values, same errors at the same lines)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_registry.importer import (
    FIELDS,
    DeviceRows,
    LineError,
    _InvalidFieldError,
    read_devices,
    validate,
)
from device_registry.upsert import last_per_device

PROFILES = {"nbiot-env": "env", "air-station": "air"}


def _reference(text: str) -> tuple[DeviceRows, list[LineError]]:
    """Every line through csv + validate, as the importer did before it was vectorised."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader)]
    lines, rows, errors = [], [], []
    for values in reader:
        line = reader.line_num
        if len(values) != len(header):
            errors.append(
                LineError(line, "line", f"{len(values)} fields, the header has {len(header)}")
            )
            continue
        given = dict(zip(header, values, strict=True))
        try:
            rows.append(validate([given.get(f, "") for f in FIELDS], PROFILES))
        except _InvalidFieldError as exc:
            errors.append(LineError(line, exc.field, str(exc)))
            continue
        lines.append(line)
    return DeviceRows.from_values(lines, rows), errors


def _same(a: DeviceRows, b: DeviceRows) -> None:
    a, b = last_per_device(a)[0], last_per_device(b)[0]
    assert a.lines.tolist() == b.lines.tolist()
    for k in a.text:
        assert a.text[k].tolist() == b.text[k].tolist(), k
    for k in a.numbers:
        np.testing.assert_array_equal(a.numbers[k], b.numbers[k], err_msg=k)


def _mostly(valid: list[str], odd: list[str]) -> st.SearchStrategy[str]:
    """Mostly values a simple line carries, sometimes the odd ones (3 in 4 vs 1 in 4)."""
    return st.one_of(
        st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(odd)
    )


IDS = _mostly(
    ["861000000000001", "ST01", "LSVAU2180N0000001", "ST02"],
    ["a b", "x/y", "", "é1", "k" * 65, "ST#2", "ok,comma", "nul\x00id", "tab\tid"],
)
TEXTS = _mostly(["", "Futian", " "], ["x" * 129, "Nan,shan", 'say "hi"', "Lo\u00efc"])
NUMS = _mostly(
    ["", "22.54", "-33.9", "114.05", "-0", "+7", "0"],
    ["95", "1e1", "abc", " 22.5", "180", "180.0000001", "0.1234567890123456", "-1"],
)
PROFS = _mostly(["", "nbiot-env", "air-station"], ["no-such", "NBIOT-ENV"])
STATUS = _mostly(["", "active", "disabled"], ["gone", "Active"])
INSTALL = _mostly([""], ['{"pole": 7}', "[1]", "{bad"])


@st.composite
def device_files(draw: st.DrawFn) -> str:
    header = ["external_id", "profile", "status", "district", "lat", "lon", "road_km"]
    if draw(st.booleans()):
        header.append("install")
    out = io.StringIO()
    w = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    w.writerow(header)
    for _ in range(draw(st.integers(0, 40))):
        row = [
            draw(IDS),
            draw(PROFS),
            draw(STATUS),
            draw(TEXTS),
            draw(NUMS),
            draw(NUMS),
            draw(NUMS),
        ]
        if "install" in header:
            row.append(draw(INSTALL))
        if draw(st.integers(0, 20)) == 0:
            row = row[:3]  # too few fields
        w.writerow(row)
    return out.getvalue()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=device_files())
def test_vectorised_reading_equals_validating_every_line_in_python(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "devices.csv"
    path.write_bytes(text.encode())
    rows, result = read_devices(path, PROFILES)
    want_rows, want_errors = _reference(text)
    _same(rows, want_rows)
    assert [str(e) for e in result.errors] == [str(e) for e in want_errors]


def test_a_quoted_field_spanning_lines_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text('external_id,district,install\nA1,x,\nA2,"two\nlines",\nA 3,y,\nA4,z,\n')
    rows, result = read_devices(path, PROFILES)
    assert rows.text["external_id"].tolist() == [b"A1", b"A2", b"A4"]
    assert rows.text["district"].tolist() == [b"x", b"two\nlines", b"z"]
    assert [str(e) for e in result.errors] == [
        "line 5: external_id: 'A 3': 1-64 bytes without spaces, control characters, '/', "
        "'+', '#', ':' or '\\'"
    ]


def test_a_plain_file_is_read_without_python_per_line(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    lines = [f"86100000000{i:04d},nbiot-env,Futian,22.{i:04d},114.05" for i in range(5000)]
    path.write_text("external_id,profile,district,lat,lon\n" + "\n".join(lines) + "\n")
    rows, result = read_devices(path, PROFILES)
    assert (len(rows), result.lines, result.errors) == (5000, 5000, [])
    assert rows.numbers["lat"][:2].tolist() == [22.0, 22.0001]
    assert rows.text["profile"][0] == b"nbiot-env"


def test_an_invalid_utf8_line_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_bytes(b"external_id,district\nA1,ok\nA2,\xff\xfe\nA3,ok\n")
    rows, result = read_devices(path, PROFILES)
    assert rows.text["external_id"].tolist() == [b"A1", b"A3"]
    assert [str(e) for e in result.errors] == ["line 3: line: not valid UTF-8"]
