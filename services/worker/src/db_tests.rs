//! Scans against the real Postgres (127.0.0.1:5432, trust auth), ffmpeg/ffprobe and Redis.
//! Each test gets a database of its own, dropped at the end even when the test fails.
//! `VELOUR_TEST_POSTGRES_URL` and `VELOUR_TEST_REDIS_URL` point them elsewhere.

use crate::scan::SCAN_LOCK_CLASS;
use crate::{ScanError, ScanFailure, WorkerState, scan_location};
use futures_util::FutureExt;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;
use velour_core::StorageType;
use velour_core::settings::{DatabaseSettings, PeerSettings, WorkerSettings};
use velour_db::PageRequest;
use velour_db::ingest::{FoundVideo, FoundWork, VideoChange, WorkChange};
use velour_db::locations::{NewLocation, create_location};
use velour_db::scans::{ScanCounts, enqueue_scan_run, get_scan_run, list_scan_skips};
use velour_db::secrets::SecretsCipher;
use velour_jobs::ScanLocation;
use velour_storage::AssetStore;

fn postgres_server() -> String {
    std::env::var("VELOUR_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432".into())
}

/// Runs `test` on a fresh, migrated database and drops the database afterwards.
async fn with_database<F, Fut>(test: F)
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = ()>,
{
    let server = postgres_server();
    let name = format!("velour_worker_test_{}", uuid::Uuid::new_v4().simple());
    let url = Url::parse(&format!("{server}/{name}")).unwrap();
    let pool = velour_db::connect_and_migrate(&DatabaseSettings::new(url))
        .await
        .expect("Postgres must be running for the worker's database tests");

    let outcome = AssertUnwindSafe(test(pool.clone())).catch_unwind().await;

    pool.close().await;
    let mut admin = PgConnection::connect(&format!("{server}/postgres")).await.unwrap();
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn state(pool: &PgPool) -> WorkerState {
    state_with(pool, WorkerSettings::default())
}

/// A worker state whose thumbnails go to a directory of its own under the system's
/// temporary directory (only the tests that make thumbnails create it).
fn state_with(pool: &PgPool, worker: WorkerSettings) -> WorkerState {
    let dir = std::env::temp_dir().join(format!("velour-assets-{}", uuid::Uuid::new_v4()));
    WorkerState::new(
        pool.clone(),
        worker,
        PeerSettings::for_loopback_peers(),
        AssetStore::Directory(dir),
    )
}

/// A real one-second (or longer) H.264/AAC video made by ffmpeg.
fn make_video(path: &Path, seconds: u32) {
    let source = format!("testsrc=duration={seconds}:size=160x120:rate=10");
    let sine = format!("sine=duration={seconds}");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &source])
        .args(["-f", "lavfi", "-i", &sine, "-c:v", "libx264", "-c:a", "aac", "-shortest"])
        .arg(path)
        .status()
        .expect("ffmpeg must be installed for the worker's scan tests");
    assert!(status.success(), "ffmpeg failed to make {}", path.display());
}

async fn add_location(pool: &PgPool, name: &str, kind: StorageType, config: Value) -> i64 {
    let secrets =
        if kind == StorageType::Velour { json!({"api_key": "peer-key"}) } else { json!({}) };
    let new = NewLocation {
        name,
        storage_type: kind,
        configuration: config,
        secrets,
        rescan_interval_secs: None,
    };
    create_location(pool, &SecretsCipher::default(), new).await.unwrap().id
}

async fn scan(state: &WorkerState, location_id: i64) -> (i64, Result<ScanCounts, ScanError>) {
    let (run, created) = enqueue_scan_run(&state.pool, location_id).await.unwrap();
    assert!(created, "a fresh run is queued for each scan");
    let job = ScanLocation::new(run.id, location_id);
    (run.id, scan_location(state, job).await)
}

/// Every row's `updated_at`, to show that a rescan wrote nothing.
async fn stamps(pool: &PgPool) -> Vec<(String, i64, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as(
        "SELECT 'video', id, updated_at FROM videos UNION ALL
         SELECT 'work', id, updated_at FROM works ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn only_seen(works: i32, videos: i32) -> ScanCounts {
    ScanCounts { works_seen: works, videos_seen: videos, ..ScanCounts::default() }
}

#[tokio::test]
async fn folder_scans_index_new_files_and_rescans_change_nothing() {
    with_database(|pool| async move {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("Big Buck Bunny (2008)")).unwrap();
        make_video(&root.join("Big Buck Bunny (2008)/bbb.mp4"), 1);
        make_video(&root.join("Elephants_Dream.mp4"), 2);
        std::fs::write(root.join("broken.mp4"), b"not a video at all").unwrap();
        std::fs::write(root.join("notes.txt"), b"not a video either").unwrap();

        let state = state(&pool);
        let config = json!({ "path": root });
        let location = add_location(&pool, "Films", StorageType::Local, config).await;

        // First scan: two videos and their works are added; the broken file is skipped.
        let (run_id, counts) = scan(&state, location).await;
        let expected = ScanCounts { works_added: 2, videos_added: 2, ..only_seen(2, 2) };
        assert_eq!(counts.unwrap(), expected);
        let run = get_scan_run(&pool, run_id).await.unwrap();
        assert_eq!((run.state.as_str(), run.videos_added, run.videos_skipped), ("succeeded", 2, 1));
        let skips = list_scan_skips(&pool, run_id, 10).await.unwrap();
        assert_eq!(skips[0].path, "broken.mp4");
        assert!(skips[0].reason.starts_with("ffprobe could not read the file"), "{skips:?}");
        assert_eq!(state.probes.load(Ordering::Relaxed), 3);

        let page = PageRequest::new(None, None).unwrap();
        let (works, total) =
            velour_db::catalog::list_works(&pool, &Default::default(), page).await.unwrap();
        assert_eq!(total, 2);
        let titles: Vec<(&str, Option<i32>)> =
            works.iter().map(|w| (w.work.title.as_str(), w.work.year)).collect();
        assert_eq!(titles, [("Big Buck Bunny", Some(2008)), ("Elephants Dream", None)]);
        let bbb = &works[0].videos[0];
        assert_eq!(
            (bbb.source_key.as_str(), bbb.filename.as_str()),
            ("Big Buck Bunny (2008)/bbb.mp4", "Big Buck Bunny (2008)/bbb.mp4")
        );
        assert_eq!((bbb.width, bbb.height), (Some(160), Some(120)));
        assert_eq!(
            (bbb.video_codec.as_deref(), bbb.audio_codec.as_deref()),
            (Some("h264"), Some("aac"))
        );
        assert!(bbb.web_compatible);
        assert!(bbb.duration.is_some_and(|d| (d - 1.0).abs() < 0.1), "{:?}", bbb.duration);
        let oshash =
            crate::oshash::oshash_file(&root.join("Big Buck Bunny (2008)/bbb.mp4")).unwrap();
        assert_eq!(bbb.fingerprints.0, json!({ "oshash": oshash }));

        // Rescan of the unchanged folder: nothing counted, nothing probed again (the broken
        // file neither: it has not changed), nothing written; the skip is still listed.
        let before = stamps(&pool).await;
        let (run_id, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap(), only_seen(2, 2));
        assert_eq!(state.probes.load(Ordering::Relaxed), 3);
        assert_eq!(stamps(&pool).await, before);
        let skips = list_scan_skips(&pool, run_id, 10).await.unwrap();
        assert_eq!(skips[0].path, "broken.mp4");
        assert!(skips[0].reason.ends_with("(unchanged since an earlier scan; not probed again)"));

        // A deleted file is marked removed, and its work has nothing left.
        let kept = root.join("kept.bin");
        std::fs::rename(root.join("Elephants_Dream.mp4"), &kept).unwrap();
        let (_, counts) = scan(&state, location).await;
        let expected = ScanCounts { works_removed: 1, videos_removed: 1, ..only_seen(1, 1) };
        assert_eq!(counts.unwrap(), expected);
        let (_, total) =
            velour_db::catalog::list_works(&pool, &Default::default(), page).await.unwrap();
        assert_eq!(total, 1);

        // Back again: the same row is present again and counts as added.
        std::fs::rename(&kept, root.join("Elephants_Dream.mp4")).unwrap();
        let (_, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap(), ScanCounts { videos_added: 1, ..only_seen(2, 2) });
        let videos: i64 =
            sqlx::query_scalar("SELECT count(*) FROM videos").fetch_one(&pool).await.unwrap();
        assert_eq!(videos, 2);

        // The broken file is replaced by a real video: it changed, so it is probed and
        // indexed, and its remembered failure is forgotten.
        make_video(&root.join("broken.mp4"), 1);
        let probes = state.probes.load(Ordering::Relaxed);
        let (_, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap().videos_added, 1);
        assert_eq!(state.probes.load(Ordering::Relaxed) - probes, 1);
        let remembered = velour_db::ingest::unindexable_files(&pool, location).await.unwrap();
        assert!(remembered.is_empty(), "{remembered:?}");
    })
    .await;
}

#[tokio::test]
async fn a_missing_folder_fails_the_run_with_its_reason() {
    with_database(|pool| async move {
        let state = state(&pool);
        let config = json!({ "path": "/nonexistent/velour/films" });
        let location = add_location(&pool, "Gone", StorageType::Local, config).await;

        let (run_id, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::FolderUnreadable { .. }))));
        let run = get_scan_run(&pool, run_id).await.unwrap();
        assert_eq!(run.state, "failed");
        let error = run.error.unwrap_or_default();
        assert!(error.starts_with("cannot read the folder /nonexistent/velour/films"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_finished_run_is_not_scanned_again() {
    with_database(|pool| async move {
        let state = state(&pool);
        let dir = tempfile::tempdir().unwrap();
        let config = json!({ "path": dir.path() });
        let location = add_location(&pool, "Empty", StorageType::Local, config).await;

        let (run_id, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap(), ScanCounts::default());
        let again = ScanLocation::new(run_id, location);
        let outcome = scan_location(&state, again).await;
        assert!(matches!(outcome, Err(ScanError::RunNotActive(id)) if id == run_id));
    })
    .await;
}

#[tokio::test]
async fn a_locked_location_fails_queued_runs_and_leaves_running_ones_alone() {
    with_database(|pool| async move {
        let mut state = state(&pool);
        state.lock_wait = Duration::from_millis(1500);
        let dir = tempfile::tempdir().unwrap();
        let config = json!({ "path": dir.path() });
        let location = add_location(&pool, "Busy", StorageType::Local, config).await;

        // Another worker's scan of the location, as far as the lock can tell.
        let mut holder = pool.acquire().await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(SCAN_LOCK_CLASS)
            .bind(location as i32)
            .execute(&mut *holder)
            .await
            .unwrap();

        let (run_id, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::LocationBusy(_)))));
        let run = get_scan_run(&pool, run_id).await.unwrap();
        assert_eq!(run.state, "failed");
        assert!(run.error.unwrap_or_default().starts_with("another scan of this location"));

        let (run, _) = enqueue_scan_run(&pool, location).await.unwrap();
        velour_db::scans::start_scan_run(&pool, run.id).await.unwrap();
        let job = ScanLocation::new(run.id, location);
        let outcome = scan_location(&state, job.clone()).await;
        assert!(matches!(outcome, Err(ScanError::LocationBusy)));
        assert_eq!(get_scan_run(&pool, run.id).await.unwrap().state, "running");

        // Once the holder lets go, the running run is taken over and finished.
        holder.close().await.unwrap();
        assert_eq!(scan_location(&state, job).await.unwrap(), ScanCounts::default());
    })
    .await;
}

/// What the fake peer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerMode {
    TwoPages,
    SecondPageFails,
    FirstPageOnly,
    /// Every page says there is one more.
    Endless,
    RefusesKey,
    EmptyFirstPage,
    ClaimsHugeListing,
    HostileEntries,
    /// Advertises `works.updated_since`: hands out cursor `c1` with the full listing,
    /// then `c2` with the changes since `c1`, and nothing changed since `c2`.
    Syncing,
    /// As `Syncing`, but the second page of changes since `c1` fails.
    SyncingSecondChangePageFails,
    /// As `Syncing`, but changes since `c1` are pruned already (410 `cursor-too-old`).
    SyncingChangesGone,
    /// Advertises `works.after`: page 1 holds Amélie and says it is the only page, but
    /// names `k1` as where the next one starts (a work was added meanwhile); after `k1`
    /// comes Big Buck Bunny, after `k2` nothing. Page 2 by number fails.
    PagesByKey,
    /// As `PagesByKey`, but page 1 names no next page while counting three.
    PagesByKeyEndEarly,
}

/// A peer speaking just enough HTTP/1.1 for the client: one request per connection.
struct FakePeer {
    url: Url,
    mode: Arc<Mutex<PeerMode>>,
    /// Every request target, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakePeer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let mode = Arc::new(Mutex::new(PeerMode::TwoPages));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (shared, log) = (mode.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket, shared.clone(), log.clone()));
            }
        });
        Self { url, mode, requests }
    }

    fn set(&self, mode: PeerMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The requests made since the last call.
    fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

async fn answer(
    mut socket: TcpStream,
    mode: Arc<Mutex<PeerMode>>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let mut request = Vec::new();
    let mut chunk = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    requests.lock().unwrap().push(target.clone());
    let authorized = head.contains("authorization: bearer peer-key");
    let mode = *mode.lock().unwrap();
    let (status, body) = route(mode, &target, authorized);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

fn route(mode: PeerMode, target: &str, authorized: bool) -> (&'static str, String) {
    if !authorized || mode == PeerMode::RefusesKey {
        return ("401 Unauthorized", json!({ "error": "Unauthorized" }).to_string());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let page: i64 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("page="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let ok = |body: Value| ("200 OK", body.to_string());
    if matches!(mode, PeerMode::PagesByKey | PeerMode::PagesByKeyEndEarly) {
        let after = query.split('&').find_map(|pair| pair.strip_prefix("after="));
        if mode == PeerMode::PagesByKeyEndEarly && path == "/api/v1/works" {
            let mut body = works_page(1, 3, vec![amelie()]);
            body["sync"] = json!({ "cursor": "c1", "next_after": null });
            return ("200 OK", body.to_string());
        }
        return route_by_key(path, after, page);
    }
    let syncing = [PeerMode::Syncing, PeerMode::SyncingSecondChangePageFails];
    if syncing.contains(&mode) || mode == PeerMode::SyncingChangesGone {
        let since = query.split('&').find_map(|pair| pair.strip_prefix("updated_since="));
        return route_syncing(mode, path, since, page);
    }
    match path {
        "/api/v1/ping" => ok(json!({ "status": "ok", "timestamp": "2026-01-01T00:00:00Z" })),
        "/api/v1/instance" => ok(json!({ "name": "Fake", "version": "0.1.0", "total_works": 2 })),
        "/api/v1/works" => match (mode, page) {
            (PeerMode::SecondPageFails, 2) => ("500 Internal Server Error", "{}".to_owned()),
            (PeerMode::Endless, n) => ok(works_page(n, n + 1, vec![amelie()])),
            (PeerMode::FirstPageOnly, 1) => ok(works_page(1, 1, vec![amelie()])),
            (PeerMode::EmptyFirstPage, n) => ok(works_page(n, 5, vec![])),
            (PeerMode::HostileEntries, 1) => ok(works_page(1, 1, hostile_works())),
            (PeerMode::ClaimsHugeListing, n) => ok(works_page(n, 1_000_000_000, vec![amelie()])),
            (_, 1) => ok(works_page(1, 2, vec![amelie()])),
            (_, 2) => ok(works_page(2, 2, vec![big_buck_bunny()])),
            (_, n) => ok(works_page(n, 2, vec![])),
        },
        _ => ("404 Not Found", "{}".to_owned()),
    }
}

/// A peer with incremental listings. Since `c1`, Amélie's video grew and Big Buck Bunny's
/// only video went (its tombstone alone on page 2).
fn route_syncing(
    mode: PeerMode,
    path: &str,
    since: Option<&str>,
    page: i64,
) -> (&'static str, String) {
    let ok = |body: Value| ("200 OK", body.to_string());
    let sync = |mut body: Value, cursor: &str, deleted: Vec<Value>| {
        let count = deleted.len();
        body["sync"] = json!({ "cursor": cursor, "deleted": deleted, "deleted_count": count });
        ok(body)
    };
    match (path, since, page) {
        ("/api/v1/ping", _, _) => {
            ok(json!({ "status": "ok", "timestamp": "2026-01-01T00:00:00Z" }))
        }
        ("/api/v1/instance", _, _) => ok(json!({
            "name": "Fake", "version": "0.1.0", "total_works": 2,
            "capabilities": ["works.updated_since"]
        })),
        ("/api/v1/works", None, 1) => sync(works_page(1, 2, vec![amelie()]), "c1", vec![]),
        ("/api/v1/works", None, 2) => sync(works_page(2, 2, vec![big_buck_bunny()]), "c1", vec![]),
        ("/api/v1/works", Some("c1"), 1) => {
            let mut grown = amelie();
            grown["videos"][0]["file_size"] = json!(4321);
            sync(works_page(1, 2, vec![grown]), "c2", vec![])
        }
        ("/api/v1/works", Some("c1"), _) if mode == PeerMode::SyncingChangesGone => {
            ("410 Gone", json!({ "code": "cursor-too-old", "error": "pruned" }).to_string())
        }
        ("/api/v1/works", Some("c1"), 2) if mode == PeerMode::SyncingSecondChangePageFails => {
            ("500 Internal Server Error", "{}".to_owned())
        }
        ("/api/v1/works", Some("c1"), 2) => {
            let gone = json!({ "type": "video", "id": 21, "work_id": 2,
                               "removed_at": "2026-01-01T00:00:00Z" });
            sync(works_page(2, 2, vec![]), "c2", vec![gone])
        }
        ("/api/v1/works", Some("c2"), 1) => sync(works_page(1, 0, vec![]), "c2", vec![]),
        _ => ("404 Not Found", "{}".to_owned()),
    }
}

fn route_by_key(path: &str, after: Option<&str>, page: i64) -> (&'static str, String) {
    let ok = |body: Value| ("200 OK", body.to_string());
    let keyed = |mut body: Value, next: Option<&str>| {
        body["sync"] = json!({ "cursor": "c1", "next_after": next });
        ok(body)
    };
    match (path, after, page) {
        ("/api/v1/ping", _, _) => {
            ok(json!({ "status": "ok", "timestamp": "2026-01-01T00:00:00Z" }))
        }
        ("/api/v1/instance", _, _) => ok(json!({
            "name": "Fake", "version": "0.1.0", "total_works": 1,
            "capabilities": ["works.after"]
        })),
        ("/api/v1/works", None, 1) => keyed(works_page(1, 1, vec![amelie()]), Some("k1")),
        ("/api/v1/works", Some("k1"), 2) => {
            keyed(works_page(2, 1, vec![big_buck_bunny()]), Some("k2"))
        }
        ("/api/v1/works", Some("k2"), 3) => keyed(works_page(3, 1, vec![]), None),
        ("/api/v1/works", _, _) => ("500 Internal Server Error", "{}".to_owned()),
        _ => ("404 Not Found", "{}".to_owned()),
    }
}

fn works_page(page: i64, total_pages: i64, works: Vec<Value>) -> Value {
    json!({
        "works": works,
        "pagination": { "current_page": page, "total_pages": total_pages, "total_count": 2 }
    })
}

fn amelie() -> Value {
    json!({
        "id": 1, "title": "Ame\u{301}lie", "year": 2001, "description": "A shy waitress",
        "director": null, "rating": null, "organized": false,
        "created_at": "2025-10-31T03:36:14Z",
        "videos": [
            {
                "id": 11, "filename": "amelie.mkv", "file_size": 1234, "web_compatible": false,
                "duration": 7200.5, "width": 1920, "height": 1080, "video_codec": "h264",
                "audio_codec": "ac3", "fingerprints": { "oshash": "0123456789abcdef" },
                "storage_type": "local", "created_at": "2025-10-31T03:36:14Z"
            },
            {
                "id": 12, "filename": "borrowed.mp4", "file_size": 10, "fingerprints": {},
                "storage_type": "velour", "created_at": "2025-10-31T03:36:14Z"
            }
        ]
    })
}

/// One good work among entries Postgres could not store as sent.
fn hostile_works() -> Vec<Value> {
    let video = |id: i64, filename: &str, fingerprints: Value| {
        json!({
            "id": id, "filename": filename, "file_size": 10, "fingerprints": fingerprints,
            "storage_type": "local", "created_at": "2025-10-31T03:36:14Z"
        })
    };
    let work = |id: i64, title: String, description: &str, videos: Vec<Value>| {
        json!({
            "id": id, "title": title, "year": 2020, "description": description,
            "created_at": "2025-10-31T03:36:14Z", "videos": videos
        })
    };
    vec![
        work(1, "Nul\u{0} Title".into(), "", vec![video(31, "a.mp4", json!({}))]),
        work(2, "x".repeat(4000), "", vec![video(32, "b.mp4", json!({}))]),
        work(
            3,
            "Fine".into(),
            "plot with \u{0} inside",
            vec![
                video(33, "c\u{0}.mp4", json!({})),
                video(34, "d.mp4", json!({ "oshash": "\u{0}" })),
                video(35, "good.mp4", json!({ "oshash": "0123456789abcdef" })),
            ],
        ),
    ]
}

fn big_buck_bunny() -> Value {
    json!({
        "id": 2, "title": "Big Buck Bunny", "year": 2008, "description": "A big rabbit",
        "director": "Sacha Goedegebure", "rating": 6.5, "organized": false,
        "created_at": "2025-10-31T03:36:14Z",
        "videos": [{
            "id": 21, "filename": "bbb.mp4", "file_size": 5000, "web_compatible": true,
            "fingerprints": null, "storage_type": "local", "created_at": "2025-10-31T03:36:14Z"
        }]
    })
}

#[tokio::test]
async fn peer_scans_read_every_page_and_keep_saved_pages_when_one_fails() {
    with_database(|pool| async move {
        let peer = FakePeer::start().await;
        let state = state(&pool);
        let config = json!({ "remote_instance_url": peer.url.as_str() });
        let location = add_location(&pool, "Peer", StorageType::Velour, config).await;

        // A work we already have, without the facts the peer knows.
        let mut conn = pool.acquire().await.unwrap();
        let bbb = velour_db::ingest::FoundWork {
            title: "Big Buck Bunny",
            year: Some(2008),
            ..Default::default()
        };
        velour_db::ingest::upsert_work(&mut conn, &bbb).await.unwrap();
        drop(conn);

        // Both pages are read; the peer's own borrowed video is skipped.
        let (run_id, counts) = scan(&state, location).await;
        let expected =
            ScanCounts { works_added: 1, works_updated: 1, videos_added: 2, ..only_seen(2, 2) };
        assert_eq!(counts.unwrap(), expected);
        let skips = list_scan_skips(&pool, run_id, 10).await.unwrap();
        assert_eq!(skips.len(), 1);
        assert_eq!(skips[0].path, "borrowed.mp4 (peer video 12)");

        let page = PageRequest::new(None, None).unwrap();
        let (works, _) =
            velour_db::catalog::list_works(&pool, &Default::default(), page).await.unwrap();
        let amelie = works.iter().find(|w| w.work.year == Some(2001)).unwrap();
        assert_eq!(amelie.work.title, "Am\u{e9}lie");
        let video = &amelie.videos[0];
        assert_eq!((video.source_key.as_str(), video.filename.as_str()), ("11", "amelie.mkv"));
        assert_eq!(video.fingerprints.0, json!({ "oshash": "0123456789abcdef" }));
        assert_eq!(
            video.video_metadata.0,
            json!({ "remote_video_id": 11, "remote_instance_url": peer.url.as_str() })
        );
        let bbb = works.iter().find(|w| w.work.year == Some(2008)).unwrap();
        assert_eq!(bbb.work.description.as_deref(), Some("A big rabbit"));
        assert_eq!(bbb.work.director.as_deref(), Some("Sacha Goedegebure"));
        assert_eq!(bbb.videos[0].fingerprints.0, json!({}));

        // Unchanged peer: nothing counted, nothing written.
        let before = stamps(&pool).await;
        let (_, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap(), only_seen(2, 2));
        assert_eq!(stamps(&pool).await, before);

        // A failing page fails the run, keeps the first page and removes nothing.
        peer.set(PeerMode::SecondPageFails);
        let (run_id, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::Peer(_)))), "{outcome:?}");
        let run = get_scan_run(&pool, run_id).await.unwrap();
        assert_eq!((run.state.as_str(), run.videos_seen, run.videos_removed), ("failed", 1, 0));
        assert!(run.error.unwrap_or_default().contains("HTTP 500"));
        let (_, total) =
            velour_db::catalog::list_works(&pool, &Default::default(), page).await.unwrap();
        assert_eq!(total, 2);

        // A peer that lists less than before: what is gone is removed.
        peer.set(PeerMode::FirstPageOnly);
        let (_, counts) = scan(&state, location).await;
        let expected = ScanCounts { works_removed: 1, videos_removed: 1, ..only_seen(1, 1) };
        assert_eq!(counts.unwrap(), expected);

        // A peer whose pages never end is read up to a bound, then the run fails.
        peer.set(PeerMode::Endless);
        let (run_id, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::PeerListing(_)))));
        let error = get_scan_run(&pool, run_id).await.unwrap().error.unwrap_or_default();
        assert_eq!(
            error,
            "the peer's listing is inconsistent: the peer still reported 103 pages after 102 \
             were read"
        );

        // An empty page where the peer promised more is no complete listing: the run fails
        // and nothing is removed.
        peer.set(PeerMode::EmptyFirstPage);
        let (run_id, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::PeerListing(_)))));
        let run = get_scan_run(&pool, run_id).await.unwrap();
        assert_eq!(run.videos_removed, 0);
        assert!(run.error.unwrap_or_default().contains("page 1 was empty"));
        let (_, total) =
            velour_db::catalog::list_works(&pool, &Default::default(), page).await.unwrap();
        assert_eq!(total, 1);

        // A peer claiming a billion pages is not believed, and not read.
        peer.set(PeerMode::ClaimsHugeListing);
        let (run_id, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::PeerListing(_)))));
        let run = get_scan_run(&pool, run_id).await.unwrap();
        assert!(run.error.unwrap_or_default().contains("1000000000 pages"));

        // Entries Postgres cannot store are skipped one by one; the rest of the page is saved.
        peer.set(PeerMode::HostileEntries);
        let (run_id, outcome) = scan(&state, location).await;
        let counts = outcome.unwrap();
        assert_eq!((counts.videos_seen, counts.videos_added), (1, 1), "{counts:?}");
        let skips = list_scan_skips(&pool, run_id, 10).await.unwrap();
        assert_eq!(skips.len(), 4, "{skips:?}");
        let (works, _) =
            velour_db::catalog::list_works(&pool, &Default::default(), page).await.unwrap();
        let fine = works.iter().find(|w| w.work.title == "Fine").unwrap();
        assert_eq!(fine.work.description, None);
        assert_eq!(fine.videos.len(), 1);

        // A refused key fails the run with the peer's answer.
        peer.set(PeerMode::RefusesKey);
        let (run_id, outcome) = scan(&state, location).await;
        assert!(matches!(
            outcome,
            Err(ScanError::Failed(ScanFailure::Peer(velour_peer::PeerError::Unauthorized { .. })))
        ));
        let error = get_scan_run(&pool, run_id).await.unwrap().error.unwrap_or_default();
        assert_eq!(error, "the peer refused our key on /api/v1/ping (HTTP 401)");
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_pages_by_key_is_read_past_its_first_count_until_a_page_ends_it() {
    with_database(|pool| async move {
        let peer = FakePeer::start().await;
        peer.set(PeerMode::PagesByKey);
        let state = state(&pool);
        let config = json!({ "remote_instance_url": peer.url.as_str() });
        let location = add_location(&pool, "Peer", StorageType::Velour, config).await;

        let (_, counts) = scan(&state, location).await;
        let counts = counts.unwrap();
        assert_eq!((counts.works_added, counts.videos_added), (2, 2), "{counts:?}");
        let asked: Vec<String> =
            peer.take_requests().into_iter().filter(|t| t.starts_with("/api/v1/works")).collect();
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert!(asked[1].contains("after=k1") && asked[1].contains("page=2"), "{asked:?}");
        assert!(asked[2].contains("after=k2") && asked[2].contains("page=3"), "{asked:?}");

        // A listing that names no next page before the last the peer counts is not whole:
        // the scan fails and removes nothing.
        peer.set(PeerMode::PagesByKeyEndEarly);
        let (_, outcome) = scan(&state, location).await;
        let err = outcome.expect_err("an early end is not a complete listing").to_string();
        assert!(err.contains("ended at page 1"), "{err}");
        let present: i64 =
            sqlx::query_scalar("SELECT count(*) FROM videos WHERE removed_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(present, 2);
    })
    .await;
}

async fn stored_cursor(pool: &PgPool, location: i64) -> Option<String> {
    velour_db::locations::sync_cursor(pool, location).await.unwrap()
}

async fn present_videos(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM videos WHERE removed_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

const CHANGES_SINCE_C1_PAGE_2: &str = "/api/v1/works?updated_since=c1&page=2&per_page=100";

#[tokio::test]
async fn peer_changes_are_read_incrementally_and_the_cursor_kept_only_after_complete_scans() {
    with_database(|pool| async move {
        let peer = FakePeer::start().await;
        peer.set(PeerMode::Syncing);
        let state = state(&pool);
        let config = json!({ "remote_instance_url": peer.url.as_str() });
        let location = add_location(&pool, "Peer", StorageType::Velour, config).await;

        // A first scan reads everything, then the changes made meanwhile (since its first
        // page's cursor) before it sweeps. When those fail, the run fails: what was read
        // stays, nothing is swept and no cursor is kept.
        peer.set(PeerMode::SyncingSecondChangePageFails);
        let (_, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::Peer(_)))), "{outcome:?}");
        assert_eq!(stored_cursor(&pool, location).await, None);
        assert_eq!(present_videos(&pool).await, 2);

        // Read again in full with the changes: the grown video is updated, the tombstone
        // removes Big Buck Bunny's video, and with it the work from the listing; the cursor
        // kept is the full listing's, so the next scan reads those changes again.
        peer.set(PeerMode::Syncing);
        peer.take_requests();
        let (_, counts) = scan(&state, location).await;
        let expected = ScanCounts { works_removed: 1, videos_removed: 1, ..only_seen(2, 2) };
        assert_eq!(counts.unwrap(), ScanCounts { videos_updated: 2, ..expected });
        assert_eq!(stored_cursor(&pool, location).await.as_deref(), Some("c1"));
        let requests = peer.take_requests();
        assert_eq!(requests.last().map(String::as_str), Some(CHANGES_SINCE_C1_PAGE_2));
        let page = PageRequest::new(None, None).unwrap();
        let (works, total) =
            velour_db::catalog::list_works(&pool, &Default::default(), page).await.unwrap();
        assert_eq!(total, 1);
        assert_eq!(works[0].videos[0].file_size, 4321);

        // Changes whose second page fails: the run fails and the cursor stays where it was.
        peer.set(PeerMode::SyncingSecondChangePageFails);
        let (_, outcome) = scan(&state, location).await;
        assert!(matches!(outcome, Err(ScanError::Failed(ScanFailure::Peer(_)))), "{outcome:?}");
        assert_eq!(stored_cursor(&pool, location).await.as_deref(), Some("c1"));
        peer.set(PeerMode::Syncing);
        let (_, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap().videos_removed, 0, "the tombstone was applied already");
        assert_eq!(stored_cursor(&pool, location).await.as_deref(), Some("c2"));

        // Unchanged since: one request, nothing written.
        peer.take_requests();
        let before = stamps(&pool).await;
        let (_, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap(), ScanCounts::default());
        assert_eq!(peer.take_requests(), ["/api/v1/works?updated_since=c2&page=1&per_page=100"]);
        assert_eq!(stamps(&pool).await, before);

        // A peer that stops listing changes gets a full scan, which brings back what it
        // lists again, and no cursor is kept.
        peer.set(PeerMode::TwoPages);
        let (_, counts) = scan(&state, location).await;
        let expected = ScanCounts { videos_added: 1, videos_updated: 1, ..only_seen(2, 2) };
        assert_eq!(counts.unwrap(), expected);
        assert_eq!(stored_cursor(&pool, location).await, None);

        // A full scan whose changes since its first page are pruned already (the peer's
        // cursor reached back to a long transaction): the sweep goes on without them.
        peer.set(PeerMode::SyncingChangesGone);
        let (_, counts) = scan(&state, location).await;
        let expected = ScanCounts { works_removed: 0, ..only_seen(2, 2) };
        assert_eq!(counts.unwrap(), ScanCounts { videos_updated: 1, ..expected });
        assert_eq!(stored_cursor(&pool, location).await.as_deref(), Some("c1"));
        assert_eq!(present_videos(&pool).await, 2);
    })
    .await;
}

/// Polls `done` every 100 ms for up to 30 s; whether it came true.
async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..300 {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn queued_jobs_are_run_and_refused_keys_are_not_retried() {
    use apalis::prelude::TaskSink;

    with_database(|pool| async move {
        let redis_url =
            std::env::var("VELOUR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1".into());
        let conn = velour_jobs::connect(&redis_url).await.expect("Redis must be running");
        // A queue of its own, so that no other test's worker can take these jobs.
        let queue = format!("velour:test:{}", uuid::Uuid::new_v4().simple());
        let config = apalis_redis::Config::default().queue(&queue);
        let storage: velour_jobs::ScanStorage =
            apalis_redis::RedisStorage::new(conn.clone()).with_config(config);
        let config = apalis_redis::Config::default().queue(format!("{queue}-thumbnails"));
        let thumbnails: velour_jobs::ThumbnailStorage =
            apalis_redis::RedisStorage::new(conn.clone()).with_config(config);
        let config = apalis_redis::Config::default().queue(format!("{queue}-tests"));
        let tests: velour_jobs::TestConnectionStorage =
            apalis_redis::RedisStorage::new(conn.clone()).with_config(config);
        let queues = crate::job::Queues { scans: storage.clone(), thumbnails, tests };

        let dir = tempfile::tempdir().unwrap();
        make_video(&dir.path().join("clip.mp4"), 1);
        let config = json!({ "path": dir.path() });
        let folder = add_location(&pool, "Folder", StorageType::Local, config).await;
        let peer = FakePeer::start().await;
        peer.set(PeerMode::RefusesKey);
        let config = json!({ "remote_instance_url": peer.url.as_str() });
        let refused = add_location(&pool, "Refused", StorageType::Velour, config).await;

        let mut sink = storage.clone();
        let mut push = async |location: i64| {
            let (run, _) = enqueue_scan_run(&pool, location).await.unwrap();
            let job = ScanLocation::new(run.id, location);
            sink.push(job).await.unwrap();
            run.id
        };

        // One job waits in the queue before the worker starts...
        let folder_run = push(folder).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(crate::job::run_on(state(&pool), queues, async {
            let _ = stopped.await;
        }));
        let state_of = async |run_id| get_scan_run(&pool, run_id).await.unwrap().state;
        let folder_done = eventually(async || state_of(folder_run).await == "succeeded").await;
        // The scan queued a thumbnail job for its new video, which the worker ran.
        let video_id: i64 =
            sqlx::query_scalar("SELECT id FROM videos").fetch_one(&pool).await.unwrap();
        let thumbnail_made = eventually(async || {
            velour_db::assets::thumbnail(&pool, video_id).await.unwrap().is_some()
        })
        .await;

        // ...and one reaches it while it is idle.
        let refused_run = push(refused).await;
        let dead_set = format!("{queue}:dead");
        let refused_dead = eventually(async || {
            let mut redis = conn.clone();
            let dead: u64 =
                redis::cmd("SCARD").arg(&dead_set).query_async(&mut redis).await.unwrap();
            state_of(refused_run).await == "failed" && dead == 1
        })
        .await;
        let mut redis = conn.clone();
        let scheduled: u64 = redis::cmd("ZCARD")
            .arg(format!("{queue}:scheduled"))
            .query_async(&mut redis)
            .await
            .unwrap();

        let _ = stop.send(());
        let outcome = tokio::time::timeout(Duration::from_secs(30), worker).await;
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{queue}*")).query_async(&mut redis).await.unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap();
        }
        // apalis-redis also lists every queue that ever had a worker.
        let _: () = redis::cmd("ZREM")
            .arg("core:apalis:queues:list")
            .arg(format!("{queue}:workers"))
            .arg(format!("{queue}-thumbnails:workers"))
            .arg(format!("{queue}-tests:workers"))
            .query_async(&mut redis)
            .await
            .unwrap();

        assert!(folder_done, "the queued folder scan succeeds");
        assert!(thumbnail_made, "the scan's new video gets its thumbnail through the queue");
        assert!(refused_dead, "the refused scan fails and its task is dead, not retried");
        assert_eq!(scheduled, 0, "no retry is scheduled");
        assert!(matches!(outcome, Ok(Ok(Ok(())))), "the worker stops cleanly: {outcome:?}");
        assert_eq!(get_scan_run(&pool, folder_run).await.unwrap().videos_added, 1);
    })
    .await;
}

/// A shell script standing in for ffprobe, for the scans that test what ffprobe does badly.
fn fake_ffprobe(dir: &Path, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-ffprobe");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn ffmpeg(args: &[&str]) {
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg must be installed for the worker's scan tests");
    assert!(status.success(), "ffmpeg {args:?} failed");
}

#[tokio::test]
async fn an_odd_library_is_indexed_or_skipped_file_by_file() {
    use std::os::unix::ffi::OsStrExt;
    with_database(|pool| async move {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        let long = format!("{}.mp4", "Long ".repeat(48));
        let indexed = [
            "Ame\u{301}lie (2001).mp4",
            "Caf\u{e9} Society (2016).mp4",
            "-rf --help.mp4",
            long.as_str(),
            "half a second.mp4",
            "big sparse.mp4",
        ];
        for name in &indexed[..4] {
            make_video(&root.join(name), 1);
        }
        let half = root.join("half a second.mp4");
        let half = half.to_str().unwrap();
        ffmpeg(&["-f", "lavfi", "-i", "testsrc=duration=0.5:size=160x120:rate=10", half]);
        // Over 4 GiB, nearly all a hole: a real video (its index first) and then zeros.
        let big = root.join("big sparse.mp4");
        let src = "testsrc=duration=1:size=160x120:rate=10";
        let big_name = big.to_str().unwrap();
        ffmpeg(&["-f", "lavfi", "-i", src, "-movflags", "+faststart", big_name]);
        let big_size: u64 = 5 * 1024 * 1024 * 1024 + 7;
        std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(big_size).unwrap();

        let invalid = std::ffi::OsStr::from_bytes(b"caf\xe9 latin-1.mp4");
        std::fs::write(root.join(invalid), b"x").unwrap();
        std::fs::write(outside.path().join("secret.mp4"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.mp4"), root.join("out.mp4"))
            .unwrap();
        std::os::unix::fs::symlink(root.join("loop.mp4"), root.join("loop.mp4")).unwrap();
        std::os::unix::fs::symlink(root, root.join("again")).unwrap();
        let fifo = root.join("fifo.mp4");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        std::fs::write(root.join("empty.mp4"), b"").unwrap();
        let noise = (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8);
        std::fs::write(root.join("random.mp4"), noise.collect::<Vec<u8>>()).unwrap();
        let whole = outside.path().join("whole.mp4");
        make_video(&whole, 2);
        let bytes = std::fs::read(&whole).unwrap();
        std::fs::write(root.join("truncated.mp4"), &bytes[..bytes.len() / 2]).unwrap();
        let audio = root.join("audio only.mp4");
        ffmpeg(&["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", audio.to_str().unwrap()]);

        let state = state(&pool);
        let location =
            add_location(&pool, "Odd", StorageType::Local, json!({ "path": root })).await;
        let started = std::time::Instant::now();
        let (run_id, counts) = scan(&state, location).await;
        let first_scan = started.elapsed();
        let counts = counts.unwrap();
        assert_eq!(counts.videos_added, 6, "{counts:?}");

        let mut keys: Vec<String> =
            sqlx::query_scalar("SELECT source_key FROM videos").fetch_all(&pool).await.unwrap();
        keys.sort();
        let mut expected: Vec<String> = indexed.iter().map(|k| (*k).to_owned()).collect();
        expected.sort();
        assert_eq!(keys, expected);
        let size: i64 = sqlx::query_scalar("SELECT file_size FROM videos WHERE source_key = $1")
            .bind("big sparse.mp4")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(size as u64, big_size);

        let skips = list_scan_skips(&pool, run_id, 100).await.unwrap();
        let reason = |path: &str| {
            let found = skips.iter().find(|s| s.path == path);
            found.map(|s| s.reason.clone()).unwrap_or_else(|| panic!("{path}: {skips:?}"))
        };
        assert_eq!(reason("caf\u{fffd} latin-1.mp4"), "the name is not valid UTF-8");
        assert_eq!(reason("out.mp4"), "symbolic links are not followed");
        assert_eq!(reason("loop.mp4"), "symbolic links are not followed");
        assert_eq!(reason("fifo.mp4"), "not a regular file");
        assert_eq!(reason("empty.mp4"), "the file is empty");
        assert!(reason("random.mp4").starts_with("ffprobe could not read the file"));
        assert!(reason("truncated.mp4").starts_with("ffprobe could not read the file"));
        assert_eq!(reason("audio only.mp4"), "the file has no video stream");
        assert_eq!(skips.len(), 8, "{skips:?}");

        // Titles meet whatever the normal form: stored NFC, found by either form.
        let page = PageRequest::new(None, None).unwrap();
        for query in ["Am\u{e9}lie", "Ame\u{301}lie", "cafe\u{301} society"] {
            let (found, total) =
                velour_db::catalog::search_videos(&pool, query, page).await.unwrap();
            assert_eq!(total, 1, "{query}: {found:?}");
        }

        // The rescan runs ffprobe on no file: the indexed ones are unchanged, and so are
        // the three it could not read before, whose failures are remembered.
        let probes = state.probes.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let (_, counts) = scan(&state, location).await;
        let rescan = started.elapsed();
        assert_eq!(counts.unwrap(), only_seen(6, 6));
        assert_eq!(state.probes.load(Ordering::Relaxed), probes);
        println!("odd library: first scan {first_scan:?}, unchanged rescan {rescan:?}");
        assert!(rescan < first_scan, "{rescan:?} vs {first_scan:?}");
    })
    .await;
}

#[tokio::test]
async fn a_file_still_being_copied_is_left_for_a_later_scan() {
    with_database(|pool| async move {
        let dir = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        let root = dir.path();
        make_video(&root.join("Arriving (2020).mp4"), 1);
        // An ffprobe that sees the file grow while it reads, as during a copy.
        let growing = r#"for input; do :; done; printf x >> "${input#file:}"; exec ffprobe "$@""#;
        let worker = WorkerSettings {
            ffprobe: fake_ffprobe(tools.path(), growing),
            ..WorkerSettings::default()
        };
        let copying = state_with(&pool, worker);
        let location =
            add_location(&pool, "Copying", StorageType::Local, json!({ "path": root })).await;

        let (run_id, counts) = scan(&copying, location).await;
        assert_eq!(counts.unwrap(), ScanCounts::default());
        let skips = list_scan_skips(&pool, run_id, 10).await.unwrap();
        assert_eq!(skips.len(), 1);
        assert!(skips[0].reason.contains("still being copied"), "{skips:?}");

        // Once the copy is over, the file is indexed with its final size.
        let (_, counts) = scan(&state(&pool), location).await;
        assert_eq!(counts.unwrap().videos_added, 1);
        let size: i64 =
            sqlx::query_scalar("SELECT file_size FROM videos").fetch_one(&pool).await.unwrap();
        let on_disk = std::fs::metadata(root.join("Arriving (2020).mp4")).unwrap().len();
        assert_eq!(size as u64, on_disk);
    })
    .await;
}

#[tokio::test]
async fn an_ffprobe_that_hangs_is_killed_and_the_scan_goes_on() {
    with_database(|pool| async move {
        let dir = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        make_video(&dir.path().join("clip.mp4"), 1);
        let worker = WorkerSettings {
            ffprobe: fake_ffprobe(tools.path(), "exec sleep 60"),
            probe_timeout_secs: 1,
            ..WorkerSettings::default()
        };
        let hanging = state_with(&pool, worker);
        let location =
            add_location(&pool, "Hangs", StorageType::Local, json!({ "path": dir.path() })).await;

        let started = std::time::Instant::now();
        let (run_id, counts) = scan(&hanging, location).await;
        assert_eq!(counts.unwrap(), ScanCounts::default());
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        let skips = list_scan_skips(&pool, run_id, 10).await.unwrap();
        assert_eq!(skips[0].reason, "ffprobe did not finish within 1 s");
    })
    .await;
}

#[tokio::test]
async fn a_moved_file_keeps_its_row_and_its_work_without_a_new_probe() {
    with_database(|pool| async move {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("Old Name (2001)")).unwrap();
        make_video(&root.join("Old Name (2001)/film.mp4"), 1);
        let state = state(&pool);
        let location =
            add_location(&pool, "Moves", StorageType::Local, json!({ "path": root })).await;
        scan(&state, location).await.1.unwrap();
        let before: (i64, i64) =
            sqlx::query_as("SELECT id, work_id FROM videos").fetch_one(&pool).await.unwrap();
        let probes = state.probes.load(Ordering::Relaxed);

        std::fs::create_dir(root.join("Sorted")).unwrap();
        std::fs::rename(root.join("Old Name (2001)/film.mp4"), root.join("Sorted/moved.mp4"))
            .unwrap();
        let (_, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap(), ScanCounts { videos_updated: 1, ..only_seen(1, 1) });
        assert_eq!(state.probes.load(Ordering::Relaxed), probes, "no new ffprobe run");
        let after: (i64, i64, String) =
            sqlx::query_as("SELECT id, work_id, source_key FROM videos WHERE removed_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((after.0, after.1), before);
        assert_eq!(after.2, "Sorted/moved.mp4");
    })
    .await;
}

/// The present video whose file name is `name`.
async fn video_named(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM videos WHERE filename = $1 AND removed_at IS NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn thumbnails_are_made_checked_stored_and_remade_when_the_file_changes() {
    use crate::thumbnail::ThumbnailOutcome;
    use velour_db::assets;

    with_database(|pool| async move {
        let library = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        make_video(&library.path().join("Long Film (2001).mp4"), 20);
        // Half a second: too short for a tenth, so the first frame is taken.
        ffmpeg(
            &["-f", "lavfi", "-i", "testsrc=duration=0.5:size=1280x720:rate=25"]
                .into_iter()
                .chain(["-c:v", "libx264"])
                .chain([library.path().join("Blink (2002).mp4").to_str().unwrap()])
                .collect::<Vec<_>>(),
        );
        let state = WorkerState::new(
            pool.clone(),
            WorkerSettings::default(),
            PeerSettings::for_loopback_peers(),
            AssetStore::Directory(store.path().to_owned()),
        );
        let folder = json!({ "path": library.path() });
        let location = add_location(&pool, "Films", StorageType::Local, folder).await;
        scan(&state, location).await.1.unwrap();
        let long = video_named(&pool, "Long Film (2001).mp4").await;
        let blink = video_named(&pool, "Blink (2002).mp4").await;
        let mut both = [long, blink];
        both.sort_unstable();
        assert_eq!(assets::videos_needing_thumbnails(&pool, location).await.unwrap(), both);
        // A second scan while the jobs wait queues no twins; a finished job frees its video.
        assert_eq!(assets::claim_thumbnail_jobs(&pool, &both).await.unwrap().len(), 2);
        assert!(assets::claim_thumbnail_jobs(&pool, &both).await.unwrap().is_empty());
        assets::release_thumbnail_job(&pool, long).await.unwrap();
        assert_eq!(assets::claim_thumbnail_jobs(&pool, &both).await.unwrap(), [long]);

        for (video, width, height) in [(long, 160, 120), (blink, 640, 360)] {
            let outcome = crate::generate_thumbnail(&state, video).await.unwrap();
            let ThumbnailOutcome::Made { key } = outcome else { panic!("{outcome:?}") };
            let row = assets::thumbnail(&pool, video).await.unwrap().unwrap();
            assert_eq!(row.storage_key, key);
            assert_eq!(
                (row.content_type.as_str(), row.width, row.height),
                ("image/jpeg", Some(width), Some(height))
            );
            let bytes = std::fs::read(store.path().join(&key)).unwrap();
            assert_eq!(row.byte_size, bytes.len() as i64);
            let image = image::load_from_memory(&bytes).unwrap();
            assert_eq!((image.width(), image.height()), (width as u32, height as u32));
            // The file is named by its own hash: a strong validator.
            use sha2::Digest;
            assert_eq!(row.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
        }
        assert!(assets::videos_needing_thumbnails(&pool, location).await.unwrap().is_empty());
        let again = crate::generate_thumbnail(&state, long).await.unwrap();
        assert_eq!(again, ThumbnailOutcome::Skipped("the thumbnail is current"));

        // The film is replaced by another: the rescan asks for a new thumbnail, the new one
        // replaces the old in the store, and the old image is deleted.
        let old_key = assets::thumbnail(&pool, long).await.unwrap().unwrap().storage_key;
        let replaced = library.path().join("Long Film (2001).mp4");
        ffmpeg(
            &["-f", "lavfi", "-i", "mandelbrot=size=320x240:rate=10", "-t", "12"]
                .into_iter()
                .chain(["-c:v", "libx264", replaced.to_str().unwrap()])
                .collect::<Vec<_>>(),
        );
        scan(&state, location).await.1.unwrap();
        assert_eq!(assets::videos_needing_thumbnails(&pool, location).await.unwrap(), [long]);
        let outcome = crate::generate_thumbnail(&state, long).await.unwrap();
        let ThumbnailOutcome::Made { key } = outcome else { panic!("{outcome:?}") };
        assert_ne!(key, old_key);
        assert!(store.path().join(&key).is_file());
        assert!(!store.path().join(&old_key).exists(), "the replaced image is deleted");
        let row = assets::thumbnail(&pool, long).await.unwrap().unwrap();
        assert_eq!((row.width, row.height), (Some(320), Some(240)));
    })
    .await;
}

#[tokio::test]
async fn a_video_without_a_picture_records_why_and_a_missing_ffmpeg_records_nothing() {
    use crate::thumbnail::ThumbnailOutcome;
    use velour_db::assets;

    with_database(|pool| async move {
        let library = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        make_video(&library.path().join("Film (1999).mp4"), 3);
        let store = AssetStore::Directory(tools.path().join("assets"));
        let with_ffmpeg = |ffmpeg: String, timeout: u64| {
            let worker = WorkerSettings {
                ffmpeg,
                thumbnail_timeout_secs: timeout,
                ..WorkerSettings::default()
            };
            WorkerState::new(
                pool.clone(),
                worker,
                PeerSettings::for_loopback_peers(),
                store.clone(),
            )
        };
        let folder = json!({ "path": library.path() });
        let location = add_location(&pool, "Films", StorageType::Local, folder).await;
        scan(&with_ffmpeg("ffmpeg".into(), 60), location).await.1.unwrap();
        let film = video_named(&pool, "Film (1999).mp4").await;

        // No ffmpeg on this worker: an error for the job runner, nothing recorded, so the
        // next scan queues the video again.
        let missing = with_ffmpeg("/nonexistent/ffmpeg".into(), 60);
        let err = crate::generate_thumbnail(&missing, film).await.unwrap_err();
        assert!(matches!(err, crate::ThumbnailJobError::GiveUp(_)), "{err}");
        assert_eq!(assets::videos_needing_thumbnails(&pool, location).await.unwrap(), [film]);

        // An ffmpeg that hangs is killed at the timeout, and the video is not blamed: the
        // next scan queues it again.
        let hung = with_ffmpeg(fake_ffprobe(tools.path(), "sleep 30"), 1);
        let started = std::time::Instant::now();
        let err = crate::generate_thumbnail(&hung, film).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("did not finish within 1 s"), "{err}");
        assert_eq!(assets::videos_needing_thumbnails(&pool, location).await.unwrap(), [film]);

        // One that writes no image, too large an image, or something that is not an image,
        // fails the video with the reason.
        let cases = [
            ("head -c 6000000 /dev/zero", 60, "bytes"),
            ("echo 'moov atom not found' >&2; exit 1", 60, "moov atom not found"),
            ("exit 0", 60, "gave no frame"),
            ("printf 'not a jpeg'", 60, "not a readable image"),
        ];
        for (body, timeout, reason) in cases {
            sqlx::query("DELETE FROM video_assets").execute(&pool).await.unwrap();
            let fake = with_ffmpeg(fake_ffprobe(tools.path(), body), timeout);
            let started = std::time::Instant::now();
            let outcome = crate::generate_thumbnail(&fake, film).await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(10), "{body}");
            let ThumbnailOutcome::Failed(message) = outcome else { panic!("{outcome:?}") };
            assert!(message.contains(reason), "{body}: {message}");
            let recorded = assets::thumbnail_failure(&pool, film).await.unwrap();
            assert_eq!(recorded.as_deref(), Some(message.as_str()));
            assert!(assets::thumbnail(&pool, film).await.unwrap().is_none());
            // Not queued again until the file changes.
            assert!(assets::videos_needing_thumbnails(&pool, location).await.unwrap().is_empty());
        }
        assert!(!tools.path().join("assets").exists(), "no image was stored");
    })
    .await;
}

#[tokio::test]
async fn nfo_sidecars_name_the_work_and_an_edited_one_is_read_again() {
    with_database(|pool| async move {
        let library = tempfile::tempdir().unwrap();
        let own = library.path().join("rips/disc1.mp4");
        std::fs::create_dir_all(own.parent().unwrap()).unwrap();
        make_video(&own, 1);
        std::fs::write(
            library.path().join("rips/disc1.nfo"),
            "<movie><title>Le Samouraï</title><year>1967</year>\
             <director>Jean-Pierre Melville</director><plot>A hitman.</plot>\
             <ratings><rating default=\"true\"><value>8.1</value></rating></ratings></movie>\n\
             https://www.imdb.com/title/tt0062229/\n",
        )
        .unwrap();
        let shared = library.path().join("Some Folder (2010)/video.mp4");
        std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
        make_video(&shared, 1);
        let folder_nfo = "<movie><plot>Told by the folder.</plot></movie>";
        std::fs::write(shared.with_file_name("movie.nfo"), folder_nfo).unwrap();
        // A movie.nfo in a folder of two films describes neither.
        let two = library.path().join("Double Bill");
        std::fs::create_dir_all(&two).unwrap();
        make_video(&two.join("First Feature (1950).mp4"), 1);
        make_video(&two.join("Second Feature (1951).mp4"), 1);
        std::fs::write(two.join("movie.nfo"), "<movie><title>Wrong</title></movie>").unwrap();
        // Only a web address: no facts, so the name decides.
        let bare = library.path().join("Plain Name (1999).mp4");
        make_video(&bare, 1);
        let address_only = library.path().join("Plain Name (1999).nfo");
        std::fs::write(address_only, "https://example.org/\n").unwrap();

        let state = state(&pool);
        let folder = json!({ "path": library.path() });
        let location = add_location(&pool, "Films", StorageType::Local, folder).await;
        scan(&state, location).await.1.unwrap();
        type WorkFacts = (String, Option<i32>, Option<String>, Option<String>, Option<f64>);
        let works: Vec<WorkFacts> = sqlx::query_as(
            "SELECT title, year, director, description, rating FROM works ORDER BY title",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            works,
            [
                ("First Feature".into(), Some(1950), None, None, None),
                (
                    "Le Samouraï".into(),
                    Some(1967),
                    Some("Jean-Pierre Melville".into()),
                    Some("A hitman.".into()),
                    Some(8.1)
                ),
                ("Plain Name".into(), Some(1999), None, None, None),
                ("Second Feature".into(), Some(1951), None, None, None),
                ("Some Folder".into(), Some(2010), None, Some("Told by the folder.".into()), None),
            ]
        );

        // Unchanged videos and sidecars: nothing is probed again.
        let probes = state.probes.load(Ordering::Relaxed);
        scan(&state, location).await.1.unwrap();
        assert_eq!(state.probes.load(Ordering::Relaxed), probes);

        // An edited sidecar (a later modification time) is read again by the next scan.
        let sidecar = library.path().join("rips/disc1.nfo");
        let edited = "<movie><title>Le Deuxième Souffle</title><year>1966</year></movie>";
        std::fs::write(&sidecar, edited).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&sidecar).unwrap().set_modified(later).unwrap();
        let (_, counts) = scan(&state, location).await;
        assert_eq!(counts.unwrap().videos_updated, 1);
        let title: String = sqlx::query_scalar(
            "SELECT w.title FROM videos v JOIN works w ON w.id = v.work_id
             WHERE v.filename = 'rips/disc1.mp4'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(title, "Le Deuxième Souffle");
    })
    .await;
}

#[tokio::test]
async fn peer_scans_queued_before_federation_was_paused_are_refused_at_job_time() {
    with_database(|pool| async move {
        let config = json!({ "remote_instance_url": "http://127.0.0.1:9/" });
        let location = add_location(&pool, "Peer", StorageType::Velour, config).await;
        let permissions = velour_core::Permissions::default();
        let key = velour_db::connections::ConnectionKey::Issue {
            name: "peer",
            permissions,
            expires_at: None,
        };
        let new = velour_db::connections::NewConnection {
            remote_instance_url: "http://127.0.0.1:9/",
            storage_location_id: Some(location),
            key,
        };
        velour_db::connections::create_connection(&pool, new).await.unwrap();

        // A pending connection's location is not scanned, whatever queued the job.
        let (run_id, outcome) = scan(&state(&pool), location).await;
        assert!(
            matches!(
                outcome,
                Err(ScanError::Failed(ScanFailure::ConnectionInactive(
                    velour_core::ConnectionStatus::Pending
                )))
            ),
            "{outcome:?}"
        );
        let error = get_scan_run(&pool, run_id).await.unwrap().error.unwrap_or_default();
        assert!(error.contains("connection is pending"), "{error}");

        // With federation off, no peer is scanned at all.
        let off =
            velour_core::settings::FederationSettings { enabled: false, ..Default::default() };
        let (_, outcome) = scan(&state(&pool).with_federation(off), location).await;
        assert!(
            matches!(outcome, Err(ScanError::Failed(ScanFailure::FederationDisabled))),
            "{outcome:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_connection_test_records_an_unreachable_peer_and_a_switched_off_federation() {
    with_database(|pool| async move {
        // A port nobody listens on: bound, then closed.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let config = json!({ "remote_instance_url": url });
        let location = add_location(&pool, "Dead peer", StorageType::Velour, config).await;
        let key = velour_db::connections::ConnectionKey::Existing(
            velour_db::keys::create_api_key(
                &pool,
                velour_db::keys::KeyOwner::Member,
                "peer",
                velour_core::Permissions::default(),
            )
            .await
            .unwrap()
            .0
            .id,
        );
        let new = velour_db::connections::NewConnection {
            remote_instance_url: &url,
            storage_location_id: Some(location),
            key,
        };
        let (connection, issued) =
            velour_db::connections::create_connection(&pool, new).await.unwrap();
        assert!(issued.is_none(), "an existing key is not issued again");

        let outcome = crate::test_connection(&state(&pool), connection.id).await.unwrap();
        assert!(!outcome.reachable && outcome.peer_version.is_none(), "{outcome:?}");
        assert!(outcome.error.as_deref().is_some_and(|e| e.contains("/api/v1/ping")));
        let stored = velour_db::connections::get_connection(&pool, connection.id).await.unwrap();
        assert_eq!(stored.last_test_reachable, Some(false));
        assert!(stored.last_tested_at.is_some());

        let off =
            velour_core::settings::FederationSettings { enabled: false, ..Default::default() };
        let state = state(&pool).with_federation(off);
        let outcome = crate::test_connection(&state, connection.id).await.unwrap();
        assert!(outcome.error.as_deref().is_some_and(|e| e.contains("FEDERATION_ENABLED")));

        // A connection deleted before its test ran is not an error worth retrying.
        velour_db::connections::delete_connection(&pool, connection.id).await.unwrap();
        let gone = crate::test_connection(&state, connection.id).await;
        assert!(matches!(gone, Err(velour_db::DbError::NotFound)), "{gone:?}");
    })
    .await;
}

#[tokio::test]
async fn a_write_committed_after_the_cursor_was_taken_is_in_the_next_changes() {
    with_database(|pool| async move {
        let config = json!({ "path": "/nonexistent" });
        let location = add_location(&pool, "Films", StorageType::Local, config).await;
        let page = PageRequest::new(None, None).unwrap();

        // A scan's transaction stamps its rows with its start time, then commits late.
        let mut late = pool.begin().await.unwrap();
        let work: i64 =
            sqlx::query_scalar("INSERT INTO works (title) VALUES ('Late') RETURNING id")
                .fetch_one(&mut *late)
                .await
                .unwrap();
        sqlx::query(
            "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
             VALUES ($1, $2, 'late.mp4', 'late.mp4', 1)",
        )
        .bind(work)
        .bind(location)
        .execute(&mut *late)
        .await
        .unwrap();
        // Longer than the cursor's overlap, so only the open transaction can hold it back.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let cursor = velour_db::catalog::sync_cursor(&pool).await.unwrap();
        late.commit().await.unwrap();

        let (works, total) =
            velour_db::catalog::list_changed_works(&pool, cursor, page).await.unwrap();
        assert_eq!((total, works[0].work.title.as_str()), (1, "Late"));

        // With nothing open, the cursor moves past it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let later = velour_db::catalog::sync_cursor(&pool).await.unwrap();
        let (_, total) = velour_db::catalog::list_changed_works(&pool, later, page).await.unwrap();
        assert_eq!(total, 0);
    })
    .await;
}

async fn add_peer_location_with_interval(pool: &PgPool, cipher: &SecretsCipher) -> i64 {
    let new = NewLocation {
        name: "scheduled peer",
        storage_type: StorageType::Velour,
        configuration: json!({ "remote_instance_url": "https://peer.example/" }),
        secrets: json!({ "api_key": "peer-key-in-clear" }),
        rescan_interval_secs: Some(60),
    };
    create_location(pool, cipher, new).await.unwrap().id
}

#[tokio::test]
async fn location_secrets_are_stored_sealed_and_open_only_with_their_key() {
    use velour_core::settings::SecretsKey;
    use velour_db::locations::get_location_with_secrets;
    use velour_db::secrets::prepare_location_secrets;
    with_database(|pool| async move {
        let cipher = SecretsCipher::with_key(Some(SecretsKey::new([7; 32])));
        let id = add_peer_location_with_interval(&pool, &cipher).await;

        let stored: String = sqlx::query_scalar("SELECT secrets::text FROM storage_locations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(!stored.contains("peer-key-in-clear"), "stored: {stored}");
        assert!(stored.contains("xchacha20poly1305:v1:"));

        let opened = get_location_with_secrets(&pool, &cipher, id).await.unwrap();
        assert_eq!(opened.secret_str("api_key"), Some("peer-key-in-clear"));

        // Rotation reseals the new key.
        velour_db::locations::set_peer_api_key(&pool, &cipher, id, "rotated").await.unwrap();
        let opened = get_location_with_secrets(&pool, &cipher, id).await.unwrap();
        assert_eq!(opened.secret_str("api_key"), Some("rotated"));

        let wrong = SecretsCipher::with_key(Some(SecretsKey::new([8; 32])));
        let err = get_location_with_secrets(&pool, &wrong, id).await.unwrap_err();
        assert!(err.to_string().contains("VELOUR_SECRETS_KEY"), "{err}");
        let err = prepare_location_secrets(&pool, &wrong).await.unwrap_err();
        assert!(matches!(err, velour_db::DbError::Refused { code: "secrets-key-mismatch", .. }));
    })
    .await;
}

#[tokio::test]
async fn secrets_move_from_the_catalogs_key_to_given_keys_without_a_moment_unreadable() {
    use velour_core::settings::{PreviousSecretsKey, SecretsKey};
    use velour_db::locations::get_location_with_secrets;
    use velour_db::secrets::{Resealed, reseal_location_secrets};
    with_database(|pool| async move {
        let stored = || async {
            sqlx::query_scalar::<_, String>("SELECT secrets::text FROM storage_locations")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        let api_key = |cipher: SecretsCipher, id: i64| {
            let pool = pool.clone();
            async move {
                get_location_with_secrets(&pool, &cipher, id)
                    .await
                    .map(|opened| opened.secret_str("api_key").map(str::to_owned))
            }
        };
        let add = |cipher: SecretsCipher, name: &'static str| {
            let pool = pool.clone();
            async move {
                let new = NewLocation {
                    name,
                    storage_type: StorageType::Velour,
                    configuration: json!({ "remote_instance_url": "https://peer.example/" }),
                    secrets: json!({ "api_key": "peer-key-in-clear" }),
                    rescan_interval_secs: None,
                };
                create_location(&pool, &cipher, new).await.unwrap().id
            }
        };
        let key_a = SecretsKey::new([0xa; 32]);
        let key_b = SecretsKey::new([0xb; 32]);
        let id = add(SecretsCipher::default(), "first").await;
        let sealed_by_catalog = stored().await;

        // Step one of a move: services run with the new key and the catalog's as previous.
        // They read what the catalog's key sealed, and seal anything new with key A.
        let moving =
            SecretsCipher::with_keys(Some(key_a.clone()), Some(PreviousSecretsKey::Catalog));
        assert_eq!(
            api_key(moving.clone(), id).await.unwrap().as_deref(),
            Some("peer-key-in-clear")
        );
        let second = add(moving.clone(), "second").await;
        let only_a = SecretsCipher::with_key(Some(key_a.clone()));
        assert!(api_key(only_a.clone(), id).await.is_err(), "not moved yet");

        // Step two: the rekey. Everything opens with key A alone, and the catalog's key is
        // gone, so a dump of the database opens nothing.
        let done = reseal_location_secrets(&pool, &moving, true).await.unwrap();
        assert_eq!(done, Resealed { locations: 2, dropped_catalog_key: true });
        assert_ne!(stored().await, sealed_by_catalog);
        for location in [id, second] {
            let opened = api_key(only_a.clone(), location).await.unwrap();
            assert_eq!(opened.as_deref(), Some("peer-key-in-clear"));
        }
        let kept: i64 =
            sqlx::query_scalar("SELECT count(*) FROM instance_secrets WHERE name = 'secrets_key'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(kept, 0);

        // A second move, from key A to key B.
        let moving = SecretsCipher::with_keys(
            Some(key_b.clone()),
            Some(PreviousSecretsKey::Given(key_a.clone())),
        );
        let done = reseal_location_secrets(&pool, &moving, false).await.unwrap();
        assert_eq!(done, Resealed { locations: 2, dropped_catalog_key: false });
        let only_b = SecretsCipher::with_key(Some(key_b.clone()));
        assert_eq!(
            api_key(only_b.clone(), id).await.unwrap().as_deref(),
            Some("peer-key-in-clear")
        );
        assert!(api_key(only_a, id).await.is_err());

        // A row that neither key opens stops the rekey, which then changes nothing.
        let before = sqlx::query_scalar::<_, Vec<String>>(
            "SELECT array_agg(secrets::text ORDER BY id) FROM storage_locations",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let stranger = SecretsCipher::with_key(Some(SecretsKey::new([0xc; 32])));
        add(stranger, "stranger").await;
        let err = reseal_location_secrets(&pool, &moving, false).await.unwrap_err();
        assert!(err.to_string().contains("VELOUR_SECRETS_KEY_PREVIOUS"), "{err}");
        let after = sqlx::query_scalar::<_, Vec<String>>(
            "SELECT array_agg(secrets::text ORDER BY id) FROM storage_locations
             WHERE id <= $1",
        )
        .bind(second)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(after, before);

        // The catalog's key cannot be dropped while it is the one sealing.
        let err = reseal_location_secrets(&pool, &SecretsCipher::default(), true).await;
        assert!(err.is_err());
    })
    .await;
}

#[tokio::test]
async fn plaintext_secrets_of_older_releases_are_read_and_sealed_at_start() {
    use velour_db::locations::get_location_with_secrets;
    use velour_db::secrets::prepare_location_secrets;
    with_database(|pool| async move {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO storage_locations (name, storage_type, configuration, secrets)
             VALUES ('old', 'velour', '{}', '{\"api_key\": \"old-key\"}') RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let cipher = SecretsCipher::default();
        let opened = get_location_with_secrets(&pool, &cipher, id).await.unwrap();
        assert_eq!(opened.secret_str("api_key"), Some("old-key"));

        assert_eq!(prepare_location_secrets(&pool, &cipher).await.unwrap(), 1);
        let stored: String = sqlx::query_scalar("SELECT secrets::text FROM storage_locations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(!stored.contains("old-key"));
        // A second service starting finds nothing left to seal, and the same catalog key.
        assert_eq!(prepare_location_secrets(&pool, &SecretsCipher::default()).await.unwrap(), 0);
        let opened = get_location_with_secrets(&pool, &cipher, id).await.unwrap();
        assert_eq!(opened.secret_str("api_key"), Some("old-key"));
    })
    .await;
}

async fn make_due(pool: &PgPool, id: i64) {
    sqlx::query("UPDATE storage_locations SET next_scan_at = now() - interval '1 s' WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

/// Seconds from now to the location's next scheduled scan.
async fn secs_to_next_scan(pool: &PgPool, id: i64) -> Option<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM next_scan_at - now())::float8
         FROM storage_locations WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn two_schedulers_racing_claim_a_due_location_once_and_respect_its_interval() {
    use velour_db::rescans::claim_due_rescans;
    with_database(|pool| async move {
        let id = add_peer_location_with_interval(&pool, &SecretsCipher::default()).await;
        // Created with its first rescan one interval away.
        assert!(claim_due_rescans(&pool, 10, true).await.unwrap().is_empty());
        let next = secs_to_next_scan(&pool, id).await.unwrap();
        assert!((55.0..=60.0).contains(&next), "next scan in {next} s");

        for _ in 0..20 {
            make_due(&pool, id).await;
            let (a, b) = tokio::join!(
                claim_due_rescans(&pool, 10, true),
                claim_due_rescans(&pool, 10, true)
            );
            let claims = a.unwrap().len() + b.unwrap().len();
            assert_eq!(claims, 1, "a due location is claimed exactly once");
            // Claiming moved it an interval on: not due again right away.
            assert!(claim_due_rescans(&pool, 10, true).await.unwrap().is_empty());
            let next = secs_to_next_scan(&pool, id).await.unwrap();
            assert!((55.0..=60.0).contains(&next), "next scan in {next} s");
        }
    })
    .await;
}

#[tokio::test]
async fn due_peers_that_may_not_be_scanned_are_not_claimed() {
    use velour_core::ConnectionStatus;
    use velour_db::connections::{ConnectionKey, NewConnection, create_connection, set_status};
    use velour_db::rescans::claim_due_rescans;
    with_database(|pool| async move {
        let id = add_peer_location_with_interval(&pool, &SecretsCipher::default()).await;
        let key = ConnectionKey::Issue {
            name: "peer",
            permissions: velour_core::Permissions::default(),
            expires_at: None,
        };
        let new = NewConnection {
            remote_instance_url: "https://peer.example/",
            storage_location_id: Some(id),
            key,
        };
        let connection = create_connection(&pool, new).await.unwrap().0.id;
        make_due(&pool, id).await;

        // Pending: left due, not claimed.
        assert!(claim_due_rescans(&pool, 10, true).await.unwrap().is_empty());
        let next = secs_to_next_scan(&pool, id).await.unwrap();
        assert!(next < 0.0, "still due, next scan in {next} s");

        // Active, but federation is off: not claimed either.
        set_status(&pool, connection, ConnectionStatus::Active, 10).await.unwrap();
        assert!(claim_due_rescans(&pool, 10, false).await.unwrap().is_empty());

        // Active with federation on: claimed at the first look.
        assert_eq!(claim_due_rescans(&pool, 10, true).await.unwrap(), vec![id]);

        // Suspended: no longer claimed when due again.
        set_status(&pool, connection, ConnectionStatus::Suspended, 10).await.unwrap();
        make_due(&pool, id).await;
        assert!(claim_due_rescans(&pool, 10, true).await.unwrap().is_empty());
    })
    .await;
}

fn peer_video<'a>(work_id: i64, location: i64, key: &'a str, empty: &'a Value) -> FoundVideo<'a> {
    FoundVideo {
        work_id,
        storage_location_id: location,
        source_key: key,
        filename: key,
        file_size: 1,
        modified_at: None,
        duration: None,
        width: None,
        height: None,
        video_codec: None,
        audio_codec: None,
        container: None,
        web_compatible: true,
        fingerprints: empty,
        video_metadata: empty,
    }
}

#[tokio::test]
async fn a_page_of_works_is_upserted_at_once_with_what_each_would_have_done() {
    with_database(|pool| async move {
        let location = add_location(&pool, "Peer", StorageType::Velour, json!({})).await;
        let mut conn = pool.acquire().await.unwrap();
        let known = FoundWork { title: "Known", year: Some(1999), ..Default::default() };
        velour_db::ingest::upsert_works(&mut conn, &[known]).await.unwrap();

        let page = [
            FoundWork { title: "New", year: None, ..Default::default() },
            FoundWork { title: "Known", year: Some(1999), director: Some("D"), ..known },
            // The same work twice: the repeat fills what the first lacked.
            FoundWork { title: "New", year: None, rating: Some(7.0), ..Default::default() },
            FoundWork { title: "Known", year: Some(1999), ..known },
        ];
        let changes = velour_db::ingest::upsert_works(&mut conn, &page).await.unwrap();
        let kinds: Vec<WorkChange> = changes.iter().map(|c| c.1).collect();
        use WorkChange::{Created, Filled, Unchanged};
        assert_eq!(kinds, [Created, Filled, Filled, Unchanged]);
        assert_eq!((changes[0].0, changes[1].0), (changes[2].0, changes[3].0));
        let rating: Option<f64> =
            sqlx::query_scalar("SELECT rating FROM works WHERE title = 'New'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rating, Some(7.0));

        let empty = json!({});
        let videos = [
            peer_video(changes[0].0, location, "1", &empty),
            peer_video(changes[1].0, location, "2", &empty),
        ];
        let saved = velour_db::ingest::upsert_videos(&mut conn, location, &videos).await.unwrap();
        assert!(saved.iter().all(|s| s.1 == VideoChange::Created), "{saved:?}");
        let again = velour_db::ingest::upsert_videos(&mut conn, location, &videos).await.unwrap();
        assert!(again.iter().all(|s| s.1 == VideoChange::Unchanged), "{again:?}");
        let moved = [peer_video(changes[1].0, location, "1", &empty)];
        let moved = velour_db::ingest::upsert_videos(&mut conn, location, &moved).await.unwrap();
        assert_eq!(moved[0], (saved[0].0, VideoChange::Updated));

        // Both works are listed once; "New" lost its video to "Known" and is not.
        let (listed, total) = velour_db::catalog::list_works(
            &pool,
            &Default::default(),
            PageRequest::new(None, None).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(total, 1);
        assert_eq!(listed[0].work.title, "Known");
        velour_db::catalog::compact_listed_works(&pool).await.unwrap();
        let (_, total) = velour_db::catalog::list_works(
            &pool,
            &Default::default(),
            PageRequest::new(None, None).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(total, 1);
    })
    .await;
}

/// Two scans of different locations save pages that share works, listed in opposite
/// orders: both lock the works in one order, so the second waits for the first instead of
/// deadlocking with it.
#[tokio::test]
async fn pages_sharing_works_in_opposite_orders_wait_for_each_other() {
    with_database(|pool| async move {
        let one = add_location(&pool, "One", StorageType::Velour, json!({})).await;
        let two = add_location(&pool, "Two", StorageType::Velour, json!({})).await;
        let a = FoundWork { title: "A", year: Some(2000), ..Default::default() };
        let b = FoundWork { title: "B", year: Some(2000), ..Default::default() };
        let mut conn = pool.acquire().await.unwrap();
        velour_db::ingest::upsert_works(&mut conn, &[a, b]).await.unwrap();
        drop(conn);

        let mut first = pool.begin().await.unwrap();
        let ids = velour_db::ingest::upsert_works(&mut first, &[a, b]).await.unwrap();

        let second = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin().await?;
                let ids = velour_db::ingest::upsert_works(&mut tx, &[b, a]).await?;
                let empty = json!({});
                let videos = [
                    peer_video(ids[0].0, two, "b", &empty),
                    peer_video(ids[1].0, two, "a", &empty),
                ];
                velour_db::ingest::upsert_videos(&mut tx, two, &videos).await?;
                tx.commit().await?;
                Ok::<_, velour_db::DbError>(())
            }
        });
        // The second page now waits for a work's lock.
        for _ in 0..200 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let empty = json!({});
        let videos =
            [peer_video(ids[1].0, one, "b", &empty), peer_video(ids[0].0, one, "a", &empty)];
        velour_db::ingest::upsert_videos(&mut first, one, &videos).await.unwrap();
        first.commit().await.unwrap();
        second.await.unwrap().unwrap();

        let counts: Vec<i32> =
            sqlx::query_scalar("SELECT present_videos FROM works ORDER BY title")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(counts, [2, 2]);
        let (_, total) = velour_db::catalog::list_works(
            &pool,
            &Default::default(),
            PageRequest::new(None, None).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(total, 2);
    })
    .await;
}

#[tokio::test]
async fn failed_scans_back_off_and_a_refused_key_halts_rescans_until_the_location_changes() {
    use velour_db::rescans::{ScanOutcome, claim_due_rescans, record_scan_outcome};
    with_database(|pool| async move {
        let id = add_peer_location_with_interval(&pool, &SecretsCipher::default()).await;

        for expected in [60.0, 120.0, 240.0, 480.0] {
            record_scan_outcome(&pool, id, ScanOutcome::Failed).await.unwrap();
            let next = secs_to_next_scan(&pool, id).await.unwrap();
            assert!((expected - 5.0..=expected).contains(&next), "{next} s, not {expected}");
        }
        for _ in 0..30 {
            record_scan_outcome(&pool, id, ScanOutcome::Failed).await.unwrap();
        }
        let capped = secs_to_next_scan(&pool, id).await.unwrap();
        assert!(capped <= 6.0 * 3600.0 && capped > 6.0 * 3600.0 - 5.0, "{capped} s");

        record_scan_outcome(&pool, id, ScanOutcome::Succeeded).await.unwrap();
        let row = velour_db::locations::get_location(&pool, id).await.unwrap();
        assert_eq!(row.scan_failures, 0);

        let reason = "the peer refused our key on /api/v1/works (HTTP 401)";
        record_scan_outcome(&pool, id, ScanOutcome::Refused(reason)).await.unwrap();
        make_due(&pool, id).await;
        assert!(claim_due_rescans(&pool, 10, true).await.unwrap().is_empty(), "not retried");
        let row = velour_db::locations::get_location(&pool, id).await.unwrap();
        assert_eq!(row.rescans_halted_reason.as_deref(), Some(reason));

        // Any change to the location resumes the schedule, one interval out.
        let cipher = SecretsCipher::default();
        let unchanged = velour_db::locations::LocationChanges::default();
        let row =
            velour_db::locations::update_location(&pool, &cipher, id, unchanged).await.unwrap();
        assert_eq!((row.rescans_halted_reason, row.scan_failures), (None, 0));
        make_due(&pool, id).await;
        assert_eq!(claim_due_rescans(&pool, 10, true).await.unwrap(), vec![id]);

        let never = velour_db::locations::LocationChanges {
            rescan_interval_secs: Some(None),
            ..Default::default()
        };
        let row = velour_db::locations::update_location(&pool, &cipher, id, never).await.unwrap();
        assert_eq!((row.rescan_interval_secs, row.next_scan_at), (None, None));

        // A configuration merged from an older state of the row is refused; merged from
        // the current one, it is saved.
        let moved = |based_on| velour_db::locations::LocationChanges {
            configuration: Some((
                serde_json::json!({ "path": "/srv/moved" }),
                serde_json::json!({}),
            )),
            based_on: Some(based_on),
            ..Default::default()
        };
        let stale = row.updated_at - chrono::Duration::milliseconds(1);
        match velour_db::locations::update_location(&pool, &cipher, id, moved(stale)).await {
            Err(velour_db::DbError::Refused { code: "changed-concurrently", .. }) => {}
            other => panic!("a stale change was not refused: {other:?}"),
        }
        let saved =
            velour_db::locations::update_location(&pool, &cipher, id, moved(row.updated_at));
        assert_eq!(saved.await.unwrap().configuration.0["path"], "/srv/moved");
    })
    .await;
}

/// Deep pages start from a remembered key; they must hold what an OFFSET would, also
/// after the listing changed.
#[tokio::test]
async fn deep_listing_pages_match_offset_pages_as_the_listing_changes() {
    with_database(|pool| async move {
        let location = add_location(&pool, "Bulk", StorageType::Velour, json!({})).await;
        sqlx::query(
            "INSERT INTO works (title, year)
             SELECT 'Work ' || n % 997 || ' ' || n, NULL FROM generate_series(1, 2600) n",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
             SELECT id, $1, id::TEXT, id::TEXT, 1 FROM works",
        )
        .bind(location)
        .execute(&pool)
        .await
        .unwrap();

        let cache = velour_db::catalog::ListingCache::default();
        for round in 0..3 {
            let expected: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM works WHERE present_videos > 0 ORDER BY title, id",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            for number in [1, 10, 11, 19, 20, 21, 25, 26, 27] {
                let page = PageRequest::new(Some(number), Some(100)).unwrap();
                let (works, total) =
                    velour_db::catalog::list_works(&pool, &cache, page).await.unwrap();
                let ids: Vec<i64> = works.iter().map(|w| w.work.id).collect();
                let from = usize::try_from((number - 1) * 100).unwrap().min(expected.len());
                let to = (from + 100).min(expected.len());
                assert_eq!(ids, expected[from..to], "round {round}, page {number}");
                assert_eq!(total, i64::try_from(expected.len()).unwrap());
            }
            // Works leave the listing (early in its order) and the deltas are folded.
            sqlx::query(
                "UPDATE videos SET removed_at = now()
                 WHERE work_id IN (SELECT id FROM works ORDER BY title, id LIMIT 7)
                   AND removed_at IS NULL",
            )
            .execute(&pool)
            .await
            .unwrap();
            if round == 1 {
                velour_db::catalog::compact_listed_works(&pool).await.unwrap();
            }
        }
    })
    .await;
}

#[tokio::test]
async fn old_tombstones_are_pruned_and_the_images_of_gone_videos_swept() {
    use crate::schedule::{prune_tombstones, sweep_orphaned_assets};
    use velour_db::assets;
    use velour_db::maintenance::{self, Pruned};

    with_database(|pool| async move {
        let library = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        make_video(&library.path().join("Kept (2001).mp4"), 1);
        make_video(&library.path().join("Gone (2002).mp4"), 1);
        let state = WorkerState::new(
            pool.clone(),
            WorkerSettings { tombstone_retention_days: 30, ..WorkerSettings::default() },
            PeerSettings::for_loopback_peers(),
            AssetStore::Directory(store.path().to_owned()),
        );
        let folder = json!({ "path": library.path() });
        let location = add_location(&pool, "Films", StorageType::Local, folder).await;
        scan(&state, location).await.1.unwrap();
        let mut images = Vec::new();
        for name in ["Kept (2001).mp4", "Gone (2002).mp4"] {
            let video = video_named(&pool, name).await;
            crate::generate_thumbnail(&state, video).await.unwrap();
            let row = assets::thumbnail(&pool, video).await.unwrap().unwrap();
            let image = store.path().join(row.storage_key);
            assert!(image.is_file());
            images.push(image);
        }
        let [kept_image, gone_image] = <[_; 2]>::try_from(images).unwrap();

        // A removed video keeps its row (its tombstone) and its image while it is recent.
        std::fs::remove_file(library.path().join("Gone (2002).mp4")).unwrap();
        assert_eq!(scan(&state, location).await.1.unwrap().videos_removed, 1);
        assert_eq!(prune_tombstones(&state).await.unwrap(), Some(Pruned::default()));
        assert_eq!(maintenance::tombstone_horizon(&pool).await.unwrap(), None);
        assert_eq!(sweep_orphaned_assets(&state).await.unwrap(), 0);
        assert!(gone_image.is_file());

        // Past the retention, the row, its tombstone and its work go, and the newest
        // removal forgotten becomes the horizon.
        sqlx::query(
            "UPDATE videos SET removed_at = now() - interval '40 days'
             WHERE removed_at IS NOT NULL",
        )
        .execute(&pool)
        .await
        .unwrap();
        // A scan bringing the video back locks its work first, then the video: the prune
        // locks works first too, so it waits for the scan instead of deadlocking with it,
        // and then forgets nothing the scan brought back.
        let mut reviving = pool.begin().await.unwrap();
        sqlx::query(
            "SELECT w.id FROM works w JOIN videos v ON v.work_id = w.id
                     WHERE v.removed_at IS NOT NULL FOR KEY SHARE OF w",
        )
        .execute(&mut *reviving)
        .await
        .unwrap();
        let pruning = tokio::spawn({
            let state = state.clone();
            async move { prune_tombstones(&state).await }
        });
        let waiting = "SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'";
        while sqlx::query_scalar::<_, i64>(waiting).fetch_one(&pool).await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("UPDATE videos SET removed_at = NULL WHERE removed_at IS NOT NULL")
            .execute(&mut *reviving)
            .await
            .unwrap();
        reviving.commit().await.unwrap();
        assert_eq!(pruning.await.unwrap().unwrap(), Some(Pruned::default()));
        let removed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "UPDATE videos SET removed_at = now() - interval '40 days'
             WHERE filename = 'Gone (2002).mp4' RETURNING removed_at",
        )
        .fetch_one(&pool)
        .await
        .unwrap();

        // Another worker pruning at this moment: this one leaves it to that one.
        let mut other = pool.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(maintenance::PRUNE_LOCK)
            .execute(&mut *other)
            .await
            .unwrap();
        assert_eq!(prune_tombstones(&state).await.unwrap(), None);
        other.rollback().await.unwrap();
        let pruned = prune_tombstones(&state).await.unwrap();
        assert_eq!(pruned, Some(Pruned { videos: 1, tombstones: 1, works: 1 }));
        assert_eq!(maintenance::tombstone_horizon(&pool).await.unwrap(), Some(removed_at));
        let titles: Vec<String> =
            sqlx::query_scalar("SELECT title FROM works").fetch_all(&pool).await.unwrap();
        assert_eq!(titles, ["Kept"]);

        // The gone video's image is deleted from the store, with its emptied folder; the
        // kept one's stays. An image the store will not delete (here a folder in its place)
        // does not hold the others up: it waits behind them. A key no file can have
        // (outside the store) is forgotten, and touches nothing.
        let stuck = "thumbnails/999/stuck.jpg";
        std::fs::create_dir_all(store.path().join(stuck).join("inside")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let escaping = format!("../{}/x.jpg", outside.path().display());
        std::fs::write(outside.path().join("x.jpg"), b"not ours").unwrap();
        sqlx::query(
            "INSERT INTO orphaned_assets (storage_key, orphaned_at)
             VALUES ($1, now() - interval '1 day'), ($2, now() - interval '1 day')",
        )
        .bind(stuck)
        .bind(&escaping)
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(sweep_orphaned_assets(&state).await.unwrap(), 2);
        assert!(outside.path().join("x.jpg").is_file());
        assert!(!gone_image.exists());
        assert!(!gone_image.parent().unwrap().exists(), "its folder stays");
        assert!(kept_image.is_file());
        assert_eq!(sweep_orphaned_assets(&state).await.unwrap(), 0);
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT storage_key FROM orphaned_assets WHERE claimed_until > now()",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(waiting, [stuck]);

        // Deleting the location leaves its images to the sweep too.
        velour_db::locations::delete_location(&pool, location).await.unwrap();
        assert_eq!(sweep_orphaned_assets(&state).await.unwrap(), 1);
        assert!(!kept_image.exists());
    })
    .await;
}

#[tokio::test]
async fn a_location_deleted_while_it_is_scanned_ends_its_scan_as_gone() {
    with_database(|pool| async move {
        let dir = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        make_video(&dir.path().join("clip.mp4"), 1);
        let database: String =
            sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.unwrap();
        // The location goes (as when its federation connection is deleted) while the scan
        // reads a file, before the scan saves it.
        let deleting = format!(
            "psql -q '{}/{database}' -c 'DELETE FROM storage_locations' >/dev/null || exit 9\n\
             exec ffprobe \"$@\"",
            postgres_server()
        );
        let worker = WorkerSettings {
            ffprobe: fake_ffprobe(tools.path(), &deleting),
            ..WorkerSettings::default()
        };
        let location =
            add_location(&pool, "Doomed", StorageType::Local, json!({ "path": dir.path() })).await;
        let (_, outcome) = scan(&state_with(&pool, worker), location).await;
        let err = outcome.unwrap_err();
        assert!(matches!(err, ScanError::Failed(ScanFailure::LocationGone)), "{err}");
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM videos").fetch_one(&pool).await.unwrap();
        assert_eq!(left, 0);
    })
    .await;
}

#[tokio::test]
async fn a_folder_is_read_a_few_files_at_a_time_and_saved_in_walk_order() {
    with_database(|pool| async move {
        let library = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        let running = tools.path().join("running");
        std::fs::create_dir(&running).unwrap();
        let log = tools.path().join("log");
        for n in 0..6 {
            make_video(&library.path().join(format!("Film {n} (200{n}).mp4")), 1);
        }
        // Each run notes how many runs are under way as it starts, and lingers, so that
        // runs started together overlap.
        let body = format!(
            "touch '{running}'/$$; ls '{running}' | wc -l >> '{log}'; sleep 0.4; \
             rm '{running}'/$$; exec ffprobe \"$@\"",
            running = running.display(),
            log = log.display()
        );
        let ffprobe = fake_ffprobe(tools.path(), &body);
        let most_at_once = || -> usize {
            let noted = std::fs::read_to_string(&log).unwrap();
            std::fs::remove_file(&log).unwrap();
            noted.lines().filter_map(|n| n.trim().parse().ok()).max().unwrap_or(0)
        };
        let reading = |probe_concurrency| {
            let worker = WorkerSettings {
                ffprobe: ffprobe.clone(),
                probe_concurrency,
                ..Default::default()
            };
            state_with(&pool, worker)
        };

        let folder = json!({ "path": library.path() });
        let serial = add_location(&pool, "One at a time", StorageType::Local, folder.clone()).await;
        assert_eq!(scan(&reading(1), serial).await.1.unwrap().videos_added, 6);
        assert_eq!(most_at_once(), 1);

        let parallel = add_location(&pool, "Three at a time", StorageType::Local, folder).await;
        assert_eq!(scan(&reading(3), parallel).await.1.unwrap().videos_added, 6);
        let most = most_at_once();
        assert!((2..=3).contains(&most), "{most} runs at once");
        // Saved in the walk's order (by name), whatever order the runs ended in.
        let saved: Vec<String> = sqlx::query_scalar(
            "SELECT filename FROM videos WHERE storage_location_id = $1 ORDER BY id",
        )
        .bind(parallel)
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut walked = saved.clone();
        walked.sort();
        assert_eq!(saved, walked);
    })
    .await;
}

#[tokio::test]
async fn a_long_scan_folds_the_listed_works_total_as_it_adds_videos() {
    use crate::scan::{FOLD_DELTAS_EVERY, ScanContext};
    with_database(|pool| async move {
        let state = state(&pool);
        let deltas = async || -> (i64, i64) {
            sqlx::query_as(
                "SELECT count(*), COALESCE(sum(works), 0)::BIGINT FROM listed_works_deltas",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        // What one statement per new file leaves behind.
        sqlx::query("INSERT INTO listed_works_deltas (works) SELECT 1 FROM generate_series(1, 7)")
            .execute(&pool)
            .await
            .unwrap();
        let before = deltas().await;
        let scan = ScanContext::new(&state, 0, 0);
        for _ in 1..FOLD_DELTAS_EVERY {
            scan.wrote_listing().await;
        }
        assert_eq!(deltas().await, before, "folded before its time");
        scan.wrote_listing().await;
        assert_eq!(deltas().await, (1, before.1), "the same total, in one row");
    })
    .await;
}
