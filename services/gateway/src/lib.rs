//! The gateway: authenticates API keys, serves the catalog and the admin API, relays
//! streams to the stream service, and documents all of it in OpenAPI.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod connections;
pub mod error;
pub mod keys;
pub mod limits;
pub mod pages;
pub mod payload;
pub mod playback;
pub mod ratelimit;
pub mod stream;

use crate::error::ApiError;
use anyhow::Context;
use poem::listener::{Acceptor, AcceptorExt, IntoTlsConfigStream, RustlsCertificate};
use poem::listener::{RustlsConfig, TcpAcceptor};
use poem::{EndpointExt, Route, get, handler};
use poem_openapi::OpenApiService;
use std::future::Future;
use std::time::Duration;
use url::Url;
use velour_core::settings::{
    DatabaseSettings, FederationSettings, GatewaySettings, PeerSettings, RedisSettings,
    SigningSettings, StreamAddrSettings,
};
use velour_core::signing::UrlSigner;
use velour_db::scans::ScanRunRow;
use velour_jobs::{ScanLocation, ScanStorage, TestConnectionStorage};

/// Where the OpenAPI document is served.
pub const SPEC_PATH: &str = "/api/v1/openapi.json";

/// What every request handler shares. Cheap to clone.
#[derive(Clone)]
pub struct GatewayState {
    pub pool: sqlx::PgPool,
    /// For searches: see `velour_db::planned_once`.
    pub search_pool: sqlx::PgPool,
    pub scans: ScanStorage,
    pub stream_http: reqwest::Client,
    /// The stream service's base URL, ending with `/`.
    pub stream_base_url: Url,
    pub instance_name: String,
    /// Signs stream URLs for browsers; without it, asking for one answers 503.
    pub url_signer: Option<UrlSigner>,
    /// How long a signed stream URL stays valid.
    pub signed_url_ttl: Duration,
    pub connection_tests: TestConnectionStorage,
    pub federation: FederationSettings,
    /// Per-key hourly quotas of federated calls, counted in Redis.
    pub rate_limiter: ratelimit::RateLimiter,
    /// Where federated requests leave their audit entries.
    pub audit: audit::AuditSink,
    /// Seals the secrets of new locations.
    pub secrets: velour_db::secrets::SecretsCipher,
    /// Which internal addresses a peer location's URL may name
    /// (`VELOUR_PEER_ALLOWED_NETWORKS`); the worker and stream service check again when
    /// they connect.
    pub peer_guard: velour_peer::AddressGuard,
    /// Where the works listing's pages start, remembered until the listing changes.
    pub listing: std::sync::Arc<velour_db::catalog::ListingCache>,
    /// The catalog's version, announced by Postgres on every change to works or videos.
    pub hot: velour_db::hot::HotRows,
    /// Rendered pages of the works listing, kept per catalog version.
    pub pages: pages::PageCache,
}

impl GatewayState {
    pub async fn new(
        pool: sqlx::PgPool,
        redis: &RedisSettings,
        stream_base_url: Url,
        instance_name: String,
    ) -> anyhow::Result<Self> {
        let conn = velour_jobs::connect(redis.redis_url.as_str()).await?;
        // Connecting and the answer's start are bounded (`stream::STREAM_ANSWER_TIMEOUT`);
        // the body is not: the stream service may rightly take hours to send a film, and a
        // player that stops reading while its buffer is full stops it for as long as it
        // likes (a read timeout here counted that pause and cut the film).
        let stream_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Below the 30 s the stream service keeps an idle connection open (velour-http),
            // so that we never pick one it is closing at that moment.
            .pool_idle_timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let defaults = (
            GatewaySettings::DEFAULT_RATE_LIMIT_PER_HOUR,
            GatewaySettings::DEFAULT_STREAM_RATE_LIMIT_PER_HOUR,
        );
        Ok(Self {
            rate_limiter: ratelimit::RateLimiter::new(conn.clone(), defaults.0, defaults.1),
            audit: audit::AuditSink::start(pool.clone()),
            listing: Default::default(),
            hot: velour_db::hot::HotRows::start(&pool),
            search_pool: velour_db::planned_once(&pool),
            pages: pages::PageCache::new(GatewaySettings::DEFAULT_CATALOG_CACHE_BYTES),
            peer_guard: velour_peer::AddressGuard::default(),
            pool,
            scans: velour_jobs::scan_storage(conn.clone()),
            connection_tests: velour_jobs::test_connection_storage(conn),
            federation: FederationSettings::default(),
            stream_http,
            stream_base_url,
            instance_name,
            url_signer: None,
            signed_url_ttl: SigningSettings::default().signed_url_ttl(),
            secrets: velour_db::secrets::SecretsCipher::default(),
        })
    }

    /// Hands out signed stream URLs made with `signer`, valid for `ttl`.
    pub fn with_url_signing(mut self, signer: UrlSigner, ttl: Duration) -> Self {
        self.url_signer = Some(signer);
        self.signed_url_ttl = ttl;
        self
    }

    /// Keeps up to `bytes` of rendered listing pages (0: none).
    pub fn with_catalog_cache(mut self, bytes: u64) -> Self {
        self.pages = pages::PageCache::new(bytes);
        self
    }

    /// Lets peer locations name the internal networks `peer` allows (none by default).
    pub fn with_peer_settings(mut self, peer: &PeerSettings) -> Self {
        self.peer_guard = velour_peer::AddressGuard::new(&peer.allowed_networks);
        self
    }

    /// Federates as `federation` says (the default: on, 10 connections, keys that never
    /// expire, 24 hours of rotation grace).
    pub fn with_federation(mut self, federation: FederationSettings) -> Self {
        self.federation = federation;
        self
    }

    /// Refuses an `http://` peer URL while `FEDERATION_REQUIRE_HTTPS` is on. `field` names
    /// the URL in the request, for the message.
    pub(crate) fn require_https(&self, url: &Url, field: &str) -> Result<(), ApiError> {
        if self.federation.require_https && url.scheme() != "https" {
            return Err(ApiError::bad_request(
                "https-required",
                format!(
                    "{field} must be https://: this instance sends peers its key only over TLS \
                     (FEDERATION_REQUIRE_HTTPS)"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses federation calls when `FEDERATION_ENABLED` is false.
    pub(crate) fn require_federation(&self) -> Result<(), ApiError> {
        if self.federation.enabled {
            Ok(())
        } else {
            Err(ApiError::forbidden_because(
                "federation-disabled",
                "federation is turned off on this instance (FEDERATION_ENABLED=false)",
            ))
        }
    }

    /// Limits each non-admin key to `catalog` catalog calls and `stream` stream calls an
    /// hour.
    pub fn with_rate_limits(mut self, catalog: u32, stream: u32) -> Self {
        self.rate_limiter = ratelimit::RateLimiter::new(self.rate_limiter.redis(), catalog, stream);
        self
    }

    /// Pushes the job for a scan run just created. If Redis will not take it, the run is
    /// marked failed so it does not sit queued forever, and the caller is told to retry.
    async fn queue_scan(&self, run: &ScanRunRow) -> Result<(), ApiError> {
        let job = ScanLocation {
            trace: velour_telemetry::current_carrier(),
            ..ScanLocation::new(run.id, run.storage_location_id)
        };
        let mut storage = self.scans.clone();
        if let Err(err) = velour_jobs::push_scan(&mut storage, job).await {
            tracing::error!(scan_run.id = run.id, error = %err, "could not queue scan");
            let message = "the job queue is unavailable";
            let counts = Default::default();
            if let Err(db) =
                velour_db::scans::finish_scan_run(&self.pool, run.id, counts, Some(message)).await
            {
                tracing::error!(scan_run.id = run.id, error = %db, "could not fail the scan run");
            }
            return Err(ApiError::unavailable(
                "queue-unavailable",
                "the job queue is unavailable; try again shortly",
            ));
        }
        Ok(())
    }
}

/// Every part of the documented API.
pub type ApiParts = (
    catalog::CatalogApi,
    stream::StreamApi,
    playback::PlaybackApi,
    admin::AdminApi,
    keys::KeysApi,
    keys::AdminKeysApi,
    connections::ConnectionsApi,
);

/// The documented API, without state: used to serve and to write the committed copy.
pub fn api_service() -> OpenApiService<ApiParts, ()> {
    OpenApiService::new(
        (
            catalog::CatalogApi,
            stream::StreamApi,
            playback::PlaybackApi,
            admin::AdminApi,
            keys::KeysApi,
            keys::AdminKeysApi,
            connections::ConnectionsApi,
        ),
        "Velour",
        velour_core::VERSION,
    )
    .description(
        "A self-hosted video library that shares its catalog with trusted Velour peers. \
         Every call needs an API key: `Authorization: Bearer KEY`.",
    )
}

/// The OpenAPI document as JSON, exactly as served at `SPEC_PATH`.
pub fn openapi_json() -> String {
    api_service().spec()
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

/// The gateway's routes: the API, its document, Swagger UI and a health check.
pub fn app(state: GatewayState) -> impl poem::Endpoint {
    let api = api_service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let federation = ratelimit::Federation::new(state.clone());
    Route::new()
        .nest("/", api)
        .at(SPEC_PATH, spec)
        .nest("/docs", docs)
        .at("/healthz", get(healthz))
        .data(state)
        .around(limits::limit_body)
        .catch_all_error(error::render_any_error)
        .with(federation)
        .around(velour_telemetry::trace_request)
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: GatewayState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on(TcpAcceptor::from_tokio(listener)?, state, shutdown).await
}

/// Serves the gateway over TLS on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: RustlsConfig,
    state: GatewayState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = tls.into_stream().context("the TLS certificate or key is unusable")?;
    serve_on(TcpAcceptor::from_tokio(listener)?.rustls(tls), state, shutdown).await
}

async fn serve_on(
    acceptor: impl Acceptor + 'static,
    state: GatewayState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    velour_http::serve(acceptor, app(state), shutdown, Duration::from_secs(10)).await;
    Ok(())
}

/// The TLS the gateway serves with: a certificate chain and its key, both PEM. Checked
/// here, at start, so a bad file names its setting instead of failing every handshake.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<RustlsConfig> {
    let config =
        || RustlsConfig::new().fallback(RustlsCertificate::new().cert(cert_pem).key(key_pem));
    // One look at each file's PEM labels tells which of the two is wrong.
    let has_label = |pem: &[u8], label: &[u8]| pem.windows(label.len()).any(|w| w == label);
    anyhow::ensure!(
        has_label(cert_pem, b"-----BEGIN CERTIFICATE-----"),
        "VELOUR_TLS_CERT_FILE holds no PEM certificate"
    );
    anyhow::ensure!(
        has_label(key_pem, b"PRIVATE KEY-----"),
        "VELOUR_TLS_KEY_FILE holds no PEM private key"
    );
    let _checked = config().into_stream().map_err(|e| {
        anyhow::anyhow!("VELOUR_TLS_CERT_FILE / VELOUR_TLS_KEY_FILE are unusable: {e}")
    })?;
    Ok(config())
}

/// Reads `VELOUR_TLS_CERT_FILE` and `VELOUR_TLS_KEY_FILE`, if set.
fn load_tls(gateway: &GatewaySettings) -> anyhow::Result<Option<RustlsConfig>> {
    let (Some(cert), Some(key)) = (&gateway.tls_cert_file, &gateway.tls_key_file) else {
        // clap requires both or neither.
        return Ok(None);
    };
    let read = |path: &std::path::Path, name: &str| {
        std::fs::read(path).with_context(|| format!("{name}: cannot read {}", path.display()))
    };
    let cert = read(cert, "VELOUR_TLS_CERT_FILE")?;
    let key = read(key, "VELOUR_TLS_KEY_FILE")?;
    tls_config(&cert, &key).map(Some)
}

/// What the gateway reads from its environment.
pub struct Settings<'a> {
    pub db: &'a DatabaseSettings,
    pub redis: &'a RedisSettings,
    pub gateway: &'a GatewaySettings,
    pub stream: &'a StreamAddrSettings,
    pub signing: &'a SigningSettings,
    pub federation: &'a FederationSettings,
    pub peer: &'a PeerSettings,
}

/// Connects to everything the settings name, binds, and serves until `shutdown`.
pub async fn run(
    settings: Settings<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Settings { db, redis, gateway, stream, signing, federation, peer } = settings;
    let tls = load_tls(gateway)?;
    let pool = velour_db::connect_and_migrate(db).await?;
    let stream_url = gateway.stream_base_url(stream)?;
    let signer = velour_db::secrets::url_signer(&pool, signing).await.map_err(|e| {
        anyhow::anyhow!("VELOUR_URL_SIGNING_SECRET: could not load the URL signing secret: {e}")
    })?;
    let secrets = velour_db::secrets::location_cipher(&pool, &db.secrets).await.map_err(|e| {
        anyhow::anyhow!(
            "VELOUR_SECRETS_KEY: the secrets of storage locations cannot be opened: {e}"
        )
    })?;
    let mut state = GatewayState::new(pool, redis, stream_url, gateway.instance_name.clone())
        .await?
        .with_url_signing(signer, signing.signed_url_ttl())
        .with_federation(federation.clone())
        .with_peer_settings(peer)
        .with_catalog_cache(gateway.catalog_cache_bytes())
        .with_rate_limits(
            gateway.federation_rate_limit_per_hour,
            gateway.federation_stream_rate_limit_per_hour,
        );
    state.secrets = secrets;
    let listener = tokio::net::TcpListener::bind(gateway.gateway_addr).await.map_err(|e| {
        anyhow::anyhow!("VELOUR_GATEWAY_ADDR: cannot listen on {}: {e}", gateway.gateway_addr)
    })?;
    tracing::info!(addr = %gateway.gateway_addr, tls = tls.is_some(), "gateway listening");
    match tls {
        Some(tls) => serve_tls(listener, tls, state, shutdown).await,
        None => serve(listener, state, shutdown).await,
    }
}
