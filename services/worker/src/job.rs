//! The apalis workers that take `ScanLocation`, `GenerateThumbnail` and `TestConnection`
//! jobs off their Redis queues.

use crate::thumbnail::{ThumbnailJobError, generate_thumbnail};
use crate::{ScanError, WorkerState, scan_location};
use anyhow::Context as _;
use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{AbortError, Attempt, BoxDynError, Data, WorkerBuilder, WorkerError};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::{info, instrument, warn};
use url::Url;
use velour_core::settings::redact_url;
use velour_jobs::{
    GenerateThumbnail, ScanLocation, ScanStorage, TestConnectionStorage, ThumbnailStorage,
};

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
    let queues = Queues {
        scans: velour_jobs::scan_storage(conn.clone()),
        thumbnails: velour_jobs::thumbnail_storage(conn.clone()),
        tests: velour_jobs::test_connection_storage(conn),
    };
    run_on(state, queues, shutdown).await
}

/// The queues one worker process takes jobs from.
pub(crate) struct Queues {
    pub scans: ScanStorage,
    pub thumbnails: ThumbnailStorage,
    pub tests: TestConnectionStorage,
}

/// Runs a worker for each queue (tests give each run queues of their own).
pub(crate) async fn run_on(
    mut state: WorkerState,
    queues: Queues,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let scans = queues.scans.clone().with_config(tuned(queues.scans.get_config()));
    let thumbnails = queues.thumbnails.clone().with_config(tuned(queues.thumbnails.get_config()));
    // Scans queue a thumbnail job for each new or changed video.
    state.thumbnail_queue = Some(thumbnails.clone());
    let shutdown: ShutdownSignal = shutdown.boxed().shared();

    let scan_workers = keep_running("scan", shutdown.clone(), |stop| {
        let worker = WorkerBuilder::new(worker_name("scan"))
            .backend(scans.clone())
            .concurrency(usize::from(state.worker.concurrency))
            .data(state.clone())
            .build(handle_scan_job);
        run_until_shutdown(worker.run_until(stop.clone().map(Ok::<(), std::io::Error>)), stop)
    });
    let thumbnail_workers = keep_running("thumbnail", shutdown.clone(), |stop| {
        let worker = WorkerBuilder::new(worker_name("thumbnail"))
            .backend(thumbnails.clone())
            .concurrency(usize::from(state.worker.concurrency))
            .data(state.clone())
            .build(handle_thumbnail_job);
        run_until_shutdown(worker.run_until(stop.clone().map(Ok::<(), std::io::Error>)), stop)
    });
    // A connection test is asked for by a person waiting on the answer: its worker looks
    // for jobs more often.
    let tests = queues.tests.clone();
    let tests = tests.clone().with_config(
        tuned(tests.get_config()).heartbeat_interval(crate::connection_test::HEARTBEAT_INTERVAL),
    );
    let test_workers = keep_running("connection-test", shutdown.clone(), |stop| {
        let worker = WorkerBuilder::new(worker_name("connection-test"))
            .backend(tests.clone())
            .data(state.clone())
            .build(crate::connection_test::handle_test_job);
        run_until_shutdown(worker.run_until(stop.clone().map(Ok::<(), std::io::Error>)), stop)
    });
    let scheduler = crate::schedule::run_scheduler(state.clone(), scans.clone(), shutdown);
    tokio::try_join!(scan_workers, thumbnail_workers, test_workers, scheduler)?;
    Ok(())
}

fn tuned(config: &apalis_redis::Config) -> apalis_redis::Config {
    config
        .clone()
        .heartbeat_interval(HEARTBEAT_INTERVAL)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .batch_size(BATCH_SIZE)
}

/// Names must be unique among live workers: each has its own set of jobs in Redis.
fn worker_name(queue: &str) -> String {
    format!("velour-{queue}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs the worker `start` makes until shutdown. apalis ends a worker whose backend fails
/// (Redis unreachable during a heartbeat); it is started again, with a new name, after a
/// pause that grows while failures repeat.
async fn keep_running<F, Fut>(
    queue: &'static str,
    shutdown: ShutdownSignal,
    mut start: F,
) -> anyhow::Result<()>
where
    F: FnMut(ShutdownSignal) -> Fut,
    Fut: Future<Output = Result<(), WorkerError>>,
{
    let mut backoff = RESTART_BACKOFF_MIN;
    loop {
        let started = Instant::now();
        info!(queue, "worker started");
        let Err(err) = start(shutdown.clone()).await else {
            return Ok(());
        };
        if shutdown.peek().is_some() {
            return Ok(());
        }
        if started.elapsed() > RESTART_BACKOFF_MAX {
            backoff = RESTART_BACKOFF_MIN;
        }
        warn!(queue, error = %err, retry_in_secs = backoff.as_secs(), "worker stopped; restarting");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.clone() => return Ok(()),
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

/// Waits for a running worker to end: on its own (its backend failed: `Err`), or after
/// shutdown, once its jobs finish or the grace period is over.
async fn run_until_shutdown(
    running: impl Future<Output = Result<(), WorkerError>>,
    shutdown: ShutdownSignal,
) -> Result<(), WorkerError> {
    let grace_over = async {
        shutdown.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        outcome = running => outcome,
        () = grace_over => {
            warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "jobs still running were abandoned");
            Ok(())
        }
    }
}

/// Makes a thumbnail. Failures of the catalog or asset store are retried by apalis-redis;
/// the rest are not (the video keeps no asset row, so the next scan queues it again).
#[instrument(skip_all, fields(video.id = job.video_id, attempt = attempt.current()))]
async fn handle_thumbnail_job(
    job: GenerateThumbnail,
    state: Data<WorkerState>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let outcome = generate_thumbnail(&state, job.video_id).await;
    // A job that will be retried keeps its claim, so scans meanwhile queue no twin.
    if !matches!(outcome, Err(ThumbnailJobError::Retry(_)))
        && let Err(err) = velour_db::assets::release_thumbnail_job(&state.pool, job.video_id).await
    {
        warn!(error = %err, "could not release the thumbnail job's claim; it lapses in an hour");
    }
    match outcome {
        Ok(_) => Ok(()),
        Err(err @ ThumbnailJobError::Retry(_)) => {
            warn!(error = %err, "the thumbnail will be tried again");
            Err(err.into())
        }
        Err(err @ ThumbnailJobError::GiveUp(_)) => {
            warn!(error = %err, "no thumbnail made");
            Err(Box::new(AbortError::new(err)))
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
    // The scan joins the trace of the request that asked for it.
    let span = tracing::info_span!("scan job", scan_run.id = job.scan_run_id);
    velour_telemetry::adopt_carrier(&span, &job.trace);
    match scan_location(&state, job).instrument(span).await {
        Ok(_) => Ok(()),
        Err(ScanError::RunNotActive(run_id)) => {
            info!(scan_run.id = run_id, "the run is already finished; nothing to do");
            Ok(())
        }
        Err(err) if err.should_retry() => {
            warn!(error = %err, "the scan will be tried again");
            Err(err.into())
        }
        // Failures that may pass are retried by the rescan schedule, with backoff, as a new
        // run; a peer that refused our key is not (see `velour_db::rescans`).
        Err(err) => Err(Box::new(AbortError::new(err))),
    }
}
