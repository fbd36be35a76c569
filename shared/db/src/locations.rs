//! Storage locations: folders, buckets and peers that hold videos.

use crate::DbError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use velour_core::StorageType;

/// A location as the API may show it. Its secrets are not part of this row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LocationRow {
    pub id: i64,
    pub name: String,
    pub storage_type: String,
    pub configuration: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl LocationRow {
    /// The parsed storage type. The column's CHECK constraint keeps it one of the three.
    pub fn kind(&self) -> Option<StorageType> {
        self.storage_type.parse().ok()
    }

    /// A string field of the public configuration.
    pub fn config_str(&self, field: &str) -> Option<&str> {
        self.configuration.0.get(field).and_then(Value::as_str)
    }
}

/// A location with the secrets the worker and stream service need to reach it.
#[derive(Clone, sqlx::FromRow)]
pub struct LocationWithSecrets {
    #[sqlx(flatten)]
    pub location: LocationRow,
    pub secrets: Json<Value>,
}

impl LocationWithSecrets {
    /// A string field of the secrets.
    pub fn secret_str(&self, field: &str) -> Option<&str> {
        self.secrets.0.get(field).and_then(Value::as_str)
    }
}

// The secrets are never printed, not even in debug output.
impl std::fmt::Debug for LocationWithSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocationWithSecrets")
            .field("location", &self.location)
            .field("secrets", &"<redacted>")
            .finish()
    }
}

const COLUMNS: &str = "id, name, storage_type, configuration, created_at, updated_at";

/// A location to create, already validated by the caller.
pub struct NewLocation<'a> {
    pub name: &'a str,
    pub storage_type: StorageType,
    pub configuration: Value,
    pub secrets: Value,
}

pub async fn create_location(pool: &PgPool, new: NewLocation<'_>) -> Result<LocationRow, DbError> {
    // TODO(#5): encrypt `secrets` at rest with a key from the settings.
    sqlx::query_as(
        "INSERT INTO storage_locations (name, storage_type, configuration, secrets)
         VALUES ($1, $2, $3, $4)
         RETURNING id, name, storage_type, configuration, created_at, updated_at",
    )
    .bind(new.name)
    .bind(new.storage_type.as_str())
    .bind(Json(&new.configuration))
    .bind(Json(&new.secrets))
    .fetch_one(pool)
    .await
    .map_err(|e| DbError::conflict_or(e, "a storage location with this name already exists"))
}

pub async fn list_locations(pool: &PgPool) -> Result<Vec<LocationRow>, DbError> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM storage_locations ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

pub async fn get_location(pool: &PgPool, id: i64) -> Result<LocationRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM storage_locations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)
}

pub async fn get_location_with_secrets(
    pool: &PgPool,
    id: i64,
) -> Result<LocationWithSecrets, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, secrets FROM storage_locations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)
}

/// Replaces the key we hold for a peer location (after rotating it on the peer).
pub async fn set_peer_api_key(pool: &PgPool, id: i64, api_key: &str) -> Result<(), DbError> {
    let updated = sqlx::query(
        "UPDATE storage_locations
         SET secrets = jsonb_set(secrets, '{api_key}', to_jsonb($2::text)), updated_at = now()
         WHERE id = $1 AND storage_type = 'velour'",
    )
    .bind(id)
    .bind(api_key)
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 0 { Err(DbError::NotFound) } else { Ok(()) }
}

/// The cursor a peer location's last complete scan ended with, if any.
pub async fn sync_cursor(pool: &PgPool, id: i64) -> Result<Option<String>, DbError> {
    let cursor: Option<Option<String>> =
        sqlx::query_scalar("SELECT sync_cursor FROM storage_locations WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    cursor.ok_or(DbError::NotFound)
}

/// Stores (or with `None`, forgets) a peer location's sync cursor. Call it only after a
/// scan that read everything up to that cursor.
pub async fn set_sync_cursor(pool: &PgPool, id: i64, cursor: Option<&str>) -> Result<(), DbError> {
    sqlx::query("UPDATE storage_locations SET sync_cursor = $2 WHERE id = $1")
        .bind(id)
        .bind(cursor)
        .execute(pool)
        .await?;
    Ok(())
}
