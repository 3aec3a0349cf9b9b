"""The database sink's configuration (``[database]``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from core.config import Section
from storage.migrate import TimescaleMode
from storage.writer import WriteMethod


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
