"""The two DTLS records the CoAP DTLS endpoint looks into before Mbed TLS does (RFC 6347
§4.1 record header, §4.2.2 handshake header; RFC 4279 §2 ClientKeyExchange): a ClientHello
starts a session, a ClientKeyExchange names the PSK identity whose key is read first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ingest.coap_dtls import _is_client_hello, _psk_identity


def record(msg_type: int, body: bytes, epoch: int = 0) -> bytes:
    """One DTLS 1.2 handshake record holding one unfragmented message."""
    n = len(body).to_bytes(3, "big")
    handshake = bytes([msg_type]) + n + b"\x00\x02" + b"\x00\x00\x00" + n + body
    return (
        bytes([22, 0xFE, 0xFD])
        + epoch.to_bytes(2, "big")
        + (5).to_bytes(6, "big")
        + len(handshake).to_bytes(2, "big")
        + handshake
    )


def test_the_identity_of_a_client_key_exchange_is_read() -> None:
    ident = b"nb-a@city"
    cke = record(16, len(ident).to_bytes(2, "big") + ident)
    change_cipher_spec = bytes([20, 0xFE, 0xFD, 0, 0]) + (6).to_bytes(6, "big") + b"\x00\x01\x01"
    assert _psk_identity(cke + change_cipher_spec) == "nb-a@city"
    assert not _is_client_hello(cke)


def test_a_client_hello_starts_a_session_and_names_no_identity() -> None:
    hello = record(1, b"\xfe\xfd" + bytes(32) + b"\x00\x00\x00\x02\xc0\xa8\x01\x00")
    assert _is_client_hello(hello)
    assert _psk_identity(hello) is None
    assert not _is_client_hello(record(1, bytes(40), epoch=1))  # encrypted: not a new session


@given(st.binary(max_size=64))
def test_no_datagram_makes_them_raise(data: bytes) -> None:
    assert _is_client_hello(data) in (True, False)
    identity = _psk_identity(data)
    assert identity is None or (identity and len(identity.encode()) <= len(data) - 27)
