//! `velour`: the one binary operators run. Each service alone (`gateway`, `worker`,
//! `stream`) for scaled deployments, all three in one process (`up`), plus the chores that
//! go with them (`migrate`, `key create`).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;
use std::io::Write;
use tokio_util::sync::CancellationToken;
use velour_core::Permissions;
use velour_core::settings::{
    AssetSettings, DatabaseSettings, FederationSettings, GatewaySettings, PeerSettings,
    RedisSettings, SigningSettings, StreamAddrSettings, WorkerSettings,
};
use velour_db::keys::KeyOwner;

/// Velour: a self-hosted video library that federates with trusted peers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API gateway.
    Gateway {
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
    },
    /// Run a worker that takes scan jobs from Redis.
    Worker {
        #[command(flatten)]
        db: DatabaseSettings,
        #[command(flatten)]
        redis: RedisSettings,
        #[command(flatten)]
        worker: WorkerSettings,
        #[command(flatten)]
        peer: PeerSettings,
        #[command(flatten)]
        assets: AssetSettings,
        #[command(flatten)]
        federation: FederationSettings,
    },
    /// Run the stream service.
    Stream {
        #[command(flatten)]
        db: DatabaseSettings,
        #[command(flatten)]
        stream: StreamAddrSettings,
        #[command(flatten)]
        peer: PeerSettings,
        #[command(flatten)]
        signing: SigningSettings,
        #[command(flatten)]
        assets: AssetSettings,
        #[command(flatten)]
        federation: FederationSettings,
    },
    /// Run the gateway, a worker and the stream service in one process.
    Up(Box<UpArgs>),
    /// Create the database if needed and apply migrations, then exit.
    Migrate {
        #[command(flatten)]
        db: DatabaseSettings,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage the secrets the catalog keeps sealed (keys for peers, S3 secret keys).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Seal every location's secrets again with VELOUR_SECRETS_KEY, opening them with it
    /// or with VELOUR_SECRETS_KEY_PREVIOUS. All or nothing; running it twice is harmless.
    Rekey {
        #[command(flatten)]
        db: DatabaseSettings,
        /// Also delete the key the catalog kept for itself (only with VELOUR_SECRETS_KEY
        /// set): a dump of the database then holds no key to its secrets. Every service
        /// must already run with VELOUR_SECRETS_KEY.
        #[arg(long)]
        drop_catalog_key: bool,
    },
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    db: DatabaseSettings,
    #[command(flatten)]
    redis: RedisSettings,
    #[command(flatten)]
    gateway: GatewaySettings,
    #[command(flatten)]
    stream: StreamAddrSettings,
    #[command(flatten)]
    worker: WorkerSettings,
    #[command(flatten)]
    peer: PeerSettings,
    #[command(flatten)]
    signing: SigningSettings,
    #[command(flatten)]
    assets: AssetSettings,
    #[command(flatten)]
    federation: FederationSettings,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Issue a key and print it, alone, on standard output. It is shown this once.
    Create {
        #[command(flatten)]
        db: DatabaseSettings,
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// The key may use the admin API.
        #[arg(long)]
        admin: bool,
        /// The key may read the catalog.
        #[arg(long)]
        can_read: bool,
        /// The key may stream videos.
        #[arg(long)]
        can_stream: bool,
        /// The key may see fingerprints and technical metadata.
        #[arg(long)]
        can_metadata: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to standard error, so that `key create` prints nothing but the key.
    let telemetry = velour_telemetry::init(cli.command.service_name())?;

    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            stop_signal().await;
            tracing::info!("shutting down");
            stop.cancel();
        }
    });

    let outcome = run(cli.command, stop).await;
    telemetry.shutdown();
    outcome
}

impl Command {
    /// The name this process's spans carry (unless `OTEL_SERVICE_NAME` is set).
    fn service_name(&self) -> &'static str {
        match self {
            Self::Gateway { .. } => "velour-gateway",
            Self::Worker { .. } => "velour-worker",
            Self::Stream { .. } => "velour-stream",
            Self::Up(_) => "velour",
            Self::Migrate { .. } | Self::Key { .. } | Self::Secrets { .. } => "velour-admin",
        }
    }
}

async fn run(command: Command, stop: CancellationToken) -> anyhow::Result<()> {
    match command {
        Command::Gateway { db, redis, gateway, stream, signing, federation, peer } => {
            let stop = stop.cancelled_owned();
            let settings = velour_gateway::Settings {
                db: &db,
                redis: &redis,
                gateway: &gateway,
                stream: &stream,
                signing: &signing,
                federation: &federation,
                peer: &peer,
            };
            velour_gateway::run(settings, stop).await
        }
        Command::Worker { db, redis, worker, peer, federation, assets } => {
            let stop = stop.cancelled_owned();
            velour_worker::run_from_settings(
                &db,
                &redis,
                &worker,
                &peer,
                &federation,
                &assets,
                stop,
            )
            .await
        }
        Command::Stream { db, stream, peer, signing, assets, federation } => {
            let stop = stop.cancelled_owned();
            velour_stream::run(&db, &stream, &peer, &signing, &assets, &federation, stop).await
        }
        Command::Up(args) => up(*args, stop).await,
        Command::Migrate { db } => {
            velour_db::connect_and_migrate(&db)
                .await
                .context("DATABASE_URL: could not open and migrate the catalog")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Key { command } => match command {
            KeyCommand::Create { db, name, admin, can_read, can_stream, can_metadata } => {
                let permissions = Permissions { can_read, can_stream, can_metadata };
                create_key(&db, &name, admin, permissions).await
            }
        },
        Command::Secrets { command } => match command {
            SecretsCommand::Rekey { db, drop_catalog_key } => rekey(&db, drop_catalog_key).await,
        },
    }
}

/// All three services in one process; when one stops, the others are told to stop too.
async fn up(args: UpArgs, stop: CancellationToken) -> anyhow::Result<()> {
    // Migrate once, before the services race to do it.
    velour_db::connect_and_migrate(&args.db)
        .await
        .context("DATABASE_URL: could not open and migrate the catalog")?;

    let settings = velour_gateway::Settings {
        db: &args.db,
        redis: &args.redis,
        gateway: &args.gateway,
        stream: &args.stream,
        signing: &args.signing,
        federation: &args.federation,
        peer: &args.peer,
    };
    let gateway = velour_gateway::run(settings, stop.clone().cancelled_owned());
    let stream = velour_stream::run(
        &args.db,
        &args.stream,
        &args.peer,
        &args.signing,
        &args.assets,
        &args.federation,
        stop.clone().cancelled_owned(),
    );
    let worker = velour_worker::run_from_settings(
        &args.db,
        &args.redis,
        &args.worker,
        &args.peer,
        &args.federation,
        &args.assets,
        stop.clone().cancelled_owned(),
    );
    let guard = stop.clone().drop_guard();
    let (g, s, w) = tokio::join!(
        stop_all_on_exit(gateway, &stop),
        stop_all_on_exit(stream, &stop),
        stop_all_on_exit(worker, &stop)
    );
    drop(guard);
    g.context("gateway")?;
    s.context("stream service")?;
    w.context("worker")?;
    Ok(())
}

async fn stop_all_on_exit(
    service: impl std::future::Future<Output = anyhow::Result<()>>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let result = service.await;
    stop.cancel();
    result
}

async fn create_key(
    db: &DatabaseSettings,
    name: &str,
    admin: bool,
    permissions: Permissions,
) -> anyhow::Result<()> {
    let name = name.trim();
    anyhow::ensure!(!name.is_empty(), "--name must not be blank");
    anyhow::ensure!(name.chars().count() <= 200, "--name must be at most 200 characters");
    anyhow::ensure!(!name.chars().any(char::is_control), "--name must not hold control characters");
    let pool = velour_db::connect_and_migrate(db).await.context("DATABASE_URL")?;
    let owner = if admin { KeyOwner::Admin } else { KeyOwner::Member };
    let (row, key) = velour_db::keys::create_api_key(&pool, owner, name, permissions).await?;
    tracing::info!(api_key.id = row.id, api_key.prefix = %row.key_prefix, admin, "key created");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", key.expose_secret())?;
    out.flush()?;
    Ok(())
}

async fn rekey(db: &DatabaseSettings, drop_catalog_key: bool) -> anyhow::Result<()> {
    let pool = velour_db::connect_and_migrate(db).await.context("DATABASE_URL")?;
    let cipher = velour_db::secrets::SecretsCipher::new(&db.secrets);
    let done = velour_db::secrets::reseal_location_secrets(&pool, &cipher, drop_catalog_key)
        .await
        .context("nothing was changed")?;
    tracing::info!(
        locations = done.locations,
        dropped_catalog_key = done.dropped_catalog_key,
        "every location's secrets are sealed with the current key"
    );
    Ok(())
}

/// Ctrl-C, or SIGTERM (what `docker stop` and Kubernetes send): either starts a graceful
/// shutdown. Should SIGTERM's handler be refused, Ctrl-C still works.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
            Err(err) => tracing::warn!(error = %err, "cannot listen for SIGTERM"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
