"""Every Prometheus metric cityflux exports, declared once, on a registry owned by the service.

Names follow the Prometheus conventions (base units, ``_total`` for counters). Counters are
updated once per batch. Reject reasons are labelled by their first word (``crc_mismatch``,
``unknown_device``…) so the label set stays small; the full reason is in dead_letters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def reason_label(reason: str) -> str:
    """The stable first word of a reject reason, used as a metric label."""
    return reason.split(":", 1)[0].split(" ", 1)[0][:40] or "unspecified"


class Metrics:
    """The service's metrics; pass one instance to every stage that reports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames_received = Counter(
            "cityflux_frames_received",
            "Frames received from devices",
            ["transport", "format"],
            registry=r,
        )
        self.frames_decoded = Counter(
            "cityflux_frames_decoded", "Frames decoded and stored", ["format"], registry=r
        )
        self.frames_rejected = Counter(
            "cityflux_frames_rejected",
            "Frames sent to dead letters, by reason",
            ["format", "reason"],
            registry=r,
        )
        self.frames_acked = Counter(
            "cityflux_frames_acknowledged",
            "Frames acknowledged to the transport after commit",
            ["transport"],
            registry=r,
        )
        self.rows_written = Counter(
            "cityflux_rows_written", "Rows committed, by table", ["table"], registry=r
        )
        self.devices_registered = Gauge(
            "cityflux_devices_registered", "Devices in the in-memory registry index", registry=r
        )
        self.devices_by_state = Gauge(
            "cityflux_devices",
            "Registered devices by profile and state (online, offline, never_seen, disabled)",
            ["profile", "state"],
            registry=r,
        )
        self.registry_refreshes = Counter(
            "cityflux_registry_refreshes", "Reads of the registry change feed", registry=r
        )
        self.last_seen_written = Counter(
            "cityflux_last_seen_written",
            "Device last-seen times written (one UPDATE per flush)",
            registry=r,
        )
        self.batch_commit_seconds = Histogram(
            "cityflux_batch_commit_seconds",
            "Time to store one batch (decode to commit)",
            ["format"],
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.batch_frames = Histogram(
            "cityflux_batch_frames",
            "Frames per batch",
            ["format"],
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000),
            registry=r,
        )
        self.queue_depth = Gauge(
            "cityflux_queue_depth_frames", "Frames received but not yet committed", registry=r
        )
        self.ingest_paused = Gauge(
            "cityflux_ingest_paused", "1 while sources are paused for backpressure", registry=r
        )
        self.db_retries = Counter(
            "cityflux_db_retries", "Database operations retried after a lost connection", registry=r
        )
        self.devices_provisioned = Counter(
            "cityflux_devices_provisioned", "Devices auto-provisioned on first frame", registry=r
        )
        self.mqtt_connected = Gauge(
            "cityflux_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.storage_info = Gauge(
            "cityflux_storage_info",
            "Storage backend in use (value is always 1)",
            ["backend"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
