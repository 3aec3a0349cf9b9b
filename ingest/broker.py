"""An embedded MQTT broker for the demo and tests: mosquitto if installed, else amqtt.

The mosquitto configuration mirrors deploy/mosquitto/mosquitto.conf: queues sized for a
consumer that is down for a while (persistent sessions keep QoS 1 frames) and no in-flight
cap beyond the client's Receive Maximum. amqtt (pure Python) speaks MQTT 3.1.1 only, so with
it the listener falls back to 3.1.1 and shared subscriptions are unavailable.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from storage.embedded import free_port

log = logging.getLogger(__name__)

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 0
max_packet_size 16777216
log_dest stderr
"""

AMQTT_CONF = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
"""


class EmbeddedBroker:
    """A private broker process on 127.0.0.1:<port>."""

    def __init__(self, work_dir: Path, port: int | None = None, kind: str | None = None) -> None:
        self.work_dir = work_dir
        self.port = port or free_port()
        self.kind = kind or ("mosquitto" if shutil.which("mosquitto") else "amqtt")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def supports_v5(self) -> bool:
        """Whether the broker speaks MQTT 5 (needed for shared subscriptions)."""
        return self.kind == "mosquitto"

    def start(self) -> EmbeddedBroker:
        """Start the broker; return when it accepts TCP connections."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            conf = self.work_dir / "mosquitto.conf"
            conf.write_text(MOSQUITTO_CONF.format(port=self.port))
            cmd = [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        else:
            conf = self.work_dir / "amqtt.yaml"
            conf.write_text(AMQTT_CONF.format(port=self.port))
            cmd = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=(self.work_dir / "broker.err").open("wb")
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited: {(self.work_dir / 'broker.err').read_text()[-1000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                log.info("embedded MQTT broker (%s) on port %d", self.kind, self.port)
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not listen on port {self.port}")

    def stop(self) -> None:
        """Terminate the broker."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
