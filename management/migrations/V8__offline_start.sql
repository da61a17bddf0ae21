-- Offline start: whether a store's devices may start a provisional session on their own check
-- of a ticket when management does not answer (off unless an operator turns it on).
ALTER TABLE stores ADD COLUMN offline_start boolean NOT NULL DEFAULT false;
