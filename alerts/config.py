"""The rules engine's configuration (``[alerts]``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from core.config import Section
from core.mqtt import QoS


class AlertsConfig(Section):
    """The rules engine and where alerts are delivered."""

    rules_file: Path | None = Field(None, description="alert rules (YAML); unset = no rules engine")
    reload_check_s: float = Field(
        2.0, gt=0, description="look for a changed rules file this often (SIGHUP: at once)"
    )
    tick_s: float = Field(
        5.0, gt=0, description="check offline devices and clear_after this often (wall clock)"
    )
    checkpoint_s: float = Field(
        60.0, gt=0, description="save the engine's state (pending conditions…) this often"
    )
    mqtt_topic_prefix: str = Field(
        "cityflux/alerts",
        description="publish alert events under <prefix>/<severity>/<rule>/<subject>; '' = off",
    )
    mqtt_qos: QoS = Field(QoS.AT_LEAST_ONCE, description="QoS of published alert events")
    webhook_urls: list[str] = Field(
        default_factory=list, description="POST alert events to these URLs (JSON)"
    )
    webhook_secret: SecretStr | None = Field(
        None, description="sign webhooks: X-Cityflux-Signature: sha256=<HMAC of timestamp.body>"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="webhook request timeout")
    webhook_give_up_after: int = Field(
        5,
        ge=1,
        le=1000,
        description="an event a webhook refuses (4xx but 408/429) this many times is recorded "
        "in alert_delivery_failures and skipped",
    )
    retry_initial_ms: int = Field(1_000, ge=1, description="first delivery retry backoff")
    retry_max_ms: int = Field(300_000, ge=1, description="longest delivery retry backoff")

    @field_validator("webhook_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return v
