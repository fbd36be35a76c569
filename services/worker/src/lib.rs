//! The scan worker: takes `ScanLocation` jobs off the Redis queue and brings the catalog in
//! line with what a storage location holds, be it a folder (walked and probed with
//! ffprobe) or a peer (read page by page).
//!
//! Every scan runs under a Postgres advisory lock on its location, so that two workers
//! never scan one location at once, and ends with its run recorded as succeeded (with
//! counts) or failed (with a message people can act on).

mod bucket;
mod connection_test;
mod job;
mod local;
mod nfo;
mod oshash;
mod peer;
mod probe;
mod scan;
mod schedule;
mod thumbnail;
mod title;

#[cfg(test)]
mod db_tests;

pub use connection_test::test_connection;
pub use job::run;
pub use scan::{ScanError, ScanFailure, scan_location};
pub use schedule::queue_due_rescans;
pub use thumbnail::{ThumbnailJobError, ThumbnailOutcome, generate_thumbnail};

use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use velour_core::settings::{
    AssetSettings, DatabaseSettings, FederationSettings, PeerSettings, RedisSettings,
    WorkerSettings,
};
use velour_db::secrets::SecretsCipher;
use velour_jobs::ThumbnailStorage;
use velour_storage::AssetStore;

/// What every scan needs: the catalog and the settings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerState {
    pool: sqlx::PgPool,
    worker: WorkerSettings,
    peer: PeerSettings,
    federation: FederationSettings,
    /// How long a scan waits for the location lock (shortened by tests).
    lock_wait: Duration,
    /// ffprobe runs started, so tests can tell that unchanged files are not probed again.
    probes: Arc<AtomicU64>,
    /// Where thumbnails are written.
    assets: AssetStore,
    /// Where scans queue thumbnail jobs; `None` when no queue is connected (scans run
    /// directly, as in tests), and then no job is queued.
    thumbnail_queue: Option<ThumbnailStorage>,
    /// Opens (and after key rotation, seals) the secrets of locations.
    secrets: SecretsCipher,
}

impl WorkerState {
    pub fn new(
        pool: sqlx::PgPool,
        worker: WorkerSettings,
        peer: PeerSettings,
        assets: AssetStore,
    ) -> Self {
        Self {
            pool,
            worker,
            peer,
            federation: FederationSettings::default(),
            lock_wait: scan::LOCK_WAIT,
            probes: Arc::default(),
            assets,
            thumbnail_queue: None,
            secrets: SecretsCipher::default(),
        }
    }

    /// Opens location secrets with `secrets` (by default, the key kept in the catalog).
    pub fn with_secrets(mut self, secrets: SecretsCipher) -> Self {
        self.secrets = secrets;
        self
    }

    /// Scans peers (and rotates the keys we hold for them) as `federation` says.
    pub fn with_federation(mut self, federation: FederationSettings) -> Self {
        self.peer.require_https = federation.require_https;
        self.federation = federation;
        self
    }
}

/// The worker's command line: every setting also reads its environment variable.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub peer: PeerSettings,
    #[command(flatten)]
    pub federation: FederationSettings,
    #[command(flatten)]
    pub assets: AssetSettings,
}

/// Connects to (and migrates) the catalog, then runs workers until `shutdown` resolves.
pub async fn run_from_settings(
    database: &DatabaseSettings,
    redis: &RedisSettings,
    worker: &WorkerSettings,
    peer: &PeerSettings,
    federation: &FederationSettings,
    assets: &AssetSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let assets = AssetStore::from_settings(assets)?;
    let pool = velour_db::connect_and_migrate(database).await.with_context(|| {
        let url = velour_core::settings::redact_url(&database.database_url);
        format!("DATABASE_URL: could not open the catalog at {url}")
    })?;
    let secrets = velour_db::secrets::location_cipher(&pool, &database.secrets)
        .await
        .context("VELOUR_SECRETS_KEY: the secrets of storage locations cannot be opened")?;
    let state = WorkerState::new(pool, worker.clone(), peer.clone(), assets)
        .with_federation(federation.clone())
        .with_secrets(secrets);
    run(state, &redis.redis_url, shutdown).await
}

/// `run_from_settings` for a parsed command line.
pub async fn run_from_args(
    args: &WorkerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let WorkerArgs { database, redis, worker, peer, federation, assets } = args;
    run_from_settings(database, redis, worker, peer, federation, assets, shutdown).await
}
