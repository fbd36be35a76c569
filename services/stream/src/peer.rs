//! Videos another Velour instance holds: the request goes on to the peer with our key, and
//! its answer comes back a chunk at a time.

use crate::error::StreamError;
use crate::metered::MeteredStream;
use crate::{StreamState, requested_ranges};
use futures_util::TryStreamExt;
use poem::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use poem::{Body, Request, Response};
use secrecy::SecretString;
use serde_json::Value;
use url::Url;
use velour_core::settings::redact_url;
use velour_db::catalog::VideoRow;
use velour_db::locations::LocationWithSecrets;
use velour_peer::{PeerClient, PeerError};
use velour_storage::{ContentRange, RangeSet};

/// Conditional request headers passed on as they came. `Range` is passed on too, but only
/// once parsed, and nothing else of the caller's request (least of all its key) is.
const FORWARDED_REQUEST: [HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// The peer's response headers that describe the bytes; no other header is relayed.
const RELAYED_RESPONSE: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
];

/// Answers a GET or HEAD for a video that a peer holds.
pub(crate) async fn serve(
    state: &StreamState,
    video: &VideoRow,
    location: &LocationWithSecrets,
    req: &Request,
) -> Result<Response, StreamError> {
    let location_id = location.location.id;
    let client = peer_client(state, location)?;
    let Some(remote_id) = video.video_metadata.0.get("remote_video_id").and_then(Value::as_i64)
    else {
        tracing::error!(location.id = location_id, "peer video has no remote_video_id");
        return Err(StreamError::StorageUnavailable);
    };

    let ranges = requested_ranges(req.headers());
    let forwarded = forwarded_headers(req.headers(), ranges.as_ref());
    let upstream = client
        .stream(req.method().clone(), remote_id, forwarded)
        .await
        .map_err(|e| peer_failed(&e, &client))?;

    accept_status(upstream.status(), ranges.as_ref(), upstream.headers(), &client)?;
    let length = body_length(req.method(), &upstream, &client)?;
    Ok(relay(upstream, video.id, req.method(), length))
}

/// A client for the location's peer, sharing the service's connection pool.
pub(crate) fn peer_client(
    state: &StreamState,
    location: &LocationWithSecrets,
) -> Result<PeerClient, StreamError> {
    let location_id = location.location.id;
    let url = location.location.config_str("remote_instance_url").map(Url::parse);
    let (Some(Ok(url)), Some(key)) = (url, location.secret_str("api_key")) else {
        tracing::error!(
            location.id = location_id,
            "peer location lacks a valid remote_instance_url or api_key"
        );
        return Err(StreamError::StorageUnavailable);
    };
    let key = SecretString::from(key.to_owned());
    PeerClient::with_http(state.http.clone(), &url, key, &state.peer).map_err(|e| {
        tracing::error!(location.id = location_id, error = %e, "peer location is unusable");
        match e {
            PeerError::InternalAddress(_) | PeerError::HttpsRequired(_) => {
                StreamError::PeerAddressRefused
            }
            _ => StreamError::StorageUnavailable,
        }
    })
}

fn forwarded_headers(headers: &HeaderMap, ranges: Option<&RangeSet>) -> HeaderMap {
    let mut forwarded = HeaderMap::new();
    if let Some(Ok(value)) = ranges.map(|r| HeaderValue::try_from(r.to_string())) {
        forwarded.insert(header::RANGE, value);
    }
    for name in FORWARDED_REQUEST {
        for value in headers.get_all(&name) {
            forwarded.append(name.clone(), value.clone());
        }
    }
    forwarded
}

pub(crate) fn peer_failed(err: &PeerError, client: &PeerClient) -> StreamError {
    let peer = redact_url(client.base_url());
    match err {
        PeerError::Timeout { .. } => {
            tracing::warn!(peer.url = %peer, error = %err, "peer timed out");
            StreamError::PeerTimeout
        }
        PeerError::Unreachable { .. } => {
            tracing::warn!(peer.url = %peer, error = %err, "peer unreachable");
            StreamError::PeerUnreachable
        }
        PeerError::InternalAddress(_) | PeerError::HttpsRequired(_) => {
            tracing::error!(peer.url = %peer, error = %err, "peer address refused");
            StreamError::PeerAddressRefused
        }
        _ => {
            tracing::error!(peer.url = %peer, error = %err, "peer request failed");
            StreamError::PeerError
        }
    }
}

/// Whether the peer's answer is one we relay, and if not, what we answer instead.
fn accept_status(
    status: StatusCode,
    ranges: Option<&RangeSet>,
    headers: &HeaderMap,
    client: &PeerClient,
) -> Result<(), StreamError> {
    let peer = redact_url(client.base_url());
    match status {
        // A 200 to a range request is a peer ignoring the range, which §14.2 allows: the
        // whole video is relayed as the peer sent it.
        StatusCode::OK | StatusCode::NOT_MODIFIED => Ok(()),
        StatusCode::PARTIAL_CONTENT => {
            if partial_answer_fits(ranges, headers) {
                return Ok(());
            }
            tracing::error!(
                peer.url = %peer,
                asked = ranges.map(|r| r.to_string()),
                answered = ?headers.get(header::CONTENT_RANGE),
                content_type = ?headers.get(header::CONTENT_TYPE),
                "peer sent a range we did not ask for"
            );
            Err(StreamError::PeerError)
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let size = headers
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes */"))
                .and_then(|size| size.parse().ok());
            Err(StreamError::RangeNotSatisfiable { size })
        }
        StatusCode::PRECONDITION_FAILED => Err(StreamError::PreconditionFailed),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            tracing::error!(peer.url = %peer, status = status.as_u16(), "peer refused our key");
            Err(StreamError::PeerRefused)
        }
        StatusCode::NOT_FOUND => {
            tracing::warn!(peer.url = %peer, "peer no longer has the video");
            Err(StreamError::FileMissing)
        }
        _ => {
            tracing::warn!(peer.url = %peer, status = status.as_u16(), "peer failed");
            Err(StreamError::PeerError)
        }
    }
}

/// Whether a 206 answers what we asked: one part within our range set, or, for several
/// ranges, a `multipart/byteranges` body, relayed as it is (the parts inside are the
/// peer's to frame; the client reads their own `Content-Range`s).
fn partial_answer_fits(ranges: Option<&RangeSet>, headers: &HeaderMap) -> bool {
    let Some(ranges) = ranges else {
        // We asked for no range: a partial answer is not what we asked for.
        return false;
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let multipart = content_type.is_some_and(|t| {
        t.trim_start().get(..20).is_some_and(|p| p.eq_ignore_ascii_case("multipart/byteranges"))
    });
    if multipart {
        return ranges.single().is_none() && !headers.contains_key(header::CONTENT_RANGE);
    }
    let answered = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ContentRange::parse);
    answered.is_some_and(|answered| {
        // `last >= first` once parsed; the length must be what Content-Range describes.
        let described = (answered.last - answered.first).checked_add(1);
        ranges.is_answered_by(answered)
            && content_length(headers).is_none_or(|n| described == Some(n))
    })
}

/// How many bytes the relayed body holds. A peer must say so with `Content-Length`: the
/// same length goes to our client, and a body that would run past it is cut by the HTTP
/// client there, so an endless body costs nothing. A body of unannounced length is
/// refused rather than relayed open-ended.
fn body_length(
    method: &Method,
    upstream: &reqwest::Response,
    client: &PeerClient,
) -> Result<Option<u64>, StreamError> {
    if method == Method::HEAD || upstream.status() == StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    match content_length(upstream.headers()) {
        Some(length) => Ok(Some(length)),
        None => {
            tracing::error!(
                peer.url = %redact_url(client.base_url()),
                status = upstream.status().as_u16(),
                "peer sent a body without Content-Length"
            );
            Err(StreamError::PeerError)
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok()?.parse().ok(),
        _ => None,
    }
}

/// The peer's status, the headers that describe the bytes, and the bytes as they come.
/// Dropping the answer (the client went away) drops the peer's response and with it the
/// connection to the peer, at once.
fn relay(
    upstream: reqwest::Response,
    video_id: i64,
    method: &Method,
    length: Option<u64>,
) -> Response {
    let mut response = Response::builder().status(upstream.status());
    for name in RELAYED_RESPONSE {
        for value in upstream.headers().get_all(&name) {
            response = response.header(name.clone(), value.clone());
        }
    }
    if method == Method::HEAD || upstream.status() == StatusCode::NOT_MODIFIED {
        return response.body(Body::empty());
    }
    // Read as the client reads: a slow client slows the peer, so memory stays bounded.
    let bytes = velour_peer::in_small_pieces(upstream.bytes_stream());
    let bytes = bytes.map_err(std::io::Error::other);
    response.body(Body::from_bytes_stream(MeteredStream::new(bytes, video_id, length)))
}
