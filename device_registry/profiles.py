"""Device profiles: what a family of devices sends, how often, and what happens to strangers.

A profiles file is YAML (or JSON): ``profiles: [{name, kind, decoder, …}, …]``. It is
validated with pydantic; errors name the file, the line and the field. ``store`` upserts the
profiles by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import psycopg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.access import Principal
from core.yamlfile import DocumentError, describe, load_document
from device_registry.resolver import UnknownDevicePolicy
from storage import audit

_INTERVAL = r"^\s*\d+(\.\d+)?\s*(s|sec|second|min|minute|h|hour|d|day|week|mon|month|year)s?\s*$"


class DeviceProfile(BaseModel):
    """One device profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="profile id")]
    kind: Annotated[
        str, Field(min_length=1, max_length=64, description="device kind, the topic's kind level")
    ]
    decoder: Annotated[str, Field(min_length=1, description="decoder (frame format) name")]
    topic_pattern: str | None = Field(None, description="MQTT topic filter its devices use")
    coap_path: str | None = Field(None, description="CoAP uplink path pattern")
    report_interval_s: Annotated[int, Field(gt=0, description="expected seconds between frames")]
    offline_after: Annotated[
        float, Field(gt=0, description="offline after this many silent intervals")
    ] = 3.0
    tables: list[str] = Field(default_factory=list, description="telemetry tables it fills")
    rule_set: str | None = Field(None, description="alert rule set applied to its devices")
    retention: Annotated[str | None, Field(pattern=_INTERVAL)] = None
    compress_after: Annotated[str | None, Field(pattern=_INTERVAL)] = None
    unknown_devices: UnknownDevicePolicy = UnknownDevicePolicy.REJECT
    description: str = ""

    @field_validator("topic_pattern")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and ("#" in v[:-1] or not v):
            raise ValueError("'#' may only be the last level of a topic filter")
        return v


class ProfilesFile(BaseModel):
    """The document: a list of profiles."""

    model_config = ConfigDict(extra="forbid")
    profiles: list[DeviceProfile]


def load_profiles(path: Path, decoders: set[str] | None = None) -> list[DeviceProfile]:
    """Read and validate a profiles file; ``DocumentError`` names file, line and field."""
    data, node = load_document(path)
    if isinstance(data, list):  # a bare list is accepted too
        data = {"profiles": data}
        node = None
    try:
        doc = ProfilesFile.model_validate(data)
    except ValidationError as exc:
        raise DocumentError(describe(path, node, exc)) from None
    seen: set[str] = set()
    for i, p in enumerate(doc.profiles):
        if p.name in seen:
            raise DocumentError(f"{path}: profiles[{i}].name: duplicate profile {p.name!r}")
        seen.add(p.name)
        if decoders is not None and p.decoder not in decoders:
            known = ", ".join(sorted(decoders))
            raise DocumentError(
                f"{path}: profiles[{i}].decoder: unknown decoder {p.decoder!r} (known: {known})"
            )
    return doc.profiles


COLUMNS = tuple(DeviceProfile.model_fields)


def store(
    conn: psycopg.Connection[tuple[object, ...]],
    profiles: list[DeviceProfile],
    who: Principal | None = None,
    source: str = "",
) -> int:
    """Upsert profiles by name; return how many were inserted or changed. With ``who``, the
    import is audited in the same transaction (``source`` names the file)."""
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "name")
    changed = 0
    names: list[str] = []
    with conn.transaction():
        for p in profiles:
            values = [getattr(p, c) for c in COLUMNS]
            cur = conn.execute(
                f"INSERT INTO device_profiles AS p ({cols}) VALUES ({marks}) "
                f"ON CONFLICT (name) DO UPDATE SET {sets}, updated_at = now() "
                f"WHERE ({', '.join('p.' + c for c in COLUMNS)}) IS DISTINCT FROM "
                f"({', '.join('EXCLUDED.' + c for c in COLUMNS)}) RETURNING name",
                [v.value if isinstance(v, UnknownDevicePolicy) else v for v in values],
            )
            rows = cur.fetchall()
            changed += len(rows)
            names += [str(r[0]) for r in rows]
        if who is not None:
            after = {"profiles": len(profiles), "changed": names}
            audit.record(conn, who, "profiles.import", source, None, after)
    return changed


__all__ = ["DeviceProfile", "DocumentError", "load_profiles", "store"]
