//! Video assets (thumbnails): which image the asset store holds for a video, and which
//! version of the video it was made from.
//!
//! A video's version is its size and oshash fingerprint, both known from the scan: a file
//! replaced by another gets a new thumbnail, one merely touched keeps its own.

use crate::DbError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The SQL twin of `source_version`, over a `videos` row named `v`.
const VERSION_SQL: &str = "(v.file_size::text || ':' || coalesce(v.fingerprints->>'oshash', ''))";

/// The version of a video's content that an asset is made from.
pub fn source_version(file_size: i64, oshash: Option<&str>) -> String {
    format!("{file_size}:{}", oshash.unwrap_or_default())
}

/// A thumbnail in the asset store.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ThumbnailRow {
    pub video_id: i64,
    pub storage_key: String,
    pub content_type: String,
    pub byte_size: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub sha256: String,
    pub updated_at: DateTime<Utc>,
}

/// A thumbnail just written to the asset store.
#[derive(Clone, Copy, Debug)]
pub struct NewThumbnail<'a> {
    pub storage_key: &'a str,
    pub content_type: &'a str,
    pub byte_size: i64,
    pub width: i32,
    pub height: i32,
    pub sha256: &'a str,
}

/// What recording an outcome did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Saved; the key of the image it replaced, which may now be deleted, if any.
    Saved { replaced: Option<String> },
    /// The video changed (or went) while the thumbnail was made: nothing was saved, and
    /// the image just written is nobody's.
    Stale,
}

/// Present videos of a location whose thumbnail is missing or was made from another
/// version of the file. A video whose attempt failed is not listed again until it changes;
/// a peer's videos never are (the peer serves their thumbnails).
pub async fn videos_needing_thumbnails(
    pool: &PgPool,
    location_id: i64,
) -> Result<Vec<i64>, DbError> {
    let ids = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT v.id FROM videos v
         JOIN storage_locations l ON l.id = v.storage_location_id
         LEFT JOIN video_assets a ON a.video_id = v.id AND a.asset_type = 'thumbnail'
         WHERE v.storage_location_id = $1 AND v.removed_at IS NULL
           AND v.video_codec IS NOT NULL AND l.storage_type <> 'velour'
           AND (a.id IS NULL OR a.source_version <> {VERSION_SQL})
         ORDER BY v.id"
    )))
    .bind(location_id)
    .fetch_all(pool)
    .await?;
    Ok(ids)
}

/// Of `ids`, the videos no thumbnail job was queued for at their current version within the
/// last hour; they are marked queued now. The scan pushes jobs for these alone.
pub async fn claim_thumbnail_jobs(pool: &PgPool, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    let claimed = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO thumbnail_queue (video_id, source_version)
         SELECT v.id, {VERSION_SQL} FROM videos v WHERE v.id = ANY($1)
         ON CONFLICT (video_id) DO UPDATE SET
             source_version = EXCLUDED.source_version, queued_at = now()
         WHERE thumbnail_queue.source_version <> EXCLUDED.source_version
            OR thumbnail_queue.queued_at < now() - INTERVAL '1 hour'
         RETURNING video_id"
    )))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(claimed)
}

/// The job for the video is over (whatever its outcome): a later scan may queue another.
pub async fn release_thumbnail_job(pool: &PgPool, video_id: i64) -> Result<(), DbError> {
    sqlx::query("DELETE FROM thumbnail_queue WHERE video_id = $1")
        .bind(video_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The video's thumbnail, if one is ready.
pub async fn thumbnail(pool: &PgPool, video_id: i64) -> Result<Option<ThumbnailRow>, DbError> {
    let row = sqlx::query_as(
        "SELECT video_id, storage_key, content_type, byte_size, width, height, sha256,
                updated_at
         FROM video_assets
         WHERE video_id = $1 AND asset_type = 'thumbnail' AND state = 'ready'",
    )
    .bind(video_id)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// Whether the video's current thumbnail (made or failed) is of `version`: the job that
/// made it need not run again.
pub async fn thumbnail_is_current(
    pool: &PgPool,
    video_id: i64,
    version: &str,
) -> Result<bool, DbError> {
    let current = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM video_assets
                        WHERE video_id = $1 AND asset_type = 'thumbnail'
                          AND source_version = $2)",
    )
    .bind(video_id)
    .bind(version)
    .fetch_one(pool)
    .await?;
    Ok(current)
}

/// Records a thumbnail made from `version` of the video, if that is still its version.
pub async fn save_thumbnail(
    pool: &PgPool,
    video_id: i64,
    version: &str,
    new: NewThumbnail<'_>,
) -> Result<Recorded, DbError> {
    let mut tx = pool.begin().await?;
    let Some(old_key) = lock_current_version(&mut tx, video_id, version).await? else {
        return Ok(Recorded::Stale);
    };
    sqlx::query(
        "INSERT INTO video_assets (video_id, asset_type, state, source_version, storage_key,
                                   content_type, byte_size, width, height, sha256)
         VALUES ($1, 'thumbnail', 'ready', $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (video_id, asset_type) DO UPDATE SET
             state = 'ready', source_version = EXCLUDED.source_version,
             storage_key = EXCLUDED.storage_key, content_type = EXCLUDED.content_type,
             byte_size = EXCLUDED.byte_size, width = EXCLUDED.width,
             height = EXCLUDED.height, sha256 = EXCLUDED.sha256, error = NULL,
             updated_at = now()",
    )
    .bind(video_id)
    .bind(version)
    .bind(new.storage_key)
    .bind(new.content_type)
    .bind(new.byte_size)
    .bind(new.width)
    .bind(new.height)
    .bind(new.sha256)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Recorded::Saved { replaced: old_key.filter(|key| key != new.storage_key) })
}

/// Records that no thumbnail could be made from `version` of the video, and why.
pub async fn save_thumbnail_failure(
    pool: &PgPool,
    video_id: i64,
    version: &str,
    error: &str,
) -> Result<Recorded, DbError> {
    let mut tx = pool.begin().await?;
    let Some(old_key) = lock_current_version(&mut tx, video_id, version).await? else {
        return Ok(Recorded::Stale);
    };
    sqlx::query(
        "INSERT INTO video_assets (video_id, asset_type, state, source_version, error)
         VALUES ($1, 'thumbnail', 'failed', $2, $3)
         ON CONFLICT (video_id, asset_type) DO UPDATE SET
             state = 'failed', source_version = EXCLUDED.source_version, storage_key = NULL,
             content_type = NULL, byte_size = NULL, width = NULL, height = NULL,
             sha256 = NULL, error = EXCLUDED.error, updated_at = now()",
    )
    .bind(video_id)
    .bind(version)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Recorded::Saved { replaced: old_key })
}

/// Locks the video's row, so that asset writers of one video take turns, and returns the
/// key of its current thumbnail image (`Some(None)`: none), or `None` when the video is no
/// longer at `version` (replaced or removed while the image was made).
async fn lock_current_version(
    tx: &mut sqlx::PgConnection,
    video_id: i64,
    version: &str,
) -> Result<Option<Option<String>>, DbError> {
    let current: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_SQL} FROM videos v WHERE v.id = $1 AND v.removed_at IS NULL FOR UPDATE"
    )))
    .bind(video_id)
    .fetch_optional(&mut *tx)
    .await?;
    if current.as_deref() != Some(version) {
        return Ok(None);
    }
    let old_key: Option<Option<String>> = sqlx::query_scalar(
        "SELECT storage_key FROM video_assets WHERE video_id = $1 AND asset_type = 'thumbnail'",
    )
    .bind(video_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(Some(old_key.flatten()))
}

/// Why the video's last thumbnail attempt failed, if it did.
pub async fn thumbnail_failure(pool: &PgPool, video_id: i64) -> Result<Option<String>, DbError> {
    let error = sqlx::query_scalar(
        "SELECT error FROM video_assets
         WHERE video_id = $1 AND asset_type = 'thumbnail' AND state = 'failed'",
    )
    .bind(video_id)
    .fetch_optional(pool)
    .await?;
    Ok(error.flatten())
}
