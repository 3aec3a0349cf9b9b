"""The bench's limits get the same terms as cityflux, and every limit or peer not
installed is named with its package. No broker, no database: the measuring is faked."""

from __future__ import annotations

import io
import sys
from typing import Any, ClassVar

import pytest

import bench.__main__ as bench_main
from bench import coap_rates, limits, live


class _FakeSub:
    """A mosquitto_sub that prints ``n`` messages and exits 0; keeps the command it got."""

    cmd: ClassVar[list[str]] = []

    def __init__(self, cmd: list[str], **_: Any) -> None:
        _FakeSub.cmd = cmd
        n = int(cmd[cmd.index("-C") + 1])
        self.stdout = io.BufferedReader(io.BytesIO(b"{}\n" * n))
        self.stderr = io.BytesIO()
        self.returncode = 0

    def wait(self, _timeout: float | None = None) -> int:
        return 0


def test_the_c_client_may_have_as_many_qos1_frames_in_flight_as_cityflux(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mosquitto_sub with -C sends Receive Maximum 1 (without -C: 20), so Mosquitto gives it
    one QoS 1 message at a time; cityflux's listener asks for 65,534. A limit measured
    stop-and-wait is not the limit: the C client must ask for the same window."""
    from ingest.settings import load_settings

    for name in ("create_session", "preload", "end_session"):
        monkeypatch.setattr(limits, name, lambda *a, **k: None)
    monkeypatch.setattr("bench.limits.subprocess.Popen", _FakeSub)
    limits.c_client_rate(1883, [("bench/up/d/senml-json", b"{}")] * 10, 1, "t")
    cmd = _FakeSub.cmd
    url = "postgresql://bench@127.0.0.1/bench"
    ours = min(load_settings(None, database={"url": url}).mqtt.receive_maximum, 65_534)
    props = [cmd[i + 1 : i + 4] for i, a in enumerate(cmd) if a == "-D"]
    assert ["connect", "receive-maximum", str(ours)] in props, cmd


def test_a_missing_libcoap_or_mq_bridge_is_na_with_its_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bench/README: "A missing limit or peer is reported as n/a with the package to
    install" — so far only mosquitto-clients is; libcoap3-bin and the bench extra are not."""
    monkeypatch.setattr("bench.limits.shutil.which", lambda _name: None)  # no coap-server
    monkeypatch.setattr(coap_rates, "cityflux_rate", lambda *a, **k: {"per_s": 50.0, "lost": 0})
    monkeypatch.setitem(sys.modules, "mq_bridge", None)  # the bench extra not installed
    monkeypatch.setattr(live, "fleet_files", lambda *a: [])
    monkeypatch.setattr(live, "fleet_alone", lambda *a: 1000.0)
    monkeypatch.setattr(live, "cityflux_live", lambda *a: {"events_per_s": 500.0, "lost": 0})
    drain = {"msgs_per_s": 900.0, "readings_per_s": 900.0, "lost_frames": 0}
    d: dict[str, Any] = {
        "runs": [
            {
                "c_client_qos1": 1000.0,
                "c_client_qos0": 1000.0,
                "single_qos1": drain | {"acknowledged": 10, "sent": 10},
                "single_qos0": drain,
                "multi_qos1": drain | {"acknowledged": 5, "sent": 5},
                "multi_qos0": drain,
                "raw_copy": 1000.0,
            }
        ],
        "missing": {},
        "live": live.run(0, "", 2, 10, 1),
        "coap": bench_main._coap("", 10, 1, 0),
        "listener_qos1": (1000.0, [1000.0]),
        "naive": (10.0, [10.0]),
        "esphome": {"msgs_per_s": 99.0},
    }
    text = bench_main.render(bench_main._summary(d, True, 1, 2, ""))
    assert "libcoap coap-server n/a" in text  # the figure is n/a ...
    assert "libcoap3-bin" in text, text  # ... and says which package
    assert "mq-bridge n/a" in text
    assert "cityflux[bench]" in text, text
