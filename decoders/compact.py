"""The framing shared by cityflux's compact binary NB-IoT frames.

Every compact frame is a fixed, big-endian layout that starts with the same header and ends
with a CRC-16/CCITT-FALSE over everything before it (decoders/README.md):

    0 magic (u8, one per frame type) | 1 version (u8) | 2 IMEI (u64) | 10 time (u32, Unix s)
    | 14 seq (u16) | … type-specific fields … | last 2 bytes: CRC

``validate`` checks length, magic, version, CRC and the topic's device id for a whole batch
with numpy and returns the valid records; each frame type only maps fields to columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.frames import FrameBatch, FrameNumbers, Reject
from decoders.crc import crc16_ccitt_false, crc16_ccitt_false_bytes
from decoders.limits import out_of_range

HEADER: list[tuple[str, str]] = [
    ("magic", "u1"),  # 0
    ("version", "u1"),  # 1
    ("imei", ">u8"),  # 2  IMEI (15 decimal digits) as an unsigned integer
    ("time", ">u4"),  # 10 measurement time, seconds since the Unix epoch (UTC)
    ("seq", ">u2"),  # 14 frame counter, wraps at 65535
]
MAX_IMEI = 999_999_999_999_999


def imei_bytes(imei: npt.NDArray[np.uint64]) -> npt.NDArray[np.bytes_]:
    """15-digit zero-padded decimal IMEIs as bytes, vectorised (no per-frame formatting)."""
    digits = np.empty((imei.shape[0], 15), dtype=np.uint8)
    rest = imei.astype(np.uint64)
    for pos in range(14, -1, -1):
        digits[:, pos] = (rest % 10).astype(np.uint8) + ord("0")
        rest = rest // 10
    return digits.view("S15").ravel()


def seal(body: bytes) -> bytes:
    """A frame from everything before its CRC: append the CRC-16/CCITT-FALSE (encoders)."""
    return body + crc16_ccitt_false_bytes(body).to_bytes(2, "big")


@dataclass(slots=True)
class Valid:
    """The batch's valid frames: records, their IMEIs as bytes, their indices in the batch."""

    records: npt.NDArray[np.void]
    devices: npt.NDArray[np.bytes_]
    frames: npt.NDArray[np.int32]
    rejects: list[Reject]


def validate(batch: FrameBatch, dtype: np.dtype[np.void], magic: int, version: int) -> Valid:
    """Check every frame of the batch against a compact layout; reject the rest with reasons."""
    size = dtype.itemsize
    n = len(batch)
    rejects: list[Reject] = []
    lengths = np.fromiter(map(len, batch.payloads), dtype=np.int64, count=n)
    good = np.flatnonzero(lengths == size)
    for i in np.flatnonzero(lengths != size).tolist():
        got = int(lengths[i])
        rejects.append(
            Reject(
                i,
                f"truncated: need {size} bytes, got {got}"
                if got < size
                else f"too_long: expected {size} bytes, got {got}",
            )
        )
    raw = b"".join([batch.payloads[i] for i in good.tolist()])
    rec = np.frombuffer(raw, dtype=dtype)
    crc = crc16_ccitt_false(np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)[:, : size - 2])
    devices = imei_bytes(rec["imei"])
    hints = np.array([batch.device_hints[i] for i in good.tolist()], dtype=np.bytes_)
    bad_magic = rec["magic"] != magic
    bad_version = ~bad_magic & (rec["version"] != version)
    bad_crc = ~bad_magic & ~bad_version & (crc != rec["crc"])
    # an IMEI has 15 digits; a larger number would lose its leading digits in imei_bytes
    bad_imei = ~bad_magic & ~bad_version & ~bad_crc & (rec["imei"] > MAX_IMEI)
    mismatch = (
        ~bad_magic & ~bad_version & ~bad_crc & ~bad_imei & (hints != b"") & (hints != devices)
    )
    ok = ~(bad_magic | bad_version | bad_crc | bad_imei | mismatch)
    for j in np.flatnonzero(~ok).tolist():
        if bad_magic[j]:
            reason = f"bad_magic: expected {magic:02X} got {int(rec['magic'][j]):02X}"
        elif bad_version[j]:
            reason = f"unsupported_version: {int(rec['version'][j])}"
        elif bad_crc[j]:
            reason = f"crc_mismatch expected={int(crc[j]):04X} got={int(rec['crc'][j]):04X}"
        elif bad_imei[j]:
            reason = out_of_range("imei", int(rec["imei"][j]), "15 digits")
        else:
            reason = (
                f"device_mismatch: topic names {hints[j].decode(errors='replace')!r}, "
                f"frame carries IMEI {devices[j].decode()}"
            )
        rejects.append(Reject(int(good[j]), reason))
    rejects.sort(key=lambda r: r.index)
    return Valid(rec[ok], devices[ok], good[ok].astype(np.int32), rejects)


SEQ_STREAM = "compact"
"""Every compact frame type shares the header's ``seq`` counter (a device sends one type)."""


def sequence(valid: Valid) -> FrameNumbers:
    """The valid frames' ``seq`` (u16, wraps at 65535) for loss detection."""
    return FrameNumbers(
        SEQ_STREAM,
        1 << 16,
        valid.devices,
        valid.frames,
        valid.records["seq"].astype(np.int64),
    )
