//! The one error type every API operation answers with: a status, a stable machine code
//! and a message meant for people. Causes are logged, never sent.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use velour_core::ConnectionStatus;
use velour_db::DbError;
use velour_db::keys::KeyRefusal;

/// The stable code for a federation connection that is not active, used both when its key
/// is refused and when a scan of its location is.
pub fn connection_code(status: ConnectionStatus) -> &'static str {
    match status {
        ConnectionStatus::Pending => "connection-pending",
        ConnectionStatus::Suspended => "connection-suspended",
        ConnectionStatus::Rejected => "connection-rejected",
        ConnectionStatus::Active => "connection-active",
    }
}

/// The JSON body of every error. `error` keeps the original design's field for peers that
/// read it; `code` is stable and meant for programs.
#[derive(Clone, Debug, PartialEq, Eq, Object, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `not-found` or `range-not-satisfiable`.
    pub code: String,
    /// What went wrong, for a person.
    pub error: String,
}

/// The challenge sent with every 401.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"velour\"";

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed or a parameter is out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No API key, or one that is unknown (`unauthorized`), expired (`key-expired`) or
    /// revoked (`key-revoked`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The key lacks the permission this call needs (`forbidden`), its federation
    /// connection is not active (`connection-pending`, `connection-suspended`,
    /// `connection-rejected`), or federation is turned off (`federation-disabled`).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// Nothing with that id.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with what exists (a duplicate name).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `updated_since` is older than the tombstones this instance keeps
    /// (`cursor-too-old`): some removals since then are forgotten. Read the whole listing
    /// again, without it.
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
    /// The request body is larger than this API accepts.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// This key made more calls than its hourly quota allows (federated keys only). Retry
    /// after `Retry-After` seconds; `RateLimit` and `RateLimit-Policy` follow
    /// draft-ietf-httpapi-ratelimit-headers.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        #[oai(header = "Retry-After")] String,
        #[oai(header = "RateLimit")] String,
        #[oai(header = "RateLimit-Policy")] String,
    ),
    /// `If-Match` or `If-Unmodified-Since` names another version of the video.
    #[oai(status = 412)]
    PreconditionFailed(Json<ErrorBody>),
    /// No part of the requested range lies within the video.
    #[oai(status = 416)]
    RangeNotSatisfiable(Json<ErrorBody>, #[oai(header = "Content-Range")] Option<String>),
    /// Something failed on our side; the cause is in our logs.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A service or peer behind us failed.
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A service we depend on is unavailable right now; try again.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
    /// A service or peer behind us did not answer in time.
    #[oai(status = 504)]
    GatewayTimeout(Json<ErrorBody>),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody { code: code.to_owned(), error: message.into() })
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(body(code, message))
    }

    pub fn unauthorized() -> Self {
        Self::Unauthorized(
            body("unauthorized", "a valid API key is required (Authorization: Bearer KEY)"),
            BEARER_CHALLENGE.to_owned(),
        )
    }

    pub fn forbidden(permission: &str) -> Self {
        Self::Forbidden(body(
            "forbidden",
            format!("this API key does not have the {permission} permission"),
        ))
    }

    /// A refusal with its own code, e.g. `federation-disabled`.
    pub fn forbidden_because(code: &str, message: impl Into<String>) -> Self {
        Self::Forbidden(body(code, message))
    }

    /// A key that was found and not accepted: 401 when the key itself is no longer good
    /// (the holder needs another), 403 when its federation connection is not active (the
    /// holder must ask our administrator).
    pub fn key_refused(refusal: KeyRefusal) -> Self {
        let unauthorized = |code: &str, message: &str| {
            Self::Unauthorized(body(code, message), BEARER_CHALLENGE.to_owned())
        };
        match refusal {
            KeyRefusal::Unknown => Self::unauthorized(),
            KeyRefusal::Expired => unauthorized("key-expired", "this API key has expired"),
            KeyRefusal::Revoked => unauthorized("key-revoked", "this API key has been revoked"),
            KeyRefusal::Connection(status) => Self::forbidden_because(
                connection_code(status),
                format!("this API key's federation connection is {status}"),
            ),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::NotFound(body("not-found", format!("{what} not found")))
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict(body(code, message))
    }

    pub fn gone(code: &str, message: impl Into<String>) -> Self {
        Self::Gone(body(code, message))
    }

    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::Unavailable(body(code, message))
    }

    /// An internal failure: the cause goes to the log, a generic message to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::Internal(body("internal", "an internal error occurred; it has been logged"))
    }

    /// Rebuilds an error that another Velour service answered with, keeping its status,
    /// code and message.
    pub fn relayed(status: StatusCode, relayed: ErrorBody, content_range: Option<String>) -> Self {
        let json = Json(relayed);
        match status.as_u16() {
            400 => Self::BadRequest(json),
            401 => Self::Unauthorized(json, BEARER_CHALLENGE.to_owned()),
            403 => Self::Forbidden(json),
            404 => Self::NotFound(json),
            409 => Self::Conflict(json),
            412 => Self::PreconditionFailed(json),
            416 => Self::RangeNotSatisfiable(json, content_range),
            503 => Self::Unavailable(json),
            504 => Self::GatewayTimeout(json),
            500 => Self::Internal(json),
            _ => Self::BadGateway(json),
        }
    }

    /// Maps a catalog error, naming what was not found.
    pub fn from_db(err: DbError, what: &str) -> Self {
        match err {
            DbError::NotFound => Self::not_found(what),
            DbError::Conflict(message) => Self::conflict("conflict", message),
            DbError::Refused { code, message } => Self::conflict(code, message),
            DbError::Sqlx(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("database pool exhausted");
                Self::unavailable("database-busy", "the catalog is busy; try again shortly")
            }
            other => Self::internal(&other),
        }
    }
}

/// The stable code and a message for a bare status, when no richer error is at hand (a
/// HEAD answer carries no body to relay; a framework error carries only its status).
pub fn status_error(status: StatusCode) -> ErrorBody {
    let (code, message) = match status.as_u16() {
        400 => ("bad-request", "the request is malformed"),
        401 => ("unauthorized", "a valid API key is required (Authorization: Bearer KEY)"),
        403 => ("forbidden", "this API key may not do this"),
        404 => ("not-found", "not found"),
        405 => ("method-not-allowed", "this method is not allowed here"),
        411 => ("length-required", "the request body needs a Content-Length"),
        413 => ("payload-too-large", "the request body is too large"),
        415 => ("unsupported-media-type", "the request body must be JSON (application/json)"),
        412 => ("precondition-failed", "the video is no longer the version the request names"),
        416 => ("range-not-satisfiable", "no part of the requested range is in the video"),
        431 => ("headers-too-large", "the request headers are too large"),
        502 => ("bad-gateway", "a service behind the gateway failed"),
        503 => ("unavailable", "a service behind the gateway is unavailable; try again"),
        504 => ("gateway-timeout", "a service behind the gateway did not answer in time"),
        s if (400..500).contains(&s) => ("bad-request", "the request was refused"),
        _ => ("internal", "an internal error occurred; it has been logged"),
    };
    ErrorBody { code: code.to_owned(), error: message.to_owned() }
}

/// Turns every error that escapes an operation (unknown route, wrong method, a parameter
/// that did not parse, a missing key) into the same JSON shape with a stable code.
pub async fn render_any_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let error = match status {
        // poem-openapi's parse errors say which parameter or field was wrong and why.
        StatusCode::BAD_REQUEST => ApiError::bad_request("bad-request", err.to_string()),
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(),
        StatusCode::NOT_FOUND => ApiError::not_found("route"),
        s if s.is_client_error() => {
            return (s, poem::web::Json(status_error(s))).into_response();
        }
        _ => ApiError::internal(&err),
    };
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_and_code(error: ApiError) -> (u16, String) {
        match error {
            ApiError::Unauthorized(Json(body), challenge) => {
                assert_eq!(challenge, BEARER_CHALLENGE);
                (401, body.code)
            }
            ApiError::Forbidden(Json(body)) => (403, body.code),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refused_keys_get_their_own_status_and_code() {
        let cases = [
            (KeyRefusal::Unknown, 401, "unauthorized"),
            (KeyRefusal::Expired, 401, "key-expired"),
            (KeyRefusal::Revoked, 401, "key-revoked"),
            (KeyRefusal::Connection(ConnectionStatus::Pending), 403, "connection-pending"),
            (KeyRefusal::Connection(ConnectionStatus::Suspended), 403, "connection-suspended"),
            (KeyRefusal::Connection(ConnectionStatus::Rejected), 403, "connection-rejected"),
        ];
        for (refusal, status, code) in cases {
            let got = status_and_code(ApiError::key_refused(refusal));
            assert_eq!(got, (status, code.to_owned()), "{refusal:?}");
        }
    }

    #[test]
    fn refusals_with_a_code_keep_it_as_a_conflict() {
        let refused = DbError::Refused { code: "connection-limit-reached", message: "m".into() };
        match ApiError::from_db(refused, "connection") {
            ApiError::Conflict(Json(body)) => assert_eq!(body.code, "connection-limit-reached"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
