-- 0006: a digest of each dead letter's frame (BLAKE2b-128 of transport, source and payload),
-- so that a frame the broker redelivers after a crash (MQTT DUP) is dead-lettered once, not
-- once per delivery. Frames delivered for the first time are always stored: a device that
-- sends the same bad frame twice sent two frames.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS digest bytea;
CREATE INDEX IF NOT EXISTS dead_letters_digest_idx ON dead_letters (digest)
    WHERE digest IS NOT NULL;
