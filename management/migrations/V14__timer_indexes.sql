-- The stop timers' and the dispatcher's partial indexes served lookups by key too. A device's
-- open session (by store and device) and a pending command (by id) were found by scanning
-- every open session or every pending command in these small indexes whenever the statistics
-- said few were open or pending (right after a quiet moment's ANALYZE): O(open sessions) per
-- device state and O(pending commands) per acknowledgement, instead of one key lookup.
--
-- Their predicates now also name the column they are ordered by. A statement can use them only
-- if it compares that column (or says it IS NOT NULL), as the timers and the dispatcher do; a
-- lookup by key cannot, and takes the unique index or the primary key.
DROP INDEX sessions_stop_timers;
CREATE INDEX sessions_stop_timers ON sessions (lease_until)
    WHERE ended_at IS NULL AND lease_until IS NOT NULL;

DROP INDEX commands_pending;
CREATE INDEX commands_pending ON commands (next_attempt_at)
    WHERE status IN ('queued', 'sent') AND next_attempt_at IS NOT NULL;
