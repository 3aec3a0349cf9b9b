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

from core.frames import Decoded, FrameBatch, Reject, TableRows
from decoders.base import NUMPY_DTYPE, Decoder, TableSpec
from decoders.cst import cst_to_utc_us_array
from decoders.tables import EV_STATUS, VEHICLE_POSITIONS

HEADER = struct.Struct(">2sBB17sBH")  # "##", command, ack, VIN, encryption, length
NO_ROWS = frozenset((0x01, 0x04, 0x05, 0x06, 0x07, 0x08))


class GBT32960Error(ValueError):
    """Data that breaks the standard."""


class _TruncatedError(ValueError):
    """An information unit that runs past the end of the data (the reason is complete)."""


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


# Information unit bodies with a fixed layout (GB/T 32960.3-2016 §7.2.3), read for the whole
# batch with one gather each.
VEHICLE = np.dtype(  # 0x01, Table 9
    [
        ("state", "u1"),
        ("charging", "u1"),
        ("mode", "u1"),
        ("speed", ">u2"),  # 0.1 km/h
        ("odometer", ">u4"),  # 0.1 km
        ("voltage", ">u2"),  # 0.1 V
        ("current", ">u2"),  # 0.1 A, offset -1000 A
        ("soc", "u1"),  # %
        ("dcdc", "u1"),
        ("gear", "u1"),
        ("insulation", ">u2"),  # kΩ
        ("accelerator", "u1"),
        ("brake", "u1"),
    ]
)
LOCATION = np.dtype([("status", "u1"), ("lon", ">u4"), ("lat", ">u4")])  # 0x05, Table 15; 1e-6°
EXTREMES = np.dtype(  # 0x06, Table 17
    [
        ("vmax_system", "u1"),
        ("vmax_cell", "u1"),
        ("vmax", ">u2"),  # mV
        ("vmin_system", "u1"),
        ("vmin_cell", "u1"),
        ("vmin", ">u2"),
        ("tmax_system", "u1"),
        ("tmax_probe", "u1"),
        ("tmax", "u1"),  # °C, offset -40
        ("tmin_system", "u1"),
        ("tmin_probe", "u1"),
        ("tmin", "u1"),
    ]
)
ALARM = np.dtype([("level", "u1"), ("flags", ">u4")])  # 0x07, Table 18 (head only)
_UNITS = {0x01: VEHICLE, 0x06: EXTREMES, 0x07: ALARM}
_SLOT = {0x01: 0, 0x06: 1, 0x07: 2}
_MOTORS = 3  # slot holding the drive-motor count


class GBT32960Decoder:
    """Decoder for GB/T 32960.3-2016 frames, one frame per message."""

    name = "gbt32960"
    content_formats: tuple[int, ...] = ()
    tables: tuple[TableSpec, ...] = (EV_STATUS, VEHICLE_POSITIONS)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Check framing and BCC for the batch, walk each frame's information units to find
        their offsets, then read every fixed-layout unit of the batch with numpy."""
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
        walk = _Walk()
        for j, i in enumerate(good):
            raw = batch.payloads[i]
            if sums[j] != 0:
                rejects.append(
                    Reject(
                        i, f"bcc_mismatch expected={int(sums[j]) ^ raw[-1]:02X} got={raw[-1]:02X}"
                    )
                )
                continue
            mark = walk.mark()
            try:
                walk.frame(raw, i, batch.device_hints[i])
            except _TruncatedError as exc:
                walk.rollback(mark)
                rejects.append(Reject(i, str(exc)))
            except GBT32960Error as exc:
                walk.rollback(mark)
                rejects.append(Reject(i, f"gbt32960_invalid: {exc}"))
            except (struct.error, IndexError):
                walk.rollback(mark)
                rejects.append(Reject(i, "truncated: an information unit is cut short"))
        ev, pos, bad_time = walk.build(batch.payloads)
        rejects += bad_time
        rejects.sort(key=lambda r: r.index)
        return Decoded(
            rows={EV_STATUS.name: ev, VEHICLE_POSITIONS.name: pos},
            rejects=rejects,
            frames_ok=len(batch) - len(rejects),
        )


class _Walk:
    """Where each data frame's units are; the values are read for the whole batch in build."""

    def __init__(self) -> None:
        self.frames: list[int] = []  # frame index of each data report
        self.reissued: list[bool] = []
        self.units: list[list[int]] = []  # per report: offsets of 0x01, 0x06, 0x07; motor count
        self.locations: list[tuple[int, int]] = []  # (report number, offset) per 0x05 unit

    def mark(self) -> tuple[int, int]:
        """Where to roll back to if the frame turns out to be bad."""
        return len(self.frames), len(self.locations)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget what was recorded since ``mark``."""
        for lst in (self.frames, self.reissued, self.units):
            del lst[mark[0] :]
        del self.locations[mark[1] :]

    def frame(self, raw: bytes, i: int, hint: str) -> None:
        """Check the header and find the units of one frame (offsets from the frame start)."""
        _, command, _ack, vin_raw, enc, _length = HEADER.unpack_from(raw)
        vin = vin_raw.decode("latin-1")
        if not (vin.isascii() and vin.isalnum()):
            raise GBT32960Error(f"VIN {vin!r} is not 17 letters and digits")
        if hint and hint != vin:
            raise GBT32960Error(f"device_mismatch: topic names {hint!r}, frame carries {vin!r}")
        if command not in (0x02, 0x03):
            if command in NO_ROWS:
                return
            raise GBT32960Error(f"unsupported command 0x{command:02X}")
        if enc != 0x01:
            raise GBT32960Error(f"encrypted or abnormal data (encryption 0x{enc:02X})")
        end = len(raw) - 1
        if end - HEADER.size < 6:
            raise IndexError("no data time")
        report = len(self.frames)
        units = [-1, -1, -1, -1]
        p = HEADER.size + 6  # after the data time
        while p < end:
            typ, p = raw[p], p + 1
            at = p
            if typ in _SLOT:
                units[_SLOT[typ]] = p
                p += _UNITS[typ].itemsize
                if typ == 0x07:  # then four lists of fault codes: count + 4-byte codes
                    for _ in range(4):
                        p += 1 + 4 * raw[p]
            elif typ == 0x05:
                self.locations.append((report, p))
                p += LOCATION.itemsize
            elif typ == 0x02:
                units[_MOTORS] = raw[p]
                p += 1 + 12 * raw[p]
            elif typ == 0x03:  # fuel cell: fixed words, then N probe temperatures, then rest
                (n_probes,) = struct.unpack_from(">H", raw, p + 6)
                p += 8 + n_probes + 10
            elif typ == 0x04:
                p += 5
            elif typ == 0x08:
                n, p = raw[p], p + 1
                for _ in range(n):
                    p += 10 + 2 * raw[p + 9]  # no, V, I, total cells, start index, count
            elif typ == 0x09:
                n, p = raw[p], p + 1
                for _ in range(n):
                    (probes,) = struct.unpack_from(">H", raw, p + 1)
                    p += 3 + probes
            elif typ >= 0x80:
                (length,) = struct.unpack_from(">H", raw, p)
                p += 2 + length
            else:
                raise GBT32960Error(
                    f"unknown information type 0x{typ:02X} at offset {at - 1 - HEADER.size}"
                )
            if p > end:
                raise _TruncatedError(
                    f"truncated: information type 0x{typ:02X} at offset "
                    f"{at - 1 - HEADER.size} needs {p - at} bytes, {max(end - at, 0)} left"
                )
        self.frames.append(i)
        self.reissued.append(command == 0x03)
        self.units.append(units)

    def build(self, payloads: list[bytes]) -> tuple[TableRows, TableRows, list[Reject]]:
        """Both tables for the batch, and the reports whose data time is not a real time."""
        n = len(self.frames)
        raws = [payloads[i] for i in self.frames]
        size = np.fromiter(map(len, raws), dtype=np.int64, count=n)
        base = np.cumsum(size) - size
        buf = np.frombuffer(b"".join(raws), dtype=np.uint8)
        stamp_raw = _gather(buf, base + HEADER.size, 6)
        stamp = stamp_raw.astype(np.int64)
        t, real = cst_to_utc_us_array(2000 + stamp[:, 0], *stamp[:, 1:].T)
        bad = [
            Reject(
                self.frames[k], f"gbt32960_invalid: bad data time {stamp_raw[k].tobytes().hex()}"
            )
            for k in np.flatnonzero(~real).tolist()
        ]
        units = np.array(self.units, dtype=np.int64).reshape(n, 4)
        vins = _gather(buf, base + 4, 17).view("S17").ravel()
        cols: dict[str, np.ndarray] = {"time": t, "reissued": np.array(self.reissued, dtype=bool)}
        nulls: dict[str, np.ndarray] = {}

        def put(name: str, values: np.ndarray, null: np.ndarray) -> None:
            dtype = NUMPY_DTYPE[EV_STATUS.column(name).type]
            cols[name] = np.where(null, 0, values).astype(dtype)
            nulls[name] = null

        veh, missing = _units(buf, base, units[:, 0], VEHICLE)
        for name, field in (("vehicle_state", "state"), ("charging_state", "charging")):
            put(name, veh[field], missing | (veh[field] >= 0xFE))
        put("mode", veh["mode"], missing | (veh["mode"] >= 0xFE))
        for name, field, scale, offset, limit in (
            ("speed_kmh", "speed", 0.1, 0.0, 0xFFFE),
            ("odometer_km", "odometer", 0.1, 0.0, 0xFFFFFFFE),
            ("voltage_v", "voltage", 0.1, 0.0, 0xFFFE),
            ("current_a", "current", 0.1, -1000.0, 0xFFFE),
        ):
            put(name, veh[field] * scale + offset, missing | (veh[field] >= limit))
        put("soc_pct", veh["soc"], missing | (veh["soc"] >= 0xFE))
        put("gear", veh["gear"], missing)
        put("insulation_kohm", veh["insulation"], missing | (veh["insulation"] >= 0xFFFE))
        motors = units[:, _MOTORS]
        put("motor_count", motors, motors < 0)
        alarm, missing = _units(buf, base, units[:, 2], ALARM)
        put("max_alarm_level", alarm["level"], missing | (alarm["level"] >= 0xFE))
        put("alarm_flags", alarm["flags"], missing | (alarm["flags"] >= 0xFFFFFFFE))
        ext, missing = _units(buf, base, units[:, 1], EXTREMES)
        for name, field in (("max_cell_v", "vmax"), ("min_cell_v", "vmin")):
            put(name, ext[field] * 0.001, missing | (ext[field] >= 0xFFFE))
        for name, field in (("max_temp_c", "tmax"), ("min_temp_c", "tmin")):
            put(name, ext[field].astype(np.int64) - 40, missing | (ext[field] >= 0xFE))
        frames = np.array(self.frames, dtype=np.int32)
        nulls.pop("reissued", None)
        order = [c.name for c in EV_STATUS.columns if c.name != "device_id"]
        cols = {name: cols[name] for name in order}
        ev = TableRows(EV_STATUS.name, cols, vins, frames, nulls).take(real)

        loc = np.array(self.locations, dtype=np.int64).reshape(-1, 2)
        report = loc[:, 0]
        fix = _gather(buf, base[report] + loc[:, 1], LOCATION.itemsize).view(LOCATION).ravel()
        status = fix["status"].astype(np.int64)
        keep = (
            real[report] & (status & 1 == 0) & (fix["lon"] < 0xFFFFFFFE) & (fix["lat"] < 0xFFFFFFFE)
        )
        pos = _pos_rows(
            t[report][keep],
            vins[report][keep],
            (fix["lat"] / 1e6 * np.where(status & 2, -1, 1))[keep],
            (fix["lon"] / 1e6 * np.where(status & 4, -1, 1))[keep],
            frames[report][keep],
            status[keep],
        )
        return ev, pos, bad


def _gather(buf: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes from each offset of ``buf``, as an ``n × width`` matrix."""
    if len(at) == 0:
        return np.zeros((0, width), dtype=np.uint8)
    return np.ascontiguousarray(buf[at[:, None] + np.arange(width)])


def _units(
    buf: np.ndarray, base: np.ndarray, offset: np.ndarray, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """The unit of ``dtype`` at ``offset`` in each report (zeros where absent, ``-1``)."""
    missing = offset < 0
    rows = _gather(buf, base + np.maximum(offset, 0), dtype.itemsize).view(dtype).ravel()
    return rows, missing


def _pos_rows(
    t: np.ndarray,
    vins: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    frames: np.ndarray,
    status: np.ndarray,
) -> TableRows:
    n = len(t)
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
            "time": t,
            "lat": lat.astype(np.float64),
            "lon": lon.astype(np.float64),
            "altitude_m": empty_i,
            "speed_kmh": np.zeros(n, np.float32),
            "heading_deg": np.zeros(n, np.int16),
            "alarm": np.zeros(n, np.int64),
            "status": status,
            "mileage_km": np.zeros(n, np.float64),
            "fuel_l": np.zeros(n, np.float32),
            "signal": np.zeros(n, np.int16),
            "satellites": np.zeros(n, np.int16),
        },
        vins,
        frames,
        nulls,
    )


DECODER: Decoder = GBT32960Decoder()
