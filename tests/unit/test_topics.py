"""The MQTT topic scheme (pure functions)."""

from __future__ import annotations

import pytest

from ingest.topics import UplinkTopic, downlink, parse_uplink, uplink


@pytest.mark.parametrize(
    ("topic", "levels"),
    [
        ("cityflux/up/env/861000000000001/nbiot-env", ("env", "861000000000001", "nbiot-env", "")),
        ("city/a/up/env/ep-1/lwm2m-tlv/3303/0", ("env", "ep-1", "lwm2m-tlv", "/3303/0")),
        ("cityflux/up/env/ep-1/lwm2m-tlv/3303", ("env", "ep-1", "lwm2m-tlv", "/3303")),
        ("cityflux/up/env/ep-1/lwm2m-tlv/3/0/7", ("env", "ep-1", "lwm2m-tlv", "/3/0/7")),
        ("cityflux/up/env/esp-7/value/temperature", ("env", "esp-7", "value", "/temperature")),
        ("cityflux/up/env/esp-7/value/3303", ("env", "esp-7", "value", "/3303")),
        ("cityflux/up/env/value/hj212", ("env", "value", "hj212", "")),  # a device "value"
        ("a/b/c", None),
        ("cityflux/up//dev/hj212", None),
    ],
)
def test_parse_uplink(topic: str, levels: tuple[str, ...] | None) -> None:
    assert parse_uplink(topic) == (UplinkTopic(*levels) if levels else None)


def test_uplink_and_downlink_mirror_each_other() -> None:
    up = uplink("env", "ep-1", "lwm2m-tlv", "p/q", "/3303/0")
    assert up == "p/q/up/env/ep-1/lwm2m-tlv/3303/0"
    assert downlink(up) == "p/q/down/env/ep-1/lwm2m-tlv/3303/0"
    assert downlink("cityflux/up/water/ST01/hj212") == "cityflux/down/water/ST01/hj212"
    assert downlink("up/water/ST01/hj212") == "up/water/ST01/hj212"  # no prefix: untouched
