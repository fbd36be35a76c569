//! `multipart/byteranges` (RFC 9110 §14.6): several parts of one representation in one
//! answer, each with its own `Content-Range`. The body is built as a stream of the parts'
//! bytes as the backend reads them, and its exact length is known before the first byte.

use crate::range::ResolvedRange;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use std::future::Future;
use std::io;

/// The parts of one multipart answer and the framing around them.
#[derive(Clone, Debug)]
pub struct Multipart {
    boundary: String,
    content_type: String,
    size: u64,
    parts: Vec<ResolvedRange>,
}

impl Multipart {
    /// `content_type` is the representation's own; `size` its length, for each part's
    /// `Content-Range`. The boundary is random, so no video can contain it by design.
    pub fn new(parts: Vec<ResolvedRange>, content_type: &str, size: u64) -> Self {
        let boundary = format!("velour-{:032x}", rand::random::<u128>());
        Self { boundary, content_type: content_type.to_owned(), size, parts }
    }

    /// The answer's `Content-Type`, naming the boundary.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }

    /// The body's exact length: the parts' bytes and their framing.
    pub fn content_length(&self) -> u64 {
        let framing: u64 = self.parts.iter().map(|p| self.part_head(*p).len() as u64).sum();
        let bytes: u64 = self.parts.iter().map(|p| p.len()).sum();
        framing.saturating_add(bytes).saturating_add(self.closing().len() as u64)
    }

    /// Each part opens with a delimiter (preceded by CRLF, RFC 2046 §5.1.1) and its
    /// headers.
    fn part_head(&self, part: ResolvedRange) -> String {
        format!(
            "\r\n--{}\r\nContent-Type: {}\r\nContent-Range: {}\r\n\r\n",
            self.boundary,
            self.content_type,
            part.content_range(self.size)
        )
    }

    fn closing(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }

    /// The body: for each part its head, then the bytes `open` streams for its range,
    /// opened only when the previous part is sent, so one part is read at a time.
    pub fn into_stream<F, Fut, S>(self, mut open: F) -> impl Stream<Item = io::Result<Bytes>>
    where
        F: FnMut(ResolvedRange) -> Fut,
        Fut: Future<Output = io::Result<S>>,
        S: Stream<Item = io::Result<Bytes>>,
    {
        let closing = Bytes::from(self.closing());
        let heads: Vec<(Bytes, ResolvedRange)> =
            self.parts.iter().map(|p| (Bytes::from(self.part_head(*p)), *p)).collect();
        stream::iter(heads)
            .then(move |(head, part)| {
                let opened = open(part);
                async move {
                    match opened.await {
                        Ok(bytes) => stream::once(async { Ok(head) }).chain(bytes).left_stream(),
                        Err(e) => stream::once(async { Err(e) }).right_stream(),
                    }
                }
            })
            .flatten()
            .chain(stream::once(async { Ok(closing) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    #[tokio::test]
    async fn the_body_frames_each_part_and_has_the_announced_length() {
        let content: Vec<u8> = (0..100u8).collect();
        let parts = vec![ResolvedRange { start: 50, end: 52 }, ResolvedRange { start: 0, end: 1 }];
        let multipart = Multipart::new(parts, "video/webm", 100);
        let content_type = multipart.content_type();
        let boundary = content_type.strip_prefix("multipart/byteranges; boundary=").unwrap();
        let boundary = boundary.to_owned();
        let length = multipart.content_length();

        let source = content.clone();
        let body: Vec<Bytes> = multipart
            .into_stream(|part| {
                let bytes =
                    Bytes::copy_from_slice(&source[part.start as usize..=part.end as usize]);
                async move { Ok(stream::once(async move { Ok(bytes) })) }
            })
            .try_collect()
            .await
            .unwrap();
        let body = body.concat();

        let mut expected = Vec::new();
        for (range, bytes) in [("50-52/100", &content[50..53]), ("0-1/100", &content[0..2])] {
            let head = format!(
                "\r\n--{boundary}\r\nContent-Type: video/webm\r\n\
                 Content-Range: bytes {range}\r\n\r\n"
            );
            expected.extend_from_slice(head.as_bytes());
            expected.extend_from_slice(bytes);
        }
        expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        assert_eq!(body, expected);
        assert_eq!(length, expected.len() as u64);
    }

    #[tokio::test]
    async fn a_part_that_cannot_be_opened_fails_the_body() {
        let parts = vec![ResolvedRange { start: 0, end: 0 }, ResolvedRange { start: 5, end: 5 }];
        let multipart = Multipart::new(parts, "video/mp4", 10);
        let result: io::Result<Vec<Bytes>> = multipart
            .into_stream(|_| async {
                Err::<stream::Empty<io::Result<Bytes>>, _>(io::Error::other("gone"))
            })
            .try_collect()
            .await;
        assert!(result.is_err());
    }
}
