"""``cityflux decode``: what is this frame? One JSON object per input line."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from decoders.registry import UnknownDecoderError, load_registry
from ingest.batch import FrameBatch


def _value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v


def run_decode(fmt: str, source: str, hex_input: bool) -> int:
    """Decode each line of ``source``; print results; return the exit code."""
    try:
        decoder = load_registry().get(fmt)
    except UnknownDecoderError as exc:
        print(f"cityflux: {exc}", file=sys.stderr)
        return 2
    stream: IO[bytes] = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    batch = FrameBatch(fmt, "cli")
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    bad_hex: dict[int, str] = {}
    with stream:
        for n, line in enumerate(stream):
            raw = line.rstrip(b"\r\n")
            if hex_input:
                try:
                    raw = bytes.fromhex(raw.decode("ascii"))
                except ValueError as exc:
                    bad_hex[n] = f"hex_invalid: {exc}"
                    raw = b""
            batch.append(raw, source, "", "", now_us)
    decoded = decoder.decode_batch(batch)
    per_frame: list[list[dict[str, Any]]] = [[] for _ in range(len(batch))]
    for table, rows in decoded.rows.items():
        cols = rows.columns
        for j in range(len(rows)):
            rec: dict[str, Any] = {"table": table, "device": rows.devices[j].decode()}
            for name, arr in cols.items():
                if name == "time":
                    rec[name] = datetime.fromtimestamp(int(arr[j]) / 1e6, UTC).isoformat()
                elif name not in rows.nulls or not rows.nulls[name][j]:
                    rec[name] = _value(arr[j].item())
            per_frame[int(rows.frame_index[j])].append(rec)
    errors = {r.index: r.reason for r in decoded.rejects} | bad_hex
    for i in range(len(batch)):
        if i in errors:
            print(json.dumps({"ok": False, "error": errors[i]}))
        else:
            print(json.dumps({"ok": True, "records": per_frame[i]}))
    print(
        f"{len(batch)} frames: {len(batch) - len(errors)} decoded, {len(errors)} rejected",
        file=sys.stderr,
    )
    return 0
