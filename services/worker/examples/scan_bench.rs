//! Scan benchmark: a folder of generated videos scanned from nothing reading one file at a
//! time and then `VELOUR_PROBE_CONCURRENCY` (default 4) at a time, then unchanged, on the
//! real Postgres and ffprobe. Prints files per second for each scan and the ratios. Run it
//! with `bench/scan.sh [FILES]` (default 2,000).

use anyhow::{Context, ensure};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use url::Url;
use velour_core::StorageType;
use velour_core::settings::{DatabaseSettings, PeerSettings, WorkerSettings};
use velour_db::locations::{NewLocation, create_location};
use velour_db::scans::enqueue_scan_run;
use velour_db::secrets::SecretsCipher;
use velour_jobs::ScanLocation;
use velour_storage::AssetStore;
use velour_worker::{WorkerState, scan_location};

/// Distinct clips made by ffmpeg; the library holds copies of them under different names
/// (ffprobe's work per file is the same whether or not two files share their bytes).
const CLIPS: u32 = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let files: u32 = match std::env::args().nth(1) {
        Some(n) => n.parse().context("the argument is a number of files")?,
        None => 2_000,
    };
    let library = tempfile::tempdir()?;
    make_library(library.path(), files)?;

    let server = std::env::var("VELOUR_BENCH_POSTGRES").unwrap_or("postgres://127.0.0.1".into());
    let name = format!("velour_bench_{}", std::process::id());
    let url = Url::parse(&format!("{server}/{name}"))?;
    let pool = velour_db::connect_and_migrate(&DatabaseSettings::new(url)).await?;
    let outcome = run(&pool, library.path(), files).await;

    pool.close().await;
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres")).await?;
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await?;
    outcome
}

async fn run(pool: &sqlx::PgPool, root: &Path, files: u32) -> anyhow::Result<()> {
    let concurrency = match std::env::var("VELOUR_PROBE_CONCURRENCY") {
        Ok(n) => n.parse().context("VELOUR_PROBE_CONCURRENCY is a number")?,
        Err(_) => WorkerSettings::default().probe_concurrency,
    };
    // Scans run directly, not through the queue, so no thumbnail is made into this store.
    let assets = AssetStore::Directory(std::env::temp_dir().join("velour-scan-bench-assets"));
    let state = |probe_concurrency| {
        let worker = WorkerSettings { probe_concurrency, ..WorkerSettings::default() };
        WorkerState::new(pool.clone(), worker, PeerSettings::for_loopback_peers(), assets.clone())
    };

    // The first scan, reading one file at a time, into a location of its own; then the
    // same folder as another location, reading `concurrency` at a time, and rescanned.
    let one_at_a_time = add_location(pool, root, "one at a time").await?;
    let serial =
        scan((pool, &state(1)), one_at_a_time, files, "first scan, 1 file at a time").await?;
    let location = add_location(pool, root, "bench").await?;
    let label = format!("first scan, {concurrency} files at a time");
    let reading = state(concurrency);
    let first = scan((pool, &reading), location, files, &label).await?;
    let rescan = scan((pool, &reading), location, files, "unchanged rescan").await?;
    println!("reading {concurrency} files at a time: {:.2}x one at a time", first / serial);
    println!("rescan speed-up: {:.1}x (target: at least 50x)", rescan / first);
    Ok(())
}

async fn add_location(pool: &sqlx::PgPool, root: &Path, name: &str) -> anyhow::Result<i64> {
    let new = NewLocation {
        name,
        storage_type: StorageType::Local,
        configuration: json!({ "path": root }),
        secrets: json!({}),
        rescan_interval_secs: None,
    };
    Ok(create_location(pool, &SecretsCipher::default(), new).await?.id)
}

/// Scans the location and prints and returns files per second.
async fn scan(
    (pool, state): (&sqlx::PgPool, &WorkerState),
    location: i64,
    files: u32,
    label: &str,
) -> anyhow::Result<f64> {
    let (run, _) = enqueue_scan_run(pool, location).await?;
    let job = ScanLocation::new(run.id, location);
    let started = Instant::now();
    let counts = scan_location(state, job).await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(counts.videos_seen == files as i32, "{label} saw {counts:?}");
    let rate = f64::from(files) / seconds;
    println!("{label}: {files} files in {seconds:.2} s, {rate:.1} files/s");
    Ok(rate)
}

fn make_library(root: &Path, files: u32) -> anyhow::Result<()> {
    for clip in 0..CLIPS {
        let source = format!("testsrc=duration=1:size=160x120:rate=10,hue=h={}", clip * 90);
        let out = root.join(format!("clip{clip}.bin"));
        let status = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &source])
            .args(["-c:v", "libx264", "-f", "mp4"])
            .arg(&out)
            .status()
            .context("ffmpeg must be installed")?;
        ensure!(status.success(), "ffmpeg failed");
    }
    for i in 0..files {
        let folder = root.join(format!("Film {i:04} ({})", 1950 + i % 70));
        std::fs::create_dir_all(&folder)?;
        let clip = root.join(format!("clip{}.bin", i % CLIPS));
        std::fs::copy(clip, folder.join(format!("film-{i:04}.mp4")))?;
    }
    println!("generated {files} videos in {}", root.display());
    Ok(())
}
