//! `velour-gateway`: the API gateway on its own.

use clap::Parser;
use velour_core::settings::{
    DatabaseSettings, FederationSettings, GatewaySettings, PeerSettings, RedisSettings,
    SigningSettings, StreamAddrSettings,
};

/// Velour's API gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    db: DatabaseSettings,
    #[command(flatten)]
    redis: RedisSettings,
    #[command(flatten)]
    gateway: GatewaySettings,
    #[command(flatten)]
    stream: StreamAddrSettings,
    #[command(flatten)]
    signing: SigningSettings,
    #[command(flatten)]
    federation: FederationSettings,
    #[command(flatten)]
    peer: PeerSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let settings = velour_gateway::Settings {
        db: &cli.db,
        redis: &cli.redis,
        gateway: &cli.gateway,
        stream: &cli.stream,
        signing: &cli.signing,
        federation: &cli.federation,
        peer: &cli.peer,
    };
    velour_gateway::run(settings, shutdown).await
}
