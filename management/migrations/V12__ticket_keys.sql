-- The keys tickets are signed with. Only the public half is stored; the private half stays in
-- management's key directory as `{key_id}.pk8` (owner-only). Exactly one key is current (neither
-- retired nor revoked): new tickets are signed with it. A retired key still verifies the tickets
-- it signed until they expire; a revoked one verifies nothing any more. Rows are never deleted,
-- so the history of the keys stays readable.
CREATE TABLE ticket_keys (
    key_id      text PRIMARY KEY,
    public_key  bytea NOT NULL CHECK (octet_length(public_key) = 32),
    created_at  timestamptz NOT NULL,
    retired_at  timestamptz,
    revoked_at  timestamptz,
    -- Only a retired key may be revoked (the current one is rotated out first).
    CHECK (revoked_at IS NULL OR retired_at IS NOT NULL)
);

-- At most one current key.
CREATE UNIQUE INDEX ticket_keys_one_current ON ticket_keys ((true))
    WHERE retired_at IS NULL AND revoked_at IS NULL;
