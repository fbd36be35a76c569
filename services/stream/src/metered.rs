//! A response body that counts what it sent and says so in the log when it ends, whether
//! the client read it all or went away (players drop connections to seek).

use bytes::Bytes;
use futures_util::Stream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::Span;

pub(crate) struct MeteredStream {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
    video_id: i64,
    expected: Option<u64>,
    sent: u64,
    failed: bool,
    /// The request's span, entered again when the body ends long after the handler did.
    span: Span,
}

impl MeteredStream {
    /// `expected` is the body's length when known (the `Content-Length` sent).
    pub(crate) fn new(
        inner: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        video_id: i64,
        expected: Option<u64>,
    ) -> Self {
        let span = Span::current();
        Self { inner: Box::pin(inner), video_id, expected, sent: 0, failed: false, span }
    }
}

impl Stream for MeteredStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                self.sent = self.sent.saturating_add(chunk.len() as u64);
            }
            Poll::Ready(Some(Err(e))) => {
                self.failed = true;
                let _entered = self.span.enter();
                tracing::warn!(video.id = self.video_id, error = %e, "reading the video failed");
            }
            _ => {}
        }
        polled
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        let complete = !self.failed && self.expected.is_none_or(|n| n == self.sent);
        tracing::info!(
            video.id = self.video_id,
            bytes = self.sent,
            expected = self.expected,
            complete,
            "stream finished"
        );
    }
}
