"""Poison vectors (tests/vectors/poison/<format>/<case>/) and the golden frames they are mixed with.

A poison case is a frame every decoder must reject, precisely and alone, without raising:
``frame.hex`` | ``frame.txt`` | ``frame.gen`` (a generated payload, for the large ones:
``{"prefix_hex": "...", "repeat_hex": "00", "times": 1048576, "suffix_hex": ""}``), ``reason``
(first line: the expected reject reason's prefix), ``SOURCE`` (how it was built, what it
tests), and optionally ``path`` (what the frame's source topic ends with, e.g. ``/3303/0``)
and ``device`` (the transport's device hint). ``load_poison_cases`` is the API the unit and
integration tests use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"
POISON = VECTORS / "poison"
RECEIVED_US = 1_767_225_600_000_000


@dataclass(frozen=True, slots=True)
class PoisonCase:
    """One poison frame and what its rejection must say."""

    format: str
    name: str
    payload: bytes
    reason_prefix: str
    path: str
    device: str

    @property
    def source(self) -> str:
        """An uplink topic for the frame (``<prefix>/up/<kind>/<device>/<format><path>``, as
        ingest.topics.uplink writes it), so ``path`` is what the topic ends with."""
        return f"cityflux/up/poison/{self.device or 'poison-dev'}/{self.format}{self.path}"


def _payload(case: Path) -> bytes:
    if (case / "frame.hex").exists():
        return bytes.fromhex((case / "frame.hex").read_text().strip())
    if (case / "frame.txt").exists():
        raw = (case / "frame.txt").read_bytes()
        return raw[:-1] if raw.endswith(b"\n") else raw
    gen = json.loads((case / "frame.gen").read_text())
    return (
        bytes.fromhex(gen.get("prefix_hex", ""))
        + bytes.fromhex(gen["repeat_hex"]) * int(gen["times"])
        + bytes.fromhex(gen.get("suffix_hex", ""))
    )


def _optional(case: Path, name: str) -> str:
    f = case / name
    return f.read_text().strip() if f.exists() else ""


def load_poison_cases() -> list[PoisonCase]:
    """Every poison case, sorted by format and name."""
    cases = []
    for case in sorted(p for p in POISON.glob("*/*") if p.is_dir()):
        cases.append(
            PoisonCase(
                format=case.parent.name,
                name=case.name,
                payload=_payload(case),
                reason_prefix=(case / "reason").read_text().splitlines()[0],
                path=_optional(case, "path"),
                device=_optional(case, "device"),
            )
        )
    return cases


@dataclass(frozen=True, slots=True)
class GoldenFrame:
    """A golden vector's frame with the transport facts it is decoded with."""

    name: str
    payload: bytes
    device: str
    source: str
    received_us: int


def load_valid_golden_frames(fmt: str) -> list[GoldenFrame]:
    """The golden vectors of ``fmt`` whose expected output is a decoded frame (not a reject)."""
    frames = []
    for case in sorted(p for p in (VECTORS / fmt).glob("*") if p.is_dir()):
        expected = [json.loads(x) for x in (case / "expected.jsonl").read_text().splitlines()]
        if not all(e.get("ok") for e in expected):
            continue
        lines = (case / "SOURCE").read_text().splitlines()
        fields = dict(x.split("=", 1) for x in lines if "=" in x and " " not in x)
        if (case / "frame.hex").exists():
            payload = bytes.fromhex((case / "frame.hex").read_text().strip())
        else:
            payload = (case / "frame.txt").read_text().rstrip("\n").encode()
        frames.append(
            GoldenFrame(
                case.name,
                payload,
                fields.get("device", ""),
                fields.get("source", "cli"),
                int(fields.get("received_us", RECEIVED_US)),
            )
        )
    return frames
