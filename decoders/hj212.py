"""HJ 212-2017 (and HJ/T 212-2005) environmental monitoring frames.

Frame (HJ 212-2017 §6.2): ``##`` + 4-digit data-segment length + data segment + 4 hex CRC
(+ CR LF). Framing, length and CRC are checked for the whole batch (the CRC with numpy, one
step per byte position); the data segment is then parsed per frame into columns.

- CN 2011/2051/2061/2031 (real-time, minute, hour, day data) → ``hj212_readings``, one row per
  factor and field (Rtd, Avg, Min, Max, Cou, Zs…), with the factor's data flag.
- CN 2021 (equipment status) and 2072 (alarm) → ``device_status``.
- Other CNs (8013 heartbeat, 9011/9012 replies, 9015, 1013…) are valid frames without rows.
- 2005-edition factor codes (``B01``, ``011``, ``060``, ``S01``…) are mapped to the 2017 codes
  (HJ 212-2017 Appendix B lists both); unknown codes are kept as sent.
- DataTime is China Standard Time (UTC+8); 14 digits, or 17 with milliseconds (2005 devices).
- When Flag's A bit asks for an acknowledgement, a 9014 data response is produced for the
  transport to send back.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from decoders.base import Decoder, TableSpec
from decoders.cst import cst_to_utc_us
from decoders.tables import DEVICE_STATUS, HJ212_READINGS
from ingest.batch import Decoded, FrameBatch, Reject, TableRows

_ITEM = re.compile(r"([^;,=\-]+)-([^;,=]+)=([^;,]*)")
DATA_CNS = frozenset((2011, 2051, 2061, 2031))
STATUS_CNS = {2021: "DataTime", 2072: "AlarmTime"}

# HJ 212-2017 Appendix B: 2005-edition code -> 2017-edition code (water w*, gas a*).
OLD_TO_NEW: dict[str, str] = {
    "B01": "w00000",
    "001": "w01001",
    "002": "w01002",
    "003": "w01012",
    "010": "w01017",
    "011": "w01018",
    "015": "w01020",
    "020": "w20111",
    "021": "w20113",
    "022": "w20115",
    "023": "w20116",
    "024": "w20117",
    "026": "w20119",
    "027": "w20120",
    "028": "w20121",
    "029": "w20122",
    "030": "w20123",
    "060": "w21003",
    "065": "w21001",
    "101": "w21011",
    "070": "w21016",
    "071": "w21019",
    "072": "w21017",
    "080": "w22001",
    "110": "w23002",
    "B02": "a00000",
    "01": "a34013",
    "02": "a21026",
    "03": "a21002",
    "04": "a21005",
    "05": "a21028",
    "06": "a21018",
    "07": "a21017",
    "08": "a21024",
    "10": "a21001",
    "S01": "a19001",
    "S02": "a01011",
    "S03": "a01012",
    "S04": "a01017",
    "S05": "a01014",
    "S06": "a01015",
    "S07": "a01016",
    "S08": "a01013",
}


def _crc_table() -> npt.NDArray[np.uint16]:
    table = np.zeros(256, dtype=np.uint16)
    for x in range(256):
        crc = x
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table[x] = crc
    return table


# The standard's routine: crc = (crc >> 8) ^ byte, then 8 LSB-first shifts with 0xA001. The
# state entering the shifts is 8 bits wide, so each step is one lookup: crc = T[(crc>>8)^b].
_T = _crc_table()
_T_LIST = _T.tolist()


def crc_hj212(segment: bytes) -> int:
    """The HJ 212 CRC of one data segment (for encoders and tests)."""
    crc = 0xFFFF
    for b in segment:
        crc = _T_LIST[(crc >> 8) ^ b]
    return crc


def crc_hj212_batch(segments: list[bytes]) -> npt.NDArray[np.uint16]:
    """The HJ 212 CRC of every segment, computed column by column over the batch."""
    n = len(segments)
    crc = np.full(n, 0xFFFF, dtype=np.uint16)
    if n == 0:
        return crc
    lens = np.fromiter(map(len, segments), dtype=np.int64, count=n)
    width = int(lens.max())
    if width == 0:
        return crc
    mat = np.array(segments, dtype=f"S{width}").view(np.uint8).reshape(n, width)
    order = np.argsort(-lens, kind="stable")  # longest first: active rows are a prefix
    mat, sorted_lens = mat[order], lens[order]
    state = crc.copy()
    active = n
    for col in range(width):
        while active and sorted_lens[active - 1] <= col:
            active -= 1
        head = state[:active]
        state[:active] = _T[(head >> 8) ^ mat[:active, col]]
    crc[order] = state
    return crc


def frame(segment: str) -> bytes:
    """A complete frame for a data segment: header, CRC and CR LF."""
    raw = segment.encode("ascii")
    return b"##%04d%s%04X\r\n" % (len(raw), raw, crc_hj212(raw))


@lru_cache(maxsize=65536)
def _utc_us(stamp: str) -> int:
    """DataTime ``YYYYMMDDhhmmss[zzz]`` in UTC+8 to µs since the epoch (UTC); -1 if invalid."""
    if len(stamp) not in (14, 17) or not stamp.isdigit():
        return -1
    y, mo, d = int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8])
    h, mi, s = int(stamp[8:10]), int(stamp[10:12]), int(stamp[12:14])
    ms = int(stamp[14:17]) if len(stamp) == 17 else 0
    t = cst_to_utc_us(y, mo, d, h, mi, s)
    return -1 if t is None else t + ms * 1000


class HJ212Error(ValueError):
    """A frame whose data segment breaks the standard."""


def _header(head: str) -> dict[str, str]:
    out = {}
    for item in head.split(";"):
        key, sep, value = item.partition("=")
        if not sep:
            raise HJ212Error(f"header field {item!r} has no '='")
        out[key] = value
    return out


def data_response(fields: dict[str, str]) -> bytes:
    """The 9014 data response to a frame that asked for one (HJ 212-2017 §6.6)."""
    qn = fields.get("QN", "")
    seg = (
        f"QN={qn};ST=91;CN=9014;PW={fields.get('PW', '')};MN={fields['MN']};Flag=4;CP=&&&&"
        if qn
        else f"ST=91;CN=9014;PW={fields.get('PW', '')};MN={fields['MN']};CP=&&&&"
    )
    return frame(seg)


class HJ212Decoder:
    """Decoder for HJ 212-2017 / HJ/T 212-2005 frames, one frame per message or line."""

    name = "hj212"
    content_formats: tuple[int, ...] = ()
    tables: tuple[TableSpec, ...] = (HJ212_READINGS, DEVICE_STATUS)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Check framing and CRC for the batch, then parse each data segment into rows."""
        rejects: list[Reject] = []
        segments: list[bytes] = []
        crc_sent: list[int] = []
        index: list[int] = []
        for i, raw in enumerate(batch.payloads):
            reason = self._framing(raw.rstrip(b"\r\n"), segments, crc_sent)
            if reason:
                rejects.append(Reject(i, reason))
            else:
                index.append(i)
        crc = crc_hj212_batch(segments)
        acc = _Columns()
        out = Decoded()
        for j, i in enumerate(index):
            if int(crc[j]) != crc_sent[j]:
                rejects.append(
                    Reject(i, f"crc_mismatch expected={int(crc[j]):04X} got={crc_sent[j]:04X}")
                )
                continue
            mark = acc.mark()
            try:
                self._parse(segments[j].decode("latin-1"), i, batch.device_hints[i], acc, out)
            except HJ212Error as exc:
                acc.rollback(mark)
                rejects.append(Reject(i, f"hj212_invalid: {exc}"))
        rejects.sort(key=lambda x: x.index)
        out.rejects = rejects
        out.frames_ok = len(batch) - len(rejects)
        out.rows.update(acc.build())
        return out

    @staticmethod
    def _framing(raw: bytes, segments: list[bytes], crc_sent: list[int]) -> str:
        if not raw.startswith(b"##"):
            return "bad_header: frame must start with '##'"
        if len(raw) < 10:
            return f"truncated: need at least 10 bytes, got {len(raw)}"
        digits = raw[2:6]
        if not digits.isdigit():
            return f"bad_header: length field {digits.decode('latin-1')!r} is not 4 digits"
        declared, segment = int(digits), raw[6:-4]
        if len(segment) != declared:
            return f"length_mismatch: header says {declared} bytes, data segment has {len(segment)}"
        tail = raw[-4:]
        try:
            sent = int(tail, 16)
        except ValueError:
            return f"bad_crc_field: {tail.decode('latin-1')!r} is not 4 hex digits"
        segments.append(segment)
        crc_sent.append(sent)
        return ""

    @staticmethod
    def _parse(seg: str, i: int, hint: str, acc: _Columns, out: Decoded) -> None:
        head, sep, cp = seg.partition(";CP=&&")
        if not sep:
            if not seg.startswith("CP=&&"):
                raise HJ212Error("no CP=&& section")
            head, cp = "", seg[5:]
        if not cp.endswith("&&"):
            raise HJ212Error("CP section does not end with '&&'")
        cp = cp[:-2]
        fields = _header(head) if head else {}
        mn = fields.get("MN", "")
        if not mn:
            raise HJ212Error("no MN (station id)")
        if hint and hint != mn:
            raise HJ212Error(f"device_mismatch: topic names {hint!r}, frame carries MN {mn!r}")
        cn_text = fields.get("CN", "")
        if len(cn_text) != 4 or not cn_text.isdigit():
            raise HJ212Error(f"CN {cn_text!r} is not 4 digits")
        cn = int(cn_text)
        flag_text = fields.get("Flag", "")
        flag = int(flag_text) if flag_text.isdigit() else 0
        edition_2017 = ((flag >> 2) & 0x3F) == 1
        if cn in DATA_CNS:
            HJ212Decoder._readings(cp, cn, mn, edition_2017, i, acc)
        elif cn in STATUS_CNS:
            HJ212Decoder._status(cp, STATUS_CNS[cn], mn, i, acc)
        if flag & 1 and cn not in (9011, 9012, 9013, 9014):
            out.replies.append((i, data_response(fields)))

    @staticmethod
    def _time(groups: list[str], key: str) -> tuple[int, list[str]]:
        rest = []
        stamp = None
        for g in groups:
            if g.startswith(key + "="):
                stamp = g[len(key) + 1 :]
            else:
                rest.append(g)
        if stamp is None:
            raise HJ212Error(f"no {key}")
        t = _utc_us(stamp)
        if t < 0:
            raise HJ212Error(f"bad {key} {stamp!r}")
        return t, rest

    @staticmethod
    def _readings(cp: str, cn: int, mn: str, edition_2017: bool, i: int, acc: _Columns) -> None:
        t, groups = HJ212Decoder._time(cp.split(";"), "DataTime")
        dev = acc.word(mn)
        add, key_id, word = acc.readings.append, acc.key_id, acc.word
        # factor-field=value items, found in C; a factor's flags (Flag, ZsFlag for converted
        # values, EFlag for the equipment) apply to that factor's values in the frame
        items = _ITEM.findall(";".join(groups))
        flags = {(code, field[:-4]): text for code, field, text in items if field.endswith("Flag")}
        for code, field, text in items:
            if field.endswith("Flag") or field == "SampleTime":
                continue
            try:
                value = float(text)
            except ValueError:
                raise HJ212Error(f"{code}-{field}={text!r} is not a number") from None
            flag = flags.get((code, "Zs" if field.startswith("Zs") else "")) or flags.get(
                (code, "")
            )
            add(
                (
                    t,
                    dev,
                    cn,
                    key_id(code, field, edition_2017),
                    value,
                    -1 if flag is None else word(flag),
                    i,
                )
            )

    @staticmethod
    def _status(cp: str, time_key: str, mn: str, i: int, acc: _Columns) -> None:
        t, groups = HJ212Decoder._time(cp.split(";"), time_key)
        dev = acc.word(mn)
        for group in groups:
            for item in group.split(","):
                key, sep, text = item.partition("=")
                if not sep or not key:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    raise HJ212Error(f"{key}={text!r} is not a number") from None
                acc.status.append((t, dev, acc.word(key), value, i))


class _Columns:
    """Rows as tuples of small ints over per-batch vocabularies; turned into numpy columns
    once per batch (text columns by indexing a vocabulary array, not per-row encoding)."""

    def __init__(self) -> None:
        self.readings: list[tuple[int, int, int, int, float, int, int]] = []
        self.status: list[tuple[int, int, int, float, int]] = []
        self.words: dict[str, int] = {}
        self.keys: dict[tuple[str, str, bool], int] = {}
        self.key_parts: list[tuple[int, int, int]] = []  # (factor, code, field) word ids

    def word(self, text: str) -> int:
        """The vocabulary id of a string."""
        wid = self.words.get(text)
        if wid is None:
            wid = self.words[text] = len(self.words)
        return wid

    def key_id(self, code: str, field: str, edition_2017: bool) -> int:
        """The id of a (factor, code, field) triple; 2005 codes mapped to 2017 ones."""
        k = (code, field, edition_2017)
        kid = self.keys.get(k)
        if kid is None:
            factor = code if edition_2017 else OLD_TO_NEW.get(code, code)
            kid = self.keys[k] = len(self.key_parts)
            self.key_parts.append((self.word(factor), self.word(code), self.word(field)))
        return kid

    def mark(self) -> tuple[int, int]:
        """Where to roll back to if the frame being parsed turns out to be bad."""
        return len(self.readings), len(self.status)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Drop rows added since ``mark``."""
        del self.readings[mark[0] :]
        del self.status[mark[1] :]

    def build(self) -> dict[str, TableRows]:
        """Both tables as numpy columns."""
        vocab = np.array([w.encode("latin-1") for w in self.words] or [b""], dtype=np.bytes_)
        parts = np.array(self.key_parts or [(0, 0, 0)], dtype=np.int64).reshape(-1, 3)
        n = len(self.readings)
        cols = np.array(self.readings, dtype=np.float64).reshape(n, 7) if n else np.empty((0, 7))
        # time stays exact: µs fit float64's 53-bit mantissa until the year 2255
        key = cols[:, 3].astype(np.int64)
        flag = cols[:, 5].astype(np.int64)
        readings = TableRows(
            table=HJ212_READINGS.name,
            columns={
                "time": cols[:, 0].astype(np.int64),
                "cn": cols[:, 2].astype(np.int16),
                "factor": vocab[parts[key, 0]],
                "code": vocab[parts[key, 1]],
                "field": vocab[parts[key, 2]],
                "value": cols[:, 4].copy(),
                "flag": np.where(flag >= 0, vocab[np.maximum(flag, 0)], b""),
            },
            devices=vocab[cols[:, 1].astype(np.int64)],
            frame_index=cols[:, 6].astype(np.int32),
            nulls={"flag": flag < 0},
        )
        m = len(self.status)
        st = np.array(self.status, dtype=np.float64).reshape(m, 5) if m else np.empty((0, 5))
        status = TableRows(
            table=DEVICE_STATUS.name,
            columns={
                "time": st[:, 0].astype(np.int64),
                "key": vocab[st[:, 2].astype(np.int64)],
                "value": st[:, 3].copy(),
            },
            devices=vocab[st[:, 1].astype(np.int64)],
            frame_index=st[:, 4].astype(np.int32),
        )
        return {HJ212_READINGS.name: readings, DEVICE_STATUS.name: status}


DECODER: Decoder = HJ212Decoder()
