//! `velour-stream`: serves video bytes until interrupted.

use clap::Parser;
use velour_stream::StreamCli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = StreamCli::parse();
    let telemetry = velour_telemetry::init("velour-stream")?;

    let StreamCli { database, addr, peer, signing, assets, federation } = &cli;
    let outcome =
        velour_stream::run(database, addr, peer, signing, assets, federation, shutdown_signal())
            .await;
    telemetry.shutdown();
    outcome
}

/// Resolves on Ctrl-C, or on SIGTERM (how containers are stopped).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
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
    tracing::info!("shutting down");
}
