//! The admin API: key issuing, storage locations and scans. Only keys of admin users may call it.

use crate::GatewayState;
use crate::auth::AdminKeyAuth;
use crate::catalog::ApiTags;
use crate::error::{ApiError, connection_code};
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::collections::BTreeMap;
use url::Url;
use velour_core::{ConnectionStatus, Permissions, StorageType};
use velour_db::audit::{AuditFilter, AuditRow};
use velour_db::keys::{KeyOwner, NewKey};
use velour_db::locations::{LocationChanges, LocationRow, NewLocation};
use velour_db::scans::ScanRunRow;
use velour_peer::Pagination;
use velour_storage::s3::{S3Error, S3Settings};

/// What a key may do.
#[derive(Clone, Copy, Debug, Default, Object)]
pub struct KeyPermissions {
    /// Catalog reads.
    #[oai(default)]
    pub can_read: bool,
    /// Video bytes and thumbnails.
    #[oai(default)]
    pub can_stream: bool,
    /// Fingerprints and technical metadata.
    #[oai(default)]
    pub can_metadata: bool,
}

#[derive(Debug, Object)]
pub struct NewApiKey {
    /// A name to recognise the key by (who holds it).
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    #[oai(default)]
    pub permissions: KeyPermissions,
    /// When the key stops working (must be in the future); omit for a key that never
    /// expires.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct CreatedApiKey {
    pub id: i64,
    pub name: String,
    /// The key in clear. This is the only time it is shown: store it now.
    pub key: String,
    /// The key's first characters, to recognise it later.
    pub key_prefix: String,
    pub permissions: KeyPermissions,
    pub created_at: DateTime<Utc>,
    /// When the key stops working; null for a key that never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(ApiResponse)]
pub enum CreateKeyResponse {
    /// The key was issued.
    #[oai(status = 201)]
    Created(Json<CreatedApiKey>),
}

#[derive(Debug, Object)]
pub struct NewStorageLocation {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// `local`, `s3` or `velour`.
    pub storage_type: String,
    /// For `local`: `path` (absolute). For `velour`: `remote_instance_url`, `api_key` (the
    /// key the peer issued to us; stored apart and never shown again) and `instance_name`.
    /// For `s3`: `bucket`, `access_key_id`, `secret_access_key` (stored apart and never
    /// shown again), and optionally `region` (default `us-east-1`), `endpoint` (the base
    /// URL of an S3-compatible store), `prefix` (a folder in the bucket) and `path_style`
    /// (default true). The bucket must answer `HeadBucket` with these credentials.
    pub configuration: BTreeMap<String, Value>,
    /// Seconds between scheduled rescans (60 to 31536000); omit or null for a location
    /// scanned only on request.
    pub rescan_interval_secs: Option<i64>,
}

/// Changes to a storage location; what is omitted stays as it is. Any change resumes
/// scheduled rescans that stopped after the peer refused our key.
#[derive(Debug, Object)]
pub struct StorageLocationUpdate {
    /// A new name.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// Configuration fields to change, as on creation: the fields given replace the
    /// stored ones (secrets included, such as a new `api_key` from a peer that refused
    /// ours), null removes an optional one, the others keep their values; the result is
    /// checked as a new location would be. It cannot change while a scan of the location
    /// is queued or running (409 `scan-active`), and a peer's next scan reads its whole
    /// catalog.
    pub configuration: Option<BTreeMap<String, Value>>,
    /// Seconds between scheduled rescans (60 to 31536000); null stops them; omitted leaves
    /// the interval as it is.
    pub rescan_interval_secs: MaybeUndefined<i64>,
}

/// What deleting a storage location removed.
#[derive(Debug, Object)]
pub struct DeletedLocation {
    pub id: i64,
    pub videos_removed: u64,
    /// Works left without any video.
    pub works_removed: u64,
}

#[derive(Debug, Object)]
pub struct StorageLocation {
    pub id: i64,
    pub name: String,
    pub storage_type: String,
    /// The configuration without its secrets.
    pub configuration: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Seconds between scheduled rescans; null when the location is scanned only on
    /// request.
    pub rescan_interval_secs: Option<i32>,
    /// When the next scheduled rescan is due.
    pub next_scan_at: Option<DateTime<Utc>>,
    /// Scans that failed in a row; each pushes the next retry further out.
    pub scan_failures: i32,
    /// Why scheduled rescans stopped (the peer refused our key); changing the location
    /// resumes them.
    pub rescans_halted_reason: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreateLocationResponse {
    /// The location was created.
    #[oai(status = 201)]
    Created(Json<StorageLocation>),
}

#[derive(Debug, Object)]
pub struct ScanCountsJson {
    pub seen: i32,
    pub added: i32,
    pub updated: i32,
    pub removed: i32,
}

#[derive(Debug, Object)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Object)]
pub struct ScanRun {
    pub id: i64,
    pub storage_location_id: i64,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub state: String,
    pub works: ScanCountsJson,
    pub videos: ScanCountsJson,
    /// Files looked at and not indexed.
    pub videos_skipped: i64,
    /// The first skipped files with their reasons (at most 100).
    pub skipped: Vec<SkippedFile>,
    /// Why the scan failed.
    pub error: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(ApiResponse)]
pub enum ScanAccepted {
    /// The scan is queued (or joined the scan of this location already queued or running).
    #[oai(status = 202)]
    Accepted(Json<ScanRun>),
}

fn location_json(row: LocationRow) -> StorageLocation {
    StorageLocation {
        id: row.id,
        name: row.name,
        storage_type: row.storage_type,
        configuration: row.configuration.0,
        created_at: row.created_at,
        updated_at: row.updated_at,
        rescan_interval_secs: row.rescan_interval_secs,
        next_scan_at: row.next_scan_at,
        scan_failures: row.scan_failures,
        rescans_halted_reason: row.rescans_halted_reason,
    }
}

/// A rescan interval from a request, within the bounds the catalog accepts.
fn rescan_interval(secs: i64) -> Result<i32, ApiError> {
    use velour_db::rescans::{MAX_RESCAN_INTERVAL_SECS, MIN_RESCAN_INTERVAL_SECS};
    i32::try_from(secs)
        .ok()
        .filter(|s| (MIN_RESCAN_INTERVAL_SECS..=MAX_RESCAN_INTERVAL_SECS).contains(s))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-rescan-interval",
                format!(
                    "rescan_interval_secs must be between {MIN_RESCAN_INTERVAL_SECS} and \
                     {MAX_RESCAN_INTERVAL_SECS}"
                ),
            )
        })
}

fn scan_run_json(row: ScanRunRow, skipped: Vec<SkippedFile>) -> ScanRun {
    ScanRun {
        id: row.id,
        storage_location_id: row.storage_location_id,
        state: row.state,
        works: ScanCountsJson {
            seen: row.works_seen,
            added: row.works_added,
            updated: row.works_updated,
            removed: row.works_removed,
        },
        videos: ScanCountsJson {
            seen: row.videos_seen,
            added: row.videos_added,
            updated: row.videos_updated,
            removed: row.videos_removed,
        },
        videos_skipped: row.videos_skipped,
        skipped,
        error: row.error,
        queued_at: row.queued_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
    }
}

/// Issues a member's key as the admin API asks: checked name, permissions, optional expiry.
pub(crate) async fn issue_member_key(
    state: &GatewayState,
    body: NewApiKey,
) -> Result<CreateKeyResponse, ApiError> {
    let name = checked_text("name", &body.name)?;
    if body.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::bad_request("invalid-expiry", "expires_at must be in the future"));
    }
    let new = NewKey {
        owner: KeyOwner::Member,
        name,
        permissions: body.permissions.into(),
        expires_at: body.expires_at,
        connection_id: None,
    };
    let (row, key) = velour_db::keys::issue_key(&state.pool, new)
        .await
        .map_err(|e| ApiError::from_db(e, "key"))?;
    tracing::info!(api_key.id = row.id, api_key.prefix = %row.key_prefix, "api key issued");
    Ok(CreateKeyResponse::Created(Json(CreatedApiKey {
        id: row.id,
        name: row.name.clone(),
        key: key.expose_secret().to_owned(),
        key_prefix: row.key_prefix.clone(),
        permissions: row.permissions().into(),
        created_at: row.created_at,
        expires_at: row.expires_at,
    })))
}

impl From<KeyPermissions> for Permissions {
    fn from(p: KeyPermissions) -> Self {
        Self { can_read: p.can_read, can_stream: p.can_stream, can_metadata: p.can_metadata }
    }
}

impl From<Permissions> for KeyPermissions {
    fn from(p: Permissions) -> Self {
        Self { can_read: p.can_read, can_stream: p.can_stream, can_metadata: p.can_metadata }
    }
}

/// A peer location is scanned only with federation on and its connection, if it has one,
/// active.
async fn check_peer_scan_allowed(state: &GatewayState, location_id: i64) -> Result<(), ApiError> {
    state.require_federation()?;
    let status = velour_db::connections::status_for_location(&state.pool, location_id)
        .await
        .map_err(|e| ApiError::from_db(e, "connection"))?;
    match status {
        None | Some(ConnectionStatus::Active) => Ok(()),
        Some(status) => Err(ApiError::conflict(
            connection_code(status),
            format!("the peer's federation connection is {status}; activate it to scan"),
        )),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-configuration", message)
}

/// Text people typed: no control characters (Postgres cannot even store NUL), not blank.
pub(crate) fn checked_text<'a>(field: &str, value: &'a str) -> Result<&'a str, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::bad_request("invalid-text", format!("{field} must not be blank")));
    }
    if value.chars().any(char::is_control) {
        let message = format!("{field} must not contain control characters");
        return Err(ApiError::bad_request("invalid-text", message));
    }
    Ok(value)
}

fn required_str<'a>(config: &'a BTreeMap<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match config.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            checked_text(&format!("configuration.{field}"), s)
        }
        Some(_) => Err(invalid(format!("configuration.{field} must be a non-empty string"))),
        None => Err(invalid(format!("configuration.{field} is required"))),
    }
}

/// Splits a requested configuration into what may be shown and what must stay secret,
/// keeping only the fields each storage type knows.
fn validate_configuration(
    state: &GatewayState,
    storage_type: StorageType,
    config: &BTreeMap<String, Value>,
) -> Result<(Value, Value), ApiError> {
    match storage_type {
        StorageType::Local => {
            let path = required_str(config, "path")?;
            let parsed = std::path::Path::new(path);
            if !parsed.is_absolute() {
                return Err(invalid("configuration.path must be an absolute path"));
            }
            // One folder has one spelling, so two locations cannot index it twice over.
            if parsed.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(invalid("configuration.path must not contain .. components"));
            }
            // The gateway may not see the workers' disks (containers), so whether the folder
            // exists is checked by the scan, which reports it in the scan run's error.
            Ok((serde_json::json!({ "path": path }), serde_json::json!({})))
        }
        StorageType::Velour => {
            let raw_url = required_str(config, "remote_instance_url")?;
            let url = Url::parse(raw_url)
                .map_err(|_| invalid("configuration.remote_instance_url is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(invalid("configuration.remote_instance_url must be http(s)://host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(invalid("configuration.remote_instance_url must not hold credentials"));
            }
            state.require_https(&url, "configuration.remote_instance_url")?;
            let api_key = required_str(config, "api_key")?;
            // It travels in an Authorization header: visible ASCII only.
            if !api_key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "configuration.api_key must be printable ASCII without spaces",
                ));
            }
            let instance_name = match config.get("instance_name") {
                None | Some(Value::Null) => None,
                Some(Value::String(name)) if name.trim().is_empty() => None,
                Some(Value::String(name)) => {
                    Some(checked_text("configuration.instance_name", name)?.to_owned())
                }
                Some(_) => return Err(invalid("configuration.instance_name must be a string")),
            };
            let shown = serde_json::json!({
                "remote_instance_url": url.as_str(),
                "instance_name": instance_name,
            });
            Ok((shown, serde_json::json!({ "api_key": api_key })))
        }
        StorageType::S3 => {
            let fields: serde_json::Map<String, Value> = config.clone().into_iter().collect();
            let settings = S3Settings::from_request(&fields).map_err(|e| invalid(e.to_string()))?;
            Ok((settings.public_json(), settings.secrets_json()))
        }
    }
}

/// The configuration and secrets of location `id` once `fields` are applied to them (null
/// removes a field), checked as on creation, and the `updated_at` of the row they were
/// merged from.
async fn changed_configuration(
    state: &GatewayState,
    id: i64,
    fields: &BTreeMap<String, Value>,
) -> Result<((Value, Value), DateTime<Utc>), ApiError> {
    let current = velour_db::locations::get_location_with_secrets(&state.pool, &state.secrets, id)
        .await
        .map_err(|e| ApiError::from_db(e, "storage location"))?;
    let storage_type = current
        .location
        .kind()
        .ok_or_else(|| ApiError::internal(&format!("location {id} has an unknown storage type")))?;
    let stored = [&current.location.configuration.0, &current.secrets.0];
    let mut merged: BTreeMap<String, Value> = stored
        .into_iter()
        .filter_map(Value::as_object)
        .flat_map(|object| object.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    for (field, value) in fields {
        match value {
            Value::Null => merged.remove(field),
            value => merged.insert(field.clone(), value.clone()),
        };
    }

    let (configuration, secrets) = validate_configuration(state, storage_type, &merged)?;
    check_reachable(state, storage_type, &configuration, &secrets).await?;
    Ok(((configuration, secrets), current.location.updated_at))
}

/// Refuses, before it is stored, a location that could never be scanned: a bucket that
/// does not answer, a peer whose address is internal.
async fn check_reachable(
    state: &GatewayState,
    storage_type: StorageType,
    configuration: &Value,
    secrets: &Value,
) -> Result<(), ApiError> {
    match storage_type {
        StorageType::S3 => check_bucket(configuration, secrets).await,
        StorageType::Velour => check_peer_address(&state.peer_guard, configuration).await,
        StorageType::Local => Ok(()),
    }
}

/// The longest the gateway waits for a peer's name to resolve before it lets the location
/// through to the connect-time check.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A peer URL whose host is, or only resolves to, an internal address is refused with
/// 400 `internal-address` unless `VELOUR_PEER_ALLOWED_NETWORKS` allows it. The worker and
/// the stream service check every address again when they connect (a name can resolve
/// elsewhere later), so a name that does not resolve from here is let through.
async fn check_peer_address(
    guard: &velour_peer::AddressGuard,
    configuration: &Value,
) -> Result<(), ApiError> {
    let url = configuration["remote_instance_url"].as_str().and_then(|u| Url::parse(u).ok());
    let Some((host, port)) =
        url.as_ref().and_then(|u| Some((u.host()?, u.port_or_known_default()?)))
    else {
        return Err(invalid("configuration.remote_instance_url must be http(s)://host"));
    };
    let addresses: Vec<std::net::IpAddr> = match host {
        url::Host::Ipv4(v4) => vec![v4.into()],
        url::Host::Ipv6(v6) => vec![v6.into()],
        url::Host::Domain(name) => {
            let lookup = tokio::net::lookup_host((name, port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.map(|addr| addr.ip()).collect(),
                Ok(Err(err)) => {
                    tracing::info!(host = name, error = %err, "peer name does not resolve here");
                    return Ok(());
                }
                Err(_) => {
                    tracing::info!(host = name, "peer name did not resolve in time");
                    return Ok(());
                }
            }
        }
    };
    let refusals: Vec<_> = addresses.iter().filter_map(|addr| guard.check(*addr).err()).collect();
    match refusals.first() {
        Some(refused) if refusals.len() == addresses.len() => {
            Err(ApiError::bad_request("internal-address", refused.to_string()))
        }
        _ => Ok(()),
    }
}

/// A bucket location is reachable when `HeadBucket` succeeds with its credentials: a
/// location that cannot be scanned is refused now rather than failing every scan later.
async fn check_bucket(configuration: &Value, secrets: &Value) -> Result<(), ApiError> {
    let settings =
        S3Settings::from_stored(configuration, secrets).map_err(|e| invalid(e.to_string()))?;
    let Err(err) = velour_storage::s3::head_bucket(&settings.client(), &settings).await else {
        return Ok(());
    };
    tracing::warn!(bucket = %settings.bucket, error = %err, "bucket check failed");
    let message = match err {
        S3Error::NotFound(_) => "the bucket does not exist",
        S3Error::AccessDenied(_) => "the store refused these credentials for the bucket",
        S3Error::Unreachable(_) => "the store cannot be reached at this endpoint",
        S3Error::InvalidRange | S3Error::PreconditionFailed | S3Error::Failed(_) => {
            "the store failed to answer for the bucket"
        }
    };
    Err(ApiError::bad_request("storage-unreachable", message))
}

pub struct AdminApi;

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// Issues an API key. The answer holds the key in clear, once. Kept for existing
    /// clients: `POST /api/v1/admin/keys` does the same.
    #[oai(path = "/api_keys", method = "post", operation_id = "create_api_key", deprecated)]
    async fn create_api_key(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        body: Json<NewApiKey>,
    ) -> Result<CreateKeyResponse, ApiError> {
        issue_member_key(&state, body.0).await
    }

    /// Adds a folder, a bucket or a peer to the catalog's sources. A peer's `http://` URL
    /// answers 400 `https-required` while `FEDERATION_REQUIRE_HTTPS` is on.
    #[oai(path = "/storage_locations", method = "post", operation_id = "create_storage_location")]
    async fn create_location(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        body: Json<NewStorageLocation>,
    ) -> Result<CreateLocationResponse, ApiError> {
        let storage_type: StorageType = body.0.storage_type.parse().map_err(|e| {
            ApiError::bad_request("invalid-storage-type", format!("storage_type: {e}"))
        })?;
        let name = checked_text("name", &body.0.name)?;
        let rescan_interval_secs = body.0.rescan_interval_secs.map(rescan_interval).transpose()?;
        let (configuration, secrets) =
            validate_configuration(&state, storage_type, &body.0.configuration)?;
        check_reachable(&state, storage_type, &configuration, &secrets).await?;
        let new = NewLocation { name, storage_type, configuration, secrets, rescan_interval_secs };
        let row = velour_db::locations::create_location(&state.pool, &state.secrets, new)
            .await
            .map_err(|e| ApiError::from_db(e, "storage location"))?;
        tracing::info!(location.id = row.id, storage_type = %storage_type, "location created");
        Ok(CreateLocationResponse::Created(Json(location_json(row))))
    }

    /// Every storage location, oldest first.
    #[oai(path = "/storage_locations", method = "get", operation_id = "list_storage_locations")]
    async fn list_locations(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
    ) -> Result<Json<Vec<StorageLocation>>, ApiError> {
        let rows = velour_db::locations::list_locations(&state.pool)
            .await
            .map_err(|e| ApiError::from_db(e, "storage locations"))?;
        Ok(Json(rows.into_iter().map(location_json).collect()))
    }

    /// One storage location.
    #[oai(path = "/storage_locations/:id", method = "get", operation_id = "get_storage_location")]
    async fn get_location(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<StorageLocation>, ApiError> {
        let row = velour_db::locations::get_location(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "storage location"))?;
        Ok(Json(location_json(row)))
    }

    /// Changes a storage location: its name, its configuration (a peer's new key, a
    /// bucket's new credentials, a folder that moved) or its rescan schedule. Any update
    /// resumes scheduled rescans that stopped because the peer refused our key, and
    /// forgets past failures.
    #[oai(
        path = "/storage_locations/:id",
        method = "patch",
        operation_id = "update_storage_location"
    )]
    async fn update_location(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
        body: Json<StorageLocationUpdate>,
    ) -> Result<Json<StorageLocation>, ApiError> {
        let update = body.0;
        let rescan_interval_secs = match update.rescan_interval_secs {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(secs) => Some(Some(rescan_interval(secs)?)),
        };
        let name = update.name.as_deref().map(|name| checked_text("name", name)).transpose()?;
        // An empty object names no field to change: it is no new configuration.
        let fields = update.configuration.as_ref().filter(|fields| !fields.is_empty());
        let (configuration, based_on) = match fields {
            Some(fields) => {
                let (changed, based_on) = changed_configuration(&state, id.0, fields).await?;
                (Some(changed), Some(based_on))
            }
            None => (None, None),
        };

        let changes = LocationChanges { name, configuration, rescan_interval_secs, based_on };
        let row = velour_db::locations::update_location(&state.pool, &state.secrets, id.0, changes)
            .await
            .map_err(|e| ApiError::from_db(e, "storage location"))?;
        let reconfigured = fields.is_some();
        tracing::info!(location.id = row.id, reconfigured, "location updated");
        Ok(Json(location_json(row)))
    }

    /// Deletes a storage location with its videos and scan history; works left without
    /// any video go too, and peers learn of the videos' removal from their tombstones.
    /// 409 `scan-active` while a scan of it is queued or running.
    #[oai(
        path = "/storage_locations/:id",
        method = "delete",
        operation_id = "delete_storage_location"
    )]
    async fn delete_location(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<DeletedLocation>, ApiError> {
        let removed = velour_db::locations::delete_location(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "storage location"))?;
        state.hot.catalog_changed_here();
        tracing::info!(
            location.id = id.0,
            videos_removed = removed.videos_removed,
            works_removed = removed.works_removed,
            "location deleted"
        );
        Ok(Json(DeletedLocation {
            id: id.0,
            videos_removed: removed.videos_removed,
            works_removed: removed.works_removed,
        }))
    }

    /// Queues a scan of the location. A scan already queued or running there is joined
    /// rather than doubled. A peer is not scanned while federation is off (403
    /// `federation-disabled`) or while its connection is not active (409
    /// `connection-pending`, `connection-suspended` or `connection-rejected`).
    #[oai(path = "/storage_locations/:id/scans", method = "post", operation_id = "start_scan")]
    async fn start_scan(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<ScanAccepted, ApiError> {
        let location = velour_db::locations::get_location(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "storage location"))?;
        if location.kind() == Some(StorageType::Velour) {
            check_peer_scan_allowed(&state, id.0).await?;
        }
        let (run, created) = velour_db::scans::enqueue_scan_run(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "scan run"))?;
        if created {
            state.queue_scan(&run).await?;
        }
        tracing::info!(scan_run.id = run.id, location.id = id.0, created, "scan requested");
        Ok(ScanAccepted::Accepted(Json(scan_run_json(run, Vec::new()))))
    }

    /// One scan run: its state, what it counted and what it skipped.
    #[oai(path = "/scan_runs/:id", method = "get", operation_id = "get_scan_run")]
    async fn get_scan_run(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<ScanRun>, ApiError> {
        let run = velour_db::scans::get_scan_run(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "scan run"))?;
        let skipped = velour_db::scans::list_scan_skips(&state.pool, id.0, 100)
            .await
            .map_err(|e| ApiError::from_db(e, "scan run"))?
            .into_iter()
            .map(|s| SkippedFile { path: s.path, reason: s.reason })
            .collect();
        Ok(Json(scan_run_json(run, skipped)))
    }

    /// The audit log of federated requests (those made with non-admin keys), newest first.
    #[oai(path = "/audit", method = "get", operation_id = "list_audit_entries")]
    #[expect(
        clippy::too_many_arguments,
        reason = "poem-openapi documents each query parameter only as its own argument"
    )]
    async fn list_audit(
        &self,
        _auth: AdminKeyAuth,
        state: Data<&GatewayState>,
        /// Only requests made with this key.
        key_id: Query<Option<i64>>,
        /// Only requests made with keys of this federation connection.
        connection_id: Query<Option<i64>>,
        /// Only this action, e.g. `catalog.list_works` or `stream.video`.
        action: Query<Option<String>>,
        /// Only requests answered with this HTTP status.
        status: Query<Option<i32>>,
        /// RFC 3339: only requests at or after this instant.
        since: Query<Option<DateTime<Utc>>>,
        /// RFC 3339: only requests before this instant.
        until: Query<Option<DateTime<Utc>>>,
        /// Page number, from 1.
        page: Query<Option<i64>>,
        /// Entries per page, 1 to 100 (default 50).
        per_page: Query<Option<i64>>,
    ) -> Result<Json<AuditPage>, ApiError> {
        let page = velour_db::PageRequest::new(page.0, per_page.0)
            .map_err(|e| ApiError::bad_request("invalid-pagination", e.to_string()))?;
        let filter = AuditFilter {
            api_key_id: key_id.0,
            federation_connection_id: connection_id.0,
            action: action.0,
            status: status.0,
            since: since.0,
            until: until.0,
        };
        let (rows, total) = velour_db::audit::list_entries(&state.pool, &filter, page)
            .await
            .map_err(|e| ApiError::from_db(e, "audit entries"))?;
        Ok(Json(AuditPage {
            entries: rows.into_iter().map(audit_entry_json).collect(),
            pagination: Pagination {
                current_page: i64::from(page.page()),
                total_pages: page.total_pages(total),
                total_count: total,
            },
        }))
    }
}

/// One federated request.
#[derive(Debug, Object)]
pub struct AuditEntryJson {
    pub id: i64,
    /// The key the request was made with.
    pub key_id: i64,
    /// The federation connection that key was issued for, if any.
    pub connection_id: Option<i64>,
    /// What was asked, e.g. `catalog.list_works`, `stream.video`.
    pub action: String,
    /// The id the request was about (a video, a work), if any.
    pub target: Option<String>,
    /// The HTTP status answered.
    pub status: i32,
    /// Body bytes sent; for a stream, what went out before it ended or was cut off.
    pub bytes_sent: i64,
    /// When the request arrived.
    pub occurred_at: DateTime<Utc>,
}

/// `GET /api/v1/admin/audit`.
#[derive(Debug, Object)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryJson>,
    pub pagination: Pagination,
}

fn audit_entry_json(row: AuditRow) -> AuditEntryJson {
    AuditEntryJson {
        id: row.id,
        key_id: row.api_key_id,
        connection_id: row.federation_connection_id,
        action: row.action,
        target: row.target,
        status: row.status,
        bytes_sent: row.bytes_sent,
        occurred_at: row.occurred_at,
    }
}
