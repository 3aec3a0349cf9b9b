"""The MQTT topic scheme (pure functions)."""

from __future__ import annotations

import pytest

from ingest.topics import Refusal, UplinkTopic, downlink, parse_uplink, uplink


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
    ],
)
def test_parse_uplink(topic: str, levels: tuple[str, ...]) -> None:
    assert parse_uplink(topic) == UplinkTopic(*levels)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("a/b/c", "topic_invalid: a/b/c: not <prefix>/up/<kind>/<device>/<format>"),
        ("cityflux/up//dev/hj212", "kind_invalid: empty"),
        ("cityflux/up/env//hj212", "device_id_invalid: empty"),
        ("cityflux/up/env/dev/", "format_invalid: empty"),
        (f"cityflux/up/env/{'d' * 80}/senml-json", "device_id_invalid: 80 bytes (at most 64)"),
        (
            "cityflux/up/env/d\x01ev/hj212",
            "device_id_invalid: d\\x01ev: 1-64 bytes without spaces, control characters, "
            "'/', '+', '#', ':' or '\\'",
        ),
        ("cityflux/up/en v/dev/hj212", "kind_invalid: en v: 1-64"),
        ("cityflux/up/env/dev/hj\x7f212", "format_invalid: hj\\x7f212"),
    ],
)
def test_bad_topic_levels_are_refused_with_a_reason(topic: str, reason: str) -> None:
    got = parse_uplink(topic)
    assert isinstance(got, Refusal)
    assert got.reason.startswith(reason)


def test_uplink_and_downlink_mirror_each_other() -> None:
    up = uplink("env", "ep-1", "lwm2m-tlv", "p/q", "/3303/0")
    assert up == "p/q/up/env/ep-1/lwm2m-tlv/3303/0"
    assert downlink(up) == "p/q/down/env/ep-1/lwm2m-tlv/3303/0"
    assert downlink("cityflux/up/water/ST01/hj212") == "cityflux/down/water/ST01/hj212"
    assert downlink("up/water/ST01/hj212") == "up/water/ST01/hj212"  # no prefix: untouched
