//! The stream service: a video's bytes, with HTTP range requests, from the local folder or
//! the peer that holds it.
//!
//! The gateway documents and relays the public API; this service answers
//! `GET`/`HEAD /api/v1/videos/:id/stream` and checks the caller's key itself, so it is safe
//! to reach directly too.

mod auth;
mod error;
mod local;
mod metered;
mod peer;
mod s3;
#[cfg(test)]
mod tests;
mod thumbnail;

use anyhow::Context;
use error::StreamError;
use poem::http::{HeaderMap, HeaderName, header};
use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, handler};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::instrument;
use velour_core::StorageType;
use velour_core::settings::{
    AssetSettings, DatabaseSettings, FederationSettings, PeerSettings, SigningSettings,
    StreamAddrSettings, redact_url,
};
use velour_core::signing::UrlSigner;
use velour_db::DbError;
use velour_db::catalog::VideoRow;
use velour_db::hot::HotRows;
use velour_db::locations::LocationWithSecrets;
use velour_db::secrets::SecretsCipher;
use velour_storage::{AssetStore, RangeSet};

/// How long a shutdown waits for open streams. A film can take hours to watch, so open
/// streams are cut after this; players resume with a range request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The stream service's settings, as flags and environment variables.
#[derive(clap::Parser, Clone, Debug)]
#[command(name = "velour-stream", version, about = "Velour's stream service")]
pub struct StreamCli {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub addr: StreamAddrSettings,
    #[command(flatten)]
    pub peer: PeerSettings,
    #[command(flatten)]
    pub signing: SigningSettings,
    #[command(flatten)]
    pub assets: AssetSettings,
    #[command(flatten)]
    pub federation: FederationSettings,
}

/// What every request needs: the catalog and one HTTP client shared by all peers.
#[derive(Clone)]
pub struct StreamState {
    pool: PgPool,
    http: reqwest::Client,
    peer: PeerSettings,
    /// Checks signed stream URLs; without it only `Authorization` is accepted.
    signer: Option<UrlSigner>,
    /// Where the worker keeps thumbnails.
    assets: AssetStore,
    /// Clients of bucket locations, kept between requests.
    s3_clients: s3::S3Clients,
    /// Opens the secrets of locations.
    secrets: SecretsCipher,
    /// Keys and locations kept in memory between requests.
    hot: HotRows,
}

impl StreamState {
    pub fn new(pool: PgPool, peer: PeerSettings, assets: AssetStore) -> anyhow::Result<Self> {
        let http = velour_peer::http_client(&peer).context("could not build the peer client")?;
        let s3_clients = s3::S3Clients::default();
        let secrets = SecretsCipher::default();
        let hot = HotRows::start(&pool);
        Ok(Self { pool, http, peer, signer: None, assets, s3_clients, secrets, hot })
    }

    /// Accepts signed stream URLs checked with `signer`.
    pub fn with_signer(mut self, signer: UrlSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Opens location secrets with `secrets` (by default, the key kept in the catalog).
    pub fn with_secrets(mut self, secrets: SecretsCipher) -> Self {
        self.secrets = secrets;
        self
    }
}

/// The service's routes, ready for `poem::Server` (or `poem::test::TestClient`).
pub fn app(state: StreamState) -> impl Endpoint + 'static {
    Route::new()
        .at("/api/v1/videos/:id/stream", poem::get(stream_video).head(stream_video))
        .at("/api/v1/videos/:id/thumbnail", poem::get(video_thumbnail).head(video_thumbnail))
        .at("/healthz", poem::get(healthz))
        .data(state)
        .catch_all_error(error::routing_error)
        .around(velour_telemetry::trace_request)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: StreamState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("the listener has no address")?;
    let acceptor = TcpAcceptor::from_tokio(listener).context("could not accept on the listener")?;
    tracing::info!(%addr, "stream service listening");
    velour_http::serve(acceptor, app(state), shutdown, SHUTDOWN_GRACE).await;
    tracing::info!("stream service stopped");
    Ok(())
}

/// Opens the catalog (migrating it), binds `VELOUR_STREAM_ADDR` and serves until
/// `shutdown` resolves. Takes references like the gateway's `run`, so that one set of
/// settings can start several services.
pub async fn run(
    db: &DatabaseSettings,
    addr: &StreamAddrSettings,
    peer: &PeerSettings,
    signing: &SigningSettings,
    assets: &AssetSettings,
    federation: &FederationSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let assets = AssetStore::from_settings(assets)?;
    let pool = velour_db::connect_and_migrate(db).await.with_context(|| {
        format!("could not open the catalog at {} (DATABASE_URL)", redact_url(&db.database_url))
    })?;
    let signer = velour_db::secrets::url_signer(&pool, signing)
        .await
        .context("could not load the URL signing secret (VELOUR_URL_SIGNING_SECRET)")?;
    let secrets = velour_db::secrets::location_cipher(&pool, &db.secrets)
        .await
        .context("VELOUR_SECRETS_KEY: the secrets of storage locations cannot be opened")?;
    let peer = peer.clone().with_require_https(federation);
    let state = StreamState::new(pool, peer, assets)?.with_signer(signer).with_secrets(secrets);
    let listener = TcpListener::bind(addr.stream_addr).await.with_context(|| {
        format!("could not listen on {} (VELOUR_STREAM_ADDR)", addr.stream_addr)
    })?;
    serve(listener, state, shutdown).await
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn stream_video(req: &Request, Data(state): Data<&StreamState>) -> Response {
    // A malformed id names no video: the same 404 as an unknown one.
    let Some(id) = req.raw_path_param("id").and_then(|raw| raw.parse::<i64>().ok()) else {
        return StreamError::NotFound.into_response();
    };
    find_and_stream(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

#[handler]
async fn video_thumbnail(req: &Request, Data(state): Data<&StreamState>) -> Response {
    let Some(id) = req.raw_path_param("id").and_then(|raw| raw.parse::<i64>().ok()) else {
        return StreamError::NotFound.into_response();
    };
    thumbnail::serve(state, id, req).await.unwrap_or_else(IntoResponse::into_response)
}

/// Checks the caller may have video `id`, then finds it and the location holding it. The
/// caller's span gets the key's id.
pub(crate) async fn authorized_video(
    state: &StreamState,
    id: i64,
    req: &Request,
) -> Result<(VideoRow, LocationWithSecrets), StreamError> {
    let key = auth::authorize(state, id, req).await?;
    tracing::Span::current().record("api_key.id", key.id);

    let video = state.hot.video(&state.pool, id).await.map_err(not_found_or_internal)?;
    let location = state
        .hot
        .location(&state.pool, &state.secrets, video.storage_location_id)
        .await
        .map_err(not_found_or_internal)?;
    Ok((video, location))
}

#[instrument(skip_all, fields(video.id = id, http.method = %req.method(), api_key.id))]
async fn find_and_stream(
    state: &StreamState,
    id: i64,
    req: &Request,
) -> Result<Response, StreamError> {
    let (video, location) = authorized_video(state, id, req).await?;
    match serve_from(state, &video, &location, req).await {
        Err(err) if err.is_source_failure() => {
            serve_from_another_source(state, &video, req, err).await
        }
        answered => answered,
    }
}

/// Sources tried after the one asked for has failed: enough to ride out a peer or two
/// being down, few enough that a request for a lost video fails quickly.
const MAX_OTHER_SOURCES: i64 = 3;

/// The video's source failed before sending anything: the same content (same size and
/// fingerprint) from another location, if one answers. Otherwise the first failure.
async fn serve_from_another_source(
    state: &StreamState,
    video: &VideoRow,
    req: &Request,
    failure: StreamError,
) -> Result<Response, StreamError> {
    let others =
        match velour_db::catalog::other_sources(&state.pool, video, MAX_OTHER_SOURCES).await {
            Ok(others) => others,
            Err(err) => {
                tracing::error!(error = %err, "could not look for other sources");
                return Err(failure);
            }
        };
    for other in others {
        let location =
            state.hot.location(&state.pool, &state.secrets, other.storage_location_id).await;
        let Ok(location) = location else {
            continue;
        };
        match serve_from(state, &other, &location, req).await {
            Ok(response) => {
                tracing::info!(source.video.id = other.id, "served from another source");
                return Ok(response);
            }
            Err(err) if err.is_source_failure() => {
                tracing::warn!(source.video.id = other.id, error = ?err, "other source failed");
            }
            // An answer about the request itself (a range, a precondition) is the answer.
            Err(err) => return Err(err),
        }
    }
    Err(failure)
}

/// Answers from one source: the location holding `video`.
async fn serve_from(
    state: &StreamState,
    video: &VideoRow,
    location: &LocationWithSecrets,
    req: &Request,
) -> Result<Response, StreamError> {
    match location.location.kind() {
        Some(StorageType::Local) => local::serve(video, location, req).await,
        Some(StorageType::Velour) => peer::serve(state, video, location, req).await,
        Some(StorageType::S3) => s3::serve(&state.s3_clients, video, location, req).await,
        None => {
            tracing::error!(
                location.id = location.location.id,
                storage_type = location.location.storage_type,
                "unknown storage type"
            );
            Err(StreamError::StorageUnavailable)
        }
    }
}

fn not_found_or_internal(err: DbError) -> StreamError {
    match err {
        DbError::NotFound => StreamError::NotFound,
        err => {
            tracing::error!(error = %err, "catalog query failed");
            StreamError::Internal
        }
    }
}

/// The video's media type: by its container as the scan found it, else by its name.
fn video_content_type(video: &VideoRow) -> &'static str {
    velour_storage::content_type_for_video(
        video.container.as_deref(),
        video.video_codec.as_deref(),
        video.audio_codec.as_deref(),
        std::path::Path::new(&video.source_key),
    )
}

/// A header's value if it is present once and readable as text.
fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok(),
        _ => None,
    }
}

/// The request's ranges; `None` when there are none or they are to be ignored (RFC 9110
/// §14.2). Several `Range` lines are ignored too: the field is not a list (§14.2).
fn requested_ranges(headers: &HeaderMap) -> Option<RangeSet> {
    header_str(headers, &header::RANGE).and_then(RangeSet::parse)
}
