-- Operator requests over MQTT, keyed by the operator's request id: a request sent again (a
-- redelivery, a retry after a lost reply) finds its first reply here instead of being carried
-- out twice.
CREATE TABLE requests (
    request_id  uuid PRIMARY KEY,
    operator    text NOT NULL,
    action      text NOT NULL,
    body        jsonb NOT NULL,
    ok          boolean NOT NULL,
    detail      text NOT NULL,
    -- The walk-in ticket of an `issue_ticket` request, so its reply can be sent again.
    ticket      text,
    decided_at  timestamptz NOT NULL
);
