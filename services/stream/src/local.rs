//! Videos in a local folder: ranges, validators and the bytes, straight from the disk.

use crate::error::StreamError;
use crate::metered::MeteredStream;
use crate::{header_str, requested_ranges, video_content_type};
use futures_util::StreamExt;
use poem::http::{HeaderMap, Method, StatusCode, header};
use poem::{Request, Response};
use std::path::Path;
use velour_db::catalog::VideoRow;
use velour_db::locations::LocationWithSecrets;
use velour_storage::{LocalError, LocalFile, Multipart, RangePlan, ResolvedRange, Validators};

/// Answers a GET or HEAD for a video stored in a local folder.
pub(crate) async fn serve(
    video: &VideoRow,
    location: &LocationWithSecrets,
    req: &Request,
) -> Result<Response, StreamError> {
    let Some(root) = location.location.config_str("path") else {
        tracing::error!(location.id = location.location.id, "local location has no path");
        return Err(StreamError::StorageUnavailable);
    };
    let file = LocalFile::open(Path::new(root), &video.source_key)
        .await
        .map_err(|e| open_failed(&e, location.location.id))?;

    let size = file.size();
    let validators = Validators::for_file(size, file.modified());
    let headers = req.headers();
    // §13.2.2: preconditions first, then the conditions that answer 304.
    let if_match = header_str(headers, &header::IF_MATCH);
    if !validators.preconditions_hold(if_match, header_str(headers, &header::IF_UNMODIFIED_SINCE)) {
        return Err(StreamError::PreconditionFailed);
    }
    if validators.is_not_modified(
        header_str(headers, &header::IF_NONE_MATCH),
        header_str(headers, &header::IF_MODIFIED_SINCE),
    ) {
        return Ok(not_modified(&validators));
    }
    let plan = plan_to_send(headers, &validators, size)?;
    let content_type = video_content_type(video);

    let response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, validators.etag())
        .header(header::LAST_MODIFIED, validators.last_modified());
    let (response, length, body) = match plan {
        RangePlan::Full => (response.status(StatusCode::OK), size, Body::Whole),
        RangePlan::Single(range) => (
            response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, range.content_range(size)),
            range.len(),
            Body::Range(range),
        ),
        RangePlan::Multipart(parts) => {
            let multipart = Multipart::new(parts, content_type, size);
            let response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_TYPE, multipart.content_type());
            (response, multipart.content_length(), Body::Parts(multipart))
        }
    };
    let response =
        if matches!(body, Body::Parts(_)) { response } else { response.content_type(content_type) };
    // Set explicitly: the body is a stream of unknown length, and hyper sends this header
    // as it is instead of falling back to chunked encoding.
    let response = response.header(header::CONTENT_LENGTH, length);

    // HEAD answers the same headers without reading a byte (RFC 9110 §9.3.2).
    if req.method() == Method::HEAD {
        return Ok(response.body(poem::Body::empty()));
    }
    tracing::debug!(bytes = length, "stream started");
    // On a plain HTTP/1.1 connection the kernel sends the bytes from the page cache
    // (`sendfile`, as nginx does); elsewhere they are read into buffers and written.
    let files = req.extensions().get::<velour_http::FileSender>().cloned();
    let stream = match body {
        Body::Whole => one_range(file, None, files),
        Body::Range(range) => one_range(file, Some(range), files),
        Body::Parts(multipart) => file.into_multipart_stream(multipart).boxed(),
    };
    let metered = MeteredStream::new(stream, video.id, Some(length));
    Ok(response.body(poem::Body::from_bytes_stream(metered)))
}

/// The bytes of `range` (the whole file without one): regions the connection sends from
/// the file itself when it offers `files`, read chunks otherwise.
fn one_range(
    file: LocalFile,
    range: Option<ResolvedRange>,
    files: Option<velour_http::FileSender>,
) -> futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    match files {
        Some(files) => {
            let region = move |file, offset, len| files.region(file, offset, len);
            file.into_regions(range, velour_http::MAX_REGION, region).boxed()
        }
        None => file.into_stream(range).boxed(),
    }
}

/// What the body holds, decided before the headers are sent.
enum Body {
    Whole,
    Range(ResolvedRange),
    Parts(Multipart),
}

/// What to send for the request's ranges. A `Range` counts only when `If-Range` (if any)
/// names the current file (RFC 9110 §13.1.5); otherwise, or without one, the whole file.
fn plan_to_send(
    headers: &HeaderMap,
    validators: &Validators,
    size: u64,
) -> Result<RangePlan, StreamError> {
    let Some(ranges) = requested_ranges(headers) else {
        return Ok(RangePlan::Full);
    };
    if !validators.range_is_current(header_str(headers, &header::IF_RANGE)) {
        return Ok(RangePlan::Full);
    }
    ranges.resolve(size).map_err(|_| StreamError::RangeNotSatisfiable { size: Some(size) })
}

fn not_modified(validators: &Validators) -> Response {
    Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header(header::ETAG, validators.etag())
        .header(header::LAST_MODIFIED, validators.last_modified())
        .finish()
}

/// Logs why the file could not be opened and picks what the client is told.
fn open_failed(err: &LocalError, location_id: i64) -> StreamError {
    match err {
        LocalError::NotFound(_) | LocalError::NotAFile(_) => {
            tracing::warn!(location.id = location_id, error = %err, "video file missing");
            StreamError::FileMissing
        }
        // A key leading out of the root means a bad catalog row or a planted link: a
        // person must look, and the client learns nothing about the disk.
        LocalError::InvalidKey(_) | LocalError::OutsideRoot { .. } => {
            tracing::error!(location.id = location_id, error = %err, "video path refused");
            StreamError::FileMissing
        }
        LocalError::RootUnavailable { .. } | LocalError::Io { .. } => {
            tracing::error!(location.id = location_id, error = %err, "storage unavailable");
            StreamError::StorageUnavailable
        }
    }
}
