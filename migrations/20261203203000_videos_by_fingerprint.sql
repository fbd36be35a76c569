-- Videos found by content: the same file held by several locations (a peer and its mirror,
-- a folder and a bucket) is served from another when the one asked for is unavailable.
CREATE INDEX videos_oshash_idx ON videos ((fingerprints->>'oshash'))
    WHERE removed_at IS NULL;
