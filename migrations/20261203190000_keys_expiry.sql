-- Keys that expire, are revoked, and are rotated; federation connections that know their
-- keys and the outcome of their last test.

-- `expires_at` NULL means the key never expires. `revoked_at` ends a key at once; the old
-- `active` flag stays for compatibility and is cleared with it. `replaced_by` points a
-- rotated key at its successor, so a key is rotated at most once. `connection_id` ties
-- every key of a federation connection (the original and its successors) to it, so that
-- a key still in its rotation grace period obeys the connection's status too.
ALTER TABLE api_keys
    ADD COLUMN expires_at    TIMESTAMPTZ,
    ADD COLUMN revoked_at    TIMESTAMPTZ,
    ADD COLUMN replaced_by   BIGINT REFERENCES api_keys (id) ON DELETE SET NULL,
    ADD COLUMN connection_id BIGINT
        REFERENCES federation_connections (id) ON DELETE SET NULL;

UPDATE api_keys SET revoked_at = created_at WHERE NOT active;

CREATE INDEX api_keys_connection_idx ON api_keys (connection_id)
    WHERE connection_id IS NOT NULL;

-- One connection per key we issued and per location we read the peer through.
ALTER TABLE federation_connections
    ADD CONSTRAINT federation_connections_one_per_key UNIQUE (api_key_id),
    ADD COLUMN last_test_reachable    BOOLEAN,
    ADD COLUMN last_test_latency_ms   INTEGER,
    ADD COLUMN last_test_peer_version TEXT,
    ADD COLUMN last_test_error        TEXT,
    ADD COLUMN last_tested_at         TIMESTAMPTZ;

CREATE UNIQUE INDEX federation_connections_one_per_location
    ON federation_connections (storage_location_id) WHERE storage_location_id IS NOT NULL;

-- Counting active connections against MAX_FEDERATED_CONNECTIONS.
CREATE INDEX federation_connections_status_idx ON federation_connections (status);
