"""CoAP source (RFC 7252) for NB-IoT devices: uplinks over UDP, answered after the commit.

A device POSTs (or PUTs) a frame to ``/<prefix>/<kind>/<device>[/<format>][/<object>[/<id>]]``
(prefix ``up``). The decoder is the path's format level, else the one registered for the
request's Content-Format (SenML JSON 110, SenML CBOR 112, LwM2M TLV 11542, JSON 50), else —
for octet-stream or no Content-Format — the one profile of the device's kind. The frame goes
through the same batch pipeline as MQTT frames, and:

- a confirmable request is answered **after the batch holding it committed** — 2.04, or
  4.00 with the dead letter's reason, 4.03 for an unknown or disabled device, 4.15 for a
  format no decoder takes — piggybacked on the ACK when the commit comes within
  ``piggyback_ms``, else the ACK goes first and the response follows as a separate CON
  (retransmitted until acknowledged). A device that retries after a lost answer gets the
  same answer again (duplicates are recognised by message id for EXCHANGE_LIFETIME); one
  that retries after that is stored once anyway (the writer is idempotent);
- non-confirmable requests get the same answers as NON messages;
- large uplinks come block-wise (RFC 7959 Block1): 2.31 Continue per block, the final block
  answered after the commit; more than ``max_body_bytes`` is 4.13;
- while the pipeline is saturated (``max_inflight_frames``), requests are answered 5.03 with
  Max-Age ``retry_after_s`` instead of being taken and dropped;
- with ``mode = oscore`` every request must be OSCORE-protected with its device's key from
  the registry (:mod:`ingest.coap_oscore`); responses are protected too. An unknown kid or a
  failed decryption is 4.01, a device naming another device's path 4.03.

Why not aiocoap's server stack: measured on this machine a bare aiocoap server (a resource
that answers 2.04 at once) handles fewer requests per second than a process must take; its
message codec and OSCORE are used here, and the exchange layer is this module's (the figures,
measured side by side: ``bench/results/coap.json``).

Contract: ``run`` serves until ``stop``; after ``stop_reading`` new requests are answered 5.03
(the service is draining); frames are acknowledged only through ``release(ok=True)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiocoap
from aiocoap import Message, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from core.frames import Outcome
from core.metrics import Metrics
from decoders.registry import DecoderRegistry
from ingest.coap_dtls import DtlsEndpoint, PskStore
from ingest.coap_oscore import DeviceContext, DeviceKeyStore, LookupsExhaustedError
from ingest.pipeline import Pipeline
from ingest.settings import CoapConfig, CoapMode
from ingest.topics import UplinkTopic, check_levels, refused

log = logging.getLogger(__name__)
TRANSPORT = "coap"
CON, NON, ACK, RST = 0, 1, 2, 3
EXCHANGE_LIFETIME_S = 247.0  # RFC 7252 §4.8.2
ACK_TIMEOUT_S = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
BLOCK_TTL_S = 120.0  # an unfinished block-wise upload is forgotten after this
RECEIVE_BUFFER_BYTES = 8 << 20  # capped by net.core.rmem_max (raise it for large fleets)
_HANDLED = {
    OptionNumber.URI_PATH,
    OptionNumber.URI_HOST,
    OptionNumber.URI_PORT,
    OptionNumber.URI_QUERY,
    OptionNumber.CONTENT_FORMAT,
    OptionNumber.BLOCK1,
    OptionNumber.SIZE1,
    OptionNumber.REQUEST_TAG,
    OptionNumber.OSCORE,
    OptionNumber.ECHO,
    OptionNumber.ACCEPT,
}
Remote = tuple[str, int]
_LINKS = '</{prefix}>;rt="cityflux.uplink";ct="110 112 11542 50 42"'  # RFC 6690 link format


@dataclass(slots=True)
class _Exchange:
    """One request, from receipt to its (cached) response."""

    remote: Remote
    mid: int
    token: bytes
    con: bool
    received: float
    response: bytes | None = None  # the answer, for retransmitted requests
    empty_acked: bool = False
    oscore: tuple[DeviceContext, Any] | None = None  # context, request id
    block1: Any = None  # the final Block1 value to echo
    device: str = ""


@dataclass(slots=True)
class _Upload:
    """A block-wise upload being assembled."""

    body: bytearray = field(default_factory=bytearray)
    next_block: int = 0
    touched: float = 0.0


@dataclass(slots=True)
class _Outgoing:
    """A separate confirmable response waiting for the device's ACK."""

    remote: Remote
    data: bytes
    due: float
    attempts: int = 0
    timeout: float = ACK_TIMEOUT_S


class CoapListener(asyncio.DatagramProtocol):
    """The CoAP front door: a UDP endpoint feeding the pipeline; an ``AckSink``."""

    def __init__(
        self,
        cfg: CoapConfig,
        pipeline: Pipeline,
        metrics: Metrics,
        decoders: DecoderRegistry,
        keys: DeviceKeyStore | None = None,
        kind_decoders: Callable[[str], list[str]] | None = None,
        psks: PskStore | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._cfg = cfg
        # with ``psks`` this listener serves coaps:// (dtls_port): DTLS authenticates the
        # device, the CoAP inside is plain (coap_dtls.py); else coap:// in ``cfg.mode``
        self._psks = psks
        self._mode = CoapMode.OPEN if psks is not None else cfg.mode
        self._dtls: DtlsEndpoint | None = None
        self._reuse_port = reuse_port  # several workers on one port (ingest/workers.py)
        self._pipeline = pipeline
        self._metrics = metrics
        self._decoders = decoders
        self._keys = keys
        self._kind_decoders: Callable[[str], list[str]] = kind_decoders or (lambda kind: [])
        self._transport: asyncio.DatagramTransport | None = None
        self._exchanges: OrderedDict[tuple[Remote, int], _Exchange] = OrderedDict()
        self._pending: dict[int, _Exchange] = {}
        self._next_ack = 0
        self._waiting: deque[tuple[float, _Exchange]] = deque()
        self._outgoing: dict[tuple[Remote, int], _Outgoing] = {}
        self._uploads: dict[tuple[Remote, tuple[str, ...], bytes], _Upload] = {}
        self._uploads_of: Counter[Remote] = Counter()  # uploads being assembled per remote
        self._protecting: set[asyncio.Task[None]] = set()  # OSCORE requests awaiting a key
        self._mid = random.randrange(0x10000)
        self._saturated = False
        self._draining = False
        self._stopping = asyncio.Event()
        self.port: int | None = None
        self.bound = asyncio.Event()
        pipeline.add_source(self)

    # -- asyncio plumbing ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # bursts of uplinks: a small buffer drops them (retransmissions)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.port = transport.get_extra_info("sockname")[1]
        self.bound.set()

    async def run(self) -> None:
        """Listen until ``stop``; a sweeper sends late ACKs and retransmissions."""
        loop = asyncio.get_running_loop()
        if self._psks is not None:
            self._dtls = DtlsEndpoint(self._cfg, self._psks, self, self._metrics)
            dtls = self._dtls
            await loop.create_datagram_endpoint(
                lambda: dtls,
                local_addr=(self._cfg.host, self._cfg.dtls_port),
                reuse_port=self._reuse_port or None,
            )
        else:
            await loop.create_datagram_endpoint(
                lambda: self,
                local_addr=(self._cfg.host, self._cfg.port),
                reuse_port=self._reuse_port or None,
            )
        log.info(
            "CoAP listening on %s://%s:%d (%s), uplinks on /%s/<kind>/<device>/…",
            "coaps" if self._dtls else "coap",
            self._cfg.host,
            self.port,
            "dtls-psk" if self._dtls else self._cfg.mode.value,
            self._cfg.path_prefix,
        )
        if self._mode is CoapMode.OPEN and self._dtls is None:
            log.warning("CoAP uplinks are not authenticated (coap.mode = open)")
        while not self._stopping.is_set():
            self._sweep(time.monotonic())
            if self._dtls is not None:
                self._dtls.sweep(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)
        if self._transport is not None:
            self._transport.close()
        if self._keys is not None:
            await self._keys.close()
        if self._psks is not None:
            await self._psks.close()

    def stop_reading(self) -> None:
        """Draining: answer new requests 5.03 until stopped."""
        self._draining = True

    async def stop(self) -> None:
        """Stop serving (after the pipeline drained: responses already sent)."""
        self._stopping.set()

    # -- Pausable (backpressure) ----------------------------------------------------------
    def pause(self) -> None:
        """The pipeline is saturated: new requests get 5.03 Service Unavailable."""
        self._saturated = True

    def resume(self) -> None:
        """Take requests again."""
        self._saturated = False

    # -- receiving ---------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 4 or data[0] >> 6 != 1:
            return  # not CoAP version 1: silently ignored (RFC 7252 §3)
        mtype = (data[0] >> 4) & 3
        mid = int.from_bytes(data[2:4], "big")
        remote: Remote = (addr[0], addr[1])
        if mtype in (ACK, RST):
            self._outgoing.pop((remote, mid), None)  # the device got our separate response
            return
        if data[1] == 0:  # an empty CON is a ping: RST (§4.3)
            if mtype == CON:
                self._send(bytes([0x70, 0, data[2], data[3]]), remote)
            return
        key = (remote, mid)
        known = self._exchanges.get(key)
        if known is not None:
            self._duplicate(known)
            return
        plain = _parse_plain(data) if self._mode is not CoapMode.OSCORE else None
        if plain is not None:  # the usual uplink, parsed without building a Message
            code, token, path, cf, payload = plain
            ex = _Exchange(remote, mid, token, mtype == CON, time.monotonic())
            self._remember(key, ex)
            if self._path_ok(ex, path, code):
                self._uplink(ex, path, cf, payload)
                return
            if path[:2] != (".well-known", "core"):
                return  # answered 4.04 or 4.05
        try:
            msg = Message.decode(data, remote)
        except (ValueError, aiocoap.error.UnparsableMessage):
            if mtype == CON:  # a message format error is rejected (§4.2)
                self._send(bytes([0x70, 0, data[2], data[3]]), remote)
            return
        ex = _Exchange(remote, mid, msg.token, mtype == CON, time.monotonic())
        self._remember(key, ex)
        if msg.opt.oscore is not None:
            if len(self._protecting) >= self._cfg.max_pending_oscore:  # work per datagram
                self._metrics.coap_oscore_failures.labels("busy").inc()
                self._answer(ex, Code.SERVICE_UNAVAILABLE, b"", max_age=self._cfg.retry_after_s)
                return
            task = asyncio.get_running_loop().create_task(self._protected(msg, ex))
            self._protecting.add(task)
            task.add_done_callback(self._protecting.discard)
            return
        if self._mode is CoapMode.OSCORE and not _is_discovery(msg):
            self._metrics.coap_oscore_failures.labels("missing").inc()
            self._answer(ex, Code.UNAUTHORIZED, b"OSCORE required")
            return
        self._request(msg, ex)

    def _remember(self, key: tuple[Remote, int], ex: _Exchange) -> None:
        self._exchanges[key] = ex
        while len(self._exchanges) > self._cfg.dedup_entries:
            self._exchanges.popitem(last=False)

    def _duplicate(self, ex: _Exchange) -> None:
        self._metrics.coap_duplicates.inc()
        if not ex.con:
            return
        if ex.response is not None:
            self._send(ex.response, ex.remote)
        elif not ex.empty_acked:  # still waiting for the commit: stop its retransmissions
            self._empty_ack(ex)

    async def _protected(self, msg: Message, ex: _Exchange) -> None:
        """An OSCORE request: find the device's context, unprotect, handle, protect."""
        if self._keys is None:
            self._answer(ex, Code.BAD_OPTION, b"OSCORE is not enabled")
            return
        try:
            unprotected = oscore.verify_start(msg)
            kid = unprotected.get(oscore.COSE_KID, b"")
            ctx = await self._keys.context(kid)
        except oscore.NotAProtectedMessage:
            self._answer(ex, Code.BAD_OPTION, b"malformed OSCORE option")
            return
        except LookupsExhaustedError:  # a flood of new key ids: the registry is spared
            self._metrics.coap_oscore_failures.labels("busy").inc()
            self._answer(ex, Code.SERVICE_UNAVAILABLE, b"", max_age=self._cfg.retry_after_s)
            return
        except Exception as exc:  # the registry cannot be read: try again later
            log.warning("CoAP: OSCORE key lookup failed (%s); answering 5.03", exc)
            self._answer(ex, Code.SERVICE_UNAVAILABLE, b"", max_age=self._cfg.retry_after_s)
            return
        if ctx is None:
            self._metrics.coap_oscore_failures.labels("unknown_kid").inc()
            self._answer(ex, Code.UNAUTHORIZED, b"unknown OSCORE key id")
            return
        try:
            inner, request_id = ctx.unprotect(msg)
        except oscore.ReplayErrorWithEcho as echo:  # first request since a (re)start
            self._metrics.coap_oscore_failures.labels("echo").inc()
            self._answer_message(ex, echo.to_message())
            return
        except oscore.ReplayError:
            self._metrics.coap_oscore_failures.labels("replay").inc()
            self._answer(ex, Code.UNAUTHORIZED, b"replayed")
            return
        except (oscore.ProtectionInvalid, oscore.DecodeError):
            self._metrics.coap_oscore_failures.labels("decryption").inc()
            self._answer(ex, Code.UNAUTHORIZED, b"OSCORE: decryption failed")
            return
        ex.oscore = (ctx, request_id)
        self._request(inner, ex, authenticated=ctx.external_id)

    def _request(self, msg: Message, ex: _Exchange, authenticated: str | None = None) -> None:
        """A request from a (possibly authenticated) device."""
        if not msg.code.is_request():
            if ex.con:
                self._send(bytes([0x70, 0]) + ex.mid.to_bytes(2, "big"), ex.remote)
            return
        for opt in msg.opt.option_list():
            if opt.number.is_critical() and opt.number not in _HANDLED:
                text = f"option {int(opt.number)} not understood"
                self._answer(ex, Code.BAD_OPTION, text.encode())
                return
        path = tuple(msg.opt.uri_path)
        if _is_discovery(msg):
            self._answer(
                ex,
                Code.CONTENT,
                _LINKS.format(prefix=self._cfg.path_prefix).encode(),
                content_format=40,
            )
            return
        if not self._path_ok(ex, path, int(msg.code)):
            return
        if authenticated is not None and authenticated != path[2]:
            self._metrics.coap_oscore_failures.labels("wrong_device").inc()
            self._answer(ex, Code.FORBIDDEN, f"authenticated as {authenticated}".encode())
            return
        payload = msg.payload
        block1 = msg.opt.block1
        if block1 is not None:
            got = self._block(msg, ex, block1)
            if got is None:
                return
            payload = got
        cf = msg.opt.content_format
        self._uplink(ex, path, None if cf is None else int(cf), payload)

    def _path_ok(self, ex: _Exchange, path: Sequence[str], code: int) -> bool:
        """Whether the request is an uplink (else it is answered 4.04 or 4.05)."""
        if len(path) < 3 or path[0] != self._cfg.path_prefix:
            if path[:2] != (".well-known", "core"):
                self._answer(ex, Code.NOT_FOUND, b"uplinks go to /up/<kind>/<device>/...")
            return False
        if code not in (int(Code.POST), int(Code.PUT)):
            self._answer(ex, Code.METHOD_NOT_ALLOWED, b"POST or PUT an uplink")
            return False
        if self._dtls is not None:  # the DTLS session's PSK says which device this is
            who = self._dtls.device_of(ex.remote)
            if who != path[2]:
                self._metrics.coap_dtls_failures.labels("wrong_device").inc()
                self._answer(ex, Code.FORBIDDEN, f"authenticated as {who}".encode())
                return False
        return True

    def _uplink(self, ex: _Exchange, path: Sequence[str], cf: int | None, payload: bytes) -> None:
        """Hand the frame to the pipeline (or refuse it while saturated)."""
        kind, device = path[1], path[2]
        if self._draining or self._saturated:
            self._metrics.coap_responses.labels("5.03").inc()
            self._answer(
                ex, Code.SERVICE_UNAVAILABLE, b"", max_age=self._cfg.retry_after_s, count=False
            )
            return
        fmt = self._decoder(path, cf, kind)
        ex.device = device
        ack_id = self._next_ack
        self._next_ack += 1
        self._pending[ack_id] = ex
        self._waiting.append((ex.received + self._cfg.piggyback_ms / 1000, ex))
        source = "/" + "/".join(path)
        named_format = path[3] if len(path) > 3 and not path[3].isdigit() else None
        refusal = check_levels(kind, device, named_format)
        largest = self._pipeline.max_frame_bytes
        if refusal is None and len(payload) <= largest:
            self._pipeline.submit(fmt, TRANSPORT, self, payload, source, device, kind, ack_id)
            return
        if refusal is not None:  # dead-lettered with the raw path, answered 4.00 with why
            self._pipeline.refuse(refusal.reason, fmt, TRANSPORT, self, payload, source, "", ack_id)
            return
        reason, _, _ = refused(UplinkTopic(kind, device, fmt, ""), len(payload), largest)
        self._pipeline.refuse(
            reason, fmt, TRANSPORT, self, payload[:largest], source, device, ack_id
        )

    def _decoder(self, path: Sequence[str], cf_num: int | None, kind: str) -> str:
        """The decoder name for this uplink (an unknown name is dead-lettered, and 4.15)."""
        if len(path) > 3 and path[3] in self._decoders:
            return path[3]
        if cf_num is not None and cf_num not in (0, 42):
            try:
                return self._decoders.by_content_format(cf_num).name
            except LookupError:
                return f"content-format {cf_num}"
        by_kind = [d for d in self._kind_decoders(kind) if d in self._decoders]
        if len(by_kind) == 1:
            return str(by_kind[0])
        return f"content-format {cf_num if cf_num is not None else 'none'} for kind {kind}"

    def _block(self, msg: Message, ex: _Exchange, block1: Any) -> bytes | None:
        """Add one Block1 block; the whole body once the last block came, else None."""
        key = (ex.remote, tuple(msg.opt.uri_path), b"".join(msg.opt.request_tag))
        up = self._uploads.get(key)
        if block1.block_number == 0:
            if up is None and (
                len(self._uploads) >= self._cfg.max_uploads
                or self._uploads_of[ex.remote] >= self._cfg.max_uploads_per_remote
            ):
                self._answer(
                    ex,
                    Code.SERVICE_UNAVAILABLE,
                    b"too many uploads",
                    max_age=self._cfg.retry_after_s,
                )
                return None
            if up is None:
                self._uploads_of[ex.remote] += 1
            up = self._uploads[key] = _Upload()
        if up is None or block1.block_number != up.next_block:
            self._drop_upload(key)
            self._answer(ex, Code.REQUEST_ENTITY_INCOMPLETE, b"blocks out of order")
            return None
        up.body += msg.payload
        up.next_block += 1
        up.touched = time.monotonic()
        if len(up.body) > self._cfg.max_body_bytes:
            self._drop_upload(key)
            self._answer(ex, Code.REQUEST_ENTITY_TOO_LARGE, b"", size1=self._cfg.max_body_bytes)
            return None
        if block1.more:
            self._answer(ex, Code.CONTINUE, b"", block1=block1)
            return None
        self._drop_upload(key)
        ex.block1 = block1
        return bytes(up.body)

    def _drop_upload(self, key: tuple[Remote, tuple[str, ...], bytes]) -> None:
        if self._uploads.pop(key, None) is not None:
            remote = key[0]
            self._uploads_of[remote] -= 1
            if self._uploads_of[remote] <= 0:
                del self._uploads_of[remote]

    # -- answering ---------------------------------------------------------------------
    def release(self, ack_ids: Sequence[int], ok: bool, outcome: Outcome | None = None) -> None:
        """Answer every request of a committed batch (its outcome says how), or forget the
        ones of an abandoned batch (the devices retry)."""
        rejected = outcome.rejected if outcome else {}
        replies = outcome.replies if outcome else {}
        for i, ack_id in enumerate(ack_ids):
            ex = self._pending.pop(ack_id, None)
            if ex is None:
                continue
            if not ok:
                self._exchanges.pop((ex.remote, ex.mid), None)  # a retry is processed anew
                continue
            reason = rejected.get(i)
            if reason is None:
                self._answer(ex, Code.CHANGED, replies.get(i, b""), block1=ex.block1)
            else:
                self._answer(ex, _code_for(reason), reason.encode()[:512], block1=ex.block1)
            self._metrics.coap_response_wait.observe(time.monotonic() - ex.received)

    def send_replies(self, replies: Sequence[tuple[str, bytes]]) -> None:
        """Replies travel in the responses (``release``): nothing more to send."""

    def _answer(
        self,
        ex: _Exchange,
        code: Code,
        payload: bytes,
        *,
        max_age: int | None = None,
        block1: Any = None,
        size1: int | None = None,
        content_format: int | None = None,
        count: bool = True,
    ) -> None:
        if count:
            label = _LABELS.get(code)
            if label is None:
                label = _LABELS[code] = code.dotted
            self._metrics.coap_responses.labels(label).inc()
        plain = ex.oscore is None and max_age is None and block1 is None and size1 is None
        if plain and not payload and content_format is None:  # the common case, by hand
            self._deliver(ex, bytes([len(ex.token), int(code)]), ex.token, b"")
            return
        msg = Message(code=code, payload=payload)
        if max_age is not None:
            msg.opt.max_age = max_age
        if block1 is not None:
            msg.opt.block1 = block1
        if size1 is not None:
            msg.opt.size1 = size1
        if content_format is not None:
            msg.opt.content_format = content_format
        if ex.oscore is not None:
            ctx, request_id = ex.oscore
            msg, _ = ctx.protect(msg, request_id=request_id)
        self._answer_message(ex, msg)

    def _answer_message(self, ex: _Exchange, msg: Message) -> None:
        """Send an aiocoap message as the answer (its header is ours to fill)."""
        msg.mid, msg.token = 0, ex.token
        msg.mtype = aiocoap.ACK
        raw = msg.encode()
        self._deliver(ex, raw[0:2], ex.token, raw[4 + len(ex.token) :])

    def _deliver(self, ex: _Exchange, head: bytes, token: bytes, rest: bytes) -> None:
        """Send ``head`` (first two bytes, type bits cleared) + mid + token + rest as the
        piggybacked ACK, a separate CON response, or a NON response."""
        first = head[0] & 0x0F
        if ex.con and not ex.empty_acked:
            data = bytes([0x60 | first, head[1]]) + ex.mid.to_bytes(2, "big") + token + rest
            ex.response = data
            self._send(data, ex.remote)
            return
        mid = self._new_mid()
        kind = 0x40 if ex.con else 0x50
        data = bytes([kind | first, head[1]]) + mid.to_bytes(2, "big") + token + rest
        if ex.con:
            self._outgoing[(ex.remote, mid)] = _Outgoing(
                ex.remote, data, time.monotonic() + ACK_TIMEOUT_S * random.uniform(1, 1.5)
            )
        self._send(data, ex.remote)

    def _empty_ack(self, ex: _Exchange) -> None:
        ex.empty_acked = True
        empty = bytes([0x60, 0]) + ex.mid.to_bytes(2, "big")
        ex.response = empty  # until the real answer goes out separately
        self._send(empty, ex.remote)

    def _new_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def _send(self, data: bytes, remote: Remote) -> None:
        if self._transport is not None:
            self._transport.sendto(data, remote)

    def _sweep(self, now: float) -> None:
        """Empty ACKs for answers the commit delays; retransmissions; stale uploads."""
        while self._waiting and self._waiting[0][0] <= now:
            _, ex = self._waiting.popleft()
            if ex.con and ex.response is None and not ex.empty_acked:
                self._empty_ack(ex)
        for key, out in list(self._outgoing.items()):
            if out.due > now:
                continue
            if out.attempts >= MAX_RETRANSMIT:
                del self._outgoing[key]
                log.warning("CoAP: %s never acknowledged a separate response", out.remote)
                continue
            out.attempts += 1
            out.timeout *= 2
            out.due = now + out.timeout
            self._metrics.coap_retransmissions.inc()
            self._send(out.data, out.remote)
        for upload in [k for k, u in self._uploads.items() if now - u.touched > BLOCK_TTL_S]:
            self._drop_upload(upload)
        stale = now - EXCHANGE_LIFETIME_S
        while self._exchanges:
            first = next(iter(self._exchanges.values()))
            if first.received > stale:
                break
            self._exchanges.popitem(last=False)


_LABELS: dict[Code, str] = {}
_PLAIN_OPTIONS = (3, 7, 15, 60)  # Uri-Host, Uri-Port, Uri-Query, Size1: nothing to do


def _parse_plain(data: bytes) -> tuple[int, bytes, tuple[str, ...], int | None, bytes] | None:
    """(code, token, Uri-Path, Content-Format, payload) of a request with no other options
    than those, or None (the caller then decodes it fully with aiocoap)."""
    tkl = data[0] & 15
    if tkl > 8:
        return None
    pos, n = 4 + tkl, len(data)
    number, cf = 0, None
    path: list[str] = []
    payload = b""
    try:
        while pos < n:
            b = data[pos]
            if b == 0xFF:
                payload = data[pos + 1 :]
                if not payload:
                    return None  # a payload marker without payload is a format error
                break
            pos += 1
            delta, length = b >> 4, b & 15
            if delta >= 13:
                if delta == 15:
                    return None
                delta = data[pos] + 13 if delta == 13 else int.from_bytes(data[pos : pos + 2]) + 269
                pos += 1 if delta < 269 else 2
            if length >= 13:
                if length == 15:
                    return None
                length = (
                    data[pos] + 13 if length == 13 else int.from_bytes(data[pos : pos + 2]) + 269
                )
                pos += 1 if length < 269 else 2
            number += delta
            value = data[pos : pos + length]
            if len(value) != length:
                return None
            pos += length
            if number == 11:
                path.append(value.decode())
            elif number == 12:
                cf = int.from_bytes(value, "big")
            elif number not in _PLAIN_OPTIONS:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    return data[1], data[4 : 4 + tkl], tuple(path), cf, payload


def _is_discovery(msg: Message) -> bool:
    return msg.code == Code.GET and tuple(msg.opt.uri_path) == (".well-known", "core")


def _code_for(reason: str) -> Code:
    """The response code that tells a device what happened to its dead-lettered frame."""
    word = reason.split(":", 1)[0].split(" ", 1)[0]
    if word in ("unknown_format", "content-format"):
        return Code.UNSUPPORTED_CONTENT_FORMAT
    if word in ("unknown_device", "disabled_device"):
        return Code.FORBIDDEN
    if word == "frame_too_large":
        return Code.REQUEST_ENTITY_TOO_LARGE
    if word in ("storage_rejected", "decoder_error", "stage_error"):
        return Code.INTERNAL_SERVER_ERROR
    return Code.BAD_REQUEST
