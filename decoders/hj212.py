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

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from core.frames import Decoded, FrameBatch, FrameNumbers, Reject, TableRows
from decoders import textscan
from decoders.base import Decoder, TableSpec
from decoders.cst import cst_to_utc_us
from decoders.limits import LimitError, check_length, not_finite, text_problem
from decoders.tables import DEVICE_STATUS, HJ212_READINGS

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
    return _frame_bytes(segment.encode("ascii"))


def _frame_bytes(raw: bytes) -> bytes:
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


def _text_problem(segment: bytes) -> str:
    """The reject reason when text bound for a TEXT column (the CP section's codes, fields
    and flags, the MN) is not UTF-8 or holds a NUL; other header fields are not stored (real
    stations send e.g. ``ST=\\0\\0``), so they may. Two C-level scans on a clean segment."""
    if not text_problem(segment):
        return ""
    head, _, cp = segment.partition(b";CP=&&")
    problem = text_problem(cp)
    if problem:
        return f"bad_text: CP section {problem}"
    mn = head.partition(b"MN=")[2].partition(b";")[0]
    problem = text_problem(mn)
    return f"bad_text: MN {problem}" if problem else ""


class HJ212Error(ValueError):
    """A frame whose data segment breaks the standard."""


def _header(head: str) -> dict[str, str]:
    # split, not a findall of ``([^;=]*)=([^;]*)``: that regex rescans an item without '='
    # from each of its characters, quadratic (1 s for one 10 kB header)
    fields: dict[str, str] = {}
    for item in head.split(";"):
        key, sep, value = item.partition("=")
        if not sep:
            raise HJ212Error(f"header field {item!r} has no '='")
        fields[key] = value
    return fields


def data_response(fields: dict[str, str]) -> bytes:
    """The 9014 data response to a frame that asked for one (HJ 212-2017 §6.6)."""
    qn = fields.get("QN", "")
    seg = (
        f"QN={qn};ST=91;CN=9014;PW={fields.get('PW', '')};MN={fields['MN']};Flag=4;CP=&&&&"
        if qn
        else f"ST=91;CN=9014;PW={fields.get('PW', '')};MN={fields['MN']};CP=&&&&"
    )
    return _frame_bytes(seg.encode("latin-1"))  # the fields as the station sent them


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
        hints = batch.device_hints
        for j, (i, got, want) in enumerate(zip(index, crc.tolist(), crc_sent, strict=True)):
            if got != want:
                rejects.append(Reject(i, f"crc_mismatch expected={got:04X} got={want:04X}"))
                continue
            problem = _text_problem(segments[j])
            if problem:
                rejects.append(Reject(i, problem))
                continue
            mark = acc.mark()
            try:
                self._parse(segments[j].decode("latin-1"), i, hints[i], acc, out)
            except HJ212Error as exc:
                acc.rollback(mark)
                rejects.append(Reject(i, f"hj212_invalid: {exc}"))
            except LimitError as exc:
                acc.rollback(mark)
                rejects.append(Reject(i, str(exc)))
        rows, bad_values = acc.build()
        if bad_values:
            bad = {r.index for r in bad_values}
            out.replies = [r for r in out.replies if r[0] not in bad]
            rejects += bad_values
        rejects.sort(key=lambda x: x.index)
        out.rejects = rejects
        out.frames_ok = len(batch) - len(rejects)
        out.rows.update(rows)
        out.numbers = _slots(acc, {r.index for r in rejects})
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
        check_length("MN", mn)  # the standard's MN has 24 characters
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
    def _time(cp: str, key: str) -> int:
        tag = key + "="
        at = cp.rfind(tag)  # the last group that starts with it
        while at > 0 and cp[at - 1] != ";":
            at = cp.rfind(tag, 0, at)
        if at < 0:
            raise HJ212Error(f"no {key}")
        end = cp.find(";", at)
        stamp = cp[at + len(tag) : end if end >= 0 else len(cp)]
        t = _utc_us(stamp)
        if t < 0:
            raise HJ212Error(f"bad {key} {stamp!r}")
        return t

    @staticmethod
    def _readings(cp: str, cn: int, mn: str, edition_2017: bool, i: int, acc: _Columns) -> None:
        t = HJ212Decoder._time(cp, "DataTime")
        acc.data.append((cp, t, acc.word(mn), cn, edition_2017, i))

    @staticmethod
    def _status(cp: str, time_key: str, mn: str, i: int, acc: _Columns) -> None:
        t = HJ212Decoder._time(cp, time_key)
        dev = acc.word(mn)
        for group in cp.split(";"):
            if group.startswith(time_key + "="):
                continue
            for item in group.split(","):
                key, sep, text = item.partition("=")
                if not sep or not key:
                    continue
                if len(key) > _NAME_MAX:  # as factor codes: a wide key widens the column
                    raise HJ212Error(f"item {item[:40]!r} has a name over {_NAME_MAX} chars")
                try:
                    value = float(text)
                except ValueError:
                    raise HJ212Error(f"{key}={text!r} is not a number") from None
                if not math.isfinite(value):  # float() reads "nan", "inf", "1e999"
                    raise LimitError(not_finite(key, value))
                acc.status.append((t, dev, acc.word(key), value, i))


_NAME_MAX = 24  # longest factor code, field name or flag taken (2017 codes are 6 characters)
_VALUE_WIDTH = 24  # longer values are parsed one by one


SLOT_US = {2051: 60_000_000, 2061: 3_600_000_000}
"""Regular data streams (minute data, CN 2051; hour data, CN 2061) and their slot length: a
station sends one frame per slot with DataTime at the slot's start, so a missing slot is a
lost frame."""


def _slots(acc: _Columns, rejected: set[int]) -> list[FrameNumbers]:
    """Each minute/hour data frame's slot (DataTime // slot length), one stream per CN."""
    out = []
    vocab = _latin1(list(acc.words))
    for cn, slot_us in SLOT_US.items():
        picked = [d for d in acc.data if d[3] == cn and d[5] not in rejected]
        out.append(
            FrameNumbers(
                f"hj212-{cn}",
                0,
                vocab[np.fromiter((d[2] for d in picked), dtype=np.int64, count=len(picked))],
                np.fromiter((d[5] for d in picked), dtype=np.int32, count=len(picked)),
                np.fromiter((d[1] // slot_us for d in picked), dtype=np.int64, count=len(picked)),
            )
        )
    return out


def _latin1(words: list[str]) -> npt.NDArray[np.bytes_]:
    return np.array([w.encode("latin-1") for w in words] or [b""], dtype=np.bytes_)


class _Columns:
    """Rows gathered per batch and turned into numpy columns once.

    Data frames (real-time/minute/hour/day) are kept as their CP text; ``build`` finds every
    ``factor-field=value`` item of the whole batch with one regex pass over the joined text,
    interns codes and fields, parses the values in one sweep and resolves each value's data
    flag with sorted keys and ``searchsorted`` — no per-item Python beyond the C-level scan.
    Status rows stay tuples over a per-batch vocabulary (they are few).
    """

    def __init__(self) -> None:
        self.data: list[tuple[str, int, int, int, bool, int]] = []  # cp, t, dev, cn, 2017?, i
        self.status: list[tuple[int, int, int, float, int]] = []
        self.words: dict[str, int] = {}

    def word(self, text: str) -> int:
        """The vocabulary id of a string."""
        wid = self.words.get(text)
        if wid is None:
            wid = self.words[text] = len(self.words)
        return wid

    def mark(self) -> tuple[int, int]:
        """Where to roll back to if the frame being parsed turns out to be bad."""
        return len(self.data), len(self.status)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Drop rows added since ``mark``."""
        del self.data[mark[0] :]
        del self.status[mark[1] :]

    def build(self) -> tuple[dict[str, TableRows], list[Reject]]:
        """Both tables as numpy columns, and the data frames whose values are not numbers."""
        readings, rejects = self._readings()
        vocab = _latin1(list(self.words))
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
        return {HJ212_READINGS.name: readings, DEVICE_STATUS.name: status}, rejects

    def _readings(self) -> tuple[TableRows, list[Reject]]:
        texts = [d[0] for d in self.data]
        buf = np.frombuffer((";" + ";".join(texts)).encode("latin-1"), dtype=np.uint8)
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
        frame_at = np.cumsum(sizes) - sizes  # the ';' before each frame's text
        # items: text between ';'/','; a reading item is code-field=value (first '-' before
        # the first '=', both parts non-empty) — what HJ 212-2017 §6.3.3 writes as xxx-Rtd=…
        delim = np.flatnonzero((buf == ord(";")) | (buf == ord(",")))
        start, end = delim + 1, np.append(delim[1:], len(buf))
        eq = textscan.first_at_or_after(np.flatnonzero(buf == ord("=")), start, len(buf))
        dash = textscan.first_at_or_after(np.flatnonzero(buf == ord("-")), start, len(buf))
        item = (eq < end) & (dash > start) & (eq > dash + 1)
        start, dash, eq, end = start[item], dash[item], eq[item], end[item]
        frame = np.searchsorted(frame_at, start, side="right") - 1
        code_len, field_len, text_len = dash - start, eq - dash - 1, end - eq - 1
        rejects: dict[int, str] = {}
        for k in np.flatnonzero((code_len > _NAME_MAX) | (field_len > _NAME_MAX)).tolist():
            what = buf[start[k] : end[k]].tobytes().decode("latin-1")
            rejects.setdefault(
                int(frame[k]), f"hj212_invalid: item {what!r} has a name over {_NAME_MAX} chars"
            )
        code_id, code_words = textscan.intern_rows(
            textscan.cut(buf, start, code_len, min(int(code_len.max(initial=0)), _NAME_MAX))
        )
        field_id, field_words = textscan.intern_rows(
            textscan.cut(buf, dash + 1, field_len, min(int(field_len.max(initial=0)), _NAME_MAX))
        )
        # per distinct field: a value, a flag (Flag → 0, ZsFlag → 1, other flags unused), skipped
        kinds = [
            (0 if f == b"Flag" else 1 if f == b"ZsFlag" else -1)
            if f.endswith(b"Flag")
            else (-3 if f == b"SampleTime" else -2)
            for f in field_words
        ]
        kind = np.array(kinds or [-3], dtype=np.int64)[field_id]
        zs = np.array([f.startswith(b"Zs") for f in field_words] or [False])[field_id]

        value_pos = np.flatnonzero(kind == -2)
        v_start, v_len = eq[value_pos] + 1, text_len[value_pos]
        values, parsed = textscan.parse_decimals(
            textscan.cut(buf, v_start, v_len, min(int(v_len.max(initial=0)), _VALUE_WIDTH)), v_len
        )
        for k in np.flatnonzero(~parsed).tolist():  # exponents, spaces, not numbers…
            text = buf[v_start[k] : v_start[k] + v_len[k]].tobytes()
            at = int(value_pos[k])
            try:
                values[k] = float(text)
            except ValueError:
                name = buf[start[at] : eq[at]].tobytes().decode("latin-1")
                msg = f"hj212_invalid: {name}={text.decode('latin-1')!r} is not a number"
                rejects.setdefault(int(frame[at]), msg)
                continue
            if not math.isfinite(values[k]):  # float() reads "nan", "inf", "1e999"
                name = buf[start[at] : eq[at]].tobytes().decode("latin-1")
                rejects.setdefault(int(frame[at]), not_finite(name, float(values[k])))

        # the data flag of each value: the last Flag (ZsFlag for Zs values) of its factor in its
        # frame; an absent or empty ZsFlag falls back to Flag
        flag_pos = np.flatnonzero(kind >= 0)
        f_len = text_len[flag_pos]
        for k in np.flatnonzero(f_len > _NAME_MAX).tolist():
            rejects.setdefault(
                int(frame[flag_pos[k]]), f"hj212_invalid: a flag over {_NAME_MAX} chars"
            )
        flag_text_id, flag_words = textscan.intern_rows(
            textscan.cut(buf, eq[flag_pos] + 1, f_len, min(int(f_len.max(initial=0)), _NAME_MAX))
        )
        stride = 2 * max(len(code_words), 1)
        flag_key = frame[flag_pos] * stride + code_id[flag_pos] * 2 + kind[flag_pos]
        order = np.argsort(flag_key, kind="stable")
        flag_key, flag_text_id = flag_key[order], flag_text_id[order]
        last = np.append(flag_key[1:] != flag_key[:-1], True) if len(flag_key) else flag_key > 0
        flag_key, flag_text_id = flag_key[last], flag_text_id[last]
        empty = np.array([not w for w in flag_words] or [False])
        base = frame[value_pos] * stride + code_id[value_pos] * 2
        flag = self._lookup(flag_key, flag_text_id, base + zs[value_pos])
        unset = flag < 0
        unset[~unset] = empty[flag[~unset]]
        flag[unset] = self._lookup(flag_key, flag_text_id, base[unset])

        if rejects:
            keep = ~np.isin(frame[value_pos], np.fromiter(rejects, dtype=np.int64))
            value_pos, values, flag = value_pos[keep], values[keep], flag[keep]
        meta = np.array([d[1:] for d in self.data] or [(0, 0, 0, False, 0)], dtype=np.int64)
        item_meta = meta[frame[value_pos]]
        cid = code_id[value_pos]
        code_b = np.array(code_words or [b""], dtype=np.bytes_)
        flag_b = np.array(flag_words or [b""], dtype=np.bytes_)
        factor_b = _latin1(
            [OLD_TO_NEW.get(c.decode("latin-1"), c.decode("latin-1")) for c in code_words]
        )
        rows = TableRows(
            table=HJ212_READINGS.name,
            columns={
                "time": item_meta[:, 0].copy(),
                "cn": item_meta[:, 2].astype(np.int16),
                "factor": np.where(item_meta[:, 3] == 1, code_b[cid], factor_b[cid]),
                "code": code_b[cid],
                "field": np.array(field_words or [b""], dtype=np.bytes_)[field_id[value_pos]],
                "value": values,
                "flag": np.where(flag >= 0, flag_b[np.maximum(flag, 0)], b""),
            },
            devices=_latin1(list(self.words))[item_meta[:, 1]],
            frame_index=item_meta[:, 4].astype(np.int32),
            nulls={"flag": flag < 0},
        )
        reject_list = [Reject(self.data[f][5], why) for f, why in rejects.items()]
        return rows, reject_list

    @staticmethod
    def _lookup(
        keys: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], wanted: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """``ids`` at the position of each ``wanted`` key in sorted ``keys``; -1 if absent."""
        if not len(keys):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where(keys[at] == wanted, ids[at], -1)


DECODER: Decoder = HJ212Decoder()
