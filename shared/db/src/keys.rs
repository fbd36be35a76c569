//! API keys: issued once in clear, stored only as a SHA-256 hash.

use crate::DbError;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use velour_core::Permissions;

/// Characters of a key kept in clear so that people can tell their keys apart.
const PREFIX_LEN: usize = 8;

/// A key that was presented and found: who holds it and what it may do.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AuthenticatedKey {
    pub id: i64,
    pub user_id: i64,
    pub is_admin: bool,
    pub can_read: bool,
    pub can_stream: bool,
    pub can_metadata: bool,
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

/// A stored key as the admin API shows it: never the key itself.
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
}

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

fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// 256 random bits from the operating system's CSPRNG, as 64 hex digits.
fn generate_key() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    SecretString::from(hex::encode(bytes))
}

/// Issues a new key. The clear key is returned once, here, and never stored.
pub async fn create_api_key(
    pool: &PgPool,
    owner: KeyOwner,
    name: &str,
    permissions: Permissions,
) -> Result<(ApiKeyRow, SecretString), DbError> {
    let key = generate_key();
    let prefix: String = key.expose_secret().chars().take(PREFIX_LEN).collect();

    let mut tx = pool.begin().await?;
    let user_id: i64 = sqlx::query_scalar(
        "INSERT INTO users (name, is_admin) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET is_admin = EXCLUDED.is_admin
         RETURNING id",
    )
    .bind(owner.user_name())
    .bind(owner == KeyOwner::Admin)
    .fetch_one(&mut *tx)
    .await?;

    let row: ApiKeyRow = sqlx::query_as(
        "INSERT INTO api_keys (user_id, name, key_hash, key_prefix, can_read, can_stream,
                               can_metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, user_id, name, key_prefix, can_read, can_stream, can_metadata, active,
                   created_at",
    )
    .bind(user_id)
    .bind(name)
    .bind(hash_key(key.expose_secret()))
    .bind(&prefix)
    .bind(permissions.can_read)
    .bind(permissions.can_stream)
    .bind(permissions.can_metadata)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;

    Ok((row, key))
}

/// Finds the active key matching `presented`. The lookup goes through the hash's unique
/// index, so the time it takes says nothing about how close a guess was.
pub async fn authenticate(
    pool: &PgPool,
    presented: &str,
) -> Result<Option<AuthenticatedKey>, DbError> {
    let found = sqlx::query_as(
        "SELECT k.id, k.user_id, u.is_admin, k.can_read, k.can_stream, k.can_metadata
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = $1 AND k.active",
    )
    .bind(hash_key(presented))
    .fetch_optional(pool)
    .await?;
    Ok(found)
}

/// The key with this id if it is still active: a signed stream URL names its key by id,
/// so that deactivating the key ends the URL too.
pub async fn find_active_key(pool: &PgPool, id: i64) -> Result<Option<AuthenticatedKey>, DbError> {
    let found = sqlx::query_as(
        "SELECT k.id, k.user_id, u.is_admin, k.can_read, k.can_stream, k.can_metadata
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.id = $1 AND k.active",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(found)
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
