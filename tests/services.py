"""Starting or reusing the real services the tests run against (used by conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

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


PROMETHEUS_RULES = Path(__file__).parents[1] / "deploy" / "prometheus" / "rules" / "cityflux.yml"


class PrometheusServer:
    """A real Prometheus (Debian's binary) scraping ``targets`` every second and evaluating
    the shipped rules (deploy/prometheus/rules/cityflux.yml) every second."""

    def __init__(self, binary: str, folder: Path, port: int) -> None:
        self.binary, self.folder, self.port = binary, folder, port
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, targets: list[str]) -> PrometheusServer:
        """Write the config, start Prometheus, wait until its API answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROMETHEUS_RULES, self.folder / "cityflux.yml")
        listed = ", ".join(f"'{t}'" for t in targets)
        (self.folder / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [cityflux.yml]\n"
            "scrape_configs:\n"
            "  - job_name: cityflux\n"
            f"    static_configs: [{{targets: [{listed}]}}]\n"
        )
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "prometheus.log").open("wb"),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.api("/-/ready")
                return self
            except OSError:
                if self._proc.poll() is not None:
                    break
                time.sleep(0.2)
        log = (self.folder / "prometheus.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Prometheus did not start:\n{log}")

    def api(self, path: str, **params: str) -> Any:
        """GET an API path; the JSON ``data`` (``/-/ready``: the text)."""
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read()
        return json.loads(body)["data"] if path.startswith("/api/") else body.decode()

    def stop(self) -> None:
        """Stop Prometheus."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
