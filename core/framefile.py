"""Frame files as the command line and ``rules test`` read them: one frame per line."""

from __future__ import annotations

import sys
from typing import IO


def read_frames(source: str, hex_input: bool) -> tuple[list[bytes], dict[int, str]]:
    """One frame per line of ``source`` (a file or ``-``), and the lines that are bad hex."""
    stream: IO[bytes] = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    frames: list[bytes] = []
    bad_hex: dict[int, str] = {}
    with stream:
        for n, line in enumerate(stream):
            raw = line.rstrip(b"\r\n")
            if hex_input:
                try:
                    raw = bytes.fromhex(raw.decode("ascii"))
                except ValueError as exc:
                    bad_hex[n] = f"hex_invalid: {exc}"
            frames.append(raw)
    return frames, bad_hex
