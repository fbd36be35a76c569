//! The apalis worker that takes `ScanLocation` jobs off the Redis queue (and starts the
//! one for `TestConnection` jobs beside it).

use crate::{ScanError, WorkerState, scan_location};
use anyhow::Context as _;
use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{AbortError, Attempt, BoxDynError, Data, WorkerBuilder, WorkerError};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, instrument, warn};
use url::Url;
use velour_core::settings::redact_url;
use velour_jobs::{ScanLocation, ScanStorage};

/// How often a worker tells Redis it is alive. An idle apalis worker also looks for new
/// jobs only on this beat (and acknowledges finished ones on it), so it bounds how long a
/// queued scan waits for an idle worker: the default 30 s would feel broken to someone who
/// just pressed "scan". Five seconds costs Redis a few small scripts per worker.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Heartbeats a worker may miss before other workers put its jobs back in the queue:
/// 30 s in all, against the default's 5 minutes. Until then, the scan run of a worker that
/// died stays "running" and blocks new scans of its location. Scans do their blocking
/// file work off the async threads, so a live worker never misses this many; and should
/// one be wrongly declared dead, the location lock keeps the two from scanning at once.
const MISSED_HEARTBEATS: usize = 6;

/// Jobs fetched per trip to Redis. Scans are long, so a worker takes a job only when it
/// has a free slot, rather than holding a batch that idle workers elsewhere could run.
const BATCH_SIZE: usize = 1;

/// How long scans still running at shutdown may take to finish. Past it they are dropped
/// (their lock goes with their database session); their jobs go back to the queue once
/// the heartbeats stop, and the next worker takes the runs over from the start.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Waits between restarts of a worker that lost Redis, doubling up to the maximum.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

pub(crate) type ShutdownSignal = Shared<BoxFuture<'static, ()>>;

/// Runs workers until `shutdown` resolves.
pub async fn run(
    state: WorkerState,
    redis_url: &Url,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let conn = velour_jobs::connect(redis_url.as_str())
        .await
        .with_context(|| format!("REDIS_URL: could not connect to {}", redact_url(redis_url)))?;
    let shutdown: ShutdownSignal = shutdown.boxed().shared();
    let tests = velour_jobs::test_connection_storage(conn.clone());
    let tests = crate::connection_test::run_on(state.clone(), tests, shutdown.clone());
    let scans = run_on(state, velour_jobs::scan_storage(conn), shutdown);
    tokio::try_join!(scans, tests).map(|_| ())
}

/// Runs workers on the given queue (tests give each run a queue of its own).
pub(crate) async fn run_on(
    state: WorkerState,
    storage: ScanStorage,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = storage
        .get_config()
        .clone()
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .batch_size(BATCH_SIZE);
    let storage = storage.with_config(config);
    let shutdown: ShutdownSignal = shutdown.boxed().shared();

    // apalis ends a worker whose backend fails (Redis unreachable during a heartbeat); it is
    // started again here, with a new name, after a pause that grows while failures repeat.
    let mut backoff = RESTART_BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let Err(err) = run_worker(&state, storage.clone(), shutdown.clone()).await else {
            return Ok(());
        };
        if shutdown.peek().is_some() {
            return Ok(());
        }
        if started.elapsed() > RESTART_BACKOFF_MAX {
            backoff = RESTART_BACKOFF_MIN;
        }
        warn!(error = %err, retry_in_secs = backoff.as_secs(), "scan worker stopped; restarting");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.clone() => return Ok(()),
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

/// Runs one apalis worker until shutdown (`Ok`) or until its backend fails (`Err`).
async fn run_worker(
    state: &WorkerState,
    storage: ScanStorage,
    shutdown: ShutdownSignal,
) -> Result<(), WorkerError> {
    // Names must be unique among live workers: each has its own set of jobs in Redis.
    let name = format!("velour-scan-{}", uuid::Uuid::new_v4().simple());
    let concurrency = usize::from(state.worker.concurrency);
    info!(worker.name = %name, concurrency, "scan worker started");

    let worker = WorkerBuilder::new(name)
        .backend(storage)
        .concurrency(concurrency)
        .data(state.clone())
        .build(handle_scan_job);
    let running = worker.run_until(shutdown.clone().map(Ok::<(), std::io::Error>));
    let grace_over = async {
        shutdown.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        outcome = running => outcome,
        () = grace_over => {
            warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "scans still running were abandoned");
            Ok(())
        }
    }
}

/// The apalis handler. Failures are recorded on the run and not retried (an `AbortError`
/// makes apalis-redis mark the task dead instead of rescheduling it up to 25 times); only
/// a run left unfinished goes back to the queue.
#[instrument(skip_all, fields(attempt = attempt.current()))]
async fn handle_scan_job(
    job: ScanLocation,
    state: Data<WorkerState>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    match scan_location(&state, job).await {
        Ok(_) => Ok(()),
        Err(ScanError::RunNotActive(run_id)) => {
            info!(scan_run.id = run_id, "the run is already finished; nothing to do");
            Ok(())
        }
        Err(err) if err.should_retry() => {
            warn!(error = %err, "the scan will be tried again");
            Err(err.into())
        }
        // TODO(#5): retries with backoff for failures that may pass (an unreachable peer,
        // a database blip), recorded so that a retried run is not shown as failed first.
        Err(err) => Err(Box::new(AbortError::new(err))),
    }
}
