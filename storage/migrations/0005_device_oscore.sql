-- 0005: per-device OSCORE keys (RFC 8613) for CoAP uplinks: the device's Sender ID (the
-- server looks contexts up by it, so it is unique), the Master Secret and an optional Master
-- Salt. The server's own Sender ID is empty; the algorithm is AES-CCM-16-64-128 with
-- HKDF-SHA-256 (the RFC's defaults).
ALTER TABLE devices
    ADD COLUMN IF NOT EXISTS oscore_kid    bytea CHECK (octet_length(oscore_kid) BETWEEN 1 AND 7),
    ADD COLUMN IF NOT EXISTS oscore_secret bytea CHECK (octet_length(oscore_secret) BETWEEN 16 AND 64),
    ADD COLUMN IF NOT EXISTS oscore_salt   bytea CHECK (octet_length(oscore_salt) <= 32);
CREATE UNIQUE INDEX IF NOT EXISTS devices_oscore_kid ON devices (oscore_kid)
    WHERE oscore_kid IS NOT NULL;

-- key changes reach the running service through the change feed
DROP TRIGGER IF EXISTS devices_touch ON devices;
CREATE TRIGGER devices_touch
    BEFORE UPDATE ON devices
    FOR EACH ROW
    WHEN ((OLD.external_id, OLD.status, OLD.profile, OLD.kind, OLD.district, OLD.tenant,
           OLD.lat, OLD.lon, OLD.road, OLD.road_km, OLD.install, OLD.oscore_kid,
           OLD.oscore_secret, OLD.oscore_salt)
          IS DISTINCT FROM
          (NEW.external_id, NEW.status, NEW.profile, NEW.kind, NEW.district, NEW.tenant,
           NEW.lat, NEW.lon, NEW.road, NEW.road_km, NEW.install, NEW.oscore_kid,
           NEW.oscore_secret, NEW.oscore_salt))
    EXECUTE FUNCTION cityflux_devices_touch();
DROP TRIGGER IF EXISTS devices_changed ON devices;
CREATE TRIGGER devices_changed
    AFTER INSERT OR UPDATE OF external_id, status, profile, kind, district, tenant, lat, lon,
        road, road_km, install, oscore_kid, oscore_secret, oscore_salt OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION cityflux_devices_changed();
