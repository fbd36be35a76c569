-- Tombstones are kept for a while, then pruned (#5); images of deleted videos are swept
-- from the asset store.

-- The newest removal time among the tombstones pruned so far. A peer asking for changes
-- since a cursor at or before it would miss what was pruned, and is told to read the whole
-- catalog again instead (410 `cursor-too-old`). One row, or none before the first prune.
CREATE TABLE tombstone_horizon (
    singleton      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    pruned_through TIMESTAMPTZ NOT NULL
);

-- Asset store keys of images whose video row is gone, waiting for a worker to delete
-- the files. A video id is never used again, so neither is a key made from it: a key here
-- names a file nothing will write or read again.
CREATE TABLE orphaned_assets (
    storage_key   TEXT PRIMARY KEY,
    orphaned_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A worker deleting the file holds it until then; a key whose deletion failed waits
    -- for its claim to lapse, behind the others.
    claimed_until TIMESTAMPTZ
);

CREATE FUNCTION record_orphaned_asset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orphaned_assets (storage_key) VALUES (OLD.storage_key)
    ON CONFLICT (storage_key) DO NOTHING;
    RETURN OLD;
END
$$;

-- Deleting a work deletes its video rows (cascade), removed ones included: without an
-- index on every row's work, each work deleted (a location's, a prune's) read the whole
-- table. The partial index (present rows only) stays: replacing it with this one made
-- the planner find a work's present videos through another partial index, reading every
-- present video of the catalog per work (a rescan's tombstones took 7x longer).
CREATE INDEX videos_work_id_all_idx ON videos (work_id);

-- Only deletions: a thumbnail replaced on a living video is deleted by the worker that
-- replaced it, and the video may make an image under the same key again.
CREATE TRIGGER video_assets_record_orphaned AFTER DELETE ON video_assets
    FOR EACH ROW WHEN (OLD.storage_key IS NOT NULL)
    EXECUTE FUNCTION record_orphaned_asset();
