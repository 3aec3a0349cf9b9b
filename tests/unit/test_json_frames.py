"""JSON frames are parsed by orjson when it accepts them and by ``json.loads`` otherwise:
the documents accepted, their values and the reject reasons must be the standard parser's."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoders.senml_json import PackError, load_json


def _standard(payload: bytes) -> object:
    """What ``json.loads`` alone makes of it: a value or the reject reason."""
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return PackError(f"json_invalid: {str(exc).split(';')[0]}")


def _ours(payload: bytes) -> object:
    try:
        return load_json(payload, "pack")
    except PackError as exc:
        return exc


def _same(a: object, b: object) -> bool:
    """Equal with types (1 is not 1.0, True is not 1) and NaN equal to NaN."""
    if isinstance(a, PackError) or isinstance(b, PackError):
        return type(a) is type(b) and str(a) == str(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


EDGES = [
    b'{"v": NaN}',
    b'{"v": Infinity, "w": -Infinity}',
    b'{"v": 1e400}',
    b'{"v": -1e400}',
    b'{"v": 123456789012345678901234567890}',
    b'{"v": -9223372036854775809}',
    b'{"v": 18446744073709551616}',
    b'{"v": -0, "w": -0.0, "x": 1.0, "y": 1E2, "z": 5e-324}',
    b'{"a": 1, "a": 2}',
    b'{"s": "\\ud800"}',
    b'{"s": "\\udc00\\ud800"}',
    b'{"s": "\xed\xa0\x80"}',
    b'\xef\xbb\xbf{"v": 1}',
    b'{"v": 1} ',
    b' \t\n{"v": 1}\r\n',
    b'{"v": 1} x',
    b'{"v": 1}{"v": 2}',
    b"",
    b"   ",
    b"\xff\xfe",
    b'{"v": 01}',
    b'{"v": .5}',
    b'{"v": 1.}',
    b"[1, 2,]",
    b'{"v": 1,}',
    b"{'v': 1}",
    b'{"s": "tab\there"}',
    b'{"s": "nul\\u0000"}',
    b"true",
    b"null",
    b'"text"',
    b"[[[[[[[[[[]]]]]]]]]]",
]


@pytest.mark.parametrize("payload", EDGES)
def test_edge_documents_parse_as_the_standard_parser_parses_them(payload: bytes) -> None:
    assert _same(_ours(payload), _standard(payload)), payload


def test_too_deep_is_refused_before_either_parser() -> None:
    with pytest.raises(PackError, match="too_deep: pack nested over 32 levels"):
        load_json(b"[" * 33 + b"]" * 33, "pack")


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_docs = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_docs, st.booleans())
def test_any_document_parses_as_the_standard_parser_parses_it(
    doc: object, ascii_only: bool
) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only)
    payload = text.encode("utf-8", "surrogatepass")
    assert _same(_ours(payload), _standard(payload))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_parse_or_fail_as_the_standard_parser_decides(payload: bytes) -> None:
    assert _same(_ours(payload), _standard(payload))
