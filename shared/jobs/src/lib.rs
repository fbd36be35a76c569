//! Job payloads the gateway pushes and the worker consumes, and their queues.
//!
//! Both sides name the queue explicitly (apalis-redis would otherwise name it after the
//! Rust type path, which a refactor could silently change on one side only).

use apalis::prelude::TaskSink;
use apalis_redis::RedisStorage;
use serde::{Deserialize, Serialize};

/// Scan one storage location (folder, bucket or peer) for the scan run already recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanLocation {
    pub scan_run_id: i64,
    pub storage_location_id: i64,
    /// The W3C trace context of whoever asked for the scan (`traceparent`), so that the
    /// scan's spans join that request's trace. Empty for scheduled scans.
    #[serde(default, skip_serializing_if = "std::collections::HashMap::is_empty")]
    pub trace: std::collections::HashMap<String, String>,
}

impl ScanLocation {
    /// A scan with no trace to join.
    pub fn new(scan_run_id: i64, storage_location_id: i64) -> Self {
        Self { scan_run_id, storage_location_id, trace: Default::default() }
    }
}

/// The Redis queue of `ScanLocation` jobs.
pub const SCAN_QUEUE: &str = "velour:scan-location";

/// The apalis-redis storage for scan jobs, shared by the pushing and consuming sides.
pub type ScanStorage = apalis_redis::RedisStorage<ScanLocation>;

/// Opens the scan queue on an existing Redis connection.
pub fn scan_storage(conn: apalis_redis::ConnectionManager) -> ScanStorage {
    storage_on(conn, SCAN_QUEUE)
}

/// Make (or remake) the thumbnail of one video, from its current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateThumbnail {
    pub video_id: i64,
}

/// The Redis queue of `GenerateThumbnail` jobs.
pub const THUMBNAIL_QUEUE: &str = "velour:generate-thumbnail";

/// The apalis-redis storage for thumbnail jobs.
pub type ThumbnailStorage = apalis_redis::RedisStorage<GenerateThumbnail>;

/// Opens the thumbnail queue on an existing Redis connection.
pub fn thumbnail_storage(conn: apalis_redis::ConnectionManager) -> ThumbnailStorage {
    storage_on(conn, THUMBNAIL_QUEUE)
}

/// Queues a thumbnail job.
pub async fn push_thumbnail(
    storage: &mut ThumbnailStorage,
    job: GenerateThumbnail,
) -> Result<(), JobError> {
    push(storage, job).await
}

/// Test a federation connection: reach its peer and record the outcome on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestConnection {
    pub connection_id: i64,
}

/// The Redis queue of `TestConnection` jobs.
pub const TEST_CONNECTION_QUEUE: &str = "velour:test-connection";

/// The apalis-redis storage for connection tests, shared by the pushing and consuming sides.
pub type TestConnectionStorage = apalis_redis::RedisStorage<TestConnection>;

/// Opens the connection-test queue on an existing Redis connection.
pub fn test_connection_storage(conn: apalis_redis::ConnectionManager) -> TestConnectionStorage {
    storage_on(conn, TEST_CONNECTION_QUEUE)
}

/// Queues a connection test.
pub async fn push_connection_test(
    storage: &mut TestConnectionStorage,
    job: TestConnection,
) -> Result<(), JobError> {
    push(storage, job).await
}

/// A job queue named `queue` on an existing Redis connection.
fn storage_on<J>(conn: apalis_redis::ConnectionManager, queue: &str) -> RedisStorage<J> {
    RedisStorage::new(conn).with_config(apalis_redis::Config::default().queue(queue))
}

/// Queues a job.
async fn push<J, Kind>(storage: &mut RedisStorage<J>, job: J) -> Result<(), JobError>
where
    RedisStorage<J>: TaskSink<J, Kind> + Unpin,
{
    storage.push(job).await.map_err(|e| JobError::Push(e.to_string()))
}

/// Connects to Redis (the URL may carry a database number) for job queues.
pub async fn connect(redis_url: &str) -> Result<apalis_redis::ConnectionManager, JobError> {
    apalis_redis::connect(redis_url).await.map_err(JobError::Redis)
}

/// Queues a scan job.
pub async fn push_scan(storage: &mut ScanStorage, job: ScanLocation) -> Result<(), JobError> {
    push(storage, job).await
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not queue the job: {0}")]
    Push(String),
}
