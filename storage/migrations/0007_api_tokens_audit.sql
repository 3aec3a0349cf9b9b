-- 0007: the operator API's bearer tokens, the audit log of state changes, and alert events a
-- sink gave up on (docs/design/0009-api-tokens.md).

-- A token is shown once; only its SHA-256 is kept, found by a short public prefix.
CREATE TABLE IF NOT EXISTS api_tokens (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    prefix      text NOT NULL UNIQUE,
    hash        bytea NOT NULL CHECK (length(hash) = 32),
    scope       text NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    last_used_at timestamptz,
    revoked_at  timestamptz,
    revoked_by  text
);

-- Every state change through the API or the command line, and rule reloads by the service.
CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial PRIMARY KEY,
    time        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    actor_kind  text NOT NULL CHECK (actor_kind IN ('token', 'cli', 'service')),
    action      text NOT NULL,
    target      text NOT NULL,
    before      jsonb,
    after       jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_time_idx ON audit_log (time);

-- Events a sink stopped retrying (a webhook answering a permanent 4xx): the cursor moved on.
CREATE TABLE IF NOT EXISTS alert_delivery_failures (
    sink        text NOT NULL,
    event_id    bigint NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL,
    reason      text NOT NULL,
    PRIMARY KEY (sink, event_id)
);
