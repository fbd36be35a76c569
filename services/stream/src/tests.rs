//! The service against the real Postgres: each test gets its own database, dropped after
//! the test whether it passed or not. Peers are real servers on port 0.

use super::*;
use crate::error::BEARER_CHALLENGE;
use futures_util::FutureExt;
use poem::Server;
use poem::http::{Method, StatusCode};
use poem::test::{TestClient, TestResponse};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use tokio::task::JoinHandle;
use url::Url;
use velour_core::Permissions;
use velour_db::keys::{KeyOwner, create_api_key};
use velour_db::locations::{NewLocation, create_location};
use velour_db::secrets::SecretsCipher;

const POSTGRES: &str = "postgres://127.0.0.1";
const VIDEO_PATH: &str = "films/Big Buck Bunny (2008).mp4";
const VIDEO_SIZE: usize = 1000;

/// A catalog with one local video of 1000 known bytes, under `<dir>/library`.
struct Library {
    pool: PgPool,
    /// A temporary folder that outlives the test (`with_library` holds it).
    dir: std::path::PathBuf,
    content: Vec<u8>,
    work_id: i64,
    video_id: i64,
    stream_key: String,
    read_only_key: String,
}

impl Library {
    fn root(&self) -> std::path::PathBuf {
        self.dir.join("library")
    }

    fn client(&self) -> TestClient<impl Endpoint + use<>> {
        self.client_with(PeerSettings::for_loopback_peers())
    }

    fn client_with(&self, peer: PeerSettings) -> TestClient<impl Endpoint + use<>> {
        let assets = AssetStore::Directory(self.dir.join("assets"));
        TestClient::new(app(StreamState::new(self.pool.clone(), peer, assets).unwrap()))
    }

    async fn add_location(&self, kind: StorageType, configuration: Value, secrets: Value) -> i64 {
        let name = format!("location {}", uuid::Uuid::new_v4());
        let new = NewLocation {
            name: &name,
            storage_type: kind,
            configuration,
            secrets,
            rescan_interval_secs: None,
        };
        create_location(&self.pool, &SecretsCipher::default(), new).await.unwrap().id
    }

    async fn add_video(&self, location_id: i64, source_key: &str, metadata: Value) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size,
                                 video_metadata)
             VALUES ($1, $2, $3, $3, 1000, $4) RETURNING id",
        )
        .bind(self.work_id)
        .bind(location_id)
        .bind(source_key)
        .bind(sqlx::types::Json(metadata))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// A video on a peer location pointing at `base`, which serves `remote_id` with `key`.
    async fn add_peer_video(&self, base: &Url, key: &str, remote_id: i64) -> i64 {
        let location = self
            .add_location(
                StorageType::Velour,
                json!({ "remote_instance_url": base.as_str() }),
                json!({ "api_key": key }),
            )
            .await;
        let source_key = remote_id.to_string();
        self.add_video(location, &source_key, json!({ "remote_video_id": remote_id })).await
    }
}

/// Runs `test` against a fresh, migrated database seeded with a [`Library`], then drops
/// the database even if the test panicked.
async fn with_library<F, Fut>(test: F)
where
    F: FnOnce(Library) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = format!("velour_stream_test_{}", uuid::Uuid::new_v4().simple());
    let database_url = Url::parse(&format!("{POSTGRES}/{name}")).unwrap();
    let pool = velour_db::connect_and_migrate(&DatabaseSettings::new(database_url)).await.unwrap();

    // Held here: a test's `async move` block captures only the fields it uses, so a
    // folder owned by `Library` could be deleted before the test runs.
    let dir = tempfile::tempdir().unwrap();
    let outcome = AssertUnwindSafe(async {
        let library = seed(pool.clone(), dir.path().to_owned()).await;
        test(library).await;
    })
    .catch_unwind()
    .await;

    let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
    drop_database(&name).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn drop_database(name: &str) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres")).await.unwrap();
    // The name is ours (a UUID), so formatting it into the statement is safe.
    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.unwrap();
}

async fn seed(pool: PgPool, dir: std::path::PathBuf) -> Library {
    let root = dir.join("library");
    let content: Vec<u8> = (0..VIDEO_SIZE).map(|i| (i % 251) as u8).collect();
    let file = root.join(VIDEO_PATH);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &content).unwrap();

    let streaming = Permissions { can_read: true, can_stream: true, can_metadata: false };
    let (_, stream_key) =
        create_api_key(&pool, KeyOwner::Member, "player", streaming).await.unwrap();
    let reading = Permissions { can_read: true, can_stream: false, can_metadata: false };
    let (_, read_only_key) =
        create_api_key(&pool, KeyOwner::Member, "browser", reading).await.unwrap();
    let work_id: i64 = sqlx::query_scalar(
        "INSERT INTO works (title, year) VALUES ('Big Buck Bunny', 2008) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let mut library = Library {
        pool,
        dir,
        content,
        work_id,
        video_id: 0,
        stream_key: stream_key.expose_secret().to_owned(),
        read_only_key: read_only_key.expose_secret().to_owned(),
    };
    let path = library.root().to_str().unwrap().to_owned();
    let location =
        library.add_location(StorageType::Local, json!({ "path": path }), json!({})).await;
    library.video_id = library.add_video(location, VIDEO_PATH, json!({})).await;
    library
}

fn stream_path(id: i64) -> String {
    format!("/api/v1/videos/{id}/stream")
}

async fn request(
    cli: &TestClient<impl Endpoint>,
    method: Method,
    id: i64,
    key: &str,
    extra: &[(&str, &str)],
) -> TestResponse {
    let mut builder =
        cli.request(method, stream_path(id)).header("Authorization", format!("Bearer {key}"));
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.send().await
}

fn header(response: &TestResponse, name: &str) -> Option<String> {
    response.0.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

async fn body(response: TestResponse) -> Vec<u8> {
    response.0.into_body().into_bytes().await.unwrap().to_vec()
}

async fn assert_error(response: TestResponse, status: StatusCode, code: &str) {
    response.assert_status(status);
    response.assert_content_type("application/json; charset=utf-8");
    let json = response.json().await;
    json.value().object().get("code").assert_string(code);
    assert!(!json.value().object().get("error").string().is_empty());
}

/// A server on 127.0.0.1:0, stopped when dropped.
struct Running {
    base: Url,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_stream_service(pool: &PgPool) -> Running {
    // These tests stream videos only; no thumbnail is ever looked up in this store.
    let assets = AssetStore::Directory(std::env::temp_dir().join("velour-no-assets"));
    let state = StreamState::new(pool.clone(), PeerSettings::for_loopback_peers(), assets).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = base_url(listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        serve(listener, state, std::future::pending()).await.unwrap();
    });
    Running { base, task }
}

async fn run_endpoint(endpoint: impl Endpoint + 'static) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = base_url(listener.local_addr().unwrap());
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    let task = tokio::spawn(async move {
        Server::new_with_acceptor(acceptor).run(endpoint).await.unwrap();
    });
    Running { base, task }
}

fn base_url(addr: SocketAddr) -> Url {
    Url::parse(&format!("http://{addr}/")).unwrap()
}

#[tokio::test]
async fn no_range_sends_the_whole_file_with_its_headers() {
    with_library(|lib| async move {
        let response =
            request(&lib.client(), Method::GET, lib.video_id, &lib.stream_key, &[]).await;
        response.assert_status(StatusCode::OK);
        response.assert_header("Content-Length", "1000");
        response.assert_header("Accept-Ranges", "bytes");
        response.assert_header("Content-Type", "video/mp4");
        response.assert_header_is_not_exist("Content-Range");
        let etag = header(&response, "ETag").unwrap();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        let modified = header(&response, "Last-Modified").unwrap();
        assert!(httpdate::parse_http_date(&modified).is_ok(), "{modified}");
        assert_eq!(body(response).await, lib.content);
    })
    .await;
}

#[tokio::test]
async fn single_ranges_are_answered_206_with_their_content_range() {
    with_library(|lib| async move {
        let cli = lib.client();
        let cases = [
            ("bytes=10-19", 10, 19),
            ("bytes=0-0", 0, 0),
            ("bytes=990-", 990, 999),
            ("bytes=-10", 990, 999),
            ("bytes=995-5000", 995, 999),
            ("bytes=-5000", 0, 999),
        ];
        for (range, start, end) in cases {
            let response =
                request(&cli, Method::GET, lib.video_id, &lib.stream_key, &[("Range", range)])
                    .await;
            response.assert_status(StatusCode::PARTIAL_CONTENT);
            response.assert_header("Content-Range", format!("bytes {start}-{end}/1000"));
            response.assert_header("Content-Length", (end - start + 1).to_string());
            response.assert_header("Accept-Ranges", "bytes");
            assert_eq!(body(response).await, lib.content[start..=end], "{range}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_unsatisfiable_range_is_416_with_the_size() {
    with_library(|lib| async move {
        let cli = lib.client();
        for range in ["bytes=1000-", "bytes=1000-1005", "bytes=-0"] {
            let response =
                request(&cli, Method::GET, lib.video_id, &lib.stream_key, &[("Range", range)])
                    .await;
            response.assert_header("Content-Range", "bytes */1000");
            assert_error(response, StatusCode::RANGE_NOT_SATISFIABLE, "range-not-satisfiable")
                .await;
        }
    })
    .await;
}

#[tokio::test]
async fn ignored_ranges_send_the_whole_file() {
    with_library(|lib| async move {
        let cli = lib.client();
        for range in ["bytes=0-1,x", "items=0-1", "bytes=5-1", "bytes=abc"] {
            let response =
                request(&cli, Method::GET, lib.video_id, &lib.stream_key, &[("Range", range)])
                    .await;
            response.assert_status(StatusCode::OK);
            response.assert_header("Content-Length", "1000");
            assert_eq!(body(response).await, lib.content, "{range}");
        }
    })
    .await;
}

#[tokio::test]
async fn head_answers_the_get_headers_without_a_body() {
    with_library(|lib| async move {
        let cli = lib.client();
        for range in [None, Some("bytes=10-19")] {
            let extra: Vec<_> = range.map(|r| ("Range", r)).into_iter().collect();
            let get = request(&cli, Method::GET, lib.video_id, &lib.stream_key, &extra).await;
            let head = request(&cli, Method::HEAD, lib.video_id, &lib.stream_key, &extra).await;
            assert_eq!(head.0.status(), get.0.status());
            for name in ["Content-Length", "Content-Range", "Content-Type", "ETag", "Accept-Ranges"]
            {
                assert_eq!(header(&head, name), header(&get, name), "{name} for {range:?}");
            }
            assert!(body(head).await.is_empty());
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_without_a_valid_key_is_401_with_a_challenge() {
    with_library(|lib| async move {
        let cli = lib.client();
        let path = stream_path(lib.video_id);
        let missing = cli.get(&path).send().await;
        let unknown = cli.get(&path).header("Authorization", "Bearer not-a-key").send().await;
        let basic = cli.get(&path).header("Authorization", "Basic dXNlcjpwYXNz").send().await;
        for response in [missing, unknown, basic] {
            response.assert_header("WWW-Authenticate", BEARER_CHALLENGE);
            assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }
    })
    .await;
}

#[tokio::test]
async fn expired_revoked_and_unconnected_keys_are_refused_with_their_codes() {
    with_library(|lib| async move {
        let cli = lib.client();
        let path = stream_path(lib.video_id);
        let get = |key: String| cli.get(&path).header("Authorization", format!("Bearer {key}"));
        get(lib.stream_key.clone()).send().await.assert_status_is_ok();

        let set = |sql: &'static str| {
            let pool = lib.pool.clone();
            async move { sqlx::query(sql).execute(&pool).await.unwrap() }
        };
        set("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE name = 'player'")
            .await;
        let expired = get(lib.stream_key.clone()).send().await;
        expired.assert_header("WWW-Authenticate", BEARER_CHALLENGE);
        assert_error(expired, StatusCode::UNAUTHORIZED, "key-expired").await;

        set("UPDATE api_keys SET expires_at = NULL, revoked_at = now() WHERE name = 'player'")
            .await;
        let revoked = get(lib.stream_key.clone()).send().await;
        assert_error(revoked, StatusCode::UNAUTHORIZED, "key-revoked").await;

        set("UPDATE api_keys SET revoked_at = NULL, active = TRUE WHERE name = 'player'").await;
        set("INSERT INTO federation_connections (api_key_id, remote_instance_url, status)
             SELECT id, 'https://peer.example/', 'suspended' FROM api_keys WHERE name = 'player'")
        .await;
        set("UPDATE api_keys k SET connection_id = c.id FROM federation_connections c
             WHERE c.api_key_id = k.id")
        .await;
        let suspended = get(lib.stream_key.clone()).send().await;
        assert_error(suspended, StatusCode::FORBIDDEN, "connection-suspended").await;

        set("UPDATE federation_connections SET status = 'active'").await;
        get(lib.stream_key.clone()).send().await.assert_status_is_ok();
    })
    .await;
}

#[tokio::test]
async fn a_key_without_the_stream_permission_is_403() {
    with_library(|lib| async move {
        let response =
            request(&lib.client(), Method::GET, lib.video_id, &lib.read_only_key, &[]).await;
        assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    })
    .await;
}

#[tokio::test]
async fn unknown_videos_and_paths_are_404_in_json() {
    with_library(|lib| async move {
        let cli = lib.client();
        let key = format!("Bearer {}", lib.stream_key);
        for path in ["/api/v1/videos/987654/stream", "/api/v1/videos/abc/stream", "/nope"] {
            let response = cli.get(path).header("Authorization", &key).send().await;
            assert_error(response, StatusCode::NOT_FOUND, "not-found").await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_file_gone_from_the_disk_is_404_video_file_missing() {
    with_library(|lib| async move {
        std::fs::remove_file(lib.root().join(VIDEO_PATH)).unwrap();
        let response =
            request(&lib.client(), Method::GET, lib.video_id, &lib.stream_key, &[]).await;
        assert_error(response, StatusCode::NOT_FOUND, "video-file-missing").await;
    })
    .await;
}

#[tokio::test]
async fn a_path_escaping_the_root_is_refused() {
    with_library(|lib| async move {
        // A file beside the root, reached by `..` or by a link inside the root.
        std::fs::write(lib.dir.join("outside.mp4"), b"not yours").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(lib.dir.join("outside.mp4"), lib.root().join("linked.mp4"))
            .unwrap();
        let location: i64 =
            sqlx::query_scalar("SELECT storage_location_id FROM videos WHERE id = $1")
                .bind(lib.video_id)
                .fetch_one(&lib.pool)
                .await
                .unwrap();
        let cli = lib.client();
        for key in ["../outside.mp4", "linked.mp4", "/etc/hostname"] {
            let video = lib.add_video(location, key, json!({})).await;
            let response = request(&cli, Method::GET, video, &lib.stream_key, &[]).await;
            assert_error(response, StatusCode::NOT_FOUND, "video-file-missing").await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_current_etag_is_answered_304_and_a_stale_if_range_gets_the_whole_file() {
    with_library(|lib| async move {
        let cli = lib.client();
        let first = request(&cli, Method::GET, lib.video_id, &lib.stream_key, &[]).await;
        let etag = header(&first, "ETag").unwrap();

        let cached =
            request(&cli, Method::GET, lib.video_id, &lib.stream_key, &[("If-None-Match", &etag)])
                .await;
        cached.assert_status(StatusCode::NOT_MODIFIED);
        cached.assert_header("ETag", &etag);
        assert!(body(cached).await.is_empty());

        let current = [("Range", "bytes=0-9"), ("If-Range", etag.as_str())];
        let response = request(&cli, Method::GET, lib.video_id, &lib.stream_key, &current).await;
        response.assert_status(StatusCode::PARTIAL_CONTENT);

        let stale = [("Range", "bytes=0-9"), ("If-Range", "\"an-older-version\"")];
        let response = request(&cli, Method::GET, lib.video_id, &lib.stream_key, &stale).await;
        response.assert_status(StatusCode::OK);
        assert_eq!(body(response).await, lib.content);
    })
    .await;
}

#[tokio::test]
async fn unusable_storage_is_answered_without_internal_detail() {
    with_library(|lib| async move {
        let cli = lib.client();
        // A bucket without credentials cannot be read.
        let s3 = lib.add_location(StorageType::S3, json!({ "bucket": "b" }), json!({})).await;
        let gone = lib.dir.join("unmounted").to_str().unwrap().to_owned();
        let unmounted =
            lib.add_location(StorageType::Local, json!({ "path": gone }), json!({})).await;
        let no_path = lib.add_location(StorageType::Local, json!({}), json!({})).await;
        for location in [s3, unmounted, no_path] {
            let video = lib.add_video(location, "a.mp4", json!({})).await;
            let response = request(&cli, Method::GET, video, &lib.stream_key, &[]).await;
            assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "storage-unavailable").await;
        }
    })
    .await;
}

/// `TestClient` calls the endpoint directly; this goes through hyper, which must send our
/// `Content-Length` for a body it cannot measure, and keep it (without a body) for HEAD.
#[tokio::test]
async fn content_length_reaches_the_wire_for_streamed_bodies() {
    with_library(|lib| async move {
        let server = run_stream_service(&lib.pool).await;
        let http = reqwest::Client::new();
        let url = server.base.join(&stream_path(lib.video_id)).unwrap();
        let send = |method: Method, range: Option<&str>| {
            let mut request = http.request(method, url.clone()).bearer_auth(&lib.stream_key);
            if let Some(range) = range {
                request = request.header("Range", range);
            }
            request.send()
        };

        let full = send(Method::GET, None).await.unwrap();
        assert_eq!(full.status(), 200);
        assert_eq!(full.headers()["content-length"], "1000");
        assert!(full.headers().get("transfer-encoding").is_none());
        assert_eq!(full.bytes().await.unwrap(), lib.content);

        let partial = send(Method::GET, Some("bytes=100-199")).await.unwrap();
        assert_eq!(partial.status(), 206);
        assert_eq!(partial.headers()["content-length"], "100");
        assert_eq!(partial.bytes().await.unwrap(), lib.content[100..200]);

        let head = send(Method::HEAD, None).await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], "1000");
        assert!(head.bytes().await.unwrap().is_empty());

        let health = http.get(server.base.join("healthz").unwrap()).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.unwrap(), "ok");
    })
    .await;
}

#[tokio::test]
async fn a_peer_video_streams_through_with_the_peer_headers() {
    with_library(|lib| async move {
        // The peer is this same service, serving the library's own video.
        let peer = run_stream_service(&lib.pool).await;
        let video = lib.add_peer_video(&peer.base, &lib.stream_key, lib.video_id).await;
        let cli = lib.client();

        let local = request(&cli, Method::GET, lib.video_id, &lib.stream_key, &[]).await;
        let partial =
            request(&cli, Method::GET, video, &lib.stream_key, &[("Range", "bytes=10-19")]).await;
        partial.assert_status(StatusCode::PARTIAL_CONTENT);
        partial.assert_header("Content-Range", "bytes 10-19/1000");
        partial.assert_header("Content-Length", "10");
        partial.assert_header("Content-Type", "video/mp4");
        partial.assert_header("Accept-Ranges", "bytes");
        assert_eq!(header(&partial, "ETag"), header(&local, "ETag"));
        assert_eq!(header(&partial, "Last-Modified"), header(&local, "Last-Modified"));
        assert_eq!(body(partial).await, lib.content[10..20]);

        let full = request(&cli, Method::GET, video, &lib.stream_key, &[]).await;
        full.assert_status(StatusCode::OK);
        assert_eq!(body(full).await, lib.content);

        let head = request(&cli, Method::HEAD, video, &lib.stream_key, &[]).await;
        head.assert_status(StatusCode::OK);
        head.assert_header("Content-Length", "1000");
        assert!(body(head).await.is_empty());

        let etag = header(&local, "ETag").unwrap();
        let cached =
            request(&cli, Method::GET, video, &lib.stream_key, &[("If-None-Match", &etag)]).await;
        cached.assert_status(StatusCode::NOT_MODIFIED);

        let past_end =
            request(&cli, Method::GET, video, &lib.stream_key, &[("Range", "bytes=5000-")]).await;
        past_end.assert_header("Content-Range", "bytes */1000");
        assert_error(past_end, StatusCode::RANGE_NOT_SATISFIABLE, "range-not-satisfiable").await;
    })
    .await;
}

#[tokio::test]
async fn peer_failures_become_gateway_errors() {
    with_library(|lib| async move {
        let peer = run_stream_service(&lib.pool).await;
        let cli = lib.client();

        let refused = lib.add_peer_video(&peer.base, "a-key-the-peer-never-issued", 1).await;
        let response = request(&cli, Method::GET, refused, &lib.stream_key, &[]).await;
        assert_error(response, StatusCode::BAD_GATEWAY, "peer-refused").await;

        let gone = lib.add_peer_video(&peer.base, &lib.stream_key, 987_654).await;
        let response = request(&cli, Method::GET, gone, &lib.stream_key, &[]).await;
        assert_error(response, StatusCode::NOT_FOUND, "video-file-missing").await;

        // A port that was just free: nothing listens there.
        let closed =
            base_url(TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap());
        let unreachable = lib.add_peer_video(&closed, &lib.stream_key, 1).await;
        let response = request(&cli, Method::GET, unreachable, &lib.stream_key, &[]).await;
        assert_error(response, StatusCode::BAD_GATEWAY, "peer-unreachable").await;
    })
    .await;
}

#[tokio::test]
async fn a_peer_answering_another_range_is_a_bad_gateway() {
    with_library(|lib| async move {
        #[poem::handler]
        fn always_the_start() -> Response {
            Response::builder()
                .status(StatusCode::PARTIAL_CONTENT)
                .header("Content-Range", "bytes 0-9/1000")
                .body(vec![0u8; 10])
        }
        let peer =
            run_endpoint(Route::new().at("/api/v1/videos/:id/stream", poem::get(always_the_start)))
                .await;
        let video = lib.add_peer_video(&peer.base, "k", 1).await;
        let cli = lib.client();

        let asked = [("Range", "bytes=10-19")];
        let response = request(&cli, Method::GET, video, &lib.stream_key, &asked).await;
        assert_error(response, StatusCode::BAD_GATEWAY, "peer-error").await;

        // A 206 to a request without a range is not relayed either.
        let response = request(&cli, Method::GET, video, &lib.stream_key, &[]).await;
        assert_error(response, StatusCode::BAD_GATEWAY, "peer-error").await;

        let asked = [("Range", "bytes=0-99")];
        let response = request(&cli, Method::GET, video, &lib.stream_key, &asked).await;
        response.assert_status(StatusCode::PARTIAL_CONTENT);
    })
    .await;
}

#[tokio::test]
async fn a_silent_peer_is_a_gateway_timeout() {
    with_library(|lib| async move {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = base_url(listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let video = lib.add_peer_video(&base, "k", 1).await;
        let quick = PeerSettings { read_timeout_secs: 1, ..PeerSettings::for_loopback_peers() };

        let response =
            request(&lib.client_with(quick), Method::GET, video, &lib.stream_key, &[]).await;
        assert_error(response, StatusCode::GATEWAY_TIMEOUT, "peer-timeout").await;
        silent.abort();
    })
    .await;
}
