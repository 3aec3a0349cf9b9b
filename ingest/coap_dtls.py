"""DTLS 1.2 with pre-shared keys (RFC 4279; the RFC 7925 IoT profile) for CoAP devices that
cannot do OSCORE: ``coaps://`` on ``coap.dtls_port``, each device's PSK identity and key from
the registry (``psk_identity``/``psk_key``).

Mbed TLS (through ``python-mbedtls``, the optional extra ``cityflux[dtls]``) runs the record
layer and the handshake on memory buffers; this module owns the UDP socket and the sessions,
and hands every decrypted datagram to an ``ingest.coap.CoapListener`` as if it came over
plain UDP, so DTLS uplinks take the same exchange layer (answers after the commit, dedup,
block-wise, 5.03 under load). The listener's answers come back through :meth:`sendto` and
leave encrypted in the device's session. A device is the one the registry gives its PSK
identity: a request naming another device's path is 4.03.

Mbed TLS asks for a key synchronously, in the middle of the handshake; the registry is read
asynchronously. So the ClientKeyExchange datagram (the one that names the identity) is held
while the key is looked up, then fed to Mbed TLS, which finds it in memory. The identity that
authenticates the session is the one Mbed TLS asked for, recorded as it asks — never the one
this module parsed to prefetch the key.

Hostile traffic (docs/design/0013-coap-dtls.md): a ClientHello without a valid cookie is
answered with a HelloVerifyRequest and leaves no state (RFC 6347 §4.2.1); handshakes in
progress are capped in all (the oldest is dropped) and per IP address (new ones ignored) and
time out; sessions are capped (least recently used dropped) and expire when idle; unknown
identities are remembered in a bounded LRU and registry look-ups are rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import psycopg

from core.metrics import Metrics
from ingest.coap_oscore import NEGATIVE_TTL_S, LookupsExhaustedError
from ingest.settings import CoapConfig

log = logging.getLogger(__name__)
Remote = tuple[str, int]
_HANDSHAKE, _ALERT = 22, 21  # TLS record content types
_CLIENT_HELLO, _CLIENT_KEY_EXCHANGE = 1, 16  # handshake message types
_BACKLOG = 8  # datagrams held per session while its key is looked up
_CHUNK = 4096


class DtlsUnavailableError(RuntimeError):
    """``coap.dtls = "psk"`` without the ``python-mbedtls`` package."""


def _mbedtls() -> tuple[Any, type[Exception]]:
    """The ``mbedtls.tls`` module and Mbed TLS's error class."""
    try:
        from mbedtls import tls
        from mbedtls.exceptions import TLSError
    except ImportError:
        raise DtlsUnavailableError(
            'coap.dtls = "psk" needs python-mbedtls: pip install "cityflux[dtls]"'
        ) from None
    return tls, TLSError


def check_dtls_available() -> None:
    """Raise ``DtlsUnavailableError`` (what to install) unless python-mbedtls is importable."""
    _mbedtls()


@dataclass(frozen=True, slots=True)
class DevicePsk:
    """A device's PSK as the registry holds it."""

    device_id: int
    external_id: str
    key: bytes


_QUERY = (
    "SELECT id, external_id, psk_key FROM devices "
    "WHERE psk_identity = %s AND psk_key IS NOT NULL AND status = 'active'"
)


class PskStore:
    """Devices' PSKs by identity, read from the registry on first use (bounded LRU); unknown
    identities remembered for ``NEGATIVE_TTL_S`` (at most ``max_unknown``), look-ups of
    identities not in memory limited to ``lookups_per_s``."""

    def __init__(
        self,
        conninfo: str,
        max_keys: int = 100_000,
        max_unknown: int = 10_000,
        lookups_per_s: float = 200.0,
    ) -> None:
        self._conninfo = conninfo
        self._max = max_keys
        self._max_unknown = max_unknown
        self._rate = lookups_per_s
        self._tokens = lookups_per_s
        self._refilled = time.monotonic()
        self.lookups = 0
        self._keys: OrderedDict[str, DevicePsk] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.on_forget: list[Callable[[set[int] | None], None]] = []
        """Called with the devices whose keys were dropped (None: all): their sessions end."""

    def cached(self, identity: str) -> DevicePsk | None:
        """The PSK of ``identity`` if it is in memory."""
        psk = self._keys.get(identity)
        if psk is not None:
            self._keys.move_to_end(identity)
        return psk

    def known_unknown(self, identity: str) -> bool:
        """Whether ``identity`` was looked up lately and no active device has it."""
        return time.monotonic() < self._unknown.get(identity, 0.0)

    @property
    def unknown_identities(self) -> int:
        """Identities remembered as unknown (at most ``max_unknown``)."""
        return len(self._unknown)

    async def load(self, identity: str) -> DevicePsk | None:
        """Read ``identity``'s PSK from the registry into memory (None: no active device has
        it); ``LookupsExhaustedError`` over the rate, ``psycopg.OperationalError`` when the
        registry cannot be read."""
        psk = self.cached(identity)
        if psk is not None or self.known_unknown(identity):
            return psk
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1.0:
            raise LookupsExhaustedError(f"more than {self._rate:g} new PSK identities per second")
        self._tokens -= 1.0
        self.lookups += 1
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            row = await (await self._conn.execute(_QUERY, (identity,))).fetchone()
        except psycopg.OperationalError:
            await self._conn.close()
            self._conn = None
            raise
        if row is None:
            self._unknown[identity] = time.monotonic() + NEGATIVE_TTL_S
            self._unknown.move_to_end(identity)
            while len(self._unknown) > self._max_unknown:
                self._unknown.popitem(last=False)
            return None
        psk = DevicePsk(int(row[0]), str(row[1]), bytes(row[2]))
        self._keys[identity] = psk
        while len(self._keys) > self._max:
            self._keys.popitem(last=False)
        return psk

    def forget(self, device_ids: npt.NDArray[np.int64] | None) -> None:
        """The registry changed these devices (None: any may have): drop their keys, and
        end the sessions their old keys opened (``on_forget``)."""
        self._unknown.clear()
        changed = None if device_ids is None else set(device_ids.tolist())
        if changed is None:
            self._keys.clear()
        else:
            for ident in [i for i, p in self._keys.items() if p.device_id in changed]:
                del self._keys[ident]
        for hook in self.on_forget:
            hook(changed)

    async def close(self) -> None:
        """Close the registry connection."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class _KeyView(Mapping[str, bytes]):
    """What Mbed TLS reads a PSK from during a handshake: the store's memory only, and the
    identity it asked for is recorded on the session being fed."""

    def __init__(self, store: PskStore) -> None:
        self._store = store
        self.feeding: _Session | None = None

    def __getitem__(self, identity: str) -> bytes:
        psk = self._store.cached(identity)
        if self.feeding is not None:
            self.feeding.asked = identity
            self.feeding.psk = psk
        if psk is None:
            raise KeyError(identity)
        return psk.key

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(slots=True)
class _Session:
    """One remote's DTLS state."""

    buffer: Any
    started: float
    touched: float
    established: bool = False
    asked: str | None = None  # the identity Mbed TLS looked up
    psk: DevicePsk | None = None
    lookup: asyncio.Task[None] | None = None
    backlog: list[bytes] = field(default_factory=list)


class DtlsEndpoint(asyncio.DatagramProtocol):
    """The UDP socket of ``coaps://``: DTLS sessions per remote, CoAP inside handed to
    ``listener`` (a ``CoapListener``, whose transport this is)."""

    def __init__(
        self, cfg: CoapConfig, store: PskStore, listener: asyncio.DatagramProtocol, metrics: Metrics
    ) -> None:
        tls, self._error = _mbedtls()
        self._tls = tls
        self._cfg = cfg
        self._store = store
        self._listener = listener
        self._failures = metrics.coap_dtls_failures
        self._view = _KeyView(store)
        self._context = tls.ServerContext(
            tls.DTLSConfiguration(
                validate_certificates=False,
                pre_shared_key_store=self._view,
                lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
                highest_supported_version=tls.DTLSVersion.DTLSv1_2,
            )
        )
        self._udp: asyncio.DatagramTransport | None = None
        self._sessions: OrderedDict[Remote, _Session] = OrderedDict()  # least recent first
        self._handshaking: OrderedDict[Remote, _Session] = OrderedDict()  # oldest first
        self._per_host: Counter[str] = Counter()
        store.on_forget.append(self.end_sessions)

    # -- what CoapListener sees as its transport --------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The UDP socket's (``socket``, ``sockname``)."""
        return self._udp.get_extra_info(name, default) if self._udp else default

    def sendto(self, data: bytes, addr: Any = None) -> None:
        """Send a CoAP message to ``addr`` inside its DTLS session (dropped without one: the
        device will retry and handshake again)."""
        session = self._sessions.get(addr)
        if session is None or not session.established:
            return
        try:
            session.buffer.write(data)
        except self._error as exc:
            log.info("DTLS: %s:%d: cannot write (%s); session dropped", *addr, exc)
            self._drop(addr)
            return
        self._flush(session, addr)

    def close(self) -> None:
        """Close the socket."""
        for addr in list(self._sessions):
            self._drop(addr)
        if self._udp is not None:
            self._udp.close()

    def session_of(self, addr: Remote) -> object | None:
        """The established session of a remote (compared by identity: a new handshake from
        the same address is another session)."""
        session = self._sessions.get(addr)
        return session if session is not None and session.established else None

    def device_of(self, addr: Remote) -> str | None:
        """The device a remote authenticated as."""
        session = self._sessions.get(addr)
        if session is None or session.psk is None or not session.established:
            return None
        return session.psk.external_id

    @property
    def sessions(self) -> int:
        """Sessions held (established or handshaking)."""
        return len(self._sessions)

    @property
    def handshakes(self) -> int:
        """Handshakes in progress."""
        return len(self._handshaking)

    # -- asyncio ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._udp = cast(asyncio.DatagramTransport, transport)
        self._listener.connection_made(cast(asyncio.DatagramTransport, self))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        remote: Remote = (addr[0], addr[1])
        now = time.monotonic()
        session = self._sessions.get(remote)
        if session is None:
            if not _is_client_hello(data):
                return  # no session: only a ClientHello starts one
            session = self._start(remote, now)
            if session is None:
                return
        session.touched = now
        self._sessions.move_to_end(remote)
        if session.lookup is not None:
            if len(session.backlog) < _BACKLOG:
                session.backlog.append(data)
            return
        if not session.established:
            identity = _psk_identity(data)
            if (
                identity is not None
                and self._store.cached(identity) is None
                and not self._store.known_unknown(identity)
            ):
                session.backlog.append(data)
                session.lookup = asyncio.get_running_loop().create_task(
                    self._prefetch(remote, session, identity), name="ingest.coap[dtls-psk]"
                )
                return
        self._feed(remote, session, data)

    async def _prefetch(self, remote: Remote, session: _Session, identity: str) -> None:
        try:
            await self._store.load(identity)
        except LookupsExhaustedError:
            self._failures.labels("busy").inc()
            log.info("DTLS: %s:%d: PSK look-ups over their rate; handshake dropped", *remote)
            self._drop(remote)
            return
        except (psycopg.Error, OSError) as exc:
            log.warning("DTLS: PSK look-up failed (%s); %s:%d's handshake dropped", exc, *remote)
            self._drop(remote)
            return
        finally:
            session.lookup = None
        if self._sessions.get(remote) is not session:
            return
        held, session.backlog = session.backlog, []
        for data in held:
            if self._sessions.get(remote) is not session:
                return
            self._feed(remote, session, data)

    def _start(self, remote: Remote, now: float) -> _Session | None:
        host = remote[0]
        if self._per_host[host] >= self._cfg.dtls_max_handshakes_per_host:
            self._failures.labels("host_handshakes").inc()
            return None
        while len(self._handshaking) >= self._cfg.dtls_max_handshakes:
            self._failures.labels("handshakes").inc()
            self._drop(next(iter(self._handshaking)))
        while len(self._sessions) >= self._cfg.dtls_max_sessions:
            self._drop(next(iter(self._sessions)))
        buffer = self._context.wrap_buffers()
        buffer.setcookieparam(f"{remote[0]}:{remote[1]}".encode())
        session = _Session(buffer, now, now)
        self._sessions[remote] = session
        self._handshaking[remote] = session
        self._per_host[host] += 1
        return session

    def _feed(self, remote: Remote, session: _Session, data: bytes) -> None:
        tls = self._tls
        buffer = session.buffer
        try:
            buffer.receive_from_network(data)
            if not session.established:
                self._view.feeding = session
                try:
                    while buffer._handshake_state is not tls.HandshakeStep.HANDSHAKE_OVER:
                        try:
                            buffer.do_handshake()
                        except tls.WantWriteError:  # a flight to send before going on
                            self._flush(session, remote)
                finally:
                    self._view.feeding = None
                self._established(remote, session)
            while True:
                plain = buffer.read(_CHUNK)
                if not plain:
                    break
                self._listener.datagram_received(plain, remote)
        except tls.WantReadError:
            pass
        except tls.HelloVerifyRequest:  # the cookie exchange: no state kept until it returns
            self._flush(session, remote)
            self._drop(remote)
            return
        except self._error as exc:
            self._flush(session, remote)  # an alert, if Mbed TLS wrote one
            if session.established:
                log.debug("DTLS: %s:%d: session ended (%s)", *remote, exc)
            else:
                unknown = session.asked is not None and session.psk is None
                self._failures.labels("unknown_identity" if unknown else "handshake").inc()
                log.info(
                    "DTLS: %s:%d: handshake failed for identity %r (%s); no session",
                    *remote,
                    session.asked,
                    exc,
                )
            self._drop(remote)
            return
        self._flush(session, remote)

    def end_sessions(self, device_ids: set[int] | None) -> None:
        """End the sessions of these devices (None: every device's), with a close_notify: a
        session outlives neither a new key nor a disabled device (its device handshakes again,
        with the registry's key of now)."""
        for remote, session in list(self._sessions.items()):
            if session.psk is None or (
                device_ids is not None and session.psk.device_id not in device_ids
            ):
                continue
            if session.established:
                with contextlib.suppress(self._error):
                    session.buffer.shutdown()
                self._flush(session, remote)
            self._failures.labels("registry_changed").inc()
            self._drop(remote)

    def _established(self, remote: Remote, session: _Session) -> None:
        session.established = True
        if self._handshaking.pop(remote, None) is not None:
            self._host_done(remote[0])
        who = session.psk.external_id if session.psk else "?"
        log.debug("DTLS: %s:%d authenticated as %s", *remote, who)

    def _flush(self, session: _Session, remote: Remote) -> None:
        if self._udp is None:
            return
        while True:
            out = session.buffer.peek_outgoing(_CHUNK)
            if not out:
                return
            self._udp.sendto(out, remote)
            session.buffer.consume_outgoing(len(out))

    def _drop(self, remote: Remote) -> None:
        session = self._sessions.pop(remote, None)
        if self._handshaking.pop(remote, None) is not None:
            self._host_done(remote[0])
        if session is not None and session.lookup is not None:
            session.lookup.cancel()

    def _host_done(self, host: str) -> None:
        self._per_host[host] -= 1
        if self._per_host[host] <= 0:
            del self._per_host[host]

    def sweep(self, now: float) -> None:
        """Drop handshakes past their timeout and sessions idle too long."""
        late = now - self._cfg.dtls_handshake_timeout_s
        while self._handshaking:
            remote, session = next(iter(self._handshaking.items()))
            if session.started > late:
                break
            self._drop(remote)
        idle = now - self._cfg.dtls_session_idle_s
        while self._sessions:
            remote, session = next(iter(self._sessions.items()))
            if session.touched > idle:
                break
            self._drop(remote)


def _is_client_hello(data: bytes) -> bool:
    """A DTLS handshake record (epoch 0) holding a ClientHello (RFC 6347 §4.1, §4.2.2)."""
    return len(data) > 25 and data[0] == _HANDSHAKE and data[3:5] == b"\0\0" and data[13] == 1


def _psk_identity(data: bytes) -> str | None:
    """The PSK identity of an unfragmented ClientKeyExchange in this datagram's first record
    (RFC 4279 §2), to prefetch its key; None if there is none."""
    if len(data) < 27 or data[0] != _HANDSHAKE or data[13] != _CLIENT_KEY_EXCHANGE:
        return None
    body = data[25:]
    n = int.from_bytes(body[:2], "big")
    if n == 0 or len(body) < 2 + n:
        return None
    try:
        return body[2 : 2 + n].decode()
    except UnicodeDecodeError:
        return None
