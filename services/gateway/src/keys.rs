//! Keys: a holder's view of its own key and its rotation, and the admin API that lists,
//! shows, issues and revokes keys. Neither ever shows a key's hash; a clear key is shown
//! once, when it is issued.

use crate::GatewayState;
use crate::admin::{CreateKeyResponse, KeyPermissions, NewApiKey, issue_member_key};
use crate::auth::{AdminKeyAuth, ApiKeyAuth};
use crate::catalog::{ApiTags, page_request, pagination};
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use secrecy::ExposeSecret;
use velour_db::keys::{ApiKeyRow, RotationPolicy};
use velour_peer::{KeyPermissionsWire, KeySelf, Pagination, RotatedKey};

/// A key as administrators see it.
#[derive(Debug, Object)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    /// The key's first characters, to recognise it.
    pub key_prefix: String,
    pub permissions: KeyPermissions,
    /// `active`, `expired` or `revoked`, as of the request.
    pub state: String,
    pub created_at: DateTime<Utc>,
    /// When the key stops (or stopped) working; null for a key that never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's successor, once its holder rotated it.
    pub replaced_by: Option<i64>,
    /// The federation connection the key was issued for.
    pub connection_id: Option<i64>,
}

/// `GET /api/v1/admin/keys`.
#[derive(Debug, Object)]
pub struct KeysPage {
    pub keys: Vec<ApiKey>,
    pub pagination: Pagination,
}

#[derive(ApiResponse)]
pub enum RotateResponse {
    /// The successor was issued; the key that asked keeps working until
    /// `previous_key_expires_at`.
    #[oai(status = 201)]
    Created(Json<RotatedKey>),
}

fn api_key_json(row: ApiKeyRow) -> ApiKey {
    ApiKey {
        id: row.id,
        state: row.state(Utc::now()).to_owned(),
        permissions: row.permissions().into(),
        name: row.name,
        key_prefix: row.key_prefix,
        created_at: row.created_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
        replaced_by: row.replaced_by,
        connection_id: row.connection_id,
    }
}

fn wire_permissions(row: &ApiKeyRow) -> KeyPermissionsWire {
    KeyPermissionsWire {
        can_read: row.can_read,
        can_stream: row.can_stream,
        can_metadata: row.can_metadata,
    }
}

/// What any valid key may ask about itself.
pub struct KeysApi;

#[OpenApi(prefix_path = "/api/v1/keys", tag = "ApiTags::Keys")]
impl KeysApi {
    /// The caller's own key: its id, permissions and expiry. Peers read this to decide
    /// when to rotate.
    #[oai(path = "/self", method = "get", operation_id = "get_own_key")]
    async fn own_key(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
    ) -> Result<Json<KeySelf>, ApiError> {
        let row = velour_db::keys::get_api_key(&state.pool, auth.0.id)
            .await
            .map_err(|e| ApiError::from_db(e, "key"))?;
        Ok(Json(KeySelf {
            id: row.id,
            permissions: wire_permissions(&row),
            key_prefix: row.key_prefix,
            expires_at: row.expires_at,
            replaced_by: row.replaced_by,
        }))
    }

    /// Issues the caller's successor key (same owner, permissions and federation
    /// connection), in clear this once. The key that asked keeps working for
    /// `FEDERATION_KEY_ROTATION_GRACE_HOURS` (or until its own expiry, if sooner), so the
    /// holder can switch without an outage. A key is rotated once: asking again answers
    /// 409 `key-already-rotated`.
    #[oai(path = "/rotate", method = "post", operation_id = "rotate_own_key")]
    async fn rotate(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
    ) -> Result<RotateResponse, ApiError> {
        let policy = RotationPolicy {
            grace: state.federation.rotation_grace(),
            connection_key_lifetime: state.federation.token_lifetime(),
        };
        let rotation = velour_db::keys::rotate_api_key(&state.pool, auth.0.id, policy)
            .await
            .map_err(|e| ApiError::from_db(e, "key"))?
            .ok_or_else(|| {
                ApiError::conflict(
                    "key-already-rotated",
                    "this key was already rotated; use its successor",
                )
            })?;
        let new = rotation.successor;
        tracing::info!(
            api_key.id = auth.0.id,
            successor.id = new.id,
            successor.prefix = %new.key_prefix,
            "api key rotated"
        );
        Ok(RotateResponse::Created(Json(RotatedKey {
            id: new.id,
            key: rotation.key.expose_secret().to_owned(),
            permissions: wire_permissions(&new),
            key_prefix: new.key_prefix,
            expires_at: new.expires_at,
            previous_key_id: auth.0.id,
            previous_key_expires_at: rotation.predecessor_expires_at,
        })))
    }
}

/// Keys, for administrators.
pub struct AdminKeysApi;

#[OpenApi(prefix_path = "/api/v1/admin/keys", tag = "ApiTags::Admin")]
impl AdminKeysApi {
    /// Issues an API key, optionally with an expiry. The answer holds the key in clear,
    /// once.
    #[oai(path = "/", method = "post", operation_id = "create_key")]
    async fn create(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        body: Json<NewApiKey>,
    ) -> Result<CreateKeyResponse, ApiError> {
        issue_member_key(&state, body.0).await
    }

    /// Every key, oldest first.
    #[oai(path = "/", method = "get", operation_id = "list_keys")]
    async fn list(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        /// Page number, from 1.
        page: Query<Option<i64>>,
        /// Keys per page, 1 to 100 (default 50).
        per_page: Query<Option<i64>>,
    ) -> Result<Json<KeysPage>, ApiError> {
        let page = page_request(page.0, per_page.0)?;
        let (rows, total) = velour_db::keys::list_api_keys(&state.pool, page)
            .await
            .map_err(|e| ApiError::from_db(e, "keys"))?;
        Ok(Json(KeysPage {
            keys: rows.into_iter().map(api_key_json).collect(),
            pagination: pagination(page, total),
        }))
    }

    /// One key.
    #[oai(path = "/:id", method = "get", operation_id = "get_key")]
    async fn get(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<ApiKey>, ApiError> {
        let row = velour_db::keys::get_api_key(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "key"))?;
        Ok(Json(api_key_json(row)))
    }

    /// Revokes a key at once: every request with it, and every signed stream URL made for
    /// it, is refused from now on (401 `key-revoked`). Revoking it again changes nothing.
    #[oai(path = "/:id", method = "delete", operation_id = "revoke_key")]
    async fn revoke(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<ApiKey>, ApiError> {
        let row = velour_db::keys::revoke_api_key(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "key"))?;
        tracing::info!(api_key.id = row.id, "api key revoked");
        Ok(Json(api_key_json(row)))
    }
}
