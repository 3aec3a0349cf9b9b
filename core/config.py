"""The base of every configuration section (each component's model lives beside it;
``ingest/settings.py`` composes them into the service's settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
