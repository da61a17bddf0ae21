-- What devices report: availability (changed only on transitions, not per heartbeat) and each
-- session's end as the device saw it, next to management's own usage record.
ALTER TABLE devices ADD COLUMN online boolean NOT NULL DEFAULT false;
ALTER TABLE devices ADD COLUMN availability_changed_at timestamptz;

ALTER TABLE sessions ADD COLUMN device_stopped_at timestamptz;
ALTER TABLE sessions ADD COLUMN device_stop_cause text;
ALTER TABLE sessions ADD COLUMN device_exit text;
