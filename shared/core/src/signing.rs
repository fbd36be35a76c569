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

#[cfg(test)]
mod tests {
    use super::*;

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
