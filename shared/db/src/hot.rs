//! Rows that every stream request reads and that seldom change, kept in memory between
//! requests: storage locations, with their secrets opened; videos, kept for as long as the
//! catalog does not change; and the catalog's version, by which the gateway knows when what
//! it derived from works and videos is still current.
//!
//! Any process may change those rows, so memory alone cannot know when a copy went stale.
//! A trigger on the table announces every change with `NOTIFY` (see the migration
//! `hot_rows`), and each process listens: a change committed by one process empties what
//! every other process kept as soon as Postgres delivers the notification. While the
//! listening connection is down, nothing is answered from memory, and what was kept is
//! thrown away.
//!
//! API keys are not kept: revoking a key must refuse the very next request on every
//! replica, and a notification arrives a moment after the commit that caused it. A row
//! answered from memory for that moment is the row as it was just before: a video removed
//! or moved a moment ago may still be streamed from where it was (as a request that
//! started a moment earlier would be), and a rotated peer key keeps working through its
//! grace period.

use crate::DbError;
use crate::catalog::{self, VideoRow};
use crate::locations::{self, LocationWithSecrets};
use crate::secrets::SecretsCipher;
use moka::sync::Cache;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// The channel the trigger notifies; the payload is the changed table's name.
pub const CHANNEL: &str = "velour_hot_rows";

/// How long a row is kept even without a change announced: a bound on the damage should a
/// notification ever be lost without the connection dropping.
const TIME_TO_LIVE: Duration = Duration::from_secs(60);
/// Locations kept; an instance has few.
const CAPACITY: u64 = 10_000;
/// Videos kept: the ones being watched, a few KiB each.
const VIDEO_CAPACITY: u64 = 4_096;
/// Waits between attempts to listen again after the connection was lost.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// Locations kept in memory; cheap to clone, shared by a process's requests.
#[derive(Clone)]
pub struct HotRows {
    inner: Arc<Inner>,
}

struct Inner {
    locations: Cache<i64, LocationWithSecrets>,
    /// Videos with the catalog version and generation they were read at: one is current
    /// only while neither moved.
    videos: Cache<i64, KeptVideo>,
    /// True while the listener is subscribed: only then is anything kept or answered.
    live: AtomicBool,
    /// Counts the times everything was thrown away, so that a lookup that read the
    /// database before a change but finished after it does not keep what it read.
    generation: AtomicU64,
    /// Counts the announced changes to works and videos (and the times the listener
    /// started or stopped): what a process derived from the catalog at one count is
    /// current while the count stays the same.
    catalog: AtomicU64,
    /// Dropped with the last clone of `HotRows`, which ends the listener.
    _stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for HotRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotRows").field("live", &self.inner.live.load(Ordering::Relaxed)).finish()
    }
}

impl HotRows {
    /// Starts listening for changes on a connection of `pool`; rows are kept once the
    /// subscription holds. Outside a Tokio runtime nothing is ever kept.
    pub fn start(pool: &PgPool) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self::disabled();
        };
        let (stop, stopped) = oneshot::channel();
        let inner = Arc::new(Inner::new(Some(stop)));
        runtime.spawn(listen(Arc::downgrade(&inner), pool.clone(), stopped));
        Self { inner }
    }

    /// Keeps nothing: every lookup reads the database.
    pub fn disabled() -> Self {
        Self { inner: Arc::new(Inner::new(None)) }
    }

    /// Whether rows are being kept (the listener is subscribed).
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// The catalog's version as this process last heard of it: it moves on every
    /// committed change to works or videos, once the notification arrives. `None` while
    /// nobody is listening, when nothing derived from the catalog may be reused.
    pub fn catalog_version(&self) -> Option<u64> {
        let version = self.inner.catalog.load(Ordering::Acquire);
        self.is_live().then_some(version)
    }

    /// Moves the catalog's version on in this process at once, for a change it committed
    /// itself: its next reads do not wait for the announcement to come back, so a caller
    /// sees its own change. Other processes move on when the announcement reaches them.
    pub fn catalog_changed_here(&self) {
        self.inner.catalog_changed();
    }

    /// `locations::get_location_with_secrets`, answered from memory when it can be.
    pub async fn location(
        &self,
        pool: &PgPool,
        cipher: &SecretsCipher,
        id: i64,
    ) -> Result<LocationWithSecrets, DbError> {
        let inner = &self.inner;
        if let Some(found) = self.is_live().then(|| inner.locations.get(&id)).flatten() {
            return Ok(found);
        }
        let generation = inner.generation.load(Ordering::Acquire);
        let found = locations::get_location_with_secrets(pool, cipher, id).await?;
        keep(&inner.locations, &inner.generation, generation, &inner.live, id, &found);
        Ok(found)
    }

    /// `catalog::get_video`, answered from memory while the catalog has not changed since
    /// the video was read. The version is taken before reading: a change committed during
    /// the read moves it, and what was read is then never answered.
    pub async fn video(&self, pool: &PgPool, id: i64) -> Result<VideoRow, DbError> {
        let inner = &self.inner;
        let Some(catalog) = self.catalog_version() else {
            return catalog::get_video(pool, id).await;
        };
        let generation = inner.generation.load(Ordering::Acquire);
        let read_at = (catalog, generation);
        if let Some(kept) = inner.videos.get(&id).filter(|kept| kept.read_at == read_at) {
            return Ok(kept.row);
        }
        let row = catalog::get_video(pool, id).await?;
        inner.videos.insert(id, KeptVideo { read_at, row: row.clone() });
        Ok(row)
    }
}

#[derive(Clone)]
struct KeptVideo {
    /// The catalog version and location generation when the row was read.
    read_at: (u64, u64),
    row: VideoRow,
}

/// Keeps `value`, read when the generation was `read_at`, unless everything was thrown
/// away since: then what was read may predate the change and is not kept. The
/// generation is checked after inserting, so a flush between the check and the insert
/// cannot be missed either.
fn keep(
    cache: &Cache<i64, LocationWithSecrets>,
    generation: &AtomicU64,
    read_at: u64,
    live: &AtomicBool,
    id: i64,
    location: &LocationWithSecrets,
) {
    if !live.load(Ordering::Acquire) || generation.load(Ordering::Acquire) != read_at {
        return;
    }
    cache.insert(id, location.clone());
    if generation.load(Ordering::Acquire) != read_at || !live.load(Ordering::Acquire) {
        cache.invalidate(&id);
    }
}

impl Inner {
    fn new(stop: Option<oneshot::Sender<()>>) -> Self {
        Self {
            locations: Cache::builder().max_capacity(CAPACITY).time_to_live(TIME_TO_LIVE).build(),
            videos: Cache::builder()
                .max_capacity(VIDEO_CAPACITY)
                .time_to_live(TIME_TO_LIVE)
                .build(),
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            catalog: AtomicU64::new(0),
            _stop: stop,
        }
    }

    fn forget_locations(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.locations.invalidate_all();
    }

    fn catalog_changed(&self) {
        self.catalog.fetch_add(1, Ordering::AcqRel);
    }

    fn forget_everything(&self) {
        self.forget_locations();
        self.catalog_changed();
    }

    /// Acts on one notification: its payload names the table that changed. A payload we
    /// do not know (a newer release's table) throws everything away, to be safe.
    fn changed(&self, table: &str) {
        match table {
            "works" | "videos" => self.catalog_changed(),
            "storage_locations" => self.forget_locations(),
            _ => self.forget_everything(),
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        self.forget_everything();
    }
}

/// Subscribes to the channel, and again whenever the connection is lost, until `stop`
/// fires (the `HotRows` was dropped) or the pool closes.
async fn listen(inner: Weak<Inner>, pool: PgPool, mut stop: oneshot::Receiver<()>) {
    let mut retry = FIRST_RETRY;
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                let Some(held) = inner.upgrade() else { return };
                held.set_live(true);
                drop(held);
                retry = FIRST_RETRY;
                loop {
                    let received = tokio::select! {
                        _ = &mut stop => return,
                        received = listener.try_recv() => received,
                    };
                    let Some(held) = inner.upgrade() else { return };
                    match received {
                        Ok(Some(notification)) => held.changed(notification.payload()),
                        Ok(None) => {
                            tracing::warn!("lost the connection announcing catalog changes");
                            held.set_live(false);
                            break;
                        }
                        Err(err) => {
                            held.set_live(false);
                            if pool.is_closed() {
                                return;
                            }
                            tracing::warn!(error = %err, "announcements of changes failed");
                            break;
                        }
                    }
                }
            }
            Err(err) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %err, "could not listen for catalog changes; retrying");
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
