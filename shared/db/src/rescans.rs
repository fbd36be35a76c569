//! Scheduled rescans: which locations are due, who queues them, and when a failed one is
//! tried again.
//!
//! The schedule lives in the catalog (`storage_locations.next_scan_at`) rather than in a
//! timer of each worker: claiming a due location moves its next scan on in the same
//! statement, and rows another worker is claiming are skipped, so any number of workers
//! queue each due scan once.

use crate::DbError;
use sqlx::PgPool;

/// The shortest interval between scheduled rescans, in seconds (the column's CHECK says
/// the same): a scan lists a whole folder, bucket or peer.
pub const MIN_RESCAN_INTERVAL_SECS: i32 = 60;

/// The longest interval, in seconds (a year): anything longer is a typo.
pub const MAX_RESCAN_INTERVAL_SECS: i32 = 365 * 24 * 3600;

/// The wait before retrying a failed scan; it doubles with each failure in a row.
pub const RETRY_BASE_SECS: i32 = 60;

/// The longest wait between retries of a location that keeps failing (6 hours), so that
/// a peer back from a long outage is seen again the same day even when its interval is
/// longer.
pub const RETRY_CAP_SECS: i32 = 6 * 3600;

/// How a scan of a location ended, for its schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanOutcome<'a> {
    Succeeded,
    /// Failed in a way that may pass (a peer down, a folder unmounted): retried with
    /// backoff.
    Failed,
    /// The peer refused our key (401/403): trying again cannot help until someone changes
    /// the location, so scheduled rescans stop with this reason.
    Refused(&'a str),
}

/// Claims up to `limit` locations whose scheduled rescan is due, moving each one's next
/// scan an interval on, and returns their ids. Rows claimed by a concurrent caller are
/// skipped rather than waited for, so two callers never get the same location.
///
/// Peers that may not be scanned are left alone rather than claimed to fail: those whose
/// federation connection is not active, and every peer while `federation_enabled` is
/// false. Their next scan stays due, so the first look after the connection is activated
/// (or federation turned on) scans them.
pub async fn claim_due_rescans(
    pool: &PgPool,
    limit: i64,
    federation_enabled: bool,
) -> Result<Vec<i64>, DbError> {
    let ids = sqlx::query_scalar(
        "WITH due AS (
             SELECT id FROM storage_locations l
             WHERE next_scan_at <= now()
               AND rescan_interval_secs IS NOT NULL
               AND rescans_halted_reason IS NULL
               AND ($2 OR storage_type <> 'velour')
               AND NOT EXISTS (
                   SELECT 1 FROM federation_connections c
                   WHERE c.storage_location_id = l.id AND c.status <> 'active')
             ORDER BY next_scan_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE storage_locations l
         SET next_scan_at = now() + make_interval(secs => l.rescan_interval_secs)
         FROM due WHERE l.id = due.id
         RETURNING l.id",
    )
    .bind(limit)
    .bind(federation_enabled)
    .fetch_all(pool)
    .await?;
    Ok(ids)
}

/// Updates a location's schedule after one of its scans ended (requested or scheduled).
/// A success resets the failure count (the next scan stays where the claim put it); a
/// failure brings the next scan to `RETRY_BASE_SECS · 2^(failures − 1)` from now, at most
/// `RETRY_CAP_SECS`; a refusal halts scheduled rescans.
pub async fn record_scan_outcome(
    pool: &PgPool,
    location_id: i64,
    outcome: ScanOutcome<'_>,
) -> Result<(), DbError> {
    // Every statement takes the location as $1.
    let query = match outcome {
        ScanOutcome::Succeeded => {
            sqlx::query("UPDATE storage_locations SET scan_failures = 0 WHERE id = $1")
                .bind(location_id)
        }
        // `scan_failures` on the right is the count before this failure.
        ScanOutcome::Failed => sqlx::query(
            "UPDATE storage_locations
             SET scan_failures = scan_failures + 1,
                 next_scan_at = CASE WHEN rescan_interval_secs IS NULL THEN NULL
                     ELSE now() + make_interval(secs => least(
                         $2 * power(2, least(scan_failures, 30))::double precision, $3))
                 END
             WHERE id = $1",
        )
        .bind(location_id)
        .bind(f64::from(RETRY_BASE_SECS))
        .bind(f64::from(RETRY_CAP_SECS)),
        ScanOutcome::Refused(reason) => sqlx::query(
            "UPDATE storage_locations
             SET scan_failures = scan_failures + 1, rescans_halted_reason = $2
             WHERE id = $1",
        )
        .bind(location_id)
        .bind(reason),
    };
    query.execute(pool).await?;
    Ok(())
}
