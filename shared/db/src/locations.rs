//! Storage locations: folders, buckets and peers that hold videos.

use crate::DbError;
use crate::secrets::SecretsCipher;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use velour_core::StorageType;

/// A location as the API may show it. Its secrets are not part of this row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LocationRow {
    pub id: i64,
    pub name: String,
    pub storage_type: String,
    pub configuration: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Seconds between scheduled rescans; `None` for a location scanned only on request.
    pub rescan_interval_secs: Option<i32>,
    /// When the scheduler queues the next scan.
    pub next_scan_at: Option<DateTime<Utc>>,
    /// Scans failed in a row (reset by one that succeeds).
    pub scan_failures: i32,
    /// Why scheduled rescans stopped (the peer refused our key), until the location is
    /// changed.
    pub rescans_halted_reason: Option<String>,
}

impl LocationRow {
    /// The parsed storage type. The column's CHECK constraint keeps it one of the three.
    pub fn kind(&self) -> Option<StorageType> {
        self.storage_type.parse().ok()
    }

    /// A string field of the public configuration.
    pub fn config_str(&self, field: &str) -> Option<&str> {
        self.configuration.0.get(field).and_then(Value::as_str)
    }
}

/// A location with the secrets the worker and stream service need to reach it, opened.
#[derive(Clone)]
pub struct LocationWithSecrets {
    pub location: LocationRow,
    pub secrets: Json<Value>,
}

/// A location as stored: its secrets still sealed.
#[derive(sqlx::FromRow)]
struct SealedLocation {
    #[sqlx(flatten)]
    location: LocationRow,
    secrets: Json<Value>,
}

impl LocationWithSecrets {
    /// A string field of the secrets.
    pub fn secret_str(&self, field: &str) -> Option<&str> {
        self.secrets.0.get(field).and_then(Value::as_str)
    }
}

// The secrets are never printed, not even in debug output.
impl std::fmt::Debug for LocationWithSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocationWithSecrets")
            .field("location", &self.location)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

const COLUMNS: &str = "id, name, storage_type, configuration, created_at, updated_at,
    rescan_interval_secs, next_scan_at, scan_failures, rescans_halted_reason";

/// A location to create, already validated by the caller.
pub struct NewLocation<'a> {
    pub name: &'a str,
    pub storage_type: StorageType,
    pub configuration: Value,
    /// Sealed with the cipher before they are stored.
    pub secrets: Value,
    /// Seconds between scheduled rescans (at least 60, as the column's CHECK wants).
    pub rescan_interval_secs: Option<i32>,
}

/// Creates a location, its secrets sealed; the first scheduled rescan is one interval
/// away.
pub async fn create_location(
    pool: &PgPool,
    cipher: &SecretsCipher,
    new: NewLocation<'_>,
) -> Result<LocationRow, DbError> {
    let sealed = cipher.seal(pool, &new.secrets).await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO storage_locations
             (name, storage_type, configuration, secrets, rescan_interval_secs, next_scan_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $5))
         RETURNING {COLUMNS}"
    )))
    .bind(new.name)
    .bind(new.storage_type.as_str())
    .bind(Json(&new.configuration))
    .bind(Json(&sealed))
    .bind(new.rescan_interval_secs)
    .fetch_one(pool)
    .await
    .map_err(|e| DbError::conflict_or(e, "a storage location with this name already exists"))
}

/// Changes to one location, already validated by the caller; `None` leaves a field as it
/// is.
#[derive(Default)]
pub struct LocationChanges<'a> {
    pub name: Option<&'a str>,
    /// The whole new configuration and the whole new secrets (sealed here).
    pub configuration: Option<(Value, Value)>,
    /// With `Some`, sets (or with `Some(None)`, clears) the rescan interval.
    pub rescan_interval_secs: Option<Option<i32>>,
    /// The `updated_at` of the row a new configuration was merged from: the update is
    /// refused with `changed-concurrently` if the row changed since, so that of two
    /// changes merged from the same row, the second cannot silently undo the first.
    pub based_on: Option<chrono::DateTime<chrono::Utc>>,
}

/// Applies `changes` to location `id`. Any update, even one that changes nothing, is a
/// change to the location: failures are forgotten, halted rescans resume, and the next
/// scheduled scan is one interval from now.
///
/// A new configuration may point at another folder, bucket or peer, so the peer's sync
/// cursor is forgotten (the next scan reads everything), and it is refused with
/// `scan-active` while a scan of the location is queued or running: that scan would
/// finish with what it read from the old one.
pub async fn update_location(
    pool: &PgPool,
    cipher: &SecretsCipher,
    id: i64,
    changes: LocationChanges<'_>,
) -> Result<LocationRow, DbError> {
    let (configuration, sealed) = match &changes.configuration {
        Some((shown, secrets)) => {
            (Some(Json(shown)), Some(Json(cipher.seal(pool, secrets).await?)))
        }
        None => (None, None),
    };
    let interval = changes.rescan_interval_secs;

    let mut tx = pool.begin().await?;
    // The row lock keeps a scan from being queued between the check and the update.
    let updated_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM storage_locations WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(DbError::NotFound)?;
    if changes.based_on.is_some_and(|based_on| based_on != updated_at) {
        return Err(DbError::Refused {
            code: "changed-concurrently",
            message: "the location changed while this change was being made; read it again \
                      and send the change once more"
                .to_owned(),
        });
    }
    if configuration.is_some() {
        refuse_while_scanned(&mut tx, id, "change its configuration").await?;
    }
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE storage_locations
         SET name = coalesce($2, name),
             configuration = coalesce($3, configuration),
             secrets = coalesce($4, secrets),
             sync_cursor = CASE WHEN $3 IS NULL THEN sync_cursor END,
             rescan_interval_secs = CASE WHEN $6 THEN $5 ELSE rescan_interval_secs END,
             next_scan_at = now() + make_interval(
                 secs => CASE WHEN $6 THEN $5 ELSE rescan_interval_secs END),
             scan_failures = 0,
             rescans_halted_reason = NULL,
             updated_at = now()
         WHERE id = $1
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(changes.name)
    .bind(configuration)
    .bind(sealed)
    .bind(interval.flatten())
    .bind(interval.is_some())
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| DbError::conflict_or(e, "a storage location with this name already exists"))?;
    tx.commit().await?;
    Ok(row)
}

pub async fn list_locations(pool: &PgPool) -> Result<Vec<LocationRow>, DbError> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM storage_locations ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

pub async fn get_location(pool: &PgPool, id: i64) -> Result<LocationRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM storage_locations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)
}

/// A location with its secrets opened: the one place they are read.
pub async fn get_location_with_secrets(
    pool: &PgPool,
    cipher: &SecretsCipher,
    id: i64,
) -> Result<LocationWithSecrets, DbError> {
    let sealed: SealedLocation = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, secrets FROM storage_locations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)?;
    let secrets = cipher.open(pool, sealed.secrets.0).await?;
    Ok(LocationWithSecrets { location: sealed.location, secrets: Json(secrets) })
}

/// Replaces the key we hold for a peer location (after rotating it on the peer).
pub async fn set_peer_api_key(
    pool: &PgPool,
    cipher: &SecretsCipher,
    id: i64,
    api_key: &str,
) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    let stored: Option<Json<Value>> = sqlx::query_scalar(
        "SELECT secrets FROM storage_locations WHERE id = $1 AND storage_type = 'velour'
         FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(Json(stored)) = stored else {
        return Err(DbError::NotFound);
    };
    let mut secrets = cipher.open(pool, stored).await?;
    match secrets.as_object_mut() {
        Some(fields) => {
            fields.insert("api_key".to_owned(), Value::String(api_key.to_owned()));
        }
        None => secrets = serde_json::json!({ "api_key": api_key }),
    }
    let sealed = cipher.seal(pool, &secrets).await?;
    sqlx::query("UPDATE storage_locations SET secrets = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(Json(&sealed))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The cursor a peer location's last complete scan ended with, if any.
pub async fn sync_cursor(pool: &PgPool, id: i64) -> Result<Option<String>, DbError> {
    let cursor: Option<Option<String>> =
        sqlx::query_scalar("SELECT sync_cursor FROM storage_locations WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    cursor.ok_or(DbError::NotFound)
}

/// Stores (or with `None`, forgets) a peer location's sync cursor. Call it only after a
/// scan that read everything up to that cursor.
pub async fn set_sync_cursor(pool: &PgPool, id: i64, cursor: Option<&str>) -> Result<(), DbError> {
    sqlx::query("UPDATE storage_locations SET sync_cursor = $2 WHERE id = $1")
        .bind(id)
        .bind(cursor)
        .execute(pool)
        .await?;
    Ok(())
}

/// What deleting a storage location removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovedVideos {
    pub videos_removed: u64,
    /// Works left without any video (a work another location still holds stays).
    pub works_removed: u64,
}

/// Deletes the videos of location `location_id` and the works that are left without any,
/// in the caller's transaction; peers learn of the videos through their tombstones. The
/// videos' images are left to the workers' sweep (`maintenance::orphaned_assets`).
pub(crate) async fn remove_videos_of(
    tx: &mut sqlx::PgConnection,
    location_id: i64,
) -> Result<RemovedVideos, DbError> {
    let work_ids: Vec<i64> =
        sqlx::query_scalar("DELETE FROM videos WHERE storage_location_id = $1 RETURNING work_id")
            .bind(location_id)
            .fetch_all(&mut *tx)
            .await?;
    let works_removed = delete_works_without_videos(tx, &work_ids).await?;
    Ok(RemovedVideos { videos_removed: work_ids.len() as u64, works_removed })
}

/// Deletes those of `work_ids` that have no video row left, in the caller's transaction,
/// returning how many went.
pub(crate) async fn delete_works_without_videos(
    tx: &mut sqlx::PgConnection,
    work_ids: &[i64],
) -> Result<u64, DbError> {
    // `present_videos = 0` is checked again on the row as it stands once its lock is ours:
    // a scan elsewhere that added a video to the work meanwhile (and so counted it on the
    // row) keeps the work, which `NOT EXISTS`, reading from before that scan committed,
    // would not see.
    Ok(sqlx::query(
        "DELETE FROM works w WHERE w.id = ANY($1) AND w.present_videos = 0
         AND NOT EXISTS (SELECT 1 FROM videos v WHERE v.work_id = w.id)",
    )
    .bind(work_ids)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

/// Deletes location `id` with its videos, its scan history and the works left without
/// any video. Refused with `scan-active` while a scan of it is queued or running (the
/// scan would write into a location that is gone); a federation connection reading its
/// peer through it is kept, without a location.
pub async fn delete_location(pool: &PgPool, id: i64) -> Result<RemovedVideos, DbError> {
    let mut tx = pool.begin().await?;
    // Connections first, as deleting a connection takes them (then its location): the
    // location's deletion updates the connections that read through it.
    sqlx::query("SELECT id FROM federation_connections WHERE storage_location_id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let found: Option<i64> =
        sqlx::query_scalar("SELECT id FROM storage_locations WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    found.ok_or(DbError::NotFound)?;
    refuse_while_scanned(&mut tx, id, "delete it").await?;
    let removed = remove_videos_of(&mut tx, id).await?;
    sqlx::query("DELETE FROM storage_locations WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(removed)
}

/// `scan-active` while a scan of location `id` is queued or running: what the caller was
/// about to do (`what`, "delete it") must wait for it to end.
async fn refuse_while_scanned(
    tx: &mut sqlx::PgConnection,
    id: i64,
    what: &str,
) -> Result<(), DbError> {
    let scanning: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM scan_runs
                        WHERE storage_location_id = $1 AND state IN ('queued', 'running'))",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if scanning {
        return Err(DbError::Refused {
            code: "scan-active",
            message: format!(
                "a scan of this location is queued or running; {what} once the scan has ended"
            ),
        });
    }
    Ok(())
}
