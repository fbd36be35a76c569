//! End to end: two real instances on loopback federate a library of real videos.

mod browser;
mod federation_keys;
mod hot_rows;
mod peer_faults;
mod ratelimit;
mod s3;
mod signed_urls;
mod sources;
mod streaming;
mod sync;
mod thumbnails;
mod tls;

use anyhow::Context;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::path::Path;
use velour_core::Permissions;
use velour_tests::{Instance, ffprobe_duration, make_video, shared_media_dir};

const H264_AAC: &[&str] = &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"];
const VP9_OPUS: &[&str] = &[
    "-c:v",
    "libvpx-vp9",
    "-b:v",
    "200k",
    "-deadline",
    "realtime",
    "-cpu-used",
    "8",
    "-c:a",
    "libopus",
];
const MKV_H264_VORBIS: &[&str] = &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "libvorbis"];

const WEBM_NAME: &str = "Über Straße – Été spécial.webm";

/// A small library as people keep one: a "Title (Year)" folder, a name with spaces and
/// non-ASCII letters, a sub-folder, a file that only pretends to be a video, and a text file.
fn make_library(root: &Path) -> anyhow::Result<()> {
    make_video(&root.join("Night Train (1999)/Night Train.mp4"), H264_AAC, 2)?;
    make_video(&root.join(WEBM_NAME), VP9_OPUS, 2)?;
    make_video(&root.join("clips/Harbour Lights.mkv"), MKV_H264_VORBIS, 3)?;
    std::fs::write(root.join("clips/not really.mp4"), b"these bytes are no video at all")?;
    std::fs::write(root.join("notes.txt"), b"not a video")?;
    Ok(())
}

fn counts(run: &Value, group: &str) -> [i64; 4] {
    let g = &run[group];
    ["seen", "added", "updated", "removed"].map(|k| g[k].as_i64().unwrap_or(-1))
}

fn find_video<'a>(works: &'a [Value], filename_end: &str) -> anyhow::Result<&'a Value> {
    works
        .iter()
        .flat_map(|w| w["videos"].as_array().into_iter().flatten())
        .find(|v| v["filename"].as_str().is_some_and(|f| f.ends_with(filename_end)))
        .with_context(|| format!("no video named *{filename_end}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_federate_a_library_and_stream_it() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_library(library.path())?;
    let a = Instance::start("A").await?;
    let b = Instance::start("B").await?;

    // A scans its folder: three videos, the impostor skipped with a reason.
    let folder = a.add_local_location("films", library.path()).await?;
    let first = a.scan(folder).await?;
    assert_eq!(counts(&first, "videos"), [3, 3, 0, 0], "{first}");
    assert_eq!(counts(&first, "works"), [3, 3, 0, 0], "{first}");
    assert_eq!(first["videos_skipped"], 1, "{first}");
    assert!(first["skipped"][0]["path"].as_str().is_some_and(|p| p.ends_with("not really.mp4")));

    let works_a = a.all_works().await?;
    let titles: Vec<&str> = works_a.iter().filter_map(|w| w["title"].as_str()).collect();
    assert_eq!(titles.len(), 3, "{titles:?}");
    let night = works_a.iter().find(|w| w["title"] == "Night Train").context("Night Train")?;
    assert_eq!(night["year"], 1999);
    let webm = find_video(&works_a, WEBM_NAME)?;
    assert_eq!(webm["video_codec"], "vp9");
    assert_eq!(webm["audio_codec"], "opus");
    assert_eq!(webm["web_compatible"], true);
    assert!(webm["fingerprints"]["oshash"].as_str().is_some_and(|h| h.len() == 16));

    // Rescanning the unchanged folder changes nothing.
    let again = a.scan(folder).await?;
    assert_eq!(counts(&again, "videos"), [3, 0, 0, 0], "{again}");
    assert_eq!(counts(&again, "works"), [3, 0, 0, 0], "{again}");
    assert_eq!(a.all_works().await?, works_a);

    // B registers A with a key A issued, and scans it through its worker.
    let perms = Permissions { can_read: true, can_stream: true, can_metadata: true };
    let key_for_b = a.issue_key("instance B", perms).await?;
    let peer = b.add_peer_location("instance A", &a, &key_for_b).await?;
    let synced = b.scan(peer).await?;
    assert_eq!(counts(&synced, "videos"), [3, 3, 0, 0], "{synced}");
    let works_b = b.all_works().await?;
    let mut titles_b: Vec<&str> = works_b.iter().filter_map(|w| w["title"].as_str()).collect();
    let mut titles_a = titles.clone();
    titles_a.sort_unstable();
    titles_b.sort_unstable();
    assert_eq!(titles_a, titles_b);

    // Rescanning A from B reads only what changed since (incremental sync), and changes
    // nothing. Rows A wrote within the cursor's one-second overlap of B's first scan are
    // sent again (see `sync::`, which checks exact counts), so only a bound is asserted
    // on what was seen.
    let resynced = b.scan(peer).await?;
    for group in ["videos", "works"] {
        let [seen, added, updated, removed] = counts(&resynced, group);
        assert_eq!([added, updated, removed], [0, 0, 0], "{resynced}");
        assert!((0..=3).contains(&seen), "{resynced}");
    }
    assert_eq!(b.all_works().await?.len(), 3);

    // A range of one of A's videos, read through B, is exactly those bytes of A's file.
    let original = std::fs::read(library.path().join(WEBM_NAME))?;
    let size = original.len();
    let remote = find_video(&works_b, WEBM_NAME)?;
    let id = remote["id"].as_i64().context("id")?;
    assert_eq!(remote["file_size"].as_u64(), Some(size as u64));
    let stream = format!("/api/v1/videos/{id}/stream");

    let ranged =
        b.admin(Method::GET, &stream).header(header::RANGE, "bytes=100-1123").send().await?;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    let content_range = ranged.headers()[header::CONTENT_RANGE].to_str()?.to_owned();
    assert_eq!(content_range, format!("bytes 100-1123/{size}"));
    assert_eq!(ranged.headers()[header::CONTENT_LENGTH], "1024");
    assert_eq!(&ranged.bytes().await?[..], &original[100..1124]);

    let suffix = b.admin(Method::GET, &stream).header(header::RANGE, "bytes=-500").send().await?;
    assert_eq!(suffix.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&suffix.bytes().await?[..], &original[size - 500..]);

    let open = format!("bytes={}-", size - 10);
    let tail = b.admin(Method::GET, &stream).header(header::RANGE, open).send().await?;
    assert_eq!(&tail.bytes().await?[..], &original[size - 10..]);

    let whole = b.admin(Method::GET, &stream).send().await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()[header::ACCEPT_RANGES], "bytes");
    assert_eq!(&whole.bytes().await?[..], &original[..]);

    let beyond = format!("bytes={size}-");
    let unsatisfiable = b.admin(Method::GET, &stream).header(header::RANGE, beyond).send().await?;
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(unsatisfiable.headers()[header::CONTENT_RANGE], format!("bytes */{size}").as_str());

    let head = b.admin(Method::HEAD, &stream).send().await?;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], size.to_string().as_str());

    // ffprobe, pointed at B's stream URL with the key, reads the right duration.
    let local = ffprobe_duration(library.path().join(WEBM_NAME).to_str().context("path")?, None)?;
    let auth =
        format!("Authorization: Bearer {}\r\n", secrecy::ExposeSecret::expose_secret(&b.admin_key));
    let through_b = ffprobe_duration(b.url(&stream).as_str(), Some(&auth))?;
    assert!((local - through_b).abs() < 0.01, "{local} vs {through_b}");
    let remote_duration = remote["duration"].as_f64().context("duration")?;
    assert!((remote_duration - local).abs() < 0.05, "{remote_duration} vs {local}");

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_needs_a_key_and_its_permission() -> anyhow::Result<()> {
    let a = Instance::start("auth").await?;
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Short (2001).mp4"), H264_AAC, 1)?;
    let folder = a.add_local_location("films", library.path()).await?;
    let run = a.scan(folder).await?;
    let works = a.all_works().await?;
    let work_id = works[0]["id"].as_i64().context("work id")?;
    let video_id = works[0]["videos"][0]["id"].as_i64().context("video id")?;
    let run_id = run["id"].as_i64().context("run id")?;

    let none = Permissions::default();
    let read_only = a.issue_key("reader", Permissions { can_read: true, ..none }).await?;
    let stream_only = a.issue_key("player", Permissions { can_stream: true, ..none }).await?;

    // (method, path, key that lacks the needed permission)
    let endpoints: Vec<(Method, String, &str)> = vec![
        (Method::GET, "/api/v1/ping".into(), &stream_only),
        (Method::GET, "/api/v1/instance".into(), &stream_only),
        (Method::GET, "/api/v1/works".into(), &stream_only),
        (Method::GET, format!("/api/v1/works/{work_id}"), &stream_only),
        (Method::GET, format!("/api/v1/videos/{video_id}"), &stream_only),
        (Method::GET, "/api/v1/videos/search?query=short".into(), &stream_only),
        (Method::GET, format!("/api/v1/videos/{video_id}/stream"), &read_only),
        (Method::HEAD, format!("/api/v1/videos/{video_id}/stream"), &read_only),
        (Method::GET, format!("/api/v1/videos/{video_id}/thumbnail"), &read_only),
        (Method::POST, "/api/v1/admin/api_keys".into(), &read_only),
        (Method::GET, "/api/v1/admin/storage_locations".into(), &read_only),
        (Method::POST, "/api/v1/admin/storage_locations".into(), &read_only),
        (Method::GET, format!("/api/v1/admin/storage_locations/{folder}"), &read_only),
        (Method::POST, format!("/api/v1/admin/storage_locations/{folder}/scans"), &read_only),
        (Method::GET, format!("/api/v1/admin/scan_runs/{run_id}"), &read_only),
        (Method::GET, "/api/v1/admin/keys".into(), &read_only),
        (Method::POST, "/api/v1/admin/keys".into(), &read_only),
        (Method::GET, "/api/v1/admin/keys/1".into(), &read_only),
        (Method::DELETE, "/api/v1/admin/keys/1".into(), &read_only),
        (Method::GET, "/api/v1/admin/federation_connections".into(), &read_only),
        (Method::POST, "/api/v1/admin/federation_connections".into(), &read_only),
        (Method::GET, "/api/v1/admin/federation_connections/1".into(), &read_only),
        (Method::PATCH, "/api/v1/admin/federation_connections/1".into(), &read_only),
        (Method::DELETE, "/api/v1/admin/federation_connections/1".into(), &read_only),
        (Method::POST, "/api/v1/admin/federation_connections/1/test".into(), &read_only),
    ];
    let body = json!({"name": "x", "storage_type": "local", "configuration": {"path": "/tmp"}});
    for (method, path, lacking) in &endpoints {
        let url = a.url(path);
        let send = |key: Option<&str>| {
            let mut request = a.http.request(method.clone(), url.clone());
            if *method == Method::POST {
                request = request.json(&body);
            }
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request.send()
        };

        for key in [None, Some("not-a-key"), Some("")] {
            let response = send(key).await?;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {path} {key:?}");
            let challenge = response.headers().get(header::WWW_AUTHENTICATE);
            assert!(challenge.is_some_and(|c| c.to_str().is_ok_and(|c| c.starts_with("Bearer"))));
            if *method != Method::HEAD {
                let error: Value = response.json().await?;
                assert_eq!(error["code"], "unauthorized", "{method} {path}");
            }
        }

        let response = send(Some(lacking)).await?;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
        if *method != Method::HEAD {
            let error: Value = response.json().await?;
            assert_eq!(error["code"], "forbidden", "{method} {path}");
        }
    }

    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_validate_pages_and_search_matches_wildcards_literally() -> anyhow::Result<()> {
    let a = Instance::start("pages").await?;
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("100% Pure (2004).mp4"), H264_AAC, 1)?;
    make_video(&library.path().join("1000 Pure (2005).mp4"), H264_AAC, 1)?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;

    for query in ["page=0", "page=-1", "per_page=0", "per_page=101", "page=abc", "per_page=1.5"] {
        let response = a.admin(Method::GET, &format!("/api/v1/works?{query}")).send().await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let error: Value = response.json().await?;
        assert!(error["code"].as_str().is_some(), "{query}: {error}");
    }

    let page = a.get_json("/api/v1/works?page=2&per_page=1").await?;
    assert_eq!(page["pagination"], json!({"current_page": 2, "total_pages": 2, "total_count": 2}));
    let beyond = a.get_json("/api/v1/works?page=9").await?;
    assert_eq!(beyond["works"], json!([]));

    let found = a.get_json("/api/v1/videos/search?query=100%25").await?;
    assert_eq!(found["pagination"]["total_count"], 1, "{found}");
    assert_eq!(found["videos"][0]["work_title"], "100% Pure");
    let underscore = a.get_json("/api/v1/videos/search?query=10_").await?;
    assert_eq!(underscore["pagination"]["total_count"], 0, "{underscore}");

    let missing = a.admin(Method::GET, "/api/v1/works/999999").send().await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let error: Value = missing.json().await?;
    assert_eq!(error["code"], "not-found");

    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_samples_scan_with_the_facts_ffprobe_reports() -> anyhow::Result<()> {
    let media = shared_media_dir().canonicalize().context("../shared/media is missing")?;
    let a = Instance::start("samples").await?;
    let folder = a.add_local_location("samples", &media).await?;
    let run = a.scan(folder).await?;
    let works = a.all_works().await?;

    let mut checked = 0;
    for entry in std::fs::read_dir(&media)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("mp4") {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).context("name")?;
        let video = find_video(&works, name)?;
        let expected = ffprobe_duration(path.to_str().context("path")?, None)?;
        let duration = video["duration"].as_f64().context("duration")?;
        assert!((duration - expected).abs() < 0.001, "{name}: {duration} vs {expected}");
        assert_eq!(video["file_size"].as_u64(), Some(std::fs::metadata(&path)?.len()), "{name}");
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} samples found: {run}");
    let bunny = find_video(&works, "bigbuckbunny.mp4")?;
    assert_eq!((bunny["width"].as_i64(), bunny["height"].as_i64()), (Some(1280), Some(720)));

    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_served_openapi_document_matches_the_committed_copy() -> anyhow::Result<()> {
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let generated = velour_gateway::openapi_json();
    if std::env::var_os("VELOUR_BLESS_OPENAPI").is_some() {
        std::fs::write(&committed_path, format!("{generated}\n"))?;
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&committed_path)?)?;

    let a = Instance::start("spec").await?;
    let served: Value = a.http.get(a.url("/api/v1/openapi.json")).send().await?.json().await?;
    let docs = a.http.get(a.url("/docs")).send().await?;
    assert_eq!(docs.status(), StatusCode::OK);
    a.stop().await?;

    assert_eq!(
        served, committed,
        "openapi/openapi.json is stale: run VELOUR_BLESS_OPENAPI=1 cargo test -p velour-tests"
    );
    Ok(())
}

/// Sends raw request bytes to the gateway and reads its answer until it closes or 5 s pass.
async fn raw_request(instance: &Instance, request: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = instance.base.host_str().context("host")?;
    let port = instance.base.port().context("port")?;
    let mut socket = tokio::net::TcpStream::connect((host, port)).await?;
    socket.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() -> anyhow::Result<()> {
    let a = Instance::start("bad input").await?;
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Edge (2010).mp4"), H264_AAC, 1)?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let video_id = a.all_works().await?[0]["videos"][0]["id"].as_i64().context("video id")?;
    let reader =
        a.issue_key("reader", Permissions { can_read: true, ..Default::default() }).await?;

    // A key that may not use the admin API is refused before its body is even parsed.
    let refused = a
        .http
        .post(a.url("/api/v1/admin/api_keys"))
        .bearer_auth(&reader)
        .header(header::CONTENT_TYPE, "application/json")
        .body("{ this is not JSON")
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // Bodies are bounded, declared or streamed. A declared length over the limit is
    // refused from the headers alone, before any of the body is sent.
    let huge = vec![b' '; 2 * 1024 * 1024];
    let answer = raw_request(
        &a,
        &format!(
            "POST /api/v1/admin/api_keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            secrecy::ExposeSecret::expose_secret(&a.admin_key),
            huge.len()
        ),
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload-too-large"), "{answer}");
    let chunks = futures_util::stream::iter(
        huge.chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>(),
    );
    // Its own client: the gateway may close this connection, which must not be pooled.
    let streamed = reqwest::Client::new()
        .post(a.url("/api/v1/admin/api_keys"))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&a.admin_key))
        .header(header::CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // The gateway answers as soon as the limit is passed and may close the connection
    // while the client is still sending; either way nothing was created.
    match streamed {
        Ok(response) => assert!(response.status().is_client_error(), "{}", response.status()),
        Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
    }

    // Text Postgres cannot store, paths that spell a folder twice, keys that cannot travel
    // in a header: each a 400 with a code, none a 500.
    let cases = [
        ("/api/v1/admin/api_keys", json!({"name": "a\u{0}b"})),
        (
            "/api/v1/admin/storage_locations",
            json!({"name": "x\u{0}", "storage_type": "local", "configuration": {"path": "/tmp"}}),
        ),
        (
            "/api/v1/admin/storage_locations",
            json!({"name": "dots", "storage_type": "local",
                   "configuration": {"path": "/tmp/../tmp"}}),
        ),
        (
            "/api/v1/admin/storage_locations",
            json!({"name": "nul", "storage_type": "local",
                   "configuration": {"path": "/tmp/\u{0}"}}),
        ),
        (
            "/api/v1/admin/storage_locations",
            json!({"name": "p", "storage_type": "velour", "configuration":
                {"remote_instance_url": "http://127.0.0.1:1", "api_key": "a\r\nb"}}),
        ),
        (
            "/api/v1/admin/storage_locations",
            json!({"name": "p", "storage_type": "velour", "configuration":
                {"remote_instance_url": "ftp://127.0.0.1/", "api_key": "k"}}),
        ),
        (
            "/api/v1/admin/storage_locations",
            json!({"name": "p", "storage_type": "jellyfin", "configuration": {}}),
        ),
    ];
    for (path, body) in cases {
        let response = a.admin(Method::POST, path).json(&body).send().await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await?;
        assert!(error["code"].as_str().is_some_and(|c| !c.is_empty()), "{body}: {error}");
    }
    let locations = a.get_json("/api/v1/admin/storage_locations").await?;
    assert_eq!(locations.as_array().map(Vec::len), Some(1), "{locations}");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys").fetch_one(a.pool()).await?;
    assert_eq!(keys, 2, "only the admin's and the reader's keys exist");

    let nul = a.admin(Method::GET, "/api/v1/videos/search?query=a%00b").send().await?;
    assert_eq!(nul.status(), StatusCode::BAD_REQUEST);

    // HEAD errors keep their status through the gateway, though they carry no body.
    let stream = format!("/api/v1/videos/{video_id}/stream");
    let head = a.admin(Method::HEAD, &stream).header(header::RANGE, "bytes=-0").send().await?;
    assert_eq!(head.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let head = a.admin(Method::HEAD, "/api/v1/videos/987654/stream").send().await?;
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    // Sizes a peer might claim cannot overflow the instance's totals.
    sqlx::query(
        "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
         SELECT work_id, storage_location_id, 'huge-' || n, 'huge', 9223372036854775807
         FROM videos, generate_series(1, 2) AS n LIMIT 2",
    )
    .execute(a.pool())
    .await?;
    let instance = a.get_json("/api/v1/instance").await?;
    assert_eq!(instance["total_storage"], i64::MAX, "{instance}");

    a.stop().await?;
    Ok(())
}
