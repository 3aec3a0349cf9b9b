"""Each decoder's atheris fuzzer runs for a moment (make fuzz runs them for long)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from decoders.registry import load_registry

ROOT = Path(__file__).parents[2]
SECONDS = 1  # plus ~1.5 s of start-up each: the 11 decoders stay under 40 s


@pytest.mark.parametrize("name", load_registry().names())
def test_decoder_survives_a_short_coverage_guided_fuzz(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.fuzz_decoders",
            name,
            f"-max_total_time={SECONDS}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done " in run.stderr
