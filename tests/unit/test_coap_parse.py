"""The CoAP listener's fast request parser agrees with aiocoap's decoder on every message it
takes, and leaves to aiocoap every message it does not fully understand."""

from __future__ import annotations

import warnings

import aiocoap
from aiocoap import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.coap_frames import parse_plain as _parse_plain
from simulators.coap_client import encode, request_tail

SEGMENT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=20)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        msg = Message(
            code=draw(st.sampled_from([aiocoap.POST, aiocoap.PUT, aiocoap.GET])),
            mid=draw(st.integers(0, 0xFFFF)),
            token=draw(st.binary(max_size=8)),
            mtype=draw(st.sampled_from([aiocoap.CON, aiocoap.NON])),
            payload=draw(st.binary(max_size=300)),
        )
    msg.opt.uri_path = draw(st.lists(SEGMENT, max_size=6))
    if draw(st.booleans()):
        msg.opt.content_format = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        msg.opt.uri_query = draw(st.lists(SEGMENT, max_size=2))
    if draw(st.integers(0, 4)) == 0:
        msg.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, True, 6)
    if draw(st.integers(0, 4)) == 0:
        msg.opt.observe = 0
    raw: bytes = msg.encode()
    return raw


@settings(max_examples=500, deadline=None)
@given(raw=requests())
def test_the_fast_parser_agrees_with_aiocoap(raw: bytes) -> None:
    full = Message.decode(raw)
    got = _parse_plain(raw)
    others = [o for o in full.opt.option_list() if int(o.number) not in (3, 7, 11, 12, 15, 60)]
    if got is None:
        assert others, "a plain request was left to the slow path"
        return
    assert not others
    code, token, path, cf, payload = got
    assert (code, token, path, payload) == (
        int(full.code),
        full.token,
        tuple(full.opt.uri_path),
        full.payload,
    )
    assert cf == (None if full.opt.content_format is None else int(full.opt.content_format))


@given(data=st.binary(min_size=4, max_size=64))
def test_garbage_is_refused_or_parsed_never_raised(data: bytes) -> None:
    _parse_plain(data)


def test_the_fleet_client_encodes_what_aiocoap_reads() -> None:
    raw = encode(0, 7, b"\x01\x02", request_tail("/up/env/dev-1/nbiot-env", 42, b"\x00\x01"))
    msg = Message.decode(raw)
    assert (msg.mtype, msg.mid, msg.token) == (aiocoap.CON, 7, b"\x01\x02")
    assert (tuple(msg.opt.uri_path), int(msg.opt.content_format), msg.payload) == (
        ("up", "env", "dev-1", "nbiot-env"),
        42,
        b"\x00\x01",
    )
