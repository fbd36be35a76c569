//! Who is asking: the `Authorization: Bearer KEY` of a stream request, or the signed URL
//! (see `velour_core::signing`) a browser's `<video>` element uses instead.

use crate::StreamState;
use crate::error::StreamError;
use poem::Request;
use poem::http::{HeaderMap, header};
use velour_core::signing::{SignatureError, signed_grant};
use velour_db::keys::{self, AuthenticatedKey, KeyRefusal};

/// Who may read `video_id`: the key in `Authorization`, or, without that header, the key
/// a signed URL was issued to. Either must be accepted (not expired, revoked or tied to an
/// inactive federation connection) and allow streaming. A key in the
/// query string is never looked at: URLs end up in logs and browser histories.
pub(crate) async fn authorize(
    state: &StreamState,
    video_id: i64,
    req: &Request,
) -> Result<AuthenticatedKey, StreamError> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        return require_stream(state, req.headers()).await;
    }
    let signed = signed_grant(req.uri().query(), video_id)
        .map_err(|_: SignatureError| StreamError::SignatureInvalid)?;
    let Some((grant, signature)) = signed else {
        return Err(StreamError::Unauthorized);
    };
    let Some(signer) = &state.signer else {
        tracing::warn!("signed URL presented to a stream service without a signing secret");
        return Err(StreamError::SignatureInvalid);
    };
    let now = chrono::Utc::now().timestamp();
    signer.verify(grant, &signature, now).map_err(|e| match e {
        SignatureError::Invalid => StreamError::SignatureInvalid,
        SignatureError::Expired => StreamError::SignatureExpired,
    })?;

    // A revoked or expired key's URLs stop working with it.
    may_stream(keys::find_usable_key(&state.pool, grant.key_id).await)
}

/// The key a lookup found, if there is one, it is accepted and it may stream.
fn may_stream(
    found: Result<Result<AuthenticatedKey, KeyRefusal>, velour_db::DbError>,
) -> Result<AuthenticatedKey, StreamError> {
    let key = found
        .map_err(|e| {
            tracing::error!(error = %e, "could not check an API key");
            StreamError::Internal
        })?
        .map_err(|refusal| match refusal {
            KeyRefusal::Unknown => StreamError::Unauthorized,
            KeyRefusal::Expired => StreamError::KeyExpired,
            KeyRefusal::Revoked => StreamError::KeyRevoked,
            KeyRefusal::Connection(status) => StreamError::ConnectionInactive(status),
        })?;
    if !key.can_stream {
        tracing::info!(api_key.id = key.id, "key without the stream permission refused");
        return Err(StreamError::Forbidden);
    }
    Ok(key)
}

/// The caller's key, which must exist, be active and allow streaming.
async fn require_stream(
    state: &StreamState,
    headers: &HeaderMap,
) -> Result<AuthenticatedKey, StreamError> {
    let presented = bearer_token(headers).ok_or(StreamError::Unauthorized)?;
    may_stream(keys::authenticate(&state.pool, presented).await)
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
