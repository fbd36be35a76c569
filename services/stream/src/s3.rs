//! Videos in an S3 bucket: the client's range goes to a ranged `GetObject`, and the object's
//! body is streamed through a chunk at a time, never held whole.

use crate::error::StreamError;
use crate::header_str;
use crate::metered::MeteredStream;
use poem::http::{HeaderMap, Method, StatusCode, header};
use poem::{Body, Request, Response};
use std::path::Path;
use tokio_util::io::ReaderStream;
use velour_db::catalog::VideoRow;
use velour_db::locations::LocationWithSecrets;
use velour_storage::s3::aws_sdk_s3::Client;
use velour_storage::s3::aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use velour_storage::s3::{S3Error, S3Settings};
use velour_storage::{ByteRange, ContentRange, content_type_for, unsatisfied_content_range};

/// Bytes read from the object per chunk of the streamed body.
const CHUNK_BYTES: usize = 64 * 1024;

/// What the object's answer says about its bytes.
struct ObjectHead {
    length: u64,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Answers a GET or HEAD for a video stored in a bucket.
pub(crate) async fn serve(
    video: &VideoRow,
    location: &LocationWithSecrets,
    req: &Request,
) -> Result<Response, StreamError> {
    let location_id = location.location.id;
    let settings = S3Settings::from_stored(&location.location.configuration.0, &location.secrets.0)
        .map_err(|e| {
            tracing::error!(location.id = location_id, error = %e, "bucket location is unusable");
            StreamError::StorageUnavailable
        })?;
    // TODO(#3): keep one client per location instead of one per request (each has its own
    // connection pool, so every request opens a new connection to the store).
    let client = settings.client();
    let range = single_range(req.headers());
    let key = video.source_key.as_str();

    if req.method() == Method::HEAD {
        return head(&client, &settings, key, range, location_id).await;
    }

    // TODO(#3): pass If-None-Match and If-Modified-Since on to the store and answer its
    // 304; until then a cached copy of a bucket's video is always sent again in full.

    let mut request = client.get_object().bucket(&settings.bucket).key(key);
    if let Some(range) = range {
        request = request.range(range.to_string());
    }
    let object = match request.send().await {
        Ok(object) => object,
        Err(err) => {
            let err = S3Error::from_sdk(&err);
            return Err(get_failed(&client, &settings, key, &err, location_id).await);
        }
    };

    let head = ObjectHead {
        length: object.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        etag: object.e_tag().map(str::to_owned),
        last_modified: object.last_modified().and_then(http_date),
    };
    let answered = object.content_range().and_then(ContentRange::parse);
    let partial = match (range, answered) {
        (Some(range), Some(answered)) if range.is_answered_by(answered) => Some(answered),
        // A store that ignores a range sends the whole object: that is a 200, not a 206.
        (_, None) => None,
        (range, Some(answered)) => {
            tracing::error!(
                location.id = location_id,
                asked = range.map(|r| r.to_string()),
                answered = ?answered,
                "the store sent a range we did not ask for"
            );
            return Err(StreamError::StorageUnavailable);
        }
    };

    let response = headers_for(key, &head, partial.map(|p| content_range_value(&p)));
    let stream = ReaderStream::with_capacity(object.body.into_async_read(), CHUNK_BYTES);
    tracing::debug!(bytes = head.length, partial = partial.is_some(), "stream started");
    let metered = MeteredStream::new(stream, video.id, Some(head.length));
    Ok(response.body(Body::from_bytes_stream(metered)))
}

/// The request's one range. Several ranges are answered with the whole object (§14.2
/// allows it; S3 would do the same). With `If-Range` the whole object is sent as well:
/// the store cannot compare it for us, and a full answer is always a correct one (§13.1.5).
fn single_range(headers: &HeaderMap) -> Option<ByteRange> {
    if headers.contains_key(header::IF_RANGE) {
        return None;
    }
    header_str(headers, &header::RANGE).and_then(ByteRange::parse)
}

/// HEAD: the object's size from `HeadObject`, and the range resolved against it here.
async fn head(
    client: &Client,
    settings: &S3Settings,
    key: &str,
    range: Option<ByteRange>,
    location_id: i64,
) -> Result<Response, StreamError> {
    let object = client
        .head_object()
        .bucket(&settings.bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| storage_failed(&S3Error::from_sdk(&e), location_id))?;
    let size = object.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let etag = object.e_tag().map(str::to_owned);
    let last_modified = object.last_modified().and_then(http_date);

    let span = match range.map(|r| r.resolve(size)) {
        Some(Err(_)) => return Err(StreamError::RangeNotSatisfiable { size: Some(size) }),
        Some(Ok(span)) => span,
        None => None,
    };
    let (length, content_range) = match span {
        Some(span) => (span.len(), Some(span.content_range(size))),
        None => (size, None),
    };
    let head = ObjectHead { length, etag, last_modified };
    Ok(headers_for(key, &head, content_range).body(Body::empty()))
}

/// The status and headers of a 200 or 206.
fn headers_for(
    key: &str,
    head: &ObjectHead,
    content_range: Option<String>,
) -> poem::ResponseBuilder {
    let mut response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .content_type(content_type_for(Path::new(key)))
        // Set explicitly, so hyper sends it instead of falling back to chunked encoding.
        .header(header::CONTENT_LENGTH, head.length);
    if let Some(etag) = &head.etag {
        response = response.header(header::ETAG, etag);
    }
    if let Some(date) = &head.last_modified {
        response = response.header(header::LAST_MODIFIED, date);
    }
    match content_range {
        Some(value) => {
            response.status(StatusCode::PARTIAL_CONTENT).header(header::CONTENT_RANGE, value)
        }
        None => response.status(StatusCode::OK),
    }
}

fn content_range_value(range: &ContentRange) -> String {
    match range.complete_length {
        Some(size) => format!("bytes {}-{}/{size}", range.first, range.last),
        None => format!("bytes {}-{}/*", range.first, range.last),
    }
}

fn http_date(date: &DateTime) -> Option<String> {
    date.fmt(DateTimeFormat::HttpDate).ok()
}

/// A failed `GetObject`. An unsatisfiable range is a 416 that names the object's size,
/// which the store's error does not carry: one `HeadObject` finds it.
async fn get_failed(
    client: &Client,
    settings: &S3Settings,
    key: &str,
    err: &S3Error,
    location_id: i64,
) -> StreamError {
    if *err != S3Error::InvalidRange {
        return storage_failed(err, location_id);
    }
    let head = client.head_object().bucket(&settings.bucket).key(key).send().await;
    let size = head.ok().and_then(|h| h.content_length()).and_then(|n| u64::try_from(n).ok());
    tracing::debug!(size, content_range = size.map(unsatisfied_content_range), "range refused");
    StreamError::RangeNotSatisfiable { size }
}

/// Logs why the store failed and picks what the client is told.
fn storage_failed(err: &S3Error, location_id: i64) -> StreamError {
    match err {
        S3Error::NotFound(_) => {
            tracing::warn!(location.id = location_id, error = %err, "video object missing");
            StreamError::FileMissing
        }
        S3Error::InvalidRange => StreamError::RangeNotSatisfiable { size: None },
        S3Error::AccessDenied(_) | S3Error::Unreachable(_) | S3Error::Failed(_) => {
            tracing::error!(location.id = location_id, error = %err, "bucket unavailable");
            StreamError::StorageUnavailable
        }
    }
}
