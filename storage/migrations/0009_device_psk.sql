-- 0009: per-device DTLS pre-shared keys (RFC 4279 PSK; RFC 7925 profile) for CoAP devices
-- that speak DTLS instead of OSCORE (NB-IoT modules, LwM2M clients): the PSK identity the
-- device sends in its ClientKeyExchange (unique: the server finds the device by it) and the
-- key. 16-32 bytes: Mbed TLS, which serves the handshake, takes at most 32 (MBEDTLS_PSK_MAX_LEN).
ALTER TABLE devices
    ADD COLUMN IF NOT EXISTS psk_identity text
        CHECK (octet_length(psk_identity) BETWEEN 1 AND 128),
    ADD COLUMN IF NOT EXISTS psk_key bytea CHECK (octet_length(psk_key) BETWEEN 16 AND 32);
CREATE UNIQUE INDEX IF NOT EXISTS devices_psk_identity ON devices (psk_identity)
    WHERE psk_identity IS NOT NULL;

-- key changes reach the running service through the change feed
DROP TRIGGER IF EXISTS devices_touch ON devices;
CREATE TRIGGER devices_touch
    BEFORE UPDATE ON devices
    FOR EACH ROW
    WHEN ((OLD.external_id, OLD.status, OLD.profile, OLD.kind, OLD.district, OLD.tenant,
           OLD.lat, OLD.lon, OLD.road, OLD.road_km, OLD.install, OLD.oscore_kid,
           OLD.oscore_secret, OLD.oscore_salt, OLD.psk_identity, OLD.psk_key)
          IS DISTINCT FROM
          (NEW.external_id, NEW.status, NEW.profile, NEW.kind, NEW.district, NEW.tenant,
           NEW.lat, NEW.lon, NEW.road, NEW.road_km, NEW.install, NEW.oscore_kid,
           NEW.oscore_secret, NEW.oscore_salt, NEW.psk_identity, NEW.psk_key))
    EXECUTE FUNCTION cityflux_devices_touch();
DROP TRIGGER IF EXISTS devices_changed ON devices;
CREATE TRIGGER devices_changed
    AFTER INSERT OR UPDATE OF external_id, status, profile, kind, district, tenant, lat, lon,
        road, road_km, install, oscore_kid, oscore_secret, oscore_salt, psk_identity, psk_key
        OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION cityflux_devices_changed();
