//! Signed stream URLs: what a browser's `<video>` plays without an `Authorization` header.

use crate::{VP9_OPUS, find_video};
use anyhow::Context;
use reqwest::{StatusCode, header};
use secrecy::ExposeSecret;
use serde_json::Value;
use velour_core::Permissions;
use velour_core::settings::SigningSettings;
use velour_core::signing::StreamGrant;
use velour_tests::{Instance, make_video};

const NAME: &str = "Signed (2021).webm";

async fn sign(instance: &Instance, key: &str, video_id: i64) -> anyhow::Result<Value> {
    let path = format!("/api/v1/videos/{video_id}/stream_url");
    let response = instance.http.post(instance.url(&path)).bearer_auth(key).send().await?;
    velour_tests::expect_json(response, StatusCode::OK).await
}

/// GET of a path on the instance with no key at all, as a browser sends it.
async fn fetch(
    instance: &Instance,
    path: &str,
    range: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut request = instance.http.get(instance.url(path));
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    request.send().await
}

async fn assert_refused(response: reqwest::Response, code: &str, what: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(body["code"], code, "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_urls_play_without_a_key_until_they_expire_or_the_key_is_revoked()
-> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join(NAME), VP9_OPUS, 1)?;
    let original = std::fs::read(library.path().join(NAME))?;
    let a = Instance::start("signed A").await?;
    let b = Instance::start("signed B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let all = Permissions { can_read: true, can_stream: true, can_metadata: false };
    let peer = b.add_peer_location("A", &a, &a.issue_key("B", all).await?).await?;
    b.scan(peer).await?;
    let id = find_video(&a.all_works().await?, NAME)?["id"].as_i64().context("id")?;
    let remote_id = find_video(&b.all_works().await?, NAME)?["id"].as_i64().context("id")?;

    let player =
        a.issue_key("player", Permissions { can_stream: true, ..Default::default() }).await?;
    let reader =
        a.issue_key("reader", Permissions { can_read: true, ..Default::default() }).await?;

    // The URL holds neither key, and plays whole and in ranges with no header at all.
    let signed = sign(&a, &player, id).await?;
    let url = signed["url"].as_str().context("url")?.to_owned();
    assert!(url.starts_with(&format!("/api/v1/videos/{id}/stream/signed?")), "{url}");
    assert!(!url.contains(&player) && !url.contains(a.admin_key.expose_secret()), "{url}");
    assert!(signed["expires_at"].as_str().is_some(), "{signed}");
    let whole = fetch(&a, &url, None).await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()[header::CONTENT_TYPE], "video/webm");
    assert_eq!(&whole.bytes().await?[..], &original[..]);
    let part = fetch(&a, &url, Some("bytes=10-19")).await?;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&part.bytes().await?[..], &original[10..20]);
    let head = a.http.head(a.url(&url)).send().await?;
    assert_eq!(head.headers()[header::CONTENT_LENGTH], original.len().to_string().as_str());

    // The stream service takes the same query directly.
    let direct = a.http.get(a.stream_base.join(&url.replace("/stream/signed?", "/stream?"))?);
    assert_eq!(direct.send().await?.status(), StatusCode::OK);

    // A peer's video plays from B's signed URL, through B, from A.
    let from_b = sign(&b, b.admin_key.expose_secret(), remote_id).await?;
    let from_b = fetch(&b, from_b["url"].as_str().context("url")?, None).await?;
    assert_eq!(from_b.status(), StatusCode::OK);
    assert_eq!(&from_b.bytes().await?[..], &original[..]);

    // Tampering with any part breaks it; the signature names one video only.
    let other_video = url.replacen(&format!("/videos/{id}/"), &format!("/videos/{}/", id + 1), 1);
    let tampered = [
        (other_video, "invalid-signature"),
        (url.replacen("signature=", "signature=00", 1), "invalid-signature"),
        (url.replacen("key_id=", "key_id=9", 1), "invalid-signature"),
        (url.replacen("expires=", "expires=1", 1), "invalid-signature"),
        (url.replacen("&signature=", "&signature=ab&signature=", 1), "invalid-signature"),
    ];
    for (bad, code) in &tampered {
        assert_refused(fetch(&a, bad, None).await?, code, bad).await;
    }
    // A malformed signed query is a 400 at the gateway, never a 500.
    let garbled = url.replacen("expires=", "expires=soon", 1);
    assert_eq!(fetch(&a, &garbled, None).await?.status(), StatusCode::BAD_REQUEST);

    // An expired grant, correctly signed with the instance's secret, is refused as such.
    let signer = velour_db::secrets::url_signer(a.pool(), &SigningSettings::default()).await?;
    let key_id: i64 =
        url.split(['?', '&']).find_map(|p| p.strip_prefix("key_id=")).context("key_id")?.parse()?;
    let past = chrono::Utc::now().timestamp() - 1;
    let grant = StreamGrant { video_id: id, key_id, expires: past };
    let expired = format!(
        "/api/v1/videos/{id}/stream/signed?expires={past}&key_id={key_id}&signature={}",
        signer.sign(grant)
    );
    assert_refused(fetch(&a, &expired, None).await?, "signature-expired", "expired").await;

    // Only a key that may stream gets a URL, and only for a video that exists.
    let refused = a.http.post(a.url(&format!("/api/v1/videos/{id}/stream_url")));
    assert_eq!(refused.bearer_auth(&reader).send().await?.status(), StatusCode::FORBIDDEN);
    let anonymous = a.http.post(a.url(&format!("/api/v1/videos/{id}/stream_url")));
    assert_eq!(anonymous.send().await?.status(), StatusCode::UNAUTHORIZED);
    let missing = a.http.post(a.url("/api/v1/videos/999999/stream_url"));
    assert_eq!(missing.bearer_auth(&player).send().await?.status(), StatusCode::NOT_FOUND);

    // Keys in a query string are accepted nowhere, under any of the usual names.
    for name in ["api_key", "key", "access_token", "token"] {
        for path in [format!("/api/v1/videos/{id}/stream"), "/api/v1/works".to_owned()] {
            let query = format!("{path}?{name}={player}");
            let response = fetch(&a, &query, None).await?;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{query}");
        }
        let direct = a.stream_base.join(&format!("api/v1/videos/{id}/stream?{name}={player}"))?;
        let response = a.http.get(direct).send().await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "stream service ?{name}=");
    }

    // Revoking the key ends its URLs at once.
    let revoke = format!("/api/v1/admin/keys/{key_id}");
    let revoked = a.admin(reqwest::Method::DELETE, &revoke).send().await?;
    velour_tests::expect_json(revoked, StatusCode::OK).await?;
    assert_refused(fetch(&a, &url, None).await?, "key-revoked", "revoked").await;

    a.stop().await?;
    b.stop().await?;
    Ok(())
}
