"""Checksums used by the binary frame formats, vectorised over a batch of equal-length frames."""

from __future__ import annotations

import binascii

import numpy as np
import numpy.typing as npt


def _crc16_ccitt_table() -> npt.NDArray[np.uint16]:
    table = np.zeros(256, dtype=np.uint16)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table[byte] = crc & 0xFFFF
    return table


_CCITT = _crc16_ccitt_table()


def crc16_ccitt_false(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint16]:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout) of each row.

    ``data`` is a 2-D uint8 array, one frame per row; the loop runs over byte positions and
    each step handles every frame at once. Check value: b"123456789" -> 0x29B1.
    """
    crc = np.full(data.shape[0], 0xFFFF, dtype=np.uint16)
    for col in range(data.shape[1]):
        idx = ((crc >> 8) ^ data[:, col]).astype(np.uint8)
        crc = ((crc << 8) ^ _CCITT[idx]).astype(np.uint16)
    return crc


def crc16_ccitt_false_bytes(frame: bytes) -> int:
    """CRC-16/CCITT-FALSE of one byte string (for encoders and tests).

    ``binascii.crc_hqx`` is the same polynomial, unreflected; seeded with 0xFFFF it is
    CCITT-FALSE.
    """
    return binascii.crc_hqx(frame, 0xFFFF)
