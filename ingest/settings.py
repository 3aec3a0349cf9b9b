"""The service's settings: each component's config model, composed, read from a TOML file and
CITYFLUX_* variables (each model lives beside its component, as Vector keeps each
component's configuration with it).

Precedence: environment over file over defaults. Nested fields use ``__`` in variable names
(``CITYFLUX_MQTT__HOST``). Validation never touches the network. An invalid value fails at
start-up with ``ConfigError`` naming the field and where the value came from.
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alerts.config import AlertsConfig
from core.config import Section
from core.logformat import LogFormat
from core.mqtt import MqttConfig, MqttProtocol
from device_registry.config import RegistryConfig
from device_registry.resolver import UnknownDevicePolicy
from ingest.lwm2m import Lwm2mConfig, Lwm2mMode
from parking.config import ParkingConfig
from storage.config import DatabaseConfig

ENV_PREFIX = "CITYFLUX_"
ENV_NESTED = "__"


class ConfigError(ValueError):
    """Invalid configuration; the message names the field and its source."""


class CoapMode(StrEnum):
    """Whether to listen for CoAP uplinks, and how devices prove who they are."""

    OFF = "off"
    OPEN = "open"  # no authentication (a trusted network, or tests)
    OSCORE = "oscore"  # every request OSCORE-protected with its device's registry key


class DtlsMode(StrEnum):
    """Whether CoAP also listens for DTLS (coaps://) on ``dtls_port``."""

    OFF = "off"
    PSK = "psk"  # DTLS 1.2, each device's PSK identity and key from the registry


class CoapConfig(Section):
    """CoAP source (UDP): NB-IoT devices' uplinks."""

    mode: CoapMode = Field(CoapMode.OFF, description="off, open (no authentication) or oscore")
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(5683, ge=0, le=65535, description="UDP port (0 = any free port)")
    path_prefix: str = Field(
        "up", pattern=r"^[A-Za-z0-9._~-]+$", description="uplinks: /<prefix>/<kind>/<device>/…"
    )
    flush_interval_ms: int = Field(
        50,
        ge=1,
        description="seal CoAP batches at this age (devices wait for the commit's answer)",
    )
    piggyback_ms: int = Field(
        1_500,
        ge=0,
        le=10_000,
        description="answer in the ACK if the commit comes within this; else ACK now, answer later",
    )
    retry_after_s: int = Field(
        10, ge=0, le=86_400, description="Max-Age of 5.03 answers while the pipeline is saturated"
    )
    max_body_bytes: int = Field(
        65_536, ge=1_024, description="largest block-wise uplink accepted (else 4.13)"
    )
    dedup_entries: int = Field(
        100_000, ge=100, description="recent exchanges remembered to answer retransmissions"
    )
    max_uploads: int = Field(
        256, ge=1, description="block-wise uploads assembled at once, in all (beyond: 5.03)"
    )
    max_uploads_per_remote: int = Field(
        4, ge=1, description="block-wise uploads assembled at once per address and port (5.03)"
    )
    max_pending_oscore: int = Field(
        1_000, ge=1, description="OSCORE requests awaiting their key at once (beyond: 5.03)"
    )
    oscore_unknown_kids: int = Field(
        10_000, ge=1, description="unknown OSCORE key ids remembered (10 s each, LRU)"
    )
    oscore_lookups_per_s: float = Field(
        200.0, gt=0, description="registry look-ups of new OSCORE key ids per second (5.03)"
    )
    dtls: DtlsMode = Field(
        DtlsMode.OFF,
        description="off, or psk: DTLS-PSK (coaps://) on dtls_port too; needs cityflux[dtls]",
    )
    dtls_port: int = Field(5684, ge=0, le=65535, description="DTLS UDP port (0 = any free port)")
    dtls_max_sessions: int = Field(
        2_000, ge=1, description="DTLS sessions held at once (~45 KiB each; beyond: least recent)"
    )
    dtls_max_handshakes: int = Field(
        200, ge=1, description="DTLS handshakes in progress at once (beyond: the oldest dropped)"
    )
    dtls_max_handshakes_per_host: int = Field(
        16, ge=1, description="DTLS handshakes in progress per IP address (beyond: ignored)"
    )
    dtls_handshake_timeout_s: float = Field(
        30.0, gt=0, description="a DTLS handshake not finished by then is dropped"
    )
    dtls_session_idle_s: float = Field(
        600.0, gt=0, description="a DTLS session unused this long is dropped (device redoes it)"
    )
    dtls_unknown_identities: int = Field(
        10_000, ge=1, description="unknown PSK identities remembered (10 s each, LRU)"
    )
    dtls_lookups_per_s: float = Field(
        200.0, gt=0, description="registry look-ups of new PSK identities per second"
    )


class PipelineConfig(Section):
    """Batching and backpressure."""

    batch_max_frames: int = Field(5_000, ge=1, description="flush a batch at this many frames")
    flush_interval_ms: int = Field(200, ge=1, description="flush a batch at this age")
    max_frame_bytes: int = Field(
        65_536,
        ge=64,
        le=16 << 20,
        description="frames larger than this are refused at the listener (dead letter)",
    )
    max_inflight_frames: int = Field(
        100_000, ge=1, description="stop reading from sources above this many uncommitted frames"
    )
    unknown_devices: UnknownDevicePolicy = Field(
        UnknownDevicePolicy.AUTO_PROVISION, description="reject or auto-provision unknown devices"
    )


class MetricsAccess(StrEnum):
    """Who may scrape /metrics."""

    OPEN = "open"  # anyone who reaches the port (Prometheus' default scrape)
    TOKEN = "token"  # noqa: S105 - a bearer token of scope read (Prometheus: authorization.credentials)


class HttpConfig(Section):
    """Operator HTTP endpoint: /metrics, /healthz, /readyz, the token-guarded /api/v1."""

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(9108, ge=0, le=65535, description="listen port (0 = any free port)")
    metrics_access: MetricsAccess = Field(
        MetricsAccess.OPEN, description="/metrics: open, or token (a bearer token of scope read)"
    )


class LogLevel(StrEnum):
    """Logging threshold."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Settings(BaseSettings):
    """Everything the service can be told; the README's configuration table comes from this."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        validate_assignment=True,
    )

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    coap: CoapConfig = Field(default_factory=CoapConfig)
    lwm2m: Lwm2mConfig = Field(default_factory=Lwm2mConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    parking: ParkingConfig = Field(default_factory=ParkingConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log_level: LogLevel = Field(LogLevel.INFO, description="logging threshold")
    log_format: LogFormat = Field(
        LogFormat.TEXT,
        description="text (for people) or json (one object per line, for Loki or Elastic)",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="worker processes in one MQTT 5 shared subscription (docs/design/0006)",
    )

    @field_validator("workers")
    @classmethod
    def _scale_out(cls, workers: int, info: ValidationInfo) -> int:
        """What several workers cannot do (docs/design/0006-scale-out.md), refused at start
        (``workers`` is declared last, so the sections are validated already)."""
        mqtt, alerts = info.data.get("mqtt"), info.data.get("alerts")
        if workers == 1:
            return workers
        if isinstance(mqtt, MqttConfig) and mqtt.protocol is not MqttProtocol.V5:
            raise ValueError(
                f"{workers} workers need mqtt.protocol = 5: they split the stream through "
                "an MQTT 5 shared subscription"
            )
        if isinstance(alerts, AlertsConfig) and alerts.rules_file is not None:
            raise ValueError(
                f"{workers} workers cannot run alerts.rules_file: the rules engine keeps each "
                "device's state in one process and a shared subscription spreads a device's "
                "frames over every worker; run the rules with workers = 1 "
                "(docs/design/0006-scale-out.md)"
            )
        lwm2m = info.data.get("lwm2m")
        if isinstance(lwm2m, Lwm2mConfig) and lwm2m.mode is Lwm2mMode.SERVER:
            raise ValueError(
                f"{workers} workers cannot run lwm2m.mode = server: registrations live in one "
                "process, and SO_REUSEPORT may hand a device's next datagram (an Update from a "
                "new port, the answer to a Write) to another worker; run LwM2M with workers = 1 "
                "(docs/design/0012-lwm2m-server.md)"
            )
        return workers

    @model_validator(mode="after")
    def _lwm2m_needs_coap(self) -> Settings:
        if (
            self.lwm2m.mode is Lwm2mMode.SERVER
            and self.coap.mode is CoapMode.OFF
            and self.coap.dtls is DtlsMode.OFF
        ):
            raise ValueError("lwm2m.mode = server needs coap.mode = open or oscore, or coap.dtls")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the values given in code (the TOML file), then defaults."""
        return env_settings, init_settings


def _deep_get(data: dict[str, Any], path: tuple[int | str, ...]) -> bool:
    node: Any = data
    for part in path:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            return False
    return True


def _env_var(path: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED.join(str(p) for p in path).upper()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError on a bad value."""
    file_data: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_data = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML: {exc}") from exc
    merged = {**file_data, **overrides}
    try:
        return Settings(**merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc)
            env = _env_var(loc)
            if env in os.environ or any(k.startswith(env + ENV_NESTED) for k in os.environ):
                source = f"environment variable {env}"
            elif config_file is not None and _deep_get(file_data, loc):
                source = f"config file {config_file}"
            elif _deep_get(overrides, loc):
                source = "command line"
            else:
                source = "defaults"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{field + ': ' if field else ''}{msg} (from {source})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
