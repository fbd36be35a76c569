//! Per-key rate limits shared by gateway replicas through Redis, and the audit log.

use anyhow::Context;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::time::Duration;
use url::Url;
use velour_tests::{Instance, expect_json, make_video};

async fn member_key(instance: &Instance, name: &str) -> anyhow::Result<(i64, String)> {
    let body = json!({ "name": name, "permissions": { "can_read": true, "can_stream": true } });
    let created = instance.post_json("/api/v1/admin/api_keys", &body, StatusCode::CREATED).await?;
    let id = created["id"].as_i64().context("no key id")?;
    Ok((id, created["key"].as_str().context("no key")?.to_owned()))
}

async fn call(
    instance: &Instance,
    base: &Url,
    method: Method,
    path: &str,
    key: &str,
) -> anyhow::Result<reqwest::Response> {
    let url = base.join(path.trim_start_matches('/'))?;
    Ok(instance.http.request(method, url).bearer_auth(key).send().await?)
}

fn header_of(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_one_limit_per_key() -> anyhow::Result<()> {
    let mut a = Instance::start_with_rate_limits("A", 3, 2).await?;
    let first = a.base.clone();
    let second = a.start_another_gateway().await?;
    let (_, key) = member_key(&a, "peer").await?;

    // Three catalog calls, spread over both gateways, use up the hour's quota.
    for (n, base) in [&first, &second, &first].into_iter().enumerate() {
        let answer = call(&a, base, Method::GET, "/api/v1/ping", &key).await?;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(header_of(&answer, "ratelimit-policy"), "\"catalog\";q=3;w=3600");
        let remaining = 2 - n;
        assert!(
            header_of(&answer, "ratelimit").starts_with(&format!("\"catalog\";r={remaining};"))
        );
    }

    // The next is refused by whichever gateway answers it.
    for base in [&second, &first] {
        let answer = call(&a, base, Method::GET, "/api/v1/works", &key).await?;
        let retry_after: u64 = header_of(&answer, "retry-after").parse()?;
        assert!((1..=1200).contains(&retry_after), "{retry_after}");
        assert!(header_of(&answer, "ratelimit").starts_with("\"catalog\";r=0;t="));
        assert_eq!(header_of(&answer, "ratelimit-policy"), "\"catalog\";q=3;w=3600");
        let body = expect_json(answer, StatusCode::TOO_MANY_REQUESTS).await?;
        assert_eq!(body["code"], "rate-limited", "{body}");
    }

    // Streams have their own quota: two calls (to a video that does not exist), then 429.
    for (base, status) in [(&second, 404), (&first, 404), (&second, 429)] {
        let answer = call(&a, base, Method::HEAD, "/api/v1/videos/999/stream", &key).await?;
        assert_eq!(answer.status().as_u16(), status);
        assert!(header_of(&answer, "ratelimit-policy").starts_with("\"stream\";q=2;"));
    }

    // Another key has a quota of its own; admin keys have none.
    let (_, other) = member_key(&a, "other").await?;
    let answer = call(&a, &second, Method::GET, "/api/v1/ping", &other).await?;
    assert_eq!(answer.status(), StatusCode::OK);
    for _ in 0..5 {
        let answer = a.admin(Method::GET, "/api/v1/ping").send().await?;
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(answer.headers().get("ratelimit").is_none());
    }
    a.stop().await
}

/// The audit entries matching `query`, once at least `expected` of them are written.
async fn audit_page(instance: &Instance, query: &str, expected: i64) -> anyhow::Result<Value> {
    let mut page = Value::Null;
    for _ in 0..100 {
        page = instance.get_json(&format!("/api/v1/admin/audit?{query}")).await?;
        if page["pagination"]["total_count"].as_i64().unwrap_or(0) >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_federated_request_is_audited_with_what_it_sent() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    let codecs = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"];
    make_video(&library.path().join("Solo.mp4"), &codecs, 1)?;
    let a = Instance::start("A").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let works = a.all_works().await?;
    let video = &works[0]["videos"][0];
    let (video_id, size) = (video["id"].as_i64().context("id")?, video["file_size"].as_i64());
    let (key_id, key) = member_key(&a, "peer").await?;
    let connection: i64 = sqlx::query_scalar(
        "INSERT INTO federation_connections (api_key_id, remote_instance_url, status)
         VALUES ($1, 'https://b.example/', 'active') RETURNING id",
    )
    .bind(key_id)
    .fetch_one(a.pool())
    .await?;

    let base = a.base.clone();
    let listed = call(&a, &base, Method::GET, "/api/v1/works", &key).await?;
    let listed_bytes = listed.bytes().await?.len() as i64;
    let missing = call(&a, &base, Method::GET, "/api/v1/works/999999", &key).await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let stream = format!("/api/v1/videos/{video_id}/stream");
    let url = base.join(stream.trim_start_matches('/'))?;
    let ranged = a.http.get(url.clone()).bearer_auth(&key).header(header::RANGE, "bytes=0-99");
    let ranged = ranged.send().await?;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await?.len(), 100);
    let whole = a.http.get(url).bearer_auth(&key).send().await?.bytes().await?;
    assert_eq!(Some(whole.len() as i64), size);
    // Admin calls are not federated requests and are not audited.
    a.get_json("/api/v1/works").await?;

    let page = audit_page(&a, &format!("key_id={key_id}"), 4).await?;
    assert_eq!(page["pagination"]["total_count"], 4, "{page}");
    let entries = page["entries"].as_array().context("entries")?;
    let summary: Vec<(String, i64, i64, Option<String>)> = entries
        .iter()
        .rev()
        .map(|e| {
            let action = e["action"].as_str().unwrap_or_default().to_owned();
            let target = e["target"].as_str().map(str::to_owned);
            (
                action,
                e["status"].as_i64().unwrap_or(0),
                e["bytes_sent"].as_i64().unwrap_or(-1),
                target,
            )
        })
        .collect();
    let id = Some(video_id.to_string());
    assert_eq!(summary[0], ("catalog.list_works".into(), 200, listed_bytes, None));
    assert_eq!(summary[1].0, "catalog.get_work");
    assert_eq!((summary[1].1, summary[1].3.as_deref()), (404, Some("999999")));
    assert_eq!(summary[2], ("stream.video".into(), 206, 100, id.clone()));
    assert_eq!(summary[3], ("stream.video".into(), 200, size.unwrap_or(0), id));
    assert!(entries.iter().all(|e| e["connection_id"] == connection && e["key_id"] == key_id));

    // Filters and pages.
    let only = |q: &str| format!("key_id={key_id}&{q}");
    let streams = audit_page(&a, &only("action=stream.video"), 2).await?;
    assert_eq!(streams["pagination"]["total_count"], 2);
    let not_found = audit_page(&a, &only("status=404"), 1).await?;
    assert_eq!(not_found["pagination"]["total_count"], 1);
    let by_connection = audit_page(&a, &format!("connection_id={connection}"), 4).await?;
    assert_eq!(by_connection["pagination"]["total_count"], 4);
    let later = audit_page(&a, &only("since=2999-01-01T00:00:00Z"), 0).await?;
    assert_eq!(later["pagination"]["total_count"], 0);
    let paged = audit_page(&a, &only("per_page=1&page=2"), 4).await?;
    assert_eq!(paged["pagination"]["total_pages"], 4);
    assert_eq!(paged["entries"].as_array().map(Vec::len), Some(1));

    // Members may not read the log.
    let refused = call(&a, &base, Method::GET, "/api/v1/admin/audit", &key).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    a.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_urls_spend_their_keys_stream_quota_and_are_audited() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    let codecs = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"];
    make_video(&library.path().join("Signed.mp4"), &codecs, 1)?;
    let a = Instance::start_with_rate_limits("A", 100, 3).await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let video_id = a.all_works().await?[0]["videos"][0]["id"].as_i64().context("id")?;
    let (key_id, key) = member_key(&a, "player").await?;

    // Asking for the URL is one stream call; each fetch of it, with no key, is another.
    let path = format!("/api/v1/videos/{video_id}/stream_url");
    let signed = call(&a, &a.base, Method::POST, &path, &key).await?;
    let signed = expect_json(signed, StatusCode::OK).await?;
    let url = a.url(signed["url"].as_str().context("url")?);
    let fetch = || a.http.get(url.clone()).header(header::RANGE, "bytes=0-9").send();
    let first = fetch().await?;
    assert_eq!(first.status(), StatusCode::PARTIAL_CONTENT);
    assert!(header_of(&first, "ratelimit").starts_with("\"stream\";r=1;"), "{first:?}");
    assert_eq!(first.bytes().await?.len(), 10);

    // A forged signature names the key but spends nothing of its quota, and is refused.
    let mut forged = url.clone();
    let query = url.query().context("query")?.replace("signature=", "signature=00");
    forged.set_query(Some(&query));
    for _ in 0..3 {
        let refused = a.http.get(forged.clone()).send().await?;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().get("ratelimit").is_none());
    }

    let second = fetch().await?;
    assert_eq!(second.status(), StatusCode::PARTIAL_CONTENT);
    assert!(header_of(&second, "ratelimit").starts_with("\"stream\";r=0;"));
    assert_eq!(second.bytes().await?.len(), 10);
    let limited = fetch().await?;
    let body = expect_json(limited, StatusCode::TOO_MANY_REQUESTS).await?;
    assert_eq!(body["code"], "rate-limited", "{body}");
    // The key's other stream calls share the quota.
    let stream = format!("/api/v1/videos/{video_id}/stream");
    let direct = call(&a, &a.base, Method::HEAD, &stream, &key).await?;
    assert_eq!(direct.status(), StatusCode::TOO_MANY_REQUESTS);

    let query = format!("key_id={key_id}&action=stream.video_signed");
    let page = audit_page(&a, &query, 3).await?;
    assert_eq!(page["pagination"]["total_count"], 3, "{page}");
    let seen: Vec<(i64, i64)> = page["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .rev()
        .map(|e| (e["status"].as_i64().unwrap_or(0), e["bytes_sent"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(seen[..2], [(206, 10), (206, 10)], "{page}");
    assert_eq!(seen[2].0, 429, "{page}");
    a.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_entries_wait_out_a_moment_when_the_database_cannot_take_them() -> anyhow::Result<()>
{
    let a = Instance::start("A").await?;
    let (key_id, key) = member_key(&a, "peer").await?;
    let base = a.base.clone();

    // The log's table is out of reach (as during a failover): the entries wait.
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away").execute(a.pool()).await?;
    for _ in 0..3 {
        let pinged = call(&a, &base, Method::GET, "/api/v1/ping", &key).await?;
        assert_eq!(pinged.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log_away").fetch_one(a.pool()).await?;
    assert_eq!(written, 0);

    // Back within the retries: every entry is written, once.
    sqlx::query("ALTER TABLE audit_log_away RENAME TO audit_log").execute(a.pool()).await?;
    let page = audit_page(&a, &format!("key_id={key_id}"), 3).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let page_again = audit_page(&a, &format!("key_id={key_id}"), 3).await?;
    assert_eq!(page["pagination"]["total_count"], 3, "{page}");
    assert_eq!(page_again["pagination"]["total_count"], 3, "{page_again}");
    a.stop().await
}
