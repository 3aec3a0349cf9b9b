"""GB/T 32960.3-2016 new-energy vehicle remote monitoring (big-endian).

Frame: ``## | command | ack | VIN(17) | encryption | data length (W) | data | BCC`` where BCC
is the XOR of every byte from the command to the end of the data (§6.2); checked for the
whole batch with one ``np.bitwise_xor.reduceat``.

- 0x02 real-time and 0x03 reissued data: 6-byte time (YY MM DD hh mm ss, UTC+8), then
  information units [type + body] (§7.2.3): 0x01 vehicle → ``ev_status``, 0x02 drive motors
  (counted), 0x05 location → ``vehicle_positions``, 0x06 extremes and 0x07 alarms →
  ``ev_status``; 0x03 fuel cell, 0x04 engine, 0x08 cell voltages, 0x09 cell temperatures are
  walked by their own structure and skipped; 0x80-0xFE custom units carry a length word.
  Values of 0xFE/0xFF (bytes), 0xFFFE/0xFFFF (words), 0xFFFFFFFE/0xFFFFFFFF (double words)
  mean abnormal/invalid and are stored as NULL.
- 0x01 login, 0x04 logout, 0x07 heartbeat, 0x08 time sync: valid frames without rows.
- Encrypted data (RSA, AES128) is rejected. The 2016 edition is implemented; the 2025 edition
  (in force since 2025-11-01) changes the data units and is not supported yet.
"""

from __future__ import annotations

import struct

import numpy as np

from decoders.base import NUMPY_DTYPE, Decoder, TableSpec
from decoders.cst import cst_to_utc_us
from decoders.rows import nullable_column
from decoders.tables import EV_STATUS, VEHICLE_POSITIONS
from ingest.batch import Decoded, FrameBatch, Reject, TableRows

HEADER = struct.Struct(">2sBB17sBH")  # "##", command, ack, VIN, encryption, length
NO_ROWS = frozenset((0x01, 0x04, 0x05, 0x06, 0x07, 0x08))
EV_COLS = [c.name for c in EV_STATUS.columns if c.name not in ("time", "device_id")]


class GBT32960Error(ValueError):
    """Data that breaks the standard."""


def _b(v: int) -> int | None:
    return None if v >= 0xFE else v


def _w(v: int) -> int | None:
    return None if v >= 0xFFFE else v


def _dw(v: int) -> int | None:
    return None if v >= 0xFFFFFFFE else v


def _scaled(v: int | None, scale: float, offset: float = 0.0) -> float | None:
    return None if v is None else v * scale + offset


def _time_us(raw: bytes) -> int:
    y, mo, d, h, mi, s = raw
    us = cst_to_utc_us(2000 + y, mo, d, h, mi, s)
    if us is None:
        raise GBT32960Error(f"bad data time {raw.hex()}")
    return us


def frame(command: int, vin: str, data: bytes, *, ack: int = 0xFE) -> bytes:
    """A complete frame with its BCC (simulator and tests)."""
    body = struct.pack(">BB17sBH", command, ack, vin.encode("ascii"), 0x01, len(data)) + data
    bcc = 0
    for b in body:
        bcc ^= b
    return b"##" + body + bytes([bcc])


def realtime_data(
    *, time: bytes = bytes([26, 1, 1, 8, 30, 0]), soc: int = 76, voltage_raw: int = 3_650
) -> bytes:
    """Real-time data with every unit type (simulator, tests, bench): 62.5 km/h, 365.0 V…"""
    vehicle = struct.pack(
        ">BBBHIHHBBBHBB", 1, 3, 1, 625, 123_456, voltage_raw, 10_250, soc, 1, 0x0E, 5_000, 30, 0
    )  # 62.5 km/h, 12345.6 km, 365.0 V, 25.0 A
    motors = bytes([1]) + struct.pack(">BBBHHBHH", 1, 1, 85, 23_000, 21_000, 80, 3_600, 10_100)
    location = struct.pack(">BII", 0, 114_057_865, 22_543_096)
    extremes = struct.pack(">BBHBBHBBBBBB", 1, 12, 4_125, 1, 40, 3_980, 1, 3, 70, 1, 7, 65)
    alarms = struct.pack(">BI", 2, 0b101) + bytes([0, 0, 0, 1]) + struct.pack(">I", 0x1234)
    cells = (
        bytes([1])
        + struct.pack(">BHHHHB", 1, 3_650, 10_250, 96, 1, 2)
        + struct.pack(">HH", 4_100, 4_125)
    )
    temps = bytes([1]) + struct.pack(">BH", 1, 3) + bytes([65, 70, 66])
    engine = struct.pack(">BHH", 1, 0xFFFF, 0xFFFF)
    return (
        time
        + b"\x01"
        + vehicle
        + b"\x02"
        + motors
        + b"\x05"
        + location
        + b"\x06"
        + extremes
        + b"\x07"
        + alarms
        + b"\x08"
        + cells
        + b"\x09"
        + temps
        + b"\x04"
        + engine
    )


class GBT32960Decoder:
    """Decoder for GB/T 32960.3-2016 frames, one frame per message."""

    name = "gbt32960"
    content_formats: tuple[int, ...] = ()
    tables: tuple[TableSpec, ...] = (EV_STATUS, VEHICLE_POSITIONS)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Check framing and BCC for the batch, then walk each frame's information units."""
        rejects: list[Reject] = []
        good: list[int] = []
        for i, raw in enumerate(batch.payloads):
            if len(raw) < HEADER.size + 1:
                rejects.append(
                    Reject(i, f"truncated: need at least {HEADER.size + 1} bytes, got {len(raw)}")
                )
            elif raw[:2] != b"##":
                rejects.append(Reject(i, "bad_header: frame must start with '##'"))
            elif len(raw) != HEADER.size + 1 + HEADER.unpack_from(raw)[5]:
                rejects.append(
                    Reject(
                        i,
                        f"length_mismatch: data length "
                        f"{HEADER.unpack_from(raw)[5]} does not fit a "
                        f"{len(raw)}-byte frame",
                    )
                )
            else:
                good.append(i)
        if good:
            lens = np.fromiter((len(batch.payloads[i]) - 2 for i in good), np.int64, len(good))
            flat = np.frombuffer(b"".join(batch.payloads[i][2:] for i in good), dtype=np.uint8)
            sums = np.bitwise_xor.reduceat(flat, np.concatenate([[0], np.cumsum(lens)[:-1]]))
        ev: list[tuple[object, ...]] = []
        pos: list[tuple[object, ...]] = []
        for j, i in enumerate(good):
            raw = batch.payloads[i]
            if sums[j] != 0:
                rejects.append(
                    Reject(
                        i, f"bcc_mismatch expected={int(sums[j]) ^ raw[-1]:02X} got={raw[-1]:02X}"
                    )
                )
                continue
            marks = len(ev), len(pos)
            try:
                self._frame(raw, i, batch.device_hints[i], ev, pos)
            except GBT32960Error as exc:
                del ev[marks[0] :], pos[marks[1] :]
                rejects.append(Reject(i, f"gbt32960_invalid: {exc}"))
            except (struct.error, IndexError, ValueError):
                del ev[marks[0] :], pos[marks[1] :]
                rejects.append(Reject(i, "truncated: an information unit is cut short"))
        rejects.sort(key=lambda r: r.index)
        return Decoded(
            rows={EV_STATUS.name: _ev_rows(ev), VEHICLE_POSITIONS.name: _pos_rows(pos)},
            rejects=rejects,
            frames_ok=len(batch) - len(rejects),
        )

    @staticmethod
    def _frame(
        raw: bytes, i: int, hint: str, ev: list[tuple[object, ...]], pos: list[tuple[object, ...]]
    ) -> None:
        _, command, _ack, vin_raw, enc, _length = HEADER.unpack_from(raw)
        vin = vin_raw.decode("latin-1")
        if not vin.isalnum():
            raise GBT32960Error(f"VIN {vin!r} is not 17 letters and digits")
        if hint and hint != vin:
            raise GBT32960Error(f"device_mismatch: topic names {hint!r}, frame carries {vin!r}")
        if command not in (0x02, 0x03):
            if command in NO_ROWS:
                return
            raise GBT32960Error(f"unsupported command 0x{command:02X}")
        if enc != 0x01:
            raise GBT32960Error(f"encrypted or abnormal data (encryption 0x{enc:02X})")
        data = raw[HEADER.size : -1]
        t = _time_us(data[:6])
        row: dict[str, object] = {"reissued": command == 0x03}
        p = 6
        while p < len(data):
            typ, p = data[p], p + 1
            if typ == 0x01:
                (
                    state,
                    charging,
                    mode,
                    speed,
                    odo,
                    volt,
                    cur,
                    soc,
                    _dcdc,
                    gear,
                    ins,
                    _acc,
                    _brake,
                ) = struct.unpack_from(">BBBHIHHBBBHBB", data, p)
                row.update(
                    vehicle_state=_b(state),
                    charging_state=_b(charging),
                    mode=_b(mode),
                    speed_kmh=_scaled(_w(speed), 0.1),
                    odometer_km=_scaled(_dw(odo), 0.1),
                    voltage_v=_scaled(_w(volt), 0.1),
                    current_a=_scaled(_w(cur), 0.1, -1000.0),
                    soc_pct=_b(soc),
                    gear=gear,
                    insulation_kohm=_w(ins),
                )
                p += 20
            elif typ == 0x02:
                row["motor_count"] = data[p]
                p += 1 + 12 * data[p]
            elif typ == 0x03:  # fuel cell: fixed words, then N probe temperatures, then rest
                (n_probes,) = struct.unpack_from(">H", data, p + 6)
                p += 8 + n_probes + 10
            elif typ == 0x04:
                p += 5
            elif typ == 0x05:
                status, lon, lat = struct.unpack_from(">BII", data, p)
                if not status & 1 and _dw(lon) is not None and _dw(lat) is not None:
                    pos.append(
                        (
                            t,
                            vin,
                            lat / 1e6 * (-1 if status & 2 else 1),
                            lon / 1e6 * (-1 if status & 4 else 1),
                            i,
                            status,
                        )
                    )
                p += 9
            elif typ == 0x06:
                _, _, vmax, _, _, vmin, _, _, tmax, _, _, tmin = struct.unpack_from(
                    ">BBHBBHBBBBBB", data, p
                )
                row.update(
                    max_cell_v=_scaled(_w(vmax), 0.001),
                    min_cell_v=_scaled(_w(vmin), 0.001),
                    max_temp_c=_scaled(_b(tmax), 1, -40),
                    min_temp_c=_scaled(_b(tmin), 1, -40),
                )
                p += 14
            elif typ == 0x07:
                level, flags = struct.unpack_from(">BI", data, p)
                row.update(max_alarm_level=_b(level), alarm_flags=_dw(flags))
                p += 5
                for _ in range(4):
                    p += 1 + 4 * data[p]
            elif typ == 0x08:
                n, p = data[p], p + 1
                for _ in range(n):
                    p += 10 + 2 * data[p + 9]  # no, V, I, total cells, start index, count
            elif typ == 0x09:
                n, p = data[p], p + 1
                for _ in range(n):
                    (probes,) = struct.unpack_from(">H", data, p + 1)
                    p += 3 + probes
            elif typ >= 0x80:
                (length,) = struct.unpack_from(">H", data, p)
                p += 2 + length
            else:
                raise GBT32960Error(f"unknown information type 0x{typ:02X} at offset {p - 1}")
            if p > len(data):
                raise GBT32960Error(f"information type 0x{typ:02X} runs past the data")
        ev.append((t, vin, row, i))


def _ev_rows(ev: list[tuple[object, ...]]) -> TableRows:
    dtypes = {c.name: NUMPY_DTYPE[c.type].str for c in EV_STATUS.columns}
    cols: dict[str, np.ndarray] = {"time": np.array([e[0] for e in ev], dtype=np.int64)}
    nulls: dict[str, np.ndarray] = {}
    for name in EV_COLS:
        values = [e[2].get(name) for e in ev]  # type: ignore[attr-defined]
        cols[name], null = nullable_column(values, dtypes[name])
        if name != "reissued":
            nulls[name] = null
    return TableRows(
        EV_STATUS.name,
        cols,
        np.array([str(e[1]).encode() for e in ev] or [b""])[: len(ev)],
        np.array([e[3] for e in ev], dtype=np.int32),
        nulls,
    )


def _pos_rows(pos: list[tuple[object, ...]]) -> TableRows:
    n = len(pos)
    empty_i = np.zeros(n, dtype=np.int32)
    nulls = {
        k: np.ones(n, dtype=np.bool_)
        for k in (
            "altitude_m",
            "speed_kmh",
            "heading_deg",
            "mileage_km",
            "fuel_l",
            "signal",
            "satellites",
        )
    }
    return TableRows(
        VEHICLE_POSITIONS.name,
        {
            "time": np.array([p[0] for p in pos], dtype=np.int64),
            "lat": np.array([p[2] for p in pos], dtype=np.float64),
            "lon": np.array([p[3] for p in pos], dtype=np.float64),
            "altitude_m": empty_i,
            "speed_kmh": np.zeros(n, np.float32),
            "heading_deg": np.zeros(n, np.int16),
            "alarm": np.zeros(n, np.int64),
            "status": np.array([p[5] for p in pos], dtype=np.int64),
            "mileage_km": np.zeros(n, np.float64),
            "fuel_l": np.zeros(n, np.float32),
            "signal": np.zeros(n, np.int16),
            "satellites": np.zeros(n, np.int16),
        },
        np.array([str(p[1]).encode() for p in pos] or [b""])[:n],
        np.array([p[4] for p in pos], dtype=np.int32),
        nulls,
    )


DECODER: Decoder = GBT32960Decoder()
