"""The MQTT topic scheme: ``<prefix>/up/<kind>/<device>/<format>`` for uplinks.

``kind`` is the device kind (env, streetlight, gantry…), ``device`` the device's external id
as its protocol carries it, ``format`` the decoder name. Downlinks mirror it under ``down``.
"""

from __future__ import annotations

from typing import NamedTuple


class UplinkTopic(NamedTuple):
    """The levels of an uplink topic that matter to the pipeline."""

    kind: str
    device: str
    format: str


def parse_uplink(topic: str) -> UplinkTopic | None:
    """Split an uplink topic into (kind, device, format), or None if it has too few levels."""
    parts = topic.rsplit("/", 3)
    if len(parts) < 4 or not all(parts[1:]):
        return None
    return UplinkTopic(parts[1], parts[2], parts[3])


def uplink(kind: str, device: str, fmt: str, prefix: str = "cityflux") -> str:
    """The topic a device publishes on."""
    return f"{prefix}/up/{kind}/{device}/{fmt}"
