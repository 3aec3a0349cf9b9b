"""Alerts: rules compiled to numpy, the engine over committed batches, alert lifecycle, sinks."""
