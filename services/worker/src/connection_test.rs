//! Testing a federation connection: reach the peer through the connection's location with
//! the key we hold, and record whether it answered, how fast, and with which version.

use crate::WorkerState;
use apalis::prelude::{BoxDynError, Data};
use secrecy::SecretString;
use std::time::{Duration, Instant};
use tracing::{info, instrument, warn};
use url::Url;
use velour_db::DbError;
use velour_db::connections::{self, TestOutcome};
use velour_db::locations::get_location_with_secrets;
use velour_jobs::TestConnection;
use velour_peer::PeerClient;

/// How often an idle test worker looks for jobs (and says it is alive): a test is asked
/// for by a person waiting on the answer.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// The apalis handler. A test's failure to reach the peer is its result, recorded on the
/// connection; only a failure to record it goes back to the queue.
#[instrument(skip_all, fields(connection.id = job.connection_id))]
pub(crate) async fn handle_test_job(
    job: TestConnection,
    state: Data<WorkerState>,
) -> Result<(), BoxDynError> {
    match test_connection(&state, job.connection_id).await {
        Ok(outcome) => {
            info!(reachable = outcome.reachable, latency_ms = outcome.latency_ms, "tested");
            Ok(())
        }
        Err(DbError::NotFound) => {
            info!("the connection was deleted before its test ran");
            Ok(())
        }
        Err(err) => {
            warn!(error = %err, "the test could not be recorded; it will be tried again");
            Err(err.into())
        }
    }
}

/// Tests one connection and records the outcome on it.
pub async fn test_connection(
    state: &WorkerState,
    connection_id: i64,
) -> Result<TestOutcome, DbError> {
    let connection = connections::get_connection(&state.pool, connection_id).await?;
    let outcome = match reach_peer(state, connection.storage_location_id).await {
        Ok(outcome) => outcome,
        Err(error) => TestOutcome { error: Some(error), ..TestOutcome::default() },
    };
    connections::record_test(&state.pool, connection_id, &outcome).await?;
    Ok(outcome)
}

/// Pings the peer and reads its instance; an `Err` holds a message for people.
async fn reach_peer(state: &WorkerState, location_id: Option<i64>) -> Result<TestOutcome, String> {
    if !state.federation.enabled {
        return Err("federation is turned off on this instance (FEDERATION_ENABLED)".to_owned());
    }
    let location_id = location_id.ok_or("the connection has no storage location")?;
    let location = match get_location_with_secrets(&state.pool, &state.secrets, location_id).await {
        Ok(location) => location,
        Err(DbError::NotFound) => return Err("the storage location no longer exists".to_owned()),
        Err(err) => return Err(format!("the catalog database failed: {err}")),
    };
    let url = location
        .location
        .config_str("remote_instance_url")
        .and_then(|raw| Url::parse(raw).ok())
        .ok_or("the location has no valid remote_instance_url")?;
    let key = location
        .secret_str("api_key")
        .filter(|k| !k.is_empty())
        .ok_or("the location has no api_key")?;
    let client =
        PeerClient::new(&url, SecretString::from(key), &state.peer).map_err(|e| e.to_string())?;

    let started = Instant::now();
    let pinged = client.ping().await;
    let latency_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    if let Err(err) = pinged {
        // A refused address was never contacted.
        let reachable = !matches!(
            err,
            velour_peer::PeerError::Timeout { .. }
                | velour_peer::PeerError::Unreachable { .. }
                | velour_peer::PeerError::InternalAddress(_)
        );
        // A peer that answered, even to refuse us, is reachable; the error says why the
        // connection does not work.
        let latency_ms = reachable.then_some(latency_ms);
        return Ok(TestOutcome {
            reachable,
            latency_ms,
            peer_version: None,
            error: Some(err.to_string()),
        });
    }
    match client.instance().await {
        Ok(instance) => Ok(TestOutcome {
            reachable: true,
            latency_ms: Some(latency_ms),
            peer_version: Some(instance.version.chars().take(100).collect()),
            error: None,
        }),
        Err(err) => Ok(TestOutcome {
            reachable: true,
            latency_ms: Some(latency_ms),
            peer_version: None,
            error: Some(err.to_string()),
        }),
    }
}
