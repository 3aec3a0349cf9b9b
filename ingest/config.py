"""Configuration: one pydantic model per stage, read from a TOML file and CITYFLUX_* variables.

Precedence: environment over file over defaults. Nested fields use ``__`` in variable names
(``CITYFLUX_MQTT__HOST``). Validation never touches the network. An invalid value fails at
start-up with ``ConfigError`` naming the field and where the value came from.
"""

from __future__ import annotations

import os
import tomllib
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from device_registry.resolver import UnknownDevicePolicy
from storage.migrate import TimescaleMode
from storage.writer import WriteMethod

ENV_PREFIX = "CITYFLUX_"
ENV_NESTED = "__"


class ConfigError(ValueError):
    """Invalid configuration; the message names the field and its source."""


class MqttProtocol(StrEnum):
    """MQTT protocol version spoken to the broker."""

    V5 = "5"
    V311 = "3.1.1"


class QoS(IntEnum):
    """Subscription quality of service (QoS 1 = at least once, acked after commit)."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class DatabaseConfig(Section):
    """PostgreSQL / TimescaleDB sink."""

    url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"),
        description="libpq connection URL",
    )
    timescaledb: TimescaleMode = Field(
        TimescaleMode.AUTO, description="use TimescaleDB: auto, require, off"
    )
    write_method: WriteMethod = Field(WriteMethod.COPY, description="copy or insert")
    writers: int = Field(2, ge=1, le=32, description="parallel writer connections")
    retry_initial_ms: int = Field(100, ge=1, description="first backoff after a lost connection")
    retry_max_ms: int = Field(5_000, ge=1, description="longest backoff")


class PipelineConfig(Section):
    """Batching and backpressure."""

    batch_max_frames: int = Field(5_000, ge=1, description="flush a batch at this many frames")
    flush_interval_ms: int = Field(200, ge=1, description="flush a batch at this age")
    max_inflight_frames: int = Field(
        100_000, ge=1, description="stop reading from sources above this many uncommitted frames"
    )
    unknown_devices: UnknownDevicePolicy = Field(
        UnknownDevicePolicy.AUTO_PROVISION, description="reject or auto-provision unknown devices"
    )


class RegistryConfig(Section):
    """Device registry: following changes, last seen, online status."""

    refresh_s: float = Field(
        30.0, gt=0, description="poll for device changes this often (NOTIFY wakes it sooner)"
    )
    last_seen_flush_s: float = Field(
        5.0, gt=0, description="write devices' last-seen times in one UPDATE this often"
    )
    status_interval_s: float = Field(
        300.0,
        ge=0,
        description="refresh the online/offline gauges this often (scans the registry; 0 = never)",
    )


class HttpConfig(Section):
    """Operator HTTP endpoint: /metrics, /healthz, /readyz."""

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(9108, ge=0, le=65535, description="listen port (0 = any free port)")


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
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log_level: LogLevel = Field(LogLevel.INFO, description="logging threshold")

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
            problems.append(f"{field}: {err['msg']} (from {source})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
