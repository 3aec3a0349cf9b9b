"""A light CoAP uplink client for fleets: pre-encoded requests over plain UDP sockets.

Simulated devices, the demo and the bench send thousands of requests a second from one
process; a full client stack (aiocoap) costs more per request than the server it measures
(bench/results/coap.json), so this client does only what an uplinking device does
(RFC 7252): CON or NON POSTs with Uri-Path and Content-Format options; retransmission of
unanswered CONs (ACK_TIMEOUT × 1–1.5, doubling, MAX_RETRANSMIT 4); empty ACKs followed by
separate responses (which it acknowledges). Requests are spread over ``sockets`` UDP sockets
(devices behind their own ports: each socket has its own message-id space).
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

CON, NON = 0, 1
POST = 2
ACK_TIMEOUT_S = 2.0
MAX_RETRANSMIT = 4
EXCHANGE_LIFETIME_S = 247.0  # RFC 7252 §4.8.2, with the default transmission parameters


def _option(delta: int, value: bytes) -> bytes:
    """One option (RFC 7252 §3.1): delta and length nibbles with their extensions."""

    def nibble(n: int) -> tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, struct.pack("!H", n - 269)

    d, dx = nibble(delta)
    length, lx = nibble(len(value))
    return bytes([(d << 4) | length]) + dx + lx + value


def request_tail(path: str, content_format: int | None, payload: bytes) -> bytes:
    """Options and payload of a POST to ``path`` (everything after the token)."""
    out = b""
    last = 0
    for seg in [s for s in path.split("/") if s]:
        out += _option(11 - last, seg.encode())
        last = 11
    if content_format is not None:
        cf = content_format.to_bytes((content_format.bit_length() + 7) // 8, "big")
        out += _option(12 - last, cf)
    return out + (b"\xff" + payload if payload else b"")


def encode(mtype: int, mid: int, token: bytes, tail: bytes, code: int = POST) -> bytes:
    """A whole CoAP message."""
    return bytes([0x40 | (mtype << 4) | len(token), code]) + struct.pack("!H", mid) + token + tail


@dataclass
class CoapReport:
    """What the fleet's requests got: answers by code, and what never got one."""

    sent: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    retransmissions: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    answered_ids: list[int] = field(default_factory=list)
    """Indices (in the order given) of requests answered 2.04."""

    @property
    def answered(self) -> int:
        """Requests that got a response."""
        return sum(self.answers.values())


@dataclass(slots=True)
class _Pending:
    index: int
    tag: int
    sock: int
    mid: int
    token: bytes
    path: str
    cf: int | None
    payload: bytes
    data: bytes
    sent: float
    due: float
    timeout: float
    attempts: int = 0


def _code(byte: int) -> str:
    return f"{byte >> 5}.{byte & 31:02d}"


def max_age_s(msg: bytes, default: int = 60) -> int:
    """The Max-Age option (14) of a response, RFC 7252 §5.10.5 (default 60 s)."""
    pos = 4 + (msg[0] & 15)
    number = 0
    while pos < len(msg) and msg[pos] != 0xFF:
        delta, length = msg[pos] >> 4, msg[pos] & 15
        pos += 1
        if delta == 13:
            delta, pos = msg[pos] + 13, pos + 1
        elif delta == 14:
            delta, pos = int.from_bytes(msg[pos : pos + 2], "big") + 269, pos + 2
        if length == 13:
            length, pos = msg[pos] + 13, pos + 1
        elif length == 14:
            length, pos = int.from_bytes(msg[pos : pos + 2], "big") + 269, pos + 2
        number += delta
        if number == 14:
            return int.from_bytes(msg[pos : pos + length], "big")
        if number > 14:
            break
        pos += length
    return default


class CoapSender:
    """Uplinks from many simulated devices over ``sockets`` UDP sockets, sent as they come.

    ``send`` blocks while ``window`` requests are outstanding. Per tag it counts requests
    sent and their final answers (``answers[tag]["2.04"]``…); a 5.03 is not final: the request
    is sent again (as a new message) after its Max-Age, as a device would (RFC 7252 §5.9.3.4),
    and counted in ``deferred``. CON requests are retransmitted (ACK_TIMEOUT × 1–1.5,
    doubling, MAX_RETRANSMIT 4) and given up after that (``unanswered``); NON requests get
    ``non_wait_s`` for an answer. Not thread-safe.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        con: bool = True,
        window: int = 500,
        sockets: int = 32,
        non_wait_s: float = 2.0,
        keep_latencies: bool = False,
    ) -> None:
        self.con, self.window, self.non_wait_s = con, window, non_wait_s
        self.keep_latencies = keep_latencies
        self._socks: list[socket.socket] = []
        self._sel = selectors.DefaultSelector()
        for i in range(sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.connect((host, port))
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, i)
            self._socks.append(s)
        self._mids = [random.randrange(0x10000) for _ in range(sockets)]
        self._token = random.randrange(1 << 30)
        self._by_token: dict[bytes, _Pending] = {}
        self._by_mid: dict[tuple[int, int], _Pending] = {}
        self._later: list[tuple[float, _Pending]] = []  # 5.03: sent again after Max-Age
        self.sent: Counter[int] = Counter()
        self.answers: dict[int, Counter[str]] = {}
        self.unanswered: Counter[int] = Counter()
        self.deferred: Counter[int] = Counter()
        self.retransmissions = 0
        self.latencies_s: list[float] = []
        self.answered_ids: list[int] = []
        self._count = 0

    @property
    def outstanding(self) -> int:
        """Requests sent and not answered yet (or waiting to be sent again)."""
        return len(self._by_token) + len(self._later)

    def send(self, path: str, content_format: int | None, payload: bytes, tag: int = 0) -> None:
        """POST one uplink (blocks while the window is full)."""
        while len(self._by_token) >= self.window:
            self.poll(0.005)
        p = _Pending(self._count, tag, 0, 0, b"", path, content_format, payload, b"", 0.0, 0.0, 0.0)
        self._count += 1
        self.sent[tag] += 1
        self._transmit(p)

    def _transmit(self, p: _Pending) -> None:
        now = time.monotonic()
        i = p.index % len(self._socks)
        self._mids[i] = (self._mids[i] + 1) & 0xFFFF
        self._token = (self._token + 1) & 0xFFFFFFFF
        token = self._token.to_bytes(4, "big")
        mtype = CON if self.con else NON
        p.sock, p.mid, p.token = i, self._mids[i], token
        p.data = encode(mtype, p.mid, token, request_tail(p.path, p.cf, p.payload))
        p.sent, p.timeout, p.attempts = now, ACK_TIMEOUT_S * random.uniform(1.0, 1.5), 0
        p.due = now + (p.timeout if self.con else self.non_wait_s)
        self._by_token[token] = p
        if self.con:
            self._by_mid[(i, p.mid)] = p
        with contextlib.suppress(BlockingIOError):  # as if lost: retransmitted
            self._socks[i].send(p.data)

    def poll(self, timeout_s: float = 0.0) -> None:
        """Read answers, retransmit what is due, resend what a 5.03 deferred."""
        for key, _ in self._sel.select(timeout=timeout_s):
            self._read(key.data)
        now = time.monotonic()
        if self._later and self._later[0][0] <= now:
            ready = [p for t, p in self._later if t <= now]
            self._later = [(t, p) for t, p in self._later if t > now]
            for p in ready:
                self._transmit(p)
        expired = [p for p in self._by_token.values() if p.due <= now]
        for p in expired:
            if not self.con or p.attempts >= MAX_RETRANSMIT:
                self._by_mid.pop((p.sock, p.mid), None)
                self._by_token.pop(p.token, None)
                self.unanswered[p.tag] += 1
                continue
            p.attempts += 1
            p.timeout *= 2
            p.due = now + p.timeout
            self.retransmissions += 1
            with contextlib.suppress(BlockingIOError):
                self._socks[p.sock].send(p.data)

    def _read(self, idx: int) -> None:
        sock = self._socks[idx]
        while True:
            try:
                d = sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if len(d) < 4:
                continue
            t = (d[0] >> 4) & 3
            mid = struct.unpack("!H", d[2:4])[0]
            token = d[4 : 4 + (d[0] & 15)]
            if t == 2 and d[1] == 0:  # empty ACK: the response comes separately (§5.2.2);
                acked = self._by_mid.pop((idx, mid), None)  # stop retransmitting, wait for it
                if acked is not None:
                    acked.attempts = MAX_RETRANSMIT
                    acked.due = time.monotonic() + EXCHANGE_LIFETIME_S
                continue
            if t == 0:  # a separate CON response: acknowledge it
                sock.send(bytes([0x60, 0]) + d[2:4])
            p = self._by_token.pop(token, None)
            if p is None:
                continue
            self._by_mid.pop((p.sock, p.mid), None)
            code = _code(d[1])
            if code == "5.03":
                self.deferred[p.tag] += 1
                self._later.append((time.monotonic() + max_age_s(d), p))
                continue
            self.answers.setdefault(p.tag, Counter())[code] += 1
            if code == "2.04":
                self.answered_ids.append(p.index)
            if self.keep_latencies:
                self.latencies_s.append(time.monotonic() - p.sent)

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Wait for every answer (or give-up); False if some are still outstanding."""
        deadline = time.monotonic() + timeout_s
        while self.outstanding and time.monotonic() < deadline:
            self.poll(0.005)
        return not self.outstanding

    def close(self) -> None:
        """Close the sockets (outstanding requests are abandoned)."""
        for s in self._socks:
            self._sel.unregister(s)
            s.close()
        self._sel.close()
        self._socks = []


def send_uplinks(
    host: str,
    port: int,
    requests: Iterable[tuple[str, int | None, bytes]],
    *,
    con: bool = True,
    window: int = 500,
    sockets: int = 32,
    rate_per_s: float | None = None,
    timeout_s: float = 60.0,
    stop: threading.Event | None = None,
    keep_latencies: bool = True,
) -> CoapReport:
    """POST every (path, content format, payload), keeping ``window`` outstanding; return
    when all are answered (or given up)."""
    sender = CoapSender(
        host, port, con=con, window=window, sockets=sockets, keep_latencies=keep_latencies
    )
    report = CoapReport()
    start = time.monotonic()
    try:
        for path, cf, payload in requests:
            if stop is not None and stop.is_set():
                break
            if rate_per_s:
                while sender._count >= (time.monotonic() - start) * rate_per_s:
                    sender.poll(0.001)
            sender.send(path, cf, payload)
            if time.monotonic() - start > timeout_s:
                break
        sender.drain(max(0.0, timeout_s - (time.monotonic() - start)))
    finally:
        report.elapsed_s = time.monotonic() - start
        report.sent = sender.sent[0]
        report.answers = sender.answers.get(0, Counter())
        report.unanswered = sender.unanswered[0] + sender.outstanding
        report.retransmissions = sender.retransmissions
        report.latencies_s = sender.latencies_s
        report.answered_ids = sender.answered_ids
        sender.close()
    return report
