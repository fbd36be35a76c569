//! Scan benchmark: a folder of generated videos scanned twice, first from nothing and then
//! unchanged, on the real Postgres and ffprobe. Prints files per second for each scan and
//! their ratio. Run it with `bench/scan.sh [FILES]` (default 2,000).

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
    let new = NewLocation {
        name: "bench",
        storage_type: StorageType::Local,
        configuration: json!({ "path": root }),
        secrets: json!({}),
        rescan_interval_secs: None,
    };
    let location = create_location(pool, &SecretsCipher::default(), new).await?.id;
    // Scans run directly, not through the queue, so no thumbnail is made into this store.
    let assets = AssetStore::Directory(std::env::temp_dir().join("velour-scan-bench-assets"));
    let state = WorkerState::new(
        pool.clone(),
        WorkerSettings::default(),
        PeerSettings::for_loopback_peers(),
        assets,
    );

    let mut rates = Vec::new();
    for label in ["first scan", "unchanged rescan"] {
        let (run, _) = enqueue_scan_run(pool, location).await?;
        let job = ScanLocation { scan_run_id: run.id, storage_location_id: location };
        let started = Instant::now();
        let counts = scan_location(&state, job).await?;
        let seconds = started.elapsed().as_secs_f64();
        ensure!(counts.videos_seen == files as i32, "{label} saw {counts:?}");
        let rate = f64::from(files) / seconds;
        println!("{label}: {files} files in {seconds:.2} s, {rate:.1} files/s");
        rates.push(rate);
    }
    println!("rescan speed-up: {:.1}x (target: at least 50x)", rates[1] / rates[0]);
    Ok(())
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
