//! Every way a stream request can fail, each with its status, a stable code and a message
//! for people. Causes are logged where they happen; none reaches the client.

use poem::http::{HeaderValue, StatusCode, header};
use poem::web::Json;
use poem::{IntoResponse, Response};
use serde::Serialize;
use velour_core::ConnectionStatus;
use velour_storage::unsatisfied_content_range;

/// The challenge sent with every 401, as the gateway sends it.
pub(crate) const BEARER_CHALLENGE: &str = "Bearer realm=\"velour\"";

/// The JSON body of every error, the shape used across Velour.
#[derive(Debug, Serialize)]
struct ErrorBody {
    code: &'static str,
    error: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamError {
    /// No key, or one that is unknown.
    Unauthorized,
    /// A key past its expiry (a rotated key whose grace period is over, too).
    KeyExpired,
    /// A revoked key.
    KeyRevoked,
    /// A key whose federation connection is not active.
    ConnectionInactive(ConnectionStatus),
    /// A signed URL whose signature does not match (or cannot be read).
    SignatureInvalid,
    /// A signed URL past its expiry.
    SignatureExpired,
    /// The key may not stream.
    Forbidden,
    /// No such video (or no such route).
    NotFound,
    MethodNotAllowed,
    /// The catalog knows the video but its storage does not have the bytes.
    FileMissing,
    /// The video has no thumbnail (not made yet, or it has no picture to take one from).
    ThumbnailNotFound,
    /// `If-Match` or `If-Unmodified-Since` names another version of the video.
    PreconditionFailed,
    /// No byte of the requested range exists; the size goes into `Content-Range`
    /// when known.
    RangeNotSatisfiable {
        size: Option<u64>,
    },
    /// The location is misconfigured or its disk is unavailable.
    StorageUnavailable,
    /// The peer refused our key.
    PeerRefused,
    PeerUnreachable,
    PeerTimeout,
    /// The peer's address is internal and not allowed, or its URL is http:// while
    /// `FEDERATION_REQUIRE_HTTPS` is on: we refused to send the request.
    PeerAddressRefused,
    /// The peer failed, or answered something we cannot relay.
    PeerError,
    Internal,
}

impl StreamError {
    /// Whether the failure is the source's (its peer or storage is down, refuses us or has
    /// lost the file) rather than the request's: another source may then answer.
    pub(crate) fn is_source_failure(self) -> bool {
        matches!(
            self,
            Self::FileMissing
                | Self::StorageUnavailable
                | Self::PeerRefused
                | Self::PeerUnreachable
                | Self::PeerTimeout
                | Self::PeerError
        )
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized
            | Self::KeyExpired
            | Self::KeyRevoked
            | Self::SignatureInvalid
            | Self::SignatureExpired => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::ConnectionInactive(_) => StatusCode::FORBIDDEN,
            Self::NotFound | Self::FileMissing | Self::ThumbnailNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PeerRefused
            | Self::PeerUnreachable
            | Self::PeerAddressRefused
            | Self::PeerError => StatusCode::BAD_GATEWAY,
            Self::PeerTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::KeyExpired => "key-expired",
            Self::KeyRevoked => "key-revoked",
            Self::ConnectionInactive(ConnectionStatus::Pending) => "connection-pending",
            Self::ConnectionInactive(ConnectionStatus::Rejected) => "connection-rejected",
            // Only inactive statuses are refused; an unexpected one reads as suspended.
            Self::ConnectionInactive(_) => "connection-suspended",
            Self::SignatureInvalid => "invalid-signature",
            Self::SignatureExpired => "signature-expired",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::PreconditionFailed => "precondition-failed",
            Self::FileMissing => "video-file-missing",
            Self::ThumbnailNotFound => "thumbnail-not-found",
            Self::RangeNotSatisfiable { .. } => "range-not-satisfiable",
            Self::StorageUnavailable => "storage-unavailable",
            Self::PeerRefused => "peer-refused",
            Self::PeerUnreachable => "peer-unreachable",
            Self::PeerTimeout => "peer-timeout",
            Self::PeerAddressRefused => "peer-address-refused",
            Self::PeerError => "peer-error",
            Self::Internal => "internal",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Unauthorized => "a valid API key is required (Authorization: Bearer KEY)",
            Self::KeyExpired => "this API key has expired",
            Self::KeyRevoked => "this API key has been revoked",
            Self::ConnectionInactive(_) => "this API key's federation connection is not active",
            Self::SignatureInvalid => "the signed URL is not valid; ask for a new one",
            Self::SignatureExpired => "the signed URL has expired; ask for a new one",
            Self::Forbidden => "this API key does not have the stream permission",
            Self::NotFound => "video not found",
            Self::MethodNotAllowed => "only GET and HEAD are allowed here",
            Self::PreconditionFailed => "the video is no longer the version the request names",
            Self::FileMissing => "the video is in the catalog but its file is missing",
            Self::ThumbnailNotFound => "this video has no thumbnail",
            Self::RangeNotSatisfiable { .. } => "the requested range lies outside the video",
            Self::StorageUnavailable => {
                "the storage holding this video is unavailable; an administrator must check it"
            }
            Self::PeerRefused => "the instance holding this video refused our key",
            Self::PeerUnreachable => "the instance holding this video cannot be reached",
            Self::PeerTimeout => "the instance holding this video did not answer in time",
            Self::PeerAddressRefused => {
                "the instance holding this video is at an address this instance may not reach \
                 (an internal network, or plain HTTP); an administrator must check it"
            }
            Self::PeerError => "the instance holding this video failed to send it",
            Self::Internal => "an internal error occurred; it has been logged",
        }
    }
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        let body = ErrorBody { code: self.code(), error: self.message() };
        let mut response = Json(body).into_response();
        response.set_status(self.status());
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized
            | Self::KeyExpired
            | Self::KeyRevoked
            | Self::SignatureInvalid
            | Self::SignatureExpired => {
                headers
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
            }
            Self::RangeNotSatisfiable { size } => {
                headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                let content_range = size.map(unsatisfied_content_range);
                if let Some(Ok(value)) = content_range.map(HeaderValue::try_from) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}

/// Turns the router's own errors (unknown path, wrong method) into our JSON shape.
pub(crate) async fn routing_error(err: poem::Error) -> Response {
    let error = match err.status() {
        StatusCode::NOT_FOUND => StreamError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => StreamError::MethodNotAllowed,
        status => {
            tracing::error!(status = status.as_u16(), error = %err, "request failed");
            StreamError::Internal
        }
    };
    error.into_response()
}
