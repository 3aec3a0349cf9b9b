"""``cityflux simulate``, ``cityflux record`` and ``cityflux replay``: fleets on the command line.

Each ends with the loss-accounting report (``--json`` for one JSON object) and exits 1 when
an acknowledged frame was lost. Ctrl-C stops sending; the report covers what was sent.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from cityflux.common import print_report, settings_of
from ingest.settings import Settings

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="CITYFLUX_CONFIG", help="the service's TOML config"),
]


def _settings(config: Path | None) -> Settings:
    return settings_of(config, "WARNING")


@contextmanager
def _progress(
    enabled: bool, total_s: float
) -> Iterator[tuple[Callable[[Any], None], Callable[[int, int], None]]]:
    """Rich progress bars: device time sent, then the wait for the database to catch up."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
        console=None,
    )
    with bar:
        send = bar.add_task("sending", total=total_s, info="")
        wait: list[Any] = []

        def on_progress(p: Any) -> None:
            bar.update(
                send,
                completed=p.sim_s,
                info=f"{p.sent:,} sent, {p.acked:,} acked, {p.rate_per_s:,.0f}/s",
            )

        def on_wait(found: int, expected: int) -> None:
            if not wait:
                wait.append(bar.add_task("accounting", total=max(1, expected), info=""))
            bar.update(wait[0], completed=found, info=f"{found:,} of {expected:,} in the database")

        yield on_progress, on_wait


@contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the run to stop (the report follows); a second one aborts."""
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def simulate(
    scenario_file: Annotated[Path, typer.Argument(help="scenario YAML")],
    config: ConfigOpt = None,
    duration: Annotated[float | None, typer.Option(help="override duration_s")] = None,
    speed: Annotated[str | None, typer.Option(help="override speed: a factor, or max")] = None,
    seed: Annotated[int | None, typer.Option(help="override the seed")] = None,
    do_register: Annotated[
        bool, typer.Option("--register", help="import the fleet's profiles and devices first")
    ] = False,
    write_devices: Annotated[
        Path | None,
        typer.Option(
            help="write profiles.yaml, devices.csv, lots.csv and watchlist.txt here and exit"
        ),
    ] = None,
    record: Annotated[Path | None, typer.Option(help="also record every frame sent")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Run a simulated fleet against the configured cityflux and account for every frame."""
    from core.yamlfile import DocumentError
    from simulators.run import FleetRun
    from simulators.scenario import load_scenario
    from simulators.session import run_scenario, target_of, write_fleet

    try:
        scenario = load_scenario(scenario_file)
        updates: dict[str, Any] = {}
        if duration is not None:
            updates["duration_s"] = duration
        if speed is not None:
            updates["speed"] = speed if speed == "max" else float(speed)
        if seed is not None:
            updates["seed"] = seed
        if updates:
            scenario = type(scenario).model_validate({**scenario.model_dump(), **updates})
    except (DocumentError, ValueError) as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = _settings(config)
    if write_devices is not None:
        run = FleetRun(scenario, target_of(settings))
        written = write_fleet(write_devices, scenario, run)
        typer.echo(
            f"{written['profiles']} profiles, {written['devices']:,} devices, "
            f"{written['watchlisted']} watch-listed tags -> {write_devices}/"
        )
        return
    with (
        _ctrl_c() as stop,
        _progress(not (quiet or as_json), scenario.duration_s) as (
            on_progress,
            on_wait,
        ),
    ):
        report = run_scenario(
            scenario,
            settings,
            do_register=do_register,
            record_path=record,
            on_progress=on_progress,
            should_stop=stop.is_set,
            on_wait=on_wait,
        )
    print_report(report, as_json)
    if report["lost"]:
        raise typer.Exit(1)


def replay(
    file: Annotated[Path, typer.Argument(help="a recording, or HJ 212 frames (*.h212[.gz])")],
    config: ConfigOpt = None,
    speed: Annotated[float, typer.Option(help="N × the recorded pace (ignored with --max)")] = 1.0,
    as_fast_as_possible: Annotated[
        bool, typer.Option("--max", help="as fast as the service takes them")
    ] = False,
    transport: Annotated[str, typer.Option(help="mqtt or coap (default: as recorded)")] = "",
    qos: Annotated[int, typer.Option(help="MQTT QoS, 0 or 1")] = 1,
    non: Annotated[bool, typer.Option("--non", help="CoAP NON instead of CON")] = False,
    do_register: Annotated[
        bool, typer.Option("--register", help="register the devices the frames name first")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Replay recorded frames into the configured cityflux and account for every frame."""
    from simulators.recording import RecordingError
    from simulators.session import replay_file

    if transport not in ("", "mqtt", "coap") or qos not in (0, 1) or speed <= 0:
        typer.echo("cityflux: --transport is mqtt or coap, --qos 0 or 1, --speed > 0", err=True)
        raise typer.Exit(2)
    if not file.is_file():
        typer.echo(f"cityflux: {file}: no such file", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    with _ctrl_c() as stop, _progress(not (quiet or as_json), 1.0) as (on_progress, on_wait):
        try:
            report = replay_file(
                file,
                settings,
                speed=None if as_fast_as_possible else speed,
                transport=transport,
                qos=qos,
                confirmable=not non,
                do_register=do_register,
                on_progress=on_progress,
                should_stop=stop.is_set,
                on_wait=on_wait,
            )
        except RecordingError as exc:
            typer.echo(f"cityflux: {exc}", err=True)
            raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report))
    else:
        from simulators.accounting import render

        typer.echo(
            f"{report['scenario']}: {report['frames']:,} frames from {report['devices']:,} devices "
            f"({report['no_rows']:,} without rows, {report['unverifiable']:,} timed on receipt)"
        )
        typer.echo(render(report))
    if report["lost"]:
        raise typer.Exit(1)


def record(
    out: Annotated[Path, typer.Argument(help="the recording to write (gzip)")],
    config: ConfigOpt = None,
    topic: Annotated[
        str | None, typer.Option(help="MQTT topic filter (default: the service's uplinks)")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    count: Annotated[int | None, typer.Option(help="stop after this many frames")] = None,
) -> None:
    """Record uplink frames from the broker (topic, receive time, payload) until stopped."""
    from simulators.recorder import record_mqtt

    settings = _settings(config)
    with _ctrl_c() as stop:
        n = record_mqtt(
            out,
            settings,
            topic_filter=topic,
            duration_s=duration,
            count=count,
            should_stop=stop.is_set,
            on_start=lambda f: typer.echo(f"recording {f} to {out} (Ctrl-C stops)", err=True),
        )
    typer.echo(f"{n:,} frames recorded to {out}")
