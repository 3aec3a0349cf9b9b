"""SenML CBOR (RFC 8428 §6, application/senml+cbor, CoAP Content-Format 112).

The same resolution as SenML JSON (``decoders/senml_json.py``) after mapping the integer
labels of RFC 8428 Table 6 to their names.
"""

from __future__ import annotations

import cbor2

from core.frames import Decoded, FrameBatch
from decoders.base import Decoder, TableSpec
from decoders.limits import MAX_DEPTH, cbor_may_exceed, depth_exceeds, too_deep
from decoders.senml_json import PackError, decode_packs
from decoders.tables import ENV_READINGS

# RFC 8428 §6, Table 6: CBOR labels of the SenML fields.
LABELS: dict[int, str] = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}


def _load_cbor(payload: bytes) -> object:
    # cbor2 stops at 400 levels itself (CBORDecodeError); our cap is lower and is checked on
    # the decoded structure, iteratively, only when the payload has enough opening bytes.
    deep = cbor_may_exceed(payload)
    try:
        pack = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, OverflowError, RecursionError, TypeError) as exc:
        if deep and ("nesting depth" in str(exc) or isinstance(exc, RecursionError)):
            raise PackError(too_deep("pack")) from None
        raise PackError(f"cbor_invalid: {exc}") from None
    if deep and depth_exceeds(pack, MAX_DEPTH):
        raise PackError(too_deep("pack"))
    if not isinstance(pack, list):
        return pack  # parse_pack names the problem
    records: list[object] = []
    for rec in pack:
        if isinstance(rec, dict):
            # integer labels per Table 6; string labels are extensions and kept as they are
            records.append(
                {LABELS.get(k, k) if isinstance(k, int) else k: v for k, v in rec.items()}
            )
        else:
            records.append(rec)
    return records


class SenMLCborDecoder:
    """Decoder for SenML CBOR packs, one pack per frame."""

    name = "senml-cbor"
    content_formats: tuple[int, ...] = (112,)
    tables: tuple[TableSpec, ...] = (ENV_READINGS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Parse every pack; a bad pack is rejected whole, its neighbours are kept."""
        return decode_packs(batch, _load_cbor)


DECODER: Decoder = SenMLCborDecoder()
