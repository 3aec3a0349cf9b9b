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
import functools
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
from ingest.coap_frames import code_for as _code_for
from ingest.coap_frames import parse_plain as _parse_plain
from ingest.coap_oscore import DeviceContext, DeviceKeyStore, LookupsExhaustedError
from ingest.lwm2m import ROOTS as LWM2M_ROOTS
from ingest.lwm2m import Lwm2mServer, OnResponse
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
    notification: bool = False  # a device's response to our request: ACKed after the commit


@dataclass(slots=True)
class _Request:
    """A request the server sent to a device (LwM2M Observe, Write, Execute)."""

    remote: Remote
    on_response: OnResponse
    observe: bool
    mid: int
    oscore: tuple[DeviceContext, Any] | None = None  # the device's context, our request id
    session: Any = None  # on coaps://: the DTLS session it went in (responses from it only)


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
    token: bytes | None = None  # a request of ours: its callback learns of a timeout


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
        lwm2m: Lwm2mServer | None = None,
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
        self._requests: dict[bytes, _Request] = {}  # ours, by token
        self._lwm2m = lwm2m
        if lwm2m is not None:
            lwm2m.attach(self)
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
            out = self._outgoing.pop((remote, mid), None)  # the device got our message
            if out is not None and out.token is not None:
                if mtype == RST:  # the device refused our request
                    req = self._requests.pop(out.token, None)
                    if req is not None:
                        req.on_response(None, _noop)
                elif data[1] != 0:  # the response, piggybacked
                    self._response(data, remote, mtype, mid)
            return
        if data[1] >= 0x40 and self._requests:  # a response (class 2-5) to a request of ours
            self._response(data, remote, mtype, mid)
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
        if plain is not None and (
            self._lwm2m is None or plain[2][:1] not in LWM2M_ROOTS
        ):  # the usual uplink, parsed without building a Message
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
        if not ex.con or (ex.notification and ex.response is None):
            return  # a notification is ACKed once committed
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
        if self._lwm2m is not None and path[:1] in LWM2M_ROOTS:
            if self._draining or self._saturated:
                self._answer(ex, Code.SERVICE_UNAVAILABLE, b"", max_age=self._cfg.retry_after_s)
            elif self._dtls is None:
                self._lwm2m.handle(ex, msg, authenticated, self)
            else:  # the DTLS session's PSK says which device this is
                who = self._dtls.device_of(ex.remote)
                if who is None:
                    self.refuse_device(ex, "nobody")
                else:
                    self._lwm2m.handle(ex, msg, who, self)
            return
        if not self._path_ok(ex, path, int(msg.code)):
            return
        if authenticated is not None and authenticated != path[2]:
            self.refuse_device(ex, authenticated)
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
                self.refuse_device(ex, str(who))
                return False
        return True

    def refuse_device(self, ex: _Exchange, authenticated: str) -> None:
        """Answer 4.03: the request names another device than its OSCORE context's or DTLS
        session's."""
        failures = (
            self._metrics.coap_dtls_failures if self._dtls else self._metrics.coap_oscore_failures
        )
        failures.labels("wrong_device").inc()
        self._answer(ex, Code.FORBIDDEN, f"authenticated as {authenticated}".encode())

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
        location: Sequence[str] = (),
    ) -> None:
        if count:
            label = _LABELS.get(code)
            if label is None:
                label = _LABELS[code] = code.dotted
            self._metrics.coap_responses.labels(label).inc()
        plain = ex.oscore is None and max_age is None and block1 is None and size1 is None
        if plain and not payload and content_format is None and not location:  # by hand
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
        if location:
            msg.opt.location_path = tuple(location)
        if ex.oscore is not None:
            ctx, request_id = ex.oscore
            msg, _ = ctx.protect(msg, request_id=request_id)
        self._answer_message(ex, msg)

    def answer(
        self, ex: _Exchange, code: Code, payload: bytes = b"", location: Sequence[str] = ()
    ) -> None:
        """Answer a request handed to the LwM2M server (``location``: Location-Path)."""
        self._answer(ex, code, payload, location=location)

    def request(
        self, remote: Remote, msg: Message, on_response: OnResponse, security: Any = None
    ) -> bytes:
        """Send a confirmable request to a device (retransmitted, RFC 7252 §4.2); its
        responses (several for an Observe) go to ``on_response``, ``None`` when the device
        never answered or refused it. ``security``: the device's OSCORE context (from its
        request, ``security_of``), which protects the request and its responses; on
        ``coaps://`` the DTLS session it must go in (not sent if that session ended: the
        device is reached again after its next request). Returns the token
        (``forget_request`` ends it)."""
        token = random.randbytes(8)
        while token in self._requests:
            token = random.randbytes(8)
        observe = msg.opt.observe is not None
        protection = None
        if isinstance(security, DeviceContext):
            msg, request_id = security.protect(msg)
            protection = (security, request_id)
        mid = self._new_mid()
        msg.mtype, msg.mid, msg.token = aiocoap.CON, mid, token
        data = msg.encode()
        if not self.reaches(remote, security):  # its session ended: never to another one
            asyncio.get_running_loop().call_soon(on_response, None, _noop)
            return token
        self._requests[token] = _Request(remote, on_response, observe, mid, protection, security)
        self._outgoing[(remote, mid)] = _Outgoing(
            remote, data, time.monotonic() + ACK_TIMEOUT_S * random.uniform(1, 1.5), token=token
        )
        self._send(data, remote)
        return token

    def abandon(self, ex: _Exchange) -> None:
        """Forget a request left unanswered (its retransmission is processed anew)."""
        self._exchanges.pop((ex.remote, ex.mid), None)

    def security_of(self, ex: _Exchange) -> Any:
        """The security a request came with: its OSCORE context, on ``coaps://`` its DTLS
        session; None: plain CoAP."""
        if self._dtls is not None:
            return self._dtls.session_of(ex.remote)
        return None if ex.oscore is None else ex.oscore[0]

    def reaches(self, remote: Remote, security: Any) -> bool:
        """Whether a request to ``remote`` would go out with ``security``: on ``coaps://``
        only while that DTLS session is the remote's established one."""
        if self._dtls is None:
            return True
        return security is not None and self._dtls.session_of(remote) is security

    def forget_request(self, token: bytes) -> None:
        """Stop taking responses to this request (its next notification is refused, RST)."""
        self._requests.pop(token, None)

    def _response(self, data: bytes, remote: Remote, mtype: int, mid: int) -> None:
        """A device's response to a request of ours: to its callback, which calls ``ack``
        once what it carries is committed (a confirmable response is ACKed then)."""
        try:
            msg = Message.decode(data, remote)
        except (ValueError, aiocoap.error.UnparsableMessage):
            return
        token = msg.token
        req = self._requests.get(token)
        if (
            req is None
            or req.remote[0] != remote[0]
            or (self._dtls is not None and self._dtls.session_of(remote) is not req.session)
        ):  # not ours, or from another DTLS session than the request went in
            if mtype == CON:  # an observation we do not hold: the device stops it (RFC 7641)
                self._send(bytes([0x70, 0]) + mid.to_bytes(2, "big"), remote)
            return
        if req.oscore is not None:  # the device protects its responses with its context
            try:
                msg, _ = req.oscore[0].unprotect(msg, req.oscore[1])
            except (oscore.NotAProtectedMessage, oscore.ProtectionInvalid, oscore.DecodeError):
                self._metrics.coap_oscore_failures.labels("decryption").inc()
                if mtype == CON:  # not taken: the device may send it again
                    self._send(bytes([0x70, 0]) + mid.to_bytes(2, "big"), remote)
                return
        if not req.observe or msg.opt.observe is None or not msg.code.is_successful():
            self._requests.pop(token, None)
        self._outgoing.pop((req.remote, req.mid), None)  # answered: no more retransmissions
        if mtype != CON:
            req.on_response(msg, _noop)
            return
        key = (remote, mid)
        known = self._exchanges.get(key)
        if known is not None:
            self._duplicate(known)
            return
        ex = _Exchange(remote, mid, token, True, time.monotonic(), notification=True)
        self._remember(key, ex)
        req.on_response(msg, functools.partial(self._empty_ack, ex))

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
            req = self._requests.get(out.token) if out.token is not None else None
            if req is not None and not self.reaches(out.remote, req.session):
                out.attempts = MAX_RETRANSMIT  # its DTLS session ended: not into another one
            if out.attempts >= MAX_RETRANSMIT:
                del self._outgoing[key]
                if out.token is not None:  # a request of ours: the device never answered
                    req = self._requests.pop(out.token, None)
                    if req is not None:
                        req.on_response(None, _noop)
                    continue
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


def _noop() -> None:
    return None


_LABELS: dict[Code, str] = {}


def _is_discovery(msg: Message) -> bool:
    return msg.code == Code.GET and tuple(msg.opt.uri_path) == (".well-known", "core")
