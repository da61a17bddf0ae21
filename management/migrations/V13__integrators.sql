-- Integrators (booking sites, payment kiosks) that book over MQTT: a broker identity
-- `integrator:NAME` and an Ed25519 key their requests are signed with.

ALTER TABLE identities ADD COLUMN integrator_id text;
ALTER TABLE identities DROP CONSTRAINT identities_kind_check;
ALTER TABLE identities ADD CONSTRAINT identities_kind_check
    CHECK (kind IN ('device', 'operator', 'service', 'integrator'));
ALTER TABLE identities DROP CONSTRAINT identities_check;
ALTER TABLE identities ADD CONSTRAINT identities_check CHECK (CASE kind
    WHEN 'device' THEN store_id IS NOT NULL AND device_id IS NOT NULL
        AND operator_id IS NULL AND service_name IS NULL AND integrator_id IS NULL
        AND username = 'device:' || store_id || ':' || device_id
    WHEN 'operator' THEN operator_id IS NOT NULL
        AND store_id IS NULL AND device_id IS NULL AND service_name IS NULL
        AND integrator_id IS NULL
        AND username = 'operator:' || operator_id
    WHEN 'service' THEN service_name IS NOT NULL
        AND store_id IS NULL AND device_id IS NULL AND operator_id IS NULL
        AND integrator_id IS NULL
        AND username = 'service:' || service_name
    WHEN 'integrator' THEN integrator_id IS NOT NULL
        AND store_id IS NULL AND device_id IS NULL AND operator_id IS NULL
        AND service_name IS NULL
        AND username = 'integrator:' || integrator_id
END);

-- Each integrator's current signing key (the private seed is given to the integrator once and
-- never stored). `key_id` is derived from the public key
-- (`mujin_protocol::booking::integrator_key_id`). Enrolling again replaces the key; revoking
-- sets revoked_at (the row stays, so its bookings keep an owner).
CREATE TABLE integrators (
    integrator  text PRIMARY KEY,
    key_id      text NOT NULL UNIQUE,
    public_key  bytea NOT NULL CHECK (octet_length(public_key) = 32),
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

-- Who booked a reservation over MQTT: only that integrator may cancel, extend or ask about it.
ALTER TABLE reservations ADD COLUMN integrator text REFERENCES integrators (integrator);

-- Every authenticated booking request and the reply it got, keyed by its request id: the same
-- request sent again (a redelivery, a retry after a lost reply) gets the same reply without a
-- second effect. `fingerprint` is the request without its `sent_at` and `reply_to`, so a retry
-- signed again later is the same request, and another request with the same id is refused.
CREATE TABLE booking_requests (
    request_id   uuid PRIMARY KEY,
    integrator   text NOT NULL,
    action       text NOT NULL,
    fingerprint  jsonb NOT NULL,
    reply        jsonb NOT NULL,
    decided_at   timestamptz NOT NULL
);
CREATE INDEX booking_requests_at ON booking_requests (decided_at);
