-- A command the device refused because it had already seen a newer epoch was superseded (the
-- device follows something newer), not failed.
ALTER TABLE commands DROP CONSTRAINT commands_status_check;
ALTER TABLE commands ADD CONSTRAINT commands_status_check
    CHECK (status IN ('queued', 'sent', 'acknowledged', 'failed', 'expired', 'superseded'));
