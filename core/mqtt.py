"""The broker connection settings every MQTT client shares: the service's listeners, the alert
sink, the simulator, record and replay."""

from __future__ import annotations

import ssl
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import Field, SecretStr, model_validator

from core.config import Section


class MqttProtocol(StrEnum):
    """MQTT protocol version spoken to the broker."""

    V5 = "5"
    V311 = "3.1.1"


class QoS(IntEnum):
    """Subscription quality of service (QoS 1 = at least once, acked after commit)."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1


class TlsMode(StrEnum):
    """Whether the broker connection is encrypted."""

    OFF = "off"
    ON = "on"  # TLS, the broker's certificate verified against tls_ca_file (or the system's)


class TlsVersion(StrEnum):
    """Oldest TLS version accepted."""

    V1_2 = "1.2"
    V1_3 = "1.3"


class MqttConfig(Section):
    """MQTT source: broker address, subscription and session."""

    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker TCP port")
    username: str | None = Field(None, description="broker user name")
    password: SecretStr | None = Field(None, description="broker password")
    client_id: str = Field(
        "cityflux-ingest-1",
        min_length=1,
        max_length=128,
        description="client id; the persistent session is keyed by it",
    )
    protocol: MqttProtocol = Field(MqttProtocol.V5, description="MQTT protocol version")
    topics: list[str] = Field(
        ["cityflux/up/+/+/+/#"],
        min_length=1,
        description="uplink subscriptions (kind/device/format levels, then an LwM2M object path)",
    )
    qos: QoS = Field(QoS.AT_LEAST_ONCE, description="subscription QoS")
    shared_group: str | None = Field(
        None,
        pattern=r"^[^/#+$]+$",
        description="MQTT 5 shared-subscription group: workers in one group split the stream "
        "(unset with workers > 1: cityflux)",
    )
    session_expiry_s: int = Field(
        86_400,
        ge=0,
        description="broker keeps the session (and queued frames) this long; 0 = clean session",
    )
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keep-alive interval")
    receive_maximum: int = Field(
        65_535,
        ge=1,
        le=65_535,
        description="QoS 1 messages the broker may have unacknowledged with us (MQTT 5)",
    )
    reconnect_max_s: float = Field(10.0, gt=0, description="longest wait between reconnects")
    tls: TlsMode = Field(
        TlsMode.OFF,
        description="off, or on: TLS to the broker (set port too: brokers serve TLS on 8883)",
    )
    tls_ca_file: Path | None = Field(
        None, description="CA certificates (PEM) the broker's certificate must chain to"
    )
    tls_cert_file: Path | None = Field(
        None, description="client certificate (PEM), for a broker that requires one"
    )
    tls_key_file: Path | None = Field(None, description="the client certificate's key (PEM)")
    tls_server_name: str | None = Field(
        None, description="name the broker's certificate must carry (unset: host)"
    )
    tls_min_version: TlsVersion = Field(TlsVersion.V1_2, description="oldest TLS version")

    @model_validator(mode="after")
    def _tls_fields(self) -> Self:
        given = [
            f
            for f in ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
            if getattr(self, f) is not None
        ]
        if given and self.tls is TlsMode.OFF:
            raise ValueError(f"{', '.join(given)} given but tls is off")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a broker connection (None with ``tls = off``); reads the files,
        so it is called when connecting, never while validating."""
        if self.tls is TlsMode.OFF:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
        ctx.minimum_version = (
            ssl.TLSVersion.TLSv1_3
            if self.tls_min_version is TlsVersion.V1_3
            else ssl.TLSVersion.TLSv1_2
        )
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
        return ctx

    @property
    def server_name(self) -> str:
        """The name the broker's certificate is checked against."""
        return self.tls_server_name or self.host

    def secure_paho(self, client: Any) -> None:
        """TLS and credentials for a paho client connecting with these settings."""
        if self.username is not None:
            client.username_pw_set(
                self.username, self.password.get_secret_value() if self.password else None
            )
        ctx = self.ssl_context()
        if ctx is not None:
            client.tls_set_context(_NamedContext(ctx, self.server_name))


class _NamedContext:
    """An SSL context that checks a given server name (paho checks the host it dials)."""

    def __init__(self, ctx: ssl.SSLContext, server_name: str) -> None:
        self._ctx = ctx
        self._name = server_name
        self.check_hostname = ctx.check_hostname

    def wrap_socket(self, sock: Any, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap as the context would, for ``server_name``."""
        kwargs["server_hostname"] = self._name
        return self._ctx.wrap_socket(sock, **kwargs)
