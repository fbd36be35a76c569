-- The catalog of one Velour instance: who may call it, where its videos live, what they
-- are, and the scans that found them.

CREATE TABLE users (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    is_admin   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Only a SHA-256 of each key is kept. Keys are 256 random bits, so a fast hash is as safe
-- as a slow one, and the lookup is by the hash's unique index rather than by comparing
-- secrets.
CREATE TABLE api_keys (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key_hash     BYTEA NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    key_prefix   TEXT NOT NULL,
    can_read     BOOLEAN NOT NULL DEFAULT FALSE,
    can_stream   BOOLEAN NOT NULL DEFAULT FALSE,
    can_metadata BOOLEAN NOT NULL DEFAULT FALSE,
    active       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ
);

-- `configuration` is what the API shows; `secrets` (peer keys, S3 credentials) is kept
-- apart so that no query that serializes a location can leak one by accident.
CREATE TABLE storage_locations (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    storage_type  TEXT NOT NULL CHECK (storage_type IN ('local', 's3', 'velour')),
    configuration JSONB NOT NULL DEFAULT '{}',
    secrets       JSONB NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A work is a film or show; its videos are the files (or peers' files) that hold it.
-- Titles are stored in Unicode NFC. One row per title and year, so scans of different
-- locations meet on the same work.
CREATE TABLE works (
    id          BIGSERIAL PRIMARY KEY,
    title       TEXT NOT NULL CHECK (length(title) > 0),
    year        INTEGER,
    description TEXT,
    director    TEXT,
    rating      DOUBLE PRECISION,
    organized   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT works_title_year_key UNIQUE NULLS NOT DISTINCT (title, year)
);

-- `source_key` identifies the file within its location: the relative path for a folder,
-- the peer's video id for a peer. `filename` is what people see.
CREATE TABLE videos (
    id                  BIGSERIAL PRIMARY KEY,
    work_id             BIGINT NOT NULL REFERENCES works (id) ON DELETE CASCADE,
    storage_location_id BIGINT NOT NULL REFERENCES storage_locations (id) ON DELETE CASCADE,
    source_key          TEXT NOT NULL,
    filename            TEXT NOT NULL,
    file_size           BIGINT NOT NULL CHECK (file_size >= 0),
    modified_at         TIMESTAMPTZ,
    duration            DOUBLE PRECISION,
    width               INTEGER,
    height              INTEGER,
    video_codec         TEXT,
    audio_codec         TEXT,
    container           TEXT,
    web_compatible      BOOLEAN NOT NULL DEFAULT FALSE,
    fingerprints        JSONB NOT NULL DEFAULT '{}',
    video_metadata      JSONB NOT NULL DEFAULT '{}',
    removed_at          TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT videos_location_source_key UNIQUE (storage_location_id, source_key)
);

CREATE INDEX videos_work_id_idx ON videos (work_id) WHERE removed_at IS NULL;

CREATE TABLE federation_connections (
    id                  BIGSERIAL PRIMARY KEY,
    api_key_id          BIGINT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    storage_location_id BIGINT REFERENCES storage_locations (id) ON DELETE SET NULL,
    remote_instance_url TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'active', 'suspended', 'rejected')),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT federation_connections_key_url UNIQUE (api_key_id, remote_instance_url)
);

CREATE TABLE scan_runs (
    id                  BIGSERIAL PRIMARY KEY,
    storage_location_id BIGINT NOT NULL REFERENCES storage_locations (id) ON DELETE CASCADE,
    state               TEXT NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    works_seen          INTEGER NOT NULL DEFAULT 0,
    works_added         INTEGER NOT NULL DEFAULT 0,
    works_updated       INTEGER NOT NULL DEFAULT 0,
    works_removed       INTEGER NOT NULL DEFAULT 0,
    videos_seen         INTEGER NOT NULL DEFAULT 0,
    videos_added        INTEGER NOT NULL DEFAULT 0,
    videos_updated      INTEGER NOT NULL DEFAULT 0,
    videos_removed      INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    queued_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ
);

-- At most one scan of a location is waiting or running; a second request joins it.
CREATE UNIQUE INDEX scan_runs_one_active_per_location
    ON scan_runs (storage_location_id) WHERE state IN ('queued', 'running');

-- Files a scan looked at and did not index, each with the reason.
CREATE TABLE scan_run_skips (
    id          BIGSERIAL PRIMARY KEY,
    scan_run_id BIGINT NOT NULL REFERENCES scan_runs (id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    reason      TEXT NOT NULL
);

CREATE INDEX scan_run_skips_run_idx ON scan_run_skips (scan_run_id);
