//! API keys: issued once in clear, stored only as a SHA-256 hash.

use crate::{DbError, PageRequest};
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use velour_core::{ConnectionStatus, Permissions};

/// Characters of a key kept in clear so that people can tell their keys apart.
const PREFIX_LEN: usize = 8;

/// A key that was presented, found and accepted: who holds it and what it may do.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AuthenticatedKey {
    pub id: i64,
    pub user_id: i64,
    pub is_admin: bool,
    pub can_read: bool,
    pub can_stream: bool,
    pub can_metadata: bool,
    pub expires_at: Option<DateTime<Utc>>,
    /// The federation connection the key was issued for, if any.
    pub connection_id: Option<i64>,
}

impl AuthenticatedKey {
    pub fn permissions(&self) -> Permissions {
        Permissions {
            can_read: self.can_read,
            can_stream: self.can_stream,
            can_metadata: self.can_metadata,
        }
    }
}

/// Why a presented key was not accepted. Each has its own stable code in the API, so a
/// peer can tell "rotate or ask for a new key" from "ask the administrator".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No such key.
    Unknown,
    /// Past its `expires_at` (a rotated key whose grace period is over, too).
    Expired,
    /// Revoked by an administrator, or by deleting its federation connection.
    Revoked,
    /// Issued for a federation connection that is not active.
    Connection(ConnectionStatus),
}

/// A key as found, before the checks that decide whether it is accepted.
#[derive(sqlx::FromRow)]
struct KeyLookup {
    #[sqlx(flatten)]
    key: AuthenticatedKey,
    revoked: bool,
    expired: bool,
    connection_status: Option<String>,
}

impl KeyLookup {
    fn accept(self) -> Result<AuthenticatedKey, KeyRefusal> {
        if self.revoked {
            return Err(KeyRefusal::Revoked);
        }
        if self.expired {
            return Err(KeyRefusal::Expired);
        }
        match self.connection_status.as_deref().map(str::parse::<ConnectionStatus>) {
            None | Some(Ok(ConnectionStatus::Active)) => Ok(self.key),
            Some(Ok(status)) => Err(KeyRefusal::Connection(status)),
            // The column's CHECK constraint allows only the four names; anything else is
            // refused rather than trusted.
            Some(Err(_)) => Err(KeyRefusal::Connection(ConnectionStatus::Suspended)),
        }
    }
}

/// The lookup every check shares; expiry is judged by the database's clock, the same one
/// that stamped `expires_at`.
const LOOKUP: &str = "SELECT k.id, k.user_id, u.is_admin, k.can_read, k.can_stream,
        k.can_metadata, k.expires_at, k.connection_id,
        (k.revoked_at IS NOT NULL OR NOT k.active) AS revoked,
        (k.expires_at IS NOT NULL AND k.expires_at <= now()) AS expired,
        fc.status AS connection_status
    FROM api_keys k
    JOIN users u ON u.id = k.user_id
    LEFT JOIN federation_connections fc ON fc.id = k.connection_id";

/// A stored key as the admin API shows it: never the key itself, nor its hash.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub key_prefix: String,
    pub can_read: bool,
    pub can_stream: bool,
    pub can_metadata: bool,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's successor, once it has been rotated.
    pub replaced_by: Option<i64>,
    pub connection_id: Option<i64>,
}

impl ApiKeyRow {
    pub fn permissions(&self) -> Permissions {
        Permissions {
            can_read: self.can_read,
            can_stream: self.can_stream,
            can_metadata: self.can_metadata,
        }
    }

    /// `revoked`, `expired` or `active`, as of `now`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() || !self.active {
            "revoked"
        } else if self.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

const ROW_COLUMNS: &str = "id, user_id, name, key_prefix, can_read, can_stream, can_metadata,
    active, created_at, last_used_at, expires_at, revoked_at, replaced_by, connection_id";

/// Who a new key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOwner {
    /// The instance's administrators: the key may use the admin API.
    Admin,
    /// Everyone else (peers, players): catalog and stream access only.
    Member,
}

impl KeyOwner {
    fn user_name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "members",
        }
    }
}

/// A key to issue.
#[derive(Clone, Copy, Debug)]
pub struct NewKey<'a> {
    pub owner: KeyOwner,
    pub name: &'a str,
    pub permissions: Permissions,
    /// `None`: the key never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub connection_id: Option<i64>,
}

fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// 256 random bits from the operating system's CSPRNG, as 64 hex digits.
fn generate_key() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    SecretString::from(hex::encode(bytes))
}

/// Issues a new key that never expires. The clear key is returned once, here, and never
/// stored.
pub async fn create_api_key(
    pool: &PgPool,
    owner: KeyOwner,
    name: &str,
    permissions: Permissions,
) -> Result<(ApiKeyRow, SecretString), DbError> {
    let new = NewKey { owner, name, permissions, expires_at: None, connection_id: None };
    issue_key(pool, new).await
}

/// Issues a new key. The clear key is returned once, here, and never stored.
pub async fn issue_key(
    pool: &PgPool,
    new: NewKey<'_>,
) -> Result<(ApiKeyRow, SecretString), DbError> {
    let mut tx = pool.begin().await?;
    let issued = insert_key(&mut tx, new).await?;
    tx.commit().await?;
    Ok(issued)
}

/// Issues a key within the caller's transaction.
pub async fn insert_key(
    tx: &mut PgConnection,
    new: NewKey<'_>,
) -> Result<(ApiKeyRow, SecretString), DbError> {
    let key = generate_key();
    let prefix: String = key.expose_secret().chars().take(PREFIX_LEN).collect();

    let user_id: i64 = sqlx::query_scalar(
        "INSERT INTO users (name, is_admin) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET is_admin = EXCLUDED.is_admin
         RETURNING id",
    )
    .bind(new.owner.user_name())
    .bind(new.owner == KeyOwner::Admin)
    .fetch_one(&mut *tx)
    .await?;

    let row: ApiKeyRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (user_id, name, key_hash, key_prefix, can_read, can_stream,
                               can_metadata, expires_at, connection_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {ROW_COLUMNS}"
    )))
    .bind(user_id)
    .bind(new.name)
    .bind(hash_key(key.expose_secret()))
    .bind(&prefix)
    .bind(new.permissions.can_read)
    .bind(new.permissions.can_stream)
    .bind(new.permissions.can_metadata)
    .bind(new.expires_at)
    .bind(new.connection_id)
    .fetch_one(&mut *tx)
    .await?;

    Ok((row, key))
}

/// Finds the key matching `presented` and decides whether it is accepted. The lookup goes
/// through the hash's unique index, so the time it takes says nothing about how close a
/// guess was.
pub async fn authenticate(
    pool: &PgPool,
    presented: &str,
) -> Result<Result<AuthenticatedKey, KeyRefusal>, DbError> {
    let found: Option<KeyLookup> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{LOOKUP} WHERE k.key_hash = $1")))
            .bind(hash_key(presented))
            .fetch_optional(pool)
            .await?;
    Ok(found.ok_or(KeyRefusal::Unknown).and_then(KeyLookup::accept))
}

/// The key with this id, if it is still accepted: a signed stream URL names its key by
/// id, so that revoking the key (or its expiry) ends the URL too.
pub async fn find_usable_key(
    pool: &PgPool,
    id: i64,
) -> Result<Result<AuthenticatedKey, KeyRefusal>, DbError> {
    let found: Option<KeyLookup> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{LOOKUP} WHERE k.id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(found.ok_or(KeyRefusal::Unknown).and_then(KeyLookup::accept))
}

pub async fn get_api_key(pool: &PgPool, id: i64) -> Result<ApiKeyRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ROW_COLUMNS} FROM api_keys WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(DbError::NotFound)
}

/// One page of every key, oldest first, and how many there are.
pub async fn list_api_keys(
    pool: &PgPool,
    page: PageRequest,
) -> Result<(Vec<ApiKeyRow>, i64), DbError> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys").fetch_one(pool).await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLUMNS} FROM api_keys ORDER BY id LIMIT $1 OFFSET $2"
    )))
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(pool)
    .await?;
    Ok((rows, total))
}

/// Revokes a key at once. Revoking a revoked key changes nothing (it keeps its first
/// revocation time).
pub async fn revoke_api_key(pool: &PgPool, id: i64) -> Result<ApiKeyRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()), active = FALSE
         WHERE id = $1 RETURNING {ROW_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)
}

/// A key's successor, issued by `rotate_api_key`.
pub struct Rotation {
    pub successor: ApiKeyRow,
    /// The successor in clear: returned once, here.
    pub key: SecretString,
    /// When the rotated key stops working.
    pub predecessor_expires_at: DateTime<Utc>,
}

/// How long a successor lives, by the key it replaces.
#[derive(Clone, Copy, Debug)]
pub struct RotationPolicy {
    /// How long the rotated key keeps working beside its successor.
    pub grace: Duration,
    /// The lifetime of keys issued for federation connections (`None`: never expire).
    /// Other keys' successors live as long as the key they replace was meant to.
    pub connection_key_lifetime: Option<Duration>,
}

/// Issues the successor of key `id` (same owner, name, permissions and connection) and
/// ends the old key after the grace period, or at its own expiry if that comes first. A
/// key is rotated at most once: `None` when it already has a successor.
pub async fn rotate_api_key(
    pool: &PgPool,
    id: i64,
    policy: RotationPolicy,
) -> Result<Option<Rotation>, DbError> {
    let mut tx = pool.begin().await?;
    let old: ApiKeyRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(DbError::NotFound)?;
    if old.replaced_by.is_some() {
        return Ok(None);
    }
    let is_admin: bool = sqlx::query_scalar("SELECT is_admin FROM users WHERE id = $1")
        .bind(old.user_id)
        .fetch_one(&mut *tx)
        .await?;

    let now = Utc::now();
    let lifetime = match old.connection_id {
        Some(_) => policy.connection_key_lifetime,
        None => old.expires_at.map(|at| at - old.created_at),
    };
    let new = NewKey {
        owner: if is_admin { KeyOwner::Admin } else { KeyOwner::Member },
        name: &old.name,
        permissions: old.permissions(),
        expires_at: lifetime.map(|l| now + l),
        connection_id: old.connection_id,
    };
    let (successor, key) = insert_key(&mut tx, new).await?;

    let grace_end = now + policy.grace;
    let predecessor_expires_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE api_keys SET replaced_by = $2, expires_at = LEAST(expires_at, $3)
         WHERE id = $1 RETURNING expires_at",
    )
    .bind(id)
    .bind(successor.id)
    .bind(grace_end)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE federation_connections SET api_key_id = $2, updated_at = now()
         WHERE api_key_id = $1",
    )
    .bind(id)
    .bind(successor.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    Ok(Some(Rotation { successor, key, predecessor_expires_at }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_hex_digits_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(a.expose_secret().len(), 64);
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn the_hash_is_sha256() {
        assert_eq!(hash_key("abc").len(), 32);
        assert_ne!(hash_key("abc"), hash_key("abd"));
    }
}
