"""Declarations of the telemetry tables decoders produce (each declared once, here)."""

from __future__ import annotations

from decoders.base import Column, ColumnType, HourlyRollup, TableSpec

T = ColumnType

ENV_READINGS = TableSpec(
    name="env_readings",
    description="Environmental readings: one numeric value per device, metric and time.",
    columns=(
        Column("time", T.TIMESTAMPTZ, description="measurement time (UTC)"),
        Column("device_id", T.INT4, description="internal device id (devices.id)"),
        Column("metric", T.TEXT, description="metric name, e.g. temperature, pm2_5"),
        Column("value", T.FLOAT8, description="value in the metric's unit (decoders/README.md)"),
    ),
    natural_key=("device_id", "metric", "time"),
    chunk_interval="1 day",
    compress_after="7 days",
    retain_for="730 days",
    hourly=HourlyRollup(group_by=("device_id", "metric"), values=("value",)),
)

ALL_TABLES = (ENV_READINGS,)
