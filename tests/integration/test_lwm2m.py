"""LwM2M 1.1 server side end to end: a real LwM2M client nobody here wrote (FIWARE
lwm2m-node-lib 1.4.0, driven by tests/lwm2m/client.js) registers, reports temperature by
Observe, goes to queue mode and takes a queued Write on its next Update, and de-registers;
malformed registrations from an aiocoap client are answered 4.xx and dead-lettered — against
real PostgreSQL over real UDP."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import oscore, resource
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from decoders.registry import load_registry
from ingest.settings import CoapMode
from storage.migrate import TimescaleMode, migrate
from tests.helpers import api_call, issue_token, query, running, settings_for, wait_until

CLIENT = Path(__file__).parent.parent / "lwm2m" / "client.js"
NODE = shutil.which("node")


def lwm2m_settings(pg_url: str, broker: Any, prefix: str, unknown: str, **lwm2m: Any) -> Any:
    return settings_for(
        pg_url,
        broker,
        prefix,
        coap={"mode": "open", "port": 0},
        lwm2m={"mode": "server", **lwm2m},
        pipeline={"unknown_devices": unknown, "flush_interval_ms": 50},
    )


class Lwm2mClient:
    """The node client: commands on stdin, JSON events on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout: float = 30) -> dict[str, Any]:
        """The next event of that name (earlier ones of other names are kept)."""
        assert self.proc.stdout is not None
        for seen in self.events:
            if seen["event"] == event:
                self.events.remove(seen)
                return seen
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"the LwM2M client ended before {event!r}")
                got = json.loads(line)
                if got["event"] == event:
                    return dict(got)
                if got["event"] == "error":
                    raise AssertionError(f"LwM2M client: {got}")
                self.events.append(got)


@pytest.fixture
def node_client_ready() -> None:
    if NODE is None:
        pytest.skip("no node on this machine (the LwM2M client is a Node library)")
    if not (CLIENT.parent / "node_modules" / "lwm2m-node-lib").is_dir():
        pytest.fail(
            "tests/lwm2m/node_modules missing: run `make tests/lwm2m/node_modules/.installed`"
        )


async def test_a_real_client_registers_is_observed_takes_a_queued_write_and_deregisters(
    pg_url: str, broker: Any, topic_prefix: str, node_client_ready: None
) -> None:
    await asyncio.to_thread(migrate, pg_url, load_registry().tables(), TimescaleMode.OFF)
    query(
        pg_url,
        "INSERT INTO device_profiles (name, kind, decoder, report_interval_s, unknown_devices) "
        "VALUES ('thermo-lwm2m', 'lwm2m', 'lwm2m-rd', 60, 'auto-provision')",
    )
    token = issue_token(pg_url, "ops", "operate")
    cfg = lwm2m_settings(
        pg_url, broker, topic_prefix, "reject", observe={"thermo-lwm2m": ["/3303/0/5700"]}
    )
    async with running(cfg) as svc:
        assert svc.coap is not None
        assert svc.coap.port is not None
        assert svc.http_port is not None
        proc = await asyncio.create_subprocess_exec(
            str(NODE),
            str(CLIENT),
            "127.0.0.1",
            str(svc.coap.port),
            "thermo-1",
            "300",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=CLIENT.parent,
        )
        dev = Lwm2mClient(proc)
        try:
            await dev.expect("ready")
            for line in ("create /3303/0", "set /3303/0 5700 21.5", "create /3311/0"):
                await dev.send(line)
                await dev.expect("created" if line.startswith("create") else "set")
            await dev.send("set /3311/0 5851 100")
            await dev.expect("set")
            await dev.send("register")
            registered = await dev.expect("registered")
            assert registered["location"].startswith("rd/")  # Location-Path rd, <location>

            def readings() -> list[float]:
                return [
                    r[0]
                    for r in query(
                        pg_url,
                        "SELECT value FROM env_readings WHERE metric = '/3303/0/5700' "
                        "ORDER BY time",
                    )
                ]

            await wait_until(lambda: readings() == [21.5], 30, "the first observed value")
            await dev.send("set /3303/0 5700 23.25")
            await wait_until(lambda: readings() == [21.5, 23.25], 30, "a notification")

            status, cmd = await asyncio.to_thread(
                api_call,
                svc.http_port,
                "/api/v1/devices/thermo-1/commands",
                {"operation": "write", "path": "/3311/0/5851", "value": "40"},
                token=token,
            )
            assert status == 201, cmd
            assert cmd["state"] == "queued"
            status, execute = await asyncio.to_thread(
                api_call,
                svc.http_port,
                "/api/v1/devices/thermo-1/commands",
                {"operation": "execute", "path": "/3311/0/5850"},
                token=token,
            )
            assert status == 201, execute
            await dev.send("binding UQ")
            await dev.expect("binding")
            await dev.send("update")
            await dev.expect("updated")
            written = await dev.expect("written")
            assert written == {"event": "written", "path": "/3311/0/5851", "value": "40"}
            assert await dev.expect("executed") == {"event": "executed", "path": "/3311/0/5850"}

            def states() -> list[tuple[str, str | None]]:
                return query(pg_url, "SELECT state, result_code FROM lwm2m_commands ORDER BY id")

            await wait_until(
                lambda: all(s != "sent" for s, _ in states()), 30, "the commands' results"
            )
            assert states() == [("done", "2.04"), ("done", "2.04")]
            _, got = await asyncio.to_thread(
                api_call,
                svc.http_port,
                f"/api/v1/devices/thermo-1/commands/{cmd['id']}",
                token=token,
            )
            assert (got["state"], got["result_code"]) == ("done", "2.04")
            reg = query(
                pg_url,
                "SELECT r.binding, r.lifetime_s, r.deregistered_at IS NULL, v.online, d.profile "
                "FROM lwm2m_registrations r JOIN devices d ON d.id = r.device_id "
                "JOIN device_status_view v ON v.id = d.id WHERE d.external_id = 'thermo-1'",
            )
            assert reg == [("UQ", 300, True, True, "thermo-lwm2m")]

            await dev.send("deregister")
            await dev.expect("deregistered")
            await wait_until(
                lambda: (
                    query(
                        pg_url,
                        "SELECT v.online FROM device_status_view v "
                        "WHERE v.external_id = 'thermo-1'",
                    )
                    == [(False,)]
                ),
                30,
                "offline after De-register",
            )
        finally:
            proc.kill()
            await proc.wait()
    events = query(
        pg_url,
        "SELECT operation, binding, lifetime_s FROM lwm2m_registration_events ORDER BY time",
    )
    assert events == [("register", "U", 300), ("update", "UQ", 300), ("deregister", None, None)]
    audit = query(
        pg_url, "SELECT actor, action, target FROM audit_log WHERE action = 'device.command'"
    )
    assert audit == [("ops", "device.command", "thermo-1")] * 2


async def _register(
    ctx: aiocoap.Context, port: int, query_: str, links: bytes, path: str = "rd", cf: int = 40
) -> aiocoap.Message:
    """POST to /rd (a Register or Update) or /dp (a Send) and the answer."""
    uri = f"coap://127.0.0.1:{port}/{path}" + (f"?{query_}" if query_ else "")
    msg = aiocoap.Message(code=aiocoap.POST, uri=uri, payload=links)
    msg.opt.content_format = cf
    return await asyncio.wait_for(ctx.request(msg).response, 15)


async def test_send_is_stored_and_malformed_registrations_are_answered_4xx_and_dead_lettered(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    await asyncio.to_thread(migrate, pg_url, load_registry().tables(), TimescaleMode.OFF)
    query(pg_url, "INSERT INTO devices (external_id, kind) VALUES ('meter-7', 'lwm2m')")
    senml = json.dumps([{"bn": "/3303/0/", "n": "5700", "v": 19.75, "t": 1767225600}]).encode()
    async with running(lwm2m_settings(pg_url, broker, topic_prefix, "reject")) as svc:
        assert svc.coap is not None
        assert svc.coap.port is not None
        ctx = await aiocoap.Context.create_client_context()
        other = await aiocoap.Context.create_client_context()
        try:
            port = svc.coap.port
            ok = await _register(ctx, port, "ep=meter-7&lt=60&lwm2m=1.1", b"</1/0>,</3303/0>")
            sent = await _register(ctx, port, "", senml, path="dp", cf=110)
            stranger_send = await _register(other, port, "", senml, path="dp", cf=110)
            stranger = await _register(ctx, port, "ep=stranger&lt=60", b"</1/0>,</3/0>")
            bad_links = await _register(ctx, port, "ep=stranger&lt=60", b"</1/0>,<3/0")
            bad_binding = await _register(ctx, port, "ep=stranger&b=T", b"</1/0>")
            no_such = await _register(ctx, port, "lt=60", b"", path="rd/0123456789")
        finally:
            await ctx.shutdown()
            await other.shutdown()
    assert (str(ok.code), len(ok.opt.location_path)) == ("2.01 Created", 2)
    assert ok.opt.location_path[0] == "rd"
    assert str(sent.code) == "2.04 Changed"
    stored = query(
        pg_url,
        "SELECT d.external_id, r.metric, r.value FROM env_readings r "
        "JOIN devices d ON d.id = r.device_id",
    )
    assert stored == [("meter-7", "/3303/0/5700", 19.75)]
    answers = [
        (str(a.code), a.payload.decode())
        for a in (stranger_send, stranger, bad_links, bad_binding, no_such)
    ]
    assert answers == [
        ("4.04 Not Found", "unknown_registration: Send (/dp) before Register"),
        ("4.03 Forbidden", "unknown_device: stranger"),
        ("4.00 Bad Request", "lwm2m_invalid: bad link format at byte 7: '<3/0'"),
        ("4.00 Bad Request", "lwm2m_invalid: binding b='T' is not U or UQ (UDP only)"),
        ("4.04 Not Found", "unknown_registration: /rd/0123456789"),
    ]
    dead = query(pg_url, "SELECT transport, source, reason FROM dead_letters ORDER BY id")
    assert dead == [
        ("lwm2m", "/dp", "unknown_registration: Send (/dp) before Register"),
        ("lwm2m", "/rd", "unknown_device: stranger"),
        ("lwm2m", "/rd", "lwm2m_invalid: bad link format at byte 7: '<3/0'"),
        ("lwm2m", "/rd", "lwm2m_invalid: binding b='T' is not U or UQ (UDP only)"),
        ("lwm2m", "/rd/0123456789", "unknown_registration: /rd/0123456789"),
    ]


async def test_a_registration_that_lapses_is_offline_and_raises_the_absence_alert(
    pg_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(migrate, pg_url, load_registry().tables(), TimescaleMode.OFF)
    query(pg_url, "INSERT INTO devices (external_id, kind) VALUES ('lamp-3', 'lwm2m')")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: offline\n    kind: absence\n")  # limit: the lifetime
    cfg = lwm2m_settings(pg_url, broker, topic_prefix, "reject")
    cfg.alerts.rules_file = rules
    cfg.alerts.tick_s = 0.2
    async with running(cfg) as svc:
        assert svc.coap is not None
        assert svc.coap.port is not None
        ctx = await aiocoap.Context.create_client_context()
        try:
            ok = await _register(ctx, svc.coap.port, "ep=lamp-3&lt=1", b"</3311/0>")
            assert str(ok.code) == "2.01 Created"
            await wait_until(
                lambda: query(pg_url, "SELECT state FROM alerts") == [("raised",)],
                30,
                "offline once the 1 s lifetime passed without an Update",
            )
            await wait_until(  # expires_at is a moment after the frame's receipt + 1 s
                lambda: (
                    query(pg_url, "SELECT online, offline_after_s FROM device_status_view")
                    == [(False, 1.0)]
                ),
                30,
                "the registry saying offline too",
            )
            # a lapsed registration is gone (Transport §6.2.2): the device registers again
            again = await _register(ctx, svc.coap.port, "ep=lamp-3&lt=3600", b"</3311/0>")
            assert str(again.code) == "2.01 Created"
            await wait_until(
                lambda: query(pg_url, "SELECT state FROM alerts") == [("cleared",)],
                30,
                "back online with the new Register",
            )
        finally:
            await ctx.shutdown()
    assert query(pg_url, "SELECT online, offline_after_s FROM device_status_view") == [
        (True, 3600.0)
    ]
    assert query(pg_url, "SELECT subject, raised_value FROM alerts") == [("lamp-3", 1.0)]


class _Resource(resource.Resource):  # type: ignore[misc]
    """One writable resource of the OSCORE device below."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        self.written.append(request.payload)
        return aiocoap.Message(code=aiocoap.CHANGED)


async def test_oscore_registration_send_and_a_protected_queued_write(
    pg_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(migrate, pg_url, load_registry().tables(), TimescaleMode.OFF)
    secret = bytes(range(16))
    query(
        pg_url,
        "INSERT INTO devices (external_id, kind, oscore_kid, oscore_secret) "
        "VALUES ('nb-lamp', 'lwm2m', '\\x0a01', %s), ('nb-other', 'lwm2m', NULL, NULL)",
        secret,
    )
    query(
        pg_url,
        "INSERT INTO lwm2m_commands (device_id, operation, path, value, created_by) "
        "SELECT id, 'write', '/3311/0/5851', '40', 'tests' FROM devices "
        "WHERE external_id = 'nb-lamp'",
    )
    basedir = tmp_path / "device-ctx"
    basedir.mkdir()
    (basedir / "settings.json").write_text(
        json.dumps({"sender-id_hex": "0a01", "recipient-id_hex": "", "secret_hex": secret.hex()})
    )
    security = oscore.FilesystemSecurityContext(str(basedir))
    lamp = _Resource()
    site = resource.Site()
    site.add_resource(["3311", "0", "5851"], lamp)
    cfg = lwm2m_settings(pg_url, broker, topic_prefix, "reject")
    cfg.coap.mode = CoapMode.OSCORE
    async with running(cfg) as svc:
        assert svc.coap is not None
        port = svc.coap.port
        credentials = CredentialsMap({":server": security})
        device = await aiocoap.Context.create_server_context(
            OscoreSiteWrapper(site, credentials), bind=("127.0.0.1", 0)
        )
        device.client_credentials[f"coap://127.0.0.1:{port}/*"] = security
        plain = await aiocoap.Context.create_client_context()
        try:
            ok = await _register(device, port, "ep=nb-lamp&lt=60&b=UQ", b"</3311/0>")
            other = await _register(device, port, "ep=nb-other&lt=60", b"</3311/0>")
            sent = await _register(
                device,
                port,
                "",
                json.dumps([{"bn": "/3311/0/", "n": "5851", "v": 100}]).encode(),
                path="dp",
                cf=110,
            )
            unprotected = await _register(plain, port, "ep=nb-lamp&lt=60", b"</3311/0>")
            await wait_until(
                lambda: (
                    query(pg_url, "SELECT state FROM lwm2m_commands")[0][0]
                    not in ("queued", "sent")
                ),
                30,
                "the protected Write answered",
            )
        finally:
            await device.shutdown()
            await plain.shutdown()
    codes = [str(m.code) for m in (ok, other, sent, unprotected)]
    assert codes == ["2.01 Created", "4.03 Forbidden", "2.04 Changed", "4.01 Unauthorized"]
    assert lamp.written == [b"40"]
    assert query(pg_url, "SELECT state, result_code FROM lwm2m_commands") == [("done", "2.04")]
    assert query(pg_url, "SELECT metric, value FROM env_readings") == [("/3311/0/5851", 100.0)]
