//! Secrets the instance keeps in its catalog, so that every replica of every service
//! sharing the database uses the same one without anybody configuring it.

use crate::DbError;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use velour_core::settings::SigningSettings;
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
