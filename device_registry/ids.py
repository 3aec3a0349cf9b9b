"""The registry's rule for external device ids, in one place: the importer, the transports'
topic and path parsers, and the resolver (ids carried inside payloads) all apply it.

An external id is 1-64 bytes of UTF-8 without white space, control characters (C0, DEL,
C1) or any of ``/ + # : \\`` — the characters that would break an MQTT topic level, a broker
ACL pattern or a Mosquitto password file line (``user:hash``).
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

MAX_ID_BYTES = 64
ID_RULE = "1-64 bytes without spaces, control characters, '/', '+', '#', ':' or '\\'"
_ID = re.compile(r"[^\s/+#:\\\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,64}")

# Bytes allowed in an ASCII id; ids with other bytes are checked one by one (UTF-8 rule).
ASCII_ID_BYTE = np.zeros(256, dtype=np.bool_)
ASCII_ID_BYTE[0x21:0x7F] = True
for _c in b"/+#:\\":
    ASCII_ID_BYTE[_c] = False


def id_problem(external_id: str) -> str | None:
    """Why ``external_id`` breaks the rule, or None when it follows it."""
    size = len(external_id.encode("utf-8", errors="surrogatepass"))
    if size == 0:
        return "empty"
    if size > MAX_ID_BYTES:
        return f"{size} bytes (at most {MAX_ID_BYTES})"
    if not _ID.fullmatch(external_id):
        return f"{shown(external_id)}: {ID_RULE}"
    return None


def invalid_ids(ids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bool_]:
    """Which ids (numpy bytes, padding NULs at the end) break the rule: one table look-up for
    ASCII ids, the UTF-8 rule for the rest."""
    n = ids.shape[0]
    if n == 0 or ids.dtype.itemsize == 0:
        return np.ones(n, dtype=np.bool_)
    width = ids.dtype.itemsize
    raw = np.ascontiguousarray(ids).view(np.uint8).reshape(n, width)
    pad = np.cumsum(raw[:, ::-1] != 0, axis=1)[:, ::-1] == 0  # trailing NULs: numpy padding
    length = width - pad.sum(axis=1)
    bad: npt.NDArray[np.bool_] = (
        (length == 0) | (length > MAX_ID_BYTES) | ~(ASCII_ID_BYTE[raw] | pad).all(axis=1)
    )
    wide = np.flatnonzero(bad & (length > 0) & (length <= MAX_ID_BYTES) & (raw >= 0x80).any(1))
    for i in wide.tolist():
        try:
            bad[i] = id_problem(bytes(ids[i]).decode("utf-8")) is not None
        except UnicodeDecodeError:
            bad[i] = True
    return bad


def shown(text: str | bytes, limit: int = 80) -> str:
    """A hostile id or topic made safe for a log line or a dead letter's reason: escaped
    control characters and invalid UTF-8, cut at ``limit`` characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="backslashreplace")
    out = repr(text)[1:-1]
    return out if len(out) <= limit else out[:limit] + "…"
