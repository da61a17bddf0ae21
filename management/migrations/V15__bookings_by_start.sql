-- Live bookings by start, for the no-show timer: between its full looks (once a minute) it
-- reads only the bookings whose start plus grace came since its last pass, instead of every
-- booking of the last day each second.
CREATE INDEX reservations_live_by_start ON reservations (lower(period)) WHERE cancelled_at IS NULL;
