"""Coverage-guided fuzzing of one decoder with atheris (libFuzzer) over mixed batches.

    python -m tests.fuzz.fuzz_decoders <format> [libFuzzer flags] [corpus dirs]
    make fuzz FUZZ_SECONDS=600            # every decoder, FUZZ_SECONDS each

Each input becomes a frame placed between the format's valid golden frames (tests/vectors),
once with the device hint a frame of that format usually has and once with none. The golden
and poison vectors seed every run (after any corpus directories given: libFuzzer writes
what it finds into the first), so libFuzzer mutates real frames. Every run checks the
decoder contract: no exception; every frame either decoded or rejected exactly once
(``frames_ok`` + rejected frames = batch size); no rows and no replies for a rejected frame;
the valid frames never rejected and their rows identical to decoding them alone; nothing
left that ``decoders.guard.screen`` would refuse. A failure is a crash: libFuzzer writes the
input to ``-artifact_prefix``; make it a poison case (tests/vectors/poison/make_cases.py) and
fix the decoder.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["decoders"]):
    from decoders.guard import screen
    from decoders.registry import load_registry
    from decoders.tables import ALL_TABLES

    REGISTRY = load_registry()  # imports every decoder module, so under instrumentation

from core.frames import Decoded, FrameBatch
from tests.poison import RECEIVED_US, load_poison_cases, load_valid_golden_frames

SPECS = {t.name: t for t in ALL_TABLES}
# (device hint, source suffix) a frame of the format usually arrives with
CONTEXT = {
    "llrp": ("G-0101", ""),
    "tagread-json": ("G-0101", ""),
    "lwm2m-tlv": ("ep-1", "/3303/0"),
    "value": ("esp-kitchen", "/temperature"),
}
MAX_SEED = 8192


def _rows(decoded: Decoded, frames: dict[int, int]) -> dict[str, list[tuple[object, ...]]]:
    """Rows of the given frames (index mapped through ``frames``), as comparable tuples."""
    out = {}
    for table, rows in decoded.rows.items():
        pick = np.flatnonzero(np.isin(rows.frame_index, list(frames)))
        names = sorted(rows.columns)
        out[table] = [
            (
                frames[int(rows.frame_index[j])],
                rows.devices[j].item(),
                *(rows.columns[k][j].item() for k in names),
                *(bool(rows.nulls[k][j]) for k in sorted(rows.nulls)),
            )
            for j in pick.tolist()
        ]
    return out


def target(fmt: str) -> Callable[[bytes], None]:
    """The fuzz target for one format."""
    decoder = REGISTRY.get(fmt)
    valid = load_valid_golden_frames(fmt)
    device, path = CONTEXT.get(fmt, ("", ""))
    source = f"cityflux/up/fuzz/{device or 'none'}/{fmt}{path}"
    ref_batch = FrameBatch(fmt, "fuzz")
    for g in valid:
        ref_batch.append(g.payload, g.source, g.device, "", g.received_us)
    reference = _rows(decoder.decode_batch(ref_batch), {i: i for i in range(len(valid))})

    def run(data: bytes) -> None:
        batch = FrameBatch(fmt, "fuzz")
        fuzz_at = []
        for hint in (device, ""):
            for g in valid:
                batch.append(g.payload, g.source, g.device, "", g.received_us)
            fuzz_at.append(len(batch))
            batch.append(data, source, hint, "", RECEIVED_US)
        out = decoder.decode_batch(batch)
        rejected = [r.index for r in out.rejects]
        assert len(rejected) == len(set(rejected)), f"a frame rejected twice: {out.rejects}"
        assert all(r.reason for r in out.rejects), "a reject without a reason"
        assert set(rejected) <= set(fuzz_at), f"a valid frame was rejected: {out.rejects}"
        assert out.frames_ok + len(rejected) == len(batch), "frames_ok does not add up"
        for rows in out.rows.values():
            assert all(len(c) == len(rows) for c in rows.columns.values())
            assert not set(rows.frame_index.tolist()) & set(rejected), "rows of a rejected frame"
        assert not {i for i, _ in out.replies} & set(rejected), "a reply to a rejected frame"
        assert screen(out, SPECS) is out, "rows PostgreSQL would refuse"
        n = len(valid)
        first = {i: i for i in range(n)}
        second = {fuzz_at[0] + 1 + i: i for i in range(n)}
        assert _rows(out, first) == reference, "a valid frame's rows changed"
        assert _rows(out, second) == reference, "a valid frame's rows changed"

    return run


def seed_corpus(fmt: str, into: Path) -> None:
    """The golden and poison payloads of ``fmt`` (up to MAX_SEED bytes) as seed files."""
    seeds = [g.payload for g in load_valid_golden_frames(fmt)]
    seeds += [c.payload for c in load_poison_cases() if c.format == fmt]
    for k, payload in enumerate(seeds):
        if len(payload) <= MAX_SEED:
            (into / f"seed-{k:03d}").write_bytes(payload)


def main(argv: list[str]) -> None:
    """Fuzz the format named by the first argument; the rest go to libFuzzer."""
    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit(f"usage: {argv[0]} <format> [libFuzzer flags] [corpus dirs]")
    fmt, rest = argv[1], argv[2:]
    flags = [a for a in rest if a.startswith("-")]
    corpora = [a for a in rest if not a.startswith("-")]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={MAX_SEED}")
    if not any(f.startswith("-timeout=") for f in flags):
        flags.append("-timeout=10")  # a decoder must never hang: a slow input is a crash
    with tempfile.TemporaryDirectory(prefix=f"cityflux-fuzz-{fmt}-") as tmp:
        seed_corpus(fmt, Path(tmp))
        atheris.Setup([argv[0], *flags, *corpora, tmp], target(fmt))
        atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
