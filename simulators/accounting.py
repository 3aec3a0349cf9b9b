"""Loss accounting: what a run sent, against what the database holds for it.

Every well-formed frame sent has a storage key (its table, device and device time; the CN too
for HJ 212): the frame is *stored* when a row with that key is in the table. The keys go to
the database in one binary COPY and are matched there. *Lost* is what was acknowledged
(PUBACK from the broker for QoS 1, a final CoAP answer for CON) and is neither stored nor
dead-lettered. Dead letters of the run's devices since the run began are *rejected*: as
expected when their payload is one the run corrupted on purpose (matched by MD5), else
unexpectedly (with their reasons). Latency comes from the service's own
``cityflux_frame_age_seconds`` histogram (device time to commit), read from its /metrics
before and after the run.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import reason_label
from decoders.base import Column, ColumnType
from decoders.tables import ALL_TABLES
from simulators.run import DUPLICATE, MALFORMED, VALID, Ledger, tag
from storage.pgbinary import encode_stream

SPECS = {t.name: t for t in ALL_TABLES}
_KEY_COLUMNS = (
    Column("grp", ColumnType.INT2),
    Column("external_id", ColumnType.TEXT),
    Column("time", ColumnType.TIMESTAMPTZ),
    Column("variant", ColumnType.INT2),
)
_DEVICE_COLUMNS = (Column("grp", ColumnType.INT2), Column("external_id", ColumnType.TEXT))
AGE_METRIC = "cityflux_frame_age_seconds"


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the accounting needs to know about a run besides its ledger."""

    ids: Sequence[Sequence[str]]  # external ids per group
    tables: Sequence[str]  # the table each group's frames land in
    began_at: float  # wall-clock time.time() the run started (dead letters since then)


# -- metrics ---------------------------------------------------------------------------------
def scrape(url: str | None) -> str | None:
    """The service's /metrics text, or None if it cannot be read."""
    if not url or not url.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - http(s) only
            return str(resp.read().decode())
    except OSError:
        return None


def gauge(url: str | None, name: str) -> float | None:
    """One unlabelled gauge from the service's /metrics."""
    text = scrape(url)
    if text is None:
        return None
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and not s.labels:
                return float(s.value)
    return None


def scrape_ages(url: str | None) -> dict[float, float] | None:
    """Cumulative frame-age buckets (le -> count, all transports), or None if unreachable."""
    text = scrape(url)
    if text is None:
        return None
    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != AGE_METRIC:
            continue
        for s in fam.samples:
            if s.name == AGE_METRIC + "_bucket":
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value
    return out


def quantiles(
    before: dict[float, float] | None, after: dict[float, float] | None, qs: Sequence[float]
) -> dict[str, float | None] | None:
    """Quantiles of the frames committed between two scrapes, interpolated inside buckets
    as Prometheus' histogram_quantile() does; None without both scrapes or frames."""
    if after is None or before is None:
        return None
    bounds = sorted(after)
    cum = np.array([after[b] - before.get(b, 0.0) for b in bounds])
    total = cum[-1] if cum.shape[0] else 0
    if total <= 0:
        return None
    out: dict[str, float | None] = {}
    for q in qs:
        rank = q * total
        i = int(np.searchsorted(cum, rank, side="left"))
        hi = bounds[i]
        if hi == float("inf"):
            out[f"p{round(q * 100)}"] = None  # beyond the last bucket: more than an hour
            continue
        lo = bounds[i - 1] if i else 0.0
        below = cum[i - 1] if i else 0.0
        inside = cum[i] - below
        out[f"p{round(q * 100)}"] = round(
            lo + (hi - lo) * ((rank - below) / inside if inside else 1.0), 4
        )
    return out


# -- database --------------------------------------------------------------------------------
class Counts:
    """Database counts of a run, read repeatedly while the service catches up."""

    def __init__(self, conn: psycopg.Connection[Any], ledger: Ledger, facts: RunFacts) -> None:
        self.conn, self.ledger, self.facts = conn, ledger, facts
        g, d, t, v = ledger.keys()
        self.n_keys = int(g.shape[0])
        self.key_groups = g
        conn.execute(
            "CREATE TEMP TABLE sim_devices (grp smallint, external_id text) ON COMMIT PRESERVE ROWS"
        )
        conn.execute(
            "CREATE TEMP TABLE sim_keys (grp smallint, external_id text, time timestamptz, "
            "variant smallint) ON COMMIT PRESERVE ROWS"
        )
        dev_g = np.concatenate(
            [np.empty(0, dtype=np.int16)]
            + [np.full(len(ids), i, dtype=np.int16) for i, ids in enumerate(facts.ids)]
        )
        dev_ids = np.array([x.encode() for ids in facts.ids for x in ids] or [b""], dtype=np.bytes_)
        dev_ids = dev_ids[: dev_g.shape[0]]
        self._copy("sim_devices", _DEVICE_COLUMNS, {"grp": dev_g, "external_id": dev_ids})
        key_ids = np.array(
            [facts.ids[gi][di].encode() for gi, di in zip(g.tolist(), d.tolist(), strict=True)],
            dtype=np.bytes_,
        ) if g.shape[0] else np.empty(0, dtype="S1")  # fmt: skip
        self._copy(
            "sim_keys",
            _KEY_COLUMNS,
            {
                "grp": g.astype(np.int16),
                "external_id": key_ids,
                "time": t,
                "variant": v.astype(np.int16),
            },
        )
        conn.execute("CREATE INDEX ON sim_devices (external_id)")
        conn.execute(
            "CREATE TEMP TABLE sim_ids ON COMMIT PRESERVE ROWS AS "
            "SELECT s.grp, d.id FROM sim_devices s JOIN devices d USING (external_id)"
        )
        conn.execute("ANALYZE sim_devices; ANALYZE sim_keys; ANALYZE sim_ids")
        conn.commit()
        lo = ledger.first_time_us or 0
        hi = ledger.last_time_us or 0
        self.window = (lo, hi)

    def _copy(self, table: str, columns: tuple[Column, ...], data: dict[str, Any]) -> None:
        cols = ", ".join(c.name for c in columns)
        with self.conn.cursor().copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT binary)") as cp:
            for chunk in encode_stream(columns, data):
                cp.write(chunk)

    def stored_by_group(self) -> Counter[int]:
        """Well-formed frames found in their tables, by group."""
        out: Counter[int] = Counter()
        lo, hi = self.window
        by_table: dict[str, list[int]] = {}
        for gi, table in enumerate(self.facts.tables):
            if table in SPECS:  # a replay's undecodable frames have no table
                by_table.setdefault(table, []).append(gi)
        for table, groups in by_table.items():
            variant = table == "hj212_readings"
            rows = self.conn.execute(
                f"""SELECT k.grp, count(*) FROM sim_keys k
                    JOIN devices d ON d.external_id = k.external_id
                    WHERE k.grp = ANY(%(g)s)
                      AND (d.id, k.time{", k.variant" if variant else ""}) IN (
                        SELECT device_id, time{", cn" if variant else ""} FROM {table}
                        WHERE time
                          BETWEEN to_timestamp(%(lo)s / 1e6) AND to_timestamp(%(hi)s / 1e6))
                    GROUP BY k.grp""",
                {"g": groups, "lo": lo, "hi": hi},
            ).fetchall()
            out.update({int(g): int(n) for g, n in rows})
        self.conn.commit()
        return out

    def _unique_on_key(self, table: str) -> bool:
        """Whether a unique index over exactly the table's natural key exists (then no key
        can be stored twice, and counting distinct keys over every row is not needed)."""
        got = self.conn.execute(
            """SELECT array_agg(a.attname::text) FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
               WHERE i.indrelid = to_regclass(%s) AND i.indisunique
               GROUP BY i.indexrelid""",
            (table,),
        ).fetchall()
        key = set(SPECS[table].natural_key)
        return any(set(cols) == key for (cols,) in got)

    def rows_and_duplicates(self) -> tuple[int, int]:
        """Rows of the run's devices in the run's time window, and rows beyond one per key."""
        lo, hi = self.window
        rows = dups = 0
        for table in sorted(set(self.facts.tables) & set(SPECS)):
            groups = [g for g, t in enumerate(self.facts.tables) if t == table]
            unique = self._unique_on_key(table)
            key = ", ".join(f"r.{c}" for c in SPECS[table].natural_key)
            distinct = "0" if unique else f"count(DISTINCT ({key}))"
            # table names come from cityflux's own table declarations, never from input
            n, d = self.conn.execute(
                f"""SELECT count(*), {distinct} FROM {table} r
                    JOIN sim_ids s ON s.id = r.device_id
                    WHERE s.grp = ANY(%(g)s) AND r.time
                      BETWEEN to_timestamp(%(lo)s / 1e6) AND to_timestamp(%(hi)s / 1e6)""",
                {"g": groups, "lo": lo, "hi": hi},
            ).fetchone() or (0, 0)
            rows += int(n)
            dups += 0 if unique else int(n) - int(d)
        self.conn.commit()
        return rows, dups

    def dead_letters(self) -> list[tuple[int, str, str]]:
        """(group, payload MD5, reason) of the run's devices' dead letters since it began."""
        got = self.conn.execute(
            """SELECT s.grp, md5(dl.payload), dl.reason FROM dead_letters dl
               JOIN sim_devices s ON s.external_id = dl.device
               WHERE dl.received_at >= to_timestamp(%s)""",
            (self.facts.began_at - 1,),
        ).fetchall()
        self.conn.commit()
        return [(int(g), str(h), str(r)) for g, h, r in got]


def account(
    url: str,
    ledger: Ledger,
    facts: RunFacts,
    *,
    ages_before: dict[float, float] | None = None,
    metrics_url: str | None = None,
    settle_s: float = 5.0,
    timeout_s: float = 120.0,
    on_wait: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The run's report, once the database has caught up (or stopped changing)."""
    malformed = ledger.malformed_digests
    n_bad = ledger.total(ledger.sent, MALFORMED)
    with psycopg.connect(url) as conn:
        counts = Counts(conn, ledger, facts)
        expected = counts.n_keys + n_bad
        deadline = time.monotonic() + timeout_s
        last: tuple[int, int] | None = None
        still_since = time.monotonic()
        first = True
        while True:
            polled_at = time.monotonic()
            stored = counts.stored_by_group()
            dead = counts.dead_letters()
            now_counts = (sum(stored.values()), len(dead))
            if on_wait:
                on_wait(sum(now_counts), expected)
            if sum(now_counts) >= expected or time.monotonic() > deadline:
                # all in by the first look: the service kept up with the sending
                done_at = ledger.started + ledger.wall_s if first else polled_at
                break
            if now_counts != last:
                last, still_since = now_counts, polled_at
            elif time.monotonic() - still_since > settle_s:
                done_at = still_since  # nothing arrived since: the service was done then
                break
            first = False
            time.sleep(0.25)
        rows, dups = counts.rows_and_duplicates()
    ages_after = scrape_ages(metrics_url)
    elapsed = max(done_at - ledger.started, ledger.wall_s, 1e-3)
    return _report(
        ledger,
        counts.key_groups,
        stored,
        dead,
        malformed,
        (rows, dups),
        elapsed,
        (ages_before, ages_after),
    )


def _report(
    ledger: Ledger,
    key_groups: np.ndarray,
    stored: Counter[int],
    dead: list[tuple[int, str, str]],
    malformed: Counter[str],
    rows_dups: tuple[int, int],
    elapsed_s: float,
    ages: tuple[dict[float, float] | None, dict[float, float] | None],
) -> dict[str, Any]:
    rows, dups = rows_dups
    expected_by_group = Counter(key_groups.tolist())
    left = malformed.copy()
    rejected_expected = 0
    unexpected: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    for g, digest, reason in dead:
        if left[digest] > 0:
            left[digest] -= 1
            rejected_expected += 1
        else:
            unexpected[g] += 1
            reasons[reason_label(reason)] += 1
    groups: dict[str, Any] = {}
    lost = unconfirmed_missing = 0
    for gi, name in enumerate(ledger.groups):
        acked_valid = ledger.acked[tag(gi, VALID)]
        st = stored[gi]
        missing = max(0, expected_by_group[gi] - st - unexpected[gi])
        if ledger.confirmed[gi]:
            g_lost = max(0, min(acked_valid, expected_by_group[gi]) - st - unexpected[gi])
            lost += g_lost
        else:
            g_lost = 0
            unconfirmed_missing += missing
        groups[name] = {
            "sent": sum(ledger.sent[tag(gi, c)] for c in (VALID, MALFORMED, DUPLICATE)),
            "acknowledged": sum(ledger.acked[tag(gi, c)] for c in (VALID, MALFORMED, DUPLICATE)),
            "expected": expected_by_group[gi],
            "stored": st,
            "rejected_unexpected": unexpected[gi],
            "lost": g_lost,
            "confirmed": ledger.confirmed[gi],
        }
    total_stored = sum(stored.values())
    return {
        "sent": ledger.total(ledger.sent),
        "acknowledged": ledger.total(ledger.acked),
        "expected_stored": int(key_groups.shape[0]),
        "stored": total_stored,
        "rows_stored": rows,
        "rejected_expected": rejected_expected,
        "rejected_unexpected": sum(unexpected.values()),
        "rejected_reasons": dict(reasons.most_common()),
        "lost": lost,
        "unconfirmed_not_stored": unconfirmed_missing,
        "duplicates_sent": ledger.total(ledger.sent, DUPLICATE),
        "duplicates_stored": dups,
        "malformed_sent": ledger.total(ledger.sent, MALFORMED),
        "late_sent": ledger.late,
        "dropped": ledger.dropped,
        "offline_devices": ledger.offline_devices,
        "coap_deferred_503": ledger.deferred,
        "frames_per_s": round(total_stored / elapsed_s, 1),
        "rows_per_s": round(rows / elapsed_s, 1),
        "duration_s": round(elapsed_s, 2),
        "sending_s": round(ledger.wall_s, 2),
        "latency_s": quantiles(*ages, (0.5, 0.95, 0.99)),
        "stopped_early": ledger.stopped_early,
        "groups": groups,
    }


def render(report: dict[str, Any]) -> str:
    """The report as text (the end of every simulate, replay and demo run)."""
    r = report
    lat = r.get("latency_s")
    lat_text = (
        " / ".join("-" if lat[k] is None else f"{lat[k]:.3f}" for k in ("p50", "p95", "p99"))
        if lat
        else r.get("latency_note")
        or "not measured (service /metrics unreachable, or no frame committed)"
    )
    lines = [
        f"{'sent':<26}{r['sent']:>12,}   (malformed {r['malformed_sent']:,}, duplicates "
        f"{r['duplicates_sent']:,}, late {r['late_sent']:,})",
        f"{'acknowledged':<26}{r['acknowledged']:>12,}",
        f"{'stored':<26}{r['stored']:>12,}   of {r['expected_stored']:,} well-formed frames; "
        f"{r['rows_stored']:,} rows",
        f"{'rejected as expected':<26}{r['rejected_expected']:>12,}",
        f"{'rejected unexpectedly':<26}{r['rejected_unexpected']:>12,}"
        + (f"   {r['rejected_reasons']}" if r["rejected_reasons"] else ""),
        f"{'lost':<26}{r['lost']:>12,}   (acknowledged, not stored, not rejected)",
        f"{'unconfirmed, not stored':<26}{r['unconfirmed_not_stored']:>12,}   (QoS 0 / NON)",
        f"{'duplicates stored':<26}{r['duplicates_stored']:>12,}",
        f"{'throughput':<26}{r['frames_per_s']:>12,.1f}   frames/s ({r['rows_per_s']:,.0f} rows/s) "
        f"over {r['duration_s']:.1f} s, first frame sent to all in the database",
        f"{'latency p50/p95/p99 (s)':<26}{lat_text:>12}   device time → commit",
    ]
    if r.get("broker_dropped"):
        lines.append(
            f"{'dropped by the broker':<26}{r['broker_dropped']:>12,}   (Mosquitto $SYS: the "
            "service's session queue overflowed; raise max_queued_messages as "
            "deploy/mosquitto/mosquitto.conf does)"
        )
    lines.append(
        f"{'faults injected':<26}{'':>12}   {r['offline_devices']:,} devices offline, "
        f"{r.get('dropped', 0):,} frames dropped (never sent), "
        f"{r['coap_deferred_503']:,} CoAP 5.03 (sent again after Max-Age)"
    )
    if r.get("stopped_early"):
        lines.append("stopped early: the report covers what was sent until then")
    return "\n".join(lines)
