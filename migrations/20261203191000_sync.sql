-- Sync that scales (#5): incremental listings with tombstones, indexed search, and the
-- audit log of federated requests.

-- Incremental listings select what changed since a cursor; without these, asking "what
-- changed since T" would read every row.
CREATE INDEX works_updated_at_idx ON works (updated_at);
CREATE INDEX videos_updated_at_idx ON videos (updated_at);
-- Tombstones: videos marked removed since a cursor.
CREATE INDEX videos_removed_at_idx ON videos (removed_at) WHERE removed_at IS NOT NULL;

-- The cursor a peer's last complete scan ended with: its `sync.cursor`, passed back as
-- `updated_since` on the next scan. NULL: the next scan reads the whole catalog.
ALTER TABLE storage_locations ADD COLUMN sync_cursor TEXT;

-- Title search on trigrams: `title ILIKE '%query%'` uses this index instead of reading
-- every work. pg_trgm is a trusted extension, so the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX works_title_trgm_idx ON works USING gin (title gin_trgm_ops);

-- One row per request made with a non-admin key (peers, players): who, what, how it
-- ended and how many bytes went out. Key and connection ids are plain numbers, not
-- foreign keys: the log must outlive the keys and connections it names.
CREATE TABLE audit_log (
    id                       BIGSERIAL PRIMARY KEY,
    api_key_id               BIGINT NOT NULL,
    federation_connection_id BIGINT,
    action                   TEXT NOT NULL,
    target                   TEXT,
    status                   INTEGER NOT NULL,
    bytes_sent               BIGINT NOT NULL DEFAULT 0,
    occurred_at              TIMESTAMPTZ NOT NULL
);

CREATE INDEX audit_log_occurred_at_idx ON audit_log (occurred_at, id);
CREATE INDEX audit_log_key_idx ON audit_log (api_key_id, occurred_at);
CREATE INDEX audit_log_connection_idx ON audit_log (federation_connection_id, occurred_at)
    WHERE federation_connection_id IS NOT NULL;

-- How many present videos each work has, kept by a trigger, so that "works with a present
-- video" (the listing) is one partial index in the listing's order instead of a semi-join
-- of every work with every video on each request: counting and paging 100,000 works
-- then reads one index instead of two tables.
ALTER TABLE works ADD COLUMN present_videos INTEGER NOT NULL DEFAULT 0;
UPDATE works w SET present_videos =
    (SELECT count(*) FROM videos v WHERE v.work_id = w.id AND v.removed_at IS NULL);
CREATE INDEX works_listed_idx ON works (title, id) WHERE present_videos > 0;

-- TODO(#5): the count locks the work's row until the writing transaction ends; two scans
-- of different locations that share works, written in opposite orders, can deadlock (one
-- page fails and its scan with it).
CREATE FUNCTION count_present_videos() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.work_id = NEW.work_id
       AND (OLD.removed_at IS NULL) = (NEW.removed_at IS NULL) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.removed_at IS NULL THEN
        UPDATE works SET present_videos = present_videos - 1 WHERE id = OLD.work_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.removed_at IS NULL THEN
        UPDATE works SET present_videos = present_videos + 1 WHERE id = NEW.work_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER videos_count_present
    AFTER INSERT OR DELETE OR UPDATE OF work_id, removed_at ON videos
    FOR EACH ROW EXECUTE FUNCTION count_present_videos();

-- Tombstones of video rows deleted outright (a storage location deleted with its videos,
-- a work deleted by hand): without these, incremental listings could not report them.
-- The removal time is kept if the row had one, so peers that already saw it removed are
-- not told again.
-- TODO(#5): prune tombstones older than some retention, and tell peers whose cursor is
-- older than that to read everything again.
CREATE TABLE deleted_videos (
    id         BIGINT PRIMARY KEY,
    work_id    BIGINT NOT NULL,
    removed_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX deleted_videos_removed_at_idx ON deleted_videos (removed_at);

CREATE FUNCTION record_deleted_video() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deleted_videos (id, work_id, removed_at)
    VALUES (OLD.id, OLD.work_id, COALESCE(OLD.removed_at, now()))
    ON CONFLICT (id) DO NOTHING;
    RETURN OLD;
END
$$;

CREATE TRIGGER videos_record_deleted AFTER DELETE ON videos
    FOR EACH ROW EXECUTE FUNCTION record_deleted_video();
