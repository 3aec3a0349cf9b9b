"""Smart parking's configuration (``[parking]``)."""

from __future__ import annotations

from pydantic import Field

from core.config import Section


class ParkingConfig(Section):
    """Parking-space occupancy: how a sensor's change of state is debounced."""

    debounce_frames: int = Field(
        2,
        ge=1,
        le=100,
        description="a space changes state after this many consecutive frames agree (1 = at once)",
    )
    debounce_s: float = Field(
        120.0,
        ge=0,
        description="… or once the new state has held this long (a frame then, or on reading)",
    )
    flap_window_s: float = Field(
        3600.0, gt=0, description="suppressed flips of a space are counted per window this long"
    )
    max_ahead_s: float = Field(
        3600.0,
        gt=0,
        description="a report dated further ahead of the service's clock is stored but moves "
        "no space (a device clock gone wrong would freeze its space until that time)",
    )
