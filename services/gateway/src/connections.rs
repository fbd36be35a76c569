//! Federation connections, for administrators: the key we issued to a peer, tied to the
//! `velour` storage location through which we read that peer, with a status that decides
//! whether either is used.

use crate::GatewayState;
use crate::admin::{KeyPermissions, checked_text};
use crate::auth::AdminKeyAuth;
use crate::catalog::{ApiTags, page_request, pagination};
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use secrecy::ExposeSecret;
use url::Url;
use velour_core::{ConnectionStatus, Permissions, StorageType};
use velour_db::connections::{ConnectionKey, ConnectionRow, NewConnection};
use velour_jobs::TestConnection;
use velour_peer::Pagination;

/// The outcome of the last test of a connection.
#[derive(Debug, Object)]
pub struct ConnectionTestResult {
    /// Whether the peer answered at all, even to refuse our key. The test passed when it
    /// is reachable and `error` is null (it answered `/api/v1/ping` and
    /// `/api/v1/instance` with our key).
    pub reachable: bool,
    /// Milliseconds the ping took, when it answered.
    pub latency_ms: Option<i32>,
    /// The version the peer reports in `/api/v1/instance`.
    pub peer_version: Option<String>,
    /// Why the test failed.
    pub error: Option<String>,
    pub tested_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct FederationConnection {
    pub id: i64,
    /// The peer's base URL.
    pub remote_instance_url: String,
    /// `pending`, `active`, `suspended` or `rejected`. Only an active connection's key is
    /// accepted and only its location is scanned.
    pub status: String,
    /// The key we issued to the peer (its current one, after rotations).
    pub api_key_id: i64,
    /// When that key expires; null when it never does.
    pub api_key_expires_at: Option<DateTime<Utc>>,
    /// The `velour` storage location through which we read the peer.
    pub storage_location_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The last test's outcome; null until a test has run.
    pub last_test: Option<ConnectionTestResult>,
}

#[derive(Debug, Object)]
pub struct NewFederationConnection {
    /// The peer's base URL, `http(s)://host[:port][/prefix]`.
    #[oai(validator(min_length = 1, max_length = 2000))]
    pub remote_instance_url: String,
    /// The `velour` storage location through which we read this peer.
    pub storage_location_id: Option<i64>,
    /// A key already issued to the peer (a member's key, not revoked, not tied to another
    /// connection). Omit it to have a key issued now and returned once.
    pub api_key_id: Option<i64>,
    /// The name of the key issued now (default: `peer <remote_instance_url>`).
    #[oai(validator(max_length = 200))]
    pub key_name: Option<String>,
    /// The permissions of the key issued now (default: read, stream and metadata). Its
    /// expiry is `FEDERATION_TOKEN_EXPIRY_HOURS` from now (never, when 0).
    pub permissions: Option<KeyPermissions>,
}

#[derive(Debug, Object)]
pub struct CreatedFederationConnection {
    #[oai(flatten)]
    pub connection: FederationConnection,
    /// The key issued for the peer, in clear: shown this once. Null when an existing key
    /// was given.
    pub key: Option<String>,
    /// When the issued key expires; null when it never does.
    pub key_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct ConnectionUpdate {
    /// The new status. Allowed: pending → active or rejected; active → suspended;
    /// suspended → active or rejected. Others answer 409 `invalid-status-transition`.
    pub status: String,
}

/// `GET /api/v1/admin/federation_connections`.
#[derive(Debug, Object)]
pub struct ConnectionsPage {
    pub connections: Vec<FederationConnection>,
    pub pagination: Pagination,
}

/// What deleting a connection removed.
#[derive(Debug, Object)]
pub struct DeletedConnection {
    pub id: i64,
    /// The connection's key and any predecessor still in its rotation grace period.
    pub keys_revoked: u64,
    pub videos_removed: u64,
    /// Works left without any video.
    pub works_removed: u64,
}

#[derive(ApiResponse)]
pub enum CreateConnectionResponse {
    /// The connection was created, `pending`.
    #[oai(status = 201)]
    Created(Json<CreatedFederationConnection>),
}

#[derive(ApiResponse)]
pub enum TestQueued {
    /// The test is queued; its outcome appears in `last_test` once a worker ran it.
    #[oai(status = 202)]
    Accepted(Json<FederationConnection>),
}

pub(crate) fn connection_json(row: ConnectionRow) -> FederationConnection {
    let last_test = row.last_tested_at.map(|tested_at| ConnectionTestResult {
        reachable: row.last_test_reachable.unwrap_or(false),
        latency_ms: row.last_test_latency_ms,
        peer_version: row.last_test_peer_version.clone(),
        error: row.last_test_error.clone(),
        tested_at,
    });
    FederationConnection {
        id: row.id,
        remote_instance_url: row.remote_instance_url,
        status: row.status,
        api_key_id: row.api_key_id,
        api_key_expires_at: row.api_key_expires_at,
        storage_location_id: row.storage_location_id,
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_test,
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-connection", message)
}

/// A peer's base URL: http(s) with a host and no credentials.
fn peer_url(raw: &str) -> Result<Url, ApiError> {
    let raw = checked_text("remote_instance_url", raw)?;
    let url = Url::parse(raw).map_err(|_| invalid("remote_instance_url is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid("remote_instance_url must be http(s)://host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("remote_instance_url must not hold credentials"));
    }
    Ok(url)
}

/// The location must exist and read a peer.
async fn check_peer_location(state: &GatewayState, id: i64) -> Result<(), ApiError> {
    let location = velour_db::locations::get_location(&state.pool, id)
        .await
        .map_err(|e| ApiError::from_db(e, "storage location"))?;
    if location.kind() != Some(StorageType::Velour) {
        return Err(invalid("storage_location_id must name a velour (peer) location"));
    }
    Ok(())
}

pub struct ConnectionsApi;

#[OpenApi(prefix_path = "/api/v1/admin/federation_connections", tag = "ApiTags::Admin")]
impl ConnectionsApi {
    /// Creates a pending connection with a peer. Without `api_key_id`, a key is issued
    /// for the peer and returned in clear, once. 403 `federation-disabled` when
    /// `FEDERATION_ENABLED` is false; 400 `https-required` for an `http://` URL while
    /// `FEDERATION_REQUIRE_HTTPS` is on.
    #[oai(path = "/", method = "post", operation_id = "create_federation_connection")]
    async fn create(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        body: Json<NewFederationConnection>,
    ) -> Result<CreateConnectionResponse, ApiError> {
        state.require_federation()?;
        let body = body.0;
        let url = peer_url(&body.remote_instance_url)?;
        state.require_https(&url, "remote_instance_url")?;
        if let Some(location_id) = body.storage_location_id {
            check_peer_location(&state, location_id).await?;
        }
        let name: String = match &body.key_name {
            Some(name) => checked_text("key_name", name)?.to_owned(),
            None => format!("peer {}", url.as_str()).chars().take(200).collect(),
        };
        let expires_at = state.federation.token_lifetime().map(|l| Utc::now() + l);
        let key = match body.api_key_id {
            Some(id) => ConnectionKey::Existing(id),
            None => ConnectionKey::Issue {
                name: &name,
                permissions: body.permissions.map_or(
                    Permissions { can_read: true, can_stream: true, can_metadata: true },
                    Permissions::from,
                ),
                expires_at,
            },
        };
        let new = NewConnection {
            remote_instance_url: url.as_str(),
            storage_location_id: body.storage_location_id,
            key,
        };
        let (row, clear_key) = velour_db::connections::create_connection(&state.pool, new)
            .await
            .map_err(|e| ApiError::from_db(e, "api key"))?;
        tracing::info!(connection.id = row.id, api_key.id = row.api_key_id, "connection created");
        let key_expires_at = clear_key.as_ref().and(expires_at);
        Ok(CreateConnectionResponse::Created(Json(CreatedFederationConnection {
            connection: connection_json(row),
            key: clear_key.map(|k| k.expose_secret().to_owned()),
            key_expires_at,
        })))
    }

    /// Every connection, oldest first.
    #[oai(path = "/", method = "get", operation_id = "list_federation_connections")]
    async fn list(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        /// Page number, from 1.
        page: Query<Option<i64>>,
        /// Connections per page, 1 to 100 (default 50).
        per_page: Query<Option<i64>>,
    ) -> Result<Json<ConnectionsPage>, ApiError> {
        state.require_federation()?;
        let page = page_request(page.0, per_page.0)?;
        let (rows, total) = velour_db::connections::list_connections(&state.pool, page)
            .await
            .map_err(|e| ApiError::from_db(e, "connections"))?;
        Ok(Json(ConnectionsPage {
            connections: rows.into_iter().map(connection_json).collect(),
            pagination: pagination(page, total),
        }))
    }

    /// One connection, with its last test's outcome.
    #[oai(path = "/:id", method = "get", operation_id = "get_federation_connection")]
    async fn get(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<FederationConnection>, ApiError> {
        state.require_federation()?;
        let row = velour_db::connections::get_connection(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "connection"))?;
        Ok(Json(connection_json(row)))
    }

    /// Changes a connection's status. Activating one past `MAX_FEDERATED_CONNECTIONS`
    /// answers 409 `connection-limit-reached`; a transition not allowed answers 409
    /// `invalid-status-transition`.
    #[oai(path = "/:id", method = "patch", operation_id = "update_federation_connection")]
    async fn update(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
        body: Json<ConnectionUpdate>,
    ) -> Result<Json<FederationConnection>, ApiError> {
        state.require_federation()?;
        let to: ConnectionStatus = body
            .0
            .status
            .parse()
            .map_err(|e| ApiError::bad_request("invalid-status", format!("status: {e}")))?;
        let max = state.federation.max_connections;
        let row = velour_db::connections::set_status(&state.pool, id.0, to, max)
            .await
            .map_err(|e| ApiError::from_db(e, "connection"))?;
        tracing::info!(connection.id = row.id, status = %to, "connection status set");
        Ok(Json(connection_json(row)))
    }

    /// Deletes a connection in one transaction: its keys are revoked, and the peer's
    /// videos, the works left without videos and the peer's storage location are removed
    /// from our catalog.
    #[oai(path = "/:id", method = "delete", operation_id = "delete_federation_connection")]
    async fn delete(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<DeletedConnection>, ApiError> {
        state.require_federation()?;
        let deleted = velour_db::connections::delete_connection(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "connection"))?;
        state.hot.catalog_changed_here();
        tracing::info!(
            connection.id = id.0,
            keys_revoked = deleted.keys_revoked,
            videos_removed = deleted.videos_removed,
            works_removed = deleted.works_removed,
            "connection deleted"
        );
        Ok(Json(DeletedConnection {
            id: id.0,
            keys_revoked: deleted.keys_revoked,
            videos_removed: deleted.videos_removed,
            works_removed: deleted.works_removed,
        }))
    }

    /// Queues a test of the connection: a worker pings the peer and reads its
    /// `/api/v1/instance` through the connection's location, and stores the outcome. 409
    /// `connection-has-no-location` when there is no location to reach the peer through.
    #[oai(path = "/:id/test", method = "post", operation_id = "test_federation_connection")]
    async fn test(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<TestQueued, ApiError> {
        state.require_federation()?;
        let row = velour_db::connections::get_connection(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "connection"))?;
        if row.storage_location_id.is_none() {
            return Err(ApiError::conflict(
                "connection-has-no-location",
                "the connection has no storage location to reach the peer through",
            ));
        }
        let mut storage = state.connection_tests.clone();
        let job = TestConnection { connection_id: row.id };
        if let Err(err) = velour_jobs::push_connection_test(&mut storage, job).await {
            tracing::error!(connection.id = row.id, error = %err, "could not queue a test");
            return Err(ApiError::unavailable(
                "queue-unavailable",
                "the job queue is unavailable; try again shortly",
            ));
        }
        tracing::info!(connection.id = row.id, "connection test queued");
        Ok(TestQueued::Accepted(Json(connection_json(row))))
    }
}
