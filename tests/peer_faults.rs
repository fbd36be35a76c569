//! A peer that misbehaves: a hand-written HTTP server on port 0 that stalls, resets in the
//! middle of a body, lies in `Content-Range`, sends an endless body, redirects elsewhere or
//! sends headers that must not travel. B proxies it; each case must end in the right status
//! and leave no connection to the fake peer open.

use anyhow::{Context, ensure};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode, header};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use url::Url;
use velour_core::StorageType;
use velour_core::settings::PeerSettings;
use velour_db::locations::{NewLocation, create_location};
use velour_tests::Instance;

/// How long B waits for a silent peer in these tests.
const READ_TIMEOUT_SECS: u64 = 1;
/// Bounds every wait of the test itself, so that a bug fails it instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(15);
/// The size the fake peer claims for its video.
const SIZE: usize = 100_000;

/// What the fake peer does after reading a request.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Never answers.
    Stall,
    /// Sends the headers and part of the body, then goes silent.
    StallMidBody,
    /// Sends the headers and part of the body, then resets the connection.
    ResetMidBody,
    /// Answers a range with another one.
    LieInContentRange,
    /// Announces a length, then sends bytes forever.
    EndlessBody,
    /// Sends a chunked body that never ends and announces no length.
    EndlessChunked,
    /// Redirects to another server, which must never see our key.
    RedirectElsewhere,
    /// A good answer wrapped in headers that must not be relayed.
    ForeignHeaders,
    /// A very long body, sent slowly, for a client that goes away.
    Trickle,
}

/// What the fake peer saw on one connection.
#[derive(Debug)]
struct Seen {
    request: String,
    /// The peer closed the connection from its side before `PATIENCE` ran out.
    closed_by_us: bool,
}

struct FakePeer {
    base: Url,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl FakePeer {
    async fn start(behaviour: Misbehaviour, redirect_to: Option<Url>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = Url::parse(&format!("http://{}/", listener.local_addr()?))?;
        let (tx, seen) = mpsc::unbounded_channel();
        let redirect_to = Arc::new(redirect_to);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let tx = tx.clone();
                let redirect_to = Arc::clone(&redirect_to);
                tokio::spawn(async move {
                    if let Ok(seen) = serve(socket, behaviour, redirect_to.as_ref().as_ref()).await
                    {
                        let _ = tx.send(seen);
                    }
                });
            }
        });
        Ok(Self { base, seen })
    }

    async fn next_connection(&mut self) -> anyhow::Result<Seen> {
        tokio::time::timeout(PATIENCE * 2, self.seen.recv())
            .await
            .context("the fake peer saw no connection end")?
            .context("the fake peer stopped")
    }
}

async fn read_request(socket: &mut TcpStream) -> anyhow::Result<String> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        ensure!(n > 0 && request.len() < 64 * 1024, "no complete request");
        request.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&request).into_owned())
}

/// Waits for the other side to close; `true` if it did before `PATIENCE` ran out.
async fn closed_by_peer(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.is_ok()
}

/// Writes `chunk` until the other side closes (`true`) or `PATIENCE` runs out.
async fn write_until_closed(socket: &mut TcpStream, chunk: &[u8], pause: Duration) -> bool {
    let wait = async {
        loop {
            if socket.write_all(chunk).await.is_err() {
                return;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.is_ok()
}

async fn serve(
    mut socket: TcpStream,
    behaviour: Misbehaviour,
    redirect_to: Option<&Url>,
) -> anyhow::Result<Seen> {
    let request = read_request(&mut socket).await?;
    let chunk = vec![b'v'; 16 * 1024];
    let closed_by_us = match behaviour {
        Misbehaviour::Stall => closed_by_peer(&mut socket).await,
        Misbehaviour::StallMidBody => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(&chunk).await?;
            closed_by_peer(&mut socket).await
        }
        Misbehaviour::ResetMidBody => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(&chunk).await?;
            // Linger 0: closing sends a reset instead of an orderly end.
            socket.set_zero_linger()?;
            drop(socket);
            true
        }
        Misbehaviour::LieInContentRange => {
            // Asked for the start, it answers from elsewhere, with a body long enough that
            // a refused answer must be hung up on rather than read to its end.
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 500-{}/{SIZE}\r\n\
                 Content-Length: {}\r\n\r\n",
                SIZE - 1,
                SIZE - 500
            );
            socket.write_all(head.as_bytes()).await?;
            write_until_closed(&mut socket, &chunk, Duration::from_millis(5)).await
        }
        Misbehaviour::EndlessBody => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            socket.write_all(head.as_bytes()).await?;
            write_until_closed(&mut socket, &chunk, Duration::ZERO).await
        }
        Misbehaviour::EndlessChunked => {
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await?;
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            write_until_closed(&mut socket, &framed, Duration::ZERO).await
        }
        Misbehaviour::RedirectElsewhere => {
            let location = redirect_to.context("no redirect target")?;
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await?;
            closed_by_peer(&mut socket).await
        }
        Misbehaviour::ForeignHeaders => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: video/webm\r\n\
                        Set-Cookie: session=peer-secret\r\nConnection: x-private\r\n\
                        X-Private: peer-secret\r\nKeep-Alive: timeout=5\r\n\
                        X-Powered-By: fake\r\n\r\nhello";
            socket.write_all(head.as_bytes()).await?;
            closed_by_peer(&mut socket).await
        }
        Misbehaviour::Trickle => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n";
            socket.write_all(head.as_bytes()).await?;
            write_until_closed(&mut socket, &chunk, Duration::from_millis(5)).await
        }
    };
    Ok(Seen { request, closed_by_us })
}

/// A video in B's catalog on a peer location at `base`.
pub(crate) async fn add_peer_video(b: &Instance, base: &Url, label: &str) -> anyhow::Result<i64> {
    let new = NewLocation {
        name: label,
        storage_type: StorageType::Velour,
        configuration: json!({ "remote_instance_url": base.as_str(), "instance_name": label }),
        secrets: json!({ "api_key": "key-for-the-fake-peer" }),
        rescan_interval_secs: None,
    };
    let cipher = velour_db::secrets::SecretsCipher::default();
    let location = create_location(b.pool(), &cipher, new).await?.id;
    let work: i64 = sqlx::query_scalar("INSERT INTO works (title) VALUES ($1) RETURNING id")
        .bind(label)
        .fetch_one(b.pool())
        .await?;
    let video = sqlx::query_scalar(
        "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size,
                             video_metadata)
         VALUES ($1, $2, '42', 'fake.webm', $3, '{\"remote_video_id\": 42}') RETURNING id",
    )
    .bind(work)
    .bind(location)
    .bind(SIZE as i64)
    .fetch_one(b.pool())
    .await?;
    Ok(video)
}

/// Reads a body to its end or its first error; (bytes read, whether it ended cleanly).
async fn read_body(response: reqwest::Response) -> (usize, bool) {
    let mut stream = response.bytes_stream();
    let mut read = 0;
    let reading = async {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => read += bytes.len(),
                Err(_) => return false,
            }
        }
        true
    };
    let clean = tokio::time::timeout(PATIENCE, reading).await.unwrap_or(false);
    (read, clean)
}

async fn error_code(response: reqwest::Response) -> anyhow::Result<String> {
    let body: serde_json::Value = response.json().await?;
    body["code"].as_str().map(str::to_owned).context("no code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misbehaving_peer_ends_in_the_right_status_without_leaking_connections()
-> anyhow::Result<()> {
    let peer =
        PeerSettings { read_timeout_secs: READ_TIMEOUT_SECS, ..PeerSettings::for_loopback_peers() };
    let b = Instance::start_with_peer("faults B", peer).await?;
    let mut problems = Vec::new();

    // Answers that fail before any byte is relayed: our JSON error, and the connection to
    // the peer closed by us.
    let refused = [
        (Misbehaviour::Stall, None, StatusCode::GATEWAY_TIMEOUT, "peer-timeout"),
        (
            Misbehaviour::LieInContentRange,
            Some("bytes=0-99"),
            StatusCode::BAD_GATEWAY,
            "peer-error",
        ),
        (Misbehaviour::EndlessChunked, None, StatusCode::BAD_GATEWAY, "peer-error"),
    ];
    for (behaviour, range, status, code) in refused {
        let mut fake = FakePeer::start(behaviour, None).await?;
        let id = add_peer_video(&b, &fake.base, &format!("{behaviour:?}")).await?;
        let mut request = b.admin(Method::GET, &format!("/api/v1/videos/{id}/stream"));
        if let Some(range) = range {
            request = request.header(header::RANGE, range);
        }
        let response = tokio::time::timeout(PATIENCE, request.send()).await??;
        let got = response.status();
        let got_code = error_code(response).await.unwrap_or_default();
        if (got, got_code.as_str()) != (status, code) {
            problems.push(format!("{behaviour:?}: {got} {got_code}, expected {status} {code}"));
        }
        let seen = fake.next_connection().await?;
        if !seen.closed_by_us {
            problems.push(format!("{behaviour:?}: the connection to the peer stayed open"));
        }
    }

    // Failures in the middle of a body: the status is already sent, so the client must
    // see the body cut short rather than a clean end of a shorter file.
    for behaviour in [Misbehaviour::StallMidBody, Misbehaviour::ResetMidBody] {
        let mut fake = FakePeer::start(behaviour, None).await?;
        let id = add_peer_video(&b, &fake.base, &format!("{behaviour:?}")).await?;
        let path = format!("/api/v1/videos/{id}/stream");
        let response = tokio::time::timeout(PATIENCE, b.admin(Method::GET, &path).send()).await??;
        if response.status() != StatusCode::OK {
            problems.push(format!("{behaviour:?}: status {}", response.status()));
        }
        let (read, clean) = read_body(response).await;
        if clean || read >= SIZE {
            problems.push(format!("{behaviour:?}: a cut body looked whole ({read} bytes)"));
        }
        let seen = fake.next_connection().await?;
        if !seen.closed_by_us {
            problems.push(format!("{behaviour:?}: the connection to the peer stayed open"));
        }
    }

    // An endless body after a Content-Length: exactly that many bytes, then B hangs up.
    let mut fake = FakePeer::start(Misbehaviour::EndlessBody, None).await?;
    let id = add_peer_video(&b, &fake.base, "endless").await?;
    let path = format!("/api/v1/videos/{id}/stream");
    let response = tokio::time::timeout(PATIENCE, b.admin(Method::GET, &path).send()).await??;
    let status = response.status();
    let (read, clean) = read_body(response).await;
    if (status, read, clean) != (StatusCode::OK, SIZE, true) {
        problems.push(format!("endless body: {status}, {read} bytes, clean {clean}"));
    }
    if !fake.next_connection().await?.closed_by_us {
        problems.push("endless body: the connection to the peer stayed open".to_owned());
    }

    // A redirect is not followed: the other host never sees a request, let alone our key.
    let mut elsewhere = FakePeer::start(Misbehaviour::ForeignHeaders, None).await?;
    let target = elsewhere.base.join("steal")?;
    let mut fake = FakePeer::start(Misbehaviour::RedirectElsewhere, Some(target)).await?;
    let id = add_peer_video(&b, &fake.base, "redirect").await?;
    let response = b.admin(Method::GET, &format!("/api/v1/videos/{id}/stream")).send().await?;
    let status = response.status();
    if (status, error_code(response).await?.as_str()) != (StatusCode::BAD_GATEWAY, "peer-error") {
        problems.push(format!("redirect: {status}"));
    }
    let seen = fake.next_connection().await?;
    ensure!(seen.request.contains("key-for-the-fake-peer"), "the peer got no key: {seen:?}");
    let leaked = tokio::time::timeout(Duration::from_millis(500), elsewhere.seen.recv()).await;
    if leaked.is_ok() {
        problems.push("redirect: the other host was contacted".to_owned());
    }

    // Headers that belong to the peer's connection or session stay there.
    let fake = FakePeer::start(Misbehaviour::ForeignHeaders, None).await?;
    let id = add_peer_video(&b, &fake.base, "headers").await?;
    // The peer ignores the range and answers 200 with all it has (RFC 9110 §14.2 allows
    // it): relayed as a 200, never labelled a 206.
    let path = format!("/api/v1/videos/{id}/stream");
    let response = b.admin(Method::GET, &path).header(header::RANGE, "bytes=0-1").send().await?;
    if response.status() != StatusCode::OK {
        problems.push(format!("headers: a 200 to a range became {}", response.status()));
    }
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    for name in ["set-cookie", "x-private", "keep-alive", "x-powered-by"] {
        if headers.contains_key(name) {
            problems.push(format!("headers: {name} was relayed"));
        }
    }
    if headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes() == b"x-private") {
        problems.push("headers: the peer's Connection was relayed".to_owned());
    }
    if &body[..] != b"hello" || headers[header::CONTENT_TYPE] != "video/webm" {
        problems.push(format!("headers: the answer itself changed: {body:?}"));
    }
    drop(fake);

    // A client that goes away mid-film: B drops the peer's connection at once.
    let mut fake = FakePeer::start(Misbehaviour::Trickle, None).await?;
    let id = add_peer_video(&b, &fake.base, "trickle").await?;
    let path = format!("/api/v1/videos/{id}/stream");
    let response = tokio::time::timeout(PATIENCE, b.admin(Method::GET, &path).send()).await??;
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(PATIENCE, stream.next()).await?;
    ensure!(first.is_some_and(|c| c.is_ok()), "no first chunk from the trickling peer");
    drop(stream);
    if !fake.next_connection().await?.closed_by_us {
        problems.push("disconnect: the peer kept streaming to nobody".to_owned());
    }

    b.stop().await?;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
