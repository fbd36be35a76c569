//! Scan runs: one row per scan of a location, from queued to succeeded or failed.

use crate::DbError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ScanRunRow {
    pub id: i64,
    pub storage_location_id: i64,
    pub state: String,
    pub works_seen: i32,
    pub works_added: i32,
    pub works_updated: i32,
    pub works_removed: i32,
    pub videos_seen: i32,
    pub videos_added: i32,
    pub videos_updated: i32,
    pub videos_removed: i32,
    pub videos_skipped: i64,
    pub error: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a scan counted, written when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanCounts {
    pub works_seen: i32,
    pub works_added: i32,
    pub works_updated: i32,
    pub works_removed: i32,
    pub videos_seen: i32,
    pub videos_added: i32,
    pub videos_updated: i32,
    pub videos_removed: i32,
}

const SELECT_RUN: &str = "
    SELECT r.id, r.storage_location_id, r.state, r.works_seen, r.works_added,
           r.works_updated, r.works_removed, r.videos_seen, r.videos_added,
           r.videos_updated, r.videos_removed,
           (SELECT count(*) FROM scan_run_skips s WHERE s.scan_run_id = r.id) AS videos_skipped,
           r.error, r.queued_at, r.started_at, r.finished_at
    FROM scan_runs r";

/// Queues a scan of a location, or joins the one already queued or running there.
/// Returns the run and whether it is new (and so needs a job pushed).
pub async fn enqueue_scan_run(
    pool: &PgPool,
    location_id: i64,
) -> Result<(ScanRunRow, bool), DbError> {
    // The partial unique index allows one active run per location; ON CONFLICT makes the
    // check and the insert one atomic step even with many gateways.
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO scan_runs (storage_location_id) VALUES ($1)
         ON CONFLICT (storage_location_id) WHERE state IN ('queued', 'running') DO NOTHING
         RETURNING id",
    )
    .bind(location_id)
    .fetch_optional(pool)
    .await
    .map_err(|err| match &err {
        // The location is gone (perhaps deleted while this waited for its row).
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => DbError::NotFound,
        _ => DbError::Sqlx(err),
    })?;

    if let Some(id) = inserted {
        return Ok((get_scan_run(pool, id).await?, true));
    }
    let active: Option<ScanRunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_RUN} WHERE r.storage_location_id = $1 AND r.state IN ('queued', 'running')"
    )))
    .bind(location_id)
    .fetch_optional(pool)
    .await?;
    match active {
        Some(run) => Ok((run, false)),
        // The active run finished between our two statements: queue a fresh one.
        None => Box::pin(enqueue_scan_run(pool, location_id)).await,
    }
}

pub async fn get_scan_run(pool: &PgPool, id: i64) -> Result<ScanRunRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_RUN} WHERE r.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(DbError::NotFound)
}

/// Marks a run as running. A run already running is one whose worker died and whose job
/// was handed to another worker: it is taken over. A finished run is not restarted.
pub async fn start_scan_run(pool: &PgPool, id: i64) -> Result<bool, DbError> {
    let started = sqlx::query(
        "UPDATE scan_runs SET state = 'running', started_at = now()
         WHERE id = $1 AND state IN ('queued', 'running')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(started.rows_affected() == 1)
}

/// Ends a run: succeeded with its counts, or failed with a message people can read.
pub async fn finish_scan_run(
    pool: &PgPool,
    id: i64,
    counts: ScanCounts,
    error: Option<&str>,
) -> Result<(), DbError> {
    let state = if error.is_some() { "failed" } else { "succeeded" };
    sqlx::query(
        "UPDATE scan_runs SET state = $2, error = $3, finished_at = now(),
            works_seen = $4, works_added = $5, works_updated = $6, works_removed = $7,
            videos_seen = $8, videos_added = $9, videos_updated = $10, videos_removed = $11
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(error)
    .bind(counts.works_seen)
    .bind(counts.works_added)
    .bind(counts.works_updated)
    .bind(counts.works_removed)
    .bind(counts.videos_seen)
    .bind(counts.videos_added)
    .bind(counts.videos_updated)
    .bind(counts.videos_removed)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a file the scan did not index, and why.
pub async fn add_scan_skip(
    pool: &PgPool,
    scan_run_id: i64,
    path: &str,
    reason: &str,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO scan_run_skips (scan_run_id, path, reason) VALUES ($1, $2, $3)")
        .bind(scan_run_id)
        .bind(path)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ScanSkipRow {
    pub path: String,
    pub reason: String,
}

/// The files a run skipped, in the order it met them (at most `limit`).
pub async fn list_scan_skips(
    pool: &PgPool,
    scan_run_id: i64,
    limit: i64,
) -> Result<Vec<ScanSkipRow>, DbError> {
    let rows = sqlx::query_as(
        "SELECT path, reason FROM scan_run_skips WHERE scan_run_id = $1 ORDER BY id LIMIT $2",
    )
    .bind(scan_run_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
