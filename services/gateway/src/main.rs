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
    let telemetry = velour_telemetry::init("velour-gateway")?;
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
    let outcome = velour_gateway::run(settings, shutdown).await;
    telemetry.shutdown();
    outcome
}
