-- mujin schema, version 1: registry, reservations, scans, sessions and the audit log.

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE stores (
    store_id    text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    store_id    text NOT NULL REFERENCES stores (store_id),
    device_id   text NOT NULL,
    name        text NOT NULL DEFAULT '',
    in_service  boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, device_id)
);

-- One row per booking; its ticket id is the reservation's id. Two live bookings of one device
-- can never overlap: the database refuses it, whatever the caller does.
CREATE TABLE reservations (
    ticket_id   uuid PRIMARY KEY,
    store_id    text NOT NULL,
    device_id   text NOT NULL,
    period      tstzrange NOT NULL CHECK (NOT isempty(period) AND lower_inc(period) AND NOT upper_inc(period)),
    key_id      text NOT NULL,
    cancelled_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (store_id, device_id) REFERENCES devices (store_id, device_id),
    CONSTRAINT reservations_no_overlap
        EXCLUDE USING gist (store_id WITH =, device_id WITH =, period WITH &&)
        WHERE (cancelled_at IS NULL)
);

-- One use of a device. A ticket gives at most one session (unique ticket_id), a device runs at
-- most one session at a time, and the open sessions ordered by lease_until are the durable stop
-- timers.
CREATE TABLE sessions (
    session_id       uuid PRIMARY KEY,
    ticket_id        uuid NOT NULL UNIQUE REFERENCES reservations (ticket_id),
    scan_id          uuid NOT NULL UNIQUE,
    store_id         text NOT NULL,
    device_id        text NOT NULL,
    started_at       timestamptz NOT NULL,
    lease_until      timestamptz NOT NULL,
    start_command_id uuid NOT NULL,
    ended_at         timestamptz,
    end_reason       text CHECK (end_reason IN ('booking_ended', 'forced', 'program_exited')),
    stop_command_id  uuid,
    FOREIGN KEY (store_id, device_id) REFERENCES devices (store_id, device_id),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE UNIQUE INDEX sessions_one_open_per_device ON sessions (store_id, device_id) WHERE ended_at IS NULL;
CREATE INDEX sessions_stop_timers ON sessions (lease_until) WHERE ended_at IS NULL;

-- Every scan management decided, keyed by the agent's scan id: a redelivered scan finds its
-- first decision here instead of being decided twice.
CREATE TABLE scans (
    scan_id      uuid PRIMARY KEY,
    store_id     text NOT NULL,
    device_id    text NOT NULL,
    ticket_text  text NOT NULL,
    ticket_id    uuid,
    read_at      timestamptz,
    decided_at   timestamptz NOT NULL DEFAULT now(),
    accepted     boolean NOT NULL,
    reason       text,
    detail       text NOT NULL DEFAULT '',
    session_id   uuid REFERENCES sessions (session_id),
    CHECK (accepted = (reason IS NULL))
);
CREATE INDEX scans_by_ticket ON scans (ticket_id);

-- The audit log: every event management published, written in the transaction that caused it.
CREATE TABLE events (
    event_id   bigserial PRIMARY KEY,
    at         timestamptz NOT NULL,
    store_id   text NOT NULL,
    device_id  text,
    kind       text NOT NULL,
    body       jsonb NOT NULL
);
CREATE INDEX events_by_store ON events (store_id, event_id);
