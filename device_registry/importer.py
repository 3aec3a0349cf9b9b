"""Bulk device import, reading side: CSV or JSON Lines into validated columns.

Plain CSV lines are read and checked a block at a time with numpy (:mod:`csvscan`); every
other line (quoted fields, JSON Lines, secrets to hash, anything a quick check refuses) is
validated here in Python, which also words every error: ``LINE: field: problem``. The
valid lines end up as one :class:`DeviceRows` (numpy columns), which :mod:`upsert` writes
in one transaction. Invalid lines are reported and left out; the rest is imported.
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psycopg
import psycopg.errors

from core.access import Principal
from device_registry.credentials import ITERATIONS, CredentialError, check_hash, hash_secret
from device_registry.csvscan import TEXT_MAX, scan_block
from device_registry.devicerows import FIELDS, DeviceRows, ImportResult, LineError, Progress
from device_registry.ids import ID_RULE, id_problem
from device_registry.upsert import stream_devices, write_devices
from storage import audit

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TEXT_MAX = TEXT_MAX
BLOCK_BYTES = 16 << 20  # CSV read and scanned this much at a time


class ImportFormatError(ValueError):
    """A file whose header or format cannot be imported at all."""


class _InvalidFieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _float(name: str, text: str, lo: float, hi: float) -> str:
    try:
        value = float(text)
    except ValueError:
        raise _InvalidFieldError(name, f"{text!r} is not a number") from None
    if not (lo <= value <= hi) or math.isnan(value):
        raise _InvalidFieldError(name, f"{value} is outside {lo}..{hi}")
    return text


def validate(
    v: list[str], profiles: frozenset[str] | dict[str, str], iterations: int = ITERATIONS
) -> list[str]:
    """The staged values (``STAGED`` order, ``""`` = not given) of one device line given in
    ``FIELDS`` order, or ``_InvalidFieldError`` naming the field. A secret is hashed with a
    random salt and ``iterations``; the plain secret is handed on too (see ``STAGED``)."""
    ext, profile, kind, status, tenant, district, lat, lon, road, road_km = v[:10]
    install, secret, hashed, cert, kid, oscore_secret, salt, psk_identity, psk_key = v[10:19]
    lot, space = v[19:]
    if not ext:
        raise _InvalidFieldError("external_id", "missing")
    if id_problem(ext) is not None:
        raise _InvalidFieldError("external_id", f"{ext!r}: {ID_RULE}")
    if profile and profile not in profiles:
        raise _InvalidFieldError("profile", f"unknown profile {profile!r}")
    if status and status not in ("active", "disabled"):
        raise _InvalidFieldError("status", f"{status!r} is not active or disabled")
    if (
        len(kind) > _TEXT_MAX
        or len(tenant) > _TEXT_MAX
        or len(district) > _TEXT_MAX
        or len(road) > _TEXT_MAX
        or len(lot) > _TEXT_MAX
        or len(space) > _TEXT_MAX
    ):
        name = next(
            n
            for n, x in zip(
                ("kind", "tenant", "district", "road", "lot", "space"),
                (kind, tenant, district, road, lot, space),
                strict=True,
            )
            if len(x) > _TEXT_MAX
        )
        raise _InvalidFieldError(name, f"longer than {_TEXT_MAX} characters")
    if lat or lon:
        if not (lat and lon):
            raise _InvalidFieldError("lat" if not lat else "lon", "lat and lon go together")
        _float("lat", lat, -90, 90)
        _float("lon", lon, -180, 180)
    if road_km:
        _float("road_km", road_km, 0, 1e6)
    if install:
        try:
            doc = json.loads(install)
        except ValueError:
            raise _InvalidFieldError("install", "not valid JSON") from None
        if not isinstance(doc, dict):
            raise _InvalidFieldError("install", "must be a JSON object")
    if secret:
        if hashed:
            raise _InvalidFieldError("secret", "give a secret or a credential_hash, not both")
        if len(secret) < 8:
            raise _InvalidFieldError("secret", "shorter than 8 characters")
        hashed = hash_secret(secret, iterations=iterations)
    elif hashed:
        try:
            check_hash(hashed)
        except CredentialError as exc:
            raise _InvalidFieldError("credential_hash", str(exc)) from None
    if cert:
        cert = cert.replace(":", "").lower()
        if not _HEX64.fullmatch(cert):
            raise _InvalidFieldError(
                "cert_fingerprint", "must be a SHA-256 fingerprint (64 hex digits)"
            )
    kid = _hex_field("oscore_kid", kid, 1, 7)
    oscore_secret = _hex_field("oscore_secret", oscore_secret, 16, 64)
    salt = _hex_field("oscore_salt", salt, 0, 32)
    # a kid without its secret is checked against the registry (upsert.check_oscore)
    if psk_identity and (
        len(psk_identity.encode()) > 128 or not psk_identity.isprintable() or "," in psk_identity
    ):
        raise _InvalidFieldError(
            "psk_identity", "must be 1-128 bytes of printable characters, no comma"
        )
    psk_key = _hex_field("psk_key", psk_key, 16, 32)
    return [
        ext,
        profile,
        kind,
        status,
        tenant,
        district,
        lat,
        lon,
        road,
        road_km,
        install,
        hashed,
        cert,
        kid,
        oscore_secret,
        salt,
        psk_identity,
        psk_key,
        lot,
        space,
        secret,
    ]


def _hex_field(name: str, text: str, lo: int, hi: int) -> str:
    """Hex bytes of lo..hi bytes (spaces and colons allowed), as lower-case hex."""
    if not text:
        return ""
    clean = text.replace(":", "").replace(" ", "").lower()
    try:
        raw = bytes.fromhex(clean)
    except ValueError:
        raise _InvalidFieldError(name, "not hex") from None
    if not lo <= len(raw) <= hi:
        raise _InvalidFieldError(name, f"{len(raw)} bytes, must be {lo}-{hi}")
    return clean


def _header(first: bytes, name: str) -> list[str]:
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFormatError(f"{name}: line 1: header is not UTF-8") from None
    header = [h.strip() for h in next(csv.reader([text]), [])]
    unknown = [h for h in header if h not in FIELDS]
    if unknown or "external_id" not in header:
        raise ImportFormatError(
            f"{name}: line 1: header must name external_id and only known fields "
            f"({', '.join(FIELDS)}); unknown: {', '.join(unknown) or '-'}"
        )
    return header


def _picker(header: list[str]) -> Callable[[list[str]], list[str]]:
    """Values in ``FIELDS`` order from values in header order (absent fields empty)."""
    width = len(header)
    if header == list(FIELDS):
        return lambda values: values
    pick = operator.itemgetter(*[header.index(f) if f in header else width for f in FIELDS])
    return lambda values: list(pick([*values, ""]))


def _csv_values(
    lines: Iterable[tuple[int, bytes]], header: list[str]
) -> Iterator[tuple[int, list[str] | str]]:
    """Single physical lines through Python's csv reader (quoted fields, odd lines)."""
    width, pick = len(header), _picker(header)
    for line, raw in lines:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield line, "not valid UTF-8"
            continue
        values = next(csv.reader([text]), [])
        if len(values) != width:
            yield line, f"{len(values)} fields, the header has {width}"
        else:
            yield line, pick(values)


def _csv_stream(
    fh: io.TextIOBase, header: list[str], first_line: int
) -> Iterator[tuple[int, list[str] | str]]:
    """The rest of a file through Python's csv reader (fields spanning lines)."""
    reader = csv.reader(fh)
    width, pick = len(header), _picker(header)
    for values in reader:
        line = first_line - 1 + reader.line_num
        if len(values) != width:
            yield line, f"{len(values)} fields, the header has {width}"
        else:
            yield line, pick(values)


def _open_quote_line(block: bytes) -> int:
    """Offset of the first line of ``block`` with an odd number of quotes (a quoted field
    that runs onto the next line), or -1."""
    if b'"' not in block:
        return -1
    buf = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    quotes = np.flatnonzero(buf == 34)
    per_line = np.bincount(np.searchsorted(nl, quotes), minlength=nl.shape[0] + 1)
    odd = np.flatnonzero(per_line[: nl.shape[0]] % 2 == 1)
    if odd.shape[0] == 0:
        return -1
    return 0 if odd[0] == 0 else int(nl[odd[0] - 1]) + 1


def _jsonl_rows(fh: io.TextIOBase, name: str) -> Iterator[tuple[int, list[str] | str]]:
    del name
    for line, text in enumerate(fh, start=1):
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(doc, dict):
            yield line, "not a JSON object"
            continue
        unknown = [k for k in doc if k not in FIELDS]
        if unknown:
            yield line, f"unknown field(s) {', '.join(unknown)}"
            continue
        yield (
            line,
            [
                "" if doc.get(k) is None else json.dumps(doc[k]) if k == "install" else str(doc[k])
                for k in FIELDS
            ],
        )


class _Validator:
    """Turns lines into parts of valid rows (columns) and errors; Python validates the lines
    the vectorised scan left (or all of them, for JSON Lines)."""

    def __init__(
        self, profiles: dict[str, str], result: ImportResult, iterations: int = ITERATIONS
    ) -> None:
        self.profiles = profiles
        self.result = result
        self.iterations = iterations

    def python(self, rows: Iterable[tuple[int, list[str] | str]]) -> Iterator[DeviceRows]:
        """Validate rows in Python; a part every 20,000 valid rows."""
        lines: list[int] = []
        valid: list[list[str]] = []
        for line, values in rows:
            self.result.lines += 1
            if isinstance(values, str):
                self.result.errors.append(LineError(line, "line", values))
                continue
            try:
                valid.append(validate(values, self.profiles, self.iterations))
            except _InvalidFieldError as exc:
                self.result.errors.append(LineError(line, exc.field, str(exc)))
                continue
            lines.append(line)
            if len(valid) >= 20_000:
                yield DeviceRows.from_values(lines, valid)
                lines, valid = [], []
        if valid:
            yield DeviceRows.from_values(lines, valid)

    def block(
        self, block: bytes, line: int, header: list[str], known: npt.NDArray[np.bytes_]
    ) -> Iterator[DeviceRows]:
        """A block of CSV lines: the simple ones scanned, the others validated in Python."""
        scanned = scan_block(block, line, header, known)
        self.result.lines += int(scanned.lines.shape[0])
        yield DeviceRows.from_scan(scanned)
        yield from self.python(_csv_values(scanned.slow, header))


def _read_csv(path: Path, check: _Validator, progress: Progress | None) -> Iterator[DeviceRows]:
    total = path.stat().st_size
    known = np.array(sorted(p.encode() for p in check.profiles), dtype=np.bytes_)
    with path.open("rb") as fh:
        first = fh.readline()
        if not first.strip():
            return
        header = _header(first, str(path))
        line, pending = 2, b""
        while True:
            chunk = fh.read(BLOCK_BYTES)
            data = pending + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            if chunk and cut == 0:
                pending = data
                continue
            block, pending = data[:cut], data[cut:]
            if block and not block.endswith(b"\n"):
                block += b"\n"
            opened = _open_quote_line(block)
            if opened >= 0:  # a field spans lines: Python's csv reader takes the rest
                head = block[:opened]
                if head:
                    yield from check.block(head, line, header, known)
                line += head.count(b"\n")
                rest = io.TextIOWrapper(
                    io.BufferedReader(_Chain(block[opened:] + pending, fh)),
                    encoding="utf-8",
                    errors="replace",
                    newline="",
                )
                yield from check.python(_csv_stream(rest, header, line))
                break
            if block:
                yield from check.block(block, line, header, known)
                line += block.count(b"\n")
            if progress:
                progress(fh.tell(), total, f"importing {path.name}")
            if not chunk:
                break


class _Chain(io.RawIOBase):
    """Bytes already read, then the rest of a file."""

    def __init__(self, head: bytes, rest: io.BufferedReader) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def iter_devices(
    path: Path,
    profiles: dict[str, str],
    result: ImportResult,
    progress: Progress | None = None,
    iterations: int = ITERATIONS,
) -> Iterator[DeviceRows]:
    """The valid device lines of ``path``, a part (numpy columns) at a time; line counts and
    errors go to ``result``. Raises ``ImportFormatError`` when the file cannot be imported."""
    check = _Validator(profiles, result, iterations)
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            yield from check.python(_jsonl_rows(fh, str(path)))
    else:
        yield from _read_csv(path, check, progress)


def read_devices(
    path: Path,
    profiles: dict[str, str],
    progress: Progress | None = None,
    iterations: int = ITERATIONS,
) -> tuple[DeviceRows, ImportResult]:
    """Every valid device line of ``path`` as columns (each block's simple lines first, not
    in line order), and the result so far (line count, errors in line order)."""
    result = ImportResult()
    rows = DeviceRows.concat(list(iter_devices(path, profiles, result, progress, iterations)))
    result.errors.sort(key=lambda e: e.line)
    return rows, result


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 24), b"")) + 1


def import_devices(
    conn: psycopg.Connection[tuple[object, ...]],
    path: Path,
    progress: Progress | None = None,
    who: Principal | None = None,
    iterations: int = ITERATIONS,
) -> ImportResult:
    """Read, validate and upsert the devices of ``path`` in one transaction.

    One pass: each block read is split into new and known devices and the new ones are
    copied at once (``upsert.stream_devices``), so reading and writing overlap. A device
    named twice among the new ones makes the server refuse the copy; the import then runs
    again with every device's last line only (``upsert.write_devices``). ``progress`` is
    called with (done, total, what). A secret is hashed with a random salt and
    ``iterations``; a known device keeps its stored hash while the secret still verifies
    against it with that many iterations, so importing the same file twice changes nothing.
    With ``who``, the import is audited once it committed
    (file and counts; the devices' rows carry their own ``updated_at``).
    """
    cur = conn.execute("SELECT name, kind FROM device_profiles")
    profiles = {str(name): str(kind) for name, kind in cur.fetchall()}
    result = ImportResult()
    try:
        parts = iter_devices(path, profiles, result, progress, iterations)
        stream_devices(conn, parts, profiles, result, _count_lines(path), progress)
    except psycopg.errors.UniqueViolation:
        rows, result = read_devices(path, profiles, progress, iterations)
        write_devices(conn, rows, profiles, result, progress)
    result.errors.sort(key=lambda e: e.line)
    if who is not None:
        counts = {
            "imported": result.imported,
            "inserted": result.inserted,
            "updated": result.updated,
            "unchanged": result.unchanged,
            "invalid_lines": len(result.errors),
        }
        audit.record(conn, who, "devices.import", str(path), None, counts)
    return result
