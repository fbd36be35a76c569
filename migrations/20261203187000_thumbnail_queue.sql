-- Thumbnail jobs queued and not yet done, one per video and version: a scan queues a video
-- only if no job for its current version was queued within the hour, so rescans while
-- jobs wait (or run) do not pile up duplicates. A lost job is queued again after the hour.
CREATE TABLE thumbnail_queue (
    video_id       BIGINT PRIMARY KEY REFERENCES videos (id) ON DELETE CASCADE,
    source_version TEXT NOT NULL,
    queued_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
