//! Federation connections: the key we issued to a peer, the location through which we
//! read that peer, the connection's status and the outcome of its last test.

use crate::keys::{self, ApiKeyRow, KeyOwner, NewKey};
use crate::{DbError, PageRequest};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::{PgConnection, PgPool};
use velour_core::{ConnectionStatus, Permissions};

/// A connection as the admin API shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: i64,
    pub api_key_id: i64,
    pub storage_location_id: Option<i64>,
    pub remote_instance_url: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_test_reachable: Option<bool>,
    pub last_test_latency_ms: Option<i32>,
    pub last_test_peer_version: Option<String>,
    pub last_test_error: Option<String>,
    pub last_tested_at: Option<DateTime<Utc>>,
    /// When the connection's current key expires (`None`: never).
    pub api_key_expires_at: Option<DateTime<Utc>>,
}

impl ConnectionRow {
    /// The parsed status. The column's CHECK constraint keeps it one of the four; anything
    /// else reads as suspended, the state that lets nothing through.
    pub fn status(&self) -> ConnectionStatus {
        self.status.parse().unwrap_or(ConnectionStatus::Suspended)
    }
}

const COLUMNS: &str = "id, api_key_id, storage_location_id, remote_instance_url, status,
    created_at, updated_at, last_test_reachable, last_test_latency_ms, last_test_peer_version,
    last_test_error, last_tested_at,
    (SELECT k.expires_at FROM api_keys k WHERE k.id = api_key_id) AS api_key_expires_at";

/// The key a new connection is tied to.
#[derive(Clone, Copy, Debug)]
pub enum ConnectionKey<'a> {
    /// A key issued before, by id.
    Existing(i64),
    /// A key issued now, for this connection.
    Issue { name: &'a str, permissions: Permissions, expires_at: Option<DateTime<Utc>> },
}

/// A connection to create; the URL and location are already validated by the caller.
#[derive(Clone, Copy, Debug)]
pub struct NewConnection<'a> {
    pub remote_instance_url: &'a str,
    pub storage_location_id: Option<i64>,
    pub key: ConnectionKey<'a>,
}

fn refused(code: &'static str, message: &str) -> DbError {
    DbError::Refused { code, message: message.to_owned() }
}

/// Creates a pending connection, issuing its key if asked to (the clear key is returned
/// once, here). An existing key must be a member's key that is not revoked, expired,
/// rotated or tied to another connection.
pub async fn create_connection(
    pool: &PgPool,
    new: NewConnection<'_>,
) -> Result<(ConnectionRow, Option<SecretString>), DbError> {
    let mut tx = pool.begin().await?;
    let (key_id, clear_key) = match new.key {
        ConnectionKey::Existing(id) => {
            check_key_is_free(&mut tx, id).await?;
            (id, None)
        }
        ConnectionKey::Issue { name, permissions, expires_at } => {
            let new_key = NewKey {
                owner: KeyOwner::Member,
                name,
                permissions,
                expires_at,
                connection_id: None,
            };
            let (row, key) = keys::insert_key(&mut tx, new_key).await?;
            (row.id, Some(key))
        }
    };

    let row: ConnectionRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO federation_connections (api_key_id, storage_location_id, remote_instance_url)
         VALUES ($1, $2, $3) RETURNING {COLUMNS}"
    )))
    .bind(key_id)
    .bind(new.storage_location_id)
    .bind(new.remote_instance_url)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => refused(
            "connection-exists",
            "this key or this storage location already belongs to a connection",
        ),
        _ => DbError::Sqlx(e),
    })?;
    sqlx::query("UPDATE api_keys SET connection_id = $2 WHERE id = $1")
        .bind(key_id)
        .bind(row.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((row, clear_key))
}

async fn check_key_is_free(tx: &mut PgConnection, id: i64) -> Result<(), DbError> {
    let key: ApiKeyRow = sqlx::query_as(
        "SELECT id, user_id, name, key_prefix, can_read, can_stream, can_metadata, active,
                created_at, last_used_at, expires_at, revoked_at, replaced_by, connection_id
         FROM api_keys WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(DbError::NotFound)?;
    let is_admin: bool = sqlx::query_scalar("SELECT is_admin FROM users WHERE id = $1")
        .bind(key.user_id)
        .fetch_one(&mut *tx)
        .await?;
    if is_admin {
        return Err(refused("key-not-usable", "an administrator's key cannot be given to a peer"));
    }
    if key.state(Utc::now()) != "active" || key.replaced_by.is_some() {
        return Err(refused("key-not-usable", "the key is revoked, expired or rotated"));
    }
    if key.connection_id.is_some() {
        return Err(refused("connection-exists", "this key already belongs to a connection"));
    }
    Ok(())
}

pub async fn get_connection(pool: &PgPool, id: i64) -> Result<ConnectionRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM federation_connections WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)
}

/// One page of connections, oldest first, and how many there are.
pub async fn list_connections(
    pool: &PgPool,
    page: PageRequest,
) -> Result<(Vec<ConnectionRow>, i64), DbError> {
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM federation_connections").fetch_one(pool).await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM federation_connections ORDER BY id LIMIT $1 OFFSET $2"
    )))
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(pool)
    .await?;
    Ok((rows, total))
}

/// The status of the connection a location belongs to; `None` for a location that
/// belongs to none (a peer registered without a connection is scanned as before).
pub async fn status_for_location(
    pool: &PgPool,
    location_id: i64,
) -> Result<Option<ConnectionStatus>, DbError> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM federation_connections WHERE storage_location_id = $1",
    )
    .bind(location_id)
    .fetch_optional(pool)
    .await?;
    Ok(status.map(|s| s.parse().unwrap_or(ConnectionStatus::Suspended)))
}

/// The first key of the two-key advisory lock space for connection changes. "VLFC".
const STATUS_LOCK_CLASS: i32 = 0x564c_4643;

/// Moves a connection to `to`. Activations are serialized by a transaction-scoped lock,
/// so that two at once cannot both slip under `max_active`.
pub async fn set_status(
    pool: &PgPool,
    id: i64,
    to: ConnectionStatus,
    max_active: u32,
) -> Result<ConnectionRow, DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(STATUS_LOCK_CLASS)
        .execute(&mut *tx)
        .await?;
    let current: ConnectionRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM federation_connections WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(DbError::NotFound)?;
    let from = current.status();
    if from == to {
        return Ok(current);
    }
    if !from.may_become(to) {
        return Err(DbError::Refused {
            code: "invalid-status-transition",
            message: format!("a {from} connection cannot become {to}"),
        });
    }
    if to == ConnectionStatus::Active {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM federation_connections WHERE status = 'active'",
        )
        .fetch_one(&mut *tx)
        .await?;
        if active >= i64::from(max_active) {
            return Err(DbError::Refused {
                code: "connection-limit-reached",
                message: format!(
                    "{active} connections are active, the most MAX_FEDERATED_CONNECTIONS allows"
                ),
            });
        }
    }
    let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE federation_connections SET status = $2, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(to.as_str())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// What deleting a connection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeletedConnection {
    pub keys_revoked: u64,
    pub videos_removed: u64,
    pub works_removed: u64,
}

/// Deletes a connection in one transaction: revokes every key issued for it (the key and
/// any predecessor still in its grace period), removes the videos read through its
/// location, the works left without any video, and the location itself, so that nothing
/// of the peer is left to rescan or stream.
pub async fn delete_connection(pool: &PgPool, id: i64) -> Result<DeletedConnection, DbError> {
    let mut tx = pool.begin().await?;
    let connection: ConnectionRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM federation_connections WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(DbError::NotFound)?;

    let keys_revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()), active = FALSE
         WHERE connection_id = $1 OR id = $2",
    )
    .bind(id)
    .bind(connection.api_key_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();

    let mut deleted = DeletedConnection { keys_revoked, ..DeletedConnection::default() };
    if let Some(location_id) = connection.storage_location_id {
        let removed = crate::locations::remove_videos_of(&mut tx, location_id).await?;
        deleted.videos_removed = removed.videos_removed;
        deleted.works_removed = removed.works_removed;
        sqlx::query("DELETE FROM storage_locations WHERE id = $1")
            .bind(location_id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM federation_connections WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted)
}

/// The outcome of one connection test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestOutcome {
    pub reachable: bool,
    pub latency_ms: Option<i32>,
    pub peer_version: Option<String>,
    pub error: Option<String>,
}

/// Stores a test's outcome; `NotFound` when the connection was deleted meanwhile.
pub async fn record_test(pool: &PgPool, id: i64, outcome: &TestOutcome) -> Result<(), DbError> {
    let updated = sqlx::query(
        "UPDATE federation_connections SET last_test_reachable = $2, last_test_latency_ms = $3,
                last_test_peer_version = $4, last_test_error = $5, last_tested_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome.reachable)
    .bind(outcome.latency_ms)
    .bind(outcome.peer_version.as_deref())
    .bind(outcome.error.as_deref())
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 0 { Err(DbError::NotFound) } else { Ok(()) }
}
