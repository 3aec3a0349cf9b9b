-- 0008 frame loss: gaps in the numbers devices give their frames (compact seq, JT/T 808
-- serial numbers, HJ 212 minute/hour slots), hourly received/missing counts per device (the
-- 24 h loss ratio), and the detector's state per device and stream (so a restart of the
-- service neither forgets nor invents gaps). docs/design/0011-frame-loss.md.
-- With TimescaleDB the gaps and the counts are hypertables (the DO block at the end).

CREATE TABLE IF NOT EXISTS device_frame_gaps (
    device_id     integer     NOT NULL,
    stream        text        NOT NULL,  -- compact, jt808, hj212-2051, hj212-2061
    first_missing bigint      NOT NULL,  -- as the device numbers frames (HJ 212: Unix minute/hour)
    last_missing  bigint      NOT NULL,  -- > first_missing unless the counter wrapped in between
    missing       bigint      NOT NULL CHECK (missing >= 0),  -- late frames that arrived after
    detected_at   timestamptz NOT NULL DEFAULT now()           -- all are taken off
);
CREATE INDEX IF NOT EXISTS device_frame_gaps_device ON device_frame_gaps (device_id, detected_at);

CREATE TABLE IF NOT EXISTS device_frame_counts (
    device_id integer     NOT NULL,
    hour      timestamptz NOT NULL,  -- when the frames were counted (receive time, by hour)
    received  bigint      NOT NULL DEFAULT 0,  -- numbered frames, duplicates not counted
    missing   bigint      NOT NULL DEFAULT 0,  -- found missing, less late ones recovered
    PRIMARY KEY (device_id, hour)
);

CREATE TABLE IF NOT EXISTS device_frame_state (
    device_id  integer     NOT NULL,
    stream     text        NOT NULL,
    highest    bigint      NOT NULL,  -- the highest number seen, counted on past wrap-arounds
    seen       bigint      NOT NULL,  -- bit k: number highest-1-k arrived (64 numbers)
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, stream)
);

DO $$
BEGIN
    IF current_setting('cityflux.backend', true) = 'timescaledb' THEN
        PERFORM create_hypertable('device_frame_gaps', by_range('detected_at', INTERVAL '7 days'),
                                  if_not_exists => TRUE);
        PERFORM create_hypertable('device_frame_counts', by_range('hour', INTERVAL '1 day'),
                                  if_not_exists => TRUE);
    END IF;
END
$$;
