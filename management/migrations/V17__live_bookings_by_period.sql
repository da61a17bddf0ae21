-- The stores' trust lists name the tickets already used whose booking is not over. A ticket can
-- only have been used once its booking started, or within the early grace before: the lists
-- read the live bookings overlapping [now, now + early grace], through this index, instead of
-- every booking still ahead (weeks of them, each looked up among the sessions every 2 s).
CREATE INDEX reservations_live_by_period ON reservations USING gist (period)
    WHERE cancelled_at IS NULL;
