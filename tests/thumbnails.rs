//! Thumbnails: made by the worker after a scan, served with validators by the instance,
//! and through a peer as if they were its own.

use crate::H264_AAC;
use anyhow::{Context, ensure};
use reqwest::{StatusCode, header};
use std::time::Duration;
use velour_core::Permissions;
use velour_tests::{Instance, expect_json, make_video};

/// Polls the thumbnail until the worker has made it; a readiness check, not a sleep.
async fn wait_for_thumbnail(instance: &Instance, key: &str, video: i64) -> anyhow::Result<()> {
    let url = instance.url(&format!("/api/v1/videos/{video}/thumbnail"));
    for _ in 0..600 {
        let response = instance.http.get(url.clone()).bearer_auth(key).send().await?;
        match response.status() {
            StatusCode::OK => return Ok(()),
            StatusCode::NOT_FOUND => tokio::time::sleep(Duration::from_millis(100)).await,
            other => anyhow::bail!("thumbnail of {video}: {other}"),
        }
    }
    anyhow::bail!("no thumbnail for video {video} within a minute")
}

fn only_video(works: &[serde_json::Value]) -> anyhow::Result<i64> {
    ensure!(works.len() == 1, "one work expected, found {}", works.len());
    works[0]["videos"][0]["id"].as_i64().context("no video id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thumbnails_are_served_with_validators_here_and_through_a_peer() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Lighthouse (1987).mp4"), H264_AAC, 4)?;
    let a = Instance::start("A").await?;
    let b = Instance::start("B").await?;
    let viewer = Permissions { can_read: true, can_stream: true, can_metadata: false };
    let a_key = a.issue_key("viewer", viewer).await?;
    let browse_only = Permissions { can_read: true, can_stream: false, can_metadata: false };
    let a_browse_key = a.issue_key("browse only", browse_only).await?;

    let folder = a.add_local_location("Films", library.path()).await?;
    a.scan(folder).await?;
    let a_video = only_video(&a.all_works().await?)?;
    wait_for_thumbnail(&a, &a_key, a_video).await?;

    let url = a.url(&format!("/api/v1/videos/{a_video}/thumbnail"));
    let response = a.http.get(url.clone()).bearer_auth(&a_key).send().await?;
    ensure!(response.status() == StatusCode::OK);
    let headers = response.headers().clone();
    let jpeg = response.bytes().await?;
    ensure!(headers[header::CONTENT_TYPE] == "image/jpeg", "{headers:?}");
    ensure!(headers[header::CONTENT_LENGTH] == jpeg.len().to_string().as_str());
    let etag = headers.get(header::ETAG).context("no ETag")?.to_str()?.to_owned();
    ensure!(etag.starts_with('"') && !etag.starts_with("W/"), "a strong tag: {etag}");
    ensure!(
        headers.contains_key(header::LAST_MODIFIED) && headers.contains_key(header::CACHE_CONTROL)
    );
    let image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)?;
    // make_video draws 320x240; thumbnails keep narrow videos' own size.
    ensure!((image.width(), image.height()) == (320, 240), "{}x{}", image.width(), image.height());

    // Revalidation and HEAD.
    let revalidated = a
        .http
        .get(url.clone())
        .bearer_auth(&a_key)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await?;
    ensure!(revalidated.status() == StatusCode::NOT_MODIFIED, "{}", revalidated.status());
    ensure!(revalidated.headers()[header::ETAG] == etag.as_str());
    ensure!(revalidated.bytes().await?.is_empty());
    let head = a.http.head(url.clone()).bearer_auth(&a_key).send().await?;
    ensure!(head.status() == StatusCode::OK);
    ensure!(head.headers()[header::CONTENT_LENGTH] == jpeg.len().to_string().as_str());
    ensure!(head.headers()[header::ETAG] == etag.as_str());
    // As the seed has it, thumbnails need the stream permission.
    let refused = a.http.get(url.clone()).bearer_auth(&a_browse_key).send().await?;
    expect_json(refused, StatusCode::FORBIDDEN).await?;

    // Through B, which reads A with a key A issued.
    let peer_key = a.issue_key("instance B", viewer).await?;
    let peer = b.add_peer_location("A", &a, &peer_key).await?;
    b.scan(peer).await?;
    let b_video = only_video(&b.all_works().await?)?;
    let b_url = b.url(&format!("/api/v1/videos/{b_video}/thumbnail"));
    let b_key = b.issue_key("viewer", viewer).await?;
    let through = b.http.get(b_url.clone()).bearer_auth(&b_key).send().await?;
    ensure!(through.status() == StatusCode::OK, "{}", through.status());
    ensure!(through.headers()[header::CONTENT_TYPE] == "image/jpeg");
    ensure!(through.headers()[header::ETAG] == etag.as_str(), "A's validator passes through");
    ensure!(through.bytes().await? == jpeg, "B serves A's image byte for byte");
    let revalidated = b
        .http
        .get(b_url.clone())
        .bearer_auth(&b_key)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await?;
    ensure!(revalidated.status() == StatusCode::NOT_MODIFIED, "{}", revalidated.status());

    // B made no thumbnail of its own for a peer's video: it has no asset rows at all.
    let b_assets: i64 =
        sqlx::query_scalar("SELECT count(*) FROM video_assets").fetch_one(b.pool()).await?;
    ensure!(b_assets == 0, "B stored {b_assets} assets");

    // Without a thumbnail, both answer the JSON 404, never an empty image.
    sqlx::query("DELETE FROM video_assets").execute(a.pool()).await?;
    let missing = a.http.get(url).bearer_auth(&a_key).send().await?;
    let body = expect_json(missing, StatusCode::NOT_FOUND).await?;
    ensure!(body["code"] == "thumbnail-not-found", "{body}");
    let missing = b.http.get(b_url).bearer_auth(&b_key).send().await?;
    let body = expect_json(missing, StatusCode::NOT_FOUND).await?;
    ensure!(body["code"] == "thumbnail-not-found", "{body}");

    a.stop().await?;
    b.stop().await?;
    Ok(())
}
