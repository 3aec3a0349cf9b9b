"""LwM2M registrations as frames (decoders/lwm2m_rd.py) and notifications as frames
(ingest/lwm2m.py): exact values and exact reasons, table-driven."""

from __future__ import annotations

import json

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from hypothesis import given
from hypothesis import strategies as st

from core.frames import FrameBatch
from decoders.lwm2m_rd import DECODER, RegistrationError, parse_links, registration
from ingest.lwm2m import Lwm2mConfig, _notified


@pytest.mark.parametrize(
    ("links", "paths"),
    [
        ("</1/0>,</3/0>,</3303/0>;ver=1.1", ["/1/0", "/3/0", "/3303/0"]),
        ('</>;rt="oma.lwm2m";ct=11543,</1/0>,</3311>', ["/1/0", "/3311"]),
        ('</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3303/0>', ["/1/0", "/3303/0"]),
        ("</03303/00>", ["/3303/0"]),
        ("", []),
    ],
)
def test_object_links_give_their_objects_and_instances(links: str, paths: list[str]) -> None:
    assert parse_links(links) == paths


@pytest.mark.parametrize(
    ("links", "reason"),
    [
        ("</1/0>,", "bad link format: trailing ','"),
        ("</1/0>;", "bad link format at byte 6: expected ','"),
        ("</1/0> </3/0>", "bad link format at byte 6: expected ','"),
        ("<1/0>", "bad link format at byte 0: '<1/0>'"),
        ("</3303/0/5700>", "link '/3303/0/5700' is not an object or object instance"),
        ("</70000/0>", "link '/70000/0' is not an object or object instance"),
        ("</a/0>", "link '/a/0' is not an object or object instance"),
        ('</lwm2m>;rt="oma.lwm2m",</1/0>', "link '/1/0' is outside the alternate path '/lwm2m'"),
    ],
)
def test_links_that_are_not_link_format_are_refused_saying_where(links: str, reason: str) -> None:
    with pytest.raises(RegistrationError) as err:
        parse_links(links)
    assert str(err.value) == reason


@pytest.mark.parametrize(
    ("frame", "parsed"),
    [
        (
            b"register abc\nep=e1&lt=60&b=UQ&lwm2m=1.1\n</1/0>",
            ("register", "abc", 60, "UQ", "1.1", "</1/0>"),
        ),
        (b"register abc\nep=e1\n</1/0>", ("register", "abc", 86400, "U", "1.0", "</1/0>")),
        (b"register abc\nep=e1&Q\n</1/0>", ("register", "abc", 86400, "UQ", "1.0", "</1/0>")),
        (b"update abc\nlt=30\n", ("update", "abc", 30, None, None, "")),
        (b"update abc\n\n</3/0>", ("update", "abc", None, None, None, "</3/0>")),
        (b"deregister abc\n\n", ("deregister", "abc", None, None, None, "")),
    ],
)
def test_a_registration_frame_gives_its_values(frame: bytes, parsed: tuple[object, ...]) -> None:
    assert registration(frame) == parsed


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"register abc\nlt=60\n</1/0>", "Register without an endpoint name (ep)"),
        (b"register abc\nep=e1\n", "Register without object links"),
        (b"register abc\nep=e1&lt=0\n</1/0>", "lifetime lt='0' is not 1..2147483647 s"),
        (b"register abc\nep=e1&lt=-5\n</1/0>", "lifetime lt='-5' is not 1..2147483647 s"),
        (b"register abc\nep=e1&b=S\n</1/0>", "binding b='S' is not U or UQ (UDP only)"),
        (b"register abc\nep=e1&lwm2m=2.0\n</1/0>", "unsupported LwM2M version '2.0'"),
        (b"register a/b\nep=e1\n</1/0>", "bad location 'a/b'"),
        (b"observe abc\n\n", "unknown operation 'observe'"),
        (b"register abc\nep=e1\n</\xff>", "not UTF-8"),
    ],
)
def test_a_bad_registration_is_refused_with_its_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(RegistrationError) as err:
        registration(frame)
    assert str(err.value) == reason


def test_the_decoder_rejects_a_bad_frame_alone_and_rows_the_others() -> None:
    batch = FrameBatch("lwm2m-rd", "lwm2m")
    batch.append(b"register l1\nep=a&lt=60\n</1/0>", "/rd", "a", "lwm2m", 1_000_000)
    batch.append(b"register l2\nep=b\n</1/0>,<3/0", "/rd", "b", "lwm2m", 2_000_000)
    batch.append(b"deregister l1\n\n", "/rd/l1", "a", "lwm2m", 3_000_000)
    out = DECODER.decode_batch(batch)
    assert [(r.index, r.reason) for r in out.rejects] == [
        (1, "lwm2m_invalid: bad link format at byte 7: '<3/0'")
    ]
    rows = out.rows["lwm2m_registration_events"]
    assert rows.frame_index.tolist() == [0, 2]
    assert rows.columns["operation"].tolist() == [b"register", b"deregister"]
    assert rows.columns["time"].tolist() == [1_000_000, 3_000_000]
    assert rows.nulls["lifetime_s"].tolist() == [False, True]
    assert rows.devices.tolist() == [b"a", b"a"]


@given(st.binary(max_size=300))
def test_any_bytes_are_a_row_or_a_reject_never_an_exception(payload: bytes) -> None:
    batch = FrameBatch("lwm2m-rd", "lwm2m")
    batch.append(payload, "/rd", "e1", "lwm2m", 1)
    out = DECODER.decode_batch(batch)
    assert out.frames_ok + len(out.rejects) == 1


@pytest.mark.parametrize(
    ("cf", "payload", "decoded"),
    [
        (None, b"21.5", ("senml-json", [{"n": "/3303/0/5700", "v": 21.5}], "/3303/0/5700")),
        (0, b"true", ("senml-json", [{"n": "/3303/0/5700", "vb": True}], "/3303/0/5700")),
        (0, b"on", ("senml-json", [{"n": "/3303/0/5700", "vs": "on"}], "/3303/0/5700")),
    ],
)
def test_a_text_notification_becomes_a_senml_record_named_by_its_path(
    cf: int | None, payload: bytes, decoded: tuple[str, object, str]
) -> None:
    msg = Message(code=Code.CONTENT, payload=payload)
    if cf is not None:
        msg.opt.content_format = cf
    fmt, frame, source = _notified(msg, "/3303/0/5700")
    assert (fmt, json.loads(frame), source) == decoded


def test_a_tlv_notification_keeps_its_bytes_and_names_its_object_instance() -> None:
    msg = Message(code=Code.CONTENT, payload=b"\xe4\x16\x44\x41\x9c\x00\x00")
    msg.opt.content_format = 11542
    assert _notified(msg, "/3303/0/5700") == ("lwm2m-tlv", msg.payload, "/3303/0")


def test_observe_paths_must_be_lwm2m_paths() -> None:
    assert Lwm2mConfig(observe={"p": ["/3303/0/5700", "/3311"]}).observe["p"][1] == "/3311"
    with pytest.raises(ValueError, match="p: '3303/0' is not /object"):
        Lwm2mConfig(observe={"p": ["3303/0"]})
