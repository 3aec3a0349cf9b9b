"""The batching pipeline: frames in, batches per decoder, decode, resolve, commit, then ack.

Threading: everything runs on the service's asyncio loop. Sources call ``submit`` from the
loop thread; batches are sealed by size or age; ``workers`` tasks (one per writer connection)
take sealed batches, decode them (numpy, in the loop: a 5,000-frame batch decodes in
milliseconds), resolve devices, write through psycopg's async API, and only after the commit
release the batch's acknowledgements.

Backpressure: when more than ``max_inflight_frames`` frames are received but not committed,
every source is paused (stops reading its socket; the broker holds the rest); sources resume
below half of that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from decoders.base import Decoder
from decoders.registry import DecoderRegistry, UnknownDecoderError
from device_registry.lastseen import LastSeen
from device_registry.resolver import DeviceResolver
from ingest.batch import AckSink, Decoded, FrameBatch, Outcome, TableRows
from ingest.metrics import Metrics, reason_label
from storage.dead_letters import DeadLetters
from storage.writer import BatchWriter, StorageRejectedError, TableWrite

log = logging.getLogger(__name__)


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
        flush_by_transport: dict[str, int] | None = None,
    ) -> None:
        self._decoders = decoders
        self._alerts = alerts
        self._resolver = resolver
        self._writers = writers
        self._metrics = metrics
        self._max_frames = batch_max_frames
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
    ) -> None:
        """Take one frame (called by sources on the loop thread; never blocks)."""
        key = (fmt, transport)
        slot = self._open.get(key)
        if slot is None:
            slot = self._open[key] = _Open(
                FrameBatch(fmt, transport, ack_sink=ack_sink), time.monotonic()
            )
        slot.batch.append(payload, source, device, kind, time.time_ns() // 1000, ack_id)
        self._inflight += 1
        self._idle.clear()
        if len(slot.batch) >= self._max_frames:
            self._seal(key)
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
        await writer.close()

    async def process(self, batch: FrameBatch, writer: BatchWriter) -> None:
        """Decode, resolve and store one batch; release its acks after the commit."""
        started = time.perf_counter()
        fmt, n = batch.decoder, len(batch)
        dead = DeadLetters()
        try:
            decoder: Decoder | None = self._decoders.get(fmt)
        except UnknownDecoderError:
            decoder = None
        if decoder is None:
            decoded = Decoded()
            for i in range(n):
                dead.add(i, f"unknown_format: no decoder named {fmt!r}")
        else:
            try:
                decoded = decoder.decode_batch(batch)
            except Exception as exc:  # a decoder bug must not lose the batch or stop the service
                log.exception(
                    "decoder %s raised on a batch of %d frames; dead-lettering them", fmt, n
                )
                decoded = Decoded()
                for i in range(n):
                    dead.add(i, f"decoder_error: {type(exc).__name__}: {exc}")
            for rej in decoded.rejects:
                dead.add(rej.index, rej.reason)
        writes = await self._resolve(batch, decoded, dead, writer)
        hook = self._alerts
        note = hook.new_note(batch) if hook is not None else None

        async def then(conn: Any, writes: Sequence[TableWrite] = writes) -> None:
            assert hook is not None
            await hook.within(conn, writes, note)

        try:
            await writer.write(
                writes, dead.columns(batch), dead.nulls(batch), then if hook else None
            )
        except StorageRejectedError as exc:
            log.error(
                "database refused batch of %d %s frames (%s); storing them as dead letters instead",
                n,
                fmt,
                exc,
            )
            dead = DeadLetters()
            for i in range(n):
                dead.add(i, f"storage_rejected: {exc}")
            writes = []
            await writer.write(
                [],
                dead.columns(batch),
                dead.nulls(batch),
                (lambda c: then(c, [])) if hook else None,
            )
        if hook is not None:
            hook.committed(note)
        outcome = Outcome(dict(zip(dead.frames, dead.reasons, strict=True)))
        outcome.replies = {i: p for i, p in decoded.replies if i not in outcome.rejected}
        batch.ack_sink.release(batch.ack_ids, True, outcome)
        self._note_seen(batch, writes, dead)
        if outcome.replies:
            batch.ack_sink.send_replies(
                [(batch.sources[i], payload) for i, payload in outcome.replies.items()]
            )
        self._account(batch, decoded, dead, writes, time.perf_counter() - started)
        for on_committed in self.on_committed:
            on_committed(batch, decoded)

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

    async def _resolve(
        self, batch: FrameBatch, decoded: Decoded, dead: DeadLetters, writer: BatchWriter
    ) -> list[TableWrite]:
        if not decoded.rows:
            return []
        kinds = np.array(batch.kind_hints, dtype=np.bytes_)
        bad_frames: dict[int, str] = {}
        resolved: list[tuple[str, TableRows, np.ndarray]] = []
        async with self._resolve_lock:  # provisioning must not race between workers
            for table, rows in decoded.rows.items():
                if not len(rows):
                    continue
                res = await writer.retrying(
                    lambda conn, rows=rows: self._resolver.resolve(  # type: ignore[misc]
                        conn, rows.devices, kinds[rows.frame_index], batch.decoder
                    )
                )
                if res.provisioned:
                    self._metrics.devices_provisioned.inc(res.provisioned)
                for j in np.flatnonzero(~res.ok).tolist():
                    state = "disabled_device" if res.disabled[j] else "unknown_device"
                    bad_frames.setdefault(
                        int(rows.frame_index[j]),
                        f"{state}: {rows.devices[j].decode(errors='replace')}",
                    )
                resolved.append((table, rows, res.ids))
        for frame, reason in sorted(bad_frames.items()):
            dead.add(frame, reason)
        specs = {s.name: s for s in self._decoders.tables()}
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
        st.received += n
        st.rejected += rejected
        st.stored_frames += n - rejected
        st.acked += acked
        st.rows += sum(len(tw.rows) for tw in writes)
        st.batches += 1
        st.reasons.update(reasons)
        self._inflight -= n
        m.queue_depth.set(self._inflight)
        if self._paused and self._inflight <= self._max_inflight // 2:
            self._set_paused(False)
        if self._inflight == 0:
            self._idle.set()
