-- Identities the broker lets in: one row per device, operator or service, with the keyed hash
-- (HMAC-SHA256 under the pepper file keys/identity-pepper) of its secret token. The token itself
-- is never stored. Enrolling again replaces the hash (and clears a revocation); revoking sets
-- revoked_at. The broker reloads this table every 2 s and on the notification below.
CREATE TABLE identities (
    username      text PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('device', 'operator', 'service')),
    store_id      text,
    device_id     text,
    operator_id   text,
    service_name  text,
    token_hash    bytea NOT NULL CHECK (octet_length(token_hash) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    FOREIGN KEY (store_id, device_id) REFERENCES devices (store_id, device_id),
    CHECK (CASE kind
        WHEN 'device' THEN store_id IS NOT NULL AND device_id IS NOT NULL
            AND operator_id IS NULL AND service_name IS NULL
            AND username = 'device:' || store_id || ':' || device_id
        WHEN 'operator' THEN operator_id IS NOT NULL
            AND store_id IS NULL AND device_id IS NULL AND service_name IS NULL
            AND username = 'operator:' || operator_id
        WHEN 'service' THEN service_name IS NOT NULL
            AND store_id IS NULL AND device_id IS NULL AND operator_id IS NULL
            AND username = 'service:' || service_name
    END)
);

-- A wake-up for the broker, so an enrolment or a revocation takes effect at once rather than
-- at the next periodic reload (which stays the authority: notifications can be missed).
CREATE FUNCTION notify_identities_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mujin_identities', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER identities_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON identities
    FOR EACH STATEMENT EXECUTE FUNCTION notify_identities_changed();
