//! A video's thumbnail: from the asset store for our own videos, from the peer that holds
//! a peer's video (its own thumbnail endpoint, with our key).
//!
//! Thumbnails are small, so they are answered whole: no ranges. They carry validators so
//! that a grid of them revalidates with 304s instead of downloading again.

use crate::error::StreamError;
use crate::{StreamState, auth, header_str, not_found_or_internal};
use futures_util::StreamExt;
use poem::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use poem::{Body, Request, Response};
use serde_json::Value;
use tracing::instrument;
use velour_core::StorageType;
use velour_db::catalog::VideoRow;
use velour_db::locations::LocationWithSecrets;
use velour_storage::Validators;

/// How long a client may show a thumbnail without asking again. Short, because the URL
/// names the video, not the image: a replaced file gets a new thumbnail at the same URL.
const CACHE_CONTROL: &str = "private, max-age=300";

/// The largest thumbnail taken from a peer. Ours are tens of kilobytes; a peer sending
/// more is not sending a thumbnail, and this bound is what we hold in memory.
const MAX_PEER_THUMBNAIL_BYTES: usize = 4 * 1024 * 1024;

/// Validators the caller sent, passed on to a peer as they came.
const FORWARDED_REQUEST: [header::HeaderName; 2] =
    [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

#[instrument(skip_all, fields(video.id = id, http.method = %req.method(), api_key.id))]
pub(crate) async fn serve(
    state: &StreamState,
    id: i64,
    req: &Request,
) -> Result<Response, StreamError> {
    let key = auth::authorize(state, id, req).await?;
    tracing::Span::current().record("api_key.id", key.id);

    let video =
        velour_db::catalog::get_video(&state.pool, id).await.map_err(not_found_or_internal)?;
    let location = velour_db::locations::get_location_with_secrets(
        &state.pool,
        &state.secrets,
        video.storage_location_id,
    )
    .await
    .map_err(not_found_or_internal)?;
    match location.location.kind() {
        Some(StorageType::Velour) => from_peer(state, &video, &location, req).await,
        Some(StorageType::Local | StorageType::S3) => from_store(state, id, req).await,
        None => Err(StreamError::StorageUnavailable),
    }
}

/// Our own thumbnail, as the worker stored it.
async fn from_store(state: &StreamState, id: i64, req: &Request) -> Result<Response, StreamError> {
    let row = velour_db::assets::thumbnail(&state.pool, id)
        .await
        .map_err(not_found_or_internal)?
        .ok_or(StreamError::ThumbnailNotFound)?;
    // 128 bits of the image's SHA-256 make a strong tag: it changes with every new image.
    let digest = row.sha256.get(..32).unwrap_or(&row.sha256);
    let validators = Validators::for_digest(digest, row.updated_at.into());
    let headers = req.headers();
    let if_none_match = header_str(headers, &header::IF_NONE_MATCH);
    let if_modified_since = header_str(headers, &header::IF_MODIFIED_SINCE);
    let described = |status| {
        Response::builder()
            .status(status)
            .header(header::ETAG, validators.etag())
            .header(header::LAST_MODIFIED, validators.last_modified())
            .header(header::CACHE_CONTROL, CACHE_CONTROL)
    };
    if validators.is_not_modified(if_none_match, if_modified_since) {
        return Ok(described(StatusCode::NOT_MODIFIED).finish());
    }
    let answer = described(StatusCode::OK)
        .content_type(row.content_type.as_str())
        .header(header::CONTENT_LENGTH, row.byte_size);
    if req.method() == Method::HEAD {
        return Ok(answer.finish());
    }

    let bytes = match state.assets.get(&row.storage_key).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            tracing::error!(asset.key = row.storage_key, "the asset store lost a thumbnail");
            return Err(StreamError::ThumbnailNotFound);
        }
        Err(err) => {
            tracing::error!(error = %err, "the asset store failed");
            return Err(StreamError::StorageUnavailable);
        }
    };
    Ok(answer.body(Body::from_bytes(bytes)))
}

/// A peer's thumbnail, fetched from it with our key.
async fn from_peer(
    state: &StreamState,
    video: &VideoRow,
    location: &LocationWithSecrets,
    req: &Request,
) -> Result<Response, StreamError> {
    let client = crate::peer::peer_client(state, location)?;
    let Some(remote_id) = video.video_metadata.0.get("remote_video_id").and_then(Value::as_i64)
    else {
        tracing::error!(location.id = location.location.id, "peer video has no remote_video_id");
        return Err(StreamError::StorageUnavailable);
    };
    let mut forwarded = HeaderMap::new();
    for name in FORWARDED_REQUEST {
        for value in req.headers().get_all(&name) {
            forwarded.append(name.clone(), value.clone());
        }
    }
    let upstream = client
        .thumbnail(req.method().clone(), remote_id, forwarded)
        .await
        .map_err(|e| crate::peer::peer_failed(&e, &client))?;

    let status = upstream.status();
    let mut answer = Response::builder()
        .header(header::CACHE_CONTROL, CACHE_CONTROL)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    for name in [header::ETAG, header::LAST_MODIFIED] {
        if let Some(value) = upstream.headers().get(&name) {
            answer = answer.header(name, value.clone());
        }
    }
    match status.as_u16() {
        304 => return Ok(answer.status(StatusCode::NOT_MODIFIED).finish()),
        200 => {}
        404 => return Err(StreamError::ThumbnailNotFound),
        401 | 403 => return Err(StreamError::PeerRefused),
        other => {
            tracing::warn!(peer.status = other, "peer failed to send a thumbnail");
            return Err(StreamError::PeerError);
        }
    }
    // Only an image is passed on: anything else from a peer is not shown to our users.
    let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
    let Some(content_type) = content_type.filter(is_image_type) else {
        tracing::warn!("peer sent a thumbnail that is not an image");
        return Err(StreamError::PeerError);
    };
    let answer = answer.status(StatusCode::OK).header(header::CONTENT_TYPE, content_type);
    if req.method() == Method::HEAD {
        let length = upstream.headers().get(header::CONTENT_LENGTH).cloned();
        return Ok(match length {
            Some(length) => answer.header(header::CONTENT_LENGTH, length).finish(),
            None => answer.finish(),
        });
    }
    let body = read_capped(upstream).await?;
    Ok(answer.body(Body::from_bytes(body)))
}

/// Raster formats only: an SVG is a document that may carry script.
fn is_image_type(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "image/jpeg" | "image/png" | "image/webp")
}

/// Reads the peer's image, refusing it as soon as it outgrows the cap.
async fn read_capped(upstream: reqwest::Response) -> Result<bytes::Bytes, StreamError> {
    let too_large = || {
        tracing::warn!(limit = MAX_PEER_THUMBNAIL_BYTES, "peer thumbnail is too large");
        StreamError::PeerError
    };
    if upstream.content_length().is_some_and(|n| n > MAX_PEER_THUMBNAIL_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut chunks = upstream.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::warn!(error = %e, "peer thumbnail body failed");
            if e.is_timeout() { StreamError::PeerTimeout } else { StreamError::PeerError }
        })?;
        if body.len() + chunk.len() > MAX_PEER_THUMBNAIL_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        tracing::warn!("peer sent an empty thumbnail");
        return Err(StreamError::PeerError);
    }
    Ok(body.into())
}
