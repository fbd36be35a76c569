//! Signed stream URLs: a `<video>` element cannot send `Authorization`, so the gateway
//! hands out a URL that carries, instead of the key, an HMAC-SHA256 over the video, the
//! id of the key that asked and an expiry. The stream service checks the HMAC and then
//! that the key is still active and may stream, so revoking a key ends its URLs too.
//!
//! Every gateway and stream service of an instance must hold the same secret: see
//! `VELOUR_URL_SIGNING_SECRET` in the settings, and the one stored in the catalog when it
//! is unset.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use std::fmt;

/// The shortest secret accepted: the HMAC-SHA256 key should be as long as its output.
pub const MIN_SECRET_BYTES: usize = 32;

/// Query parameter names of a signed URL. None of them is, or contains, a key.
pub const EXPIRES_PARAM: &str = "expires";
pub const KEY_ID_PARAM: &str = "key_id";
pub const SIGNATURE_PARAM: &str = "signature";

/// Separates this use of the secret from any other it may get later.
const DOMAIN: &[u8] = b"velour signed stream url v1\n";

/// What a signature grants: one video, on behalf of one key, until a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamGrant {
    pub video_id: i64,
    pub key_id: i64,
    /// Seconds since the Unix epoch after which the URL no longer works.
    pub expires: i64,
}

/// Why a signed URL is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature does not match")]
    Invalid,
    #[error("the signed URL has expired")]
    Expired,
}

/// Signs and checks stream grants with the instance's secret.
#[derive(Clone)]
pub struct UrlSigner {
    secret: SecretSlice<u8>,
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSigner").finish_non_exhaustive()
    }
}

impl UrlSigner {
    /// `None` for a secret shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: Vec<u8>) -> Option<Self> {
        (secret.len() >= MIN_SECRET_BYTES).then(|| Self { secret: secret.into() })
    }

    fn mac(&self, grant: StreamGrant) -> Hmac<Sha256> {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        mac.update(DOMAIN);
        let message = format!("{}\n{}\n{}", grant.video_id, grant.key_id, grant.expires);
        mac.update(message.as_bytes());
        mac
    }

    /// The signature, as lowercase hex.
    pub fn sign(&self, grant: StreamGrant) -> String {
        hex::encode(self.mac(grant).finalize().into_bytes())
    }

    /// Checks `signature` (hex) for `grant` at time `now` (seconds since the epoch). The
    /// comparison runs in constant time; an expired grant is refused even when signed.
    pub fn verify(
        &self,
        grant: StreamGrant,
        signature: &str,
        now: i64,
    ) -> Result<(), SignatureError> {
        let presented = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
        self.mac(grant).verify_slice(&presented).map_err(|_| SignatureError::Invalid)?;
        if grant.expires <= now {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

/// The grant and signature a signed URL's query carries, for `video_id` (the path's);
/// `Ok(None)` when the query holds no signature at all. A parameter given twice is
/// refused as `Invalid`: which one would the signer have seen?
pub fn signed_grant(
    query: Option<&str>,
    video_id: i64,
) -> Result<Option<(StreamGrant, String)>, SignatureError> {
    let (mut expires, mut key_id, mut signature) = (None, None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            EXPIRES_PARAM => &mut expires,
            KEY_ID_PARAM => &mut key_id,
            SIGNATURE_PARAM => &mut signature,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(SignatureError::Invalid);
        }
    }
    let Some(signature) = signature else {
        return Ok(None);
    };
    let number = |raw: Option<String>| raw.and_then(|n| n.parse::<i64>().ok());
    let (Some(expires), Some(key_id)) = (number(expires), number(key_id)) else {
        return Err(SignatureError::Invalid);
    };
    Ok(Some((StreamGrant { video_id, key_id, expires }, signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(signed_grant(Some(query), 9), Err(SignatureError::Invalid), "{query}");
        }
    }

    fn signer(byte: u8) -> UrlSigner {
        UrlSigner::new(vec![byte; MIN_SECRET_BYTES]).unwrap()
    }

    const GRANT: StreamGrant = StreamGrant { video_id: 7, key_id: 3, expires: 1_000 };

    #[test]
    fn a_short_secret_is_refused() {
        assert!(UrlSigner::new(vec![1; MIN_SECRET_BYTES - 1]).is_none());
        assert!(UrlSigner::new(vec![1; MIN_SECRET_BYTES]).is_some());
    }

    #[test]
    fn a_signature_verifies_until_it_expires() {
        let s = signer(1);
        let signature = s.sign(GRANT);
        assert_eq!(signature.len(), 64);
        assert_eq!(s.verify(GRANT, &signature, 999), Ok(()));
        assert_eq!(s.verify(GRANT, &signature, 1_000), Err(SignatureError::Expired));
    }

    #[test]
    fn any_change_to_the_grant_or_the_secret_breaks_the_signature() {
        let s = signer(1);
        let signature = s.sign(GRANT);
        let others = [
            StreamGrant { video_id: 8, ..GRANT },
            StreamGrant { key_id: 4, ..GRANT },
            StreamGrant { expires: 1_001, ..GRANT },
        ];
        for other in others {
            assert_eq!(s.verify(other, &signature, 0), Err(SignatureError::Invalid), "{other:?}");
        }
        assert_eq!(signer(2).verify(GRANT, &signature, 0), Err(SignatureError::Invalid));
        assert_eq!(s.verify(GRANT, "zz", 0), Err(SignatureError::Invalid));
        assert_eq!(s.verify(GRANT, &signature[..62], 0), Err(SignatureError::Invalid));
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        assert_eq!(format!("{:?}", signer(0x41)), "UrlSigner { .. }");
    }
}
