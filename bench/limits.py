"""The machine's true limits, measured in the same run as cityflux, by programs nobody here wrote
or by the database's own fastest path:

* MQTT: Mosquitto's C client ``mosquitto_sub`` (Debian mosquitto-clients) draining the same
  preloaded persistent session cityflux drains (same broker, QoS, MQTT 5), its clock from the
  first output it prints to its exit after the last message, counting the messages printed
  after that first output;
* PostgreSQL: raw binary ``COPY`` of pre-encoded rows over as many connections as the
  pipeline's writers (``database.writers``), one transaction per batch, into the same table
  and unique index;
* CoAP: libcoap's C server (``coap-server``, Debian libcoap3-bin) under the same client load as
  cityflux's CoAP listener (:mod:`bench.coap_rates`), every request creating or updating a
  resource in its memory (``-d``: dynamic resources; answers 2.01, then 2.04).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BufferedReader
from typing import Any, cast

import psycopg

from ingest.mqtt_v5 import receive_maximum
from storage.embedded import free_port
from storage.pgbinary import encode_rows
from storage.writer import TableWrite

from .common import (
    MissingToolError,
    create_session,
    empty,
    end_session,
    preload,
    service_settings,
)

TOPIC = "bench/up/#"
COAP_SERVERS = ("coap-server", "coap-server-notls", "coap-server-openssl", "coap-server-gnutls")


def c_client_rate(port: int, msgs: Sequence[tuple[str, bytes]], qos: int, tag: str) -> float:
    """Messages/s of ``mosquitto_sub`` draining a preloaded session of ``msgs``."""
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        raise MissingToolError("mosquitto_sub not found (Debian package mosquitto-clients)")
    cid = f"csub-{tag}-{time.time_ns()}"
    create_session(port, cid, TOPIC, qos)
    preload(port, list(msgs))
    cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-i", cid, "-c", "-x", "3600"]
    cmd += ["-q", str(qos), "-t", TOPIC, "-C", str(len(msgs))]
    # with -C, mosquitto_sub asks for Receive Maximum 1 (QoS 1 stop-and-wait; 20 without -C):
    # it asks for the window cityflux's listener asks for with the drains' settings
    window = receive_maximum(service_settings().mqtt.receive_maximum)
    cmd += ["-D", "connect", "receive-maximum", str(window)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = cast(BufferedReader, proc.stdout)
    chunk = out.read1(1)  # the first byte printed: the clock starts
    first = time.perf_counter()
    got = before = chunk.count(b"\n")  # in before the clock started: not counted in the rate
    while chunk:
        chunk = out.read1(1 << 20)
        got += chunk.count(b"\n")
    proc.wait(600)
    end = time.perf_counter()
    end_session(port, cid)
    if proc.returncode != 0 or got < len(msgs):
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"mosquitto_sub: rc {proc.returncode}, {got} of {len(msgs)}: {err}")
    return (len(msgs) - before) / (end - first)


def raw_copy_rate(url: str, batches: Sequence[TableWrite], connections: int) -> float:
    """Rows/s of pre-encoded binary COPY over ``connections`` connections (batches dealt out
    round robin, one transaction each), the clock from all connections ready to the last
    commit."""
    spec = batches[0].spec
    cols = spec.columns
    names = ", ".join(c.name for c in cols)
    sql = f"COPY {spec.name} ({names}) FROM STDIN (FORMAT binary)"
    payloads = [encode_rows(cols, b.rows.columns) for b in batches]
    rows = sum(len(b.rows) for b in batches)
    empty(url, spec.name)
    conns = [psycopg.connect(url) for _ in range(connections)]
    ready = threading.Barrier(connections + 1)

    def work(i: int) -> None:
        conn = conns[i]
        ready.wait()
        for payload in payloads[i::connections]:
            with conn.cursor().copy(sql) as copy:
                copy.write(payload)
            conn.commit()

    try:
        with ThreadPoolExecutor(connections) as pool:
            futures = [pool.submit(work, i) for i in range(connections)]
            ready.wait()
            start = time.perf_counter()
            for f in futures:
                f.result()
            elapsed = time.perf_counter() - start
    finally:
        for c in conns:
            c.close()
    return rows / elapsed


def coap_server_exe() -> str:
    """libcoap's C server, under any of the names Debian installs it as."""
    for name in COAP_SERVERS:
        exe = shutil.which(name)
        if exe:
            return exe
    raise MissingToolError("libcoap's coap-server not found (Debian package libcoap3-bin)")


def libcoap_rate(n: int, window: int) -> dict[str, Any]:
    """Requests/s of libcoap's C server under the CoAP bench's client load (same requests,
    same window, same 32 sockets)."""
    from .coap_rates import _in_process, requests

    exe = coap_server_exe()
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-A", "127.0.0.1", "-p", str(port), "-d", str(4 * n), "-v", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(f"{exe} exited with {proc.returncode}")
        out: dict[str, Any] = _in_process(port, requests(n, 0), window)
    finally:
        proc.terminate()
        proc.wait(10)
    out.pop("answered_ids")
    out["server"] = exe
    return out
