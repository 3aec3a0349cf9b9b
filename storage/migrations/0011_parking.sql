-- 0011 smart parking: the lot and space of a parking-space sensor (device attributes), the
-- parking lots with their capacity, and the debounced occupancy state of every space
-- (written by the occupancy stage, parking/occupancy.py, inside each batch's transaction).
-- Per-lot occupancy over time is the declared table parking_lot_occupancy (a hypertable with
-- a continuous aggregate under TimescaleDB, a plain table and view otherwise: storage/ddl.py).

ALTER TABLE devices
    ADD COLUMN IF NOT EXISTS lot   text,   -- parking: the lot the space sensor is in
    ADD COLUMN IF NOT EXISTS space text;   -- parking: the space's label within its lot
CREATE INDEX IF NOT EXISTS devices_lot ON devices (lot) WHERE lot IS NOT NULL;

-- The change feed follows lot and space too (the same triggers as 0009, two columns more).
DROP TRIGGER IF EXISTS devices_touch ON devices;
CREATE TRIGGER devices_touch
    BEFORE UPDATE ON devices
    FOR EACH ROW
    WHEN ((OLD.external_id, OLD.status, OLD.profile, OLD.kind, OLD.district, OLD.tenant,
           OLD.lat, OLD.lon, OLD.road, OLD.road_km, OLD.install, OLD.oscore_kid,
           OLD.oscore_secret, OLD.oscore_salt, OLD.psk_identity, OLD.psk_key, OLD.lot,
           OLD.space)
          IS DISTINCT FROM
          (NEW.external_id, NEW.status, NEW.profile, NEW.kind, NEW.district, NEW.tenant,
           NEW.lat, NEW.lon, NEW.road, NEW.road_km, NEW.install, NEW.oscore_kid,
           NEW.oscore_secret, NEW.oscore_salt, NEW.psk_identity, NEW.psk_key, NEW.lot,
           NEW.space))
    EXECUTE FUNCTION cityflux_devices_touch();
DROP TRIGGER IF EXISTS devices_changed ON devices;
CREATE TRIGGER devices_changed
    AFTER INSERT OR UPDATE OF external_id, status, profile, kind, district, tenant, lat, lon,
        road, road_km, install, oscore_kid, oscore_secret, oscore_salt, psk_identity, psk_key,
        lot, space OR DELETE
    ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION cityflux_devices_changed();

-- A parking lot: its capacity is the number of spaces it has (sensed or not); "free now" is
-- capacity minus the spaces whose state is occupied. A lot named by devices.lot but missing
-- here is not a registered lot: it is listed with the number of its sensors as capacity.
CREATE TABLE IF NOT EXISTS parking_lots (
    lot         text        PRIMARY KEY CHECK (octet_length(lot) BETWEEN 1 AND 64),
    name        text        NOT NULL DEFAULT '',
    capacity    integer     NOT NULL CHECK (capacity > 0),
    district    text,
    lat         double precision CHECK (lat BETWEEN -90 AND 90),
    lon         double precision CHECK (lon BETWEEN -180 AND 180),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per sensed space (its sensor's internal id): the debounced state, and the pending
-- change that has not held long enough yet (parking/debounce.py says how it moves).
CREATE TABLE IF NOT EXISTS parking_spaces (
    device_id        integer     PRIMARY KEY,
    occupied         boolean     NOT NULL,
    changed_at       timestamptz NOT NULL,  -- when the current state began (first frame of it)
    last_frame_at    timestamptz NOT NULL,  -- the latest frame applied (older ones are not)
    pending          boolean,               -- the other state, seen but not confirmed yet
    pending_since    timestamptz,
    pending_frames   integer     NOT NULL DEFAULT 0,
    changes          bigint      NOT NULL DEFAULT 0,  -- confirmed changes
    flaps            bigint      NOT NULL DEFAULT 0,  -- suppressed flips (pending abandoned)
    flap_window_at   timestamptz,                     -- start of the current flap-count hour
    flaps_in_window  integer     NOT NULL DEFAULT 0,
    CHECK ((pending IS NULL) = (pending_since IS NULL))
);
