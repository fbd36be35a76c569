//! Chores that keep the catalog from growing without end: pruning old tombstones, and
//! finding the images whose videos are gone.

use crate::DbError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The advisory lock held for the length of one prune, so that workers ticking at once
/// prune once.
pub const PRUNE_LOCK: i64 = 0x7665_6c6f_7572_7031; // "velourp1"

/// What `prune_tombstones` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Rows of videos removed before the bound (their tombstones were the rows).
    pub videos: u64,
    /// Tombstones of rows deleted outright before the bound (with those of `videos`).
    pub tombstones: u64,
    /// Works left without any video row.
    pub works: u64,
}

/// Removals of the last hour are never forgotten, whatever `before` says: a listing page
/// kept in a gateway's memory (a minute at most) carries a cursor from before it was kept,
/// and that cursor must stay past the horizon, or the peer holding it would be told to
/// read everything again at each scan.
const NEWEST_PRUNABLE: &str = "LEAST($1, now() - interval '1 hour')";

/// Forgets every removal before `before`: removed videos' rows, the tombstones of rows
/// deleted outright, and the works left with no video at all. The newest removal time
/// forgotten becomes the horizon (`tombstone_horizon`) in the same transaction, so a
/// listing of changes reads either every tombstone it asks for or the new horizon.
/// `None` when another worker is pruning right now.
pub async fn prune_tombstones(
    pool: &PgPool,
    before: DateTime<Utc>,
) -> Result<Option<Pruned>, DbError> {
    let mut tx = pool.begin().await?;
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        return Ok(None);
    }
    // The works first, in the order scans lock them (a work, then its videos): a scan
    // bringing a removed video back then waits for the prune, or the prune for it,
    // instead of each holding what the other needs.
    let works_touched: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT w.id FROM works w WHERE w.id IN (SELECT work_id FROM videos
                                                 WHERE removed_at < {NEWEST_PRUNABLE})
         ORDER BY {LOCK_ORDER} FOR UPDATE",
        LOCK_ORDER = crate::ingest::LOCK_ORDER
    )))
    .bind(before)
    .fetch_all(&mut *tx)
    .await?;
    // Each row deleted here leaves a tombstone in `deleted_videos` (a trigger keeps its
    // removal time), which the next statement prunes with the others.
    let videos = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM videos WHERE removed_at < {NEWEST_PRUNABLE} AND work_id = ANY($2)"
    )))
    .bind(before)
    .bind(&works_touched)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let (tombstones, newest): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH gone AS (DELETE FROM deleted_videos WHERE removed_at < {NEWEST_PRUNABLE}
                           RETURNING removed_at)
             SELECT count(*), max(removed_at) FROM gone"
        )))
        .bind(before)
        .fetch_one(&mut *tx)
        .await?;
    let works = crate::locations::delete_works_without_videos(&mut tx, &works_touched).await?;
    if let Some(newest) = newest {
        sqlx::query(
            "INSERT INTO tombstone_horizon (pruned_through) VALUES ($1)
             ON CONFLICT (singleton) DO UPDATE
             SET pruned_through = GREATEST(tombstone_horizon.pruned_through, $1)",
        )
        .bind(newest)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some(Pruned { videos, tombstones: tombstones as u64, works }))
}

/// The newest removal whose tombstone was pruned: changes since a cursor at or before it
/// can no longer be listed whole. `None` before the first prune.
pub async fn tombstone_horizon(pool: &PgPool) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(sqlx::query_scalar("SELECT pruned_through FROM tombstone_horizon")
        .fetch_optional(pool)
        .await?)
}

/// Claims, for `hold`, up to `limit` asset store keys whose video rows are gone, oldest
/// first, that no other worker holds. Delete the files, then `forget_orphaned_assets`; a
/// key whose file could not be deleted is offered again once the claim lapses, after the
/// others.
pub async fn claim_orphaned_assets(
    pool: &PgPool,
    limit: i64,
    hold: std::time::Duration,
) -> Result<Vec<String>, DbError> {
    Ok(sqlx::query_scalar(
        "UPDATE orphaned_assets SET claimed_until = now() + $2,
                                    orphaned_at = now()
         WHERE storage_key IN (
             SELECT storage_key FROM orphaned_assets
             WHERE claimed_until IS NULL OR claimed_until < now()
             ORDER BY orphaned_at, storage_key LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING storage_key",
    )
    .bind(limit)
    .bind(hold)
    .fetch_all(pool)
    .await?)
}

/// Forgets orphaned keys whose files are deleted.
pub async fn forget_orphaned_assets(pool: &PgPool, keys: &[String]) -> Result<(), DbError> {
    sqlx::query("DELETE FROM orphaned_assets WHERE storage_key = ANY($1)")
        .bind(keys)
        .execute(pool)
        .await?;
    Ok(())
}
