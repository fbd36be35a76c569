//! Test harness: real Velour instances (gateway, stream service and worker, in-process on
//! port 0) on the machine's real Postgres and Redis, each with its own database and Redis
//! database number, and real videos made with ffmpeg.

use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use url::Url;
use velour_core::Permissions;
use velour_core::settings::{
    DatabaseSettings, FederationSettings, PeerSettings, RedisSettings, SigningSettings,
    WorkerSettings,
};
use velour_db::keys::KeyOwner;
use velour_storage::AssetStore;

pub mod s3;
pub mod tls;

/// The Postgres server tests use; each test gets its own database on it.
fn postgres_server() -> String {
    std::env::var("VELOUR_TEST_POSTGRES").unwrap_or_else(|_| "postgres://127.0.0.1".to_owned())
}

/// The Redis server tests use; each instance gets its own database number on it.
fn redis_server() -> String {
    std::env::var("VELOUR_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

const TEST_DB_PREFIX: &str = "velour_test_";

/// Federation as the tests run it: the defaults, except that peers on loopback speak plain
/// HTTP (`FEDERATION_REQUIRE_HTTPS=false`). The TLS tests start instances with the
/// defaults instead.
pub fn plain_http_federation() -> FederationSettings {
    FederationSettings { require_https: false, ..FederationSettings::default() }
}

/// The settings' default quotas (catalog, stream calls per key and hour).
const DEFAULT_RATE_LIMITS: (u32, u32) = (5000, 1000);

static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Drops databases that earlier, failed runs left behind. Runs once per test binary,
/// before any test creates its own. Only databases nobody is connected to are dropped,
/// and without force: other test binaries may be running on the same server, and their
/// databases are in use.
async fn sweep_leftover_databases() -> anyhow::Result<()> {
    SWEPT
        .get_or_try_init(|| async {
            let admin = PgPool::connect(&format!("{}/postgres", postgres_server())).await?;
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT d.datname FROM pg_database d WHERE d.datname LIKE $1
                 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
            )
            .bind(format!("{TEST_DB_PREFIX}%"))
            .fetch_all(&admin)
            .await?;
            for name in names {
                // Fails if someone connected since: then it is in use, and kept.
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\"");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
            }
            admin.close().await;
            anyhow::Ok(())
        })
        .await?;
    Ok(())
}

/// Services' logs, captured per test by the test harness and shown when a test fails.
/// `RUST_LOG` overrides the level.
fn init_test_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// A database of its own for one instance, dropped by `drop_database`.
pub struct TestDb {
    pub name: String,
    pub settings: DatabaseSettings,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<Self> {
        sweep_leftover_databases().await?;
        let name = format!("{TEST_DB_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let url = Url::parse(&format!("{}/{name}", postgres_server()))?;
        let settings = DatabaseSettings::new(url);
        let pool = velour_db::connect_and_migrate(&settings).await?;
        Ok(Self { name, settings, pool })
    }

    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let admin = PgPool::connect(&format!("{}/postgres", postgres_server())).await?;
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await?;
        admin.close().await;
        Ok(())
    }
}

/// How long a claim on a Redis database number lasts if its holder dies without
/// releasing it.
const REDIS_CLAIM_SECS: u64 = 1800;

fn redis_claim_key(number: u8) -> String {
    format!("velour-test:claim:{number}")
}

/// One Redis database number (1 to 15; 0 is left to people running Velour by hand),
/// emptied, and claimed through a key in database 0 so that no other test, in this process
/// or any other running at the same time, uses it until it is dropped.
pub struct RedisDb {
    pub number: u8,
    claim: String,
}

impl RedisDb {
    pub async fn take() -> anyhow::Result<Self> {
        let control = redis::Client::open(format!("{}/0", redis_server()))?;
        let mut conn = control.get_multiplexed_async_connection().await?;
        let claim = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        for _ in 0..2400 {
            for number in 1..=15u8 {
                let taken: Option<String> = redis::cmd("SET")
                    .arg(redis_claim_key(number))
                    .arg(&claim)
                    .arg("NX")
                    .arg("EX")
                    .arg(REDIS_CLAIM_SECS)
                    .query_async(&mut conn)
                    .await?;
                if taken.is_some() {
                    let db = Self { number, claim };
                    let client = redis::Client::open(db.url().as_str())?;
                    let mut data = client.get_multiplexed_async_connection().await?;
                    redis::cmd("FLUSHDB").query_async::<()>(&mut data).await?;
                    return Ok(db);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no Redis database number came free within two minutes")
    }

    pub fn url(&self) -> Url {
        // The server URL comes from a constant or the environment and has no path.
        let text = format!("{}/{}", redis_server(), self.number);
        Url::parse(&text).unwrap_or_else(|e| panic!("bad VELOUR_TEST_REDIS {text:?}: {e}"))
    }
}

impl Drop for RedisDb {
    /// Releases the claim, if it is still ours (it may have expired and been taken).
    fn drop(&mut self) {
        let release = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
        );
        if let Ok(client) = redis::Client::open(format!("{}/0", redis_server()))
            && let Ok(mut conn) = client.get_connection()
        {
            let _: redis::RedisResult<()> =
                release.key(redis_claim_key(self.number)).arg(&self.claim).invoke(&mut conn);
        }
    }
}

/// A running Velour instance: gateway, stream service and worker on their own database.
pub struct Instance {
    pub name: String,
    pub base: Url,
    pub stream_base: Url,
    pub admin_key: SecretString,
    pub http: reqwest::Client,
    db: Option<TestDb>,
    redis: RedisDb,
    /// Hourly quotas of catalog and stream calls per non-admin key.
    rate_limits: (u32, u32),
    _assets: tempfile::TempDir,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Instance {
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_with(name, WorkerSettings::default()).await
    }

    /// An instance whose worker has the given settings.
    pub async fn start_with(name: &str, worker: WorkerSettings) -> anyhow::Result<Self> {
        Self::start_configured(
            name,
            worker,
            PeerSettings::for_loopback_peers(),
            plain_http_federation(),
            DEFAULT_RATE_LIMITS,
            None,
        )
        .await
    }

    /// An instance whose gateway and worker federate as `federation` says.
    pub async fn start_with_federation(
        name: &str,
        federation: FederationSettings,
    ) -> anyhow::Result<Self> {
        let (worker, peer) = (WorkerSettings::default(), PeerSettings::for_loopback_peers());
        Self::start_configured(name, worker, peer, federation, DEFAULT_RATE_LIMITS, None).await
    }

    /// An instance that reaches peers with `peer` and federates as `federation` says, its
    /// gateway serving TLS with `tls`'s certificate when given one.
    pub async fn start_federating(
        name: &str,
        peer: PeerSettings,
        federation: FederationSettings,
        tls: Option<&tls::TestCa>,
    ) -> anyhow::Result<Self> {
        let worker = WorkerSettings::default();
        Self::start_configured(name, worker, peer, federation, DEFAULT_RATE_LIMITS, tls).await
    }

    /// An instance whose stream service and worker talk to peers with `peer` (short
    /// timeouts, for tests of misbehaving peers).
    pub async fn start_with_peer(name: &str, peer: PeerSettings) -> anyhow::Result<Self> {
        let (worker, federation) = (WorkerSettings::default(), plain_http_federation());
        Self::start_configured(name, worker, peer, federation, DEFAULT_RATE_LIMITS, None).await
    }

    /// An instance whose gateways allow each non-admin key `catalog` catalog calls and
    /// `stream` stream calls an hour.
    pub async fn start_with_rate_limits(
        name: &str,
        catalog: u32,
        stream: u32,
    ) -> anyhow::Result<Self> {
        let (worker, peer) = (WorkerSettings::default(), PeerSettings::for_loopback_peers());
        let federation = plain_http_federation();
        Self::start_configured(name, worker, peer, federation, (catalog, stream), None).await
    }

    async fn start_configured(
        name: &str,
        worker: WorkerSettings,
        peer: PeerSettings,
        federation: FederationSettings,
        rate_limits: (u32, u32),
        tls: Option<&tls::TestCa>,
    ) -> anyhow::Result<Self> {
        init_test_logs();
        let db = TestDb::create().await?;
        let redis = RedisDb::take().await?;
        let stop = CancellationToken::new();
        // The secret is the one the catalog makes on first start, as when
        // VELOUR_URL_SIGNING_SECRET is unset; gateway and stream service both read it.
        let signing = SigningSettings::default();
        let signer = velour_db::secrets::url_signer(&db.pool, &signing).await?;

        let stream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let stream_base = Url::parse(&format!("http://{}/", stream_listener.local_addr()?))?;
        let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = Url::parse(&format!("{scheme}://{}/", gateway_listener.local_addr()?))?;

        // Worker and stream service share the instance's asset directory, as replicas
        // share a volume or a bucket.
        let assets_dir = tempfile::tempdir()?;
        let assets = AssetStore::Directory(assets_dir.path().to_owned());
        let stream_peer = peer.clone().with_require_https(&federation);
        let stream_state =
            velour_stream::StreamState::new(db.pool.clone(), stream_peer, assets.clone())?
                .with_signer(signer.clone());
        let redis_settings = RedisSettings { redis_url: redis.url() };
        let gateway_state = velour_gateway::GatewayState::new(
            db.pool.clone(),
            &redis_settings,
            stream_base.clone(),
            format!("Velour {name}"),
        )
        .await?
        .with_url_signing(signer, signing.signed_url_ttl())
        .with_federation(federation.clone())
        .with_peer_settings(&peer)
        .with_rate_limits(rate_limits.0, rate_limits.1);
        let worker_state = velour_worker::WorkerState::new(db.pool.clone(), worker, peer, assets)
            .with_federation(federation);

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(velour_stream::serve(
            stream_listener,
            stream_state,
            stop.clone().cancelled_owned(),
        )));
        let gateway_stop = stop.clone().cancelled_owned();
        tasks.push(match tls {
            Some(ca) => {
                let config =
                    velour_gateway::tls_config(ca.cert_pem.as_bytes(), ca.key_pem.as_bytes())?;
                let serve = velour_gateway::serve_tls(
                    gateway_listener,
                    config,
                    gateway_state,
                    gateway_stop,
                );
                tokio::spawn(serve)
            }
            None => {
                tokio::spawn(velour_gateway::serve(gateway_listener, gateway_state, gateway_stop))
            }
        });
        let redis_url = redis.url();
        let worker_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            velour_worker::run(worker_state, &redis_url, worker_stop.cancelled_owned()).await
        }));

        let all = Permissions { can_read: true, can_stream: true, can_metadata: true };
        let (_, admin_key) =
            velour_db::keys::create_api_key(&db.pool, KeyOwner::Admin, "test admin", all).await?;

        let instance = Self {
            name: name.to_owned(),
            base,
            stream_base,
            admin_key,
            http: match tls {
                Some(ca) => ca.client()?,
                None => reqwest::Client::new(),
            },
            db: Some(db),
            redis,
            rate_limits,
            _assets: assets_dir,
            stop,
            tasks,
        };
        instance.wait_until_ready().await?;
        Ok(instance)
    }

    /// Polls both services' health checks; a readiness check, not a sleep.
    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        for base in [&self.base, &self.stream_base] {
            let url = base.join("healthz")?;
            let mut ready = false;
            for _ in 0..200 {
                let answer = self.http.get(url.clone()).send().await;
                if answer.is_ok_and(|r| r.status().is_success()) {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            ensure!(ready, "{} never became ready at {url}", self.name);
        }
        Ok(())
    }

    /// Starts one more gateway on this instance's database, Redis and stream service, as
    /// another replica would run in its own process (its own connections, its own audit
    /// writer); returns its base URL. It stops with the instance.
    pub async fn start_another_gateway(&mut self) -> anyhow::Result<Url> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = Url::parse(&format!("http://{}/", listener.local_addr()?))?;
        let redis_settings = RedisSettings { redis_url: self.redis.url() };
        let signing = SigningSettings::default();
        let signer = velour_db::secrets::url_signer(self.pool(), &signing).await?;
        let state = velour_gateway::GatewayState::new(
            self.pool().clone(),
            &redis_settings,
            self.stream_base.clone(),
            format!("Velour {}", self.name),
        )
        .await?
        .with_url_signing(signer, signing.signed_url_ttl())
        .with_rate_limits(self.rate_limits.0, self.rate_limits.1);
        let stop = self.stop.clone().cancelled_owned();
        self.tasks.push(tokio::spawn(velour_gateway::serve(listener, state, stop)));
        let health = base.join("healthz")?;
        for _ in 0..200 {
            if self.http.get(health.clone()).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(base);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the second gateway of {} never became ready", self.name)
    }

    pub fn pool(&self) -> &PgPool {
        // Present from start until `stop`, which consumes the instance.
        &self.db.as_ref().unwrap_or_else(|| unreachable!("db taken before stop")).pool
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path.trim_start_matches('/')).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A request with the admin key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(self.admin_key.expose_secret())
    }

    /// GET with the admin key, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.admin(reqwest::Method::GET, path).send().await?;
        expect_json(response, StatusCode::OK).await
    }

    /// POST JSON with the admin key, expecting `status` and JSON back.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        status: StatusCode,
    ) -> anyhow::Result<Value> {
        let response = self.admin(reqwest::Method::POST, path).json(body).send().await?;
        expect_json(response, status).await
    }

    /// Issues a member key through the admin API.
    pub async fn issue_key(&self, name: &str, permissions: Permissions) -> anyhow::Result<String> {
        let body = serde_json::json!({
            "name": name,
            "permissions": {
                "can_read": permissions.can_read,
                "can_stream": permissions.can_stream,
                "can_metadata": permissions.can_metadata,
            }
        });
        let created = self.post_json("/api/v1/admin/api_keys", &body, StatusCode::CREATED).await?;
        created["key"].as_str().map(str::to_owned).context("no key in the answer")
    }

    pub async fn add_local_location(&self, name: &str, path: &Path) -> anyhow::Result<i64> {
        let body = serde_json::json!({
            "name": name,
            "storage_type": "local",
            "configuration": { "path": path.to_str().context("non-UTF-8 temp path")? },
        });
        let created =
            self.post_json("/api/v1/admin/storage_locations", &body, StatusCode::CREATED).await?;
        created["id"].as_i64().context("no id")
    }

    pub async fn add_peer_location(
        &self,
        name: &str,
        peer: &Instance,
        key: &str,
    ) -> anyhow::Result<i64> {
        let body = serde_json::json!({
            "name": name,
            "storage_type": "velour",
            "configuration": {
                "remote_instance_url": peer.base.as_str(),
                "api_key": key,
                "instance_name": peer.name,
            },
        });
        let created =
            self.post_json("/api/v1/admin/storage_locations", &body, StatusCode::CREATED).await?;
        created["id"].as_i64().context("no id")
    }

    /// Requests a scan through the API and waits for the worker to finish it.
    pub async fn scan(&self, location_id: i64) -> anyhow::Result<Value> {
        let path = format!("/api/v1/admin/storage_locations/{location_id}/scans");
        let run = self.post_json(&path, &Value::Null, StatusCode::ACCEPTED).await?;
        let id = run["id"].as_i64().context("no scan run id")?;
        for _ in 0..1200 {
            let run = self.get_json(&format!("/api/v1/admin/scan_runs/{id}")).await?;
            match run["state"].as_str() {
                Some("succeeded") => return Ok(run),
                Some("failed") => bail!("scan {id} failed: {}", run["error"]),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        bail!("scan {id} did not finish within a minute")
    }

    /// Every work, reading every page.
    pub async fn all_works(&self) -> anyhow::Result<Vec<Value>> {
        let mut works = Vec::new();
        let mut page = 1;
        loop {
            let listed = self.get_json(&format!("/api/v1/works?page={page}&per_page=2")).await?;
            let items = listed["works"].as_array().context("works is not an array")?;
            works.extend(items.iter().cloned());
            let total_pages = listed["pagination"]["total_pages"].as_i64().context("pages")?;
            if page >= total_pages {
                return Ok(works);
            }
            page += 1;
        }
    }

    /// Stops the services and drops the database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            match tokio::time::timeout(Duration::from_secs(20), task).await {
                Ok(joined) => joined??,
                Err(_) => bail!("{} did not stop within 20 s", self.name),
            }
        }
        if let Some(db) = self.db.take() {
            db.drop_database().await?;
        }
        Ok(())
    }
}

/// Checks the status and returns the JSON body, with the body in the error if not.
pub async fn expect_json(response: reqwest::Response, status: StatusCode) -> anyhow::Result<Value> {
    let got = response.status();
    let text = response.text().await?;
    ensure!(got == status, "expected {status}, got {got}: {text}");
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// Runs a command to completion, failing with its standard error if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("could not run {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// Makes a short test video with ffmpeg's synthetic sources.
pub fn make_video(path: &Path, codecs: &[&str], seconds: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let duration = seconds.to_string();
    let video_src = format!("testsrc=duration={duration}:size=320x240:rate=25");
    let audio_src = format!("sine=frequency=440:duration={duration}");
    let out = path.to_str().context("non-UTF-8 path")?;
    let mut args = vec!["-y", "-v", "error", "-f", "lavfi", "-i", &video_src];
    args.extend(["-f", "lavfi", "-i", &audio_src]);
    args.extend(codecs);
    args.extend(["-shortest", out]);
    run("ffmpeg", &args)?;
    Ok(())
}

/// What ffprobe says of a file or URL: (duration in seconds, size in bytes if known).
pub fn ffprobe_duration(input: &str, headers: Option<&str>) -> anyhow::Result<f64> {
    let mut args = vec!["-v", "error"];
    if let Some(h) = headers {
        args.extend(["-headers", h]);
    }
    args.extend(["-show_entries", "format=duration", "-of", "default=nw=1:nk=1", input]);
    let out = run("ffprobe", &args)?;
    let text = String::from_utf8(out)?;
    Ok(text.trim().parse()?)
}

/// The sample videos shipped beside the checkout, in `../shared/media`.
/// The sample videos: `VELOUR_SAMPLE_MEDIA` if set, else `../shared/media` beside the
/// checkout, else `/work/shared/media` (where these machines keep them, for a clone made
/// elsewhere).
pub fn shared_media_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VELOUR_SAMPLE_MEDIA") {
        return PathBuf::from(dir);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/media");
    if beside.is_dir() { beside } else { PathBuf::from("/work/shared/media") }
}
