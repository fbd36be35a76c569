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
use poem::listener::Acceptor;
use poem::{Endpoint, Request};
use std::any::Any;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

mod sendfile;

use sendfile::SendfileStream;
pub use sendfile::{FileSender, MAX_REGION};

/// How long a client may take to send a request's headers once it started: a connection
/// that trickles them (slowloris) is closed instead of held.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a new connection may take to bring its first request: the TLS handshake and
/// HTTP/2's preface come before any header timer of hyper's runs, so a client sending
/// nothing, or half a handshake, would otherwise hold a socket (and a file descriptor)
/// for as long as it likes.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection may sit with no request in flight once it made one, HTTP/1.1 and
/// HTTP/2 alike; then it is closed gracefully (HTTP/2 says GOAWAY first). A response
/// still being sent counts as in flight however long its reader pauses, so a player that
/// stopped reading with a full buffer keeps its film. Clients that pool connections
/// (ours do) drop them sooner, so they never pick one as it is being closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

// No HTTP/2 keep-alive pings: hyper pings once nothing was read from the client for a
// while, which during a download is always, and the ping's answer then waits behind what
// is queued for a slow reader: such downloads were cut at about 50 s. Idle connections
// are closed by `IDLE_TIMEOUT` instead.
/// The pause after a failed accept (out of file descriptors, say) before the next one,
/// doubled on each failure in a row up to `ACCEPT_BACKOFF_MAX`, so that a lasting failure
/// neither spins nor floods the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long connections wait for requests.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    first_request: Duration,
    idle: Duration,
}

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
    let timeouts = Timeouts { first_request: FIRST_REQUEST_TIMEOUT, idle: IDLE_TIMEOUT };
    serve_waiting(acceptor, endpoint, shutdown, grace, timeouts).await;
}

/// What one connection is doing: whether it brought a request yet, how many have an
/// answer not yet sent in full, and since when that count last changed (or since the
/// connection opened).
struct Activity(Mutex<ActivityState>);

struct ActivityState {
    asked: bool,
    in_flight: usize,
    since: Instant,
}

impl Activity {
    fn new() -> Arc<Self> {
        let state = ActivityState { asked: false, in_flight: 0, since: Instant::now() };
        Arc::new(Self(Mutex::new(state)))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // A poisoned lock only means a panic elsewhere; the state itself stays whole.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request came; its answer is in flight until `answered`.
    fn asked(&self) {
        let mut state = self.state();
        state.asked = true;
        state.in_flight += 1;
        state.since = Instant::now();
    }

    fn answered(&self) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.since = Instant::now();
    }

    fn brought_a_request(&self) -> bool {
        self.state().asked
    }

    /// When the connection will have been idle for long enough, if nothing changes: `None`
    /// while a request is in flight.
    fn idle_deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        let state = self.state();
        match (state.asked, state.in_flight) {
            (false, _) => Some(state.since + timeouts.first_request),
            (true, 0) => Some(state.since + timeouts.idle),
            (true, _) => None,
        }
    }
}

/// `body`, failing (`TimedOut`) once `idle` passes with nothing received: a request whose
/// body stops short would otherwise stay in flight, and hold its connection, for ever.
fn with_idle_timeout(body: poem::Body, idle: Duration) -> poem::Body {
    use futures_util::StreamExt as _;
    let chunks = Some(body.into_bytes_stream().boxed());
    let timed = futures_util::stream::unfold(chunks, move |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(chunks))),
            Ok(None) => None,
            Err(_) => {
                let stalled = io::Error::new(io::ErrorKind::TimedOut, "the request body stalled");
                Some((Err(stalled), None))
            }
        }
    });
    poem::Body::from_bytes_stream(timed)
}

/// A response body that counts as in flight until it is sent in full or dropped.
struct Tracked {
    body: BoxBody<Bytes, io::Error>,
    activity: Arc<Activity>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.activity.answered();
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// `serve`, with connections given `timeouts` to bring requests.
async fn serve_waiting<A, E>(
    mut acceptor: A,
    endpoint: E,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    timeouts: Timeouts,
) where
    A: Acceptor,
    E: Endpoint + 'static,
{
    let endpoint = Arc::new(endpoint);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let (stopping, _) = watch::channel(false);
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
                    let serving = Serving {
                        endpoint: Arc::clone(&endpoint),
                        local,
                        remote,
                        scheme,
                        builder: builder.clone(),
                        timeouts,
                        stopping: stopping.subscribe(),
                    };
                    // Plain TCP connections send files' regions with `sendfile`.
                    let mut io = Some(io);
                    let tcp = (&mut io as &mut dyn Any)
                        .downcast_mut::<Option<TcpStream>>()
                        .and_then(Option::take);
                    if let Some(tcp) = tcp {
                        let stream = SendfileStream::new(tcp);
                        let files = stream.sender();
                        connections.spawn(serving.run(stream, Some(files)));
                    } else if let Some(io) = io {
                        connections.spawn(serving.run(io, None));
                    }
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
    // Idle connections close at once, the others once their requests are answered.
    stopping.send_replace(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::info!(open = connections.len(), "grace period over: closing open connections");
    }
    connections.shutdown().await;
}

/// What serving one accepted connection takes.
struct Serving<E> {
    endpoint: Arc<E>,
    local: poem::web::LocalAddr,
    remote: poem::web::RemoteAddr,
    scheme: http::uri::Scheme,
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    stopping: watch::Receiver<bool>,
}

impl<E: Endpoint + 'static> Serving<E> {
    /// Serves requests on `io` until the connection ends; `files` is offered to its
    /// HTTP/1 requests (HTTP/2 copies bodies into its frames: no stand-ins there).
    async fn run<I>(self, io: I, files: Option<FileSender>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let Self { endpoint, local, remote, scheme, builder, timeouts, stopping } = self;
        let activity = Activity::new();
        let serving = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            serving.asked();
            let http1 = req.version() <= http::Version::HTTP_11;
            let has_body = !hyper::body::Body::is_end_stream(req.body());
            let (local, remote) = (local.clone(), remote.clone());
            let mut req = Request::from((req, local, remote, scheme.clone()));
            if has_body {
                let body = req.take_body();
                req.set_body(with_idle_timeout(body, timeouts.idle));
            }
            if let Some(files) = files.as_ref().filter(|_| http1) {
                req.extensions_mut().insert(files.clone());
            }
            let endpoint = Arc::clone(&endpoint);
            // Counted out when the body goes, also if the answer is never made.
            let activity = Arc::clone(&serving);
            let empty = Tracked { body: BoxBody::default(), activity };
            async move {
                let response = endpoint.get_response(req).await;
                let response = hyper::Response::<BoxBody<Bytes, io::Error>>::from(response);
                let mut tracked = empty;
                Ok::<_, Infallible>(response.map(|body| {
                    tracked.body = body;
                    tracked
                }))
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        serve_connection(connection, activity, timeouts, stopping).await;
    }
}

/// Drives one connection to its end: closed gracefully when the server stops or the
/// connection has been idle for too long, dropped if it never brought a request.
async fn serve_connection<C>(
    connection: C,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    mut stopping: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulConnection,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    // Once closed for idleness, a client that does not let go (HTTP/2 waits for the answer
    // to a ping after GOAWAY, which a client may never send) is cut an idle period later.
    let mut cut_at: Option<Instant> = None;
    let ended = loop {
        let deadline = activity.idle_deadline(timeouts);
        // While requests are in flight, look again after an idle period.
        let wake = deadline.unwrap_or_else(|| Instant::now() + timeouts.idle);
        let cut = cut_at.unwrap_or(wake);
        tokio::select! {
            ended = &mut connection => break ended,
            () = tokio::time::sleep_until(cut.into()), if cut_at.is_some() => {
                tracing::debug!("cutting an idle connection that did not close");
                return;
            }
            changed = stopping.wait_for(|stop| *stop), if !closing => {
                // A dropped sender means the server is gone: stop as well.
                let _ = changed;
                connection.as_mut().close_gracefully();
                closing = true;
            }
            () = tokio::time::sleep_until(wake.into()), if !closing => {
                // The deadline may have moved meanwhile: only one that held counts.
                if activity.idle_deadline(timeouts).is_some_and(|d| d <= Instant::now()) {
                    if !activity.brought_a_request() {
                        tracing::debug!("no request within the first request timeout");
                        return;
                    }
                    tracing::debug!("closing an idle connection");
                    connection.as_mut().close_gracefully();
                    closing = true;
                    cut_at = Some(Instant::now() + timeouts.idle);
                }
            }
        }
    };
    // A client that goes away mid-answer is routine for a video server.
    if let Err(err) = ended {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// A connection that can be asked to finish what it is doing and close.
trait GracefulConnection {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E> GracefulConnection for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
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

    /// A file of 3 MiB + 5 bytes, each byte its position modulo 253.
    /// It is written out and evicted from the page cache, so that sending it reads the
    /// disk (the blocking pool's warm-up, then `sendfile`).
    fn region_file() -> Arc<std::fs::File> {
        let bytes: Vec<u8> = (0..(3 << 20) + 5u32).map(|n| (n % 253) as u8).collect();
        let mut file = tempfile::tempfile_in("/var/tmp").unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        Arc::new(file)
    }

    /// `head`, then regions of `region_file` as `?regions=OFFSET+LEN,...` asks, sent from
    /// the file where the connection can; in memory where it cannot (`sent` says which).
    #[handler]
    fn file_regions(req: &Request) -> poem::Response {
        let file = region_file();
        let asked = req.uri().query().unwrap_or_default().trim_start_matches("regions=");
        let files = req.extensions().get::<FileSender>().cloned();
        let mut parts = vec![Ok::<_, io::Error>(Bytes::from_static(b"head:"))];
        for region in asked.split(',') {
            let (offset, len) = region.split_once('+').unwrap();
            let (offset, len): (u64, usize) = (offset.parse().unwrap(), len.parse().unwrap());
            parts.push(match &files {
                Some(files) => files.region(Arc::clone(&file), offset, len),
                None => {
                    let mut buf = vec![0; len];
                    std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset).unwrap();
                    Ok(Bytes::from(buf))
                }
            });
        }
        let sent = if files.is_some() { "file" } else { "memory" };
        poem::Response::builder()
            .header("x-sent", sent)
            .body(Body::from_bytes_stream(stream::iter(parts)))
    }

    #[handler]
    async fn echo(body: Body) -> poem::Result<Vec<u8>> {
        Ok(body.into_vec().await?)
    }

    const FIRST_REQUEST: Duration = Duration::from_millis(500);
    const IDLE: Duration = Duration::from_millis(1500);

    async fn start() -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
        let app = Route::new()
            .at("/counted", counted)
            .at("/endless", endless)
            .at("/regions", file_regions)
            .at("/echo", poem::post(echo));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let grace = Duration::from_millis(300);
        let timeouts = Timeouts { first_request: FIRST_REQUEST, idle: IDLE };
        let task = tokio::spawn(serve_waiting(acceptor, app, shutdown, grace, timeouts));
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

        // A keep-alive connection that made a request outlives that deadline, and is
        // closed once it has been idle for the idle timeout.
        let mut asked = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answered = Instant::now();
        asked.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut asked, &mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 404");
        assert!(!closed_within(&mut asked, Duration::from_secs(1)).await, "closed after a request");
        assert!(closed_within(&mut asked, Duration::from_secs(5)).await, "idle kept");
        assert!(answered.elapsed() >= IDLE, "closed before it was idle for long enough");
    }

    /// An HTTP/2 connection to `base`, and its driver, which ends when the server closes it.
    async fn h2_connection(
        base: &str,
    ) -> (hyper::client::conn::http2::SendRequest<String>, tokio::task::JoinHandle<()>) {
        let tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender, driver)
    }

    fn get(path: &str) -> hyper::Request<String> {
        hyper::Request::get(format!("http://x{path}")).body(String::new()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_http2_connection_is_closed_and_a_paused_download_is_not() {
        use http_body_util::BodyExt;
        let (base, _stop, _task) = start().await;

        // Answered, then idle: the server says goodbye after the idle timeout.
        let (mut sender, driver) = h2_connection(&base).await;
        let asked = Instant::now();
        let answer = sender.send_request(get("/counted")).await.unwrap();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 4 << 20);
        tokio::time::timeout(Duration::from_secs(5), driver).await.unwrap().unwrap();
        assert!(asked.elapsed() >= IDLE, "closed after {:?}", asked.elapsed());

        // A download whose reader pauses for longer than that is not idle: it goes on.
        let (mut sender, mut driver) = h2_connection(&base).await;
        let answer = sender.send_request(get("/endless")).await.unwrap();
        let mut body = answer.into_body();
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::sleep(IDLE * 2).await;
        assert!(!driver.is_finished(), "a paused download was cut");
        for _ in 0..64 {
            assert!(body.frame().await.unwrap().is_ok(), "the download did not go on");
        }
        // Once the client lets go of it, the connection is idle and closed.
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), &mut driver).await.unwrap().unwrap();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_regions_arrive_exact_over_http1_and_in_memory_over_http2() {
        let (base, _stop, _task) = start().await;
        let expected = |regions: &[(usize, usize)]| {
            let mut body = b"head:".to_vec();
            for (offset, len) in regions {
                body.extend((*offset..offset + len).map(|n| (n % 253) as u8));
            }
            body
        };
        // Whole regions, a full-size one, neighbours, and one at the file's end.
        let cases: [&[(usize, usize)]; 3] = [
            &[(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, 1 << 20), (3 << 20, 5)],
            &[(7, 1), (8, 100_000), (3_000_000, 145_733)],
            &[(1, 0x1_0000), (1, 0x1_0000)],
        ];
        let http1 = reqwest::Client::builder().http1_only().build().unwrap();
        let http2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
        for regions in cases {
            let query: Vec<String> = regions.iter().map(|(o, l)| format!("{o}+{l}")).collect();
            let url = format!("{base}/regions?regions={}", query.join(","));
            for (client, sent) in [(&http1, "file"), (&http2, "memory")] {
                // Twice on one connection: the second answer's regions follow the first's.
                for _ in 0..2 {
                    let answer = client.get(&url).send().await.unwrap();
                    assert_eq!(answer.headers()["x-sent"], sent);
                    let body = answer.bytes().await.unwrap();
                    assert!(body[..] == expected(regions)[..], "{url} ({sent}) differs");
                }
            }
        }

        // A region past the file's end is never padded, and one too long for a stand-in is
        // refused: the connection is cut either way.
        for regions in ["3145000+1000", "0+1048577"] {
            let url = format!("{base}/regions?regions={regions}");
            let cut = match http1.get(&url).send().await {
                Ok(answer) => answer.bytes().await.is_err(),
                Err(_) => true,
            };
            assert!(cut, "{regions} made a whole body");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_http2_client_that_never_answers_the_closing_ping_is_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (base, _stop, _task) = start().await;
        let mut tcp =
            tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
        // Preface, empty SETTINGS, and `GET /` (HPACK: static entries, authority `x`).
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
        let get: &[u8] = &[0, 0, 6, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
        tcp.write_all(get).await.unwrap();
        let asked = Instant::now();
        // Frames are read, SETTINGS acknowledged, pings never answered.
        let read_until_closed = async {
            loop {
                let mut head = [0u8; 9];
                if tcp.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if tcp.read_exact(&mut payload).await.is_err() {
                    return;
                }
                if head[3] == 4 && head[4] & 1 == 0 {
                    let _ = tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                }
            }
        };
        let closed = tokio::time::timeout(IDLE * 4, read_until_closed).await;
        assert!(closed.is_ok(), "held for {:?}", asked.elapsed());
        assert!(asked.elapsed() >= IDLE * 2, "cut after {:?}", asked.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_body_that_stops_short_lets_its_connection_go() {
        use tokio::io::AsyncWriteExt;
        let (base, _stop, _task) = start().await;
        let client = reqwest::Client::new();
        let whole = client.post(format!("{base}/echo")).body("all of it").send().await.unwrap();
        assert_eq!(whole.text().await.unwrap(), "all of it");

        // 10 of the 100 bytes promised, then nothing: answered and closed, not held.
        let addr = base.trim_start_matches("http://");
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
        stalled.write_all(request).await.unwrap();
        let sent = Instant::now();
        assert!(closed_within(&mut stalled, IDLE * 3).await, "held for {:?}", sent.elapsed());
        assert!(sent.elapsed() >= IDLE, "given up after {:?}", sent.elapsed());
    }
}
