//! One scan of one storage location, from its queued run to its recorded end.

use crate::{WorkerState, bucket, local, peer};
use futures_util::FutureExt;
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tracing::{debug, error, info, instrument, warn};
use velour_core::StorageType;
use velour_db::DbError;
use velour_db::ingest::{Sweep, VideoChange, WorkChange};
use velour_db::locations::get_location_with_secrets;
use velour_db::scans::{self, ScanCounts};
use velour_jobs::ScanLocation;
use velour_peer::PeerError;

/// Why a scan ended without counts.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The run is already finished or gone (a duplicate or stale job): nothing was done.
    #[error("scan run {0} is already finished or no longer exists")]
    RunNotActive(i64),
    /// Another worker held the location's lock for the whole wait while this run was
    /// running (a duplicate delivery of a job still being worked on). The run is untouched;
    /// trying again later either finds it finished or takes it over.
    #[error("another worker is still scanning this location")]
    LocationBusy,
    /// The scan failed, and the run was recorded as failed with this message.
    #[error(transparent)]
    Failed(#[from] ScanFailure),
    /// The database could not be written to start or to finish the run, so the run is
    /// left queued or running and the scan may be tried again.
    #[error("the scan run could not be recorded: {0}")]
    Unrecorded(#[source] DbError),
}

impl ScanError {
    /// Whether the job should go back to the queue: only when the run was left unfinished,
    /// so that a retry continues it and never reruns a run recorded as failed.
    pub fn should_retry(&self) -> bool {
        matches!(self, Self::LocationBusy | Self::Unrecorded(_))
    }
}

/// Why a scan failed. The message is what people see in the run's `error`.
#[derive(Debug, thiserror::Error)]
pub enum ScanFailure {
    #[error("the storage location no longer exists")]
    LocationGone,
    #[error("another scan of this location was still running after {} s", .0.as_secs())]
    LocationBusy(Duration),
    #[error("scanning {0} locations is not supported yet")]
    Unsupported(StorageType),
    #[error("the location is misconfigured: {0}")]
    Misconfigured(String),
    #[error("cannot read the folder {path}: {reason}")]
    FolderUnreadable { path: String, reason: String },
    #[error("could not run ffprobe ({program:?}): {reason}")]
    ProbeTool { program: String, reason: String },
    #[error("the bucket could not be read: {0}")]
    Bucket(#[from] velour_storage::s3::S3Error),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the peer's listing is inconsistent: {0}")]
    PeerListing(String),
    #[error("federation is turned off on this instance (FEDERATION_ENABLED)")]
    FederationDisabled,
    #[error("the peer's federation connection is {0}; activate it to scan")]
    ConnectionInactive(velour_core::ConnectionStatus),
    #[error("the catalog database failed: {0}")]
    Database(#[from] DbError),
    #[error("the scan stopped on an internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for ScanFailure {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(DbError::Sqlx(err))
    }
}

/// How long a scan waits for another scan of the same location to let go of it. Scans of
/// one location are serialized by a lock; the usual wait is the moment between one run
/// being recorded and its lock being released.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(60);
const LOCK_POLL: Duration = Duration::from_secs(1);

/// The first key of the two-key advisory lock space, so our locks cannot collide with
/// single-key locks (sqlx takes one around migrations). "VLRS" in ASCII.
pub(crate) const SCAN_LOCK_CLASS: i32 = 0x564c_5253;

/// Runs one scan: takes the location's lock, marks the run running, scans, and records the
/// counts or the failure. A run that is already finished is left alone.
#[instrument(
    skip_all,
    fields(scan_run.id = job.scan_run_id, location.id = job.storage_location_id)
)]
pub async fn scan_location(
    state: &WorkerState,
    job: ScanLocation,
) -> Result<ScanCounts, ScanError> {
    let pool = &state.pool;
    let run_id = job.scan_run_id;

    let Some(lock) = LocationLock::acquire(pool, job.storage_location_id, state.lock_wait)
        .await
        .map_err(ScanError::Unrecorded)?
    else {
        return give_up_on_busy_location(state, run_id).await;
    };

    let started = scans::start_scan_run(pool, run_id).await;
    if !matches!(started, Ok(true)) {
        lock.release().await;
        return match started {
            Err(err) => Err(ScanError::Unrecorded(err)),
            _ => Err(ScanError::RunNotActive(run_id)),
        };
    }
    info!("scan started");

    // A panic is caught so that the run is still recorded as failed instead of being left
    // running with nobody working on it.
    let mut tally = Tally::default();
    let outcome = AssertUnwindSafe(scan_by_storage_type(state, &job, &mut tally))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(ScanFailure::Internal(panic_message(panic.as_ref()))));
    // A location deleted while it was scanned (its federation connection deleted, say)
    // fails the scan on whatever the scan wrote next: say what happened instead.
    let outcome = match outcome {
        Err(failure)
            if !matches!(failure, ScanFailure::LocationGone)
                && location_deleted(pool, job.storage_location_id).await =>
        {
            debug!(error = %failure, "the scan failed after its location was deleted");
            Err(ScanFailure::LocationGone)
        }
        outcome => outcome,
    };

    let counts = tally.counts();
    let message = outcome.as_ref().err().map(ToString::to_string);
    // The schedule is moved before the run is marked finished: whoever sees the run end
    // sees its consequence for rescans too.
    record_schedule(state, job.storage_location_id, &outcome).await;
    let recorded = scans::finish_scan_run(pool, run_id, counts, message.as_deref()).await;
    lock.release().await;
    // The scan wrote a delta of the listed-works total per statement (folded every
    // `FOLD_DELTAS_EVERY` videos added along the way); fold the rest into one.
    if let Err(err) = velour_db::catalog::compact_listed_works(pool).await {
        warn!(error = %err, "could not compact the listed-works total");
    }

    if let Err(err) = recorded {
        error!(error = %err, scan.error = message, "could not record the end of the scan");
        return Err(ScanError::Unrecorded(err));
    }
    // Also after a failed scan: the videos it did index deserve their thumbnails.
    queue_thumbnails(state, job.storage_location_id).await;
    match outcome {
        Ok(()) => {
            info!(
                works_seen = counts.works_seen,
                works_added = counts.works_added,
                works_updated = counts.works_updated,
                works_removed = counts.works_removed,
                videos_seen = counts.videos_seen,
                videos_added = counts.videos_added,
                videos_updated = counts.videos_updated,
                videos_removed = counts.videos_removed,
                "scan finished"
            );
            Ok(counts)
        }
        Err(ScanFailure::LocationGone) => {
            info!("scan ended: the location was deleted");
            Err(ScanError::Failed(ScanFailure::LocationGone))
        }
        Err(failure) => {
            warn!(error = %failure, videos_seen = counts.videos_seen, "scan failed");
            Err(ScanError::Failed(failure))
        }
    }
}

/// Whether location `id` is known to be gone (a failed look says no).
async fn location_deleted(pool: &PgPool, id: i64) -> bool {
    let exists =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM storage_locations WHERE id = $1)")
            .bind(id)
            .fetch_one(pool)
            .await;
    matches!(exists, Ok(false))
}

/// Moves the location's scheduled rescans after this scan: a failure brings a retry with
/// backoff, a peer that refused our key stops them. Losing this write only costs the
/// schedule one interval, so it is logged.
async fn record_schedule(state: &WorkerState, location_id: i64, outcome: &Result<(), ScanFailure>) {
    use velour_db::rescans::{ScanOutcome, record_scan_outcome};
    let refused;
    let schedule = match outcome {
        Ok(()) => ScanOutcome::Succeeded,
        Err(failure @ ScanFailure::Peer(PeerError::Unauthorized { .. })) => {
            refused = failure.to_string();
            ScanOutcome::Refused(&refused)
        }
        Err(_) => ScanOutcome::Failed,
    };
    if let Err(err) = record_scan_outcome(&state.pool, location_id, schedule).await {
        warn!(error = %err, "could not update the location's rescan schedule");
    }
}

/// Queues a thumbnail job for each video of the location that lacks a current one. A
/// failure costs only thumbnails (the next scan queues them again), so it is logged.
async fn queue_thumbnails(state: &WorkerState, location_id: i64) {
    let Some(queue) = &state.thumbnail_queue else {
        return;
    };
    let needing = velour_db::assets::videos_needing_thumbnails(&state.pool, location_id).await;
    let claimed = match needing {
        Ok(ids) => velour_db::assets::claim_thumbnail_jobs(&state.pool, &ids).await,
        Err(err) => Err(err),
    };
    let ids = match claimed {
        Ok(ids) => ids,
        Err(err) => {
            warn!(error = %err, "could not list the videos that need thumbnails");
            return;
        }
    };
    let mut queue = queue.clone();
    for &video_id in &ids {
        let job = velour_jobs::GenerateThumbnail { video_id };
        if let Err(err) = velour_jobs::push_thumbnail(&mut queue, job).await {
            warn!(error = %err, "could not queue thumbnail jobs");
            return;
        }
    }
    if !ids.is_empty() {
        info!(videos = ids.len(), "thumbnails queued");
    }
}

async fn scan_by_storage_type(
    state: &WorkerState,
    job: &ScanLocation,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    let location =
        match get_location_with_secrets(&state.pool, &state.secrets, job.storage_location_id).await
        {
            Ok(location) => location,
            Err(DbError::NotFound) => return Err(ScanFailure::LocationGone),
            Err(err) => return Err(err.into()),
        };
    let scan = ScanContext::new(state, job.scan_run_id, location.location.id);

    match location.location.kind() {
        Some(StorageType::Local) => local::scan_folder(&scan, &location, tally).await,
        Some(StorageType::Velour) => peer::scan_peer(&scan, &location, tally).await,
        Some(StorageType::S3) => bucket::scan_bucket(&scan, &location, tally).await,
        None => Err(ScanFailure::Misconfigured(format!(
            "unknown storage type {:?}",
            location.location.storage_type
        ))),
    }
}

/// The lock was not released in time. A queued run cannot rightly wait that long (the
/// unique index allows one active run per location, so the holder's run is over): it is
/// failed. A running run is being worked on by the holder: it is left to it.
async fn give_up_on_busy_location(
    state: &WorkerState,
    run_id: i64,
) -> Result<ScanCounts, ScanError> {
    let run = match scans::get_scan_run(&state.pool, run_id).await {
        Ok(run) => run,
        Err(DbError::NotFound) => return Err(ScanError::RunNotActive(run_id)),
        Err(err) => return Err(ScanError::Unrecorded(err)),
    };
    match run.state.as_str() {
        "queued" => {
            let failure = ScanFailure::LocationBusy(state.lock_wait);
            let message = failure.to_string();
            scans::finish_scan_run(&state.pool, run_id, ScanCounts::default(), Some(&message))
                .await
                .map_err(ScanError::Unrecorded)?;
            warn!(error = %failure, "scan failed");
            Err(ScanError::Failed(failure))
        }
        "running" => Err(ScanError::LocationBusy),
        _ => Err(ScanError::RunNotActive(run_id)),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// What a storage-specific scanner needs to know about the scan it is running.
pub(crate) struct ScanContext<'a> {
    pub state: &'a WorkerState,
    pub run_id: i64,
    pub location_id: i64,
    /// Statements of this scan that may have written a delta of the listed-works total:
    /// a video added (or brought back) by itself, or a peer's page.
    listing_writes: AtomicU32,
}

/// Listing writes between two foldings of the listed-works deltas: a first scan of a large
/// folder would otherwise leave one delta row per new file until it ends (and one of a
/// peer, one or two per page), and every read of the total (each `/instance`, each
/// listing) would sum them all.
pub(crate) const FOLD_DELTAS_EVERY: u32 = 500;

impl<'a> ScanContext<'a> {
    pub fn new(state: &'a WorkerState, run_id: i64, location_id: i64) -> Self {
        Self { state, run_id, location_id, listing_writes: AtomicU32::new(0) }
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Counts a committed statement that may have written a listed-works delta, and folds
    /// the deltas every `FOLD_DELTAS_EVERY` of them. A failed folding only leaves more rows
    /// to sum.
    pub async fn wrote_listing(&self) {
        let writes = self.listing_writes.fetch_add(1, Ordering::Relaxed) + 1;
        if writes.is_multiple_of(FOLD_DELTAS_EVERY)
            && let Err(err) = velour_db::catalog::compact_listed_works(self.pool()).await
        {
            warn!(error = %err, "could not fold the listed-works total");
        }
    }

    /// Records a file (or peer video) the scan looked at and did not index.
    pub async fn skip(&self, path: &str, reason: &str) -> Result<(), DbError> {
        debug!(path, reason, "skipped");
        scans::add_scan_skip(self.pool(), self.run_id, path, reason).await
    }
}

/// A session-level advisory lock on one location, held on its own connection.
///
/// The connection is closed rather than returned to the pool when it is dropped: if the
/// scan is cancelled or panics, closing the session is what releases the lock, and a
/// pooled connection would otherwise keep it for as long as the pool lives.
struct LocationLock {
    conn: PoolConnection<sqlx::Postgres>,
    key: i32,
}

impl LocationLock {
    /// Takes the lock, waiting up to `wait` for another holder; `None` if it stayed taken.
    async fn acquire(
        pool: &PgPool,
        location_id: i64,
        wait: Duration,
    ) -> Result<Option<Self>, DbError> {
        // Ids beyond 2^31 share keys with smaller ones 2^32 apart; such a pair of
        // locations would only be scanned one after the other.
        let key = location_id as i32;
        let mut conn = pool.acquire().await?;
        conn.close_on_drop();

        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(SCAN_LOCK_CLASS)
                .bind(key)
                .fetch_one(&mut *conn)
                .await?;
            if taken {
                return Ok(Some(Self { conn, key }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            debug!("another scan holds this location; waiting");
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(SCAN_LOCK_CLASS)
            .bind(self.key)
            .execute(&mut *self.conn)
            .await;
        if let Err(err) = unlocked {
            // Closing the connection (on drop, below) ends the session and its locks.
            warn!(error = %err, "could not release the scan lock; closing its connection");
        }
    }
}

/// What a scan saw and changed, turned into the run's counts at its end (failed runs
/// keep what they counted before failing).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    videos_seen: HashSet<i64>,
    videos_added: usize,
    videos_updated: usize,
    works_seen: HashSet<i64>,
    works_added: HashSet<i64>,
    works_updated: HashSet<i64>,
    sweep: Sweep,
}

impl Tally {
    /// A work that has a present video seen by this scan.
    pub fn work(&mut self, id: i64, change: WorkChange) {
        self.works_seen.insert(id);
        match change {
            WorkChange::Created => {
                self.works_added.insert(id);
            }
            WorkChange::Filled => {
                self.works_updated.insert(id);
            }
            WorkChange::Unchanged => {}
        }
    }

    pub fn video(&mut self, id: i64, work_id: i64, change: VideoChange) {
        self.videos_seen.insert(id);
        self.works_seen.insert(work_id);
        match change {
            VideoChange::Created | VideoChange::Restored => self.videos_added += 1,
            VideoChange::Updated => self.videos_updated += 1,
            VideoChange::Unchanged => {}
        }
    }

    /// Adds what another tally (one peer page, counted apart until it was committed) saw.
    pub fn merge(&mut self, other: Tally) {
        self.videos_seen.extend(other.videos_seen);
        self.videos_added += other.videos_added;
        self.videos_updated += other.videos_updated;
        self.works_seen.extend(other.works_seen);
        self.works_added.extend(other.works_added);
        self.works_updated.extend(other.works_updated);
        self.removed(other.sweep);
    }

    /// Adds removals reported by the peer (tombstones) to what the scan removed.
    pub fn removed(&mut self, sweep: Sweep) {
        self.sweep.videos_removed += sweep.videos_removed;
        self.sweep.works_removed += sweep.works_removed;
    }

    /// Forgets which videos were seen (the counts stay): what a listing of changes saw
    /// must not keep a video from the sweep of the full listing read after it.
    pub fn forget_seen(&mut self) {
        self.videos_seen.clear();
        self.works_seen.clear();
    }

    pub fn seen_video_ids(&self) -> Vec<i64> {
        self.videos_seen.iter().copied().collect()
    }

    /// Adds what the final sweep of a complete scan removed.
    pub fn swept(&mut self, sweep: Sweep) {
        self.removed(sweep);
    }

    pub fn counts(&self) -> ScanCounts {
        // A work created by this scan and filled later in it counts once, as added.
        let updated = self.works_updated.difference(&self.works_added).count();
        ScanCounts {
            works_seen: saturate(self.works_seen.len()),
            works_added: saturate(self.works_added.len()),
            works_updated: saturate(updated),
            works_removed: saturate(self.sweep.works_removed),
            videos_seen: saturate(self.videos_seen.len()),
            videos_added: saturate(self.videos_added),
            videos_updated: saturate(self.videos_updated),
            videos_removed: saturate(self.sweep.videos_removed),
        }
    }
}

fn saturate<N: TryInto<i32>>(n: N) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_created_and_filled_in_one_scan_counts_as_added() {
        let mut tally = Tally::default();
        tally.work(1, WorkChange::Created);
        tally.work(1, WorkChange::Filled);
        tally.work(2, WorkChange::Filled);
        tally.video(10, 1, VideoChange::Created);
        tally.video(11, 2, VideoChange::Restored);
        tally.video(12, 2, VideoChange::Unchanged);
        let counts = tally.counts();
        assert_eq!((counts.works_seen, counts.works_added, counts.works_updated), (2, 1, 1));
        assert_eq!((counts.videos_seen, counts.videos_added, counts.videos_updated), (3, 2, 0));
    }

    #[test]
    fn only_runs_left_unfinished_are_retried() {
        assert!(ScanError::LocationBusy.should_retry());
        assert!(ScanError::Unrecorded(DbError::NotFound).should_retry());
        assert!(!ScanError::RunNotActive(1).should_retry());
        assert!(!ScanError::Failed(ScanFailure::LocationGone).should_retry());
    }
}
