"""The MQTT topic scheme: ``<prefix>/up/<kind>/<device>/<format>[/<object path>]`` for uplinks.

``kind`` is the device kind (env, streetlight, gantry…), ``device`` the device's external id
as its protocol carries it, ``format`` the decoder name. Formats whose payload is one LwM2M
object or instance take its numeric path after the format (``…/lwm2m-tlv/3303/0``), as a
CoAP uplink path names it; decoders read it from the frame's source. Format names are never
numeric, so trailing numeric levels are always the object path. The ``value`` format (one
plain number per frame) takes the metric's name as its last level (``…/value/temperature``).
Downlinks mirror uplinks under ``down``.

Topics come from devices, some buggy or hostile: a topic whose levels break the rules (an
empty level, a device id the registry would refuse, a malformed kind or format) is refused
here with a reason, and its frame dead-lettered with the raw topic; it never reaches the
registry.
"""

from __future__ import annotations

from typing import NamedTuple

from device_registry.ids import id_problem, shown

MAX_PATH_LEVELS = 3  # object / instance / resource
NAMED_LEVEL_FORMATS = frozenset({"value"})  # formats followed by one named level (a metric)


class UplinkTopic(NamedTuple):
    """The levels of an uplink topic that matter to the pipeline."""

    kind: str
    device: str
    format: str
    path: str  # "/3303/0" for an LwM2M object path, else ""


class Refusal(NamedTuple):
    """Why a frame is refused at the edge (its dead letter's reason)."""

    reason: str


def parse_uplink(topic: str) -> UplinkTopic | Refusal:
    """Split an uplink topic into its levels, or say why it cannot be one."""
    parts = topic.split("/")
    end = len(parts)
    if end >= 5 and parts[end - 2] in NAMED_LEVEL_FORMATS and parts[end - 5] == "up":
        end -= 1
    else:
        while end > len(parts) - MAX_PATH_LEVELS and end > 4 and parts[end - 1].isdigit():
            end -= 1
    if end < 4:
        return Refusal(f"topic_invalid: {shown(topic)}: not <prefix>/up/<kind>/<device>/<format>")
    kind, device, fmt = parts[end - 3 : end]
    return check_levels(kind, device, fmt) or UplinkTopic(
        kind, device, fmt, "/" + "/".join(parts[end:]) if end < len(parts) else ""
    )


def check_levels(kind: str, device: str, fmt: str | None = None) -> Refusal | None:
    """The refusal for a bad kind, device or format level (MQTT topic or CoAP path; CoAP
    may name no format level)."""
    if problem := id_problem(device):
        return Refusal(f"device_id_invalid: {problem}")
    if problem := id_problem(kind):
        return Refusal(f"kind_invalid: {problem}")
    if fmt is not None and (problem := id_problem(fmt)):
        return Refusal(f"format_invalid: {problem}")
    return None


def refused(levels: UplinkTopic | Refusal, size: int, largest: int) -> tuple[str, str, str]:
    """(reason, format, device) of a publication refused at the edge: its topic's refusal,
    or its size over ``largest`` bytes (its dead letter keeps the first ``largest``)."""
    if isinstance(levels, Refusal):
        return levels.reason, "unknown", ""
    return (
        f"frame_too_large: {size} bytes > {largest} (pipeline.max_frame_bytes; "
        f"the dead letter keeps the first {largest})",
        levels.format,
        levels.device,
    )


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
