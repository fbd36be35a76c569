//! Sending byte ranges of files with `sendfile(2)` on plain HTTP/1.1 connections.
//!
//! hyper writes what a body yields, and a body can only yield bytes in memory: a file's
//! bytes are copied from the page cache into a buffer, then from the buffer into the
//! socket. nginx has the kernel move them from the page cache to the socket instead. To do
//! the same under hyper, a body yields *stand-ins*: slices of a reserved address range
//! that no one reads, each standing for a region of a file the connection was told about
//! (`FileSender::region`). hyper queues bodies' bytes without copying them when its
//! connection writes vectored (it asks), so the stand-ins reach our socket's
//! `poll_write_vectored` as they were made; there each is recognised by its address and
//! replaced by a `sendfile` of its region.
//!
//! Safety against sending the stand-ins' zeros instead of the file: a stand-in is only
//! made through the `FileSender` of the connection that will write it (one is offered only
//! to HTTP/1.1 requests over plain TCP, where hyper writes bodies as they are), each
//! region gets its own slot of the reserved range, and a stand-in that matches no region
//! the connection was told about fails the write (the connection is closed) instead of
//! being sent.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The largest region one stand-in stands for.
pub const MAX_REGION: usize = 1 << 20;

/// Slots of the reserved range: regions a connection may have handed out and not yet
/// sent. hyper queues at most 16 buffers per connection, far fewer than this.
const SLOTS: usize = 64;

/// The reserved range: `SLOTS` regions' worth of zeroed memory that is never read or
/// written, so the system never gives it pages (64 MiB of address space, no memory).
static RESERVED: LazyLock<&'static [u8]> =
    LazyLock::new(|| Vec::leak(vec![0u8; SLOTS * MAX_REGION]));

/// Where `slice` sits in the reserved range, if it does: (slot, offset in the slot).
fn reserved_position(slice: &[u8]) -> Option<(usize, usize)> {
    let start = RESERVED.as_ptr() as usize;
    let at = (slice.as_ptr() as usize).checked_sub(start)?;
    (at < RESERVED.len() && !slice.is_empty()).then_some((at / MAX_REGION, at % MAX_REGION))
}

/// A region of a file a connection will send in place of a stand-in.
struct Region {
    file: Arc<File>,
    /// Where the region starts in the file.
    start: u64,
    len: usize,
    slot: usize,
    /// Bytes of the region already sent (the stand-in's offset hyper will write from).
    sent: usize,
    /// Whether its bytes were found in the page cache (or read into it).
    warm: bool,
}

/// The regions one connection has handed out, in the order its bodies yielded them.
#[derive(Default)]
struct Regions {
    queue: VecDeque<Region>,
    next_slot: usize,
}

/// Hands out stand-ins for regions of files, for one connection. Found in the request's
/// extensions when the connection can send files; absent otherwise.
#[derive(Clone)]
pub struct FileSender {
    regions: Arc<Mutex<Regions>>,
}

impl FileSender {
    /// A stand-in for `len` bytes (at most `MAX_REGION`) of `file` from `offset`, to yield
    /// from a body of a response on this connection. The file must hold them: one that
    /// ends sooner fails the write, and the connection is closed.
    pub fn region(&self, file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
        if len > MAX_REGION {
            return Err(io::Error::other(format!("a region of {len} bytes is over {MAX_REGION}")));
        }
        let mut regions = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = regions.next_slot;
        regions.next_slot = (slot + 1) % SLOTS;
        regions.queue.push_back(Region { file, start: offset, len, slot, sent: 0, warm: false });
        let reserved: &'static [u8] = &RESERVED;
        Ok(Bytes::from_static(&reserved[slot * MAX_REGION..slot * MAX_REGION + len]))
    }
}

/// A TCP connection that sends stand-ins' regions with `sendfile`, and everything else as
/// written.
pub(crate) struct SendfileStream {
    tcp: TcpStream,
    regions: Arc<Mutex<Regions>>,
    /// The blocking pool reading the front region into the page cache, if it was not.
    warming: Option<JoinHandle<()>>,
}

impl SendfileStream {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self { tcp, regions: Arc::default(), warming: None }
    }

    pub(crate) fn sender(&self) -> FileSender {
        FileSender { regions: Arc::clone(&self.regions) }
    }

    /// Sends (part of) the region the stand-in at `slot`/`at` stands for.
    fn poll_send_region(
        &mut self,
        cx: &mut Context<'_>,
        slot: usize,
        at: usize,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let mismatch = || io::Error::other("a body stand-in names no region of this connection");
        let (file, mut offset, count, warm) = {
            let mut regions = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
            // Regions handed out by a body that was dropped unsent are skipped.
            while regions.queue.front().is_some_and(|r| r.slot != slot || r.sent != at) {
                regions.queue.pop_front();
            }
            let region = regions.queue.front().ok_or_else(mismatch)?;
            let offset = region.start + region.sent as u64;
            (Arc::clone(&region.file), offset, len.min(region.len - region.sent), region.warm)
        };
        // `sendfile` reads what is not in the page cache from the disk, on this runtime
        // thread. A region found missing there is read in the blocking pool first.
        if !warm {
            if self.warming.is_none() && !in_page_cache(&file, offset, count) {
                let cold = Arc::clone(&file);
                let warming =
                    tokio::task::spawn_blocking(move || read_into_page_cache(&cold, offset, count));
                self.warming = Some(warming);
            }
            if let Some(warming) = self.warming.as_mut() {
                // A failed warm-up only leaves the reading to `sendfile`.
                let _ = ready!(Pin::new(warming).poll(cx));
                self.warming = None;
            }
            let mut regions = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(region) = regions.queue.front_mut() {
                region.warm = true;
            }
        }
        let sent = loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let tcp = &self.tcp;
            let sending = || {
                rustix::fs::sendfile(tcp, &*file, Some(&mut offset), count).map_err(io::Error::from)
            };
            match self.tcp.try_io(Interest::WRITABLE, sending) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ended before the region it was to send",
                    )));
                }
                Ok(sent) => break sent,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        };
        let mut regions = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(region) = regions.queue.front_mut() {
            region.sent += sent;
            if region.sent == region.len {
                regions.queue.pop_front();
            }
        }
        Poll::Ready(Ok(sent))
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Writes the buffers before the first stand-in as they are, or, when a stand-in comes
    /// first, sends its region.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|buf| !buf.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let bufs = &bufs[first..];
        if let Some((slot, at)) = reserved_position(&bufs[0]) {
            return self.poll_send_region(cx, slot, at, bufs[0].len());
        }
        let plain = bufs.iter().position(|buf| reserved_position(buf).is_some());
        let plain = &bufs[..plain.unwrap_or(bufs.len())];
        Pin::new(&mut self.tcp).poll_write_vectored(cx, plain)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Whether the first and last bytes of `offset..offset + len` of `file` are in the page
/// cache (a read that may not wait says so). Where the system cannot tell, yes: `sendfile`
/// then reads as it would have.
fn in_page_cache(file: &File, offset: u64, len: usize) -> bool {
    let Some(last) = len.checked_sub(1) else {
        return true;
    };
    [offset, offset + last as u64].iter().all(|&at| {
        let mut byte = [0u8; 1];
        let mut bufs = [io::IoSliceMut::new(&mut byte)];
        let read = rustix::io::preadv2(file, &mut bufs, at, rustix::io::ReadWriteFlags::NOWAIT);
        !matches!(read, Err(rustix::io::Errno::AGAIN))
    })
}

/// Reads `offset..offset + len` of `file` and drops it: what is left is the file's pages in
/// the page cache, for `sendfile` to send without waiting on the disk. Errors are left to
/// `sendfile` to meet.
fn read_into_page_cache(file: &File, offset: u64, len: usize) {
    const STEP: usize = 256 * 1024;
    let mut scratch = vec![0u8; STEP.min(len)];
    let mut done = 0;
    while done < len {
        let want = STEP.min(len - done);
        match rustix::io::pread(file, &mut scratch[..want], offset + done as u64) {
            Ok(0) | Err(_) => return,
            Ok(read) => done += read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_read_from_the_disk_are_found_in_the_page_cache() {
        // On the disk (not a memory file system), written out, then evicted.
        let mut file = tempfile::tempfile_in("/var/tmp").unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; 4 << 20]).unwrap();
        file.sync_all().unwrap();
        let evict = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        evict.unwrap();
        if in_page_cache(&file, 0, 1 << 20) {
            // The system cannot tell (no RWF_NOWAIT for this file system): nothing to check.
            eprintln!("the page cache cannot be probed here");
            return;
        }
        read_into_page_cache(&file, 0, 1 << 20);
        assert!(in_page_cache(&file, 0, 1 << 20));
        assert!(!in_page_cache(&file, 3 << 20, 1 << 20), "pages never read are cached");
    }
}
