"""The batch writer: one transaction per batch, binary COPY from numpy columns, idempotent.

Idempotence: each telemetry table has a unique natural key. The writer COPYs straight into
the table inside a savepoint (the fast path); if the batch repeats a stored key (a redelivered
frame), the savepoint is rolled back and the rows go through a per-connection staging table
with ``INSERT … ON CONFLICT DO NOTHING``. Redeliveries are rare, so the common case runs at
raw COPY speed. See docs/design/0002-idempotent-copy.md.

Failures: a lost connection (DB outage), a full disk, a server shutting down, and errors of
the schema or of privileges (SQLSTATE class 42: a dropped table, a revoked grant) are no
frame's fault: they are retried with exponential backoff until they clear or the service
stops (nothing is acknowledged meanwhile). Data the server refuses (data exceptions, integrity
violations, anything else it raises for the batch's content) is raised to the caller as
``StorageRejectedError``, naming the table and row when the server does (a COPY's line), and
the pipeline isolates the frames that cause it; a batch is never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import numpy as np
import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus

from core.frames import TableRows
from decoders.base import Column, ColumnType, TableSpec
from storage import dead_letters
from storage.pgbinary import encode_rows

log = logging.getLogger(__name__)

Columns = Mapping[str, np.ndarray]
Conn = psycopg.AsyncConnection[tuple[object, ...]]
R = TypeVar("R")


class WriteMethod(StrEnum):
    """How rows reach PostgreSQL: binary COPY (fast) or multi-row INSERT (for servers, such
    as TimescaleDB under PGlite, that cannot take COPY FROM STDIN)."""

    COPY = "copy"
    INSERT = "insert"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for a lost database connection."""

    initial_s: float = 0.1
    max_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (0-based)."""
        return min(self.max_s, self.initial_s * math.pow(2, attempt))


# SQLSTATE classes that are no frame's fault: connection (08), transaction rollback —
# deadlocks, serialization (40), insufficient resources — disk full, out of memory, too many
# connections (53), system errors (58), and operator intervention but query_canceled (57P…).
# psycopg files some frame-caused errors under OperationalError too (54 program limits: an
# index row too large; 57014 a statement timeout on a huge batch), so the class decides.
_TRANSIENT_CLASSES = ("08", "40", "53", "58", "57P")


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is no frame's fault and is retried (never dead-lettered)."""
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # raised by the client: the connection, not the data
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith(_TRANSIENT_CLASSES)


_COPY_LINE = re.compile(r"COPY (?:_stage_)?(\w+), line (\d+)")


class StorageRejectedError(RuntimeError):
    """The server refused the batch's data (not a connection problem); ``table`` and
    ``row`` (0-based, in the order written) when the server names them."""

    def __init__(self, message: str, table: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.table = table
        self.row = row

    @classmethod
    def of(cls, exc: psycopg.Error) -> StorageRejectedError:
        """From the server's error, with the COPY line its context names."""
        found = _COPY_LINE.search((exc.diag.context or "") if exc.diag else "")
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if found is None:
            return cls(message)
        return cls(message, found.group(1), int(found.group(2)) - 1)


def _is_system_fault(exc: psycopg.Error) -> bool:
    """Schema and privilege errors (class 42): an operator's fix, not the frames' fault."""
    return (exc.sqlstate or "").startswith("42")


@dataclass(slots=True)
class TableWrite:
    """Rows for one table, with ``device_id`` filled in."""

    spec: TableSpec
    rows: TableRows


def _py_values(
    spec_cols: Sequence[tuple[str, ColumnType]],
    data: Columns,
    nulls: Mapping[str, np.ndarray],
    n: int,
) -> list[tuple[object, ...]]:
    """Row tuples for the INSERT method (compatibility path only; COPY is per column)."""
    out_cols: list[list[object]] = []
    for name, typ in spec_cols:
        arr = data[name]
        if typ is ColumnType.TIMESTAMPTZ:
            vals: list[object] = [
                np.datetime64(int(v), "us").astype("datetime64[us]").item().isoformat() + "+00:00"
                for v in arr.tolist()
            ]
        elif typ in (ColumnType.TEXT, ColumnType.JSONB):
            vals = [v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()]
        else:
            vals = arr.tolist()
        null = nulls.get(name)
        if null is not None:
            vals = [None if isnull else v for v, isnull in zip(vals, null.tolist(), strict=True)]
        out_cols.append(vals)
    return list(zip(*out_cols, strict=True)) if out_cols else [() for _ in range(n)]


class BatchWriter:
    """Writes one batch (telemetry rows and dead letters) per transaction, on one connection.

    Contract: ``write`` returns only after the transaction committed; it is idempotent per
    batch (calling it twice with the same rows stores them once); it is not safe to call
    concurrently on one instance (use one writer per connection).
    """

    def __init__(
        self,
        conninfo: str,
        method: WriteMethod = WriteMethod.COPY,
        retry: RetryPolicy | None = None,
        insert_chunk_rows: int = 200,
        on_retry: Callable[[Exception], None] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self.method = method
        self._retry = retry or RetryPolicy()
        self._chunk = insert_chunk_rows
        self._on_retry = on_retry
        self._conn: Conn | None = None
        self._staged: set[str] = set()
        self.dedup_fallbacks = 0
        self.reachable = True
        """False from a lost connection until the next statement succeeds (for /readyz)."""

    async def connection(self) -> Conn:
        """The open connection, connecting (with backoff) if needed."""
        attempt = 0
        while self._conn is None or self._conn.closed:
            try:
                # autocommit: every transaction is explicit (conn.transaction()), so a batch's
                # commit is a real COMMIT and never a savepoint inside a forgotten transaction
                self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                self._staged.clear()
            except psycopg.OperationalError as exc:
                self._report_retry(exc, attempt)
                await asyncio.sleep(self._retry.delay(attempt))
                attempt += 1
        return self._conn

    def _report_retry(self, exc: Exception, attempt: int) -> None:
        self.reachable = False
        if self._on_retry is not None:
            self._on_retry(exc)
        log.warning(
            "database unavailable (%s); retrying in %.1f s, holding acknowledgements",
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            self._retry.delay(attempt),
        )

    async def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def retrying(self, op: Callable[[Conn], Awaitable[R]]) -> R:
        """Run ``op`` on the connection; on connection loss reconnect, back off and rerun it.

        ``op`` must be safe to rerun (everything it does is in one transaction, or idempotent).
        Raises ``StorageRejectedError`` when the server refuses the data itself.
        """
        attempt = 0
        while True:
            conn = await self.connection()
            try:
                result = await op(conn)
            except psycopg.Error as exc:
                if is_transient(exc):
                    in_session = isinstance(
                        exc, errors.DeadlockDetected | errors.SerializationFailure
                    )
                    if not in_session and not conn.closed:
                        await conn.close()
                    self._report_retry(exc, attempt)
                    await asyncio.sleep(self._retry.delay(attempt))
                    attempt += 1
                    continue
                if not conn.closed and conn.info.transaction_status is TransactionStatus.INERROR:
                    await conn.rollback()
                if not _is_system_fault(exc):
                    raise StorageRejectedError.of(exc) from exc
                self.reachable = False  # acknowledgements are held: /readyz says so
                log.error(
                    "database refuses the schema or our privileges (%s: %s); an operator must "
                    "fix it; retrying in %.1f s, holding acknowledgements",
                    exc.sqlstate,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                    self._retry.delay(attempt),
                )
                if self._on_retry is not None:
                    self._on_retry(exc)
                await asyncio.sleep(self._retry.delay(attempt))
                attempt += 1
            else:
                self.reachable = True
                return result

    async def write(
        self,
        tables: Sequence[TableWrite],
        dead: Columns | None = None,
        dead_nulls: Mapping[str, np.ndarray] | None = None,
        then: Callable[[Conn], Awaitable[None]] | None = None,
        dead_once: np.ndarray | None = None,
    ) -> None:
        """Store the batch in one transaction; retry on connection loss until it commits.
        ``then`` runs inside the transaction after the rows (e.g. the batch's alerts);
        ``dead_once`` marks dead letters of redelivered frames, stored only if the same
        frame (digest) has no dead letter yet."""

        async def op(conn: Conn) -> None:
            assert conn.info.transaction_status is TransactionStatus.IDLE, (
                "a batch must start its own transaction"
            )
            try:
                await transaction(conn)
            except BaseException:
                # a staging table created in a rolled-back transaction is gone with it
                self._staged.clear()
                raise

        async def transaction(conn: Conn) -> None:
            async with conn.transaction():
                for tw in tables:
                    if len(tw.rows):
                        await self._write_table(conn, tw)
                if dead is not None and len(dead["reason"]):
                    await self._write_dead(conn, dead, dead_nulls or {}, dead_once)
                if then is not None:
                    await then(conn)

        await self.retrying(op)

    async def _write_dead(
        self,
        conn: Conn,
        dead: Columns,
        nulls: Mapping[str, np.ndarray],
        once: np.ndarray | None,
    ) -> None:
        cols = [(c.name, c.type) for c in dead_letters.COLUMNS]
        if once is None or not once.any():
            await self._write_plain(conn, "dead_letters", cols, dead, nulls)
            return
        fresh = ~once
        if fresh.any():
            await self._write_plain(
                conn,
                "dead_letters",
                cols,
                {k: v[fresh] for k, v in dead.items()},
                {k: v[fresh] for k, v in nulls.items()},
            )
        names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in cols)
        stmt = sql.SQL(
            "INSERT INTO dead_letters ({}) SELECT {} WHERE NOT EXISTS (SELECT 1 FROM dead_letters"
            " WHERE digest = %s AND received_at > %s::timestamptz - {}::interval)"
        ).format(
            names,
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
            sql.Literal(dead_letters.REDELIVERY_WINDOW),
        )
        again = np.flatnonzero(once)
        rows = _py_values(
            cols,
            {k: v[again] for k, v in dead.items()},
            {k: v[again] for k, v in nulls.items()},
            again.shape[0],
        )
        for row, digest in zip(rows, dead["digest"][again].tolist(), strict=True):
            await conn.execute(stmt, [*row, digest, row[0]])  # row[0]: its received_at

    async def _write_table(self, conn: Conn, tw: TableWrite) -> None:
        cols = [(c.name, c.type) for c in tw.spec.columns]
        data = dict(tw.rows.columns)
        try:
            async with conn.transaction():  # savepoint: the fast path
                await self._write_plain(
                    conn,
                    tw.spec.name,
                    cols,
                    data,
                    tw.rows.nulls,
                    on_conflict=self.method is WriteMethod.INSERT,
                )
        except errors.UniqueViolation:
            self.dedup_fallbacks += 1
            await self._write_dedup(conn, tw.spec, cols, data, tw.rows.nulls)

    async def _write_plain(
        self,
        conn: Conn,
        table: str,
        cols: Sequence[tuple[str, ColumnType]],
        data: Columns,
        nulls: Mapping[str, np.ndarray],
        on_conflict: bool = False,
    ) -> None:
        names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in cols)
        if self.method is WriteMethod.COPY:
            payload = encode_rows([Column(n, t) for n, t in cols], data, nulls)
            stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                sql.Identifier(table), names
            )
            async with conn.cursor().copy(stmt) as copy:
                await copy.write(payload)
            return
        n = int(next(iter(data.values())).shape[0])
        rows = _py_values(cols, data, nulls, n)
        conflict = sql.SQL(" ON CONFLICT DO NOTHING" if on_conflict else "")
        for start in range(0, n, self._chunk):
            chunk = rows[start : start + self._chunk]
            placeholders = sql.SQL(", ").join(
                sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(cols)))
                for _ in chunk
            )
            stmt = sql.SQL("INSERT INTO {} ({}) VALUES {}{}").format(
                sql.Identifier(table), names, placeholders, conflict
            )
            await conn.execute(stmt, [v for row in chunk for v in row])

    async def _write_dedup(
        self,
        conn: Conn,
        spec: TableSpec,
        cols: Sequence[tuple[str, ColumnType]],
        data: Columns,
        nulls: Mapping[str, np.ndarray],
    ) -> None:
        stage = f"_stage_{spec.name}"
        if spec.name not in self._staged:
            await conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS"
                ).format(sql.Identifier(stage), sql.Identifier(spec.name))
            )
            self._staged.add(spec.name)
        await self._write_plain(conn, stage, cols, data, nulls)
        names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in cols)
        await conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                sql.Identifier(spec.name), names, names, sql.Identifier(stage)
            )
        )
        await conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))
