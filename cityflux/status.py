"""``cityflux status [--watch]``: the running service's state on a terminal, for an operator
without Grafana — read from its ``/metrics``, ``/readyz`` and ``/api/v1``: rates, queue,
dead letters, frame loss per profile, alerts, devices.

Rates are the difference of two reads of ``/metrics`` divided by the time between them (a
single look reads twice, ``--interval`` apart). ``/api/v1`` answers need the database; when
the service runs without one (or without the alerts engine) those parts say so.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cityflux.common import ConfigOpt, settings_of

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Reading:
    """One look at the service."""

    at: float
    samples: dict[Key, float]
    ready: dict[str, bool] = field(default_factory=dict)
    devices: list[dict[str, Any]] | None = None  # /api/v1/status
    alerts: list[dict[str, Any]] | None = None  # /api/v1/alerts/summary
    problems: list[str] = field(default_factory=list)

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """``name``'s samples summed by ``labels`` (the others added up)."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for (sample, pairs), value in self.samples.items():
            if sample == name:
                d = dict(pairs)
                out[tuple(d.get(lab, "") for lab in labels)] += value
        return dict(out)

    def one(self, name: str) -> float | None:
        """The sum of ``name``'s samples; None when it has none."""
        values = self.by(name)
        return values.get((), None)


def parse_metrics(text: str) -> dict[Key, float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def read(client: httpx.Client) -> Reading:
    """Read /metrics (required), /readyz and the /api/v1 summaries (optional)."""
    resp = client.get("/metrics")
    resp.raise_for_status()
    reading = Reading(time.time(), parse_metrics(resp.text))
    ready = client.get("/readyz")
    reading.ready = dict(ready.json().get("checks", {}))
    for attr, path in (("devices", "/api/v1/status"), ("alerts", "/api/v1/alerts/summary")):
        answer = client.get(path)
        if answer.status_code == 200:
            setattr(reading, attr, answer.json())
        else:
            reading.problems.append(f"{path}: HTTP {answer.status_code}")
    return reading


def _rate(
    cur: dict[tuple[str, ...], float], prev: dict[tuple[str, ...], float] | None, dt: float
) -> dict[tuple[str, ...], float | None]:
    if prev is None or dt <= 0:
        return dict.fromkeys(cur)
    return {k: max(0.0, v - prev.get(k, 0.0)) / dt for k, v in cur.items()}


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _table(title: str, *columns: str) -> Table:
    table = Table(*columns, title=title, title_justify="left", box=None, pad_edge=False)
    for col in table.columns[1:]:
        col.justify = "right"
    return table


def view(cur: Reading, prev: Reading | None, url: str) -> Group:
    """What the terminal shows for one reading (rates against the previous one)."""
    dt = cur.at - prev.at if prev else 0.0
    parts: list[Any] = []
    ready = " ".join(
        f"[{'green' if ok else 'red'}]{check}{'' if ok else ' NOT READY'}[/]"
        for check, ok in cur.ready.items()
    )
    backend = next(iter(cur.by("cityflux_storage_info", "backend")), ("?",))[0]
    parts.append(Text.from_markup(f"[bold]cityflux[/] {url}  {ready}  storage {backend}"))

    received = cur.by("cityflux_frames_received_total", "transport", "format")
    rates = _rate(received, prev.by("cityflux_frames_received_total", "transport", "format")
                  if prev else None, dt)  # fmt: skip
    frames = _table("Frames received", "transport / format", "per s", "total")
    for (transport, fmt), total in sorted(received.items()):
        frames.add_row(f"{transport} / {fmt}", _num(rates[(transport, fmt)], 1), _num(total))
    parts.append(frames)

    depth = cur.one("cityflux_queue_depth_frames")
    cap = cur.one("cityflux_queue_capacity_frames")
    paused = cur.one("cityflux_ingest_paused")
    pipe = _table("Pipeline", "", "")
    pipe.add_row("uncommitted frames", f"{_num(depth)} of {_num(cap)}")
    pipe.add_row(
        "backpressure", "[red]PAUSED[/]" if paused else "[green]reading[/]" if paused == 0 else "–"
    )
    pipe.add_row("database retries", _num(cur.one("cityflux_db_retries_total")))
    for (stage,), n in sorted(cur.by("cityflux_stage_errors_total", "stage").items()):
        pipe.add_row(f"stage errors: {stage}", _num(n))
    parts.append(pipe)

    rejected = cur.by("cityflux_frames_rejected_total", "reason")
    dead_rates = _rate(rejected, prev.by("cityflux_frames_rejected_total", "reason")
                       if prev else None, dt)  # fmt: skip
    dead = _table("Dead letters", "reason", "per s", "total")
    for (reason,), total in sorted(rejected.items(), key=lambda kv: -kv[1]):
        dead.add_row(reason, _num(dead_rates[(reason,)], 1), _num(total))
    if not rejected:
        dead.add_row("none", "", "0")
    parts.append(dead)

    parts.append(_frame_loss(cur, prev, dt))

    alerts = _table("Open alerts", "severity", "raised", "acknowledged")
    if cur.alerts is not None:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for row in cur.alerts:
            counts[(row["severity"], row["state"])] += int(row["alerts"])
        for sev in ("critical", "warning", "info"):
            alerts.add_row(sev, _num(counts[(sev, "raised")]), _num(counts[(sev, "acknowledged")]))
    else:
        alerts.add_row("(alerts API unavailable)", "", "")
    parts.append(alerts)

    devices = _table("Devices", "profile", "online", "offline", "never seen", "devices")
    if cur.devices is not None:
        for row in cur.devices:
            devices.add_row(
                row["profile"] or "(none)",
                _num(row["online"]),
                _num(row["offline"]),
                _num(row["never_seen"]),
                _num(row["devices"]),
            )
    else:
        devices.add_row("(registry API unavailable)", "", "", "", "")
    parts.append(devices)
    for problem in cur.problems:
        parts.append(Text(f"note: {problem}", style="yellow"))
    return Group(*parts)


def _frame_loss(cur: Reading, prev: Reading | None, dt: float) -> Table:
    """Per profile: numbered frames received, missing (net of late arrivals) and the share
    lost since the service started, and frames found missing per second."""
    names = ("numbered", "missing", "recovered")
    now = {n: cur.by(f"cityflux_device_frames_{n}_total", "profile") for n in names}
    missing_rate = _rate(
        now["missing"],
        prev.by("cityflux_device_frames_missing_total", "profile") if prev else None,
        dt,
    )
    table = _table("Frame loss (numbered frames)", "profile", "received", "lost", "lost %", "per s")
    for (profile,), received in sorted(now["numbered"].items()):
        lost = now["missing"].get((profile,), 0.0) - now["recovered"].get((profile,), 0.0)
        share = 100 * lost / (received + lost) if received + lost > 0 else None
        table.add_row(
            profile or "(none)",
            _num(received),
            _num(lost),
            _num(share, 2),
            _num(missing_rate.get((profile,)), 1),
        )
    if not now["numbered"]:
        table.add_row("none counted yet", "", "", "", "")
    return table


def _client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=10.0)


def status(
    config: ConfigOpt = None,
    url: Annotated[
        str | None,
        typer.Option(help="the service's HTTP address (default: http.host and http.port)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="CITYFLUX_TOKEN", help="bearer token for /api/v1", show_default=False),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="refresh until Ctrl-C")] = False,
    interval_s: Annotated[
        float, typer.Option("--interval", min=0.2, help="seconds between reads (rates)")
    ] = 2.0,
) -> None:
    """The running service's rates, queue, dead letters, frame loss, alerts and devices."""
    if url is None:
        http = settings_of(config).http
        host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host  # noqa: S104
        url = f"http://{host}:{http.port}"
    url = url.rstrip("/")
    console = Console()
    with _client(url, token) as client:
        try:
            prev = read(client)
            if not watch:
                time.sleep(interval_s)
                console.print(view(read(client), prev, url))
                return
            from rich.live import Live

            with Live(view(prev, None, url), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval_s)
                    cur = read(client)
                    live.update(view(cur, prev, url), refresh=True)
                    prev = cur
        except KeyboardInterrupt:
            return
        except httpx.HTTPError as exc:
            typer.echo(f"cityflux: cannot read {url}: {exc}", err=True)
            raise typer.Exit(1) from None
