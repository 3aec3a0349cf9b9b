-- 0002 registry: device profiles, device identity/location/credentials, online status, and
-- the change feed the service's in-memory index follows.

CREATE TABLE IF NOT EXISTS device_profiles (
    name              text        PRIMARY KEY,
    kind              text        NOT NULL,             -- env-station, nbiot-sensor, streetlight…
    decoder           text        NOT NULL,             -- decoder (format) name, e.g. hj212
    topic_pattern     text,                             -- MQTT filter its devices publish on
    coap_path         text,                             -- CoAP uplink path pattern
    report_interval_s integer     NOT NULL CHECK (report_interval_s > 0),
    offline_after     real        NOT NULL DEFAULT 3 CHECK (offline_after > 0),  -- × interval
    tables            text[]      NOT NULL DEFAULT '{}',
    rule_set          text,
    retention         interval,                         -- override of the table default
    compress_after    interval,
    unknown_devices   text        NOT NULL DEFAULT 'reject'
                      CHECK (unknown_devices IN ('reject', 'auto-provision')),
    description       text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- External ids are identifiers compared byte for byte, as the in-memory index compares them.
ALTER TABLE devices ALTER COLUMN external_id TYPE text COLLATE "C";
ALTER TABLE devices
    -- a profile name; checked by the importer and the API rather than a foreign key, whose
    -- per-row trigger made bulk imports three times slower (bench/registry_scale.py)
    ADD COLUMN IF NOT EXISTS profile          text,
    ADD COLUMN IF NOT EXISTS tenant           text,
    ADD COLUMN IF NOT EXISTS district         text,
    ADD COLUMN IF NOT EXISTS lat              double precision CHECK (lat BETWEEN -90 AND 90),
    ADD COLUMN IF NOT EXISTS lon              double precision CHECK (lon BETWEEN -180 AND 180),
    ADD COLUMN IF NOT EXISTS road             text,              -- gantries: road id
    ADD COLUMN IF NOT EXISTS road_km          double precision,  -- gantries: position along it
    ADD COLUMN IF NOT EXISTS install          jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS credential_hash  text,  -- PBKDF2-SHA512, Mosquitto's $7$ format
    ADD COLUMN IF NOT EXISTS cert_fingerprint text;  -- SHA-256 of a client certificate, hex
ALTER TABLE devices ADD CONSTRAINT devices_external_id_length
    CHECK (octet_length(external_id) BETWEEN 1 AND 64);
-- the change feed reads rows by updated_at, which follows insertion order: BRIN is enough and
-- costs almost nothing per insert (a btree here halved the import rate)
CREATE INDEX IF NOT EXISTS devices_updated_at_brin ON devices USING brin (updated_at);

-- Online status: offline once silent for offline_after × the profile's report interval.
-- Devices without a profile have no expected interval and are never reported offline.
CREATE OR REPLACE VIEW device_status_view AS
SELECT d.id, d.external_id, d.profile, d.kind, d.status, d.last_seen,
       p.report_interval_s * p.offline_after AS offline_after_s,
       CASE
           WHEN p.name IS NULL THEN NULL
           WHEN d.last_seen IS NULL THEN false
           ELSE d.last_seen > now() - make_interval(secs => p.report_interval_s * p.offline_after)
       END AS online
FROM devices d
LEFT JOIN device_profiles p ON p.name = d.profile;

-- The change feed: one notification per statement that adds devices or changes identity,
-- profile or status (payload: the operation); listeners read the rows whose updated_at is past
-- their watermark, and reload everything after a DELETE (disable devices rather than delete).
CREATE OR REPLACE FUNCTION cityflux_devices_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cityflux_devices', TG_OP);
    RETURN NULL;
END;
$$;
CREATE OR REPLACE FUNCTION cityflux_devices_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS devices_touch ON devices;
CREATE TRIGGER devices_touch
    BEFORE UPDATE OF external_id, status, profile ON devices
    FOR EACH ROW
    WHEN (OLD.external_id IS DISTINCT FROM NEW.external_id
          OR OLD.status IS DISTINCT FROM NEW.status
          OR OLD.profile IS DISTINCT FROM NEW.profile)
    EXECUTE FUNCTION cityflux_devices_touch();
DROP TRIGGER IF EXISTS devices_changed ON devices;
CREATE TRIGGER devices_changed
    AFTER INSERT OR UPDATE OF external_id, status, profile OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION cityflux_devices_changed();

-- Broker authentication straight from the registry (EMQX's PostgreSQL authenticator):
-- password_based, backend postgresql, password_hash_algorithm {name = pbkdf2, mac_fun = sha512,
-- iterations = 1000, dk_length = 64}, query
-- "SELECT password_hash, salt FROM mqtt_credentials WHERE username = ${username} LIMIT 1".
-- credential_hash is Mosquitto's $7$ form: $7$<iterations>$<base64 salt>$<base64 digest>; the
-- salt cityflux generates is printable ASCII so both brokers hash the same bytes.
CREATE OR REPLACE VIEW mqtt_credentials AS
SELECT external_id AS username,
       encode(decode(split_part(credential_hash, '$', 5), 'base64'), 'hex') AS password_hash,
       encode(decode(split_part(credential_hash, '$', 4), 'base64'), 'escape') AS salt,
       split_part(credential_hash, '$', 3)::integer AS iterations
FROM devices
WHERE status = 'active' AND credential_hash LIKE '$7$%'
  -- binary salts (hashes made by mosquitto_passwd) cannot be passed to EMQX as text
  AND position('\' in encode(decode(split_part(credential_hash, '$', 4), 'base64'), 'escape')) = 0;
