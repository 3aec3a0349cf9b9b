"""Every Prometheus metric cityflux exports, declared once, on a registry owned by the service.

Names follow the Prometheus conventions (base units, ``_total`` for counters). Counters are
updated once per batch. Reject reasons are labelled by their first word (``crc_mismatch``,
``unknown_device``…) so the label set stays small; the full reason is in dead_letters.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Device time to commit: from a live fleet's tens of milliseconds to a replayed backlog's hours.
AGE_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75),
    *(1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)


class BulkHistogram(Collector):
    """A labelled histogram observed a whole numpy array at a time (one ``searchsorted`` and
    ``bincount`` per batch; prometheus_client's ``Histogram.observe`` takes one value)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._doc, self._label = name, documentation, label
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts: dict[str, npt.NDArray[np.int64]] = {}
        self._sums: dict[str, float] = {}
        registry.register(self)

    def observe_many(self, label_value: str, values: npt.NDArray[np.float64]) -> None:
        """Count every value (Prometheus buckets are upper bounds, inclusive)."""
        if not values.shape[0]:
            return
        slots = np.searchsorted(self._bounds, values, side="left")
        add = np.bincount(slots, minlength=self._bounds.shape[0] + 1)
        counts = self._counts.get(label_value)
        self._counts[label_value] = add if counts is None else counts + add
        self._sums[label_value] = self._sums.get(label_value, 0.0) + float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The exposition: cumulative buckets per label value."""
        fam = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        for value, counts in sorted(self._counts.items()):
            cum = np.cumsum(counts).tolist()
            bounds = [*(repr(float(b)) for b in self._bounds), "+Inf"]
            fam.add_metric([value], list(zip(bounds, cum, strict=True)), self._sums[value])
        yield fam


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
        self.registry_watermark = Gauge(
            "cityflux_registry_watermark_seconds",
            "Devices registered or changed before this Unix time are in the in-memory index",
            registry=r,
        )
        self.devices_by_state = Gauge(
            "cityflux_devices",
            "Registered devices by profile and state (online, offline, never_seen, disabled)",
            ["profile", "state"],
            registry=r,
        )
        self.parking_lots_connected_ratio = Gauge(
            "cityflux_parking_lots_connected_ratio",
            "Registered parking lots with a space sensor heard within 24 h, over registered lots "
            "(0 when none are registered)",
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
        self.queue_capacity = Gauge(
            "cityflux_queue_capacity_frames",
            "Uncommitted frames above which sources are paused (pipeline.max_inflight_frames)",
            registry=r,
        )
        self.ready = Gauge(
            "cityflux_ready",
            "1 while a readiness check passes (what /readyz reports), by check",
            ["check"],
            registry=r,
        )
        self.db_retries = Counter(
            "cityflux_db_retries", "Database operations retried after a lost connection", registry=r
        )
        self.stage_errors = Counter(
            "cityflux_stage_errors",
            "Batches a stage raised for (the batch is split to isolate the frames that cause it)",
            ["stage"],
            registry=r,
        )
        self.frames_missing = Counter(
            "cityflux_device_frames_missing",
            "Frames missing from devices' frame numbers (compact seq, JT/T 808 serial, HJ 212 "
            "minute/hour slots), by the device's profile, counted when the gap is seen",
            ["profile"],
            registry=r,
        )
        self.frames_recovered = Counter(
            "cityflux_device_frames_recovered",
            "Frames counted missing that arrived late after all (missing - recovered = lost)",
            ["profile"],
            registry=r,
        )
        self.frames_numbered = Counter(
            "cityflux_device_frames_numbered",
            "Numbered frames received and stored (duplicates not counted), by profile",
            ["profile"],
            registry=r,
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

        self.alerts_raised = Counter(
            "cityflux_alerts_raised", "Alerts raised", ["rule", "severity"], registry=r
        )
        self.alerts_cleared = Counter(
            "cityflux_alerts_cleared", "Alerts cleared", ["rule", "severity"], registry=r
        )
        self.alerts_acknowledged = Counter(
            "cityflux_alerts_acknowledged", "Alerts acknowledged by operators", registry=r
        )
        self.alerts_active = Gauge(
            "cityflux_alerts_active",
            "Open alerts (raised or acknowledged)",
            ["rule", "severity"],
            registry=r,
        )
        self.alert_rules = Gauge("cityflux_alert_rules", "Alert rules loaded", registry=r)
        self.alert_reloads = Counter(
            "cityflux_alert_rule_reloads",
            "Rules file reloads, by result (an invalid file keeps the old rules)",
            ["result"],
            registry=r,
        )
        self.alert_evaluation_seconds = Histogram(
            "cityflux_alert_evaluation_seconds",
            "Time to evaluate every rule on one committed batch",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.alert_late_rows = Counter(
            "cityflux_alert_late_rows",
            "Rows a rule ignored: older than its subject's newest row",
            ["rule"],
            registry=r,
        )
        self.alert_deliveries = Counter(
            "cityflux_alert_deliveries",
            "Alert events delivered to a sink (result delivered), failed (retried), or given up "
            "on after permanent refusals (given_up)",
            ["sink", "result"],
            registry=r,
        )
        self.alert_backlog = Gauge(
            "cityflux_alert_delivery_backlog_events",
            "Alert events a sink has not delivered yet",
            ["sink"],
            registry=r,
        )

        self.coap_responses = Counter(
            "cityflux_coap_responses",
            "CoAP responses sent, by response code",
            ["code"],
            registry=r,
        )
        self.coap_duplicates = Counter(
            "cityflux_coap_duplicates",
            "CoAP requests received again (retransmissions), answered without new work",
            registry=r,
        )
        self.coap_retransmissions = Counter(
            "cityflux_coap_retransmissions",
            "Separate CoAP responses sent again for want of the device's ACK",
            registry=r,
        )
        self.coap_response_wait = Histogram(
            "cityflux_coap_response_wait_seconds",
            "From a CoAP request to its response (the response waits for the commit)",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.frame_age = BulkHistogram(
            "cityflux_frame_age_seconds",
            "From a frame's device time (its earliest row) to the commit that stored it",
            "transport",
            AGE_BUCKETS,
            r,
        )
        self.coap_oscore_failures = Counter(
            "cityflux_coap_oscore_failures",
            "OSCORE requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.coap_dtls_failures = Counter(
            "cityflux_coap_dtls_failures",
            "DTLS handshakes and requests refused, by reason",
            ["reason"],
            registry=r,
        )

        self.lwm2m_operations = Counter(
            "cityflux_lwm2m_operations",
            "LwM2M registration operations answered, by operation and response code",
            ["operation", "code"],
            registry=r,
        )
        self.lwm2m_commands = Counter(
            "cityflux_lwm2m_commands",
            "LwM2M downlink commands finished, by operation and state (done, failed, timeout)",
            ["operation", "state"],
            registry=r,
        )
        self.lwm2m_registered = Gauge(
            "cityflux_lwm2m_registered_devices",
            "LwM2M devices registered with this process (not de-registered nor expired)",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
