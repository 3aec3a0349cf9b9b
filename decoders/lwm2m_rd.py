"""LwM2M registration operations (OMA LwM2M 1.1 Transport §6.2, Core §6.2) into
lwm2m_registration_events.

The CoAP listener turns a Register (``POST /rd?ep=…``), Update (``POST /rd/<location>``) or
De-register (``DELETE /rd/<location>``) into one text frame (UTF-8), so registrations go
through the pipeline like any uplink (stored, dead-lettered with a reason, answered after the
commit)::

    <operation> <location>\\n<Uri-Query options joined by &>\\n<payload: CoRE link format>

``operation`` is ``register``, ``update`` or ``deregister``. Query parameters (Transport
§6.2.1): ``ep`` endpoint name (Register, required; the transport names the device by it),
``lt`` lifetime in seconds (default 86400), ``lwm2m`` version (default 1.0), ``b`` binding
(``U`` or ``UQ``; LwM2M 1.1's separate ``Q`` parameter means queue mode too), ``sms`` and
``sid`` ignored. The payload lists the objects and instances (RFC 6690, Core §5.2.1):
``</1/0>,</3/0>,</3303/0>;ver=1.1`` with an optional alternate root
``</lwm2m>;rt="oma.lwm2m"``. A Register without links, or with links that are not link
format, is rejected (``lwm2m_invalid: …``): the listener answers 4.00.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from core.frames import Decoded, FrameBatch, Reject, TableRows
from decoders.base import Decoder, TableSpec
from decoders.rows import nullable_column
from decoders.tables import LWM2M_REGISTRATION_EVENTS

OPERATIONS = ("register", "update", "deregister")
DEFAULT_LIFETIME_S = 86_400  # Transport §6.2.1: lt defaults to 86400
MAX_LIFETIME_S = 2**31 - 1
MAX_LINKS_BYTES = 4_096
_LOCATION = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
_VERSION = re.compile(r"1\.[0-9]\Z")
# RFC 6690 §2: link-value = "<" URI-Reference ">" *( ";" link-param ); params name[=value]
_LINK = re.compile(r'<(/[^<>,;"\s]*)>((?:;[A-Za-z0-9!#$&+.^_`|~-]+(?:=(?:"[^"]*"|[^,;"]+))?)*)')
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+\Z")


class RegistrationError(ValueError):
    """A registration frame that cannot be taken; the message is the dead letter's reason."""


def parse_links(text: str) -> list[str]:
    """The object and instance paths of a CoRE link-format payload (without an alternate
    root); ``RegistrationError`` naming the first thing that is not link format."""
    if not text.strip():
        return []
    links: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _LINK.match(text, pos)
        if m is None:
            raise RegistrationError(f"bad link format at byte {pos}: {text[pos : pos + 20]!r}")
        links.append((m.group(1), m.group(2)))
        pos = m.end()
        if pos < n:
            if text[pos] != ",":
                raise RegistrationError(f"bad link format at byte {pos}: expected ','")
            pos += 1
            if pos == n:
                raise RegistrationError("bad link format: trailing ','")
    root = ""
    for uri, params in links:
        if 'rt="oma.lwm2m"' in params:
            root = uri.rstrip("/")
    paths = []
    for uri, _ in links:
        rest = uri.rstrip("/")
        if rest == root:
            continue
        if root and not rest.startswith(root + "/"):
            raise RegistrationError(f"link {uri!r} is outside the alternate path {root!r}")
        parts = rest[len(root) + 1 :].split("/")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) <= 65535 for p in parts):
            raise RegistrationError(f"link {uri!r} is not an object or object instance")
        paths.append("/" + "/".join(str(int(p)) for p in parts))
    return paths


def parse_query(query: str) -> dict[str, str]:
    """``a=1&b=2`` as a dict (the first of a repeated key wins)."""
    out: dict[str, str] = {}
    for part in query.split("&") if query else ():
        key, _, value = part.partition("=")
        out.setdefault(key, value)
    return out


def registration(payload: bytes) -> tuple[str, str, int | None, str | None, str | None, str]:
    """(operation, location, lifetime_s, binding, version, links) of one frame."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise RegistrationError("not UTF-8") from None
    head, _, rest = text.partition("\n")
    query, _, links = rest.partition("\n")
    operation, _, location = head.partition(" ")
    if operation not in OPERATIONS:
        raise RegistrationError(f"unknown operation {operation[:20]!r}")
    if not _LOCATION.match(location):
        raise RegistrationError(f"bad location {location[:40]!r}")
    if len(links) > MAX_LINKS_BYTES:
        raise RegistrationError(f"object links longer than {MAX_LINKS_BYTES} bytes")
    params = parse_query(query)
    if operation == "deregister":
        return operation, location, None, None, None, ""
    lifetime: int | None = DEFAULT_LIFETIME_S if operation == "register" else None
    if "lt" in params:
        lt = params["lt"]
        if not lt.isdigit() or not 1 <= int(lt) <= MAX_LIFETIME_S:
            raise RegistrationError(f"lifetime lt={lt[:20]!r} is not 1..{MAX_LIFETIME_S} s")
        lifetime = int(lt)
    binding: str | None = "U" if operation == "register" else None
    if "b" in params:
        binding = params["b"]
        if binding not in ("U", "UQ"):
            raise RegistrationError(f"binding b={binding[:10]!r} is not U or UQ (UDP only)")
    if "Q" in params:  # LwM2M 1.1: queue mode as its own parameter
        binding = "UQ"
    version: str | None = "1.0" if operation == "register" else None
    if "lwm2m" in params:
        version = params["lwm2m"]
        if not _VERSION.match(version):
            raise RegistrationError(f"unsupported LwM2M version {version[:10]!r}")
    if operation == "register" and "ep" not in params:
        raise RegistrationError("Register without an endpoint name (ep)")
    parse_links(links)
    if operation == "register" and not links.strip():
        raise RegistrationError("Register without object links")
    return operation, location, lifetime, binding, version, links


class Lwm2mRegistrationDecoder:
    """Decoder for the registration frames the CoAP listener builds from /rd requests."""

    name = "lwm2m-rd"
    content_formats: tuple[int, ...] = ()  # never chosen by Content-Format: /rd only
    tables: tuple[TableSpec, ...] = (LWM2M_REGISTRATION_EVENTS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """One row per valid frame, timed at its receipt."""
        rejects: list[Reject] = []
        rows: list[tuple[int, str, str, int | None, str | None, str | None, str]] = []
        devices: list[bytes] = []
        for i, payload in enumerate(batch.payloads):
            device = batch.device_hints[i].encode()
            try:
                parsed = registration(payload)
            except RegistrationError as exc:
                rejects.append(Reject(i, f"lwm2m_invalid: {exc}"))
                continue
            if not device:
                rejects.append(Reject(i, "lwm2m_invalid: no endpoint name"))
                continue
            rows.append((i, *parsed))
            devices.append(device)
        frames = np.array([r[0] for r in rows], dtype=np.int32)
        lifetime, lifetime_null = nullable_column([r[3] for r in rows], "int32")

        def text(k: int) -> npt.NDArray[np.bytes_]:
            values = [str(r[k] or "").encode() for r in rows]
            return np.array(values or [b""], dtype=np.bytes_)[: len(rows)]

        cols = {
            "time": np.asarray(batch.received_us, dtype=np.int64)[frames],
            "operation": text(1),
            "location": text(2),
            "lifetime_s": lifetime,
            "binding": text(4),
            "lwm2m_version": text(5),
            "object_links": text(6),
        }
        nulls = {
            "lifetime_s": lifetime_null,
            "binding": np.array([r[4] is None for r in rows], dtype=np.bool_),
            "lwm2m_version": np.array([r[5] is None for r in rows], dtype=np.bool_),
            "object_links": np.array([not r[6] for r in rows], dtype=np.bool_),
        }
        table = TableRows(
            table=LWM2M_REGISTRATION_EVENTS.name,
            columns=cols,
            devices=np.array(devices or [b""], dtype=np.bytes_)[: len(devices)],
            frame_index=frames,
            nulls=nulls,
        )
        return Decoded(
            rows={LWM2M_REGISTRATION_EVENTS.name: table}, rejects=rejects, frames_ok=len(rows)
        )


DECODER: Decoder = Lwm2mRegistrationDecoder()
