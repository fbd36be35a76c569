//! Bodies relayed from one HTTP connection to another with little memory held per stream.
//!
//! hyper reads an upstream body into a buffer that grows to about 400 KiB, and hands each
//! read on as a slice of that buffer. The answering side queues up to 16 such slices
//! (about 400 KiB) while the client is slower. Each queued slice keeps its whole buffer
//! alive, so hyper has to allocate a new one for the next read, and a relayed stream held
//! about 1.4 MiB (the gateway passed its 100 MiB budget with 32 peer streams). Copied into
//! pieces of their own, the queued bytes are only what is queued, and the read buffer is
//! reused: one copy of each byte, in exchange for about half the memory.

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};

/// The largest piece a relayed body is cut into. With hyper's 16 queued pieces, at most
/// 256 KiB wait per stream.
pub const RELAY_PIECE: usize = 16 * 1024;

/// `body` as copied pieces of at most `RELAY_PIECE` bytes, in order; errors pass through.
pub fn in_small_pieces<E>(
    body: impl Stream<Item = Result<Bytes, E>>,
) -> impl Stream<Item = Result<Bytes, E>> {
    body.flat_map(|chunk| {
        let pieces: Vec<Result<Bytes, E>> = match chunk {
            Ok(chunk) => chunk.chunks(RELAY_PIECE).map(|p| Ok(Bytes::copy_from_slice(p))).collect(),
            Err(err) => vec![Err(err)],
        };
        stream::iter(pieces)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pieces_keep_every_byte_in_order_and_errors_in_place() {
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let body = stream::iter(vec![
            Ok(Bytes::from(big.clone())),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"tail")),
            Err("reset"),
        ]);
        let pieces: Vec<Result<Bytes, &str>> = in_small_pieces(body).collect().await;
        assert!(pieces.iter().flatten().all(|p| p.len() <= RELAY_PIECE && !p.is_empty()));
        let (last, bytes) = pieces.split_last().unwrap();
        assert_eq!(*last, Err("reset"));
        let joined: Vec<u8> = bytes.iter().flat_map(|p| p.as_ref().unwrap().to_vec()).collect();
        let mut expected = big;
        expected.extend_from_slice(b"tail");
        assert_eq!(joined, expected);
    }
}
