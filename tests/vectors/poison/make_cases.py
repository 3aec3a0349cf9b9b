"""Writes the poison cases (run: python -m tests.vectors.poison.make_cases).

Each case is built here from the formats' own encoders or spelled out byte by byte, so its
SOURCE can say exactly what it is; the script decodes every case alone and refuses to write
one whose reject reason does not start with the declared prefix. Facts used: RFC 8428 §6
(SenML CBOR labels), RFC 8949 §3 (CBOR heads: 0xF97E00 is a half-precision NaN, 0xF97C00
+Infinity, 0x5B an 8-byte length), RFC 8259 (JSON; Python's json also reads NaN/Infinity),
RFC 3629 (UTF-8), OMA LwM2M 1.0 §6.4.3 (TLV), LLRP 1.0.1 §16.2, JT/T 808-2013 §4 and
Table 23, GB/T 32960.3-2016 §6-7, HJ 212-2017 §6, PostgreSQL's timestamp.h range.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from core.frames import FrameBatch
from decoders.compact import seal
from decoders.gbt32960 import frame as gbt_frame
from decoders.gbt32960 import realtime_data
from decoders.hj212 import _frame_bytes as hj_frame_bytes
from decoders.hj212 import frame as hj_frame
from decoders.jt808 import frame as jt_frame
from decoders.jt808 import location_body
from decoders.llrp import encode_report
from decoders.nbiot_env import encode_frame as nbiot_frame
from decoders.parking import encode_frame as parking_frame
from decoders.registry import load_registry
from decoders.streetlight import encode_frame as light_frame
from tests.poison import RECEIVED_US, PoisonCase

HERE = Path(__file__).parent
MIB = 1 << 20


@dataclass
class Case:
    """A poison case to write."""

    format: str
    name: str
    payload: bytes
    reason: str
    source: str
    path: str = ""
    device: str = ""
    gen: dict[str, object] | None = None


CASES: list[Case] = []
# The device each format's frames name (or need): every case carries one, as the topic of a
# real uplink always names a device, so no case is rejected for a device mismatch instead.
DEFAULT_DEVICE = {
    "senml-json": "d1",
    "senml-cbor": "d1",
    "jt808": "13800138000",
    "gbt32960": "LSVAU2180N2183294",
    "hj212": "AQ01",
    "nbiot-env": "861234567890123",
    "streetlight": "861234567890123",
    "parking-sensor": "861234567890123",
}


def case(fmt: str, name: str, payload: bytes, reason: str, source: str, **kw: str) -> None:
    """Declare a case."""
    kw.setdefault("device", DEFAULT_DEVICE.get(fmt, ""))
    CASES.append(Case(fmt, name, payload, reason, source, **kw))


def gen_case(
    fmt: str,
    name: str,
    prefix: bytes,
    repeat: bytes,
    times: int,
    reason: str,
    source: str,
    suffix: bytes = b"",
    **kw: str,
) -> None:
    """Declare a generated (large) case: prefix + repeat × times + suffix."""
    kw.setdefault("device", DEFAULT_DEVICE.get(fmt, ""))
    spec: dict[str, object] = {
        "prefix_hex": prefix.hex(),
        "repeat_hex": repeat.hex(),
        "times": times,
    }
    if suffix:
        spec["suffix_hex"] = suffix.hex()
    payload = prefix + repeat * times + suffix
    CASES.append(Case(fmt, name, payload, reason, source, gen=spec, **kw))


# ---------------------------------------------------------------- tagread-json
TAG = {"reader": "G-0101", "epc": "E2003412012345678901ABCD", "first_seen": 1767225600250}


def tag(**kw: object) -> bytes:
    """A canonical event with some fields replaced (None deletes), as Python's json writes it."""
    ev = {**TAG, **kw}
    return json.dumps({k: v for k, v in ev.items() if v is not None}).encode()


T = "tagread-json"
DEV = {"device": "G-0101"}
case(
    T,
    "antenna-int16-overflow",
    tag(antenna=70000),
    "out_of_range: antenna=70000 (int16)",
    "antenna 70000 does not fit vehicle_tag_reads.antenna (smallint); raised OverflowError "
    "and took the whole batch down before",
    **DEV,
)
case(
    T,
    "rssi-int16-underflow",
    tag(rssi=-40000),
    "out_of_range: rssi=-40000 (int16)",
    "rssi below smallint",
    **DEV,
)
case(
    T,
    "count-int32-overflow",
    tag(count=2**31),
    "out_of_range: count=2147483648 (int32)",
    "read count one above integer's maximum",
    **DEV,
)
case(
    T,
    "first-seen-beyond-int64",
    tag(first_seen=10**19),
    "out_of_range: first_seen=",
    "epoch milliseconds whose µs do not fit int64 (timestamptz)",
    **DEV,
)
case(
    T,
    "last-seen-before-4713bc",
    tag(last_seen=-(10**16)),
    "out_of_range: last_seen=",
    "epoch milliseconds before PostgreSQL's earliest timestamptz (4713 BC)",
    **DEV,
)
case(
    T,
    "first-seen-float-overflow",
    tag(first_seen=1e306),
    "out_of_range: first_seen=",
    "a finite float whose product with 1000 overflows",
    **DEV,
)
case(
    T,
    "first-seen-nan",
    tag(first_seen=float("nan")),
    "not_finite: first_seen=nan",
    "Python's json reads the NaN token",
    **DEV,
)
case(
    T,
    "first-seen-infinity",
    tag(first_seen=float("inf")),
    "not_finite: first_seen=inf",
    "Python's json reads the Infinity token",
    **DEV,
)
case(
    T,
    "antenna-nan",
    tag(antenna=float("nan")),
    "not_finite: antenna=nan",
    "NaN where an integer is required",
    **DEV,
)
case(
    T,
    "plate-nul",
    tag(plate="粤B\x0012345"),
    "bad_text: plate contains a NUL byte",
    "JSON \\u0000 in the plate: PostgreSQL's text refuses NUL",
    **DEV,
)
case(
    T,
    "plate-lone-surrogate",
    b'{"reader": "G-0101", "epc": "E2", "first_seen": 1, "plate": "\\ud800"}',
    "bad_text: plate is not valid UTF-8",
    "a JSON escape of a lone UTF-16 surrogate: not encodable as UTF-8",
    **DEV,
)
case(
    T,
    "invalid-utf8",
    b'{"reader": "G-0101", "epc": "E2", "first_seen": 1, "plate": "\xff"}',
    "json_invalid:",
    "a raw 0xFF byte in a string (RFC 8259 §8.1: JSON text is UTF-8)",
    **DEV,
)
gen_case(
    T,
    "deep-nesting",
    b"",
    b"[",
    5000,
    "too_deep: event nested over 32 levels",
    "5,000 nested arrays: json.loads would recurse once per level",
    **DEV,
)
case(T, "truncated", tag()[:-7], "json_invalid:", "the event cut 7 bytes short", **DEV)
case(
    T, "trailing-garbage", tag() + b"}}", "json_invalid: Extra data", "a valid event then }}", **DEV
)
gen_case(
    T,
    "one-mib-unterminated-escaped-string",
    b"[" * 40 + b'"',
    b'\\"',
    MIB // 2,
    "too_deep: event nested over 32 levels",
    "40 '[' then a string of 2^19 escaped quotes that never ends: the depth pre-check's string "
    "regex rescanned from every quote (quadratic: a hang); now one pass",
    **DEV,
)
gen_case(
    T,
    "integer-over-4300-digits",
    b'{"reader": "G-0101", "epc": "E2", "first_seen": ',
    b"1",
    5000,
    "json_invalid: Exceeds the limit (4300 digits)",
    "a 5,000-digit integer: Python's json raises a plain ValueError (int conversion limit), "
    "which escaped the decoder and took the batch down",
    b"}",
    **DEV,
)
gen_case(
    T,
    "one-mib-plate",
    b'{"reader": "G-0101", "epc": "E2", "first_seen": 1, "plate": "',
    b"A",
    MIB,
    "too_long: plate has 1048576 characters, max 256",
    "a 1 MiB plate: numpy would hold the whole batch's plate column at 1 MiB a row",
    b'"}',
    **DEV,
)
case(
    T,
    "epc-over-256-hex-digits",
    tag(epc="E2" * 150),
    "too_long: epc has 300 characters, max 256",
    "an EPC of 300 hex digits (Gen2 EPCs have at most 496 bits, 124 digits)",
    **DEV,
)
gen_case(
    T,
    "one-mib-unterminated-array",
    b"[",
    tag() + b",",
    MIB // len(tag()),
    "json_invalid:",
    "about 1 MiB: an array of valid events that never closes",
    **DEV,
)

# ---------------------------------------------------------------- senml-json
S = "senml-json"
case(
    S,
    "v-nan",
    b'[{"bn":"d1/","n":"t","v":NaN}]',
    "not_finite: record 0: v=nan",
    "Python's json reads NaN; the record was silently dropped before (neither row nor reject)",
)
case(
    S,
    "v-infinity",
    b'[{"bn":"d1/","n":"t","v":Infinity}]',
    "not_finite: record 0: v=inf",
    "the Infinity token",
)
case(
    S,
    "v-minus-infinity",
    b'[{"bn":"d1/","n":"t","v":-Infinity}]',
    "not_finite: record 0: v=-inf",
    "the -Infinity token",
)
case(
    S,
    "v-1e400",
    b'[{"bn":"d1/","n":"t","v":1e400}]',
    "not_finite: record 0: v=inf",
    "a decimal beyond float64: json reads it as inf",
)
case(
    S,
    "bt-nan",
    b'[{"bn":"d1/","bt":NaN,"n":"t","v":1}]',
    "not_finite: record 0: bt=nan",
    "NaN base time",
)
case(S, "s-nan", b'[{"bn":"d1/","n":"t","s":NaN}]', "not_finite: record 0: s=nan", "NaN sum")
case(
    S,
    "v-huge-integer",
    b'[{"bn":"d1/","n":"t","v":1' + b"0" * 400 + b"}]",
    "senml_invalid: record 0: 'v' is out of range",
    "an integer beyond float64",
)
case(
    S,
    "time-beyond-2200",
    b'[{"bn":"d1/","n":"t","v":1,"bt":1e300}]',
    "senml_invalid: record 0: time 1e+300 out of range",
    "a time whose µs do not fit int64 (timestamptz); cityflux caps SenML times at 2200",
)
case(
    S,
    "sum-overflow",
    b'[{"bn":"d1/","bs":1e308,"n":"t","s":1e308}]',
    "senml_invalid: record 0: sum must be finite",
    "bs + s overflows float64",
)
case(
    S,
    "value-overflow",
    b'[{"bn":"d1/","bv":1e308,"n":"t","v":1e308}]',
    "senml_invalid: record 0: value must be finite",
    "bv + v overflows float64",
)
case(
    S,
    "unit-nul",
    b'[{"bn":"d1/","u":"\\u0000"}]',
    "bad_text: record 0: u contains a NUL byte",
    "a record without n takes its unit as the metric: a NUL would reach a TEXT column",
)
case(
    S,
    "unit-lone-surrogate",
    b'[{"bn":"d1/","u":"\\udfff","v":1}]',
    "bad_text: record 0: u is not valid UTF-8",
    "a lone surrogate escape in the unit",
)
case(
    S,
    "invalid-utf8",
    b'[{"bn":"d1/","n":"t","u":"\xc3\x28","v":1}]',
    "json_invalid:",
    "0xC3 0x28 is not UTF-8 (RFC 8428 §6: payloads are UTF-8)",
)
gen_case(
    S,
    "deep-nesting",
    b"",
    b"[",
    5000,
    "too_deep: pack nested over 32 levels",
    "5,000 nested arrays, closed: json.loads would recurse once per level",
    b"]" * 5000,
)
case(
    S,
    "deep-nesting-in-a-string-is-not-depth",
    b'[{"bn":"d1/","n":"t","vs":"' + b"[" * 100 + b'","v":NaN}]',
    "not_finite: record 0: v=nan",
    "brackets inside a string do not count as nesting (the depth pre-check blanks strings)",
)
case(S, "truncated", b'[{"bn":"d1/","n":"t","v":21.', "json_invalid:", "cut inside a number")
gen_case(
    S,
    "one-mib-unterminated-escaped-string",
    b"[" * 40 + b'"',
    b'\\"',
    MIB // 2,
    "too_deep: pack nested over 32 levels",
    "40 '[' then a string of 2^19 escaped quotes that never ends: the depth pre-check's string "
    "regex rescanned from every quote (quadratic: a hang); now one pass",
)
gen_case(
    S,
    "integer-over-4300-digits",
    b'[{"bn":"d1/","n":"t","v":',
    b"1",
    5000,
    "json_invalid: Exceeds the limit (4300 digits)",
    "a 5,000-digit integer: Python's json raises a plain ValueError (int conversion limit), "
    "which escaped the decoder and took the batch down",
    b"}]",
)
gen_case(
    S,
    "one-mib-name",
    b'[{"bn":"d1/","n":"',
    b"a",
    MIB,
    "too_long: record 0: name has 1048579 characters, max 256",
    "a 1 MiB record name: one such metric among 40,000 rows would need 40 GB of numpy column "
    "(measured: 400 MB for a 100 kB name in a 2,000-frame batch)",
    b'","v":1}]',
)
case(
    S,
    "unit-over-256",
    b'[{"bn":"d1/","u":"' + b"a" * 300 + b'","v":1}]',
    "too_long: record 0: u has 300 characters, max 256",
    "a 300-character unit (it becomes the metric of a record without n)",
)
gen_case(
    S,
    "one-mib-of-brackets",
    b"",
    b"[",
    MIB,
    "too_deep: pack nested over 32 levels",
    "1 MiB of '[': rejected by the depth pre-check without parsing",
)

# ---------------------------------------------------------------- senml-cbor
C = "senml-cbor"
HEAD = bytes.fromhex("a3") + bytes.fromhex("21") + bytes.fromhex("63") + b"d1/" + b"\x00\x61t"
# {-2: "d1/", 0: "t", 2: <value>} as a one-record array: 81 a3 21 63 'd1/' 00 61 't' 02 <value>
case(
    C,
    "v-nan",
    b"\x81" + HEAD + b"\x02\xf9\x7e\x00",
    "not_finite: record 0: v=nan",
    "half-precision NaN (RFC 8949 §3.3, 0xF97E00): was silently dropped before",
)
case(
    C,
    "v-infinity",
    b"\x81" + HEAD + b"\x02\xf9\x7c\x00",
    "not_finite: record 0: v=inf",
    "half-precision +Infinity (0xF97C00)",
)
case(
    C,
    "v-minus-infinity",
    b"\x81" + HEAD + b"\x02\xfb" + struct.pack(">d", float("-inf")),
    "not_finite: record 0: v=-inf",
    "double-precision -Infinity",
)
case(
    C,
    "t-bignum",
    b"\x81\xa4\x21\x63d1/\x00\x61t\x02\x01\x06\xc2\x59\x01\x00" + b"\xff" * 256,
    "senml_invalid: record 0: 't' is out of range",
    "t as a 2048-bit bignum (tag 2)",
)
case(
    C,
    "unit-nul",
    b"\x81\xa2\x21\x63d1/\x01\x61\x00",
    "bad_text: record 0: u contains a NUL byte",
    "unit text string holding U+0000 (becomes the metric)",
)
case(
    C,
    "invalid-utf8",
    b"\x81\xa3\x21\x63d1/\x00\x62\xc3\x28\x02\x01",
    "cbor_invalid:",
    "a text string that is not UTF-8 (RFC 8949 §3.1 major type 3)",
)
gen_case(
    C,
    "deep-nesting-5000",
    b"",
    b"\x81",
    5000,
    "too_deep: pack nested over 32 levels",
    "5,000 nested one-element arrays (cbor2 stops at 400 itself; reported as too_deep)",
)
case(
    C,
    "deep-nesting-40",
    b"\x81" * 40 + b"\x00",
    "too_deep: pack nested over 32 levels",
    "40 levels: under cbor2's own limit, over cityflux's cap",
)
case(
    C,
    "truncated",
    b"\x81" + HEAD + b"\x02\xfb\x40",
    "cbor_invalid:",
    "a double cut after its first byte",
)
case(
    C,
    "length-lies",
    b"\x81\xa1\x03\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",
    "cbor_invalid:",
    "vs as a byte string whose 8-byte length says 2^63-1 bytes; 0 follow",
)
gen_case(
    C,
    "one-mib-name",
    b"\x81\xa3\x21\x63d1/\x00\x7a" + struct.pack(">I", MIB),
    b"a",
    MIB,
    "too_long: record 0: name has 1048579 characters, max 256",
    "n as a 1 MiB text string (major type 3, 4-byte length)",
    b"\x02\x01",
)
gen_case(
    C,
    "one-mib-array-of-nulls",
    b"\x9a" + struct.pack(">I", MIB),
    b"\xf6",
    MIB,
    "senml_invalid: record 0: must be a JSON object",
    "1 MiB: an array of 2^20 nulls",
)

# ---------------------------------------------------------------- lwm2m-rd
R = "lwm2m-rd"
RD = {"device": "thermo-1"}
case(
    R,
    "link-without-brackets",
    b"register 5a3f0c9e1b\nep=thermo-1&lt=300\n</1/0>,3/0",
    "lwm2m_invalid: bad link format at byte 7",
    "a Register whose second object link lacks its <> (RFC 6690 §2 link-value)",
    **RD,
)
case(
    R,
    "lifetime-beyond-int32",
    b"register 5a3f0c9e1b\nep=thermo-1&lt=99999999999\n</1/0>",
    "lwm2m_invalid: lifetime lt='99999999999'",
    "a lifetime that does not fit the lifetime_s column (int4)",
    **RD,
)
case(
    R,
    "links-of-64-kib",
    b"register 5a3f0c9e1b\nep=thermo-1\n" + b",".join([b"</3303/0>"] * 6_554),
    "lwm2m_invalid: object links longer than 4096 bytes",
    "64 KiB of object links (6,554 instances)",
    **RD,
)
case(
    R,
    "not-utf8",
    b"register 5a3f0c9e1b\nep=thermo-1\n</\xff/0>",
    "lwm2m_invalid: not UTF-8",
    "a link with a byte that is not UTF-8 (RFC 3629)",
    **RD,
)
case(
    R,
    "resource-link",
    b"register 5a3f0c9e1b\nep=thermo-1\n</3303/0/5700>",
    "lwm2m_invalid: link '/3303/0/5700' is not an object or object instance",
    "a resource among the object links (Core §6.2.1 lists objects and instances only)",
    **RD,
)

# ---------------------------------------------------------------- lwm2m-tlv
L = "lwm2m-tlv"
LW = {"path": "/3303/0", "device": "ep-1"}


def nest(depth: int, leaf: bytes) -> bytes:
    """``depth`` object-instance TLVs (16-bit lengths), each holding the next, then the leaf."""
    out = leaf
    for _ in range(depth):
        out = bytes([0x10, 0]) + struct.pack(">H", len(out)) + out
    return out


FLOAT_5700 = bytes.fromhex("e41644")  # resource 5700, 16-bit id, 4-byte value
case(
    L,
    "deep-nesting-5000",
    nest(5000, FLOAT_5700 + b"\x41\xac\x00\x00"),
    "too_deep: TLV nested over 3 levels",
    "5,000 nested object-instance TLVs: raised RecursionError before",
    **LW,
)
case(
    L,
    "nesting-4-levels",
    nest(4, FLOAT_5700 + b"\x41\xac\x00\x00"),
    "too_deep: TLV nested over 3 levels",
    "one level deeper than object instance > multiple resource > resource instance",
    **LW,
)
case(
    L,
    "float-nan",
    FLOAT_5700 + b"\x7f\xc0\x00\x00",
    "not_finite: temperature=nan",
    "5700 sensor value as a 4-byte IEEE NaN",
    **LW,
)
case(
    L,
    "float-infinity",
    bytes.fromhex("e8164408") + struct.pack(">d", float("inf")),
    "not_finite: temperature=inf",
    "5700 as an 8-byte +Infinity (length in an 8-bit field)",
    **LW,
)
case(
    L,
    "timestamp-out-of-range",
    bytes.fromhex("e8158e08") + b"\x7f" + b"\xff" * 7,
    "out_of_range: temperature.time=",
    "5518 timestamp = 2^63-1 s: µs beyond timestamptz",
    **LW,
)
case(
    L,
    "instance-where-a-value-belongs",
    bytes.fromhex("281644") + bytes([7]) + FLOAT_5700 + b"\x41\xac\x00\x00",
    "lwm2m_invalid: resource 5700: an object instance",
    "an object instance TLV with id 5700 inside the instance the path names",
    **LW,
)
case(L, "truncated-header", b"\xe4\x16", "truncated: TLV header", "type byte and half an id", **LW)
case(
    L,
    "length-lies",
    bytes.fromhex("f01644ffff") + b"\x00\x00",
    "truncated: TLV 5700 needs 65535 bytes",
    "a 16-bit length of 65535 with 2 bytes after it",
    **LW,
)
gen_case(
    L,
    "one-mib-resource",
    bytes.fromhex("f8164410") + b"\x00\x00",
    b"\x00",
    MIB,
    "lwm2m_invalid: resource 5700: a float has 4 or 8 bytes",
    "1 MiB: resource 5700 with a 24-bit length of 2^20 (a float has 4 or 8 bytes)",
    **LW,
)

# ---------------------------------------------------------------- llrp
R = "llrp"
RD = {"device": "G-0101"}
READ = {
    "epc": "300833B2DDD9014000000001",
    "antenna": 2,
    "rssi": -58,
    "first_us": 1_767_225_600_250_000,
    "last_us": 1_767_225_600_400_000,
    "count": 3,
}
case(
    R,
    "antenna-int16-overflow",
    encode_report([{**READ, "antenna": 65535}]),
    "out_of_range: antenna=65535 (int16)",
    "AntennaID (TV 1, u16) 65535 > smallint",
    **RD,
)
case(
    R,
    "first-seen-u64-max",
    encode_report([{**READ, "first_us": 2**64 - 1}]),
    "out_of_range: first_seen=18446744073709551615 (timestamptz)",
    "FirstSeenTimestampUTC (TV 2, u64 µs) beyond int64",
    **RD,
)
case(
    R,
    "last-seen-u64-max",
    encode_report([{**READ, "last_us": 2**64 - 1}]),
    "out_of_range: last_seen=18446744073709551615 (timestamptz)",
    "LastSeenTimestampUTC (TV 4) beyond int64",
    **RD,
)
GOOD = encode_report([READ])
case(R, "truncated-header", GOOD[:7], "truncated: need 10 header bytes", "7 header bytes", **RD)
case(
    R,
    "message-length-lies",
    GOOD[:2] + struct.pack(">I", len(GOOD) + 100) + GOOD[6:],
    "llrp_invalid: header says",
    "message length 100 bytes longer than the message",
    **RD,
)
case(
    R,
    "parameter-length-lies",
    GOOD[:12] + struct.pack(">H", 0xFFFF) + GOOD[14:],
    "llrp_invalid: TLV parameter 240 at offset 10 has bad length 65535",
    "TagReportData claims 65535 bytes",
    **RD,
)
EPCDATA = struct.pack(">HH", 241, 4 + 2 + 2) + struct.pack(">H", 96) + b"\x30\x08"
INNER = EPCDATA + b"\x82" + struct.pack(">Q", 1_767_225_600_250_000)
BODY = struct.pack(">HH", 240, 4 + len(INNER)) + INNER
case(
    R,
    "epcdata-bit-count-lies",
    struct.pack(">HII", 0x043D, 10 + len(BODY), 1) + BODY,
    "truncated: EPCData says 96 bits, has 2 bytes",
    "EPCData (TLV 241) says 96 bits, holds 16",
    **RD,
)
case(
    R,
    "unknown-tv-parameter",
    GOOD[:14] + b"\xff" + GOOD[15:],
    "llrp_invalid: unknown TV parameter 127",
    "TV type 127 (not in LLRP 1.0.1)",
    **RD,
)
_EPC = struct.pack(">HH", 241, 4 + 2 + 8192) + struct.pack(">H", 65535)
_SEEN = b"\x82" + struct.pack(">Q", 1_767_225_600_250_000)
_TRD = struct.pack(">HH", 240, 4 + len(_EPC) + 8192 + len(_SEEN))
gen_case(
    R,
    "epcdata-65535-bits",
    struct.pack(">HII", 0x043D, 10 + len(_TRD) + len(_EPC) + 8192 + len(_SEEN), 1) + _TRD + _EPC,
    b"\x00",
    8192,
    "too_long: epc has 16384 characters, max 256",
    "EPCData (TLV 241) with 65535 bits: 16,384 hex digits of EPC",
    _SEEN,
    **RD,
)
gen_case(
    R,
    "one-mib-of-zeros",
    b"\x04\x3d" + struct.pack(">II", 10 + MIB, 1),
    b"\x00",
    MIB,
    "llrp_invalid: TLV parameter 0 at offset 10 has bad length 0",
    "1 MiB after a header whose length is right: zero TLV lengths",
    **RD,
)

# ---------------------------------------------------------------- jt808
J = "jt808"
LOC = location_body(22.5, 114.0, time="260101083000", speed_kmh=60)
case(
    J,
    "heading-int16-overflow",
    jt_frame(
        0x0200, "13800138000", 7, location_body(22.5, 114.0, time="260101083000", heading=40000)
    ),
    "out_of_range: heading=40000 (int16)",
    "direction W = 40000 > smallint",
    device="13800138000",
)
good = jt_frame(0x0200, "13800138000", 7, LOC)
case(
    J,
    "checksum-wrong",
    good[:-2] + bytes([good[-2] ^ 0x01]) + good[-1:],
    "checksum_mismatch",
    "last checksum bit flipped (checksum is not 0x7D/0x7E here)",
)


def jt_raw(head_and_body: bytes) -> bytes:
    """Frame already-built header+body bytes with a correct checksum and escaping."""
    check = 0
    for b in head_and_body:
        check ^= b
    raw = head_and_body + bytes([check])
    return b"\x7e" + raw.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02") + b"\x7e"


PHONE = bytes.fromhex("013800138000")
case(
    J,
    "body-length-lies",
    jt_raw(struct.pack(">HH", 0x0200, 500) + PHONE + b"\x00\x07" + LOC),
    "jt808_invalid: header says 500 body bytes",
    "properties say 500 body bytes, 28 follow",
)
case(
    J,
    "truncated-body",
    jt_raw(struct.pack(">HH", 0x0200, 10) + PHONE + b"\x00\x07" + LOC[:10]),
    "truncated: body shorter than its fields",
    "a 0x0200 body of 10 bytes (28 needed)",
)
case(
    J,
    "batch-count-lies",
    jt_raw(
        struct.pack(">HH", 0x0704, 3 + 2 + len(LOC))
        + PHONE
        + b"\x00\x07"
        + struct.pack(">HB", 65535, 0)
        + struct.pack(">H", len(LOC))
        + LOC
    ),
    "truncated: body shorter than its fields",
    "0x0704 says 65535 items, holds 1",
)
case(
    J,
    "extra-item-length-lies",
    jt_raw(struct.pack(">HH", 0x0200, len(LOC) + 3) + PHONE + b"\x00\x07" + LOC + b"\x01\xff\x00"),
    "jt808_invalid: extra item 0x01 shorter",
    "extra item 0x01 says 255 bytes, 1 follows",
)
case(
    J,
    "bad-bcd-time",
    jt_raw(
        struct.pack(">HH", 0x0200, len(LOC))
        + PHONE
        + b"\x00\x07"
        + LOC[:22]
        + b"\x26\x13\x01\x08\x30\x00"
    ),
    "jt808_invalid: bad fix time",
    "month 13 in the BCD time",
)
case(
    J,
    "truncated-frame",
    good[:8] + b"\x7e",
    "truncated: need at least 13 bytes",
    "7 bytes between the delimiters",
)
case(J, "no-end-delimiter", good[:-1], "bad_delimiter:", "the closing 0x7E is missing")
gen_case(
    J,
    "one-mib-of-zeros",
    b"\x7e",
    b"\x00",
    MIB,
    "bad_delimiter:",
    "1 MiB of zeros after 0x7E, no closing delimiter",
)

# ---------------------------------------------------------------- gbt32960
G = "gbt32960"
VIN = "LSVAU2180N2183294"
gb = gbt_frame(0x02, VIN, realtime_data())
case(G, "bcc-wrong", gb[:-1] + bytes([gb[-1] ^ 0xFF]), "bcc_mismatch", "BCC inverted")
case(G, "truncated-header", gb[:20], "truncated: need at least 25 bytes", "20 bytes")
case(
    G,
    "data-length-lies",
    gb[:22] + struct.pack(">H", 0xFFFF) + gb[24:],
    "length_mismatch:",
    "data length 65535 in a shorter frame",
)


def gb_fix(raw: bytes) -> bytes:
    """Set a frame's data length and BCC to match its bytes (for cases inside the data)."""
    body = raw[2:-1]
    body = body[:20] + struct.pack(">H", len(body) - 22) + body[22:]
    bcc = 0
    for b in body:
        bcc ^= b
    return b"##" + body + bytes([bcc])


DATA_AT = 24  # data starts after ## + command + ack + VIN + encryption + length
case(
    G,
    "vehicle-unit-truncated",
    gb_fix(gb[: DATA_AT + 6 + 1 + 5] + b"\x00"),
    "truncated: information type 0x01",
    "the 20-byte vehicle unit cut to 5 bytes",
)
case(
    G,
    "custom-unit-length-lies",
    gb_fix(gb[: DATA_AT + 6] + b"\x80\xff\xff\x00\x00"),
    "truncated: information type 0x80",
    "a custom unit (0x80) says 65535 bytes",
)
case(
    G,
    "vin-not-ascii",
    gb_fix(gb[:4] + b"\xff" * 17 + gb[21:]),
    "gbt32960_invalid: VIN",
    "a VIN of 0xFF bytes",
)
case(
    G,
    "bad-data-time",
    gb_fix(gb[:DATA_AT] + bytes([26, 13, 1, 8, 30, 0]) + gb[DATA_AT + 6 :]),
    "gbt32960_invalid: bad data time",
    "month 13",
)
case(
    G,
    "encrypted",
    gb_fix(gb[:21] + b"\x03" + gb[22:]),
    "gbt32960_invalid: encrypted",
    "encryption 0x03 (AES128)",
)
gen_case(
    G,
    "one-mib-of-zeros",
    b"##\x02\xfe" + VIN.encode() + b"\x01\x00\x06",
    b"\x00",
    MIB,
    "length_mismatch:",
    "1 MiB of data behind a data length of 6",
)

# ---------------------------------------------------------------- hj212
H = "hj212"
SEG = "QN=20240101120000000;ST=22;CN=2011;PW=123456;MN=AQ01;Flag=4;CP=&&DataTime=20240101120000;"
case(
    H,
    "value-nan",
    hj_frame(SEG + "a34004-Rtd=nan,a34004-Flag=N&&"),
    "not_finite: a34004-Rtd=nan",
    "float() reads 'nan': must not become a row",
)
case(
    H,
    "value-1e999",
    hj_frame(SEG + "a34004-Rtd=1e999,a34004-Flag=N&&"),
    "not_finite: a34004-Rtd=inf",
    "a decimal beyond float64",
)
case(
    H,
    "status-value-infinity",
    hj_frame(SEG.replace("CN=2011", "CN=2021") + "SB1-RS=inf&&"),
    "not_finite: SB1-RS=inf",
    "an equipment-status value of inf (device_status)",
)
hj = hj_frame(SEG + "a34004-Rtd=35,a34004-Flag=N&&")
case(H, "crc-wrong", hj[:-6] + b"0000\r\n", "crc_mismatch", "CRC field replaced by 0000")
case(
    H,
    "length-lies",
    b"##9999" + hj[6:],
    "length_mismatch: header says 9999 bytes",
    "data-segment length 9999",
)
case(H, "truncated", hj[:8], "truncated: need at least 10 bytes", "8 bytes")
case(
    H,
    "cp-invalid-utf8",
    hj_frame_bytes((SEG + "a34004-Rtd=35,a34004-Flag=").encode() + b"\xff&&"),
    "bad_text: CP section is not valid UTF-8",
    "a data flag byte 0xFF would reach hj212_readings.flag (TEXT)",
)
case(
    H,
    "cp-nul",
    hj_frame_bytes((SEG + "a34004-Rtd=35,a34004-Flag=").encode() + b"N\x00&&"),
    "bad_text: CP section contains a NUL byte",
    "a NUL inside a data flag",
)
case(
    H,
    "mn-nul",
    hj_frame_bytes(SEG.replace("MN=AQ01", "MN=AQ\x0001").encode() + b"a34004-Rtd=35&&"),
    "bad_text: MN contains a NUL byte",
    "a NUL in the station id",
)
case(
    H,
    "bad-datatime",
    hj_frame(SEG.replace("DataTime=20240101120000", "DataTime=20241301120000") + "a34004-Rtd=35&&"),
    "hj212_invalid: bad DataTime",
    "month 13",
)
_LONG = hj_frame("MN=AQ01;CN=2011;" + "a" * 9880 + ";CP=&&DataTime=20240101120000;a34004-Rtd=1&&")
gen_case(
    H,
    "header-item-without-equals",
    _LONG[:22],
    b"a",
    9880,
    "hj212_invalid: header field 'aaaa",
    "a 9,880-character header item without '=': the header regex used to rescan it from each "
    "character (quadratic, 1 s per frame); now split, linear",
    _LONG[22 + 9880 :],
)
case(
    H,
    "mn-over-256",
    hj_frame(SEG.replace("MN=AQ01", "MN=" + "A" * 300) + "a34004-Rtd=35&&"),
    "too_long: MN has 300 characters, max 256",
    "a 300-character station id (the standard's MN has 24)",
)
case(
    H,
    "status-key-over-24",
    hj_frame(SEG.replace("CN=2011", "CN=2021") + "SB" + "1" * 30 + "-RS=1&&"),
    "hj212_invalid: item 'SB111",
    "an equipment-status key of 35 characters (keys are capped like factor codes)",
)
gen_case(
    H,
    "one-mib-segment",
    b"##9999",
    b"A",
    MIB,
    "length_mismatch:",
    "1 MiB behind a 4-digit length field",
)

# ---------------------------------------------------------------- nbiot-env, streetlight, parking
PARKING_OK = parking_frame(861234567890123, 1_767_225_600, 1, occupied=True)
for fmt, good_frame, size in (
    ("parking-sensor", PARKING_OK, 30),
    (
        "nbiot-env",
        nbiot_frame(
            861234567890123,
            1_767_225_600,
            1,
            temperature=20,
            humidity=50,
            pm2_5=10,
            pm10=20,
            noise=40,
            battery=3600,
            rssi=-80,
        ),
        32,
    ),
    (
        "streetlight",
        light_frame(
            861234567890123,
            1_767_225_600,
            1,
            voltage=230.1,
            current=0.35,
            power=80.5,
            energy_kwh=1234.5,
            dimming=70,
            lamp_on=True,
        ),
        34,
    ),
):
    body = good_frame[:-2]
    case(
        fmt,
        "crc-wrong",
        body + bytes([good_frame[-2] ^ 0xFF, good_frame[-1]]),
        "crc_mismatch",
        "CRC high byte inverted",
    )
    case(
        fmt,
        "truncated",
        good_frame[:-5],
        f"truncated: need {size} bytes, got {size - 5}",
        "5 bytes short",
    )
    case(
        fmt,
        "imei-over-15-digits",
        seal(body[:2] + struct.pack(">Q", 2**64 - 1) + body[10:]),
        "out_of_range: imei=18446744073709551615 (15 digits)",
        "IMEI field u64 max: 20 digits would lose its leading ones",
    )
    case(fmt, "bad-magic", seal(b"\x00" + body[1:]), "bad_magic:", "magic 0x00")
    case(
        fmt,
        "unsupported-version",
        seal(body[:1] + b"\x09" + body[2:]),
        "unsupported_version: 9",
        "version 9",
    )
    gen_case(
        fmt,
        "one-mib",
        good_frame,
        b"\x00",
        MIB,
        f"too_long: expected {size} bytes",
        "a valid frame followed by 1 MiB of zeros",
    )

case(
    "parking-sensor",
    "occupancy-out-of-range",
    seal(PARKING_OK[:16] + b"\x07" + PARKING_OK[17:-2]),
    "parking_invalid: occupancy 7 (0 free, 1 occupied, 255 calibrating)",
    "occupancy byte 7: neither free, occupied nor calibrating (a valid CRC over it)",
)

# ---------------------------------------------------------------- value
V = "value"
VP = {"path": "/temperature", "device": "esp-kitchen"}
case(V, "nan", b"nan", "value_invalid: value must be finite", "float() reads nan", **VP)
case(V, "minus-infinity", b"-Infinity", "value_invalid: value must be finite", "-Infinity", **VP)
case(V, "1e400", b"1e400", "value_invalid: value must be finite", "beyond float64", **VP)
case(V, "nul", b"21.5\x00", "value_invalid: NUL byte in payload", "a trailing NUL", **VP)
case(V, "invalid-utf8", b"\xff21.5", "value_invalid: not a number", "a 0xFF byte", **VP)
case(V, "empty", b"", "value_invalid: not a number", "an empty payload", **VP)
gen_case(
    V,
    "one-mib",
    b"",
    b"9",
    MIB,
    "value_invalid: payload longer than 64 bytes",
    "1 MiB of digits",
    **VP,
)


def _readable(payload: bytes) -> bool:
    """Printable UTF-8 text (written as frame.txt; anything else as frame.hex)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and text.isprintable() and len(payload) < 4096


def write() -> None:
    """Check every case against its decoder, then (re)write the case folders."""
    registry = load_registry()
    for c in CASES:
        pc = PoisonCase(c.format, c.name, c.payload, c.reason, c.path, c.device)
        batch = FrameBatch(c.format, "poison")
        batch.append(c.payload, pc.source, c.device, "", RECEIVED_US)
        out = registry.get(c.format).decode_batch(batch)
        got = [r.reason for r in out.rejects]
        if len(got) != 1 or not got[0].startswith(c.reason):
            raise SystemExit(f"{c.format}/{c.name}: expected {c.reason!r}, got {got}")
    for fmt in {c.format for c in CASES}:
        shutil.rmtree(HERE / fmt, ignore_errors=True)
    for c in CASES:
        d = HERE / c.format / c.name
        d.mkdir(parents=True)
        if c.gen is not None:
            (d / "frame.gen").write_text(json.dumps(c.gen) + "\n")
        elif _readable(c.payload):
            (d / "frame.txt").write_bytes(c.payload + b"\n")
        else:
            (d / "frame.hex").write_text(c.payload.hex() + "\n")
        (d / "reason").write_text(c.reason + "\n")
        (d / "SOURCE").write_text(
            f"{c.source}.\nBuilt by tests/vectors/poison/make_cases.py ({c.format}, {c.name}).\n"
        )
        if c.path:
            (d / "path").write_text(c.path + "\n")
        if c.device:
            (d / "device").write_text(c.device + "\n")
    print(f"{len(CASES)} cases")


if __name__ == "__main__":
    write()
