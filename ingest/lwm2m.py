"""LwM2M 1.1 server side on the CoAP listener: registrations, Send, Observe, queued commands.

The CoAP listener (:mod:`ingest.coap`) hands this module every request under ``/rd`` and
``/dp`` (after OSCORE, when ``coap.mode = oscore``; from the ``coaps://`` listener too, the
device then being the one whose PSK opened the DTLS session) and the devices' responses to
the requests this module sends, each through the listener (and OSCORE context or DTLS
session) its device last spoke through. Design: docs/design/0012-lwm2m-server.md.

- **Registration interface** (Transport §6.2): Register ``POST /rd?ep=…&lt=…&b=…`` with
  object links, Update ``POST /rd/<location>``, De-register ``DELETE /rd/<location>``. Each
  becomes a frame of the ``lwm2m-rd`` decoder (transport ``lwm2m``), so it is stored as a
  registration event, resolved against the registry (an unknown endpoint under ``reject`` is
  dead-lettered and answered 4.03; bad link format 4.00) and answered **after the commit**:
  2.01 with Location-Path ``rd/<location>``, 2.04, 2.02; 4.04 for an unknown location.
  The current registration is then saved (``lwm2m_registrations``): its lifetime drives the
  registry's online state.
- **Data in**: Send (``POST /dp``, SenML JSON 110 or CBOR 112) and the notifications of the
  observations this server starts after a Register (``lwm2m.observe``, per profile) go
  through the pipeline; a confirmable notification is ACKed after its commit. A text/plain
  notification of a resource becomes SenML JSON ``[{"n": "/3303/0/5700", "v": 21.5}]``.
- **Commands**: queued Write and Execute (``lwm2m_commands``) are sent after a device's
  Register or Update answer (queue mode ``UQ`` devices listen only then); devices with
  binding ``U`` also get them within ``command_poll_s``. The result (2.04, 4.xx, timeout) is
  stored.

Contract: frames are acknowledged only through ``release(ok=True)``; no request reaches a
device before its registration is committed and saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import psycopg
from aiocoap import Message
from aiocoap.numbers.codes import Code
from pydantic import Field, field_validator

from core.config import Section
from core.frames import Outcome
from core.metrics import Metrics
from decoders.lwm2m_rd import RegistrationError, parse_links, parse_query, registration
from decoders.registry import DecoderRegistry
from device_registry import lwm2m as store
from device_registry.lwm2m import Command, Operation, Registration
from ingest.coap_frames import code_for
from ingest.pipeline import Pipeline

log = logging.getLogger(__name__)
TRANSPORT = "lwm2m"
ROOTS = (("rd",), ("dp",))
STOP_GRACE_S = 2.0  # at shutdown, how long answers and commands in flight may take
OnResponse = Callable[[Message | None, Callable[[], None]], None]
_TEXT_FORMATS = (None, 0)
_OBSERVABLE = re.compile(r"(/[0-9]{1,5}){1,3}\Z")
_SENML = {110: "senml-json", 112: "senml-cbor", 11542: "lwm2m-tlv"}


class Lwm2mMode(StrEnum):
    """Whether the CoAP listener also serves the LwM2M interfaces."""

    OFF = "off"
    SERVER = "server"  # /rd and /dp on coap:// and/or coaps:// (not both off)


class Lwm2mConfig(Section):
    """LwM2M 1.1 server side on the CoAP listener (registrations, Send, Observe, commands)."""

    mode: Lwm2mMode = Field(Lwm2mMode.OFF, description="off, or server (/rd and /dp on CoAP)")
    kind: str = Field(
        "lwm2m", min_length=1, max_length=64, description="kind of auto-provisioned endpoints"
    )
    observe: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per profile (or *), the paths to observe after Register: "
        '{ thermo = ["/3303/0/5700"] }',
    )
    command_timeout_s: float = Field(
        60.0, gt=0, description="a sent Write/Execute never answered is a timeout after this"
    )
    command_poll_s: float = Field(
        5.0, gt=0, description="how often queued commands of U (always reachable) devices go out"
    )

    @field_validator("observe")
    @classmethod
    def _paths(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for profile, paths in v.items():
            for path in paths:
                if not _OBSERVABLE.match(path):
                    raise ValueError(f"{profile}: {path!r} is not /object[/instance[/resource]]")
        return v


class CoapPort(Protocol):
    """What this module needs from the CoAP listener."""

    def answer(
        self, ex: Any, code: Code, payload: bytes = b"", location: Sequence[str] = ()
    ) -> None:
        """Answer a request."""

    def request(
        self, remote: tuple[str, int], msg: Message, on_response: OnResponse, security: Any = None
    ) -> bytes:
        """Send a confirmable request to a device (protected with ``security``)."""

    def security_of(self, ex: Any) -> Any:
        """The security a request came with (its OSCORE context or DTLS session; None: plain)."""

    def reaches(self, remote: tuple[str, int], security: Any) -> bool:
        """Whether a request to ``remote`` would still go out with ``security`` (a DTLS
        session ends; an OSCORE context or plain CoAP does not)."""

    def refuse_device(self, ex: Any, authenticated: str) -> None:
        """Answer 4.03: the request names another device than the one authenticated."""

    def forget_request(self, token: bytes) -> None:
        """Stop taking responses to a request."""

    def abandon(self, ex: Any) -> None:
        """Forget a request left unanswered (its retransmission is processed anew)."""


@dataclass(slots=True)
class _Pending:
    """A frame of ours in the pipeline, and what to do once it is committed."""

    operation: str  # register, update, deregister, send, notify
    ex: Any = None  # the request to answer (register, update, deregister, send)
    reg: Registration | None = None
    ack: Callable[[], None] | None = None  # notify: ACK the confirmable notification
    frame: bytes = b""  # register, update, deregister: the registration frame
    security: Any = None  # the OSCORE context or DTLS session the request came with
    port: CoapPort | None = None  # the listener the request came through


def _code(reason: str) -> Code:
    """The answer that tells a device what happened to its dead-lettered frame."""
    if reason.startswith("unknown_registration"):  # Transport §6.2: 4.04 Not Found
        return Code.NOT_FOUND
    return code_for(reason)


class Lwm2mServer:
    """The LwM2M server: an ``AckSink`` (transport ``lwm2m``) and a ``Pausable`` source."""

    def __init__(
        self,
        cfg: Lwm2mConfig,
        pipeline: Pipeline,
        metrics: Metrics,
        decoders: DecoderRegistry,
        conninfo: str,
        resolve: Callable[[str], int],
        secured: bool = False,
    ) -> None:
        self._cfg = cfg
        self._pipeline = pipeline
        self._metrics = metrics
        self._decoders = decoders
        self._conninfo = conninfo
        self._resolve = resolve
        self._port: CoapPort | None = None  # the first listener: coap:// (else coaps://)
        self._pending: dict[int, _Pending] = {}
        self._next_ack = 0
        self._by_location: dict[str, Registration] = {}
        self._by_device: dict[int, Registration] = {}
        self._by_endpoint: dict[str, Registration] = {}  # Send under OSCORE
        self._by_address: dict[tuple[str, int], Registration] = {}  # Send in plain CoAP
        self._observing: dict[int, list[tuple[CoapPort, bytes]]] = {}  # device id -> tokens
        # coap.mode = oscore or coap.dtls = psk: never a plain request to a device that did
        # not speak to this process (a registration loaded at start waits for its Update)
        self._secured = secured
        # device id -> (the listener, the OSCORE context or DTLS session) of its last request
        self._security: dict[int, tuple[CoapPort, Any]] = {}
        self._expires: dict[int, float] = {}  # device id -> monotonic time its registration lapses
        self._delivering: set[int] = set()  # devices whose commands are being sent
        self._tasks: set[asyncio.Task[None]] = set()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._db = asyncio.Lock()
        self._saturated = False
        self.on_registration: list[Callable[[npt.NDArray[np.int64]], None]] = []
        """Called with the device ids whose registration (lifetime) changed."""
        pipeline.add_source(self)

    def attach(self, port: CoapPort) -> None:
        """A listener this server answers through (coap:// and coaps:// may both attach;
        each request is answered, and its device later reached, through its own)."""
        if self._port is None:
            self._port = port

    @property
    def registrations(self) -> dict[int, Registration]:
        """Current registrations by internal device id."""
        return self._by_device

    # -- Pausable ------------------------------------------------------------------------
    def pause(self) -> None:
        """The pipeline is saturated: /rd and /dp get 5.03 (the listener checks too)."""
        self._saturated = True

    def resume(self) -> None:
        """Take requests again."""
        self._saturated = False

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Load the registrations still valid, poll for commands of U devices until stop."""
        try:
            for reg, left_s in await self._db_call(store.load_registrations):
                self._keep(reg, left_s)
            log.info("LwM2M server: %d registrations still valid", len(self._by_device))
        except psycopg.Error as exc:  # the devices register again within their lifetimes
            log.warning("LwM2M: saved registrations not read (%s); starting without", exc)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._cfg.command_poll_s)
            now = time.monotonic()
            for reg in [r for r in self._by_device.values() if self._expires[r.device_id] < now]:
                self._drop(reg)  # lapsed (Transport §6.2.2): Send and Observe need a new Register
            try:
                waiting = await self._db_call(store.queued_devices, self._cfg.command_timeout_s)
            except psycopg.Error as exc:
                log.warning("LwM2M: queued commands not read (%s); next poll", exc)
                continue
            for device_id in waiting:
                reg = self._by_device.get(device_id)
                if reg is not None and reg.binding == "U" and device_id not in self._delivering:
                    self._spawn(self._deliver(reg), f"commands {reg.endpoint}")
        if self._tasks:  # answers of committed registrations still going out
            await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_S)
        for task in list(self._tasks):
            task.cancel()  # a command still awaiting its answer: a timeout at the next poll
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"ingest.lwm2m[{what}]")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _db_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One store call on the server's connection (serialised; reconnects once)."""
        async with self._db:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True
                    )
                try:
                    return await fn(self._conn, *args)
                except psycopg.OperationalError:
                    await self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        return None

    # -- requests from devices -------------------------------------------------------------
    def handle(
        self, ex: Any, msg: Message, authenticated: str | None, port: CoapPort | None = None
    ) -> None:
        """A request under /rd or /dp that came through ``port`` (``authenticated``: the
        device its OSCORE context or DTLS session belongs to, if any)."""
        port = port or self._port
        assert port is not None
        path = tuple(msg.opt.uri_path)
        query = "&".join(msg.opt.uri_query)
        if self._saturated:
            port.answer(ex, Code.SERVICE_UNAVAILABLE)
            return
        if path == ("dp",) and msg.code == Code.POST:
            self._send_operation(ex, msg, authenticated, port)
            return
        if path[0] != "rd" or len(path) > 2 or msg.code not in (Code.POST, Code.DELETE):
            port.answer(ex, Code.METHOD_NOT_ALLOWED if len(path) <= 2 else Code.NOT_FOUND)
            return
        if len(path) == 1:
            if msg.code != Code.POST:
                port.answer(ex, Code.METHOD_NOT_ALLOWED)
                return
            endpoint = parse_query(query).get("ep", "")
            if authenticated is not None and endpoint != authenticated:
                port.refuse_device(ex, authenticated)
                return
            location = secrets.token_hex(5)
            operation = "register"
        else:
            location = path[1]
            known = self._by_location.get(location)
            operation = "update" if msg.code == Code.POST else "deregister"
            if known is None or (authenticated is not None and known.endpoint != authenticated):
                reason = f"unknown_registration: /rd/{location[:40]}"
                self._refuse(ex, reason, msg, operation, port)
                return
            endpoint = known.endpoint
        frame = f"{operation} {location}\n{query}\n".encode() + msg.payload
        reg = Registration(-1, endpoint, location, 0, "U", ex.remote)
        pending = _Pending(
            operation, ex, reg, frame=frame, security=port.security_of(ex), port=port
        )
        self._submit("lwm2m-rd", frame, "/" + "/".join(path), endpoint, pending)

    def _send_operation(
        self, ex: Any, msg: Message, authenticated: str | None, port: CoapPort
    ) -> None:
        """LwM2M 1.1 Send: data from a registered device (by OSCORE or DTLS identity, or
        address)."""
        reg = None
        if authenticated is not None:
            reg = self._by_endpoint.get(authenticated)
        else:
            reg = self._by_address.get(ex.remote)
        if reg is None:
            reason = "unknown_registration: Send (/dp) before Register"
            self._refuse(ex, reason, msg, "send", port)
            return
        cf = msg.opt.content_format
        fmt = _SENML.get(int(cf)) if cf is not None else None
        if fmt not in ("senml-json", "senml-cbor"):
            fmt = f"content-format {int(cf) if cf is not None else 'none'}"
        self._submit(fmt, msg.payload, "/dp", reg.endpoint, _Pending("send", ex, port=port))

    def _refuse(self, ex: Any, reason: str, msg: Message, operation: str, port: CoapPort) -> None:
        ack_id = self._track(_Pending(operation, ex, port=port))
        path = "/" + "/".join(msg.opt.uri_path)
        self._pipeline.refuse(reason, "lwm2m-rd", TRANSPORT, self, msg.payload, path, "", ack_id)

    def _submit(self, fmt: str, frame: bytes, source: str, device: str, p: _Pending) -> None:
        ack_id = self._track(p)
        self._pipeline.submit(fmt, TRANSPORT, self, frame, source, device, self._cfg.kind, ack_id)

    def _track(self, p: _Pending) -> int:
        ack_id = self._next_ack
        self._next_ack += 1
        self._pending[ack_id] = p
        return ack_id

    # -- after the commit ------------------------------------------------------------------
    def release(self, ack_ids: Sequence[int], ok: bool, outcome: Outcome | None = None) -> None:
        """Answer (or ACK) every frame of a committed batch; forget an abandoned one's."""
        rejected = outcome.rejected if outcome else {}
        for i, ack_id in enumerate(ack_ids):
            p = self._pending.pop(ack_id, None)
            if p is None:
                continue
            port = p.port or self._port
            assert port is not None
            if not ok:  # abandoned (stopping): the device retries, its request processed anew
                if p.ex is not None:
                    port.abandon(p.ex)
                continue
            reason = rejected.get(i)
            if p.operation == "notify":
                if p.ack is not None:
                    p.ack()
                continue
            if reason is not None:
                code = _code(reason)
                self._metrics.lwm2m_operations.labels(p.operation, code.dotted).inc()
                port.answer(p.ex, code, reason.encode()[:512])
            elif p.operation == "send":
                self._metrics.lwm2m_operations.labels("send", Code.CHANGED.dotted).inc()
                port.answer(p.ex, Code.CHANGED)
            else:
                self._spawn(self._registered(p), f"{p.operation} {p.reg.endpoint if p.reg else ''}")

    def send_replies(self, replies: Sequence[tuple[str, bytes]]) -> None:
        """No protocol replies beyond the answers."""

    async def _registered(self, p: _Pending) -> None:
        """A committed Register, Update or De-register: save it, answer, then talk to the
        device (observations after a Register, queued commands)."""
        port, reg = p.port or self._port, p.reg
        assert port is not None
        assert reg is not None
        _, _, lifetime, binding, _, links = registration(p.frame)
        known = self._by_location.get(reg.location)
        if known is not None:
            reg.device_id, reg.profile = known.device_id, known.profile
            reg.lifetime_s, reg.binding = known.lifetime_s, known.binding
            reg.object_links = known.object_links
        else:
            reg.device_id = self._resolve(reg.endpoint)
            if reg.device_id < 0:  # committed, yet not in the index (disabled since): retry
                log.warning("LwM2M: %s is not in the registry index; answering 5.03", reg.endpoint)
                port.answer(p.ex, Code.SERVICE_UNAVAILABLE)
                return
        reg.lifetime_s = lifetime or reg.lifetime_s
        reg.binding = binding or reg.binding
        reg.object_links = links or reg.object_links
        try:
            reg.profile = await self._db_call(store.save_registration, reg, p.operation)
        except psycopg.Error as exc:
            log.warning(
                "LwM2M: %s of %s not saved (%s); answering 5.03, the device retries",
                p.operation,
                reg.endpoint,
                exc,
            )
            port.answer(p.ex, Code.SERVICE_UNAVAILABLE)
            return
        for changed in self.on_registration:  # e.g. the absence rules' offline limits
            changed(np.array([reg.device_id], dtype=np.int64))
        code = {"register": Code.CREATED, "update": Code.CHANGED}.get(p.operation, Code.DELETED)
        self._metrics.lwm2m_operations.labels(p.operation, code.dotted).inc()
        if p.operation == "deregister":
            self._drop(reg)
            port.answer(p.ex, code)
            return
        self._keep(reg)
        before = self._security.get(reg.device_id)
        self._security[reg.device_id] = (port, p.security)  # later requests go the same way
        port.answer(p.ex, code, location=("rd", reg.location) if code == Code.CREATED else ())
        if p.operation == "register" or _renewed(before, port, p.security):
            self._forget_observations(reg.device_id)
            self._observe(reg)
        await self._deliver(reg)

    def _keep(self, reg: Registration, left_s: float | None = None) -> None:
        old = self._by_device.get(reg.device_id)
        if old is not None and old.location != reg.location:
            self._drop(old)
        if old is not None and old.address != reg.address:  # an Update from a new address
            self._by_address.pop(old.address, None)
        self._by_location[reg.location] = self._by_device[reg.device_id] = reg
        self._by_endpoint[reg.endpoint] = self._by_address[reg.address] = reg
        lapse = reg.lifetime_s if left_s is None else left_s
        self._expires[reg.device_id] = time.monotonic() + lapse
        self._metrics.lwm2m_registered.set(len(self._by_device))

    def _drop(self, reg: Registration) -> None:
        self._by_location.pop(reg.location, None)
        self._by_device.pop(reg.device_id, None)
        if self._by_endpoint.get(reg.endpoint) is reg:
            del self._by_endpoint[reg.endpoint]
        if self._by_address.get(reg.address) is reg:
            del self._by_address[reg.address]
        self._security.pop(reg.device_id, None)
        self._expires.pop(reg.device_id, None)
        self._forget_observations(reg.device_id)
        self._metrics.lwm2m_registered.set(len(self._by_device))

    # -- Observe ---------------------------------------------------------------------------
    def _forget_observations(self, device_id: int) -> None:
        for port, token in self._observing.pop(device_id, []):
            port.forget_request(token)

    def _reachable(self, reg: Registration) -> tuple[CoapPort | None, Any]:
        """(the listener requests to the device go through, None: not now; the security to
        send them with): the listener and OSCORE context or DTLS session of the device's last
        request to this process. With coap.mode = oscore or coap.dtls = psk a device that did
        not speak to this process (after a restart: until its next Update) is not reached, and
        one whose DTLS session ended waits for its next Update in a new one: never plain CoAP."""
        via = self._security.get(reg.device_id)
        if via is None:
            return (None if self._secured else self._port), None
        port, security = via
        return (port if port.reaches(reg.address, security) else None), security

    def _observe(self, reg: Registration) -> None:
        """GET with Observe=0 for the profile's paths whose object the device registered."""
        port, security = self._reachable(reg)
        if port is None:
            return
        paths = self._cfg.observe.get(reg.profile or "", []) + self._cfg.observe.get("*", [])
        try:
            offered = set(parse_links(reg.object_links))
        except RegistrationError:
            offered = set()
        for path in paths:
            parts = path.strip("/").split("/")
            if not {"/" + parts[0], "/" + "/".join(parts[:2])} & offered:
                continue
            msg = Message(code=Code.GET, uri_path=tuple(parts), observe=0)
            token = port.request(reg.address, msg, self._notification(reg, path), security)
            self._observing.setdefault(reg.device_id, []).append((port, token))

    def _notification(self, reg: Registration, path: str) -> OnResponse:
        def taken(msg: Message | None, ack: Callable[[], None]) -> None:
            if msg is None or not msg.code.is_successful():
                log.warning(
                    "LwM2M: %s did not take the observation of %s (%s)",
                    reg.endpoint,
                    path,
                    "no answer" if msg is None else msg.code.dotted,
                )
                return
            if self._saturated:
                return  # not ACKed: the device sends it again
            fmt, frame, source = _notified(msg, path)
            self._submit(fmt, frame, source, reg.endpoint, _Pending("notify", ack=ack))

        return taken

    # -- commands --------------------------------------------------------------------------
    async def _deliver(self, reg: Registration) -> None:
        """Send the device's queued commands, one after the other."""
        port, security = self._reachable(reg)
        if port is None or reg.device_id in self._delivering:
            return  # they stay queued until the device's next (protected) Update
        self._delivering.add(reg.device_id)
        try:
            await self._send_commands(reg, port, security)
        finally:
            self._delivering.discard(reg.device_id)

    async def _send_commands(self, reg: Registration, port: CoapPort, security: Any) -> None:
        try:
            commands = await self._db_call(store.due_commands, reg.device_id)
        except psycopg.Error as exc:
            log.warning("LwM2M: commands of %s not read (%s); next Update", reg.endpoint, exc)
            return
        for command in commands:
            code = await self._command(reg, command, port, security)
            state = "timeout" if code is None else "done" if code.startswith("2.") else "failed"
            self._metrics.lwm2m_commands.labels(command.operation.value, state).inc()
            with contextlib.suppress(psycopg.Error):
                await self._db_call(store.finish_command, command.id, state, code)

    async def _command(
        self, reg: Registration, command: Command, port: CoapPort, security: Any
    ) -> str | None:
        """Send one command; the device's response code (None: none in time)."""
        parts = tuple(command.path.strip("/").split("/"))
        if command.operation is Operation.WRITE:
            msg = Message(code=Code.PUT, uri_path=parts, payload=(command.value or "").encode())
            msg.opt.content_format = 0  # text/plain: one resource (Core §7.1.2)
        else:
            msg = Message(code=Code.POST, uri_path=parts, payload=(command.value or "").encode())
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def answered(resp: Message | None, ack: Callable[[], None]) -> None:
            ack()
            if not done.done():
                done.set_result(None if resp is None else resp.code.dotted)

        token = port.request(reg.address, msg, answered, security)
        try:
            return await asyncio.wait_for(done, self._cfg.command_timeout_s)
        except TimeoutError:
            port.forget_request(token)
            return None


def _renewed(before: tuple[CoapPort, Any] | None, port: CoapPort, security: Any) -> bool:
    """Whether an Update came through another listener or security (a new DTLS session, a
    new OSCORE context) than the requests before it, or is the first this process hears from
    a saved registration: observations live in memory and in their session (responses are
    taken from that session only), so they are started again."""
    return before is None or before[0] is not port or before[1] is not security


def _notified(msg: Message, path: str) -> tuple[str, bytes, str]:
    """(decoder, frame, source) of a notification of ``path``."""
    cf = msg.opt.content_format
    if cf is not None and int(cf) in _SENML:
        fmt = _SENML[int(cf)]
        parts = path.strip("/").split("/")
        source = "/" + "/".join(parts[:2]) if fmt == "lwm2m-tlv" else path
        return fmt, msg.payload, source
    if cf not in _TEXT_FORMATS:
        return f"content-format {int(cf)}", msg.payload, path
    text = msg.payload.decode(errors="replace").strip()
    record: dict[str, Any] = {"n": path}
    try:
        record["v"] = float(text)
    except ValueError:
        if text in ("true", "false"):
            record["vb"] = text == "true"
        else:
            record["vs"] = text
    return "senml-json", json.dumps([record]).encode(), path
