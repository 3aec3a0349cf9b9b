-- 0010: LwM2M 1.1 server side (docs/design/0012-lwm2m-server.md): each device's current
-- registration, the downlink commands queued for it, and what became of them. Registration
-- events themselves are telemetry (the lwm2m-rd decoder's lwm2m_registration_events table).

-- One row per device: its latest registration (an Update or De-register changes it in place).
CREATE TABLE IF NOT EXISTS lwm2m_registrations (
    device_id       integer     PRIMARY KEY,               -- devices.id
    location        text        NOT NULL UNIQUE,           -- /rd/<location> (Location-Path)
    endpoint        text        NOT NULL,                  -- ep= (the device's external id)
    lifetime_s      integer     NOT NULL CHECK (lifetime_s > 0),
    binding         text        NOT NULL CHECK (binding IN ('U', 'UQ')),
    lwm2m_version   text        NOT NULL DEFAULT '1.0',
    object_links    text        NOT NULL DEFAULT '',      -- CoRE link format, as sent
    address         text        NOT NULL,                  -- host:port the device spoke from
    registered_at   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,                  -- last Register or Update
    expires_at      timestamptz NOT NULL,                  -- updated_at + lifetime
    deregistered_at timestamptz                            -- De-register (NULL: registered)
);

-- Downlink operations for LwM2M devices: queued (by the API or the command line), sent when
-- the device is reachable (a U device at once, a UQ device on its next Register or Update),
-- then done (the device's answer) or timeout.
CREATE TABLE IF NOT EXISTS lwm2m_commands (
    id          bigserial   PRIMARY KEY,
    device_id   integer     NOT NULL,
    operation   text        NOT NULL CHECK (operation IN ('write', 'execute')),
    path        text        NOT NULL CHECK (path ~ '^(/[0-9]{1,5}){3}$'),  -- /object/instance/resource
    value       text,                                      -- write: the value (text/plain)
    state       text        NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'sent', 'done', 'failed', 'timeout')),
    result_code text,                                      -- the device's answer: 2.04, 4.04…
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    sent_at     timestamptz,
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS lwm2m_commands_pending ON lwm2m_commands (device_id, id)
    WHERE state IN ('queued', 'sent');

-- Online status: a registered LwM2M device is online until its registration expires (a missed
-- Update is offline); a de-registered one is offline; other devices as before (0002).
CREATE OR REPLACE VIEW device_status_view AS
SELECT d.id, d.external_id, d.profile, d.kind, d.status, d.last_seen,
       CASE
           WHEN r.device_id IS NOT NULL THEN r.lifetime_s::double precision
           ELSE p.report_interval_s * p.offline_after
       END AS offline_after_s,
       CASE
           WHEN r.device_id IS NOT NULL THEN r.deregistered_at IS NULL AND r.expires_at > now()
           WHEN p.name IS NULL THEN NULL
           WHEN d.last_seen IS NULL THEN false
           ELSE d.last_seen > now() - make_interval(secs => p.report_interval_s * p.offline_after)
       END AS online
FROM devices d
LEFT JOIN device_profiles p ON p.name = d.profile
LEFT JOIN lwm2m_registrations r ON r.device_id = d.id;
