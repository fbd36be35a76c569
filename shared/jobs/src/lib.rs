//! Job payloads the gateway pushes and the worker consumes, and their queues.
//!
//! Both sides name the queue explicitly (apalis-redis would otherwise name it after the
//! Rust type path, which a refactor could silently change on one side only).

use serde::{Deserialize, Serialize};

/// Scan one storage location (folder, bucket or peer) for the scan run already recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanLocation {
    pub scan_run_id: i64,
    pub storage_location_id: i64,
}

/// The Redis queue of `ScanLocation` jobs.
pub const SCAN_QUEUE: &str = "velour:scan-location";

/// The apalis-redis storage for scan jobs, shared by the pushing and consuming sides.
pub type ScanStorage = apalis_redis::RedisStorage<ScanLocation>;

/// Opens the scan queue on an existing Redis connection.
pub fn scan_storage(conn: apalis_redis::ConnectionManager) -> ScanStorage {
    let config = apalis_redis::Config::default().queue(SCAN_QUEUE);
    apalis_redis::RedisStorage::new(conn).with_config(config)
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
    let config = apalis_redis::Config::default().queue(THUMBNAIL_QUEUE);
    apalis_redis::RedisStorage::new(conn).with_config(config)
}

/// Queues a thumbnail job.
pub async fn push_thumbnail(
    storage: &mut ThumbnailStorage,
    job: GenerateThumbnail,
) -> Result<(), JobError> {
    use apalis::prelude::TaskSink;
    storage.push(job).await.map_err(|e| JobError::Push(e.to_string()))
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
    let config = apalis_redis::Config::default().queue(TEST_CONNECTION_QUEUE);
    apalis_redis::RedisStorage::new(conn).with_config(config)
}

/// Queues a connection test.
pub async fn push_connection_test(
    storage: &mut TestConnectionStorage,
    job: TestConnection,
) -> Result<(), JobError> {
    use apalis::prelude::TaskSink;
    storage.push(job).await.map_err(|e| JobError::Push(e.to_string()))
}

/// Connects to Redis (the URL may carry a database number) for job queues.
pub async fn connect(redis_url: &str) -> Result<apalis_redis::ConnectionManager, JobError> {
    apalis_redis::connect(redis_url).await.map_err(JobError::Redis)
}

/// Queues a scan job.
pub async fn push_scan(storage: &mut ScanStorage, job: ScanLocation) -> Result<(), JobError> {
    use apalis::prelude::TaskSink;
    storage.push(job).await.map_err(|e| JobError::Push(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not queue the job: {0}")]
    Push(String),
}
