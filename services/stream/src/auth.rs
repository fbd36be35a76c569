//! Who is asking: the `Authorization: Bearer KEY` of a stream request, or the signed URL
//! (see `velour_core::signing`) a browser's `<video>` element uses instead.

use crate::StreamState;
use crate::error::StreamError;
use poem::Request;
use poem::http::{HeaderMap, header};
use sqlx::PgPool;
use url::form_urlencoded;
use velour_core::signing::{
    EXPIRES_PARAM, KEY_ID_PARAM, SIGNATURE_PARAM, SignatureError, StreamGrant,
};
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
        return require_stream(&state.pool, req.headers()).await;
    }
    let Some((grant, signature)) = signed_grant(req.uri().query(), video_id)? else {
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

/// The grant and signature of a signed URL's query; `None` when the query holds no
/// signature at all, an error when it holds one that cannot be read.
fn signed_grant(
    query: Option<&str>,
    video_id: i64,
) -> Result<Option<(StreamGrant, String)>, StreamError> {
    let (mut expires, mut key_id, mut signature) = (None, None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            EXPIRES_PARAM => &mut expires,
            KEY_ID_PARAM => &mut key_id,
            SIGNATURE_PARAM => &mut signature,
            _ => continue,
        };
        // A parameter given twice is ambiguous: which one did the signer see?
        if slot.replace(value.into_owned()).is_some() {
            return Err(StreamError::SignatureInvalid);
        }
    }
    let Some(signature) = signature else {
        return Ok(None);
    };
    let number = |raw: Option<String>| raw.and_then(|n| n.parse::<i64>().ok());
    let (Some(expires), Some(key_id)) = (number(expires), number(key_id)) else {
        return Err(StreamError::SignatureInvalid);
    };
    Ok(Some((StreamGrant { video_id, key_id, expires }, signature)))
}

/// The caller's key, which must exist, be active and allow streaming.
async fn require_stream(
    pool: &PgPool,
    headers: &HeaderMap,
) -> Result<AuthenticatedKey, StreamError> {
    let presented = bearer_token(headers).ok_or(StreamError::Unauthorized)?;
    may_stream(keys::authenticate(pool, presented).await)
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

    #[test]
    fn a_signed_query_is_read_once_and_strictly() {
        let grant = |expires, key_id| StreamGrant { video_id: 9, key_id, expires };
        let signed = Some((grant(100, 4), "ab".to_owned()));
        assert_eq!(signed_grant(Some("expires=100&key_id=4&signature=ab"), 9), Ok(signed));
        let reordered = signed_grant(Some("x=1&key_id=4&signature=ab&expires=100"), 9);
        assert_eq!(reordered, Ok(Some((grant(100, 4), "ab".to_owned()))));
        // No signature: not a signed request at all (and `api_key` means nothing here).
        assert_eq!(signed_grant(None, 9), Ok(None));
        assert_eq!(signed_grant(Some("api_key=abc&expires=100&key_id=4"), 9), Ok(None));
        let refused = [
            "expires=100&signature=ab",
            "expires=soon&key_id=4&signature=ab",
            "expires=100&key_id=4&signature=ab&signature=cd",
            "expires=100&key_id=4&key_id=5&signature=ab",
        ];
        for query in refused {
            assert_eq!(signed_grant(Some(query), 9), Err(StreamError::SignatureInvalid), "{query}");
        }
    }
}
