"""Device registry end to end: CLI import/export, profiles, the running service's index
following changes, last seen and online status, the operator HTTP API."""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cityflux.cli import app
from decoders.hj212 import frame as hj212_frame
from ingest.topics import uplink
from tests.helpers import (
    api_call,
    env_frame,
    issue_token,
    publish,
    query,
    running,
    settings_for,
    wait_until,
)

PROFILES = """\
profiles:
  - name: air-station
    kind: water
    decoder: hj212
    report_interval_s: 60
    offline_after: 2
    unknown_devices: reject
  - name: nbiot-env
    kind: env
    decoder: nbiot-env
    report_interval_s: 600
    unknown_devices: auto-provision
"""


def _cli(pg_url: str, *args: str) -> Any:
    return CliRunner().invoke(
        app, list(args), env={"CITYFLUX_DATABASE__URL": pg_url, "CITYFLUX_LOG_LEVEL": "WARNING"}
    )


_http = functools.partial(api_call, write_method="PATCH")  # the registry's API updates by PATCH


def test_profiles_file_errors_name_the_file_line_and_field(pg_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "profiles.yaml"
    bad.write_text(PROFILES.replace("report_interval_s: 600", "report_interval_s: -5"))
    result = _cli(pg_url, "profiles", "import", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:11: profiles[1].report_interval_s: Input should be greater than 0" in (
        result.output
    )
    bad.write_text(PROFILES.replace("decoder: hj212", "decoder: hj999"))
    result = _cli(pg_url, "profiles", "import", str(bad))
    assert result.exit_code == 2
    assert "profiles[0].decoder: unknown decoder 'hj999'" in result.output


def test_import_reports_bad_lines_imports_the_rest_and_is_idempotent(
    pg_url: str, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    assert _cli(pg_url, "profiles", "import", str(profiles)).exit_code == 0
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "external_id,profile,district,lat,lon,secret,install\n"
        'ST01,air-station,Futian,22.54,114.05,correct-horse,"{""pole"": 7}"\n'
        "ST 02,air-station,,,,,\n"  # line 3: space in the id
        "ST03,no-such,,,,,\n"  # line 4: unknown profile
        "ST04,air-station,,95,114,,\n"  # line 5: latitude out of range
        "ST05,air-station,,,,,\n"
        "ST06,air-station\n"  # line 7: too few fields
    )
    result = _cli(pg_url, "devices", "import", "-q", str(devices))
    assert result.exit_code == 1
    for expected in (
        f"{devices}:3: external_id: 'ST 02'",
        f"{devices}:4: profile: unknown profile 'no-such'",
        f"{devices}:5: lat: 95.0 is outside -90..90",
        f"{devices}:7: line: 2 fields, the header has 7",
        "2 devices imported (2 new, 0 updated, 0 unchanged",
    ):
        assert expected in result.output, result.output
    rows = query(
        pg_url,
        "SELECT external_id, profile, kind, district, lat, install, "
        "left(credential_hash, 3) = '$7$' "
        "FROM devices ORDER BY external_id",
    )
    assert rows == [
        ("ST01", "air-station", "water", "Futian", 22.54, {"pole": 7}, True),
        ("ST05", "air-station", "water", None, None, {}, None),
    ]
    # a second import changes nothing; an export re-imports as "unchanged"
    assert (
        "0 new, 0 updated, 2 unchanged"
        in _cli(pg_url, "devices", "import", "-q", str(devices)).output
    )
    exported = tmp_path / "export.csv"
    assert _cli(pg_url, "devices", "export", str(exported)).exit_code == 0
    again = _cli(pg_url, "devices", "import", "-q", str(exported))
    assert (again.exit_code, "0 new, 0 updated, 2 unchanged" in again.output) == (0, True)
    # the export leaves the credential hashes out (only --with-secrets carries them)
    stored_hash = query(pg_url, "SELECT credential_hash FROM devices WHERE external_id = 'ST01'")
    assert "credential_hash" not in exported.read_text().splitlines()[0].split(",")
    assert stored_hash[0][0] not in exported.read_text()
    full = tmp_path / "full.csv"
    assert _cli(pg_url, "devices", "export", "--with-secrets", str(full)).exit_code == 0
    assert stored_hash[0][0] in full.read_text()
    # JSON Lines: an update and a new device; an empty field keeps the stored value
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(
        '{"external_id": "ST05", "district": "Nanshan"}\n'
        '{"external_id": "861000000000077", "profile": "nbiot-env", "status": "disabled"}\n'
        '{"external_id": "X", "colour": "red"}\n'
        '{"external_id": "ST07", "district": "A"}\n'
        '{"external_id": "ST07", "district": "B"}\n'  # named twice: the last line wins
    )
    result = _cli(pg_url, "devices", "import", "-q", str(jsonl))
    assert result.exit_code == 1
    assert f"{jsonl}:3: line: unknown field(s) colour" in result.output
    assert "2 new, 1 updated, 0 unchanged, 1 repeated lines superseded" in result.output
    assert query(pg_url, "SELECT district FROM devices WHERE external_id = 'ST07'") == [("B",)]
    show = _cli(pg_url, "devices", "show", "ST05")
    shown = json.loads(show.output)
    assert (shown["district"], shown["profile"], shown["online"]) == (
        "Nanshan",
        "air-station",
        False,
    )
    listed = _cli(pg_url, "devices", "list", "--json", "--profile", "nbiot-env")
    assert [json.loads(line)["status"] for line in listed.output.splitlines()] == ["disabled"]


async def test_service_follows_registry_changes_and_tracks_last_seen(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    assert _cli(pg_url, "profiles", "import", str(profiles)).exit_code == 0
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "external_id,profile,status\nST01,air-station,active\nST02,air-station,disabled\n"
    )
    assert _cli(pg_url, "devices", "import", "-q", str(devices)).exit_code == 0

    def station(mn: str, cn: str = "2011", minute: int = 0) -> bytes:
        cp = f"DataTime=202601010{minute:03d}00;a34004-Rtd=35.0,a34004-Flag=N"
        if cn == "8013":
            cp = ""
        return hj212_frame(
            f"QN=20260101000000000;ST=22;CN={cn};PW=123456;MN={mn};Flag=4;CP=&&{cp}&&"
        )

    settings = settings_for(
        pg_url,
        broker,
        topic_prefix,
        pipeline={"unknown_devices": "auto-provision"},
        registry={"refresh_s": 0.5, "last_seen_flush_s": 0.2, "status_interval_s": 0.2},
    )
    water = lambda mn: uplink("water", mn, "hj212", topic_prefix)  # noqa: E731
    async with running(settings) as svc:
        port = svc.http_port or 0
        http = functools.partial(_http, token=issue_token(pg_url, "ops", "operate"))
        pipe = svc.pipeline
        assert pipe is not None
        first = [
            (water("ST01"), station("ST01")),
            (water("ST02"), station("ST02")),  # disabled
            (water("ST09"), station("ST09")),  # unknown; its profile says reject
            (
                uplink("env", "861000000000001", "nbiot-env", topic_prefix),
                env_frame(861000000000001, 1),
            ),
        ]
        assert await asyncio.to_thread(publish, broker, first) == 4
        await wait_until(lambda: pipe.stats.received == 4, what="first frames")
        assert sorted(r[0] for r in query(pg_url, "SELECT reason FROM dead_letters")) == [
            "disabled_device: ST02",
            "unknown_device: ST09",
        ]
        # the nbiot-env profile auto-provisions, under that profile
        assert query(
            pg_url, "SELECT profile, provisioned FROM devices WHERE external_id = '861000000000001'"
        ) == [("nbiot-env", "auto")]
        # an operator enables ST02 through the API; the service's index follows without restart
        status, body = await asyncio.to_thread(
            http, port, "/api/v1/devices/ST02", {"status": "active"}
        )
        assert (status, body.get("status")) == (200, "active"), body
        await wait_until(lambda: svc_index_has(svc, b"ST02"), what="index refresh")
        assert (
            await asyncio.to_thread(publish, broker, [(water("ST02"), station("ST02", minute=1))])
            == 1
        )
        # a heartbeat (no rows) still counts as seen
        assert (
            await asyncio.to_thread(publish, broker, [(water("ST01"), station("ST01", "8013"))])
            == 1
        )
        await wait_until(lambda: pipe.stats.received == 6, what="second frames")
        await wait_until(
            lambda: (
                query(pg_url, "SELECT count(*) FROM devices WHERE last_seen IS NOT NULL")[0][0] == 3
            ),
            what="last seen flushed",
        )
        status, listing = await asyncio.to_thread(http, port, "/api/v1/devices?profile=air-station")
        assert status == 200
        assert [(d["external_id"], d["online"]) for d in listing["devices"]] == [
            ("ST01", True),
            ("ST02", True),
        ]
        status, summary = await asyncio.to_thread(http, port, "/api/v1/status")
        assert {s["profile"]: s["online"] for s in summary} == {"air-station": 2, "nbiot-env": 1}
        status, schema = await asyncio.to_thread(http, port, "/openapi.json")
        assert {"/api/v1/devices", "/api/v1/devices/{device}", "/api/v1/status"} <= set(
            schema["paths"]
        )
        assert (await asyncio.to_thread(http, port, "/api/v1/devices/NOPE"))[0] == 404
        # the PATCH body is {"status": ...} and nothing else (README); #<id> is %23<id>
        for wrong in ({"district": "Nanshan"}, {"status": "active", "district": "Nanshan"}):
            got = await asyncio.to_thread(http, port, "/api/v1/devices/ST02", wrong)
            assert got[0] == 422, got
        by_id = await asyncio.to_thread(http, port, f"/api/v1/devices/%23{body['id']}")
        assert (by_id[0], by_id[1]["external_id"]) == (200, "ST02")
        gauge = 'cityflux_devices{profile="air-station",state="online"} 2.0'
        for _ in range(100):  # the gauges refresh every 0.2 s
            metrics = await asyncio.to_thread(_metrics, port)
            if gauge in metrics:
                break
            await asyncio.sleep(0.1)
        assert gauge in metrics
    assert query(pg_url, "SELECT count(*) FROM hj212_readings") == [(2,)]
    # the operator's change is audited under the token's name, with the status before and after
    assert query(
        pg_url,
        "SELECT actor, actor_kind, action, target, before, after FROM audit_log "
        "WHERE action IN ('device.enable', 'device.disable')",
    ) == [("ops", "token", "device.enable", "ST02", {"status": "disabled"}, {"status": "active"})]
    # a station silent for more than offline_after × interval is offline
    query(
        pg_url,
        "UPDATE devices SET last_seen = now() - interval '3 minutes' WHERE external_id = 'ST01'",
    )
    offline = _cli(pg_url, "devices", "list", "--offline", "--json")
    assert [json.loads(line)["external_id"] for line in offline.output.splitlines()] == ["ST01"]


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def svc_index_has(svc: Any, device: bytes) -> bool:
    import numpy as np

    resolver = svc.pipeline._resolver
    return bool(resolver.index.resolve(np.array([device]))[0] >= 0)


def test_an_export_of_oscore_devices_imports_again_keeping_their_stored_secrets(
    pg_url: str, tmp_path: Path
) -> None:
    secret = "00112233445566778899aabbccddeeff"  # noqa: S105 (a test key)
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "external_id,oscore_kid,oscore_secret,oscore_salt\n"
        f"LAMP-1,0a01,{secret},9e7ca92223786340\n"
        "LAMP-2,,,\n"
    )
    assert _cli(pg_url, "devices", "import", "-q", str(devices)).exit_code == 0
    stored = "SELECT external_id, oscore_kid, oscore_secret, oscore_salt, updated_at FROM devices"
    before = query(pg_url, f"{stored} ORDER BY external_id")
    exported = tmp_path / "export.csv"
    assert _cli(pg_url, "devices", "export", str(exported)).exit_code == 0
    assert secret not in exported.read_text()  # the export names the kid, never the key
    again = _cli(pg_url, "devices", "import", "-q", str(exported))
    assert again.exit_code == 0, again.output
    assert "0 new, 0 updated, 2 unchanged" in again.output
    assert query(pg_url, f"{stored} ORDER BY external_id") == before
    # a kid without its secret: for a new device, or a kid this device does not hold
    bad = tmp_path / "bad.csv"
    bad.write_text("external_id,oscore_kid\nLAMP-3,0a03\nLAMP-2,0a02\nLAMP-1,0a01\n")
    result = _cli(pg_url, "devices", "import", "-q", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:2: oscore_secret: an oscore_kid needs its oscore_secret" in result.output
    assert (
        f"{bad}:3: oscore_secret: LAMP-2 holds no oscore_kid 0a02 with a secret; "
        "give its oscore_secret" in result.output
    )
    assert "1 devices imported (0 new, 0 updated, 1 unchanged" in result.output
    assert query(pg_url, "SELECT count(*) FROM devices") == [(2,)]


def test_an_export_with_secrets_restores_oscore_devices_into_an_empty_registry(
    pg_url: str, tmp_path: Path
) -> None:
    secret = "00112233445566778899aabbccddeeff"  # noqa: S105 (a test key)
    devices = tmp_path / "devices.csv"
    devices.write_text(
        f"external_id,oscore_kid,oscore_secret,oscore_salt\nLAMP-1,0a01,{secret},9e7c\n"
    )
    assert _cli(pg_url, "devices", "import", "-q", str(devices)).exit_code == 0
    backup = tmp_path / "backup.csv"
    assert _cli(pg_url, "devices", "export", "--with-secrets", str(backup)).exit_code == 0
    assert backup.stat().st_mode & 0o077 == 0  # keys: readable by the owner only
    query(pg_url, "DELETE FROM devices")
    restored = _cli(pg_url, "devices", "import", "-q", str(backup))
    assert restored.exit_code == 0, restored.output
    assert query(
        pg_url,
        "SELECT external_id, encode(oscore_kid, 'hex'), encode(oscore_secret, 'hex'), "
        "encode(oscore_salt, 'hex') FROM devices",
    ) == [("LAMP-1", "0a01", secret, "9e7c")]


def test_dtls_psks_import_export_without_keys_and_restore_with_secrets(
    pg_url: str, tmp_path: Path
) -> None:
    key = "6e622d612d70736b2d30313233343536"
    devices = tmp_path / "devices.csv"
    devices.write_text(f"external_id,psk_identity,psk_key\nNB-1,nb-1@city,{key}\n")
    assert _cli(pg_url, "devices", "import", "-q", str(devices)).exit_code == 0
    stored = "SELECT external_id, psk_identity, encode(psk_key, 'hex'), updated_at FROM devices"
    before = query(pg_url, stored)
    exported = tmp_path / "export.csv"
    assert _cli(pg_url, "devices", "export", str(exported)).exit_code == 0
    text = exported.read_text()
    assert "nb-1@city" in text  # the identity, never the key
    assert key not in text
    again = _cli(pg_url, "devices", "import", "-q", str(exported))
    assert "0 new, 0 updated, 1 unchanged" in again.output, again.output
    assert query(pg_url, stored) == before
    backup = tmp_path / "backup.csv"
    assert _cli(pg_url, "devices", "export", "--with-secrets", str(backup)).exit_code == 0
    assert backup.stat().st_mode & 0o077 == 0
    query(pg_url, "DELETE FROM devices")
    assert _cli(pg_url, "devices", "import", "-q", str(backup)).exit_code == 0
    assert query(pg_url, stored)[0][:3] == ("NB-1", "nb-1@city", key)
    bad = tmp_path / "bad.csv"
    bad.write_text("external_id,psk_identity,psk_key\nNB-2,a\tb,\nNB-3,nb-3,00ff\n")
    result = _cli(pg_url, "devices", "import", "-q", str(bad))
    assert result.exit_code == 1
    assert (
        f"{bad}:2: psk_identity: must be 1-128 bytes of printable characters, no comma"
        in result.output
    )
    assert f"{bad}:3: psk_key: 2 bytes, must be 16-32" in result.output


def test_devices_list_says_when_it_shows_only_part_and_json_gets_all(
    pg_url: str, tmp_path: Path
) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text("external_id\n" + "".join(f"D{i:04d}\n" for i in range(250)))
    assert _cli(pg_url, "devices", "import", "-q", str(devices)).exit_code == 0
    table = _cli(pg_url, "devices", "list")
    assert table.exit_code == 0
    assert "D0099" in table.stdout
    assert "D0100" not in table.stdout
    assert "showing 100 of 250; --limit or --all" in table.output
    everything = _cli(pg_url, "devices", "list", "--all")
    assert "D0249" in everything.stdout
    assert "showing" not in everything.output
    assert "showing 10 of 250" in _cli(pg_url, "devices", "list", "--limit", "10").output
    lines = _cli(pg_url, "devices", "list", "--json").stdout.splitlines()
    assert [json.loads(line)["external_id"] for line in lines] == [f"D{i:04d}" for i in range(250)]
    page = _cli(pg_url, "devices", "list", "--json", "--limit", "100")
    assert len(page.stdout.splitlines()) == 100
    last = json.loads(page.stdout.splitlines()[-1])["id"]
    assert f"showing 100 of 250; next page: --after {last}" in page.stderr
    rest = _cli(pg_url, "devices", "list", "--json", "--after", str(last))
    assert len(rest.stdout.splitlines()) == 150


def test_devices_list_refuses_offline_and_online_together(pg_url: str) -> None:
    result = _cli(pg_url, "devices", "list", "--offline", "--online")
    assert result.exit_code == 2
    assert "cityflux: --offline and --online exclude each other" in result.output


def test_updated_at_moves_for_the_fields_the_registry_readme_names(
    pg_url: str, tmp_path: Path
) -> None:
    def stamp() -> Any:
        return query(pg_url, "SELECT updated_at FROM devices WHERE external_id = 'U1'")[0][0]

    def imported(header: str, values: str) -> Any:
        f = tmp_path / "u.csv"
        f.write_text(f"external_id,{header}\nU1,{values}\n")
        assert _cli(pg_url, "devices", "import", "-q", str(f)).exit_code == 0
        return stamp()

    first = imported("district", "Futian")
    query(pg_url, "UPDATE devices SET last_seen = now() WHERE external_id = 'U1'")
    query(pg_url, "UPDATE devices SET district = 'Futian' WHERE external_id = 'U1'")
    assert stamp() == first  # last_seen, and an update that changes nothing
    query(pg_url, "UPDATE devices SET credential_hash = 'x' WHERE external_id = 'U1'")
    assert stamp() == first  # not watched by the trigger
    by_import = imported("cert_fingerprint", "ab" * 32)
    assert by_import > first  # the import's UPDATE sets it
    query(pg_url, "UPDATE devices SET road_km = 3.5 WHERE external_id = 'U1'")
    assert stamp() > by_import
