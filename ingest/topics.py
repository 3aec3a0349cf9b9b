"""The MQTT topic scheme: ``<prefix>/up/<kind>/<device>/<format>[/<object path>]`` for uplinks.

``kind`` is the device kind (env, streetlight, gantry…), ``device`` the device's external id
as its protocol carries it, ``format`` the decoder name. Formats whose payload is one LwM2M
object or instance take its numeric path after the format (``…/lwm2m-tlv/3303/0``), as a
CoAP uplink path names it; decoders read it from the frame's source. Format names are never
numeric, so trailing numeric levels are always the object path. The ``value`` format (one
plain number per frame) takes the metric's name as its last level (``…/value/temperature``).
Downlinks mirror uplinks under ``down``.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_PATH_LEVELS = 3  # object / instance / resource
NAMED_LEVEL_FORMATS = frozenset({"value"})  # formats followed by one named level (a metric)


class UplinkTopic(NamedTuple):
    """The levels of an uplink topic that matter to the pipeline."""

    kind: str
    device: str
    format: str
    path: str  # "/3303/0" for an LwM2M object path, else ""


def parse_uplink(topic: str) -> UplinkTopic | None:
    """Split an uplink topic into its levels, or None if it has too few."""
    parts = topic.split("/")
    end = len(parts)
    if end >= 5 and parts[end - 2] in NAMED_LEVEL_FORMATS and parts[end - 5] == "up":
        end -= 1
    else:
        while end > len(parts) - MAX_PATH_LEVELS and end > 4 and parts[end - 1].isdigit():
            end -= 1
    if end < 4 or not all(parts[end - 3 : end]):
        return None
    path = "/" + "/".join(parts[end:]) if end < len(parts) else ""
    return UplinkTopic(parts[end - 3], parts[end - 2], parts[end - 1], path)


def uplink(kind: str, device: str, fmt: str, prefix: str = "cityflux", path: str = "") -> str:
    """The topic a device publishes on (``path`` like ``/3303/0`` for LwM2M payloads, or
    ``/temperature`` for the ``value`` format)."""
    return f"{prefix}/up/{kind}/{device}/{fmt}{path}"


def downlink(uplink_topic: str) -> str:
    """``<prefix>/up/<kind>/<device>/<format>…`` -> ``<prefix>/down/<kind>/<device>/<format>…``."""
    parts = uplink_topic.split("/")
    end = len(parts)
    while end > len(parts) - MAX_PATH_LEVELS and end > 4 and parts[end - 1].isdigit():
        end -= 1
    if end >= 5 and parts[end - 4] == "up":
        parts[end - 4] = "down"
    return "/".join(parts)
