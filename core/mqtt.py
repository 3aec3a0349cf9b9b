"""The broker connection settings every MQTT client shares: the service's listeners, the alert
sink, the simulator, record and replay."""

from __future__ import annotations

from enum import IntEnum, StrEnum

from pydantic import Field, SecretStr

from core.config import Section


class MqttProtocol(StrEnum):
    """MQTT protocol version spoken to the broker."""

    V5 = "5"
    V311 = "3.1.1"


class QoS(IntEnum):
    """Subscription quality of service (QoS 1 = at least once, acked after commit)."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1


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
        description="MQTT 5 shared-subscription group: workers in one group split the stream",
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
