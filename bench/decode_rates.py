"""Frames/s of each decoder, single process, batches of 10,000 frames."""

from __future__ import annotations

import gzip
import json
import struct
import time

import cbor2

from core.frames import FrameBatch
from decoders.gbt32960 import frame as gbt32960_frame
from decoders.gbt32960 import realtime_data as gbt32960_realtime
from decoders.jt808 import frame as jt808_frame
from decoders.jt808 import location_body
from decoders.llrp import encode_report
from decoders.nbiot_env import encode_frame
from decoders.registry import load_registry
from decoders.streetlight import encode_frame as streetlight_frame
from simulators.corpus import hj212_corpus_dir

BATCH = 10_000


def _batches(
    frames: list[bytes], name: str, source: str = "bench", device: str = ""
) -> list[FrameBatch]:
    out = []
    for start in range(0, len(frames), BATCH):
        b = FrameBatch(name, "bench")
        for f in frames[start : start + BATCH]:
            b.append(f, source, device, "", 1_767_225_600_000_000)
        out.append(b)
    return out


def workloads(quick: bool) -> dict[str, list[FrameBatch]]:
    """Frames per decoder: synthetic NB-IoT and SenML, the real HJ 212 corpus."""
    n = 50_000 if quick else 200_000
    nb = [
        encode_frame(
            861000000000000 + i % 1000,
            1_767_225_600 + i,
            i & 0xFFFF,
            temperature=20.5,
            humidity=50,
            pm2_5=12,
            pm10=30,
            noise=45,
            battery=3600,
            rssi=-80,
        )
        for i in range(n)
    ]
    sj = [
        json.dumps(
            [
                {"bn": f"dev{i % 1000}/", "bt": 1_767_225_600 + i, "n": "no2", "v": 41.5},
                {"n": "pm2_5", "v": 12.0},
                {"n": "temp", "u": "Cel", "v": 21.25},
            ]
        ).encode()
        for i in range(n // 4)
    ]
    sc = [
        cbor2.dumps(
            [
                {-2: f"dev{i % 1000}/", -3: 1_767_225_600 + i, 0: "no2", 2: 41.5},
                {0: "pm2_5", 2: 12.0},
                {0: "temp", 1: "Cel", 2: 21.25},
            ]
        )
        for i in range(n // 4)
    ]
    sl = [
        streetlight_frame(
            861000000000000 + i % 1000,
            1_767_225_600 + i,
            i & 0xFFFF,
            voltage=230,
            current=0.4,
            power=90,
            energy_kwh=100,
            dimming=70,
            lamp_on=True,
        )
        for i in range(n)
    ]
    body = location_body(
        22.5,
        114.0,
        time="260101083000",
        speed_kmh=60,
        extras=b"\x01\x04\x00\x01\xe2\x40\x30\x01\x1f\x31\x01\x0c",
    )
    jt = [jt808_frame(0x0200, f"13800{i % 1000:06d}", i & 0xFFFF, body) for i in range(n // 2)]
    tags: list[dict[str, int | str]] = [
        {
            "epc": f"300833B2DDD90140{i:08X}",
            "antenna": 1 + i % 4,
            "rssi": -60,
            "first_us": 1_767_225_600_000_000 + i,
            "last_us": 1_767_225_600_000_000 + i,
            "count": 2,
        }
        for i in range(8)
    ]
    ll = [encode_report(tags, i) for i in range(n // 8)]  # 8 reads per report
    tj = [
        json.dumps(
            {
                "reader": "",
                "epc": f"E200{i:020X}",
                "antenna": 1,
                "rssi": -61,
                "first_seen": 1_767_225_600_000 + i,
            }
        ).encode()
        for i in range(n // 4)
    ]
    ev = [
        gbt32960_frame(0x02, f"LSVAU2180N{i % 1000:07d}", gbt32960_realtime())
        for i in range(n // 2)
    ]
    # LwM2M TLV, one IPSO temperature instance (3303/0): 5700 value (float), 5518 timestamp
    lw = [
        b"\xe4\x16\x44"
        + struct.pack(">f", 20 + (i % 50) / 4)
        + b"\xe4\x15\x8e"
        + struct.pack(">I", 1_767_225_600 + i)
        for i in range(n // 2)
    ]
    hj: list[bytes] = []
    for f in sorted(hj212_corpus_dir().glob("*.h212.gz"))[: 4 if quick else None]:
        with gzip.open(f, "rb") as fh:
            hj += fh.read().splitlines()
    return {
        "nbiot-env": _batches(nb, "nbiot-env"),
        "streetlight": _batches(sl, "streetlight"),
        "senml-json": _batches(sj, "senml-json"),
        "senml-cbor": _batches(sc, "senml-cbor"),
        "jt808": _batches(jt, "jt808"),
        "gbt32960": _batches(ev, "gbt32960"),
        "llrp": _batches(ll, "llrp"),
        "tagread-json": _batches(tj, "tagread-json"),
        "lwm2m-tlv": _batches(lw, "lwm2m-tlv", "/3303/0", "ep-1"),
        "hj212": _batches(hj, "hj212"),
    }


def rate(name: str, batches: list[FrameBatch]) -> float:
    """Frames/s of one pass over ``batches``."""
    dec = load_registry().get(name)
    frames = sum(len(b) for b in batches)
    start = time.perf_counter()
    for b in batches:
        dec.decode_batch(b)
    return frames / (time.perf_counter() - start)
