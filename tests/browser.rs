//! Playback in a real browser: Debian's headless Chromium, driven through chromedriver
//! (WebDriver), plays videos from signed URLs, a local one and one proxied from a peer.

use crate::{VP9_OPUS, find_video};
use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use velour_core::Permissions;
use velour_tests::{Instance, make_video};

/// VP9 and Opus in WebM: the codecs Debian's Chromium decodes without proprietary parts.
const NAME: &str = "Browser Test (2022).webm";
const SECONDS: u32 = 6;

/// Flags for a headless Chromium in a sandboxed CI machine: no GPU, no network of its
/// own beyond what the page asks, a profile of its own.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
];

/// Plays `arguments[0]` muted, waits for playback to pass half a second, seeks to the
/// middle and waits for it to play on from there. Answers what it saw.
const PLAY_AND_SEEK: &str = r#"
const [src, done] = [arguments[0], arguments[arguments.length - 1]];
const video = document.createElement('video');
video.muted = true;
document.body.appendChild(video);
const fail = (why) => done({
  ok: false, why, time: video.currentTime, error: video.error && video.error.message,
});
const timer = setTimeout(() => fail('timed out'), 25000);
video.addEventListener('error', () => fail('media error'));
const playedPast = (t) => new Promise((resolve) => {
  const check = () => {
    if (video.currentTime > t) {
      video.removeEventListener('timeupdate', check);
      resolve();
    }
  };
  video.addEventListener('timeupdate', check);
  check();
});
video.src = src;
video.play().then(async () => {
  await playedPast(0.5);
  const early = video.currentTime;
  const middle = video.duration / 2;
  const seeked = new Promise((resolve) => {
    video.addEventListener('seeked', resolve, { once: true });
  });
  video.currentTime = middle;
  await seeked;
  await playedPast(middle + 0.5);
  clearTimeout(timer);
  done({ ok: true, early, middle, after: video.currentTime, duration: video.duration });
}).catch((e) => fail('play() refused: ' + e));
"#;

/// A chromedriver process on a free loopback port, killed when dropped.
struct ChromeDriver {
    url: String,
    _process: tokio::process::Child,
}

impl ChromeDriver {
    async fn start() -> anyhow::Result<Self> {
        // chromedriver picks no port of its own: take a free one from the kernel.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let process = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("could not run chromedriver (scripts/setup installs chromium-driver)")?;
        let url = format!("http://127.0.0.1:{port}");
        let driver = Self { url, _process: process };

        // A readiness check on chromedriver's status endpoint, not a fixed sleep.
        let http = reqwest::Client::new();
        for _ in 0..200 {
            let status = http.get(format!("{}/status", driver.url)).send().await;
            if let Ok(response) = status {
                let body: Value = response.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    return Ok(driver);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("chromedriver did not become ready at {}", driver.url)
    }

    async fn browser(&self, profile: &std::path::Path) -> anyhow::Result<fantoccini::Client> {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .context("chromedriver could not start Chromium")?;
        Ok(client)
    }
}

/// Asks `instance` for a signed URL of `video_id` and has the browser play it.
async fn play(
    browser: &fantoccini::Client,
    instance: &Instance,
    video_id: i64,
) -> anyhow::Result<Value> {
    let path = format!("/api/v1/videos/{video_id}/stream_url");
    let signed = instance.post_json(&path, &Value::Null, reqwest::StatusCode::OK).await?;
    let url = instance.url(signed["url"].as_str().context("no url")?);
    // A page of the instance's own origin, as a web player would be.
    browser.goto(instance.url("/healthz").as_str()).await?;
    let outcome = browser.execute_async(PLAY_AND_SEEK, vec![json!(url.as_str())]).await?;
    Ok(outcome)
}

fn check_playback(label: &str, outcome: &Value) -> anyhow::Result<()> {
    ensure!(outcome["ok"] == true, "{label}: {outcome}");
    let number = |name: &str| outcome[name].as_f64().unwrap_or(f64::NAN);
    let (duration, middle, after) = (number("duration"), number("middle"), number("after"));
    ensure!((duration - f64::from(SECONDS)).abs() < 0.5, "{label}: duration {outcome}");
    ensure!(number("early") > 0.5, "{label}: playback did not advance: {outcome}");
    ensure!(after > middle + 0.5, "{label}: no playback after the seek: {outcome}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_plays_and_seeks_local_and_peer_videos_from_signed_urls() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join(NAME), VP9_OPUS, SECONDS)?;
    let a = Instance::start("browser A").await?;
    let b = Instance::start("browser B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let perms = Permissions { can_read: true, can_stream: true, can_metadata: false };
    let peer = b.add_peer_location("A", &a, &a.issue_key("B", perms).await?).await?;
    b.scan(peer).await?;
    let local_id = find_video(&a.all_works().await?, NAME)?["id"].as_i64().context("id")?;
    let remote_id = find_video(&b.all_works().await?, NAME)?["id"].as_i64().context("id")?;

    let driver = ChromeDriver::start().await?;
    let profile = tempfile::tempdir()?;
    let browser = driver.browser(profile.path()).await?;
    let local = play(&browser, &a, local_id).await;
    let proxied = play(&browser, &b, remote_id).await;
    // Whatever happened, close the browser before judging.
    let closed = browser.close().await;
    a.stop().await?;
    b.stop().await?;
    closed?;

    check_playback("local", &local?)?;
    check_playback("peer", &proxied?)?;
    Ok(())
}
