-- Events are published from the audit log itself: a row is written in the transaction that
-- caused the event and published by the dispatcher, so an event can come from any process
-- (the worker, the command line) and is never published for a rolled-back change.
ALTER TABLE events ADD COLUMN published_at timestamptz;
UPDATE events SET published_at = at;
CREATE INDEX events_unpublished ON events (event_id) WHERE published_at IS NULL;
