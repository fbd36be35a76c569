//! One content, several sources: when the peer behind a video is down, its stream comes
//! from another location holding the same file.

use crate::H264_AAC;
use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode, header};
use velour_core::Permissions;
use velour_tests::{Instance, make_video};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_falls_over_to_another_peer_holding_the_same_file() -> anyhow::Result<()> {
    // The same file in two instances' folders.
    let first = tempfile::tempdir()?;
    let second = tempfile::tempdir()?;
    let name = "Harbour Lights (2001).mp4";
    make_video(&first.path().join(name), H264_AAC, 3)?;
    std::fs::copy(first.path().join(name), second.path().join(name))?;
    let original = std::fs::read(first.path().join(name))?;

    let a = Instance::start("A").await?;
    let b = Instance::start("B").await?;
    let c = Instance::start("C").await?;
    for (peer, folder) in [(&a, first.path()), (&b, second.path())] {
        let location = peer.add_local_location("Films", folder).await?;
        peer.scan(location).await?;
    }
    let reader = Permissions { can_read: true, can_stream: true, can_metadata: true };
    let via_a = c.add_peer_location("A", &a, &a.issue_key("C", reader).await?).await?;
    let via_b = c.add_peer_location("B", &b, &b.issue_key("C", reader).await?).await?;
    c.scan(via_a).await?;
    c.scan(via_b).await?;

    // One work, two sources.
    let works = c.all_works().await?;
    ensure!(works.len() == 1, "{works:?}");
    ensure!(works[0]["videos"].as_array().map(Vec::len) == Some(2), "{works:?}");
    let from_a: i64 = sqlx::query_scalar("SELECT id FROM videos WHERE storage_location_id = $1")
        .bind(via_a)
        .fetch_one(c.pool())
        .await?;
    let path = format!("/api/v1/videos/{from_a}/stream");
    let ranged = || c.admin(Method::GET, &path).header(header::RANGE, "bytes=100-1123");

    let served = ranged().send().await?;
    ensure!(served.status() == StatusCode::PARTIAL_CONTENT, "{}", served.status());
    ensure!(served.bytes().await? == original[100..1124]);

    // A goes away: the same request is answered from B, byte for byte.
    a.stop().await?;
    let served = ranged().send().await?;
    ensure!(served.status() == StatusCode::PARTIAL_CONTENT, "{}", served.status());
    let range = served.headers().get(header::CONTENT_RANGE).context("no Content-Range")?;
    ensure!(range == format!("bytes 100-1123/{}", original.len()).as_str(), "{range:?}");
    ensure!(served.bytes().await? == original[100..1124], "B's bytes are A's");

    // B goes too: now the failure is told, as before.
    b.stop().await?;
    let failed = c.admin(Method::GET, &path).send().await?;
    ensure!(failed.status() == StatusCode::BAD_GATEWAY, "{}", failed.status());
    c.stop().await?;
    Ok(())
}
