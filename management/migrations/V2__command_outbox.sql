-- Commands to devices go through an outbox written in the transaction of the decision that
-- caused them, and are tracked through their lifecycle until acknowledged or expired.

-- Raised with every command for the device; agents ignore commands older than the newest
-- epoch they have seen.
ALTER TABLE devices ADD COLUMN epoch bigint NOT NULL DEFAULT 0;

CREATE TABLE commands (
    command_id      uuid PRIMARY KEY,
    store_id        text NOT NULL,
    device_id       text NOT NULL,
    session_id      uuid NOT NULL REFERENCES sessions (session_id),
    epoch           bigint NOT NULL,
    action          text NOT NULL CHECK (action IN ('start', 'stop', 'warn', 'extend')),
    -- The command as first issued (remaining_ms is recomputed on each attempt).
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'sent', 'acknowledged', 'failed', 'expired')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    settled_at      timestamptz,
    detail          text NOT NULL DEFAULT '',
    FOREIGN KEY (store_id, device_id) REFERENCES devices (store_id, device_id)
);
CREATE INDEX commands_pending ON commands (next_attempt_at) WHERE status IN ('queued', 'sent');
CREATE INDEX commands_by_device ON commands (store_id, device_id, created_at);
