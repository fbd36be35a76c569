-- Images made from a video (its thumbnail), kept in the asset store; this row says where,
-- and which version of the video it was made from, so that a changed file gets a new one.
-- A video that yields no image (audio only, undecodable) keeps a failed row with the
-- reason, so that it is not tried again until the file changes.
CREATE TABLE video_assets (
    id             BIGSERIAL PRIMARY KEY,
    video_id       BIGINT NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    asset_type     TEXT NOT NULL CHECK (asset_type IN ('thumbnail')),
    state          TEXT NOT NULL CHECK (state IN ('ready', 'failed')),
    -- The video's size and fingerprint when the asset was made.
    source_version TEXT NOT NULL,
    storage_key    TEXT,
    content_type   TEXT,
    byte_size      BIGINT CHECK (byte_size > 0),
    width          INTEGER,
    height         INTEGER,
    -- Hex SHA-256 of the image: its strong ETag.
    sha256         TEXT,
    error          TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT video_assets_one_per_type UNIQUE (video_id, asset_type),
    CONSTRAINT video_assets_ready_is_complete CHECK (
        state <> 'ready' OR (storage_key IS NOT NULL AND content_type IS NOT NULL
                             AND byte_size IS NOT NULL AND sha256 IS NOT NULL)
    )
);
