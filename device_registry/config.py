"""The device registry's configuration (``[registry]``)."""

from __future__ import annotations

from pydantic import Field

from core.config import Section


class RegistryConfig(Section):
    """Device registry: following changes, last seen, online status."""

    refresh_s: float = Field(
        30.0, gt=0, description="poll for device changes this often (NOTIFY wakes it sooner)"
    )
    last_seen_flush_s: float = Field(
        5.0, gt=0, description="write devices' last-seen times in one UPDATE this often"
    )
    credential_iterations: int = Field(
        1_000,
        ge=1,
        le=10_000_000,
        description="PBKDF2 rounds of new device secret hashes (EMQX: set the same count)",
    )
    status_interval_s: float = Field(
        300.0,
        ge=0,
        description="refresh the online/offline gauges this often (scans the registry; 0 = never)",
    )
    frame_loss_flush_s: float = Field(
        1.0, gt=0, description="write frame-loss gaps, hourly counts and detector state this often"
    )
    frame_loss_max_gap: int = Field(
        4_096,
        ge=1,
        description="a device's frame number jumping forward by more than this is a restart "
        "(reboot, clock set anew), not frames lost",
    )
