//! Writing the audit log off the request path: requests hand their entry to a bounded
//! channel, and one task per gateway writes what it holds in batches.

use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sqlx::PgPool;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
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
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Starts the task that writes entries to `pool`. It ends once every sink is dropped
    /// and the channel is drained.
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(write_entries(pool, receiver));
        Self { sender, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Queues an entry without waiting.
    pub fn record(&self, entry: AuditEntry) {
        if self.sender.try_send(entry).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // TODO(#5): export the count of dropped audit entries as a metric.
            tracing::error!(dropped, "audit log queue full or closed; entry dropped");
        }
    }
}

async fn write_entries(pool: PgPool, mut receiver: mpsc::Receiver<AuditEntry>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(err) = velour_db::audit::insert_entries(&pool, &batch).await {
            // TODO(#5): retry a failed batch once the database is back instead of losing it.
            tracing::error!(error = %err, entries = batch.len(), "could not write audit entries");
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
