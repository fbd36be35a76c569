//! Serves poem endpoints on hyper connections that write straight to their sockets.
//!
//! poem's own `Server` puts every accepted connection behind a boxed reader/writer split.
//! That box does not report vectored writes, so hyper falls back to copying each body chunk
//! into its own write buffer before sending it: for a video server, one more copy of every
//! byte served, on every hop (stream service, gateway, peer). Here hyper gets the
//! acceptor's stream itself (a `TcpStream` writes vectored) and sends body chunks from the
//! buffers they were read into.
//!
//! The rest is what poem's server does: one task per connection, HTTP/1.1 and HTTP/2, and
//! on shutdown no new connections, idle ones closed, open ones given a grace period.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use poem::listener::Acceptor;
use poem::{Endpoint, Request};
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;

/// How long a client may take to send a request's headers once it started: a connection
/// that trickles them (slowloris) is closed instead of held.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a new connection may take to bring its first request: the TLS handshake and
/// HTTP/2's preface come before any header timer of hyper's runs, so a client sending
/// nothing, or half a handshake, would otherwise hold a socket (and a file descriptor)
/// for as long as it likes.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// No HTTP/2 keep-alive pings: hyper pings once nothing was read from the client for a
// while, which during a download is always, and the ping's answer then waits behind what
// is queued for a slow reader: such downloads were cut at about 50 s.
/// The pause after a failed accept (out of file descriptors, say) before the next one,
/// doubled on each failure in a row up to `ACCEPT_BACKOFF_MAX`, so that a lasting failure
/// neither spins nor floods the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `endpoint` on the connections `acceptor` accepts until `shutdown` resolves; then
/// waits up to `grace` for requests in flight and cuts what is left.
pub async fn serve<A, E>(
    acceptor: A,
    endpoint: E,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) where
    A: Acceptor,
    E: Endpoint + 'static,
{
    serve_waiting(acceptor, endpoint, shutdown, grace, FIRST_REQUEST_TIMEOUT).await;
}

/// `serve`, with new connections given `first_request` to bring a request.
async fn serve_waiting<A, E>(
    mut acceptor: A,
    endpoint: E,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    first_request: Duration,
) where
    A: Acceptor,
    E: Endpoint + 'static,
{
    let endpoint = Arc::new(endpoint);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut backoff = ACCEPT_BACKOFF;
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Finished connections are reaped as they end, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = acceptor.accept() => match accepted {
                Ok((io, local, remote, scheme)) => {
                    backoff = ACCEPT_BACKOFF;
                    let endpoint = Arc::clone(&endpoint);
                    let started = Arc::new(AtomicBool::new(false));
                    let asked = Arc::clone(&started);
                    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        asked.store(true, Ordering::Relaxed);
                        let (local, remote) = (local.clone(), remote.clone());
                        let req = Request::from((req, local, remote, scheme.clone()));
                        let endpoint = Arc::clone(&endpoint);
                        async move {
                            let response = endpoint.get_response(req).await;
                            Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, io::Error>>::from(
                                response,
                            ))
                        }
                    });
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    connections.spawn(async move {
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                        let connection = watcher.watch(connection);
                        tokio::pin!(connection);
                        let ended = tokio::select! {
                            ended = &mut connection => ended,
                            () = tokio::time::sleep(first_request) => {
                                if !started.load(Ordering::Relaxed) {
                                    tracing::debug!("no request within the first request timeout");
                                    return;
                                }
                                // The deadline only bounds the wait for a first request.
                                connection.await
                            }
                        };
                        // A client that goes away mid-answer is routine for a video server.
                        if let Err(err) = ended {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?backoff,
                        "could not accept a connection");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
        }
    }

    drop(acceptor);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::info!(open = connections.len(), "grace period over: closing open connections");
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use poem::listener::TcpAcceptor;
    use poem::{Body, Route, handler};
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    #[handler]
    fn counted() -> Body {
        // 4 MiB in 256 KiB chunks, each byte its position modulo 251.
        let chunks = (0..16u64).map(|i| {
            let chunk: Vec<u8> =
                (i * 262_144..(i + 1) * 262_144).map(|n| (n % 251) as u8).collect();
            Ok::<_, io::Error>(Bytes::from(chunk))
        });
        Body::from_bytes_stream(stream::iter(chunks))
    }

    #[handler]
    fn endless() -> Body {
        // Chunks large enough that what loopback buffered drains at once once it is cut.
        Body::from_bytes_stream(stream::repeat_with(|| {
            Ok::<_, io::Error>(Bytes::from_static(&[b'x'; 65_536]))
        }))
    }

    async fn start() -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
        let app = Route::new().at("/counted", counted).at("/endless", endless);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let (grace, first_request) = (Duration::from_millis(300), Duration::from_millis(500));
        let task = tokio::spawn(serve_waiting(acceptor, app, shutdown, grace, first_request));
        (base, stop, task)
    }

    /// Reads `stream` until the server closes it (true) or `within` passes (false).
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let read_to_end = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read_to_end).await.is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_brings_no_request_is_closed_and_one_that_did_is_kept() {
        use tokio::io::AsyncWriteExt;
        let (base, _stop, _task) = start().await;
        let addr = base.trim_start_matches("http://");

        // Silent, and half an HTTP/2 preface: both let go after the first request timeout.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut preface = tokio::net::TcpStream::connect(addr).await.unwrap();
        preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "silent kept");
        assert!(closed_within(&mut preface, Duration::from_secs(5)).await, "preface kept");
        assert!(started.elapsed() >= Duration::from_millis(400), "closed too early");

        // A keep-alive connection that made a request outlives that deadline.
        let mut asked = tokio::net::TcpStream::connect(addr).await.unwrap();
        asked.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut asked, &mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 404");
        assert!(!closed_within(&mut asked, Duration::from_secs(1)).await, "closed after a request");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_arrive_whole_and_shutdown_cuts_what_outlives_the_grace() {
        let (base, stop, task) = start().await;
        let client = reqwest::Client::new();
        let body = client.get(format!("{base}/counted")).send().await.unwrap();
        assert_eq!(body.status(), 200);
        let body = body.bytes().await.unwrap();
        assert_eq!(body.len(), 4 << 20);
        assert!(body.iter().enumerate().all(|(n, b)| *b == (n % 251) as u8));
        let missing = client.get(format!("{base}/nothing")).send().await.unwrap();
        assert_eq!(missing.status(), 404);

        // A response that never ends is cut once the grace period is over.
        let mut open = client.get(format!("{base}/endless")).send().await.unwrap();
        assert!(open.chunk().await.unwrap().is_some());
        let asked = Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        let took = asked.elapsed();
        assert!(took >= Duration::from_millis(300), "stopped after {took:?}, within the grace");
        let drained = async {
            loop {
                match open.chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return false,
                    Err(_) => return true,
                }
            }
        };
        let cut = tokio::time::timeout(Duration::from_secs(5), drained).await;
        assert_eq!(cut, Ok(true), "the endless body was not cut (or ended cleanly)");
        // Nothing listens any more.
        assert!(client.get(format!("{base}/counted")).send().await.is_err());
    }
}
