"""A whole simulated run against a cityflux deployment: register, send, account.

Used by ``cityflux simulate`` (against the configured service) and ``cityflux demo``
(against embedded services it starts). The deployment is described by the service's own
settings: the broker and CoAP port the frames go to, the database the accounting reads and
the HTTP port whose /metrics gives the latency.
"""

from __future__ import annotations

import csv
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml

from core.mqtt import MqttProtocol, TlsMode
from decoders.registry import load_registry
from device_registry.importer import import_devices
from device_registry.profiles import load_profiles, store
from ingest.settings import Settings
from parking.lots import read_lots, upsert_lots
from simulators import replay
from simulators.accounting import RunFacts, account, gauge, scrape_ages
from simulators.broker_stats import dropped_messages
from simulators.fleetfiles import write_devices, write_lots, write_profiles, write_watchlist
from simulators.recording import RecordWriter, read_frames
from simulators.run import FleetRun, Progress, Target
from simulators.scenario import Scenario


def target_of(settings: Settings) -> Target:
    """Where a deployment takes frames (CoAP on the MQTT host when it listens on all)."""
    m, c = settings.mqtt, settings.coap
    coap_host = c.host if c.host not in ("0.0.0.0", "::", "") else m.host  # noqa: S104
    return Target(
        mqtt_host=m.host,
        mqtt_port=m.port,
        mqtt_username=m.username,
        mqtt_password=m.password.get_secret_value() if m.password else None,
        mqtt_v5=m.protocol is MqttProtocol.V5,
        mqtt_tls=m if m.tls is TlsMode.ON else None,
        coap_host=coap_host,
        coap_port=c.port,
    )


def metrics_url_of(settings: Settings, port: int | None = None) -> str:
    """The service's /metrics."""
    host = settings.http.host if settings.http.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    return f"http://{host}:{port or settings.http.port}/metrics"


def write_fleet(folder: Path, scenario: Scenario, run: FleetRun) -> dict[str, int]:
    """profiles.yaml, devices.csv and watchlist.txt for the scenario, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "profiles": write_profiles(folder / "profiles.yaml", scenario, run),
        "devices": write_devices(folder / "devices.csv", scenario, run),
        "watchlisted": write_watchlist(folder / "watchlist.txt", scenario, run),
        "lots": write_lots(folder / "lots.csv", run),
    }


def register(url: str, scenario: Scenario, run: FleetRun) -> tuple[dict[str, int], float]:
    """Upsert the scenario's profiles and devices into the registry (idempotent); what was
    written, and when (see ``import_folder``)."""
    with tempfile.TemporaryDirectory(prefix="cityflux-fleet-") as tmp:
        folder = Path(tmp)
        written = write_fleet(folder, scenario, run)
        at = import_folder(url, folder)
    return written, at


def import_folder(url: str, folder: Path) -> float:
    """Import ``folder``/profiles.yaml, ``folder``/lots.csv (when there) then
    ``folder``/devices.csv into the registry, in one transaction; return its start time (the
    devices' ``updated_at``), Unix seconds."""
    profiles = load_profiles(folder / "profiles.yaml", set(load_registry().names()))
    lots, bad = read_lots(folder / "lots.csv") if (folder / "lots.csv").exists() else ([], [])
    if bad:
        raise ValueError(f"{folder / 'lots.csv'} has invalid lines, first: {bad[0]}")
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM now())").fetchone()
        store(conn, profiles)
        upsert_lots(conn, lots)
        result = import_devices(conn, folder / "devices.csv")
        conn.commit()
    if result.errors:
        raise ValueError(f"{folder / 'devices.csv'} has invalid lines, first: {result.errors[0]}")
    return float(row[0]) if row else time.time()


def wait_for_registry(metrics_url: str, registered_at: float, timeout_s: float = 60.0) -> bool:
    """Until the service's in-memory registry holds the devices a transaction that started
    at ``registered_at`` wrote: its ``cityflux_registry_watermark_seconds`` is past that (a
    refresh during the transaction cannot get there, so one after its commit did). False if
    /metrics cannot tell (frames of the new devices may then be refused until the service's
    next registry refresh, ``registry.refresh_s``)."""
    committed = registered_at
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mark = gauge(metrics_url, "cityflux_registry_watermark_seconds")
        if mark is None:
            return False
        if mark > committed:
            return True
        time.sleep(0.1)
    return False


def run_scenario(
    scenario: Scenario,
    settings: Settings,
    *,
    do_register: bool = False,
    record_path: Path | None = None,
    metrics_port: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_wait: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Register (optionally), run and account for one scenario; the report."""
    url = settings.database.url.get_secret_value()
    metrics = metrics_url_of(settings, metrics_port)
    registered = None
    if do_register:  # before the run's clock starts (a "now" start is taken when it is built)
        registered, at = register(url, scenario, FleetRun(scenario, target_of(settings)))
        wait_for_registry(metrics, at)
    record = RecordWriter(record_path, {"scenario": scenario.name}) if record_path else None
    run = FleetRun(scenario, target_of(settings), record=record)
    before = scrape_ages(metrics)
    tg = run.target
    mqtt = any(g.transport.value == "mqtt" for g in scenario.groups)
    broker_args = (tg.mqtt_host, tg.mqtt_port, tg.mqtt_username, tg.mqtt_password, tg.mqtt_tls)
    dropped_before = dropped_messages(*broker_args) if mqtt else None
    began = time.time()
    try:
        ledger = run.run(on_progress, should_stop)
    finally:
        if record is not None:
            record.close()
    sent_until = time.monotonic()
    facts = RunFacts(run.ids, [m.table for m in run.models], began)
    report = account(url, ledger, facts, ages_before=before, metrics_url=metrics, on_wait=on_wait)
    if scenario.speed != 1 or scenario.start != "now":
        report["latency_s"] = None  # device times are not the wall clock's: ages mean nothing
        report["latency_note"] = "not measured: device time is not the clock's (needs speed 1)"
    report["broker_dropped"] = None
    if dropped_before is not None:
        if report["lost"]:  # Mosquitto refreshes $SYS every 10 s: let it count the run
            time.sleep(max(0.0, sent_until + 11 - time.monotonic()))
        after = dropped_messages(*broker_args)
        report["broker_dropped"] = None if after is None else max(0, after - dropped_before)
    dropped: Counter[str] = Counter()
    for (g, d, _variant), n in ledger.drops_between().items():
        dropped[run.ids[g][d]] += n
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        **run.describe(),
        "dropped_by_device": dict(dropped),
        "registered": registered,
        "recorded": record.count if record else None,
        **report,
        **({"parking_lots": lots} if (lots := run.parking_lots()) is not None else {}),
    }


def replay_file(
    path: Path,
    settings: Settings,
    *,
    speed: float | None,
    transport: str = "",
    qos: int = 1,
    confirmable: bool = True,
    do_register: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_wait: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Plan, (register,) send and account for a recording or an HJ 212 capture."""
    prefix = (
        settings.mqtt.topics[0].split("/up/")[0]
        if "/up/" in settings.mqtt.topics[0]
        else "cityflux"
    )
    # acknowledgements mean "stored" only for QoS 1 and CON (a recording may hold both)
    plan = replay.plan(read_frames(path, prefix), load_registry(), qos == 1 and confirmable)
    metrics = metrics_url_of(settings)
    if do_register:
        at = register_replayed(settings.database.url.get_secret_value(), plan)
        wait_for_registry(metrics, at)
    before = scrape_ages(metrics)
    began = time.time()
    ledger = replay.send(
        plan,
        target_of(settings),
        speed=speed,
        transport=transport,
        qos=qos,
        confirmable=confirmable,
        prefix=prefix,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    facts = RunFacts(plan.ids, plan.tables, began)
    report = account(
        settings.database.url.get_secret_value(),
        ledger,
        facts,
        ages_before=before,
        metrics_url=metrics,
        on_wait=on_wait,
    )
    report["latency_s"] = None
    report["latency_note"] = "not measured: a replay sends frames with their recorded times"
    return {
        "scenario": f"replay of {path.name}",
        "seed": None,
        "devices": len({d for ids in plan.ids for d in ids}),
        "frames": len(plan.frames),
        "unverifiable": plan.unverifiable,
        "no_rows": plan.no_rows,
        **report,
    }


def register_replayed(url: str, plan: replay.Plan) -> float:
    """Register the devices a recording names, under a profile per decoder."""
    with tempfile.TemporaryDirectory(prefix="cityflux-replay-") as tmp:
        folder = Path(tmp)
        decoders = sorted({dec for _, dec in plan.kinds.values()})
        kinds = {dec: kind for kind, dec in plan.kinds.values()}
        profiles = [
            {
                "name": f"replay-{dec}",
                "kind": kinds[dec] or "env",
                "decoder": dec,
                "description": "devices of a replayed recording",
                "report_interval_s": 60,
                "unknown_devices": "reject",
            }
            for dec in decoders
        ]
        (folder / "profiles.yaml").write_text(yaml.safe_dump({"profiles": profiles}))
        with (folder / "devices.csv").open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["external_id", "profile", "kind"])
            for device, (kind, dec) in sorted(plan.kinds.items()):
                out.writerow([device, f"replay-{dec}", kind or "env"])
        return import_folder(url, folder)
