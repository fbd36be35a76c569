//! Writing the audit log off the request path: requests hand their entry to a bounded
//! channel, and one task per gateway writes what it holds in batches.

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sqlx::PgPool;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use velour_db::DbError;
use velour_db::audit::AuditEntry;

/// Entries waiting to be written. A full channel means the database is far behind: entries
/// are then dropped and counted rather than held without bound or made to slow requests.
const CHANNEL_CAPACITY: usize = 10_000;

/// Entries written per statement.
const BATCH: usize = 500;

/// Where requests leave their audit entries. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    sender: mpsc::Sender<AuditEntry>,
    dropped: Dropped,
}

/// Entries lost: counted here, and exported as the OpenTelemetry counter
/// `velour.audit.dropped` with a `reason` (`queue_full`, `database`).
#[derive(Clone)]
struct Dropped {
    total: Arc<AtomicU64>,
    exported: opentelemetry::metrics::Counter<u64>,
}

impl Dropped {
    fn new() -> Self {
        let exported = opentelemetry::global::meter("velour")
            .u64_counter("velour.audit.dropped")
            .with_description("Audit entries lost: the queue was full or the database refused them")
            .with_unit("{entry}")
            .build();
        Self { total: Arc::default(), exported }
    }

    /// Counts `lost` entries; returns the total so far.
    fn add(&self, lost: u64, reason: &'static str) -> u64 {
        self.exported.add(lost, &[opentelemetry::KeyValue::new("reason", reason)]);
        self.total.fetch_add(lost, Ordering::Relaxed) + lost
    }
}

impl AuditSink {
    /// Starts the task that writes entries to `pool`. It ends once every sink is dropped
    /// and the channel is drained.
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let dropped = Dropped::new();
        tokio::spawn(write_entries(pool, receiver, dropped.clone()));
        Self { sender, dropped }
    }

    /// Entries dropped so far: refused by a full queue, or lost with a batch the database
    /// did not take.
    pub fn dropped(&self) -> u64 {
        self.dropped.total.load(Ordering::Relaxed)
    }

    /// Queues an entry without waiting.
    pub fn record(&self, entry: AuditEntry) {
        if self.sender.try_send(entry).is_err() {
            let dropped = self.dropped.add(1, "queue_full");
            tracing::error!(dropped, "audit log queue full or closed; entry dropped");
        }
    }
}

/// Retries of a batch the database did not take: 0.1 s doubling to 5 s, twelve in all
/// (about 40 s), so that a database restart or failover loses nothing, while a lasting
/// outage drops entries (counted) rather than holding them without bound.
fn retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(12)
}

/// Whether writing the batch again may succeed: not when its rows themselves were refused
/// (a constraint or a value Postgres rejected), which no wait will change.
fn may_pass_later(err: &DbError) -> bool {
    match err {
        DbError::Sqlx(sqlx::Error::Database(db)) => {
            let class = db.code().map(|code| code.chars().take(2).collect::<String>());
            !matches!(class.as_deref(), Some("22" | "23"))
        }
        _ => true,
    }
}

async fn write_entries(pool: PgPool, mut receiver: mpsc::Receiver<AuditEntry>, dropped: Dropped) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let written = (|| velour_db::audit::insert_entries(&pool, &batch))
            .retry(retries())
            .when(may_pass_later)
            .notify(|err, wait| {
                tracing::warn!(error = %err, entries = batch.len(), retry_in = ?wait,
                    "could not write audit entries; trying again");
            })
            .await;
        if let Err(err) = written {
            let lost = u64::try_from(batch.len()).unwrap_or(u64::MAX);
            let dropped = dropped.add(lost, "database");
            tracing::error!(error = %err, entries = batch.len(), dropped,
                "audit entries lost: the database did not take them");
        }
        batch.clear();
    }
}

/// A response body that counts the bytes taken from it and records its audit entry when
/// it ends, whether sent in full or dropped because the client went away.
pub struct CountedBody {
    inner: BoxStream<'static, std::io::Result<Bytes>>,
    entry: Option<AuditEntry>,
    sink: AuditSink,
}

impl CountedBody {
    pub fn new(body: poem::Body, entry: AuditEntry, sink: AuditSink) -> Self {
        Self { inner: body.into_bytes_stream().boxed(), entry: Some(entry), sink }
    }
}

impl Stream for CountedBody {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled
            && let Some(entry) = self.entry.as_mut()
        {
            entry.bytes_sent += chunk.len() as u64;
        }
        polled
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.sink.record(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    #[tokio::test]
    async fn lost_entries_are_counted_and_exported_as_a_metric() {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone()).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        opentelemetry::global::set_meter_provider(provider.clone());

        // A database that never answers: the writer holds its first batch in retries, and
        // the queue behind it fills.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://127.0.0.1:1/nowhere")
            .unwrap();
        let sink = AuditSink::start(pool);
        let entry = || AuditEntry {
            api_key_id: 1,
            action: "catalog.list_works",
            target: None,
            status: 200,
            bytes_sent: 0,
            occurred_at: chrono::Utc::now(),
        };
        let sent = CHANNEL_CAPACITY + 2 * BATCH;
        for _ in 0..sent {
            sink.record(entry());
        }
        let dropped = sink.dropped();
        assert!(dropped >= BATCH as u64 && dropped <= sent as u64, "{dropped} dropped");

        provider.force_flush().unwrap();
        let exported: u64 = exporter
            .get_finished_metrics()
            .unwrap()
            .iter()
            .flat_map(|resource| resource.scope_metrics())
            .flat_map(|scope| scope.metrics())
            .filter(|metric| metric.name() == "velour.audit.dropped")
            .filter_map(|metric| match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => Some(
                    sum.data_points()
                        .filter(|point| {
                            point.attributes().any(|kv| kv.value.as_str() == "queue_full")
                        })
                        .map(|point| point.value())
                        .sum::<u64>(),
                ),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        assert_eq!(exported, dropped);
    }
}
