"""The batching pipeline: frames in, batches per decoder, decode, resolve, commit, then ack.

Threading: everything runs on the service's asyncio loop. Sources call ``submit`` from the
loop thread; batches are sealed by size or age; ``workers`` tasks (one per writer connection)
take sealed batches, decode them (numpy, in the loop: a 5,000-frame batch decodes in
milliseconds), resolve devices, write through psycopg's async API, and only after the commit
release the batch's acknowledgements.

Backpressure: when more than ``max_inflight_frames`` frames are received but not committed,
every source is paused (stops reading its socket; the broker holds the rest); sources resume
below half of that.

Isolation (docs/design/0007-per-frame-isolation.md): when a stage raises for a batch (decode,
resolve and auto-provision, the COPY of rows or dead letters, the rules, the alert events),
the batch is split — redelivered frames first, then the frame the error names (a COPY's row),
then halves — and the parts stored on their own, until the frames that cause the error are
alone: those are dead-lettered (``stage_error: <stage>: <exception>``), every other frame is
stored as if nothing happened. Errors that are no frame's fault (connection lost, disk full,
server shutting down, a missing table or privilege) never reach this: the writer retries them
with backoff and acknowledges nothing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import psycopg

from core.frames import AckSink, Decoded, FrameBatch, Outcome, Reject, TableRows, merge_decoded
from core.logformat import frame_fields
from core.metrics import Metrics, reason_label
from decoders.base import Decoder
from decoders.guard import screen
from decoders.registry import DecoderRegistry, UnknownDecoderError
from device_registry.frameloss import FrameLoss
from device_registry.ids import id_problem, shown
from device_registry.lastseen import LastSeen
from device_registry.resolver import DeviceResolver, Resolution
from storage.dead_letters import DeadLetters
from storage.writer import BatchWriter, StorageRejectedError, TableWrite, is_transient

log = logging.getLogger(__name__)
FAULT_TEXT_MAX = 300  # characters of an exception kept in a dead letter's reason


class LogBudget:
    """At most ``lines`` log lines per ``window_s`` for one kind of event (a steady trickle of
    bad frames must not flood the log); the next line allowed says how many were held back."""

    def __init__(self, lines: int = 20, window_s: float = 10.0) -> None:
        self._lines, self._window = lines, window_s
        self._start, self._used, self._held = 0.0, 0, 0

    def allow(self) -> str | None:
        """A suffix for the line to log (None: do not log it)."""
        now = time.monotonic()
        if now - self._start >= self._window:
            self._start, self._used = now, 0
        if self._used >= self._lines:
            self._held += 1
            return None
        self._used += 1
        held, self._held = self._held, 0
        return f" ({held} similar lines held back)" if held else ""


class Stage(StrEnum):
    """Where in the pipeline a batch failed (the ``stage`` label of stage errors)."""

    DECODE = "decode"
    RESOLVE = "resolve"
    STORE = "store"
    OCCUPANCY = "occupancy"
    RULES = "rules"
    ALERT_EVENTS = "alert_events"
    PIPELINE = "pipeline"
    """The pipeline's own code between the stages (a bug): isolated like any other."""
    DEAD_LETTERS = "dead_letters"
    """Not even the dead letter could be stored: the frame is abandoned, not acknowledged."""


class StageError(Exception):
    """A stage raised for a batch; ``suspects`` are frames (batch positions) the error names."""

    def __init__(self, stage: Stage, cause: BaseException, suspects: Sequence[int] = ()) -> None:
        if isinstance(cause, StorageRejectedError) and cause.__cause__ is not None:
            cause = cause.__cause__  # the server's own error class (CheckViolation…)
        text = " ".join(str(cause).split()) or "(no message)"
        super().__init__(f"{stage}: {type(cause).__name__}: {text}"[:FAULT_TEXT_MAX])
        self.stage = stage
        self.cause = cause
        self.suspects = list(suspects)


def frame_ages_s(n: int, writes: Sequence[TableWrite]) -> npt.NDArray[np.float64]:
    """Seconds from each stored frame's device time (its earliest row) to now."""
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    for tw in writes:
        if len(tw.rows):
            np.minimum.at(
                first, tw.rows.frame_index, np.asarray(tw.rows.columns["time"], dtype=np.int64)
            )
    stored = first[first != np.iinfo(np.int64).max]
    ages: npt.NDArray[np.float64] = np.maximum(time.time_ns() // 1000 - stored, 0) / 1e6
    return ages


@dataclass(slots=True)
class PipelineStats:
    """Running totals (also exported as metrics); used by the demo's summary and tests."""

    received: int = 0
    stored_frames: int = 0
    rejected: int = 0
    acked: int = 0
    rows: int = 0
    batches: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    # the bench's clock (epoch µs): the earliest frame taken, the latest commit
    first_received_us: int = 0
    last_commit_us: int = 0


class AlertHook(Protocol):
    """The rules engine as the pipeline sees it (alerts.stage.AlertStage)."""

    def new_note(self, batch: FrameBatch) -> Any:
        """A holder for one batch's alert events (kept across retries)."""
        ...

    async def within(self, conn: Any, writes: Sequence[TableWrite], note: Any) -> None:
        """Evaluate the batch's rows and store the alerts, inside its transaction."""
        ...

    def committed(self, note: Any) -> None:
        """The batch's transaction committed."""
        ...

    def abandoned(self, note: Any) -> None:
        """The batch's transaction was rolled back for good (the batch is being split)."""
        ...


class OccupancyHook(Protocol):
    """Parking-space occupancy as the pipeline sees it (parking.occupancy.OccupancyStage)."""

    async def within(self, conn: Any, writes: Sequence[TableWrite]) -> list[TableWrite]:
        """Apply the batch's space reports inside its transaction (before the rules); rows
        the rules read besides the batch's (not stored by the writer)."""
        ...


class Pausable(Protocol):
    """A source that can stop and resume reading (backpressure)."""

    def pause(self) -> None:
        """Stop reading new frames."""

    def resume(self) -> None:
        """Read again."""


@dataclass(slots=True)
class _Open:
    batch: FrameBatch
    opened: float


class Pipeline:
    """Batches frames per (decoder, transport), stores them, releases acks after commit."""

    def __init__(
        self,
        decoders: DecoderRegistry,
        resolver: DeviceResolver,
        writers: list[BatchWriter],
        metrics: Metrics,
        *,
        batch_max_frames: int = 5000,
        flush_interval_ms: int = 200,
        max_inflight_frames: int = 100_000,
        alerts: AlertHook | None = None,
        occupancy: OccupancyHook | None = None,
        flush_by_transport: dict[str, int] | None = None,
        max_frame_bytes: int = 65_536,
        frame_loss: FrameLoss | None = None,
    ) -> None:
        self._decoders = decoders
        self._frame_loss = frame_loss
        self._specs = {s.name: s for s in decoders.tables()}
        self._frame_logs = LogBudget()  # per-frame isolation lines (each frame is a dead letter)
        self._alerts = alerts
        self._occupancy = occupancy
        self._resolver = resolver
        self._writers = writers
        self._metrics = metrics
        self._max_frames = batch_max_frames
        self.max_frame_bytes = max_frame_bytes
        """Sources refuse (dead-letter) frames larger than this."""
        self._flush_s = flush_interval_ms / 1000
        self._flush_by_transport = {t: ms / 1000 for t, ms in (flush_by_transport or {}).items()}
        """Batch age per transport, where it differs (CoAP devices wait for the commit)."""
        self._max_inflight = max_inflight_frames
        self._open: dict[tuple[str, str], _Open] = {}
        self._sealed: asyncio.Queue[FrameBatch | None] = asyncio.Queue()
        self._inflight = 0
        self._paused = False
        self._sources: list[Pausable] = []
        self._resolve_lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = PipelineStats()
        self.on_committed: list[Callable[[FrameBatch, Decoded], None]] = []
        self.last_seen = LastSeen()

    # -- sources side -------------------------------------------------------------------
    def add_source(self, source: Pausable) -> None:
        """Register a source to pause and resume for backpressure."""
        self._sources.append(source)

    def submit(
        self,
        fmt: str,
        transport: str,
        ack_sink: AckSink,
        payload: bytes,
        source: str,
        device: str,
        kind: str,
        ack_id: int = -1,
        redelivered: bool = False,
    ) -> None:
        """Take one frame (called by sources on the loop thread; never blocks).
        ``redelivered``: the transport delivered it before (MQTT DUP), a first suspect."""
        # the hot path: one call per frame, kept flat (refuse() shares _slot and _added)
        key = (fmt, transport)
        slot = self._open.get(key)
        if slot is None:
            slot = self._open[key] = _Open(
                FrameBatch(fmt, transport, ack_sink=ack_sink), time.monotonic()
            )
        batch = slot.batch
        if redelivered:
            batch.redelivered.append(len(batch))
        batch.append(payload, source, device, kind, time.time_ns() // 1000, ack_id)
        self._inflight += 1
        self._idle.clear()
        if len(batch) >= self._max_frames:
            self._seal(key)
        if self._inflight >= self._max_inflight and not self._paused:
            self._set_paused(True)

    def refuse(
        self,
        reason: str,
        fmt: str,
        transport: str,
        ack_sink: AckSink,
        payload: bytes,
        source: str,
        device: str = "",
        ack_id: int = -1,
    ) -> None:
        """Take a frame refused at the edge (bad topic or path, oversize): it is
        dead-lettered with ``reason`` in its batch's transaction, never decoded, and
        acknowledged after that commit like any other frame."""
        batch = self._slot(fmt, transport, ack_sink)
        batch.refused[len(batch)] = reason
        batch.append(payload, source, device, "", time.time_ns() // 1000, ack_id)
        self._added(fmt, transport, batch)

    def _slot(self, fmt: str, transport: str, ack_sink: AckSink) -> FrameBatch:
        slot = self._open.get((fmt, transport))
        if slot is None:
            slot = self._open[(fmt, transport)] = _Open(
                FrameBatch(fmt, transport, ack_sink=ack_sink), time.monotonic()
            )
        return slot.batch

    def _added(self, fmt: str, transport: str, batch: FrameBatch) -> None:
        self._inflight += 1
        self._idle.clear()
        if len(batch) >= self._max_frames:
            self._seal((fmt, transport))
        if self._inflight >= self._max_inflight and not self._paused:
            self._set_paused(True)

    def _seal(self, key: tuple[str, str]) -> None:
        slot = self._open.pop(key)
        self._sealed.put_nowait(slot.batch)

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._metrics.ingest_paused.set(1 if paused else 0)
        log.info(
            "backpressure: %s sources (%d frames uncommitted)",
            "pausing" if paused else "resuming",
            self._inflight,
        )
        for src in self._sources:
            src.pause() if paused else src.resume()

    @property
    def inflight(self) -> int:
        """Frames received and not yet committed (or abandoned)."""
        return self._inflight

    # -- batch side ---------------------------------------------------------------------
    async def run(self) -> None:
        """Seal aged batches and process sealed ones until ``close`` (then drain)."""
        async with asyncio.TaskGroup() as tg:
            ager = tg.create_task(self._age_loop(), name="pipeline.ager")
            workers = [
                tg.create_task(self._worker(w), name=f"pipeline.writer[{i}]")
                for i, w in enumerate(self._writers)
            ]
            await asyncio.gather(*workers)
            ager.cancel()

    async def _age_loop(self) -> None:
        ages = [self._flush_s, *self._flush_by_transport.values()]
        tick = max(min(ages) / 4, 0.005)
        by_transport = self._flush_by_transport
        while True:
            await asyncio.sleep(tick)
            self._metrics.queue_depth.set(self._inflight)  # also while nothing commits
            now = time.monotonic()
            for key in [
                k
                for k, s in self._open.items()
                if now - s.opened >= by_transport.get(k[1], self._flush_s)
            ]:
                self._seal(key)

    def flush(self) -> None:
        """Seal every open batch now."""
        for key in list(self._open):
            self._seal(key)

    async def close(self) -> None:
        """Seal what is open and let the workers finish everything queued, then stop them."""
        self.flush()
        for _ in self._writers:
            self._sealed.put_nowait(None)

    async def wait_idle(self) -> None:
        """Until every received frame has been committed (or rejected) and acknowledged."""
        await self._idle.wait()

    async def _worker(self, writer: BatchWriter) -> None:
        while (batch := await self._sealed.get()) is not None:
            try:
                await self.process(batch, writer)
            except asyncio.CancelledError:
                batch.ack_sink.release(batch.ack_ids, False)
                raise
            except Exception:  # never here by design (process isolates); never exit for it
                self._metrics.stage_errors.labels(Stage.PIPELINE.value).inc()
                log.exception(
                    "pipeline: unexpected error on a batch of %d %s frames (not acknowledged: "
                    "the broker redelivers them after a reconnect); the worker goes on; "
                    "frames %s",
                    len(batch),
                    batch.decoder,
                    _frame_ids(batch),
                )
                batch.ack_sink.release(batch.ack_ids, False)  # later PUBACKs must not wait
                self._finish(len(batch))
        await writer.close()

    async def process(self, batch: FrameBatch, writer: BatchWriter) -> None:
        """Store one batch and release its acks after the commit; when a stage fails for it,
        split it until the frames that cause the failure are alone, dead-letter those and
        store the rest (never raises for a frame's fault)."""
        todo = [batch]
        while todo:
            part = todo.pop()
            try:
                await self._store(part, writer)
            except StageError as fault:
                self._metrics.stage_errors.labels(fault.stage.value).inc()
                if len(part) == 1:
                    if (quiet := self._frame_logs.allow()) is not None:
                        log.warning(
                            "pipeline: %s frame from %s fails alone at %s; dead-lettering it%s",
                            part.decoder,
                            shown(part.sources[0]),
                            fault,
                            quiet,
                            extra=frame_fields(
                                part.transport, part.device_hints[0] or None, part.decoder
                            ),
                        )
                    await self._dead_letter(part, writer, f"stage_error: {fault}")
                    continue
                first, second = _split(part, fault.suspects)
                if (quiet := self._frame_logs.allow()) is not None:
                    log.warning(
                        "pipeline: a batch of %d %s frames failed at %s; splitting it (%d + %d) "
                        "to find the frames that cause it; frames %s%s",
                        len(part),
                        part.decoder,
                        fault,
                        len(first),
                        len(second),
                        _frame_ids(part),
                        quiet,
                    )
                todo += [part.subset(second), part.subset(first)]

    async def _store(self, batch: FrameBatch, writer: BatchWriter) -> None:
        """Decode, resolve and store one batch in one transaction, then release its acks;
        ``StageError`` when a stage raises (nothing of the batch is then stored)."""
        started = time.perf_counter()
        dead = DeadLetters()
        hook, note = self._alerts, None
        try:
            decoded = self._decode(batch, dead)
            writes = await self._resolve(batch, decoded, dead, writer)
            note = hook.new_note(batch) if hook is not None else None
            then = self._within_then(writes, note)
            once = _once(batch, dead)
            try:
                await writer.write(writes, dead.columns(batch), dead.nulls(batch), then, once)
            except StorageRejectedError as exc:
                named = _frames_named(exc, writes, dead, once)
                raise StageError(Stage.STORE, exc, named) from exc
        except StageError:
            if hook is not None and note is not None:
                hook.abandoned(note)
            raise
        except Exception as exc:  # the pipeline's own code: a bug, isolated all the same
            if hook is not None and note is not None:
                hook.abandoned(note)
            raise StageError(Stage.PIPELINE, exc) from exc
        self._committed(batch, decoded, dead, writes, started, note)

    def _decode(self, batch: FrameBatch, dead: DeadLetters) -> Decoded:
        """The decoder's rows and rejects (rejects go to ``dead``)."""
        try:
            decoder: Decoder | None = self._decoders.get(batch.decoder)
        except UnknownDecoderError:
            decoder = None
        refused = batch.refused
        if decoder is None or len(refused) == len(batch):
            for i in range(len(batch)):
                why = refused.get(i) or f"unknown_format: no decoder named {shown(batch.decoder)!r}"
                dead.add(i, why)
            return Decoded()
        try:
            decoded = decoder.decode_batch(batch)
        except Exception:  # against the decoder contract: find the frames, in memory
            self._metrics.stage_errors.labels(Stage.DECODE.value).inc()
            decoded = decode_apart(decoder, batch, self._frame_logs)
        decoded = screen(decoded, self._specs)  # what PostgreSQL would refuse, per frame
        if refused:  # frames refused at the edge were decoded along, never stored
            decoded = decoded.without(refused)
            for i, why in refused.items():
                dead.add(i, why)
        for rej in decoded.rejects:
            dead.add(rej.index, rej.reason)
        return decoded

    def _within_then(
        self, writes: Sequence[TableWrite], note: Any
    ) -> Callable[[Any], Awaitable[None]] | None:
        """The steps run inside the batch's transaction after its rows (parking occupancy,
        then the rules), their failures attributed to their stage; None when there are none."""
        hook, occupancy = self._alerts, self._occupancy
        if hook is None and occupancy is None:
            return None

        async def then(conn: Any) -> None:
            derived: list[TableWrite] = []
            if occupancy is not None and writes:
                try:
                    derived = await occupancy.within(conn, writes)
                except psycopg.Error as exc:
                    if is_transient(exc):
                        raise  # the writer reconnects and retries the transaction
                    raise StageError(Stage.OCCUPANCY, exc) from exc
                except Exception as exc:
                    raise StageError(Stage.OCCUPANCY, exc) from exc
            if hook is None:
                return
            try:
                await hook.within(conn, [*writes, *derived], note)
            except psycopg.Error as exc:
                if is_transient(exc):
                    raise  # the writer reconnects and retries the transaction
                raise StageError(Stage.ALERT_EVENTS, exc) from exc
            except Exception as exc:
                raise StageError(Stage.RULES, exc) from exc

        return then

    async def _dead_letter(
        self, batch: FrameBatch, writer: BatchWriter, reason: str | None = None
    ) -> None:
        """Store every frame of ``batch`` as a dead letter with ``reason`` (a frame refused
        at the edge: its own), then acknowledge them; if even that is refused, abandon them."""
        started = time.perf_counter()
        dead = DeadLetters()
        for i in range(len(batch)):
            dead.add(i, batch.refused.get(i) or reason or "refused")
        try:
            await writer.write(
                [], dead.columns(batch), dead.nulls(batch), dead_once=_once(batch, dead)
            )
        except Exception as exc:
            self._metrics.stage_errors.labels(Stage.DEAD_LETTERS.value).inc()
            log.error(
                "pipeline: the database refuses even the dead letters of %d %s frames (%s); "
                "NOT acknowledging them (the broker redelivers them after a reconnect); frames %s",
                len(batch),
                batch.decoder,
                exc,
                _frame_ids(batch),
            )
            batch.ack_sink.release(batch.ack_ids, False)
            self._finish(len(batch))
            return
        self._committed(batch, Decoded(), dead, [], started)

    def _committed(
        self,
        batch: FrameBatch,
        decoded: Decoded,
        dead: DeadLetters,
        writes: list[TableWrite],
        started: float,
        note: Any = None,
    ) -> None:
        """After the commit: acknowledge, then the bookkeeping (which must never un-ack,
        never raise, and count the batch's frames out of flight exactly once)."""
        accounted = False
        try:
            outcome = Outcome(dict(zip(dead.frames, dead.reasons, strict=True)))
            outcome.replies = {i: p for i, p in decoded.replies if i not in outcome.rejected}
            batch.ack_sink.release(batch.ack_ids, True, outcome)
            if self._alerts is not None and note is not None:
                self._alerts.committed(note)
            self._note_seen(batch, writes, dead)
            if outcome.replies:
                batch.ack_sink.send_replies(
                    [(batch.sources[i], payload) for i, payload in outcome.replies.items()]
                )
            self._account(batch, decoded, dead, writes, time.perf_counter() - started)
            accounted = True
            self._note_numbers(batch, decoded, dead, writes)  # after: a failure here is logged
            for on_committed in self.on_committed:
                on_committed(batch, decoded)
        except Exception:  # the frames are stored (and acknowledged); keep going
            self._metrics.stage_errors.labels(Stage.PIPELINE.value).inc()
            log.exception(
                "pipeline: bookkeeping failed after a committed batch of %d %s frames; frames %s",
                len(batch),
                batch.decoder,
                _frame_ids(batch),
            )
            if not accounted:
                self._finish(len(batch))

    def _note_seen(self, batch: FrameBatch, writes: list[TableWrite], dead: DeadLetters) -> None:
        """Last seen for every device with a stored frame: from the rows' device ids, and for
        frames without rows (heartbeats) from the device the transport named."""
        received = np.asarray(batch.received_us, dtype=np.int64)
        covered = np.zeros(len(batch), dtype=np.bool_)
        covered[list(dead.frames)] = True
        for tw in writes:
            frames = tw.rows.frame_index
            if not frames.shape[0]:
                continue
            # one entry per frame, not per reading: a frame's rows are consecutive
            first = np.flatnonzero(np.concatenate([[True], frames[1:] != frames[:-1]]))
            ids = np.asarray(tw.rows.columns["device_id"], dtype=np.int32)[first]
            self.last_seen.note(ids, received[frames[first]])
            covered[frames] = True
        rest = np.flatnonzero(~covered)
        if rest.shape[0]:
            hints = np.array(
                [batch.device_hints[i].encode() for i in rest.tolist()], dtype=np.bytes_
            )
            named = hints != b""
            if named.any():
                ids = self._resolver.index.resolve(hints[named])
                self.last_seen.note(ids, received[rest[named]])

    def _note_numbers(
        self, batch: FrameBatch, decoded: Decoded, dead: DeadLetters, writes: list[TableWrite]
    ) -> None:
        """The committed batch's frame numbers to the loss detector (stored frames only,
        with the device ids their rows resolved to)."""
        if self._frame_loss is None or not decoded.numbers:
            return
        n = len(batch)
        devices = np.full(n, -1, dtype=np.int32)
        for tw in writes:
            if len(tw.rows):
                devices[tw.rows.frame_index] = tw.rows.columns["device_id"]
        stored = np.ones(n, dtype=np.bool_)
        stored[list(dead.frames)] = False
        self._frame_loss.observe(decoded, devices, stored)

    async def _resolve(
        self, batch: FrameBatch, decoded: Decoded, dead: DeadLetters, writer: BatchWriter
    ) -> list[TableWrite]:
        if not decoded.rows:
            return []
        try:
            kinds = np.array(batch.kind_hints, dtype=np.bytes_)  # ASCII kinds: one conversion
        except UnicodeEncodeError:  # a kind in UTF-8 (the id rule allows it)
            kinds = np.array([k.encode() for k in batch.kind_hints], dtype=np.bytes_)
        bad_frames: dict[int, str] = {}
        resolved: list[tuple[str, TableRows, np.ndarray]] = []
        async with self._resolve_lock:  # provisioning must not race between workers
            for table, rows in decoded.rows.items():
                if not len(rows):
                    continue
                try:
                    res = await writer.retrying(
                        lambda conn, rows=rows: self._resolver.resolve(  # type: ignore[misc]
                            conn, rows.devices, kinds[rows.frame_index], batch.decoder
                        )
                    )
                except Exception as exc:
                    raise StageError(Stage.RESOLVE, exc) from exc
                if res.provisioned:
                    self._metrics.devices_provisioned.inc(res.provisioned)
                for j in np.flatnonzero(~res.ok).tolist():
                    bad_frames.setdefault(int(rows.frame_index[j]), _unresolved(res, j, rows))
                resolved.append((table, rows, res.ids))
        for frame, reason in sorted(bad_frames.items()):
            dead.add(frame, reason)
        specs = self._specs
        bad = np.fromiter(bad_frames, dtype=np.int32, count=len(bad_frames))
        writes = []
        for table, rows, ids in resolved:
            keep = ~np.isin(rows.frame_index, bad)
            kept = rows.take(keep) if bad.size else rows
            kept.columns["device_id"] = ids[keep] if bad.size else ids
            writes.append(TableWrite(specs[table], kept))
        return writes

    def _account(
        self,
        batch: FrameBatch,
        decoded: Decoded,
        dead: DeadLetters,
        writes: list[TableWrite],
        elapsed: float,
    ) -> None:
        m, fmt, n = self._metrics, batch.decoder, len(batch)
        rejected = len(set(dead.frames))
        m.frames_received.labels(batch.transport, fmt).inc(n)
        m.frames_decoded.labels(fmt).inc(n - rejected)
        reasons = Counter(reason_label(r) for r in dead.reasons)
        for reason, count in reasons.items():
            m.frames_rejected.labels(fmt, reason).inc(count)
        for tw in writes:
            m.rows_written.labels(tw.spec.name).inc(len(tw.rows))
        m.frame_age.observe_many(batch.transport, frame_ages_s(n, writes))
        acked = sum(1 for a in batch.ack_ids if a >= 0)
        m.frames_acked.labels(batch.transport).inc(acked)
        m.batch_commit_seconds.labels(fmt).observe(elapsed)
        m.batch_frames.labels(fmt).observe(n)
        st = self.stats
        if batch.received_us and (
            st.first_received_us == 0 or batch.received_us[0] < st.first_received_us
        ):
            st.first_received_us = batch.received_us[0]
        st.last_commit_us = max(st.last_commit_us, time.time_ns() // 1000)
        st.received += n
        st.rejected += rejected
        st.stored_frames += n - rejected
        st.acked += acked
        st.rows += sum(len(tw.rows) for tw in writes)
        st.batches += 1
        st.reasons.update(reasons)
        self._finish(n)

    def _finish(self, n: int) -> None:
        """``n`` frames are no longer in flight (stored, dead-lettered or abandoned)."""
        self._inflight -= n
        m = self._metrics
        m.queue_depth.set(self._inflight)
        if self._paused and self._inflight <= self._max_inflight // 2:
            self._set_paused(False)
        if self._inflight == 0:
            self._idle.set()


def decode_apart(decoder: Decoder, batch: FrameBatch, logs: LogBudget | None = None) -> Decoded:
    """Decode a batch the decoder raised for, halving the parts that raise
    until each raising frame is alone (rejected ``stage_error: decode: …``); decoding is
    pure, so this costs decoder calls, not transactions."""
    parts: list[tuple[list[int], Decoded]] = []
    todo = [list(range(len(batch)))]
    while todo:
        part = todo.pop()
        try:
            parts.append((part, decoder.decode_batch(batch.subset(part))))
        except Exception as exc:
            if len(part) > 1:
                todo += [part[len(part) // 2 :], part[: len(part) // 2]]
                continue
            fault = StageError(Stage.DECODE, exc)
            quiet = logs.allow() if logs is not None else ""
            if quiet is not None:
                log.warning(
                    "pipeline: %s decoder raises for a frame from %s (%s); dead-lettering it%s",
                    batch.decoder,
                    shown(batch.sources[part[0]]),
                    fault,
                    quiet,
                    extra=frame_fields(
                        batch.transport, batch.device_hints[part[0]] or None, batch.decoder
                    ),
                )
            parts.append((part, Decoded(rejects=[Reject(0, f"stage_error: {fault}")])))
    return merge_decoded(parts)


def _split(batch: FrameBatch, suspects: Sequence[int]) -> tuple[list[int], list[int]]:
    """Two parts of a failing batch, the likelier culprits first: frames delivered before
    (a frame that failed a batch before a crash comes back as one), else the frames the
    error names, else the first half."""
    n = len(batch)
    for first in (batch.redelivered, suspects):
        if 0 < len(first) < n:
            chosen = set(first)
            return sorted(chosen), [i for i in range(n) if i not in chosen]
    half = list(range(n))
    return half[: n // 2], half[n // 2 :]


def _once(batch: FrameBatch, dead: DeadLetters) -> npt.NDArray[np.bool_] | None:
    """Dead letters to store only if their frame has none yet (redelivered frames)."""
    return dead.redelivered(batch) if batch.redelivered else None


def _frames_named(
    exc: StorageRejectedError,
    writes: Sequence[TableWrite],
    dead: DeadLetters,
    once: npt.NDArray[np.bool_] | None,
) -> list[int]:
    """The frame whose row the database names in its error (a COPY's line), if any."""
    if exc.row is None:
        return []
    if exc.table == "dead_letters":  # the COPY holds the dead letters not stored "once"
        fresh = dead.frames if once is None else np.asarray(dead.frames)[~once].tolist()
        copied: list[int] = fresh
        return [copied[exc.row]] if exc.row < len(copied) else []
    for tw in writes:
        if tw.spec.name == exc.table and exc.row < len(tw.rows):
            return [int(tw.rows.frame_index[exc.row])]
    return []


def _unresolved(res: Resolution, j: int, rows: TableRows) -> str:
    """The dead letter's reason for row ``j`` the registry did not resolve."""
    raw = bytes(rows.devices[j])
    if res.invalid is not None and res.invalid[j]:
        try:
            problem = id_problem(raw.decode("utf-8")) or "invalid"
        except UnicodeDecodeError:
            problem = f"{shown(raw)}: not UTF-8"
        return f"device_id_invalid: {problem}"
    return f"{'disabled_device' if res.disabled[j] else 'unknown_device'}: {shown(raw)}"


def _frame_ids(batch: FrameBatch, limit: int = 10) -> str:
    """A log line's account of which frames a batch holds (ack handles and sources)."""
    shown_ = ", ".join(
        f"{a}@{shown(s, 60)}" for a, s in zip(batch.ack_ids[:limit], batch.sources, strict=False)
    )
    return shown_ + (f" … ({len(batch)} in all)" if len(batch) > limit else "")
