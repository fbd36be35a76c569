//! Catalog writes made by scans: works found or created by title and year, videos upserted
//! by (location, source key), and the sweep that marks what a scan did not see as removed.
//!
//! What the counts mean, so that every scanner reports them alike:
//! - a video is *added* when its row is created, or when a row marked removed is present
//!   again; *updated* when a present row changed; *removed* when the sweep marks it;
//! - a work is *added* when its row is created, *updated* when a scan filled in facts it
//!   lacked, and *removed* when a sweep took away its last present video, in any location.
//!
//! Writes that change nothing leave rows untouched (`updated_at` included), so rescanning an
//! unchanged location is free of churn.

use crate::DbError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;

/// What a location's catalog holds for one source key, as a scan needs it to decide whether
/// a file changed since the last scan.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct KnownVideo {
    pub id: i64,
    pub work_id: i64,
    pub source_key: String,
    pub file_size: i64,
    pub modified_at: Option<DateTime<Utc>>,
    pub removed: bool,
    /// The object's ETag when it came from a bucket (kept in `video_metadata.etag`).
    pub etag: Option<String>,
    pub oshash: Option<String>,
    /// When the `.nfo` sidecar the video was indexed with last changed (kept in
    /// `video_metadata.nfo_modified`); `None` when it had none.
    pub nfo_modified: Option<String>,
}

/// Every video row of a location (present or removed), by source key.
pub async fn known_videos(
    pool: &PgPool,
    location_id: i64,
) -> Result<HashMap<String, KnownVideo>, DbError> {
    let rows: Vec<KnownVideo> = sqlx::query_as(
        "SELECT id, work_id, source_key, file_size, modified_at,
                removed_at IS NOT NULL AS removed, video_metadata->>'etag' AS etag,
                fingerprints->>'oshash' AS oshash,
                video_metadata->>'nfo_modified' AS nfo_modified
         FROM videos WHERE storage_location_id = $1",
    )
    .bind(location_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.source_key.clone(), row)).collect())
}

/// A work as a scan found it. The title must already be NFC-normalized and non-empty.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoundWork<'a> {
    pub title: &'a str,
    pub year: Option<i32>,
    pub description: Option<&'a str>,
    pub director: Option<&'a str>,
    pub rating: Option<f64>,
}

/// What `upsert_work` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkChange {
    Created,
    /// The work existed and lacked a description, director or rating that the scan had.
    Filled,
    Unchanged,
}

/// Finds the work with this title and year, or creates it. An existing work only gains the
/// facts it lacks: what people or earlier scans wrote is never overwritten.
pub async fn upsert_work(
    conn: &mut PgConnection,
    work: &FoundWork<'_>,
) -> Result<(i64, WorkChange), DbError> {
    // Another scan may create the same work between our look-up and our insert; its insert
    // then makes ours do nothing, and the next look-up (a new statement, so a new snapshot)
    // sees its row. Two rounds are enough for that; a third would mean the row vanished.
    for _ in 0..3 {
        if let Some(found) = find_work(conn, work.title, work.year).await? {
            let id = found.id;
            // Only a work that lacks a fact the scan has is written (one round trip less
            // per work on rescans).
            let fills = (found.lacks_description && work.description.is_some())
                || (found.lacks_director && work.director.is_some())
                || (found.lacks_rating && work.rating.is_some());
            let filled = fills && fill_work(conn, id, work).await?;
            let change = if filled { WorkChange::Filled } else { WorkChange::Unchanged };
            return Ok((id, change));
        }
        let created: Option<i64> = sqlx::query_scalar(
            "INSERT INTO works (title, year, description, director, rating)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT ON CONSTRAINT works_title_year_key DO NOTHING
             RETURNING id",
        )
        .bind(work.title)
        .bind(work.year)
        .bind(work.description)
        .bind(work.director)
        .bind(work.rating)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = created {
            return Ok((id, WorkChange::Created));
        }
    }
    Err(DbError::Conflict(format!(
        "the work {:?} ({:?}) kept changing while it was being saved",
        work.title, work.year
    )))
}

/// An existing work, and which facts it lacks.
#[derive(sqlx::FromRow)]
struct ExistingWork {
    id: i64,
    lacks_description: bool,
    lacks_director: bool,
    lacks_rating: bool,
}

async fn find_work(
    conn: &mut PgConnection,
    title: &str,
    year: Option<i32>,
) -> Result<Option<ExistingWork>, DbError> {
    // `year IS NOT DISTINCT FROM $2` cannot use an index; this form lets the unique index
    // on (title, year) find the title, then filters its few rows by year. The share lock
    // keeps the work until the caller's transaction ends: deleting a location (which
    // deletes works left without videos) waits, then sees the video saved with it.
    let id = sqlx::query_as(
        "SELECT id, description IS NULL AS lacks_description, director IS NULL AS lacks_director,
                rating IS NULL AS lacks_rating
         FROM works
         WHERE title = $1 AND (year = $2 OR (year IS NULL AND $2::INTEGER IS NULL))
         FOR KEY SHARE",
    )
    .bind(title)
    .bind(year)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(id)
}

/// Fills in the facts a work lacks. Returns whether anything changed.
async fn fill_work(
    conn: &mut PgConnection,
    id: i64,
    work: &FoundWork<'_>,
) -> Result<bool, DbError> {
    if work.description.is_none() && work.director.is_none() && work.rating.is_none() {
        return Ok(false);
    }
    let filled = sqlx::query(
        "UPDATE works SET
            description = COALESCE(description, $2),
            director = COALESCE(director, $3),
            rating = COALESCE(rating, $4),
            updated_at = now()
         WHERE id = $1
           AND ((description IS NULL AND $2::TEXT IS NOT NULL)
             OR (director IS NULL AND $3::TEXT IS NOT NULL)
             OR (rating IS NULL AND $4::DOUBLE PRECISION IS NOT NULL))",
    )
    .bind(id)
    .bind(work.description)
    .bind(work.director)
    .bind(work.rating)
    .execute(&mut *conn)
    .await?;
    Ok(filled.rows_affected() > 0)
}

/// A video as a scan found it.
#[derive(Clone, Debug)]
pub struct FoundVideo<'a> {
    pub work_id: i64,
    pub storage_location_id: i64,
    /// The relative path in a folder, the peer's video id for a peer.
    pub source_key: &'a str,
    pub filename: &'a str,
    pub file_size: i64,
    pub modified_at: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub video_codec: Option<&'a str>,
    pub audio_codec: Option<&'a str>,
    pub container: Option<&'a str>,
    pub web_compatible: bool,
    /// An object of fingerprints by algorithm, e.g. `{"oshash": "…"}`.
    pub fingerprints: &'a Value,
    pub video_metadata: &'a Value,
}

/// What `upsert_video` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoChange {
    Created,
    /// The row was marked removed and is present again.
    Restored,
    Updated,
    Unchanged,
}

impl VideoChange {
    /// Whether the video counts as added: it was not in the present catalog before.
    pub fn is_added(self) -> bool {
        matches!(self, Self::Created | Self::Restored)
    }
}

/// Creates or updates the video at (location, source key), and marks it present. A row
/// whose facts are all equal is not written.
pub async fn upsert_video(
    conn: &mut PgConnection,
    video: &FoundVideo<'_>,
) -> Result<(i64, VideoChange), DbError> {
    let saved = upsert_videos(conn, video.storage_location_id, std::slice::from_ref(video)).await?;
    saved.into_iter().next().ok_or_else(|| {
        DbError::Conflict(format!("the video {:?} was not written", video.source_key))
    })
}

/// Gives a video a new source key, its file having moved within the location: it keeps
/// its id, its work and its facts, and is present.
pub async fn move_video(
    pool: &PgPool,
    id: i64,
    source_key: &str,
    filename: &str,
    modified_at: Option<DateTime<Utc>>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE videos SET source_key = $2, filename = $3, modified_at = $4,
            removed_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(source_key)
    .bind(filename)
    .bind(modified_at)
    .execute(pool)
    .await
    .map_err(|e| DbError::conflict_or(e, "another video already has this source key"))?;
    Ok(())
}

/// What a sweep marked removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Sweep {
    pub videos_removed: i64,
    /// Works whose last present video (in any location) this sweep removed.
    pub works_removed: i64,
}

/// Marks every present video of a location that the scan did not see as removed.
/// Call it only after a scan that saw the whole location.
pub async fn remove_unseen_videos(
    pool: &PgPool,
    location_id: i64,
    seen_video_ids: &[i64],
) -> Result<Sweep, DbError> {
    let mut tx = pool.begin().await?;
    // The counts of the works losing videos change below: their rows are locked first, in
    // the order every scan locks works in, so that a sweep cannot deadlock with a page.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT FROM works w
         WHERE w.id IN (SELECT work_id FROM videos
                        WHERE storage_location_id = $1 AND removed_at IS NULL
                          AND NOT (id = ANY($2)))
         ORDER BY {LOCK_ORDER} FOR NO KEY UPDATE"
    )))
    .bind(location_id)
    .bind(seen_video_ids)
    .execute(&mut *tx)
    .await?;

    // The outer SELECT sees the snapshot from before the UPDATE, so the videos just
    // removed still look present there and are excluded by id.
    let sweep = sqlx::query_as(
        "WITH removed AS (
            UPDATE videos SET removed_at = now(), updated_at = now()
            WHERE storage_location_id = $1 AND removed_at IS NULL AND NOT (id = ANY($2))
            RETURNING id, work_id
         )
         SELECT (SELECT count(*) FROM removed) AS videos_removed,
                (SELECT count(DISTINCT r.work_id) FROM removed r
                 WHERE NOT EXISTS (
                    SELECT 1 FROM videos v
                    WHERE v.work_id = r.work_id AND v.removed_at IS NULL
                      AND v.id NOT IN (SELECT id FROM removed))) AS works_removed",
    )
    .bind(location_id)
    .bind(seen_video_ids)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(sweep)
}

/// A file a scan could not index, as it was when it failed.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UnindexableFile {
    pub source_key: String,
    pub file_size: i64,
    pub modified_at: Option<DateTime<Utc>>,
    pub etag: Option<String>,
    pub reason: String,
}

/// The location's files that could not be indexed, by source key.
pub async fn unindexable_files(
    pool: &PgPool,
    location_id: i64,
) -> Result<HashMap<String, UnindexableFile>, DbError> {
    let rows: Vec<UnindexableFile> = sqlx::query_as(
        "SELECT source_key, file_size, modified_at, etag, reason
         FROM unindexable_files WHERE storage_location_id = $1",
    )
    .bind(location_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.source_key.clone(), row)).collect())
}

/// Remembers that a file, at this size and date, cannot be indexed, and why.
pub async fn remember_unindexable(
    pool: &PgPool,
    location_id: i64,
    file: &UnindexableFile,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO unindexable_files
             (storage_location_id, source_key, file_size, modified_at, etag, reason)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (storage_location_id, source_key) DO UPDATE SET
             file_size = EXCLUDED.file_size, modified_at = EXCLUDED.modified_at,
             etag = EXCLUDED.etag, reason = EXCLUDED.reason, recorded_at = now()",
    )
    .bind(location_id)
    .bind(&file.source_key)
    .bind(file.file_size)
    .bind(file.modified_at)
    .bind(&file.etag)
    .bind(&file.reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets every remembered file of the location but `still_unindexable`: after a complete
/// walk, the others were indexed, changed, or are gone.
pub async fn forget_unindexable_except(
    pool: &PgPool,
    location_id: i64,
    still_unindexable: &[String],
) -> Result<(), DbError> {
    sqlx::query(
        "DELETE FROM unindexable_files
         WHERE storage_location_id = $1 AND NOT (source_key = ANY($2))",
    )
    .bind(location_id)
    .bind(still_unindexable)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the given videos of a location removed: the peer reported them gone (tombstones of
/// an incremental listing). Keys not present here are ignored.
pub async fn remove_videos_by_source_key(
    conn: &mut PgConnection,
    location_id: i64,
    source_keys: &[String],
) -> Result<Sweep, DbError> {
    if source_keys.is_empty() {
        return Ok(Sweep::default());
    }
    // Locked in scan order; a page's own works were locked before, so this order is only
    // kept within the tombstones (see `save_page` in the worker for the retry).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT FROM works w
         WHERE w.id IN (SELECT work_id FROM videos
                        WHERE storage_location_id = $1 AND removed_at IS NULL
                          AND source_key = ANY($2))
         ORDER BY {LOCK_ORDER} FOR NO KEY UPDATE"
    )))
    .bind(location_id)
    .bind(source_keys)
    .execute(&mut *conn)
    .await?;

    // Same shape as `remove_unseen_videos`: the outer SELECT's snapshot predates the UPDATE.
    let sweep = sqlx::query_as(
        "WITH removed AS (
            UPDATE videos SET removed_at = now(), updated_at = now()
            WHERE storage_location_id = $1 AND removed_at IS NULL AND source_key = ANY($2)
            RETURNING id, work_id
         )
         SELECT (SELECT count(*) FROM removed) AS videos_removed,
                (SELECT count(DISTINCT r.work_id) FROM removed r
                 WHERE NOT EXISTS (
                    SELECT 1 FROM videos v
                    WHERE v.work_id = r.work_id AND v.removed_at IS NULL
                      AND v.id NOT IN (SELECT id FROM removed))) AS works_removed",
    )
    .bind(location_id)
    .bind(source_keys)
    .fetch_one(&mut *conn)
    .await?;
    Ok(sweep)
}

/// Where a work falls in the order every writer that holds several works' locks takes
/// them in: its title's bytes (`COLLATE "C"` in SQL), then its year with no year first.
/// Two transactions that lock in one order cannot deadlock on each other.
fn lock_order<'a>(work: &FoundWork<'a>) -> (&'a [u8], Option<i32>) {
    (work.title.as_bytes(), work.year)
}

/// The SQL form of `lock_order`.
pub(crate) const LOCK_ORDER: &str = "w.title COLLATE \"C\", w.year NULLS FIRST, w.id";

/// Finds or creates every work of a page at once, as `upsert_work` would one by one, and
/// returns each one's id and change in the order given. Existing works are locked (in
/// `lock_order`) until the transaction ends, so that the present-video counts written
/// after them never wait on another scan while holding one of these.
pub async fn upsert_works(
    conn: &mut PgConnection,
    works: &[FoundWork<'_>],
) -> Result<Vec<(i64, WorkChange)>, DbError> {
    if works.is_empty() {
        return Ok(Vec::new());
    }
    // One row per (title, year): a statement may not update a row twice. A repeat's facts
    // fill what the first occurrence lacked, as a second `upsert_work` would.
    let mut merged: Vec<FoundWork<'_>> = Vec::with_capacity(works.len());
    let mut repeat_fills: Vec<bool> = Vec::with_capacity(works.len());
    let mut index_of: HashMap<(&str, Option<i32>), usize> = HashMap::new();
    for work in works {
        match index_of.get(&(work.title, work.year)) {
            Some(&i) => {
                let first = &mut merged[i];
                let fills = (first.description.is_none() && work.description.is_some())
                    || (first.director.is_none() && work.director.is_some())
                    || (first.rating.is_none() && work.rating.is_some());
                repeat_fills[i] |= fills;
                first.description = first.description.or(work.description);
                first.director = first.director.or(work.director);
                first.rating = first.rating.or(work.rating);
            }
            None => {
                index_of.insert((work.title, work.year), merged.len());
                merged.push(*work);
                repeat_fills.push(false);
            }
        }
    }
    let mut order: Vec<usize> = (0..merged.len()).collect();
    order.sort_by(|&a, &b| lock_order(&merged[a]).cmp(&lock_order(&merged[b])));

    let titles: Vec<&str> = order.iter().map(|&i| merged[i].title).collect();
    let years: Vec<Option<i32>> = order.iter().map(|&i| merged[i].year).collect();
    let descriptions: Vec<Option<&str>> = order.iter().map(|&i| merged[i].description).collect();
    let directors: Vec<Option<&str>> = order.iter().map(|&i| merged[i].director).collect();
    let ratings: Vec<Option<f64>> = order.iter().map(|&i| merged[i].rating).collect();

    // ON CONFLICT DO UPDATE locks a conflicting row even when its WHERE leaves it as it
    // is, and the rows are taken in the order given. Rows returned were created (xmax 0)
    // or filled; the others are read by the next statement, whose snapshot also sees a
    // row another scan created and committed while this one waited for it.
    let written: Vec<(i64, String, Option<i32>, bool)> = sqlx::query_as(
        "INSERT INTO works (title, year, description, director, rating)
         SELECT title, year, description, director, rating
         FROM unnest($1::TEXT[], $2::INTEGER[], $3::TEXT[], $4::TEXT[],
                     $5::DOUBLE PRECISION[]) WITH ORDINALITY
              AS i(title, year, description, director, rating, ord)
         ORDER BY ord
         ON CONFLICT ON CONSTRAINT works_title_year_key DO UPDATE SET
            description = COALESCE(works.description, EXCLUDED.description),
            director = COALESCE(works.director, EXCLUDED.director),
            rating = COALESCE(works.rating, EXCLUDED.rating),
            updated_at = now()
         WHERE (works.description IS NULL AND EXCLUDED.description IS NOT NULL)
            OR (works.director IS NULL AND EXCLUDED.director IS NOT NULL)
            OR (works.rating IS NULL AND EXCLUDED.rating IS NOT NULL)
         RETURNING id, title, year, xmax = 0",
    )
    .bind(&titles)
    .bind(&years)
    .bind(&descriptions)
    .bind(&directors)
    .bind(&ratings)
    .fetch_all(&mut *conn)
    .await?;

    let mut found: HashMap<(String, Option<i32>), (i64, WorkChange)> = HashMap::new();
    for (id, title, year, created) in written {
        let change = if created { WorkChange::Created } else { WorkChange::Filled };
        found.insert((title, year), (id, change));
    }
    if found.len() < merged.len() {
        let unchanged: Vec<(i64, String, Option<i32>)> = sqlx::query_as(
            "SELECT w.id, w.title, w.year
             FROM unnest($1::TEXT[], $2::INTEGER[]) AS i(title, year)
             JOIN works w ON w.title = i.title AND w.year IS NOT DISTINCT FROM i.year",
        )
        .bind(&titles)
        .bind(&years)
        .fetch_all(&mut *conn)
        .await?;
        for (id, title, year) in unchanged {
            found.entry((title, year)).or_insert((id, WorkChange::Unchanged));
        }
    }

    let mut changes = Vec::with_capacity(works.len());
    let mut reported = vec![false; merged.len()];
    for work in works {
        let i = index_of[&(work.title, work.year)];
        let key = (work.title.to_owned(), work.year);
        let Some(&(id, change)) = found.get(&key) else {
            return Err(DbError::Conflict(format!(
                "the work {:?} ({:?}) vanished while it was being saved",
                work.title, work.year
            )));
        };
        // The first occurrence reports what the statement did; a repeat reports a fill
        // when it brought a fact the first lacked to a work this page created.
        let change = match (reported[i], change) {
            (false, change) => change,
            (true, WorkChange::Created) if repeat_fills[i] => WorkChange::Filled,
            (true, _) => WorkChange::Unchanged,
        };
        reported[i] = true;
        changes.push((id, change));
    }
    Ok(changes)
}

/// Creates or updates every video at once, as `upsert_video` would one by one, and returns
/// each one's id and change in the order given. Source keys must be unique within one
/// call; the caller splits repeats into later calls.
pub async fn upsert_videos(
    conn: &mut PgConnection,
    location_id: i64,
    videos: &[FoundVideo<'_>],
) -> Result<Vec<(i64, VideoChange)>, DbError> {
    if videos.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&FoundVideo<'_>) -> Option<String>| -> Vec<Option<String>> {
        videos.iter().map(f).collect()
    };
    let work_ids: Vec<i64> = videos.iter().map(|v| v.work_id).collect();
    let source_keys: Vec<&str> = videos.iter().map(|v| v.source_key).collect();
    let filenames: Vec<&str> = videos.iter().map(|v| v.filename).collect();
    let sizes: Vec<i64> = videos.iter().map(|v| v.file_size).collect();
    let modified: Vec<Option<DateTime<Utc>>> = videos.iter().map(|v| v.modified_at).collect();
    let durations: Vec<Option<f64>> = videos.iter().map(|v| v.duration).collect();
    let widths: Vec<Option<i32>> = videos.iter().map(|v| v.width).collect();
    let heights: Vec<Option<i32>> = videos.iter().map(|v| v.height).collect();
    let video_codecs = column(|v| v.video_codec.map(str::to_owned));
    let audio_codecs = column(|v| v.audio_codec.map(str::to_owned));
    let containers = column(|v| v.container.map(str::to_owned));
    let web: Vec<bool> = videos.iter().map(|v| v.web_compatible).collect();
    let fingerprints: Vec<String> = videos.iter().map(|v| v.fingerprints.to_string()).collect();
    let metadata: Vec<String> = videos.iter().map(|v| v.video_metadata.to_string()).collect();

    // `prior` reads the snapshot from before the statement, `written` returns only rows
    // inserted or changed.
    let rows: Vec<UpsertedVideo> = sqlx::query_as(
        "WITH input AS (
            SELECT * FROM unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[],
                $6::TIMESTAMPTZ[], $7::DOUBLE PRECISION[], $8::INTEGER[], $9::INTEGER[],
                $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::BOOLEAN[], $14::JSONB[],
                $15::JSONB[]) WITH ORDINALITY
                AS i(work_id, source_key, filename, file_size, modified_at, duration, width,
                     height, video_codec, audio_codec, container, web_compatible,
                     fingerprints, video_metadata, ord)
         ), prior AS (
            SELECT id, source_key, removed_at IS NOT NULL AS removed FROM videos
            WHERE storage_location_id = $1 AND source_key IN (SELECT source_key FROM input)
         ), written AS (
            INSERT INTO videos (work_id, storage_location_id, source_key, filename,
                file_size, modified_at, duration, width, height, video_codec,
                audio_codec, container, web_compatible, fingerprints, video_metadata)
            SELECT work_id, $1, source_key, filename, file_size, modified_at, duration,
                width, height, video_codec, audio_codec, container, web_compatible,
                fingerprints, video_metadata
            FROM input ORDER BY ord
            ON CONFLICT ON CONSTRAINT videos_location_source_key DO UPDATE SET
                work_id = EXCLUDED.work_id, filename = EXCLUDED.filename,
                file_size = EXCLUDED.file_size, modified_at = EXCLUDED.modified_at,
                duration = EXCLUDED.duration, width = EXCLUDED.width,
                height = EXCLUDED.height, video_codec = EXCLUDED.video_codec,
                audio_codec = EXCLUDED.audio_codec, container = EXCLUDED.container,
                web_compatible = EXCLUDED.web_compatible,
                fingerprints = EXCLUDED.fingerprints,
                video_metadata = EXCLUDED.video_metadata,
                removed_at = NULL, updated_at = now()
            WHERE videos.removed_at IS NOT NULL
               OR (videos.work_id, videos.filename, videos.file_size, videos.modified_at,
                   videos.duration, videos.width, videos.height, videos.video_codec,
                   videos.audio_codec, videos.container, videos.web_compatible,
                   videos.fingerprints, videos.video_metadata)
                  IS DISTINCT FROM
                  (EXCLUDED.work_id, EXCLUDED.filename, EXCLUDED.file_size,
                   EXCLUDED.modified_at, EXCLUDED.duration, EXCLUDED.width,
                   EXCLUDED.height, EXCLUDED.video_codec, EXCLUDED.audio_codec,
                   EXCLUDED.container, EXCLUDED.web_compatible, EXCLUDED.fingerprints,
                   EXCLUDED.video_metadata)
            RETURNING id, source_key
         )
         SELECT i.source_key, p.id AS prior_id, p.removed AS prior_removed,
                w.id AS written_id
         FROM input i
         LEFT JOIN prior p ON p.source_key = i.source_key
         LEFT JOIN written w ON w.source_key = i.source_key
         ORDER BY i.ord",
    )
    .bind(location_id)
    .bind(&work_ids)
    .bind(&source_keys)
    .bind(&filenames)
    .bind(&sizes)
    .bind(&modified)
    .bind(&durations)
    .bind(&widths)
    .bind(&heights)
    .bind(&video_codecs)
    .bind(&audio_codecs)
    .bind(&containers)
    .bind(&web)
    .bind(&fingerprints)
    .bind(&metadata)
    .fetch_all(&mut *conn)
    .await?;

    rows.into_iter()
        .map(|r| video_change(&r.source_key, r.prior_id, r.prior_removed, r.written_id))
        .collect()
}

/// One row of `upsert_videos`' statement: what the row was before it, and what it wrote.
#[derive(sqlx::FromRow)]
struct UpsertedVideo {
    source_key: String,
    prior_id: Option<i64>,
    prior_removed: Option<bool>,
    written_id: Option<i64>,
}

fn video_change(
    source_key: &str,
    prior_id: Option<i64>,
    prior_removed: Option<bool>,
    written_id: Option<i64>,
) -> Result<(i64, VideoChange), DbError> {
    match (prior_id, prior_removed, written_id) {
        (None, _, Some(id)) => Ok((id, VideoChange::Created)),
        (Some(_), Some(true), Some(id)) => Ok((id, VideoChange::Restored)),
        (Some(_), _, Some(id)) => Ok((id, VideoChange::Updated)),
        (Some(id), _, None) => Ok((id, VideoChange::Unchanged)),
        // Neither there before nor written: another transaction inserted the same key
        // after our snapshot. Scans of one location hold a lock, so this is a bug elsewhere.
        (None, _, None) => Err(DbError::Conflict(format!(
            "the video {source_key:?} was written by someone else during the scan"
        ))),
    }
}
