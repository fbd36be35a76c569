//! Videos in an S3 bucket: the client's range goes to a ranged `GetObject`, and the object's
//! body is streamed through a chunk at a time, never held whole.

use crate::error::StreamError;
use crate::metered::MeteredStream;
use crate::{header_str, requested_ranges};
use poem::http::{HeaderMap, Method, StatusCode, header};
use poem::{Body, Request, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::io::ReaderStream;
use velour_db::catalog::VideoRow;
use velour_db::locations::LocationWithSecrets;
use velour_storage::s3::aws_sdk_s3::Client;
use velour_storage::s3::aws_sdk_s3::operation::get_object::GetObjectOutput;
use velour_storage::s3::aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use velour_storage::s3::{S3Error, S3Settings};
use velour_storage::{
    ByteRange, ContentRange, Multipart, RangePlan, RangeSet, ResolvedRange, Unsatisfiable,
    Validators, unsatisfied_content_range,
};

/// Bytes read from the object per chunk of the streamed body.
const CHUNK_BYTES: usize = 64 * 1024;

/// What the object's answer says about its bytes.
struct ObjectHead {
    length: u64,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// One S3 client per bucket location, shared by every request to it: each client has its
/// own connection pool, so a client per request would open a connection per request. A
/// location whose settings changed gets a new client.
#[derive(Clone, Default)]
pub(crate) struct S3Clients {
    by_location: Arc<Mutex<HashMap<i64, (S3Settings, Client)>>>,
}

impl S3Clients {
    fn client_for(&self, location_id: i64, settings: &S3Settings) -> Client {
        // A poisoned lock only means another request panicked while holding it; the map
        // itself is still whole.
        let mut clients = self.by_location.lock().unwrap_or_else(PoisonError::into_inner);
        match clients.get(&location_id) {
            Some((known, client)) if known == settings => client.clone(),
            _ => {
                let client = settings.client();
                clients.insert(location_id, (settings.clone(), client.clone()));
                client
            }
        }
    }
}

/// Answers a GET or HEAD for a video stored in a bucket.
pub(crate) async fn serve(
    clients: &S3Clients,
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
    let client = clients.client_for(location_id, &settings);
    let object = Object {
        client: &client,
        settings: &settings,
        key: &video.source_key,
        content_type: crate::video_content_type(video),
        location_id,
    };
    let headers = req.headers();
    let mut ranges = requested_ranges(headers);

    if req.method() == Method::HEAD {
        return head(&object, ranges, headers).await;
    }

    // A conditional request, or one for several ranges, is decided against the object's
    // current validators and size, read first with `HeadObject` (§13.2.2). What is then
    // read is asked on the condition that the object is still that one (`If-Match`), so a
    // range is never cut from a newer version than the one decided on (§13.1.5).
    let several = ranges.as_ref().is_some_and(|set| set.single().is_none());
    let mut range = ranges.as_ref().and_then(RangeSet::single);
    let mut expected_etag = None;
    if several || is_conditional(headers) {
        let (size, validators) = object.validators().await?;
        check_preconditions(&validators, headers)?;
        let if_none_match = header_str(headers, &header::IF_NONE_MATCH);
        let if_modified_since = header_str(headers, &header::IF_MODIFIED_SINCE);
        if validators.is_not_modified(if_none_match, if_modified_since) {
            return Ok(not_modified(&validators));
        }
        if !validators.range_is_current(header_str(headers, &header::IF_RANGE)) {
            ranges = None;
            range = None;
        }
        // S3 answers several ranges with the whole object, so they are planned here as
        // for a local file: merged into one ranged read when they touch, otherwise one
        // ranged read per part (at most `MAX_PARTS`) framed as `multipart/byteranges`.
        if let Some(set) = ranges.as_ref().filter(|set| set.single().is_none()) {
            match set.resolve(size) {
                Err(Unsatisfiable) => {
                    return Err(StreamError::RangeNotSatisfiable { size: Some(size) });
                }
                Ok(RangePlan::Full) => range = None,
                Ok(RangePlan::Single(span)) => {
                    range = Some(ByteRange::Closed { first: span.start, last: span.end });
                }
                Ok(RangePlan::Multipart(parts)) => {
                    return Ok(multipart(&object, parts, size, &validators, video.id));
                }
            }
        }
        if range.is_some() {
            expected_etag = Some(validators.etag().to_owned());
        }
    }

    let got = match object.get(range, expected_etag.as_deref()).await {
        // It changed between the two requests: the whole new object is a correct answer.
        Err(S3Error::PreconditionFailed) => {
            range = None;
            object.get(None, None).await
        }
        other => other,
    };
    let got = match got {
        Ok(got) => got,
        Err(err) => return Err(get_failed(&object, &err).await),
    };

    let head = ObjectHead {
        length: got.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        etag: got.e_tag().map(str::to_owned),
        last_modified: got.last_modified().and_then(http_date),
    };
    let answered = got.content_range().and_then(ContentRange::parse);
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

    let response =
        headers_for(object.content_type, &head, partial.map(|p| content_range_value(&p)));
    let stream = ReaderStream::with_capacity(got.body.into_async_read(), CHUNK_BYTES);
    tracing::debug!(bytes = head.length, partial = partial.is_some(), "stream started");
    let metered = MeteredStream::new(stream, video.id, Some(head.length));
    Ok(response.body(Body::from_bytes_stream(metered)))
}

/// One object of a bucket location.
struct Object<'a> {
    client: &'a Client,
    settings: &'a S3Settings,
    key: &'a str,
    content_type: &'static str,
    location_id: i64,
}

impl Object<'_> {
    /// The object's size and validators, from `HeadObject`.
    async fn validators(&self) -> Result<(u64, Validators), StreamError> {
        let object = self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(self.key)
            .send()
            .await
            .map_err(|e| storage_failed(&S3Error::from_sdk(&e), self.location_id))?;
        let size = object.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let modified = object
            .last_modified()
            .and_then(|t| std::time::SystemTime::try_from(*t).ok())
            .unwrap_or(std::time::UNIX_EPOCH);
        // A store that sends no ETag gets an empty one, which no client's tag matches.
        let etag = object.e_tag().unwrap_or("\"\"");
        Ok((size, Validators::from_store(etag, modified)))
    }

    /// `GetObject`, for `range` if any, and only while the object's ETag is `if_match`.
    async fn get(
        &self,
        range: Option<ByteRange>,
        if_match: Option<&str>,
    ) -> Result<GetObjectOutput, S3Error> {
        let mut request = self.client.get_object().bucket(&self.settings.bucket).key(self.key);
        if let Some(range) = range {
            request = request.range(range.to_string());
        }
        if let Some(etag) = if_match {
            request = request.if_match(etag);
        }
        request.send().await.map_err(|e| S3Error::from_sdk(&e))
    }
}

/// §13.2.2 steps 1 and 2: a failed `If-Match` or `If-Unmodified-Since` is a 412.
fn check_preconditions(validators: &Validators, headers: &HeaderMap) -> Result<(), StreamError> {
    let if_match = header_str(headers, &header::IF_MATCH);
    let if_unmodified_since = header_str(headers, &header::IF_UNMODIFIED_SINCE);
    if validators.preconditions_hold(if_match, if_unmodified_since) {
        Ok(())
    } else {
        Err(StreamError::PreconditionFailed)
    }
}

fn is_conditional(headers: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

fn not_modified(validators: &Validators) -> Response {
    Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header(header::ETAG, validators.etag())
        .header(header::LAST_MODIFIED, validators.last_modified())
        .finish()
}

/// HEAD: the object's size and validators from `HeadObject`, the conditions and the ranges
/// decided against them here, as GET would.
async fn head(
    object: &Object<'_>,
    ranges: Option<RangeSet>,
    headers: &HeaderMap,
) -> Result<Response, StreamError> {
    let (size, validators) = object.validators().await?;
    check_preconditions(&validators, headers)?;
    let if_none_match = header_str(headers, &header::IF_NONE_MATCH);
    let if_modified_since = header_str(headers, &header::IF_MODIFIED_SINCE);
    if validators.is_not_modified(if_none_match, if_modified_since) {
        return Ok(not_modified(&validators));
    }
    let if_range = header_str(headers, &header::IF_RANGE);
    let plan = match ranges.filter(|_| validators.range_is_current(if_range)) {
        Some(set) => set
            .resolve(size)
            .map_err(|Unsatisfiable| StreamError::RangeNotSatisfiable { size: Some(size) })?,
        None => RangePlan::Full,
    };
    let head = |length| ObjectHead {
        length,
        etag: Some(validators.etag().to_owned()),
        last_modified: Some(validators.last_modified()),
    };
    let response = match plan {
        RangePlan::Full => headers_for(object.content_type, &head(size), None),
        RangePlan::Single(span) => {
            headers_for(object.content_type, &head(span.len()), Some(span.content_range(size)))
        }
        RangePlan::Multipart(parts) => {
            let multipart = Multipart::new(parts, object.content_type, size);
            multipart_headers(&multipart, &validators)
        }
    };
    Ok(response.body(Body::empty()))
}

/// The status and headers of a `multipart/byteranges` answer.
fn multipart_headers(multipart: &Multipart, validators: &Validators) -> poem::ResponseBuilder {
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, multipart.content_type())
        .header(header::CONTENT_LENGTH, multipart.content_length())
        .header(header::ETAG, validators.etag())
        .header(header::LAST_MODIFIED, validators.last_modified())
}

/// A `multipart/byteranges` answer whose parts are read one after another, each with its
/// own ranged `GetObject` on the condition that the object is still the one whose
/// validators the headers announce. An object replaced between two parts ends the body
/// early (the client sees a short answer) rather than mixing two versions.
fn multipart(
    object: &Object<'_>,
    parts: Vec<ResolvedRange>,
    size: u64,
    validators: &Validators,
    video_id: i64,
) -> Response {
    let multipart = Multipart::new(parts, object.content_type, size);
    let length = multipart.content_length();
    let response = multipart_headers(&multipart, validators);
    let reader = PartReader {
        client: object.client.clone(),
        bucket: object.settings.bucket.clone(),
        key: object.key.to_owned(),
        etag: validators.etag().to_owned(),
        location_id: object.location_id,
    };
    let body = multipart.into_stream(move |part| reader.clone().read(part));
    tracing::debug!(bytes = length, "multipart stream started");
    response.body(Body::from_bytes_stream(MeteredStream::new(body, video_id, Some(length))))
}

/// Reads the parts of a multipart answer from one version of one object.
#[derive(Clone)]
struct PartReader {
    client: Client,
    bucket: String,
    key: String,
    etag: String,
    location_id: i64,
}

impl PartReader {
    async fn read(
        self,
        part: ResolvedRange,
    ) -> std::io::Result<ReaderStream<impl tokio::io::AsyncRead + use<>>> {
        let wanted = ByteRange::Closed { first: part.start, last: part.end };
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(wanted.to_string())
            .if_match(&self.etag)
            .send()
            .await
            .map_err(|e| {
                let err = S3Error::from_sdk(&e);
                tracing::warn!(location.id = self.location_id, error = %err, "part read failed");
                std::io::Error::other(err)
            })?;
        let answered = got.content_range().and_then(ContentRange::parse);
        if !answered.is_some_and(|a| a.first == part.start && a.last == part.end) {
            tracing::error!(
                location.id = self.location_id,
                asked = %wanted,
                answered = ?answered,
                "the store sent another range than the part asked"
            );
            return Err(std::io::Error::other("the store sent another range than asked"));
        }
        Ok(ReaderStream::with_capacity(got.body.into_async_read(), CHUNK_BYTES))
    }
}

/// The status and headers of a 200 or 206.
fn headers_for(
    content_type: &'static str,
    head: &ObjectHead,
    content_range: Option<String>,
) -> poem::ResponseBuilder {
    let mut response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .content_type(content_type)
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
async fn get_failed(object: &Object<'_>, err: &S3Error) -> StreamError {
    if *err != S3Error::InvalidRange {
        return storage_failed(err, object.location_id);
    }
    let size = object.validators().await.ok().map(|(size, _)| size);
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
        S3Error::AccessDenied(_)
        | S3Error::Unreachable(_)
        | S3Error::PreconditionFailed
        | S3Error::Failed(_) => {
            tracing::error!(location.id = location_id, error = %err, "bucket unavailable");
            StreamError::StorageUnavailable
        }
    }
}
