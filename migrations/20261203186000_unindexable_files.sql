-- Files (and bucket objects) a scan could not index for reasons of their own (ffprobe cannot read them, they
-- hold no video stream), remembered with the size and date they had: rescans skip them
-- without running ffprobe again until they change.
CREATE TABLE unindexable_files (
    storage_location_id BIGINT NOT NULL REFERENCES storage_locations (id) ON DELETE CASCADE,
    source_key          TEXT NOT NULL,
    file_size           BIGINT NOT NULL,
    modified_at         TIMESTAMPTZ,
    -- A bucket object's ETag (quotes included), which changes with its content.
    etag                TEXT,
    reason              TEXT NOT NULL,
    recorded_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (storage_location_id, source_key)
);
