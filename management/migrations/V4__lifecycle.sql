-- The session lifecycle around the stop timer: a warning before the end, no-shows that free the
-- device, and why a booking was cancelled.

-- Minutes before the end of a session the customer is warned (0: no warning), and how long
-- after its start a booking nobody scanned is given up as a no-show.
ALTER TABLE stores ADD COLUMN warn_minutes int NOT NULL DEFAULT 5 CHECK (warn_minutes >= 0);
ALTER TABLE stores ADD COLUMN no_show_grace_seconds int NOT NULL DEFAULT 600
    CHECK (no_show_grace_seconds >= 0);

-- Set when the warning was queued; cleared when an extension moves the end out of the warning
-- window, so the customer is warned again before the new end.
ALTER TABLE sessions ADD COLUMN warned_at timestamptz;

-- Why a booking stopped being live: cancelled by an operator or integrator, or a no-show.
ALTER TABLE reservations ADD COLUMN cancel_reason text
    CHECK (cancel_reason IN ('cancelled', 'no_show'));
UPDATE reservations SET cancel_reason = 'cancelled' WHERE cancelled_at IS NOT NULL;
ALTER TABLE reservations ADD CONSTRAINT reservations_cancel_reason_with_time
    CHECK ((cancelled_at IS NULL) = (cancel_reason IS NULL));

-- The no-show timer looks at recent live bookings only.
CREATE INDEX reservations_live_by_end ON reservations (upper(period)) WHERE cancelled_at IS NULL;
