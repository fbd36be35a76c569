//! Video bytes: the gateway checks the caller's key, then relays the request to the stream
//! service and streams its answer back without holding it.

use crate::GatewayState;
use crate::auth::ApiKeyAuth;
use crate::catalog::ApiTags;
use crate::error::{ApiError, ErrorBody};
use futures_util::TryStreamExt;
use poem::Body;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{Binary, Response};
use poem_openapi::{ApiResponse, OpenApi};
use reqwest::header::{self, HeaderMap, HeaderName};

/// How long the stream service may take to start its answer (status and headers).
const STREAM_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Request headers that shape a ranged or conditional read, passed on as they came.
const FORWARDED_REQUEST: [HeaderName; 7] = [
    header::AUTHORIZATION,
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Response headers that describe the bytes; nothing else of the stream service's answer
/// is passed on.
const FORWARDED_RESPONSE: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
];

#[derive(ApiResponse)]
pub enum StreamResponse {
    /// The whole video (no `Range`, or one that was ignored).
    #[oai(status = 200)]
    Full(Binary<Body>),
    /// The requested byte range, described by `Content-Range`.
    #[oai(status = 206)]
    Partial(Binary<Body>),
    /// The caller's cached copy is still current.
    #[oai(status = 304)]
    NotModified,
}

pub struct StreamApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Stream")]
impl StreamApi {
    /// The video's bytes, with HTTP range requests (`Range: bytes=START-END`, open-ended
    /// and suffix ranges). A peer's video plays through this instance like its own.
    #[oai(path = "/videos/:id/stream", method = "get", operation_id = "stream_video")]
    async fn stream(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        request: &poem::Request,
        id: Path<i64>,
    ) -> Result<Response<StreamResponse>, ApiError> {
        auth.require_stream()?;
        relay(&state, reqwest::Method::GET, id.0, request, None).await
    }

    /// The headers `GET` would answer (size, type, ranges), without the bytes.
    #[oai(path = "/videos/:id/stream", method = "head", operation_id = "head_video_stream")]
    async fn stream_head(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        request: &poem::Request,
        id: Path<i64>,
    ) -> Result<Response<StreamResponse>, ApiError> {
        auth.require_stream()?;
        relay(&state, reqwest::Method::HEAD, id.0, request, None).await
    }

    /// The video's thumbnail: a JPEG frame taken at about a tenth of the video, or, for a
    /// peer's video, the image the peer serves. Answers 304 to a current `If-None-Match`
    /// or `If-Modified-Since`; 404 `thumbnail-not-found` while there is none (not made
    /// yet, or a video without a picture).
    #[oai(path = "/videos/:id/thumbnail", method = "get", operation_id = "get_video_thumbnail")]
    async fn thumbnail(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        request: &poem::Request,
        id: Path<i64>,
    ) -> Result<Response<ThumbnailResponse>, ApiError> {
        auth.require_stream()?;
        let relayed =
            relay_to(&state, reqwest::Method::GET, id.0, Target::Thumbnail, request, None).await?;
        let inner = match relayed.status.as_u16() {
            304 => ThumbnailResponse::NotModified,
            _ => ThumbnailResponse::Image(Binary(relayed.body)),
        };
        Ok(relayed.headers.into_iter().fold(Response::new(inner), |r, (n, v)| r.header(n, v)))
    }
}

#[derive(ApiResponse)]
pub enum ThumbnailResponse {
    /// The image; `Content-Type` says which format (ours are JPEG).
    #[oai(status = 200, content_type = "image/jpeg")]
    Image(Binary<Body>),
    /// The caller's cached copy is still current.
    #[oai(status = 304)]
    NotModified,
}

/// What the stream service is asked for.
#[derive(Clone, Copy, Debug)]
enum Target {
    Stream,
    Thumbnail,
}

/// The stream service's answer, ready to pass on.
struct Relayed {
    status: reqwest::StatusCode,
    headers: Vec<(HeaderName, reqwest::header::HeaderValue)>,
    body: Body,
}

/// Relays a stream request. `signed_query` is a signed URL's query, passed on in place of
/// the caller's `Authorization` (a browser sends none, and any it sent is not relayed).
pub(crate) async fn relay(
    state: &GatewayState,
    method: reqwest::Method,
    id: i64,
    request: &poem::Request,
    signed_query: Option<&str>,
) -> Result<Response<StreamResponse>, ApiError> {
    let relayed = relay_to(state, method, id, Target::Stream, request, signed_query).await?;
    let inner = match relayed.status.as_u16() {
        206 => StreamResponse::Partial(Binary(relayed.body)),
        304 => StreamResponse::NotModified,
        _ => StreamResponse::Full(Binary(relayed.body)),
    };
    Ok(relayed.headers.into_iter().fold(Response::new(inner), |r, (n, v)| r.header(n, v)))
}

async fn relay_to(
    state: &GatewayState,
    method: reqwest::Method,
    id: i64,
    target: Target,
    request: &poem::Request,
    signed_query: Option<&str>,
) -> Result<Relayed, ApiError> {
    let path = match target {
        Target::Stream => format!("api/v1/videos/{id}/stream"),
        Target::Thumbnail => format!("api/v1/videos/{id}/thumbnail"),
    };
    let mut url = state.stream_base_url.join(&path).map_err(|e| ApiError::internal(&e))?;
    url.set_query(signed_query);
    let mut headers = HeaderMap::new();
    for name in FORWARDED_REQUEST {
        if signed_query.is_some() && name == header::AUTHORIZATION {
            continue;
        }
        for value in request.headers().get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }

    velour_telemetry::inject_headers(&mut headers);
    let sent = state.stream_http.request(method, url).headers(headers).send();
    let upstream = match tokio::time::timeout(STREAM_ANSWER_TIMEOUT, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) if !err.is_timeout() => {
            tracing::error!(video.id = id, error = %err, "stream service unreachable");
            return Err(ApiError::unavailable(
                "stream-unavailable",
                "the stream service is unreachable; try again shortly",
            ));
        }
        // No connection, or no answer, in time.
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(video.id = id, "stream service timed out");
            return Err(ApiError::GatewayTimeout(error_json(
                "stream-timeout",
                "the stream service did not answer in time",
            )));
        }
    };

    let status = upstream.status();
    if !(status.is_success() || status == reqwest::StatusCode::NOT_MODIFIED) {
        return Err(relayed_error(upstream).await);
    }

    let headers: Vec<_> = FORWARDED_RESPONSE
        .iter()
        .flat_map(|name| upstream.headers().get_all(name).iter().map(|v| (name.clone(), v.clone())))
        .collect();
    // TODO(#4): relaying reaches ~0.30 of nginx on 1 MiB ranges (target 0.6): every byte is
    // copied in from the stream service, into pieces, and out again (the stream service
    // itself sends with `sendfile`).
    let pieces = velour_peer::in_small_pieces(upstream.bytes_stream());
    let body = Body::from_bytes_stream(pieces.map_err(std::io::Error::other));
    Ok(Relayed { status, headers, body })
}

fn error_json(code: &str, message: &str) -> poem_openapi::payload::Json<ErrorBody> {
    poem_openapi::payload::Json(ErrorBody { code: code.to_owned(), error: message.to_owned() })
}

/// The stream service answers errors in our JSON shape; keep its code and message. An
/// answer that is not (a proxy in between, a crash) becomes a plain 502.
async fn relayed_error(upstream: reqwest::Response) -> ApiError {
    let status = upstream.status();
    let content_range = upstream
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Our error bodies are small; one that claims otherwise is not read at all.
    let small = upstream.content_length().is_some_and(|n| n <= 64 * 1024);
    let body = if small { upstream.bytes().await.unwrap_or_default() } else { Default::default() };
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(relayed) => ApiError::relayed(status, relayed, content_range),
        // A HEAD answer has no body: its status alone says what went wrong.
        Err(_) if body.is_empty() => {
            ApiError::relayed(status, crate::error::status_error(status), content_range)
        }
        Err(_) => {
            tracing::error!(status = status.as_u16(), "stream service answered without JSON");
            ApiError::BadGateway(error_json("stream-error", "the stream service failed"))
        }
    }
}
