-- Scheduled rescans. A location with an interval is rescanned when `next_scan_at` comes:
-- a worker claims it by moving `next_scan_at` one interval on (FOR UPDATE SKIP LOCKED),
-- so any number of workers queue each due scan once. Failed scans move it by a backoff
-- instead, and a peer that refused our key (401/403) is left alone until the location is
-- changed.
--
-- The secrets column is not touched here: sealing needs the key, which a migration does
-- not have. Services seal the plaintext rows of older releases when they start.
ALTER TABLE storage_locations
    ADD COLUMN rescan_interval_secs  INTEGER CHECK (rescan_interval_secs >= 60),
    ADD COLUMN next_scan_at          TIMESTAMPTZ,
    ADD COLUMN scan_failures         INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN rescans_halted_reason TEXT;

CREATE INDEX storage_locations_next_scan_idx
    ON storage_locations (next_scan_at) WHERE next_scan_at IS NOT NULL;
