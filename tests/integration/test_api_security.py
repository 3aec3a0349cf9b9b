"""The operator API's control plane: bearer tokens with scopes on every /api/v1 route, RFC 9457
problem bodies, the audit log of every state change, and schemathesis (a tool nobody here
wrote) fuzzing the running service from its own OpenAPI schema — against real PostgreSQL,
Mosquitto and HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cityflux.cli import app
from tests.helpers import issue_token, query, running, settings_for

RULES = """
rules:
  - name: pm25-high
    table: env_readings
    where: metric == "pm2_5"
    when: value > 75
    severity: critical
"""
PROFILES = """\
profiles:
  - name: air-station
    kind: water
    decoder: hj212
    report_interval_s: 60
"""
# The scope each route needs (README "Security"); a route missing here fails the test.
NEEDS = {
    ("GET", "/api/v1/devices"): "read",
    ("GET", "/api/v1/devices/{device}"): "read",
    ("PATCH", "/api/v1/devices/{device}"): "operate",
    ("POST", "/api/v1/devices/{device}/commands"): "operate",
    ("GET", "/api/v1/devices/{device}/commands/{command_id}"): "read",
    ("GET", "/api/v1/profiles"): "read",
    ("GET", "/api/v1/status"): "read",
    ("GET", "/api/v1/alerts"): "read",
    ("GET", "/api/v1/alerts/summary"): "read",
    ("GET", "/api/v1/alerts/{alert_id}"): "read",
    ("POST", "/api/v1/alerts/{alert_id}/ack"): "operate",
    ("GET", "/api/v1/rules"): "read",
    ("GET", "/api/v1/parking/lots"): "read",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{name}"): "admin",
    ("GET", "/api/v1/audit"): "admin",
}
BODIES = {
    "/api/v1/devices/{device}": {"status": "active"},
    "/api/v1/alerts/{alert_id}/ack": {},
    "/api/v1/devices/{device}/commands": {"operation": "execute", "path": "/3311/0/5850"},
    "/api/v1/tokens": {"name": "made-in-test", "scope": "read"},
}
SCOPES = ["read", "operate", "admin"]


def _request(
    port: int, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
            raw = resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if raw[:1] in b"[{" else raw
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


# the command line is audited as the account of its uid, whatever $USER and $LOGNAME say
ME = pwd.getpwuid(os.getuid()).pw_name
_NOT_ME = {"USER": f"not-{ME}", "LOGNAME": f"not-{ME}"}


def _cli(pg_url: str, *args: str) -> Any:
    env = {"CITYFLUX_DATABASE__URL": pg_url, "CITYFLUX_LOG_LEVEL": "WARNING", **_NOT_ME}
    return CliRunner().invoke(app, list(args), env=env)


def _settings(pg_url: str, broker: Any, prefix: str, tmp_path: Path, **http: Any) -> Any:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return settings_for(
        pg_url,
        broker,
        prefix,
        alerts={"rules_file": str(rules), "mqtt_topic_prefix": "", "reload_check_s": 0.2},
        http=http,
    )


async def test_every_api_route_refuses_a_missing_unknown_revoked_or_too_small_token(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    async with running(_settings(pg_url, broker, topic_prefix, tmp_path)) as svc:
        port = svc.http_port or 0
        holders = {scope: issue_token(pg_url, f"t-{scope}", scope) for scope in SCOPES}
        revoked = issue_token(pg_url, "gone", "admin")
        assert _cli(pg_url, "tokens", "revoke", "gone").exit_code == 0
        _, _, schema = await asyncio.to_thread(_request, port, "GET", "/openapi.json")
        routes = {
            (method.upper(), path)
            for path, ops in schema["paths"].items()
            for method in ops
            if path.startswith("/api/v1/")
        }
        assert routes == set(NEEDS)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for (method, path), needed in sorted(NEEDS.items()):
            url = path.replace("{device}", "ST01").replace("{alert_id}", "1")
            url = url.replace("{name}", "nobody").replace("{command_id}", "1")
            body = BODIES.get(path)
            got: dict[str, Any] = {}
            for label, token in [
                ("none", None),
                ("unknown", "cfx_AAAAAAAA_" + "A" * 43),
                ("garbage", "let-me-in"),
                ("revoked", revoked),
                *[(s, holders[s]) for s in SCOPES],
            ]:
                got[label] = await asyncio.to_thread(_request, port, method, url, token, body)
            results[(method, path)] = got
            for label in ("none", "unknown", "garbage", "revoked"):
                status, headers, problem = got[label]
                assert status == 401, (method, path, label, status, problem)
                assert headers["content-type"] == "application/problem+json"
                assert headers["www-authenticate"].startswith('Bearer realm="cityflux"')
                assert problem["status"] == 401
                assert problem["title"] == "Unauthorized"
            for scope in SCOPES:
                status, headers, problem = got[scope]
                if SCOPES.index(scope) < SCOPES.index(needed):
                    assert status == 403, (method, path, scope)
                    assert problem == {
                        "type": "about:blank",
                        "title": "Forbidden",
                        "status": 403,
                        "detail": f"token 't-{scope}' has scope {scope!r}; "
                        f"this route needs {needed!r}",
                    }
                    assert f'scope="{needed}"' in headers["www-authenticate"]
                else:
                    assert status not in (401, 403), (method, path, scope, problem)
    none = results[("GET", "/api/v1/devices")]["none"][2]
    assert none["detail"] == "this route needs a bearer token (Authorization: Bearer <token>)"
    assert results[("GET", "/api/v1/devices")]["read"][0] == 200
    # a 404 is a problem body too
    assert results[("GET", "/api/v1/devices/{device}")]["read"][2] == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no device 'ST01'",
    }
    # the open endpoints stay open, and the schema declares the bearer scheme
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/devices"]["get"]["security"] == [{"bearer": []}]


def test_tokens_are_printed_once_stored_hashed_and_revoked_from_the_command_line(
    pg_url: str,
) -> None:
    made = _cli(pg_url, "tokens", "create", "--name", "grafana", "--scope", "read")
    assert made.exit_code == 0, made.output
    token = made.stdout.splitlines()[0]
    assert token.startswith("cfx_")
    assert len(token) == 4 + 8 + 1 + 43
    stored = query(pg_url, "SELECT name, prefix, hash, scope, created_by FROM api_tokens")
    assert stored == [("grafana", token[4:12], hashlib.sha256(token.encode()).digest(), "read", ME)]
    listed = _cli(pg_url, "tokens", "list", "--json")
    assert token[13:] not in listed.stdout
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["grafana"]
    again = _cli(pg_url, "tokens", "create", "--name", "grafana", "--scope", "admin")
    assert again.exit_code == 1
    assert "a token named 'grafana' exists" in again.output
    bad = _cli(pg_url, "tokens", "create", "--name", "grafana", "--scope", "root")
    assert bad.exit_code == 2
    assert _cli(pg_url, "tokens", "revoke", "grafana").exit_code == 0
    assert _cli(pg_url, "tokens", "revoke", "grafana").exit_code == 1
    assert query(pg_url, "SELECT revoked_at IS NOT NULL FROM api_tokens") == [(True,)]
    assert query(
        pg_url, "SELECT actor, actor_kind, action, target, before, after FROM audit_log ORDER BY id"
    ) == [
        (ME, "cli", "token.create", "grafana", None, {"scope": "read"}),
        (
            ME,
            "cli",
            "token.revoke",
            "grafana",
            {"revoked": False},
            {"revoked": True},
        ),
    ]


async def test_every_state_change_through_the_api_or_the_cli_is_in_the_audit_log(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    devices = tmp_path / "devices.csv"
    devices.write_text("external_id,profile\nST01,air-station\nST02,air-station\n")
    async with running(_settings(pg_url, broker, topic_prefix, tmp_path)) as svc:
        port = svc.http_port or 0
        assert _cli(pg_url, "profiles", "import", str(profiles)).exit_code == 0
        assert _cli(pg_url, "devices", "import", "-q", str(devices)).exit_code == 0
        admin = issue_token(pg_url, "root-ops", "admin")
        patch = await asyncio.to_thread(
            _request, port, "PATCH", "/api/v1/devices/ST02", admin, {"status": "disabled"}
        )
        assert patch[0] == 200
        made = await asyncio.to_thread(
            _request, port, "POST", "/api/v1/tokens", admin, {"name": "pager", "scope": "operate"}
        )
        assert made[0] == 201
        assert made[2]["token"].startswith("cfx_")
        # the token just made works, until it is revoked through the API
        assert (await asyncio.to_thread(_request, port, "GET", "/api/v1/status", made[2]["token"]))[
            0
        ] == 200
        gone = await asyncio.to_thread(_request, port, "DELETE", "/api/v1/tokens/pager", admin)
        assert gone[0] == 200
        assert (await asyncio.to_thread(_request, port, "GET", "/api/v1/status", made[2]["token"]))[
            0
        ] == 401
        svc.reload_rules()  # what SIGHUP does
        for _ in range(100):
            if query(pg_url, "SELECT count(*) FROM audit_log WHERE action = 'rules.reload'")[0][0]:
                break
            await asyncio.sleep(0.1)
        status, _, page = await asyncio.to_thread(_request, port, "GET", "/api/v1/audit", admin)
        _, _, first = await asyncio.to_thread(_request, port, "GET", "/api/v1/audit?limit=2", admin)
        _, _, older = await asyncio.to_thread(
            _request, port, "GET", f"/api/v1/audit?limit=2&before={first['next_before']}", admin
        )
    assert status == 200

    rules = str(tmp_path / "rules.yaml")
    assert [
        (e["actor"], e["actor_kind"], e["action"], e["target"]) for e in reversed(page["entries"])
    ] == [
        (ME, "cli", "profiles.import", str(profiles)),
        (ME, "cli", "devices.import", str(devices)),
        ("tests", "cli", "token.create", "root-ops"),
        ("root-ops", "token", "device.disable", "ST02"),
        ("root-ops", "token", "token.create", "pager"),
        ("root-ops", "token", "token.revoke", "pager"),
        ("cityflux", "service", "rules.reload", rules),
    ]
    by_action = {e["action"]: e for e in page["entries"]}
    assert (by_action["device.disable"]["before"], by_action["device.disable"]["after"]) == (
        {"status": "active"},
        {"status": "disabled"},
    )
    assert by_action["devices.import"]["after"] == {
        "imported": 2,
        "inserted": 2,
        "updated": 0,
        "unchanged": 0,
        "invalid_lines": 0,
    }
    assert by_action["profiles.import"]["after"] == {"profiles": 1, "changed": ["air-station"]}
    assert by_action["rules.reload"]["after"] == {"rules": ["pm25-high"], "trigger": "SIGHUP"}
    assert all(e["time"] for e in page["entries"])
    assert [e["id"] for e in first["entries"] + older["entries"]] == [
        e["id"] for e in page["entries"][:4]
    ]


async def test_metrics_are_open_by_default_and_can_require_a_read_token(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    async with running(_settings(pg_url, broker, topic_prefix, tmp_path)) as svc:
        open_ = await asyncio.to_thread(_request, svc.http_port or 0, "GET", "/metrics")
    assert open_[0] == 200
    settings = _settings(pg_url, broker, topic_prefix, tmp_path, metrics_access="token")
    async with running(settings) as svc:
        port = svc.http_port or 0
        reader = issue_token(pg_url, "prometheus", "read")
        refused = await asyncio.to_thread(_request, port, "GET", "/metrics")
        scraped = await asyncio.to_thread(_request, port, "GET", "/metrics", reader)
        health = await asyncio.to_thread(_request, port, "GET", "/healthz")
        ready = await asyncio.to_thread(_request, port, "GET", "/readyz")
    assert (refused[0], refused[2]["status"]) == (401, 401)
    assert scraped[0] == 200
    assert b"cityflux_frames_received_total" in scraped[2]
    assert (health[0], ready[0]) == (200, 200)


async def test_schemathesis_finds_no_server_error_and_no_route_that_ignores_its_token(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    async with running(_settings(pg_url, broker, topic_prefix, tmp_path)) as svc:
        port = svc.http_port or 0
        admin = issue_token(pg_url, "schemathesis", "admin")
        run = await asyncio.to_thread(
            subprocess.run,
            [
                str(Path(sys.executable).with_name("st")),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--header",
                f"Authorization: Bearer {admin}",
                "--checks",
                "not_a_server_error,ignored_auth",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "30",
                "--workers",
                "1",
                "--seed",
                "15",
                "--generation-database",
                "none",
                "--no-color",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=tmp_path,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "/api/v1/alerts/{alert_id}/ack" in run.stdout or "passed" in run.stdout.lower()


def test_two_creates_of_one_token_name_at_once_give_one_token_and_a_clean_refusal(
    pg_url: str,
) -> None:
    """The second of two concurrent creates is a TokenError (409 / exit 1), not a
    UniqueViolation (a 500): the first holds the name, uncommitted, while the second runs."""
    import threading

    import psycopg

    from core.access import ActorKind, Principal, Scope
    from ingest import tokens

    assert _cli(pg_url, "db", "migrate").exit_code == 0
    who = Principal("tests", ActorKind.CLI)
    got: list[BaseException | str] = []

    def second() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            try:
                got.append(tokens.create(conn, "race", Scope.READ, who)[0])
            except BaseException as exc:  # what it raised is the test
                got.append(exc)

    with psycopg.connect(pg_url) as first:  # holds the name in a transaction not committed
        first.execute(
            "INSERT INTO api_tokens (name, prefix, hash, scope, created_by) "
            "VALUES ('race', 'AAAAAAAA', %s, 'admin', 'tests')",
            (bytes(32),),
        )
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # waiting on the name's index entry
        first.commit()
    thread.join(10)
    assert len(got) == 1
    assert isinstance(got[0], tokens.TokenError), repr(got[0])
    assert "a token named 'race' exists" in str(got[0])
    assert query(pg_url, "SELECT name, scope FROM api_tokens") == [("race", "admin")]
