//! Who is asking: the `Authorization: Bearer KEY` of every stream request.

use crate::error::StreamError;
use poem::http::{HeaderMap, header};
use sqlx::PgPool;
use velour_db::keys::{self, AuthenticatedKey};

/// The caller's key, which must exist, be active and allow streaming.
pub(crate) async fn require_stream(
    pool: &PgPool,
    headers: &HeaderMap,
) -> Result<AuthenticatedKey, StreamError> {
    let presented = bearer_token(headers).ok_or(StreamError::Unauthorized)?;
    let key = keys::authenticate(pool, presented)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not check an API key");
            StreamError::Internal
        })?
        .ok_or(StreamError::Unauthorized)?;
    if !key.can_stream {
        tracing::info!(api_key.id = key.id, "key without the stream permission refused");
        return Err(StreamError::Forbidden);
    }
    Ok(key)
}

/// The token of a `Bearer` credential (RFC 6750 §2.1); the scheme is case-insensitive.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_empty_bearer_token_is_taken() {
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer   abc ", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
            ("abc", None),
        ];
        for (value, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer_token(&headers), expected, "{value:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
