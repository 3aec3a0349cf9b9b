"""CoAP helpers of the listener that need no state: the fast parse of a plain uplink, and the
response code that tells a device what happened to its dead-lettered frame."""

from __future__ import annotations

from aiocoap.numbers.codes import Code

_PLAIN_OPTIONS = (3, 7, 15, 60)  # Uri-Host, Uri-Port, Uri-Query, Size1: nothing to do


def parse_plain(data: bytes) -> tuple[int, bytes, tuple[str, ...], int | None, bytes] | None:
    """(code, token, Uri-Path, Content-Format, payload) of a request with no other options
    than those, or None (the caller then decodes it fully with aiocoap)."""
    tkl = data[0] & 15
    if tkl > 8:
        return None
    pos, n = 4 + tkl, len(data)
    number, cf = 0, None
    path: list[str] = []
    payload = b""
    try:
        while pos < n:
            b = data[pos]
            if b == 0xFF:
                payload = data[pos + 1 :]
                if not payload:
                    return None  # a payload marker without payload is a format error
                break
            pos += 1
            delta, length = b >> 4, b & 15
            if delta >= 13:
                if delta == 15:
                    return None
                delta = data[pos] + 13 if delta == 13 else int.from_bytes(data[pos : pos + 2]) + 269
                pos += 1 if delta < 269 else 2
            if length >= 13:
                if length == 15:
                    return None
                length = (
                    data[pos] + 13 if length == 13 else int.from_bytes(data[pos : pos + 2]) + 269
                )
                pos += 1 if length < 269 else 2
            number += delta
            value = data[pos : pos + length]
            if len(value) != length:
                return None
            pos += length
            if number == 11:
                path.append(value.decode())
            elif number == 12:
                cf = int.from_bytes(value, "big")
            elif number not in _PLAIN_OPTIONS:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    return data[1], data[4 : 4 + tkl], tuple(path), cf, payload


def code_for(reason: str) -> Code:
    """The response code that tells a device what happened to its dead-lettered frame."""
    word = reason.split(":", 1)[0].split(" ", 1)[0]
    if word in ("unknown_format", "content-format"):
        return Code.UNSUPPORTED_CONTENT_FORMAT
    if word in ("unknown_device", "disabled_device"):
        return Code.FORBIDDEN
    if word == "frame_too_large":
        return Code.REQUEST_ENTITY_TOO_LARGE
    if word in ("storage_rejected", "decoder_error", "stage_error"):
        return Code.INTERNAL_SERVER_ERROR
    return Code.BAD_REQUEST
