"""Starting or reusing the real services the tests run against (used by conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

TIMESCALEDB_DIR = Path(__file__).parent / "timescaledb"


class TimescaleWasm:
    """Real TimescaleDB 2.23 (PGlite WASM under Node) on a private port; see serve.mjs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """libpq URL (PGlite accepts any password; it has no TLS)."""
        return f"postgresql://postgres:pglite@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def start(self) -> TimescaleWasm:
        """Start Node and wait for READY."""
        node = shutil.which("node")
        if node is None:
            raise RuntimeError(
                "node is required for the TimescaleDB tests (apt-get install nodejs)"
            )
        if not (TIMESCALEDB_DIR / "node_modules" / "@unni-craftsman").exists():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=TIMESCALEDB_DIR,
                check=True,
                capture_output=True,
            )
        self._proc = subprocess.Popen(
            [node, "serve.mjs", str(self.port)],
            cwd=TIMESCALEDB_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if line.startswith("READY"):
                return self
            if not line and self._proc.poll() is not None:
                break
        raise RuntimeError("TimescaleDB (PGlite) did not start")

    def stop(self) -> None:
        """Stop Node."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
