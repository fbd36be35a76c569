//! Settings read from environment variables, each with a matching command-line flag.
//!
//! Every flag's value name is its environment variable, so a bad value fails at start with
//! a message that names the variable to fix, e.g. `invalid value 'x' for
//! '--gateway-addr <VELOUR_GATEWAY_ADDR>'`.

use clap::Args;
use secrecy::SecretString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Where the catalog lives.
#[derive(Args, Clone)]
pub struct DatabaseSettings {
    /// Postgres URL. The database is created if it is missing, and migrations run at start.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = "postgres://localhost/velour",
        value_parser = parse_postgres_url
    )]
    pub database_url: Url,

    /// The key that seals the secrets the catalog holds (`VELOUR_SECRETS_KEY`).
    #[command(flatten)]
    pub secrets: SecretsSettings,
}

impl DatabaseSettings {
    /// The catalog at `database_url`, its secrets sealed with the key kept in it.
    pub fn new(database_url: Url) -> Self {
        Self { database_url, secrets: SecretsSettings::default() }
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("database_url", &redact_url(&self.database_url))
            .field("secrets", &self.secrets)
            .finish()
    }
}

/// Where jobs are queued. Two instances can share one Redis server through different
/// database numbers (`redis://127.0.0.1:6379/2`).
#[derive(Args, Clone)]
pub struct RedisSettings {
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_parser = parse_redis_url
    )]
    pub redis_url: Url,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings").field("redis_url", &redact_url(&self.redis_url)).finish()
    }
}

/// The gateway's own settings.
#[derive(Args, Clone, Debug)]
pub struct GatewaySettings {
    /// Address the gateway listens on.
    #[arg(
        long = "gateway-addr",
        env = "VELOUR_GATEWAY_ADDR",
        value_name = "VELOUR_GATEWAY_ADDR",
        default_value = "127.0.0.1:3000"
    )]
    pub gateway_addr: SocketAddr,

    /// Base URL where the gateway reaches the stream service; defaults to
    /// `http://VELOUR_STREAM_ADDR`.
    #[arg(
        long = "stream-url",
        env = "VELOUR_STREAM_URL",
        value_name = "VELOUR_STREAM_URL",
        value_parser = parse_http_url
    )]
    pub stream_url: Option<Url>,

    /// The name this instance gives itself in `/api/v1/instance`.
    #[arg(
        long = "instance-name",
        env = "VELOUR_INSTANCE_NAME",
        value_name = "VELOUR_INSTANCE_NAME",
        default_value = "Velour Instance"
    )]
    pub instance_name: String,

    /// Catalog calls (ping, instance, works, videos, search) one non-admin key may make per
    /// hour, shared by every gateway replica through Redis. Bursts up to the whole quota
    /// are allowed; it then refills evenly over the hour (GCRA).
    #[arg(
        long = "federation-rate-limit-per-hour",
        env = "FEDERATION_RATE_LIMIT_PER_HOUR",
        value_name = "FEDERATION_RATE_LIMIT_PER_HOUR",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub federation_rate_limit_per_hour: u32,

    /// Stream calls (video bytes, thumbnails, signed URLs) one non-admin key may make per
    /// hour, counted apart from catalog calls.
    #[arg(
        long = "federation-stream-rate-limit-per-hour",
        env = "FEDERATION_STREAM_RATE_LIMIT_PER_HOUR",
        value_name = "FEDERATION_STREAM_RATE_LIMIT_PER_HOUR",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub federation_stream_rate_limit_per_hour: u32,

    /// Memory, in MiB, for rendered pages of the works listing, kept until the catalog
    /// changes (each gateway has its own); 0 renders every page anew.
    #[arg(
        long = "catalog-cache-mib",
        env = "VELOUR_CATALOG_CACHE_MIB",
        value_name = "VELOUR_CATALOG_CACHE_MIB",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(0..=16_384)
    )]
    pub catalog_cache_mib: u32,

    /// A PEM file holding the certificate chain the gateway serves TLS with; set with
    /// `VELOUR_TLS_KEY_FILE`. Neither set: the gateway speaks plain HTTP (behind a proxy
    /// that terminates TLS).
    #[arg(
        long = "tls-cert-file",
        env = "VELOUR_TLS_CERT_FILE",
        value_name = "VELOUR_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// A PEM file holding the private key of `VELOUR_TLS_CERT_FILE`.
    #[arg(
        long = "tls-key-file",
        env = "VELOUR_TLS_KEY_FILE",
        value_name = "VELOUR_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
}

/// Federation with peers: whether it is on, how many peers, and how their keys live.
/// Read by the gateway (connections API, keys it issues) and the worker (peer scans, key
/// rotation).
#[derive(Args, Clone, Debug)]
pub struct FederationSettings {
    /// `false` turns federation off: the connections API and scans of peers answer
    /// `federation-disabled`, and the worker refuses peer scans already queued.
    #[arg(
        long = "federation-enabled",
        env = "FEDERATION_ENABLED",
        value_name = "FEDERATION_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub enabled: bool,

    /// The most federation connections that may be active at once; activating one more
    /// answers `connection-limit-reached`.
    #[arg(
        long = "max-federated-connections",
        env = "MAX_FEDERATED_CONNECTIONS",
        value_name = "MAX_FEDERATED_CONNECTIONS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(0..=100_000)
    )]
    pub max_connections: u32,

    /// Hours a key issued for a federation connection (and each of its successors) stays
    /// valid; 0 means it never expires.
    #[arg(
        long = "federation-token-expiry-hours",
        env = "FEDERATION_TOKEN_EXPIRY_HOURS",
        value_name = "FEDERATION_TOKEN_EXPIRY_HOURS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=24 * 365 * 10)
    )]
    pub token_expiry_hours: u32,

    /// Hours a rotated key keeps working beside its successor, so a peer can switch
    /// without an outage. The worker also rotates a key it holds once it expires within
    /// this window.
    #[arg(
        long = "federation-key-rotation-grace-hours",
        env = "FEDERATION_KEY_ROTATION_GRACE_HOURS",
        value_name = "FEDERATION_KEY_ROTATION_GRACE_HOURS",
        default_value_t = 24,
        value_parser = clap::value_parser!(u32).range(0..=24 * 365)
    )]
    pub key_rotation_grace_hours: u32,

    /// `true` (the default) refuses `velour` locations and federation connections whose
    /// URL is `http://` (`https-required`), and the peer client sends nothing to one: our
    /// key would cross the network in clear. Turn it off only for peers on a network you
    /// trust end to end.
    #[arg(
        long = "federation-require-https",
        env = "FEDERATION_REQUIRE_HTTPS",
        value_name = "FEDERATION_REQUIRE_HTTPS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub require_https: bool,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_connections: 10,
            token_expiry_hours: 0,
            key_rotation_grace_hours: 24,
            require_https: true,
        }
    }
}

impl FederationSettings {
    /// How long a key issued for federation lives; `None` for keys that never expire.
    pub fn token_lifetime(&self) -> Option<chrono::Duration> {
        (self.token_expiry_hours > 0)
            .then(|| chrono::Duration::hours(self.token_expiry_hours.into()))
    }

    /// How long a rotated key keeps working.
    pub fn rotation_grace(&self) -> chrono::Duration {
        chrono::Duration::hours(self.key_rotation_grace_hours.into())
    }
}

/// Where the stream service listens. Shared by the stream service (to bind) and the
/// gateway (to find it when `VELOUR_STREAM_URL` is not set).
#[derive(Args, Clone, Debug)]
pub struct StreamAddrSettings {
    #[arg(
        long = "stream-addr",
        env = "VELOUR_STREAM_ADDR",
        value_name = "VELOUR_STREAM_ADDR",
        default_value = "127.0.0.1:3001"
    )]
    pub stream_addr: SocketAddr,
}

impl GatewaySettings {
    /// `FEDERATION_RATE_LIMIT_PER_HOUR`'s default, as the original design has it.
    pub const DEFAULT_RATE_LIMIT_PER_HOUR: u32 = 5000;
    /// `FEDERATION_STREAM_RATE_LIMIT_PER_HOUR`'s default, as the original design has it.
    pub const DEFAULT_STREAM_RATE_LIMIT_PER_HOUR: u32 = 1000;
    /// `VELOUR_CATALOG_CACHE_MIB`'s default, in bytes.
    pub const DEFAULT_CATALOG_CACHE_BYTES: u64 = 64 << 20;

    /// `VELOUR_CATALOG_CACHE_MIB` in bytes.
    pub fn catalog_cache_bytes(&self) -> u64 {
        u64::from(self.catalog_cache_mib) << 20
    }

    /// The stream service's base URL: `VELOUR_STREAM_URL`, else derived from its address.
    pub fn stream_base_url(&self, stream: &StreamAddrSettings) -> Result<Url, url::ParseError> {
        if let Some(url) = &self.stream_url {
            return Ok(url.clone());
        }
        let mut addr = stream.stream_addr;
        // An unspecified bind address (0.0.0.0 or ::) is not somewhere to connect to; the
        // service is then reachable on loopback from the same host.
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Url::parse(&format!("http://{addr}/"))
    }
}

/// How Velour talks to peers (scans and proxied streams).
#[derive(Args, Clone, Debug)]
pub struct PeerSettings {
    /// Seconds to wait for a TCP (and TLS) connection to a peer.
    #[arg(
        long = "peer-connect-timeout",
        env = "VELOUR_PEER_CONNECT_TIMEOUT_SECS",
        value_name = "VELOUR_PEER_CONNECT_TIMEOUT_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub connect_timeout_secs: u64,

    /// Seconds a peer may stay silent while we wait for its answer or its next bytes.
    #[arg(
        long = "peer-read-timeout",
        env = "VELOUR_PEER_READ_TIMEOUT_SECS",
        value_name = "VELOUR_PEER_READ_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub read_timeout_secs: u64,

    /// Largest catalog page, in bytes, that we accept from a peer.
    #[arg(
        long = "peer-max-page-bytes",
        env = "VELOUR_PEER_MAX_PAGE_BYTES",
        value_name = "VELOUR_PEER_MAX_PAGE_BYTES",
        default_value_t = 16 * 1024 * 1024,
        value_parser = parse_page_bytes
    )]
    pub max_page_bytes: usize,

    /// A PEM file of certificate authorities trusted for peers in addition to the
    /// system's roots (a private CA, or a test one).
    #[arg(long = "peer-ca-file", env = "VELOUR_PEER_CA_FILE", value_name = "VELOUR_PEER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Internal networks peers may nonetheless be reached on, as a comma-separated CIDR
    /// list (`10.1.0.0/16,fd00::/8`). Without it, requests to loopback, private,
    /// link-local (cloud metadata), unspecified and multicast addresses are refused, so a
    /// peer URL cannot aim our requests at this machine's or its network's services.
    #[arg(
        long = "peer-allowed-networks",
        env = "VELOUR_PEER_ALLOWED_NETWORKS",
        value_name = "VELOUR_PEER_ALLOWED_NETWORKS",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub allowed_networks: Vec<ipnet::IpNet>,

    /// Whether the peer client refuses `http://` peers: `FEDERATION_REQUIRE_HTTPS`, copied
    /// here by each service at start (`with_require_https`), not a setting of its own.
    #[arg(skip = true)]
    pub require_https: bool,
}

impl PeerSettings {
    /// The peer client as `FEDERATION_REQUIRE_HTTPS` says.
    pub fn with_require_https(mut self, federation: &FederationSettings) -> Self {
        self.require_https = federation.require_https;
        self
    }

    /// Settings for peers on this machine over plain HTTP, as tests run them.
    pub fn for_loopback_peers() -> Self {
        let loopback = ["127.0.0.0/8", "::1/128"].map(|n| n.parse().ok());
        Self {
            allowed_networks: loopback.into_iter().flatten().collect(),
            require_https: false,
            ..Self::default()
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 5,
            read_timeout_secs: 30,
            max_page_bytes: 16 * 1024 * 1024,
            ca_file: None,
            allowed_networks: Vec::new(),
            require_https: true,
        }
    }
}

/// Signed stream URLs for players that cannot send a key (`<video>`). Read by the
/// gateway (which signs) and the stream service (which checks).
#[derive(Args, Clone)]
pub struct SigningSettings {
    /// Secret (at least 32 bytes) for the HMAC of signed stream URLs. Every gateway and
    /// stream service of one instance must share it. Unset: a random secret is created in
    /// the catalog on first start and read from there by every replica, so replicas
    /// sharing the database agree without any setting; setting it pins the secret and
    /// rotating it ends every signed URL handed out.
    #[arg(
        long = "url-signing-secret",
        env = "VELOUR_URL_SIGNING_SECRET",
        value_name = "VELOUR_URL_SIGNING_SECRET",
        hide_env_values = true,
        value_parser = parse_signing_secret
    )]
    pub url_signing_secret: Option<SecretString>,

    /// Seconds a signed stream URL stays valid. A player requests ranges with the same URL
    /// for as long as the film plays and seeks, so the default covers a long film; a
    /// revoked key ends its URLs at once whatever is left of this.
    #[arg(
        long = "signed-url-ttl",
        env = "VELOUR_SIGNED_URL_TTL_SECS",
        value_name = "VELOUR_SIGNED_URL_TTL_SECS",
        default_value_t = 4 * 3600,
        value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600)
    )]
    pub signed_url_ttl_secs: u64,
}

impl fmt::Debug for SigningSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningSettings")
            .field("url_signing_secret", &self.url_signing_secret.as_ref().map(|_| "REDACTED"))
            .field("signed_url_ttl_secs", &self.signed_url_ttl_secs)
            .finish()
    }
}

impl Default for SigningSettings {
    fn default() -> Self {
        Self { url_signing_secret: None, signed_url_ttl_secs: 4 * 3600 }
    }
}

impl SigningSettings {
    pub fn signed_url_ttl(&self) -> Duration {
        Duration::from_secs(self.signed_url_ttl_secs)
    }
}

fn parse_signing_secret(raw: &str) -> Result<SecretString, String> {
    if raw.len() < crate::signing::MIN_SECRET_BYTES {
        return Err(format!(
            "the secret must be at least {} bytes long (e.g. `openssl rand -hex 32`)",
            crate::signing::MIN_SECRET_BYTES
        ));
    }
    Ok(SecretString::from(raw.to_owned()))
}

/// The key that encrypts the secrets of storage locations at rest (the keys we hold for
/// peers, S3 secret access keys). Read by every service that opens the catalog.
#[derive(Args, Clone, Debug, Default)]
pub struct SecretsSettings {
    /// 32 bytes, as 64 hex digits or in base64 (e.g. `openssl rand -hex 32`). Every service
    /// of one instance must share it. Unset: a random key is created in the catalog on
    /// first start and read from there, which keeps secrets out of plain sight in the
    /// table but not from someone holding a dump of the whole database: set it (and keep
    /// it apart from the database's backups) so that a dump alone reveals no secret. A key
    /// that does not open the stored secrets stops the services at start.
    #[arg(
        long = "secrets-key",
        env = "VELOUR_SECRETS_KEY",
        value_name = "VELOUR_SECRETS_KEY",
        hide_env_values = true,
        value_parser = parse_secrets_key
    )]
    pub secrets_key: Option<SecretsKey>,

    /// The key the secrets were sealed with before `VELOUR_SECRETS_KEY` changed: it opens
    /// what it sealed, and nothing is sealed with it any more. `catalog` names the key kept
    /// in the catalog (when moving from it to a key of your own). Changing keys without an
    /// outage: run every service with the new key here and the old one as the previous
    /// key, then `velour secrets rekey`, then drop the previous key.
    #[arg(
        long = "previous-secrets-key",
        env = "VELOUR_SECRETS_KEY_PREVIOUS",
        value_name = "VELOUR_SECRETS_KEY_PREVIOUS",
        hide_env_values = true,
        value_parser = parse_previous_secrets_key
    )]
    pub previous_secrets_key: Option<PreviousSecretsKey>,
}

/// Where the key that sealed secrets before the current one is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviousSecretsKey {
    /// A key given in the settings.
    Given(SecretsKey),
    /// The key kept in the catalog, used while `VELOUR_SECRETS_KEY` was unset.
    Catalog,
}

fn parse_previous_secrets_key(raw: &str) -> Result<PreviousSecretsKey, String> {
    if raw.trim() == "catalog" {
        Ok(PreviousSecretsKey::Catalog)
    } else {
        parse_secrets_key(raw)
            .map(PreviousSecretsKey::Given)
            .map_err(|message| format!("{message}, or `catalog` for the key kept in the catalog"))
    }
}

/// A 256-bit key for secrets at rest. Its `Debug` shows no byte of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey([u8; 32]);

impl SecretsKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(REDACTED)")
    }
}

fn parse_secrets_key(raw: &str) -> Result<SecretsKey, String> {
    use base64::Engine as _;
    let raw = raw.trim();
    let bytes = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(raw).ok()
    } else {
        base64::engine::general_purpose::STANDARD.decode(raw).ok()
    };
    bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()).map(SecretsKey).ok_or_else(|| {
        "the key must be 32 bytes: 64 hex digits or base64 (openssl rand -hex 32)".to_owned()
    })
}

/// Where images made from videos (thumbnails) are kept. The worker writes there and the
/// stream service reads, so every replica of both must reach the same store: a directory
/// on a volume they share, or a bucket.
#[derive(Args, Clone)]
pub struct AssetSettings {
    /// A directory (created if missing), or `s3://BUCKET/PREFIX` for a bucket reached with
    /// the `VELOUR_ASSET_S3_*` settings.
    #[arg(
        long = "asset-store",
        env = "VELOUR_ASSET_STORE",
        value_name = "VELOUR_ASSET_STORE",
        default_value = ".velour/assets"
    )]
    pub asset_store: String,

    /// The bucket store's base URL, for S3-compatible stores; unset means AWS itself.
    #[arg(
        long = "asset-s3-endpoint",
        env = "VELOUR_ASSET_S3_ENDPOINT",
        value_name = "VELOUR_ASSET_S3_ENDPOINT"
    )]
    pub s3_endpoint: Option<Url>,

    /// The bucket's region (default `us-east-1`).
    #[arg(
        long = "asset-s3-region",
        env = "VELOUR_ASSET_S3_REGION",
        value_name = "VELOUR_ASSET_S3_REGION"
    )]
    pub s3_region: Option<String>,

    /// Access key id for the bucket.
    #[arg(
        long = "asset-s3-access-key-id",
        env = "VELOUR_ASSET_S3_ACCESS_KEY_ID",
        value_name = "VELOUR_ASSET_S3_ACCESS_KEY_ID"
    )]
    pub s3_access_key_id: Option<String>,

    /// Secret access key for the bucket; never defaulted, never printed.
    #[arg(
        long = "asset-s3-secret-access-key",
        env = "VELOUR_ASSET_S3_SECRET_ACCESS_KEY",
        value_name = "VELOUR_ASSET_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<SecretString>,
}

impl fmt::Debug for AssetSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssetSettings")
            .field("asset_store", &self.asset_store)
            .field("s3_endpoint", &self.s3_endpoint.as_ref().map(Url::as_str))
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field("s3_secret_access_key", &self.s3_secret_access_key.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

impl AssetSettings {
    /// Assets in a directory.
    pub fn directory(path: &std::path::Path) -> Self {
        Self {
            asset_store: path.display().to_string(),
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
        }
    }
}

/// The worker's own settings.
#[derive(Args, Clone, Debug)]
pub struct WorkerSettings {
    /// Jobs one worker process runs at once.
    #[arg(
        long = "worker-concurrency",
        env = "VELOUR_WORKER_CONCURRENCY",
        value_name = "VELOUR_WORKER_CONCURRENCY",
        default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub concurrency: u16,

    /// The ffprobe program used to read video facts.
    #[arg(
        long = "ffprobe",
        env = "VELOUR_FFPROBE",
        value_name = "VELOUR_FFPROBE",
        default_value = "ffprobe"
    )]
    pub ffprobe: String,

    /// Seconds one ffprobe run may take before it is killed and the file skipped.
    #[arg(
        long = "probe-timeout",
        env = "VELOUR_PROBE_TIMEOUT_SECS",
        value_name = "VELOUR_PROBE_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub probe_timeout_secs: u64,

    /// Files a scan of a folder reads (ffprobe, fingerprint) at once. What they give is
    /// saved in the order the folder was walked.
    #[arg(
        long = "probe-concurrency",
        env = "VELOUR_PROBE_CONCURRENCY",
        value_name = "VELOUR_PROBE_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u8).range(1..=64)
    )]
    pub probe_concurrency: u8,

    /// Keys asked for per page when listing a bucket (S3 sends at most 1000).
    #[arg(
        long = "s3-list-page-size",
        env = "VELOUR_S3_LIST_PAGE_SIZE",
        value_name = "VELOUR_S3_LIST_PAGE_SIZE",
        default_value_t = 1000,
        value_parser = clap::value_parser!(i32).range(1..=1000)
    )]
    pub s3_list_page_size: i32,

    /// The ffmpeg program used to make thumbnails.
    #[arg(
        long = "ffmpeg",
        env = "VELOUR_FFMPEG",
        value_name = "VELOUR_FFMPEG",
        default_value = "ffmpeg"
    )]
    pub ffmpeg: String,

    /// Seconds one ffmpeg run making a thumbnail may take before it is killed. A seek into
    /// a large remote object can take a while; a hung decoder must not hold a worker.
    #[arg(
        long = "thumbnail-timeout",
        env = "VELOUR_THUMBNAIL_TIMEOUT_SECS",
        value_name = "VELOUR_THUMBNAIL_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub thumbnail_timeout_secs: u64,

    /// Days a tombstone (a video or work removed from the catalog) is kept for peers that
    /// read changes. A peer whose last read is older is told to read the whole catalog
    /// again. 0 keeps tombstones for ever.
    #[arg(
        long = "tombstone-retention-days",
        env = "VELOUR_TOMBSTONE_RETENTION_DAYS",
        value_name = "VELOUR_TOMBSTONE_RETENTION_DAYS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(0..=36500)
    )]
    pub tombstone_retention_days: u32,
}

impl WorkerSettings {
    /// How long tombstones are kept; `None`: for ever.
    pub fn tombstone_retention(&self) -> Option<Duration> {
        let days = u64::from(self.tombstone_retention_days);
        (days > 0).then(|| Duration::from_secs(days * 24 * 3600))
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 2,
            ffprobe: "ffprobe".to_owned(),
            probe_timeout_secs: 30,
            probe_concurrency: 4,
            s3_list_page_size: 1000,
            ffmpeg: "ffmpeg".to_owned(),
            thumbnail_timeout_secs: 60,
            tombstone_retention_days: 30,
        }
    }
}

fn parse_network(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    // A bare address is a network of one.
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{raw:?} is not a network in CIDR notation (10.0.0.0/8)"))
}

fn parse_page_bytes(raw: &str) -> Result<usize, String> {
    let bytes: usize = raw.parse().map_err(|_| format!("{raw:?} is not a number of bytes"))?;
    if bytes < 64 * 1024 {
        return Err("must be at least 65536 bytes (one page of works)".to_owned());
    }
    Ok(bytes)
}

fn parse_postgres_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "postgres" | "postgresql" => {}
        other => return Err(format!("scheme {other:?} is not postgres:// or postgresql://")),
    }
    let name = url.path().trim_start_matches('/');
    if name.is_empty() || name.contains('/') {
        return Err("the URL must name one database, as in postgres://host/velour".to_owned());
    }
    Ok(url)
}

fn parse_redis_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "redis" | "rediss" => {}
        other => return Err(format!("scheme {other:?} is not redis:// or rediss://")),
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(format!("{db:?} is not a Redis database number"));
    }
    Ok(url)
}

fn parse_http_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err("the URL has no host".to_owned()),
        other => Err(format!("scheme {other:?} is not http:// or https://")),
    }
}

/// A URL as it may be logged: any password replaced.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Setting a password only fails for URLs that cannot have one, and this one has.
        let _ = shown.set_password(Some("REDACTED"));
    }
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_url_must_name_a_database() {
        assert!(parse_postgres_url("postgres://localhost/velour").is_ok());
        assert!(parse_postgres_url("postgres://localhost/").is_err());
        assert!(parse_postgres_url("mysql://localhost/velour").is_err());
    }

    #[test]
    fn redis_url_takes_an_optional_database_number() {
        assert!(parse_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(parse_redis_url("redis://127.0.0.1:6379/3").is_ok());
        assert!(parse_redis_url("redis://127.0.0.1:6379/three").is_err());
    }

    #[test]
    fn stream_url_defaults_to_the_stream_address() {
        let gateway = GatewaySettings {
            gateway_addr: "127.0.0.1:3000".parse().unwrap(),
            stream_url: None,
            instance_name: "x".into(),
            federation_rate_limit_per_hour: 5000,
            federation_stream_rate_limit_per_hour: 1000,
            catalog_cache_mib: 64,
            tls_cert_file: None,
            tls_key_file: None,
        };
        let stream = StreamAddrSettings { stream_addr: "0.0.0.0:4001".parse().unwrap() };
        assert_eq!(gateway.stream_base_url(&stream).unwrap().as_str(), "http://127.0.0.1:4001/");
    }

    #[test]
    fn federation_defaults_are_the_documented_ones() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            federation: FederationSettings,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["velour"]).unwrap().federation;
        let documented = FederationSettings::default();
        assert_eq!(parsed.enabled, documented.enabled);
        assert_eq!(parsed.max_connections, 10);
        assert_eq!(parsed.token_lifetime(), None);
        assert_eq!(parsed.rotation_grace(), chrono::Duration::hours(24));
        assert!(parsed.require_https && documented.require_https);

        let off =
            ["velour", "--federation-enabled", "false", "--federation-token-expiry-hours", "2"];
        let parsed = <Cli as clap::Parser>::try_parse_from(off).unwrap().federation;
        assert!(!parsed.enabled);
        assert_eq!(parsed.token_lifetime(), Some(chrono::Duration::hours(2)));
    }

    #[test]
    fn secrets_key_is_read_as_hex_or_base64_of_32_bytes() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let from_hex = parse_secrets_key(hex_key).unwrap();
        assert_eq!(from_hex.expose()[1], 0x11);
        let b64 = "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=";
        assert_eq!(parse_secrets_key(b64).unwrap(), from_hex);
        assert!(parse_secrets_key("too short").is_err());
        assert!(parse_secrets_key(&hex_key[..62]).is_err());
        assert!(!format!("{from_hex:?}").contains("11"));
    }

    #[test]
    fn allowed_networks_are_a_cidr_list() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            peer: PeerSettings,
        }
        let list = ["velour", "--peer-allowed-networks", "127.0.0.0/8, ::1,10.1.0.0/16"];
        let parsed = <Cli as clap::Parser>::try_parse_from(list).unwrap().peer;
        let shown: Vec<String> = parsed.allowed_networks.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["127.0.0.0/8", "::1/128", "10.1.0.0/16"]);
        assert!(parsed.require_https);

        let bad = ["velour", "--peer-allowed-networks", "10.0.0.0/33"];
        let err = <Cli as clap::Parser>::try_parse_from(bad).err().unwrap().to_string();
        assert!(err.contains("VELOUR_PEER_ALLOWED_NETWORKS"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        let url = Url::parse("postgres://u:secret@h/db").unwrap();
        assert!(!redact_url(&url).contains("secret"));
    }
}
