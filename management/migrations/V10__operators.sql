-- Operators who may send requests, each with a role and the Ed25519 public key its requests are
-- signed with (the private key is given to the operator once and never stored here). `key_id`
-- is derived from the public key (`mujin_protocol::signed::operator_key_id`): a request's
-- signature names it, which is how management finds who signed. Revoking sets revoked_at; the
-- row stays for the audit trail.
CREATE TABLE operators (
    operator    text PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    key_id      text NOT NULL UNIQUE,
    public_key  bytea NOT NULL CHECK (octet_length(public_key) = 32),
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

-- The key that signed each request recorded in `requests` (NULL for rows from before
-- signatures); `operator` is its operator. A request refused for its role is recorded there
-- like one carried out.
ALTER TABLE requests ADD COLUMN key_id text;

-- Requests refused before they could be trusted: unsigned, signed by an unknown or revoked
-- operator or by another operator than the topic's, badly signed, or sent too far from
-- management's clock. Kept apart from `requests` so that a forged request can never take a
-- request id (and with it the recorded reply) from the real operator.
CREATE TABLE refused_requests (
    refusal_id  bigserial PRIMARY KEY,
    request_id  uuid,
    -- The operator of the topic the request came on.
    operator    text NOT NULL,
    -- The key id its signature named, if any.
    key_id      text,
    action      text NOT NULL,
    body        jsonb,
    detail      text NOT NULL,
    refused_at  timestamptz NOT NULL
);
CREATE INDEX refused_requests_at ON refused_requests (refused_at);
