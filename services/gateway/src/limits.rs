//! Request bodies are bounded: the API only takes small JSON documents, so a client cannot
//! make a gateway hold more than this, declared or not.

use crate::error::{ApiError, ErrorBody};
use futures_util::{StreamExt, TryStreamExt};
use poem::{Body, Endpoint, IntoResponse, Request, Response};
use poem_openapi::payload::Json;

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(Json(ErrorBody {
        code: "payload-too-large".to_owned(),
        error: format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
    }))
}

/// Refuses a declared length over the limit at once, and cuts off an undeclared
/// (chunked) body that runs past it.
pub async fn limit_body<E: Endpoint>(ep: E, mut req: Request) -> poem::Result<Response> {
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Ok(too_large().into_response());
    }
    if declared.is_none() {
        let mut seen: u64 = 0;
        let limited =
            req.take_body().into_bytes_stream().map_err(std::io::Error::other).map(move |chunk| {
                let chunk = chunk?;
                seen = seen.saturating_add(chunk.len() as u64);
                if seen > MAX_BODY_BYTES {
                    return Err(std::io::Error::other("request body too large"));
                }
                Ok(chunk)
            });
        req.set_body(Body::from_bytes_stream(limited));
    }
    ep.call(req).await.map(IntoResponse::into_response)
}
