-- Cancelled bookings by end, for the stores' trust lists: every refresh (each 2 s) lists the
-- cancelled tickets whose window is still open, and it read every booking ever made to find
-- them.
CREATE INDEX reservations_cancelled_by_end ON reservations (upper(period))
    WHERE cancelled_at IS NOT NULL;
