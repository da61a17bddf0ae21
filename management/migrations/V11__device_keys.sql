-- Device keys: the public half of each device's current Ed25519 key, with which it signs what it
-- publishes (scans, states, telemetry, acks). Created when the device's identity is enrolled (the
-- secret seed is printed once in the agent configuration and stored nowhere); enrolling again
-- replaces it, so the old key stops working; revoking the device's identity deletes it.
-- Management reloads this table every few seconds and on an unknown key.
CREATE TABLE device_keys (
    store_id    text NOT NULL,
    device_id   text NOT NULL,
    key_id      text NOT NULL,
    public_key  bytea NOT NULL CHECK (octet_length(public_key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, device_id),
    FOREIGN KEY (store_id, device_id) REFERENCES devices (store_id, device_id) ON DELETE CASCADE
);
