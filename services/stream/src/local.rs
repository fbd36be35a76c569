//! Videos in a local folder: ranges, validators and the bytes, straight from the disk.

use crate::error::StreamError;
use crate::metered::MeteredStream;
use crate::{header_str, requested_range};
use poem::http::{HeaderMap, Method, StatusCode, header};
use poem::{Body, Request, Response};
use std::path::Path;
use velour_db::catalog::VideoRow;
use velour_db::locations::LocationWithSecrets;
use velour_storage::{LocalError, LocalFile, ResolvedRange, Validators};

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
    if validators.is_not_modified(
        header_str(headers, &header::IF_NONE_MATCH),
        header_str(headers, &header::IF_MODIFIED_SINCE),
    ) {
        return Ok(not_modified(&validators));
    }
    let range = range_to_send(headers, &validators, size)?;

    let response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .content_type(file.content_type())
        .header(header::ETAG, validators.etag())
        .header(header::LAST_MODIFIED, validators.last_modified());
    let (response, length) = match range {
        Some(range) => (
            response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, range.content_range(size)),
            range.len(),
        ),
        None => (response.status(StatusCode::OK), size),
    };
    // Set explicitly: the body is a stream of unknown length, and hyper sends this header
    // as it is instead of falling back to chunked encoding.
    let response = response.header(header::CONTENT_LENGTH, length);

    // HEAD answers the same headers without reading a byte (RFC 9110 §9.3.2).
    if req.method() == Method::HEAD {
        return Ok(response.body(Body::empty()));
    }
    let stream =
        file.into_stream(range).await.map_err(|e| open_failed(&e, location.location.id))?;
    tracing::debug!(bytes = length, partial = range.is_some(), "stream started");
    Ok(response.body(Body::from_bytes_stream(MeteredStream::new(stream, video.id, Some(length)))))
}

/// The span to send: `None` for the whole file. A `Range` counts only when `If-Range`
/// (if any) names the current file (RFC 9110 §13.1.5).
fn range_to_send(
    headers: &HeaderMap,
    validators: &Validators,
    size: u64,
) -> Result<Option<ResolvedRange>, StreamError> {
    let Some(range) = requested_range(headers) else {
        return Ok(None);
    };
    if !validators.range_is_current(header_str(headers, &header::IF_RANGE)) {
        return Ok(None);
    }
    range.resolve(size).map_err(|_| StreamError::RangeNotSatisfiable { size: Some(size) })
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
