//! `velour-worker`: runs scans queued by the gateway until interrupted.

use clap::Parser;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "velour-worker", version, about = "Velour's scan worker")]
struct Cli {
    #[command(flatten)]
    args: velour_worker::WorkerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = velour_telemetry::init("velour-worker")?;
    info!(version = velour_core::VERSION, "velour-worker starting");
    let outcome = velour_worker::run_from_args(&cli.args, shutdown_signal()).await;
    telemetry.shutdown();
    outcome
}

/// Resolves on Ctrl-C, or on SIGTERM (what service managers and containers send).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(err) => {
                error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    info!("shutting down; letting running scans finish");
}
