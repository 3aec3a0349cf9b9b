"""The vectorised text helpers agree with Python's own parsing."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from decoders import textscan


def _matrix(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    buf = np.frombuffer(b";" + b";".join(texts), dtype=np.uint8)
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    starts = np.cumsum(lengths + 1) - lengths
    width = int(lengths.max(initial=0))
    return textscan.cut(buf, starts, lengths, width), lengths


def test_parse_decimals_examples() -> None:
    texts = [b"36.91", b"-1.803", b"+7", b".5", b"5.", b"-0", b"1E-3", b"", b".", b"1.2.3", b"x"]
    values, ok = textscan.parse_decimals(*_matrix(texts))
    assert ok.tolist() == [True] * 6 + [False] * 5
    assert values[:6].tolist() == [36.91, -1.803, 7.0, 0.5, 5.0, -0.0]
    assert np.signbit(values[5])


@given(st.lists(st.from_regex(r"\A[+-]?[0-9]{0,9}(\.[0-9]{0,8})?\Z"), min_size=1, max_size=50))
def test_parse_decimals_equals_float(texts: list[str]) -> None:
    raw = [t.encode() for t in texts]
    values, ok = textscan.parse_decimals(*_matrix(raw))
    for text, value, good in zip(texts, values.tolist(), ok.tolist(), strict=True):
        if good:
            assert value == float(text), text
        else:
            digits = sum(c.isdigit() for c in text)
            assert digits == 0 or digits > 15, text


@given(st.lists(st.binary(min_size=0, max_size=20).map(lambda b: b.rstrip(b"\0")), max_size=60))
def test_intern_rows_matches_a_dict(words: list[bytes]) -> None:
    mat, _ = _matrix(words) if words else (np.zeros((0, 1), dtype=np.uint8), None)
    ids, vocab = textscan.intern_rows(mat)
    assert [vocab[i] for i in ids.tolist()] == words
    assert len(vocab) == len(set(words))
