//! The rescan scheduler: every worker looks for locations whose scheduled rescan is due
//! and queues their scans.
//!
//! The tick is a plain tokio interval rather than apalis-cron: which locations are due
//! and who queues them is settled in the catalog (`velour_db::rescans`), with each
//! location's own interval, so a cron schedule per process would add a crate and decide
//! nothing. Every worker ticks; the claim makes sure each due scan is queued once.
//!
//! The same tick runs the catalog's chores: deleting the images of videos that are gone,
//! and (hourly) pruning tombstones older than `VELOUR_TOMBSTONE_RETENTION_DAYS`.

use crate::WorkerState;
use crate::job::ShutdownSignal;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use velour_db::DbError;
use velour_db::maintenance::{self, Pruned};
use velour_db::rescans::claim_due_rescans;
use velour_db::scans::{self, ScanCounts};
use velour_jobs::{ScanLocation, ScanStorage};
use velour_storage::AssetError;

/// How often a worker looks for due rescans: the most a scan starts after it is due. The
/// look is one indexed query, so several workers doing it every few seconds cost little.
pub(crate) const RESCAN_TICK: Duration = Duration::from_secs(15);

/// Locations claimed per query; more wait for the next query of the same tick.
const CLAIM_BATCH: i64 = 100;

/// How often each worker prunes tombstones. Pruning takes a lock, so workers ticking
/// together prune once.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Images of gone videos deleted per tick and worker.
const SWEEP_BATCH: i64 = 200;

/// How long a worker holds the images it is deleting; one it failed to delete waits that
/// long before it is tried again.
const SWEEP_HOLD: Duration = Duration::from_secs(300);

/// Forgets tombstones older than the retention (none when it is unset); `None` when
/// another worker is pruning.
pub async fn prune_tombstones(state: &WorkerState) -> Result<Option<Pruned>, DbError> {
    let Some(retention) = state.worker.tombstone_retention() else {
        return Ok(Some(Pruned::default()));
    };
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return Ok(Some(Pruned::default()));
    };
    let before = chrono::Utc::now() - retention;
    let pruned = maintenance::prune_tombstones(&state.pool, before).await?;
    if let Some(pruned) = pruned.filter(|p| *p != Pruned::default()) {
        info!(
            videos = pruned.videos,
            tombstones = pruned.tombstones,
            works = pruned.works,
            before = %before,
            "pruned old tombstones"
        );
    }
    Ok(pruned)
}

/// Deletes up to `SWEEP_BATCH` stored images of videos whose rows are gone (those no other
/// worker is deleting), returning how many went. An image the store fails to delete stays
/// listed, and is tried again after `SWEEP_HOLD`, behind the others.
pub async fn sweep_orphaned_assets(state: &WorkerState) -> Result<usize, DbError> {
    let keys = maintenance::claim_orphaned_assets(&state.pool, SWEEP_BATCH, SWEEP_HOLD).await?;
    let mut deleted = Vec::with_capacity(keys.len());
    let mut failed = 0;
    for key in keys {
        match state.assets.delete(&key).await {
            Ok(()) => deleted.push(key),
            // No file can have such a key: there is nothing to delete, now or later.
            Err(err @ AssetError::BadKey(_)) => {
                warn!(error = %err, "forgetting an image key the store would never hold");
                deleted.push(key);
            }
            Err(err) => {
                failed += 1;
                debug!(asset.key = %key, error = %err, "could not delete an image");
            }
        }
    }
    if failed > 0 {
        warn!(images = failed, "could not delete some images of gone videos; trying later");
    }
    maintenance::forget_orphaned_assets(&state.pool, &deleted).await?;
    Ok(deleted.len())
}

/// Queues a scan of every location whose scheduled rescan is due, returning their ids.
/// A location whose scan is still queued or running joins that scan instead.
pub async fn queue_due_rescans(
    state: &WorkerState,
    queue: &ScanStorage,
) -> Result<Vec<i64>, DbError> {
    let pool = &state.pool;
    let mut queued = Vec::new();
    loop {
        let due = claim_due_rescans(pool, CLAIM_BATCH, state.federation.enabled).await?;
        let claimed = due.len();
        for location_id in due {
            let (run, created) = match scans::enqueue_scan_run(pool, location_id).await {
                Ok(queued) => queued,
                Err(DbError::NotFound) => {
                    debug!(location.id = location_id, "location deleted before its rescan");
                    continue;
                }
                Err(err) => return Err(err),
            };
            if !created {
                debug!(location.id = location_id, scan_run.id = run.id, "rescan joins a scan");
                continue;
            }
            let job = ScanLocation::new(run.id, location_id);
            let mut queue = queue.clone();
            if let Err(err) = velour_jobs::push_scan(&mut queue, job).await {
                // The run would sit queued forever: fail it; the next interval tries again.
                warn!(location.id = location_id, error = %err, "could not queue a rescan");
                let message = "the scheduled rescan could not be queued";
                scans::finish_scan_run(pool, run.id, ScanCounts::default(), Some(message)).await?;
                continue;
            }
            info!(location.id = location_id, scan_run.id = run.id, "scheduled rescan queued");
            queued.push(location_id);
        }
        if claimed < CLAIM_BATCH as usize {
            return Ok(queued);
        }
    }
}

/// Queues due rescans every `RESCAN_TICK` until shutdown. A failed look is logged and
/// tried again on the next tick.
pub(crate) async fn run_scheduler(
    state: WorkerState,
    queue: ScanStorage,
    shutdown: ShutdownSignal,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(RESCAN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_prune = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.clone() => return Ok(()),
        }
        if let Err(err) = queue_due_rescans(&state, &queue).await {
            warn!(error = %err, "could not queue scheduled rescans");
        }
        match sweep_orphaned_assets(&state).await {
            Ok(0) => {}
            Ok(swept) => info!(images = swept, "deleted the images of gone videos"),
            Err(err) => warn!(error = %err, "could not sweep the images of gone videos"),
        }
        if Instant::now() >= next_prune {
            match prune_tombstones(&state).await {
                Ok(_) => next_prune = Instant::now() + PRUNE_EVERY,
                Err(err) => warn!(error = %err, "could not prune tombstones"),
            }
        }
    }
}
