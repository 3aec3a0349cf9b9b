"""Recordings: raw frames with their topic or path, transport and receive time, compactly.

File layout (gzip-compressed): a header line ``CFXREC1 {json}\\n`` (format version and what
made it), then one record per frame::

    receive time  u64  µs since the Unix epoch (UTC), big-endian
    transport     u8   0 MQTT, 1 CoAP
    source length u16  then the topic (MQTT) or the path (CoAP), UTF-8
    payload len   u32  then the payload, as received

Topics and payload headers repeat a lot, so gzip keeps a recording near the size of the
payloads' entropy. ``read_frames`` also reads the
HJ 212 corpus (``*.h212.gz``: one frame per line, no receive time): each frame gets its
DataTime as its time and ``<prefix>/up/air/<MN>/hj212`` as its topic.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from decoders.cst import cst_to_utc_us

MAGIC = b"CFXREC1 "
_HEAD = struct.Struct(">QBH")
_LEN = struct.Struct(">I")
TRANSPORTS = ("mqtt", "coap")
_MN = re.compile(rb"MN=([^;&]*)")
_DATATIME = re.compile(rb"DataTime=(\d{14})")
_QN = re.compile(rb"QN=(\d{14})")


class RecordingError(ValueError):
    """A file that is neither a recording nor an HJ 212 capture (the message says why)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One captured frame."""

    time_us: int
    transport: str
    source: str
    payload: bytes


class RecordWriter:
    """Appends frames to a new recording."""

    def __init__(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        self.path = path
        self._fh = cast(IO[bytes], gzip.open(path, "wb", compresslevel=6))  # noqa: SIM115
        self._fh.write(MAGIC + json.dumps({"version": 1, **(meta or {})}).encode() + b"\n")
        self.count = 0

    def write(self, time_us: int, transport: str, source: str, payload: bytes) -> None:
        """Append one frame."""
        src = source.encode()
        self._fh.write(
            _HEAD.pack(time_us, TRANSPORTS.index(transport), len(src))
            + src
            + _LEN.pack(len(payload))
            + payload
        )
        self.count += 1

    def close(self) -> None:
        """Finish the file."""
        self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frames(path: Path, prefix: str = "cityflux") -> Iterator[Record]:
    """Every frame of a recording, or of an HJ 212 capture (one frame per line)."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
        stream = cast(IO[bytes], fh)
        first = stream.readline()
        if first.startswith(MAGIC):
            yield from _records(stream, path)
        elif first.startswith(b"##"):
            yield from _hj212_lines(first, stream, prefix)
        else:
            raise RecordingError(
                f"{path}: not a cityflux recording (CFXREC1) nor HJ 212 frames (##…)"
            )


def header(path: Path) -> dict[str, Any]:
    """A recording's header (what made it)."""
    with gzip.open(path, "rb") as fh:
        first = fh.readline()
    if not first.startswith(MAGIC):
        return {}
    meta: dict[str, Any] = json.loads(first[len(MAGIC) :])
    return meta


def _records(fh: IO[bytes], path: Path) -> Iterator[Record]:
    n = 0
    while True:
        head = fh.read(_HEAD.size)
        if not head:
            return
        try:
            t, transport, slen = _HEAD.unpack(head)
            source = fh.read(slen).decode()
            (plen,) = _LEN.unpack(fh.read(_LEN.size))
            payload = fh.read(plen)
        except (struct.error, UnicodeDecodeError) as exc:
            raise RecordingError(f"{path}: record {n + 1} is truncated or damaged: {exc}") from None
        if len(payload) != plen or transport >= len(TRANSPORTS):
            raise RecordingError(f"{path}: record {n + 1} is truncated or damaged")
        n += 1
        yield Record(t, TRANSPORTS[transport], source, payload)


def _hj212_lines(first: bytes, fh: IO[bytes], prefix: str) -> Iterator[Record]:
    last = 0
    for line in _chain(first, fh):
        frame = line.rstrip(b"\r\n")
        if not frame:
            continue
        stamp = _DATATIME.search(frame) or _QN.search(frame)
        if stamp is not None:
            s = stamp.group(1).decode()
            t = cst_to_utc_us(
                *(int(x) for x in (s[:4], s[4:6], s[6:8], s[8:10], s[10:12], s[12:14]))
            )
            last = t if t is not None else last
        mn = _MN.search(frame)
        device = mn.group(1).decode(errors="replace") if mn else "unknown"
        yield Record(last, "mqtt", f"{prefix}/up/air/{device}/hj212", frame + b"\r\n")


def _chain(first: bytes, fh: IO[bytes]) -> Iterator[bytes]:
    yield first
    yield from fh
