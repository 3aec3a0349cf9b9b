"""The operator API's bearer tokens: minted at random, shown once, stored as a SHA-256 hash.

A token reads ``cfx_<prefix>_<secret>``: the prefix (8 URL-safe characters) finds the row,
the whole token's SHA-256 is compared in constant time with the stored hash. A hash without
a salt or a slow KDF is enough here: the token carries 256 random bits, so there is nothing
to guess from a leaked hash (docs/design/0009-api-tokens.md). Creating and revoking a token
are audited in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.access import ActorKind, Principal, Scope
from storage import audit

TOKEN_MARK = "cfx_"  # noqa: S105 - what every token starts with, not a secret
PREFIX_CHARS = 8
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_TOKEN = re.compile(rf"^{TOKEN_MARK}([A-Za-z0-9_-]{{{PREFIX_CHARS}}})_[A-Za-z0-9_-]{{43}}$")


class TokenError(ValueError):
    """A token cannot be created or revoked (a name taken, no such token)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def mint() -> tuple[str, str]:
    """A new random token and its lookup prefix."""
    while True:  # the prefix is the secret's first characters minus '_' (kept unambiguous)
        prefix = secrets.token_urlsafe(12).replace("_", "")[:PREFIX_CHARS]
        if len(prefix) == PREFIX_CHARS:
            break
    return f"{TOKEN_MARK}{prefix}_{secrets.token_urlsafe(32)}", prefix


def create(
    conn: psycopg.Connection[Any], name: str, scope: Scope, who: Principal
) -> tuple[str, dict[str, Any]]:
    """Create a token named ``name``; return the token (shown once) and its row."""
    if not re.match(NAME_PATTERN, name):
        raise TokenError(
            f"token name {name!r}: 1-64 of A-Z a-z 0-9 . _ @ -, a letter or digit first"
        )
    token, prefix = mint()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        # one statement, so two creates of one name cannot both pass a check (the loser got
        # a UniqueViolation: a 500 from the API)
        cur.execute(
            "INSERT INTO api_tokens (name, prefix, hash, scope, created_by) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING "
            "RETURNING name, prefix, scope, created_at, created_by",
            (name, prefix, _digest(token), scope.value, who.name),
        )
        made = cur.fetchone()
        if made is None:
            raise TokenError(f"a token named {name!r} exists (revoked names stay taken)")
        row = _plain(made)
        audit.record(conn, who, "token.create", name, None, {"scope": scope.value})
    return token, row


def revoke(conn: psycopg.Connection[Any], name: str, who: Principal) -> dict[str, Any]:
    """Revoke the token named ``name`` (at once: every request looks its token up)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "UPDATE api_tokens SET revoked_at = now(), revoked_by = %s "
            "WHERE name = %s AND revoked_at IS NULL "
            "RETURNING name, prefix, scope, created_at, created_by, revoked_at, revoked_by",
            (who.name, name),
        )
        row = cur.fetchone()
        if row is None:
            raise TokenError(f"no active token named {name!r}")
        audit.record(conn, who, "token.revoke", name, {"revoked": False}, {"revoked": True})
    return _plain(row)


def list_tokens(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every token, without its hash."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT name, prefix, scope, created_at, created_by, last_used_at, revoked_at, "
            "revoked_by FROM api_tokens ORDER BY id"
        )
        return [_plain(r) for r in cur.fetchall()]


def well_formed(token: str) -> bool:
    """Whether ``token`` has a token's shape (``cfx_<prefix>_<secret>``); anything else is
    refused without a database look-up."""
    return _TOKEN.match(token) is not None


def authenticate(conn: psycopg.Connection[Any], token: str) -> Principal | None:
    """The principal a presented token stands for; None for an unknown, malformed or revoked
    token (the same answer for each, and the hash compared in constant time)."""
    m = _TOKEN.match(token)
    if m is None:
        return None
    row = conn.execute(
        "SELECT id, name, hash, scope FROM api_tokens WHERE prefix = %s AND revoked_at IS NULL",
        (m.group(1),),
    ).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[2]), _digest(token)):
        return None
    conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s", (row[0],))
    return Principal(str(row[1]), ActorKind.TOKEN, Scope(row[3]))


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
