"""A test PKI made with ``cryptography`` (a CA, another CA, the broker's certificates valid
and expired, clients' certificates whose common names are their MQTT identities) and a
private Mosquitto with TLS listeners requiring client certificates
(``use_identity_as_username``): what the MQTT-over-TLS tests share."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.mqtt import MqttConfig
from storage.embedded import free_port, reachable

MOSQUITTO = shutil.which("mosquitto")
NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Pki:
    """Files of a CA, the broker's certificates and clients' certificates."""

    ca: Path
    wrong_ca: Path
    server: tuple[Path, Path]
    expired_server: tuple[Path, Path]
    clients: dict[str, tuple[Path, Path]]

    def fingerprint(self, who: str) -> str:
        """The SHA-256 fingerprint (hex) of ``who``'s certificate, as the registry stores it."""
        cert = x509.load_pem_x509_certificate(self.clients[who][0].read_bytes())
        return cert.fingerprint(hashes.SHA256()).hex()

    def mqtt(self, port: int, who: str, ca: Path | None = None) -> MqttConfig:
        """Broker settings for ``who`` over TLS to a private broker's ``port``."""
        cert, key = self.clients[who]
        return MqttConfig(
            host="127.0.0.1",
            port=port,
            tls="on",
            tls_ca_file=ca or self.ca,
            tls_cert_file=cert,
            tls_key_file=key,
            tls_server_name="broker.test",
        )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    *,
    server: bool,
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    start = NOW - dt.timedelta(days=10 if expired else 1)
    end = NOW - dt.timedelta(days=2) if expired else NOW + dt.timedelta(days=30)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:  # the broker is "broker.test" (and its loopback address)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("broker.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca[1], hashes.SHA256()), key


def make_pki(folder: Path, clients: tuple[str, ...]) -> Pki:
    """Certificates in ``folder``: one client certificate per name in ``clients``."""
    ca, other = _ca("cityflux test CA"), _ca("somebody else's CA")
    (folder / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    (folder / "wrong-ca.crt").write_bytes(other[0].public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca=folder / "ca.crt",
        wrong_ca=folder / "wrong-ca.crt",
        server=_write(folder, "server", *_leaf(ca, "broker.test", server=True)),
        expired_server=_write(
            folder, "expired", *_leaf(ca, "broker.test", server=True, expired=True)
        ),
        clients={
            cn: _write(folder, f"client-{cn}", *_leaf(ca, cn, server=False)) for cn in clients
        },
    )


@dataclass(frozen=True)
class TlsBroker:
    """A private Mosquitto: a TLS listener requiring client certificates, and one whose
    certificate has expired."""

    port: int
    expired_port: int
    prefix: str


@contextmanager
def tls_mosquitto(pki: Pki, folder: Path, prefix: str, acl_text: str) -> Iterator[TlsBroker]:
    """A private Mosquitto on two loopback TLS listeners (valid and expired certificate) that
    require client certificates and take their common names as user names, with ``acl_text``
    as its ACL."""
    assert MOSQUITTO is not None, "needs the mosquitto binary"
    port, expired = free_port(), free_port()
    acl = folder / "acl"
    acl.write_text(acl_text)
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"per_listener_settings false\nallow_anonymous false\nacl_file {acl}\n"
        "persistence false\n"
        + ("user root\n" if os.geteuid() == 0 else "")
        + f"listener {port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server[0]}\n"
        f"keyfile {pki.server[1]}\nrequire_certificate true\nuse_identity_as_username true\n"
        f"listener {expired} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.expired_server[0]}\n"
        f"keyfile {pki.expired_server[1]}\nrequire_certificate true\n"
        "use_identity_as_username true\n"
    )
    proc = subprocess.Popen(
        [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while not (reachable("127.0.0.1", port) and reachable("127.0.0.1", expired)):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"mosquitto did not start: {err}")
            time.sleep(0.05)
        yield TlsBroker(port, expired, prefix)
    finally:
        proc.terminate()
        proc.wait(10)
