//! Secrets the instance keeps in its catalog, so that every replica of every service
//! sharing the database uses the same one without anybody configuring it; and the cipher
//! that keeps the secrets of storage locations sealed at rest.

use crate::DbError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use std::sync::Arc;
use tokio::sync::OnceCell;
use velour_core::settings::{PreviousSecretsKey, SecretsKey, SecretsSettings, SigningSettings};
use velour_core::signing::UrlSigner;

const URL_SIGNING: &str = "url_signing";

/// The signer for stream URLs: from `VELOUR_URL_SIGNING_SECRET` when set, otherwise from
/// the secret stored in the catalog, made (256 random bits) by whichever replica starts
/// first. A concurrent first start is settled by the primary key: one insert wins and
/// every replica reads the winner.
pub async fn url_signer(pool: &PgPool, settings: &SigningSettings) -> Result<UrlSigner, DbError> {
    let secret = match &settings.url_signing_secret {
        Some(configured) => configured.expose_secret().as_bytes().to_vec(),
        None => stored_secret(pool, URL_SIGNING).await?,
    };
    UrlSigner::new(secret).ok_or_else(|| {
        // Settings and the stored secret are both checked for length; a shorter one means
        // the row was edited by hand.
        DbError::Conflict("the URL signing secret is shorter than 32 bytes".to_owned())
    })
}

/// The secret kept under `name`, if there is one; nothing is made.
async fn existing_secret(pool: &PgPool, name: &str) -> Result<Option<Vec<u8>>, DbError> {
    Ok(sqlx::query_scalar("SELECT value FROM instance_secrets WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?)
}

async fn stored_secret(pool: &PgPool, name: &str) -> Result<Vec<u8>, DbError> {
    let fresh: [u8; 32] = rand::random();
    sqlx::query(
        "INSERT INTO instance_secrets (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(&fresh[..])
    .execute(pool)
    .await?;
    let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM instance_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok(value)
}

const SECRETS_KEY: &str = "secrets_key";

/// How sealed values start, so that a reader tells them from the plaintext objects of
/// older releases (a sealed value is a JSON string, a plaintext one an object) and a
/// future format from this one.
const SEALED_PREFIX: &str = "xchacha20poly1305:v1:";

/// Bound into every sealed value: a value sealed for another purpose does not open here.
const SEALED_AAD: &[u8] = b"velour storage_locations.secrets";

const NONCE_BYTES: usize = 24;

/// Seals and opens the secrets of storage locations (XChaCha20-Poly1305, a random nonce
/// per value). The key is `VELOUR_SECRETS_KEY` when set, otherwise a key kept in the
/// catalog (made by whichever service starts first), read once and then cached. A previous
/// key (`VELOUR_SECRETS_KEY_PREVIOUS`) opens what it sealed while the secrets are moved to
/// the current one. Cheap to clone; `Debug` shows no key.
#[derive(Clone, Default)]
pub struct SecretsCipher {
    inner: Arc<CipherInner>,
}

#[derive(Default)]
struct CipherInner {
    configured: Option<SecretsKey>,
    previous: Option<PreviousSecretsKey>,
    resolved: OnceCell<Keys>,
}

struct Keys {
    /// Seals, and opens first.
    current: XChaCha20Poly1305,
    /// Opens what the current key does not.
    previous: Option<XChaCha20Poly1305>,
}

fn aead_of(key: &[u8], whose: &str) -> Result<XChaCha20Poly1305, DbError> {
    XChaCha20Poly1305::new_from_slice(key)
        .map_err(|_| key_refused(&format!("{whose} is not 32 bytes long")))
}

impl std::fmt::Debug for SecretsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = if self.inner.configured.is_some() { "VELOUR_SECRETS_KEY" } else { "catalog" };
        f.debug_struct("SecretsCipher").field("key", &source).finish()
    }
}

impl SecretsCipher {
    /// The cipher the settings ask for.
    pub fn new(settings: &SecretsSettings) -> Self {
        Self::with_keys(settings.secrets_key.clone(), settings.previous_secrets_key.clone())
    }

    /// With `None`, the key kept in the catalog.
    pub fn with_key(key: Option<SecretsKey>) -> Self {
        Self::with_keys(key, None)
    }

    /// `key` seals (`None`: the key kept in the catalog); `previous` opens too.
    pub fn with_keys(key: Option<SecretsKey>, previous: Option<PreviousSecretsKey>) -> Self {
        let inner = CipherInner { configured: key, previous, resolved: OnceCell::new() };
        Self { inner: Arc::new(inner) }
    }

    async fn keys(&self, pool: &PgPool) -> Result<&Keys, DbError> {
        self.inner
            .resolved
            .get_or_try_init(|| async {
                let current = match &self.inner.configured {
                    Some(key) => aead_of(key.expose(), "VELOUR_SECRETS_KEY")?,
                    None => aead_of(
                        &stored_secret(pool, SECRETS_KEY).await?,
                        "the secrets key kept in the catalog",
                    )?,
                };
                let previous = match &self.inner.previous {
                    None => None,
                    Some(PreviousSecretsKey::Given(key)) => {
                        Some(aead_of(key.expose(), "VELOUR_SECRETS_KEY_PREVIOUS")?)
                    }
                    Some(PreviousSecretsKey::Catalog) if self.inner.configured.is_none() => {
                        return Err(key_refused(
                            "VELOUR_SECRETS_KEY_PREVIOUS is `catalog` but VELOUR_SECRETS_KEY \
                             is unset, so the catalog's key is the current one: set \
                             VELOUR_SECRETS_KEY to the key the secrets move to",
                        ));
                    }
                    // A catalog that never made a key of its own sealed nothing with one.
                    Some(PreviousSecretsKey::Catalog) => {
                        match existing_secret(pool, SECRETS_KEY).await? {
                            Some(key) => {
                                Some(aead_of(&key, "the secrets key kept in the catalog")?)
                            }
                            None => None,
                        }
                    }
                };
                Ok(Keys { current, previous })
            })
            .await
    }

    /// Seals `secrets` into the JSON string stored in place of them.
    pub(crate) async fn seal(&self, pool: &PgPool, secrets: &Value) -> Result<Value, DbError> {
        let aead = &self.keys(pool).await?.current;
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let plaintext = serde_json::to_vec(secrets)
            .map_err(|_| key_refused("the secrets could not be serialized"))?;
        let payload = Payload { msg: &plaintext, aad: SEALED_AAD };
        let sealed = aead
            .encrypt(&XNonce::from(nonce_bytes), payload)
            .map_err(|_| key_refused("the secrets could not be sealed"))?;
        let mut bytes = nonce_bytes.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(Value::String(format!("{SEALED_PREFIX}{}", BASE64.encode(bytes))))
    }

    /// Opens what `seal` stored. A plaintext object, as releases before sealing stored,
    /// is returned as it is (`seal_plaintext_secrets` reseals those at start).
    pub(crate) async fn open(&self, pool: &PgPool, stored: Value) -> Result<Value, DbError> {
        let Value::String(sealed) = stored else {
            return Ok(stored);
        };
        let keys = self.keys(pool).await?;
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b64| BASE64.decode(b64).ok())
            .filter(|bytes| bytes.len() > NONCE_BYTES)
            .ok_or_else(|| {
                key_refused("the stored secrets are not in a format this release reads")
            })?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().unwrap_or_default();
        let nonce = XNonce::from(nonce);
        let payload = || Payload { msg: ciphertext, aad: SEALED_AAD };
        let plaintext = keys
            .current
            .decrypt(&nonce, payload())
            .or_else(|_| match &keys.previous {
                Some(previous) => previous.decrypt(&nonce, payload()),
                None => Err(chacha20poly1305::aead::Error),
            })
            .map_err(|_| {
                key_refused(if keys.previous.is_some() {
                    "neither VELOUR_SECRETS_KEY nor VELOUR_SECRETS_KEY_PREVIOUS opens the \
                     secrets stored in the catalog: set one of them to the key they were \
                     sealed with"
                } else {
                    "VELOUR_SECRETS_KEY does not open the secrets stored in the catalog: \
                     set it to the key they were sealed with (or, while moving to a new \
                     key, set VELOUR_SECRETS_KEY_PREVIOUS to the old one)"
                })
            })?;
        serde_json::from_slice(&plaintext)
            .map_err(|_| key_refused("the stored secrets are not in a format this release reads"))
    }
}

/// The stable code of every failure to seal or open secrets.
pub const SECRETS_KEY_CODE: &str = "secrets-key-mismatch";

fn key_refused(message: &str) -> DbError {
    DbError::Refused { code: SECRETS_KEY_CODE, message: message.to_owned() }
}

/// Prepares the catalog's secrets for `cipher` at a service's start: seals any plaintext
/// secrets a release before sealing left (a migration cannot: it has no key), then checks
/// that the key opens the sealed secrets. Returns how many rows it sealed. Safe to run from
/// every service at once: a row is only replaced if it still holds what was read.
pub async fn prepare_location_secrets(
    pool: &PgPool,
    cipher: &SecretsCipher,
) -> Result<u64, DbError> {
    let plaintext: Vec<(i64, Json<Value>)> = sqlx::query_as(
        "SELECT id, secrets FROM storage_locations WHERE jsonb_typeof(secrets) <> 'string'",
    )
    .fetch_all(pool)
    .await?;
    let mut sealed = 0;
    for (id, Json(secrets)) in plaintext {
        let replacement = cipher.seal(pool, &secrets).await?;
        sealed +=
            sqlx::query("UPDATE storage_locations SET secrets = $2 WHERE id = $1 AND secrets = $3")
                .bind(id)
                .bind(Json(&replacement))
                .bind(Json(&secrets))
                .execute(pool)
                .await?
                .rows_affected();
    }

    // Opening one sealed row is enough: they are all sealed with the same key.
    let sample: Option<Json<Value>> = sqlx::query_scalar(
        "SELECT secrets FROM storage_locations WHERE jsonb_typeof(secrets) = 'string'
         ORDER BY id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(Json(stored)) = sample {
        cipher.open(pool, stored).await?;
    }
    Ok(sealed)
}

/// What `reseal_location_secrets` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Locations whose secrets are now sealed with the current key.
    pub locations: u64,
    /// Whether the key kept in the catalog was deleted.
    pub dropped_catalog_key: bool,
}

/// Moves every location's secrets to the cipher's current key (`velour secrets rekey`):
/// each is opened with the current or the previous key and sealed again with the current
/// one, all in one transaction, so that a secret nothing opens changes nothing. With
/// `drop_catalog_key` (only when `VELOUR_SECRETS_KEY` is set), the key the catalog kept for
/// itself is deleted in the same transaction: from then on a dump of the database holds no
/// key that opens its secrets.
pub async fn reseal_location_secrets(
    pool: &PgPool,
    cipher: &SecretsCipher,
    drop_catalog_key: bool,
) -> Result<Resealed, DbError> {
    if drop_catalog_key && cipher.inner.configured.is_none() {
        return Err(key_refused(
            "the catalog's own key seals the secrets while VELOUR_SECRETS_KEY is unset: it \
             cannot be dropped",
        ));
    }
    // Resolved before the transaction, which then holds the only connection it needs.
    cipher.keys(pool).await?;
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, Json<Value>)> =
        sqlx::query_as("SELECT id, secrets FROM storage_locations ORDER BY id FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
    let mut locations = 0;
    for (id, Json(stored)) in rows {
        let secrets = cipher.open(pool, stored).await?;
        let sealed = cipher.seal(pool, &secrets).await?;
        sqlx::query("UPDATE storage_locations SET secrets = $2 WHERE id = $1")
            .bind(id)
            .bind(Json(&sealed))
            .execute(&mut *tx)
            .await?;
        locations += 1;
    }
    let dropped_catalog_key = drop_catalog_key
        && sqlx::query("DELETE FROM instance_secrets WHERE name = $1")
            .bind(SECRETS_KEY)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
    tx.commit().await?;
    Ok(Resealed { locations, dropped_catalog_key })
}

/// The cipher a service runs with, once the catalog's secrets are ready for it (see
/// `prepare_location_secrets`). Fails when the key does not open the stored secrets.
pub async fn location_cipher(
    pool: &PgPool,
    settings: &SecretsSettings,
) -> Result<SecretsCipher, DbError> {
    let cipher = SecretsCipher::new(settings);
    // Settings that make no key (`catalog` as both) fail here, with or without secrets.
    cipher.keys(pool).await?;
    let sealed = prepare_location_secrets(pool, &cipher).await?;
    if sealed > 0 {
        tracing::info!(locations = sealed, "sealed plaintext location secrets");
    }
    Ok(cipher)
}
