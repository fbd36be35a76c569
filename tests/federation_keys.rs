//! Keys that expire, are revoked and rotated; federation connections and what their
//! status allows; `can_metadata`; connection tests run by the worker.

use crate::H264_AAC;
use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::time::Duration;
use velour_core::Permissions;
use velour_core::settings::FederationSettings;
use velour_tests::{Instance, make_video, plain_http_federation};

const ALL: Permissions = Permissions { can_read: true, can_stream: true, can_metadata: true };

/// A request with `key`, answered with its status and JSON body (null when there is none).
async fn call(
    instance: &Instance,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = instance.http.request(method, instance.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// A request with the admin key.
async fn admin(
    instance: &Instance,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    call(instance, method, path, instance.admin_key.expose_secret(), body).await
}

fn assert_code(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert!(answer.1["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", answer.1);
}

async fn ping(instance: &Instance, key: &str) -> anyhow::Result<(StatusCode, Value)> {
    call(instance, Method::GET, "/api/v1/ping", key, None).await
}

/// Creates a connection on `instance` for the peer at `peer_url`, issuing its key.
async fn create_connection(
    instance: &Instance,
    peer_url: &str,
    location: Option<i64>,
) -> anyhow::Result<Value> {
    let body = json!({ "remote_instance_url": peer_url, "storage_location_id": location });
    let path = "/api/v1/admin/federation_connections";
    instance.post_json(path, &body, StatusCode::CREATED).await
}

async fn set_status(
    instance: &Instance,
    connection: i64,
    status: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let path = format!("/api/v1/admin/federation_connections/{connection}");
    admin(instance, Method::PATCH, &path, Some(json!({ "status": status }))).await
}

fn id(value: &Value) -> anyhow::Result<i64> {
    value["id"].as_i64().with_context(|| format!("no id in {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_and_revoked_keys_are_refused_and_never_shown_again() -> anyhow::Result<()> {
    let a = Instance::start("keys").await?;

    // An expiry must lie ahead.
    let past = json!({ "name": "late", "expires_at": "2001-01-01T00:00:00Z" });
    let refused = admin(&a, Method::POST, "/api/v1/admin/keys", Some(past)).await?;
    assert_code(&refused, StatusCode::BAD_REQUEST, "invalid-expiry");

    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = json!({ "name": "dated", "permissions": { "can_read": true }, "expires_at": soon });
    let dated = a.post_json("/api/v1/admin/keys", &body, StatusCode::CREATED).await?;
    let dated_key = dated["key"].as_str().context("key")?.to_owned();
    assert!(dated["expires_at"].as_str().is_some(), "{dated}");
    assert_eq!(ping(&a, &dated_key).await?.0, StatusCode::OK);

    // Past its expiry (the clock moved on, here by rewriting it), the key is refused.
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id(&dated)?)
        .execute(a.pool())
        .await?;
    assert_code(&ping(&a, &dated_key).await?, StatusCode::UNAUTHORIZED, "key-expired");

    // Revocation is immediate, in the gateway and in the stream service.
    let player = a.issue_key("player", ALL).await?;
    let listed = a.get_json("/api/v1/admin/keys?per_page=100").await?;
    let player_row = listed["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .find(|k| k["name"] == "player")
        .context("player listed")?
        .clone();
    let player_id = id(&player_row)?;
    assert_eq!(player_row["state"], "active");
    assert_eq!(listed["pagination"]["total_count"], 3, "{listed}");
    let text = listed.to_string();
    assert!(!text.contains(&player) && !text.contains("hash"), "{text}");
    assert!(listed["keys"].as_array().is_some_and(|k| k.iter().all(|k| k.get("key").is_none())));

    let path = format!("/api/v1/admin/keys/{player_id}");
    let revoked = admin(&a, Method::DELETE, &path, None).await?;
    assert_eq!(revoked.0, StatusCode::OK, "{}", revoked.1);
    assert_eq!(revoked.1["state"], "revoked");
    assert_code(&ping(&a, &player).await?, StatusCode::UNAUTHORIZED, "key-revoked");
    let direct = a.http.get(a.stream_base.join("api/v1/videos/1/stream")?).bearer_auth(&player);
    let direct = direct.send().await?;
    assert_eq!(direct.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(direct.json::<Value>().await?["code"], "key-revoked");

    // Revoking again changes nothing; unknown keys are 404; the shown key says revoked.
    let again = admin(&a, Method::DELETE, &path, None).await?;
    assert_eq!(again.1["revoked_at"], revoked.1["revoked_at"]);
    let missing = admin(&a, Method::DELETE, "/api/v1/admin/keys/999999", None).await?;
    assert_code(&missing, StatusCode::NOT_FOUND, "not-found");
    assert_eq!(a.get_json(&path).await?["state"], "revoked");
    let bad_page = admin(&a, Method::GET, "/api/v1/admin/keys?page=0", None).await?;
    assert_code(&bad_page, StatusCode::BAD_REQUEST, "invalid-pagination");

    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_key_keeps_working_through_its_grace_period_then_expires() -> anyhow::Result<()> {
    let federation = FederationSettings { key_rotation_grace_hours: 2, ..plain_http_federation() };
    let a = Instance::start_with_federation("rotation", federation).await?;
    let old = a.issue_key("peer", ALL).await?;

    let own = call(&a, Method::GET, "/api/v1/keys/self", &old, None).await?;
    assert_eq!(own.0, StatusCode::OK);
    assert_eq!(own.1["expires_at"], Value::Null, "{}", own.1);
    assert_eq!(own.1["permissions"]["can_metadata"], true);
    let old_id = id(&own.1)?;

    let rotated = call(&a, Method::POST, "/api/v1/keys/rotate", &old, None).await?;
    assert_eq!(rotated.0, StatusCode::CREATED, "{}", rotated.1);
    let new = rotated.1["key"].as_str().context("new key")?.to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated.1["previous_key_id"], old_id);
    assert_eq!(rotated.1["permissions"], own.1["permissions"]);
    let grace_end: chrono::DateTime<chrono::Utc> =
        rotated.1["previous_key_expires_at"].as_str().context("grace end")?.parse()?;
    let grace = grace_end - chrono::Utc::now();
    assert!(grace > chrono::Duration::minutes(110) && grace <= chrono::Duration::hours(2));

    // Both keys work during the grace period; the old one is rotated only once.
    assert_eq!(ping(&a, &old).await?.0, StatusCode::OK);
    assert_eq!(ping(&a, &new).await?.0, StatusCode::OK);
    let twice = call(&a, Method::POST, "/api/v1/keys/rotate", &old, None).await?;
    assert_code(&twice, StatusCode::CONFLICT, "key-already-rotated");
    let own_old = call(&a, Method::GET, "/api/v1/keys/self", &old, None).await?;
    assert_eq!(own_old.1["replaced_by"], rotated.1["id"]);
    assert!(own_old.1["expires_at"].as_str().is_some());

    // Once the grace period is over, only the successor works.
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(old_id)
        .execute(a.pool())
        .await?;
    assert_code(&ping(&a, &old).await?, StatusCode::UNAUTHORIZED, "key-expired");
    assert_eq!(ping(&a, &new).await?.0, StatusCode::OK);

    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_can_metadata_fingerprints_and_technical_metadata_are_left_out()
-> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Meta (2002).mp4"), H264_AAC, 1)?;
    let a = Instance::start("metadata").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let plain = a.issue_key("plain", Permissions { can_metadata: false, ..ALL }).await?;
    let rich = a.issue_key("rich", ALL).await?;

    let technical = ["duration", "width", "height", "video_codec", "audio_codec"];
    for path in ["/api/v1/works", "/api/v1/videos/search?query=meta"] {
        let (status, with) = call(&a, Method::GET, path, &rich, None).await?;
        assert_eq!(status, StatusCode::OK);
        let (_, without) = call(&a, Method::GET, path, &plain, None).await?;
        let pick = |page: &Value| -> Value {
            if page.get("works").is_some() {
                page["works"][0]["videos"][0].clone()
            } else {
                page["videos"][0].clone()
            }
        };
        let (shown, hidden) = (pick(&with), pick(&without));
        for field in technical {
            assert!(!shown[field].is_null(), "{path}: {field} missing with can_metadata");
            assert!(hidden.get(field).is_none_or(Value::is_null), "{path}: {field} shown");
        }
        assert!(shown["fingerprints"]["oshash"].is_string(), "{shown}");
        assert_eq!(hidden["fingerprints"], json!({}), "{hidden}");
        // What playback needs stays.
        assert_eq!(hidden["filename"], shown["filename"]);
        assert_eq!(hidden["file_size"], shown["file_size"]);
        assert_eq!(hidden["web_compatible"], shown["web_compatible"]);

        let video = id(&shown)?;
        let (_, one) =
            call(&a, Method::GET, &format!("/api/v1/videos/{video}"), &plain, None).await?;
        assert!(one["duration"].is_null() && one["fingerprints"] == json!({}), "{one}");
    }

    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connections_status_decides_whether_its_key_and_location_are_used() -> anyhow::Result<()>
{
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Linked (2003).mp4"), H264_AAC, 1)?;
    let a = Instance::start("connection A").await?;
    let b = Instance::start("connection B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;

    // A issues B's key through a connection: refused until A's administrator approves.
    let on_a = create_connection(&a, b.base.as_str(), None).await?;
    let a_conn = id(&on_a)?;
    let key_for_b = on_a["key"].as_str().context("issued key")?.to_owned();
    assert_eq!(on_a["status"], "pending");
    assert_eq!(on_a["key_expires_at"], Value::Null);
    assert_code(&ping(&a, &key_for_b).await?, StatusCode::FORBIDDEN, "connection-pending");
    assert_eq!(set_status(&a, a_conn, "active").await?.0, StatusCode::OK);
    assert_eq!(ping(&a, &key_for_b).await?.0, StatusCode::OK);

    // B reads A through a location tied to B's own connection with A.
    let location = b.add_peer_location("A", &a, &key_for_b).await?;
    let on_b = create_connection(&b, a.base.as_str(), Some(location)).await?;
    let b_conn = id(&on_b)?;
    let scans = format!("/api/v1/admin/storage_locations/{location}/scans");
    let pending = admin(&b, Method::POST, &scans, None).await?;
    assert_code(&pending, StatusCode::CONFLICT, "connection-pending");
    assert_eq!(set_status(&b, b_conn, "active").await?.0, StatusCode::OK);
    b.scan(location).await?;
    assert_eq!(b.all_works().await?.len(), 1);

    // Suspending stops both the key (on A) and the scans (on B); reactivating restores them.
    assert_eq!(set_status(&a, a_conn, "suspended").await?.0, StatusCode::OK);
    assert_code(&ping(&a, &key_for_b).await?, StatusCode::FORBIDDEN, "connection-suspended");
    let stream = a.http.get(a.stream_base.join("api/v1/videos/1/stream")?).bearer_auth(&key_for_b);
    let stream = stream.send().await?;
    assert_eq!(stream.status(), StatusCode::FORBIDDEN);
    assert_eq!(stream.json::<Value>().await?["code"], "connection-suspended");
    assert_eq!(set_status(&b, b_conn, "suspended").await?.0, StatusCode::OK);
    let suspended = admin(&b, Method::POST, &scans, None).await?;
    assert_code(&suspended, StatusCode::CONFLICT, "connection-suspended");
    assert_eq!(set_status(&a, a_conn, "active").await?.0, StatusCode::OK);
    assert_eq!(set_status(&b, b_conn, "active").await?.0, StatusCode::OK);
    assert_eq!(ping(&a, &key_for_b).await?.0, StatusCode::OK);
    b.scan(location).await?;

    // Transitions outside the lifecycle, and unknown statuses, are refused.
    let back = set_status(&b, b_conn, "pending").await?;
    assert_code(&back, StatusCode::CONFLICT, "invalid-status-transition");
    assert_code(
        &set_status(&b, b_conn, "approved").await?,
        StatusCode::BAD_REQUEST,
        "invalid-status",
    );
    assert_eq!(set_status(&a, a_conn, "suspended").await?.0, StatusCode::OK);
    assert_eq!(set_status(&a, a_conn, "rejected").await?.0, StatusCode::OK);
    assert_code(&ping(&a, &key_for_b).await?, StatusCode::FORBIDDEN, "connection-rejected");
    let revived = set_status(&a, a_conn, "active").await?;
    assert_code(&revived, StatusCode::CONFLICT, "invalid-status-transition");

    // The listing shows both sides' connections, paginated.
    let listed = b.get_json("/api/v1/admin/federation_connections?per_page=1").await?;
    assert_eq!(listed["pagination"]["total_count"], 1);
    assert_eq!(listed["connections"][0]["storage_location_id"], location);
    assert!(listed["connections"][0].get("key").is_none(), "{listed}");

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_connection_revokes_its_key_and_removes_the_peers_videos() -> anyhow::Result<()>
{
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Gone (2004).mp4"), H264_AAC, 1)?;
    let a = Instance::start("delete A").await?;
    let b = Instance::start("delete B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let key_for_b = a.issue_key("B", ALL).await?;

    // B keeps a folder of its own, holding the same work as A.
    let own = tempfile::tempdir()?;
    make_video(&own.path().join("Gone (2004).mkv"), H264_AAC, 1)?;
    let own_folder = b.add_local_location("own", own.path()).await?;
    b.scan(own_folder).await?;

    let location = b.add_peer_location("A", &a, &key_for_b).await?;
    let connection = create_connection(&b, a.base.as_str(), Some(location)).await?;
    let conn = id(&connection)?;
    let issued = connection["key"].as_str().context("issued key")?.to_owned();
    set_status(&b, conn, "active").await?;
    b.scan(location).await?;
    let before = b.all_works().await?;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["videos"].as_array().map(Vec::len), Some(2));

    let path = format!("/api/v1/admin/federation_connections/{conn}");
    let deleted = admin(&b, Method::DELETE, &path, None).await?;
    assert_eq!(deleted.0, StatusCode::OK, "{}", deleted.1);
    assert_eq!(deleted.1["videos_removed"], 1);
    // The work keeps B's own video, so it stays.
    assert_eq!(deleted.1["works_removed"], 0);
    let after = b.all_works().await?;
    assert_eq!(after[0]["videos"].as_array().map(Vec::len), Some(1));
    assert_code(&ping(&b, &issued).await?, StatusCode::UNAUTHORIZED, "key-revoked");
    assert_code(&admin(&b, Method::GET, &path, None).await?, StatusCode::NOT_FOUND, "not-found");
    let location_path = format!("/api/v1/admin/storage_locations/{location}");
    assert_eq!(admin(&b, Method::GET, &location_path, None).await?.0, StatusCode::NOT_FOUND);

    // A work held only by the peer goes with its last video.
    let location = b.add_peer_location("A again", &a, &key_for_b).await?;
    let connection = create_connection(&b, a.base.as_str(), Some(location)).await?;
    set_status(&b, id(&connection)?, "active").await?;
    sqlx::query("DELETE FROM storage_locations WHERE id = $1")
        .bind(own_folder)
        .execute(b.pool())
        .await?;
    b.scan(location).await?;
    let path = format!("/api/v1/admin/federation_connections/{}", id(&connection)?);
    let deleted = admin(&b, Method::DELETE, &path, None).await?;
    assert_eq!(deleted.1["works_removed"], 1, "{}", deleted.1);
    assert!(b.all_works().await?.is_empty());

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_cap_and_the_federation_switch_are_enforced() -> anyhow::Result<()> {
    let capped = FederationSettings { max_connections: 1, ..plain_http_federation() };
    let a = Instance::start_with_federation("capped", capped).await?;
    let first = id(&create_connection(&a, "https://one.example/", None).await?)?;
    let second = id(&create_connection(&a, "https://two.example/", None).await?)?;
    assert_eq!(set_status(&a, first, "active").await?.0, StatusCode::OK);
    let over = set_status(&a, second, "active").await?;
    assert_code(&over, StatusCode::CONFLICT, "connection-limit-reached");
    assert_eq!(set_status(&a, first, "suspended").await?.0, StatusCode::OK);
    assert_eq!(set_status(&a, second, "active").await?.0, StatusCode::OK);

    // Bad input is refused with its code, never a 500.
    let path = "/api/v1/admin/federation_connections";
    let body = json!({ "remote_instance_url": "ftp://peer.example/" });
    let ftp = admin(&a, Method::POST, path, Some(body)).await?;
    assert_code(&ftp, StatusCode::BAD_REQUEST, "invalid-connection");
    let body = json!({ "remote_instance_url": "https://x.example/", "api_key_id": 999999 });
    let missing = admin(&a, Method::POST, path, Some(body)).await?;
    assert_code(&missing, StatusCode::NOT_FOUND, "not-found");
    let test = admin(&a, Method::POST, &format!("{path}/{first}/test"), None).await?;
    assert_code(&test, StatusCode::CONFLICT, "connection-has-no-location");
    let folder = tempfile::tempdir()?;
    let local = a.add_local_location("not a peer", folder.path()).await?;
    let body = json!({ "remote_instance_url": "https://x.example/", "storage_location_id": local });
    let not_peer = admin(&a, Method::POST, path, Some(body)).await?;
    assert_code(&not_peer, StatusCode::BAD_REQUEST, "invalid-connection");

    // An existing key may be tied to one connection, if it is a member's usable key.
    let name = json!({ "name": "given" });
    let given = id(&a.post_json("/api/v1/admin/keys", &name, StatusCode::CREATED).await?)?;
    let body = json!({ "remote_instance_url": "https://given.example/", "api_key_id": given });
    let tied = admin(&a, Method::POST, path, Some(body.clone())).await?;
    assert_eq!(tied.0, StatusCode::CREATED, "{}", tied.1);
    assert_eq!((tied.1["key"].clone(), tied.1["api_key_id"].clone()), (Value::Null, json!(given)));
    let again = admin(&a, Method::POST, path, Some(body)).await?;
    assert_code(&again, StatusCode::CONFLICT, "connection-exists");
    let body = json!({ "remote_instance_url": "https://admin.example/", "api_key_id": 1 });
    let admin_key = admin(&a, Method::POST, path, Some(body)).await?;
    assert_code(&admin_key, StatusCode::CONFLICT, "key-not-usable");
    a.stop().await?;

    let off = FederationSettings { enabled: false, ..plain_http_federation() };
    let b = Instance::start_with_federation("federation off", off).await?;
    let peer = b.add_peer_location("peer", &b, "some-key").await?;
    let body = json!({ "remote_instance_url": "https://one.example/" });
    let create = admin(&b, Method::POST, path, Some(body)).await?;
    assert_code(&create, StatusCode::FORBIDDEN, "federation-disabled");
    let list = admin(&b, Method::GET, path, None).await?;
    assert_code(&list, StatusCode::FORBIDDEN, "federation-disabled");
    let scans = format!("/api/v1/admin/storage_locations/{peer}/scans");
    let scan = admin(&b, Method::POST, &scans, None).await?;
    assert_code(&scan, StatusCode::FORBIDDEN, "federation-disabled");
    b.stop().await?;
    Ok(())
}

/// Polls a connection until its test outcome appears.
async fn tested(instance: &Instance, connection: i64) -> anyhow::Result<Value> {
    let path = format!("/api/v1/admin/federation_connections/{connection}");
    for _ in 0..400 {
        let shown = instance.get_json(&path).await?;
        if !shown["last_test"].is_null() {
            return Ok(shown["last_test"].clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("connection {connection} was not tested within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_tests_a_connection_and_the_api_shows_the_outcome() -> anyhow::Result<()> {
    let a = Instance::start("tested A").await?;
    let b = Instance::start("tester B").await?;
    let key_for_b = a.issue_key("B", ALL).await?;

    let location = b.add_peer_location("A", &a, &key_for_b).await?;
    let conn = id(&create_connection(&b, a.base.as_str(), Some(location)).await?)?;
    let path = format!("/api/v1/admin/federation_connections/{conn}/test");
    let queued = b.post_json(&path, &Value::Null, StatusCode::ACCEPTED).await?;
    assert_eq!(queued["id"], conn);
    let outcome = tested(&b, conn).await?;
    assert_eq!(outcome["reachable"], true, "{outcome}");
    assert_eq!(outcome["error"], Value::Null, "{outcome}");
    assert_eq!(outcome["peer_version"], velour_core::VERSION);
    assert!(outcome["latency_ms"].as_i64().is_some(), "{outcome}");
    assert!(outcome["tested_at"].is_string(), "{outcome}");

    // A peer that refuses our key answers, but the test says why it failed.
    let body = json!({ "name": "bad key", "storage_type": "velour", "configuration": {
        "remote_instance_url": a.base.as_str(), "api_key": "not-a-key" } });
    let bad = b.post_json("/api/v1/admin/storage_locations", &body, StatusCode::CREATED).await?;
    let conn = id(&create_connection(&b, "https://elsewhere.example/", Some(id(&bad)?)).await?)?;
    let path = format!("/api/v1/admin/federation_connections/{conn}/test");
    b.post_json(&path, &Value::Null, StatusCode::ACCEPTED).await?;
    let outcome = tested(&b, conn).await?;
    assert_eq!(outcome["reachable"], true, "{outcome}");
    assert!(outcome["error"].as_str().is_some_and(|e| e.contains("401")), "{outcome}");
    assert!(!outcome.to_string().contains("not-a-key"), "{outcome}");

    // A peer nobody answers for is unreachable.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let dead_url = format!("http://{}/", closed.local_addr()?);
    drop(closed);
    let body = json!({ "name": "dead", "storage_type": "velour", "configuration": {
        "remote_instance_url": dead_url, "api_key": "k" } });
    let dead = b.post_json("/api/v1/admin/storage_locations", &body, StatusCode::CREATED).await?;
    let conn = id(&create_connection(&b, &dead_url, Some(id(&dead)?)).await?)?;
    let path = format!("/api/v1/admin/federation_connections/{conn}/test");
    b.post_json(&path, &Value::Null, StatusCode::ACCEPTED).await?;
    let outcome = tested(&b, conn).await?;
    assert_eq!(outcome["reachable"], false, "{outcome}");
    assert!(outcome["error"].is_string(), "{outcome}");

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_rotates_a_peer_key_that_expires_within_the_grace_window() -> anyhow::Result<()>
{
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Rotated (2005).mp4"), H264_AAC, 1)?;
    // A issues federation keys for 1 hour; B rotates keys that expire within 24 hours.
    let short = FederationSettings { token_expiry_hours: 1, ..plain_http_federation() };
    let a = Instance::start_with_federation("issuer A", short).await?;
    let b = Instance::start("rotator B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;

    let on_a = create_connection(&a, b.base.as_str(), None).await?;
    let old_key = on_a["key"].as_str().context("key")?.to_owned();
    assert!(on_a["key_expires_at"].is_string(), "{on_a}");
    set_status(&a, id(&on_a)?, "active").await?;
    let location = b.add_peer_location("A", &a, &old_key).await?;
    b.scan(location).await?;
    assert_eq!(b.all_works().await?.len(), 1);

    // B now holds the successor; A's connection follows it, and the old key is in grace.
    // Sealed at rest: read through the cipher, with the key B keeps in its catalog.
    let cipher = velour_db::secrets::SecretsCipher::default();
    let opened = velour_db::locations::get_location_with_secrets(b.pool(), &cipher, location);
    let held = opened.await?.secret_str("api_key").unwrap_or_default().to_owned();
    assert_ne!(held, old_key);
    assert_eq!(ping(&a, &held).await?.0, StatusCode::OK);
    let own = call(&a, Method::GET, "/api/v1/keys/self", &held, None).await?;
    let shown = a.get_json(&format!("/api/v1/admin/federation_connections/{}", id(&on_a)?)).await?;
    assert_eq!(shown["api_key_id"], own.1["id"]);
    assert_eq!(shown["api_key_expires_at"], own.1["expires_at"]);
    assert!(own.1["expires_at"].is_string(), "{}", own.1);
    let old = call(&a, Method::GET, "/api/v1/keys/self", &old_key, None).await?;
    assert_eq!(old.1["replaced_by"], own.1["id"]);

    // Suspending A's side of the connection refuses the successor too.
    set_status(&a, id(&on_a)?, "suspended").await?;
    assert_code(&ping(&a, &held).await?, StatusCode::FORBIDDEN, "connection-suspended");
    assert_code(&ping(&a, &old_key).await?, StatusCode::FORBIDDEN, "connection-suspended");

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_peer_location_takes_a_new_key_by_patch() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Patched (2003).mp4"), H264_AAC, 1)?;
    let a = Instance::start("A").await?;
    let b = Instance::start("B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;

    // B holds a key A never issued: the scan is refused and rescans halt.
    let peer = b.add_peer_location("A", &a, "not-a-key-of-a").await?;
    let failed = b.scan(peer).await.expect_err("A refuses an unknown key");
    assert!(failed.to_string().contains("401"), "{failed:#}");
    let path = format!("/api/v1/admin/storage_locations/{peer}");
    let location = b.get_json(&path).await?;
    assert!(location["rescans_halted_reason"].is_string(), "{location}");

    // Bad changes are refused and change nothing.
    let patch = |body: Value| admin(&b, Method::PATCH, &path, Some(body));
    let bad_url = json!({ "configuration": { "remote_instance_url": "ftp://a.example/" } });
    assert_code(&patch(bad_url).await?, StatusCode::BAD_REQUEST, "invalid-configuration");
    let no_key = json!({ "configuration": { "api_key": null } });
    assert_code(&patch(no_key).await?, StatusCode::BAD_REQUEST, "invalid-configuration");
    let blank = patch(json!({ "name": "" })).await?;
    assert_eq!(blank.0, StatusCode::BAD_REQUEST, "{}", blank.1);
    let missing = json!({ "configuration": { "api_key": "k" } });
    let path_missing = "/api/v1/admin/storage_locations/999999";
    let answer = admin(&b, Method::PATCH, path_missing, Some(missing)).await?;
    assert_code(&answer, StatusCode::NOT_FOUND, "not-found");
    let unchanged = b.get_json(&path).await?;
    assert_eq!(unchanged["configuration"], location["configuration"]);
    assert!(unchanged["rescans_halted_reason"].is_string(), "{unchanged}");

    // The key A issues replaces the refused one; it is never shown, and rescans resume.
    let key = a.issue_key("instance B", ALL).await?;
    let (status, patched) = patch(json!({ "configuration": { "api_key": key } })).await?;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert!(patched["rescans_halted_reason"].is_null(), "{patched}");
    assert_eq!(patched["scan_failures"], 0, "{patched}");
    assert_eq!(patched["configuration"]["remote_instance_url"], a.base.as_str());
    assert!(!patched.to_string().contains(&key), "the key is shown: {patched}");
    b.scan(peer).await?;
    let works = b.all_works().await?;
    assert_eq!(works.len(), 1, "{works:?}");
    let cursor = "SELECT sync_cursor FROM storage_locations WHERE id = $1";
    let stored: Option<String> = sqlx::query_scalar(cursor).bind(peer).fetch_one(b.pool()).await?;
    assert!(stored.is_some(), "a complete scan stores A's cursor");

    // While a scan is queued the configuration stays; the name and schedule may change.
    sqlx::query("INSERT INTO scan_runs (storage_location_id) VALUES ($1)")
        .bind(peer)
        .execute(b.pool())
        .await?;
    let renamed = json!({ "configuration": { "instance_name": "Renamed A" } });
    assert_code(&patch(renamed.clone()).await?, StatusCode::CONFLICT, "scan-active");
    let (status, body) =
        patch(json!({ "name": "A, renamed", "rescan_interval_secs": 3600 })).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["rescan_interval_secs"].as_i64()),
        (Some("A, renamed"), Some(3600))
    );
    sqlx::query("DELETE FROM scan_runs WHERE state = 'queued'").execute(b.pool()).await?;

    // A new configuration may name another peer: the cursor of the old one is forgotten.
    let (status, body) = patch(renamed).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["configuration"]["instance_name"], "Renamed A");
    let stored: Option<String> = sqlx::query_scalar(cursor).bind(peer).fetch_one(b.pool()).await?;
    assert_eq!(stored, None);
    b.scan(peer).await?;
    assert_eq!(b.all_works().await?.len(), 1);

    // An empty configuration changes nothing: the cursor stays.
    let (status, body) = patch(json!({ "configuration": {} })).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kept: Option<String> = sqlx::query_scalar(cursor).bind(peer).fetch_one(b.pool()).await?;
    assert!(kept.is_some(), "an empty configuration forgot the cursor");

    // Two locations cannot share a name.
    b.add_local_location("elsewhere", library.path()).await?;
    let clash = patch(json!({ "name": "elsewhere" })).await?;
    assert_eq!(clash.0, StatusCode::CONFLICT, "{}", clash.1);
    a.stop().await?;
    b.stop().await
}
