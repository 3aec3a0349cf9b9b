"""``cityflux decode``: what is this frame? One JSON object per input line."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import typer

from core.framefile import read_frames
from core.frames import FrameBatch
from decoders.base import ColumnType, Decoder
from decoders.registry import UnknownDecoderError, load_registry


def _value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v


def describe(
    decoder: Decoder,
    frames: list[bytes],
    received_us: int,
    device_hint: str = "",
    source: str = "cli",
) -> list[dict[str, Any]]:
    """One result per frame: ``{"ok": true, "records": [...]}`` or ``{"ok": false, ...}``.

    Records carry the table, the device, the time in ISO 8601 UTC and every decoded value
    under its column name (the golden vectors in tests/vectors use this same form).
    """
    batch = FrameBatch(decoder.name, "cli")
    for raw in frames:
        batch.append(raw, source, device_hint, "", received_us)
    decoded = decoder.decode_batch(batch)
    times = {
        (t.name, c.name)
        for t in decoder.tables
        for c in t.columns
        if c.type is ColumnType.TIMESTAMPTZ
    }
    per_frame: list[list[dict[str, Any]]] = [[] for _ in range(len(batch))]
    for table, rows in decoded.rows.items():
        for j in range(len(rows)):
            rec: dict[str, Any] = {"table": table, "device": rows.devices[j].decode()}
            for name, arr in rows.columns.items():
                if name in rows.nulls and rows.nulls[name][j]:
                    continue
                if (table, name) in times:
                    rec[name] = datetime.fromtimestamp(int(arr[j]) / 1e6, UTC).isoformat()
                elif arr.dtype == np.float32:  # shortest repr of the 32-bit value, not 231.39999…
                    rec[name] = float(str(arr[j]))
                else:
                    rec[name] = _value(arr[j].item())
            per_frame[int(rows.frame_index[j])].append(rec)
    errors = {r.index: r.reason for r in decoded.rejects}
    return [
        {"ok": False, "error": errors[i]} if i in errors else {"ok": True, "records": per_frame[i]}
        for i in range(len(batch))
    ]


def run_decode(fmt: str, source: str, hex_input: bool, path: str = "cli", device: str = "") -> int:
    """Decode each line of ``source``; print results; return the exit code."""
    try:
        decoder = load_registry().get(fmt)
    except UnknownDecoderError as exc:
        print(f"cityflux: {exc}", file=sys.stderr)
        return 2
    frames, bad_hex = read_frames(source, hex_input)
    good = [i for i in range(len(frames)) if i not in bad_hex]
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    # the path and device stand in for what a transport would say about each frame
    results = describe(decoder, [frames[i] for i in good], now_us, device, path)
    by_index = dict(zip(good, results, strict=True))
    for i in range(len(frames)):
        out = by_index.get(i) or {"ok": False, "error": bad_hex[i]}
        print(json.dumps(out))
    rejected = sum(1 for i in range(len(frames)) if not (by_index.get(i) or {}).get("ok"))
    print(
        f"{len(frames)} frames: {len(frames) - rejected} decoded, {rejected} rejected",
        file=sys.stderr,
    )
    return 0


def decode(
    fmt: Annotated[str, typer.Option("--format", "-f", help="decoder name")],
    source: Annotated[str, typer.Argument(help="file with one frame per line, or -")] = "-",
    hex_input: Annotated[bool, typer.Option("--hex", help="lines are hex-encoded bytes")] = False,
    path: Annotated[str, typer.Option(help="source path, e.g. /3303/0 for lwm2m-tlv")] = "cli",
    device: Annotated[str, typer.Option(help="device id the transport would name")] = "",
) -> None:
    """Decode frames (one per line) and print one JSON object per frame."""
    raise typer.Exit(run_decode(fmt, source, hex_input, path, device))
