//! The client one Velour instance uses to read another.

use crate::guard::{AddressGuard, InternalAddress};
use crate::wire::{InstanceInfo, KeySelf, Ping, RotatedKey, WorksPage};
use futures_util::StreamExt;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;
use velour_core::settings::PeerSettings;

/// Why a call to a peer failed. Messages name the peer's URL path, never our key.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the peer URL {0:?} cannot serve as a base URL")]
    BadUrl(String),
    #[error("could not build the HTTP client: {0}")]
    Client(String),
    #[error(
        "the peer URL {0} is http://, and FEDERATION_REQUIRE_HTTPS forbids sending our key \
         in clear"
    )]
    HttpsRequired(String),
    #[error(transparent)]
    InternalAddress(#[from] InternalAddress),
    #[error("the peer did not answer in time on {path}")]
    Timeout { path: String },
    #[error("could not reach the peer on {path}: {reason}")]
    Unreachable { path: String, reason: String },
    #[error("the peer refused our key on {path} (HTTP {status})")]
    Unauthorized { path: String, status: u16 },
    #[error("the peer answered HTTP {status} on {path}")]
    Status { path: String, status: u16 },
    /// HTTP 410. On a listing of changes: the peer no longer keeps the tombstones since
    /// our cursor (`cursor-too-old`), and the whole listing must be read again.
    #[error("the peer answered HTTP 410 (gone) on {path}")]
    Gone { path: String },
    #[error("the peer's answer on {path} is larger than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    #[error("the peer's answer on {path} is not what Velour expects: {reason}")]
    Malformed { path: String, reason: String },
}

impl PeerError {
    /// Whether trying again later may help (a refused key will not fix itself).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Unreachable { .. } | Self::Status { .. })
    }
}

/// The longest one catalog call (ping, instance, a page of works) may take, body
/// included. The read timeout alone would let a peer that sends a byte every few seconds
/// hold a scan for days.
const CATALOG_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A peer's base URL and the key it issued to us.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    base: Url,
    key: SecretString,
    max_page_bytes: usize,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

/// An HTTP client with the timeouts peers get: bounded connect and idle time, no total
/// limit (a stream may rightly last hours), and no redirects followed, so our key is
/// never sent anywhere but the URL the operator configured. It connects only to
/// addresses the guard allows, trusts `VELOUR_PEER_CA_FILE` beside the system's roots,
/// and with `FEDERATION_REQUIRE_HTTPS` sends nothing over plain HTTP.
pub fn http_client(settings: &PeerSettings) -> Result<reqwest::Client, PeerError> {
    let guard = AddressGuard::new(&settings.allowed_networks);
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("Velour/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(settings.connect_timeout())
        .read_timeout(settings.read_timeout())
        // Below the 30 s a Velour peer keeps an idle connection open (and nginx's 75 s),
        // so that we never send a request on one the peer is closing at that moment.
        .pool_idle_timeout(std::time::Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(settings.require_https)
        .dns_resolver(guard.resolver());
    if let Some(path) = &settings.ca_file {
        builder = builder.tls_certs_merge(read_ca_file(path)?);
    }
    builder.build().map_err(|e| PeerError::Client(e.to_string()))
}

fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, PeerError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| PeerError::Client(format!("VELOUR_PEER_CA_FILE: cannot read {shown}: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
        PeerError::Client(format!("VELOUR_PEER_CA_FILE: {shown} is not PEM certificates"))
    })?;
    if certs.is_empty() {
        return Err(PeerError::Client(format!(
            "VELOUR_PEER_CA_FILE: {shown} holds no certificate"
        )));
    }
    Ok(certs)
}

impl PeerClient {
    pub fn new(base: &Url, key: SecretString, settings: &PeerSettings) -> Result<Self, PeerError> {
        Self::with_http(http_client(settings)?, base, key, settings)
    }

    /// Shares one connection pool among many peers (the stream service does); `http` must
    /// come from `http_client` with the same `settings`.
    pub fn with_http(
        http: reqwest::Client,
        base: &Url,
        key: SecretString,
        settings: &PeerSettings,
    ) -> Result<Self, PeerError> {
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(PeerError::BadUrl(base.to_string()));
        }
        if settings.require_https && base.scheme() != "https" {
            return Err(PeerError::HttpsRequired(base.to_string()));
        }
        // reqwest asks the resolver only for names: an address in the URL is checked here.
        let literal = match base.host() {
            Some(url::Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) | None => None,
        };
        if let Some(addr) = literal {
            AddressGuard::new(&settings.allowed_networks).check(addr)?;
        }
        let max_page_bytes = settings.max_page_bytes;
        // Paths are joined onto the base, so it must end with a slash to keep any prefix
        // (a peer behind https://host/velour/).
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        Ok(Self { http, base, key, max_page_bytes })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, PeerError> {
        self.base.join(path).map_err(|_| PeerError::BadUrl(self.base.to_string()))
    }

    pub async fn ping(&self) -> Result<Ping, PeerError> {
        self.get_json("api/v1/ping").await
    }

    pub async fn instance(&self) -> Result<InstanceInfo, PeerError> {
        self.get_json("api/v1/instance").await
    }

    /// The key we hold for the peer, as the peer sees it (id, permissions, expiry).
    pub async fn key_self(&self) -> Result<KeySelf, PeerError> {
        self.get_json("api/v1/keys/self").await
    }

    /// Asks the peer for our key's successor. The old key keeps working for the peer's
    /// grace period; the caller must store the new one and use it from now on.
    pub async fn rotate_key(&self) -> Result<RotatedKey, PeerError> {
        self.send_json(reqwest::Method::POST, self.url("api/v1/keys/rotate")?).await
    }

    /// The same peer with another key (the successor a rotation returned).
    pub fn with_key(&self, key: SecretString) -> Self {
        Self { key, ..self.clone() }
    }

    /// One page of the peer's works.
    pub async fn works_page(&self, page: u32, per_page: u32) -> Result<WorksPage, PeerError> {
        self.get_json(&format!("api/v1/works?page={page}&per_page={per_page}")).await
    }

    /// The page of the peer's works after the last work of the previous page, whose
    /// `sync.next_after` was `after`; `page` numbers it. Only for peers that advertise
    /// `works.after`.
    pub async fn works_page_after(
        &self,
        after: &str,
        page: u32,
        per_page: u32,
    ) -> Result<WorksPage, PeerError> {
        self.works_page_with(("after", after), page, per_page).await
    }

    /// One page of the works changed since `cursor` (a `sync.cursor` the peer gave us),
    /// with the tombstones of what it removed. Only for peers that advertise
    /// `works.updated_since`; others ignore the parameter and list everything.
    pub async fn works_page_since(
        &self,
        cursor: &str,
        page: u32,
        per_page: u32,
    ) -> Result<WorksPage, PeerError> {
        self.works_page_with(("updated_since", cursor), page, per_page).await
    }

    /// A page of the works listing with one more query parameter, escaped.
    async fn works_page_with(
        &self,
        (name, value): (&str, &str),
        page: u32,
        per_page: u32,
    ) -> Result<WorksPage, PeerError> {
        let mut url = self.url("api/v1/works")?;
        url.query_pairs_mut()
            .append_pair(name, value)
            .append_pair("page", &page.to_string())
            .append_pair("per_page", &per_page.to_string());
        self.get_json_at(url).await
    }

    /// The URL of a video's bytes on the peer.
    pub fn stream_url(&self, remote_video_id: i64) -> Result<Url, PeerError> {
        self.url(&format!("api/v1/videos/{remote_video_id}/stream"))
    }

    /// Starts a request for a video's bytes, with our key and the given extra headers
    /// (a range, validators). The caller streams the body.
    pub async fn stream(
        &self,
        method: reqwest::Method,
        remote_video_id: i64,
        headers: reqwest::header::HeaderMap,
    ) -> Result<reqwest::Response, PeerError> {
        let url = self.stream_url(remote_video_id)?;
        let path = url.path().to_owned();
        self.http
            .request(method, url)
            .bearer_auth(self.key.expose_secret())
            .headers(headers)
            .send()
            .await
            .map_err(|e| transport_error(&path, &e))
    }

    /// Asks for a video's thumbnail, with our key and the given validators. The caller
    /// reads the (small) body with a cap; the whole call is bounded like a catalog call.
    pub async fn thumbnail(
        &self,
        method: reqwest::Method,
        remote_video_id: i64,
        headers: reqwest::header::HeaderMap,
    ) -> Result<reqwest::Response, PeerError> {
        let url = self.url(&format!("api/v1/videos/{remote_video_id}/thumbnail"))?;
        let path = url.path().to_owned();
        self.http
            .request(method, url)
            .bearer_auth(self.key.expose_secret())
            .headers(headers)
            .timeout(CATALOG_CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport_error(&path, &e))
    }

    async fn get_json<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, PeerError> {
        self.send_json(reqwest::Method::GET, self.url(path_and_query)?).await
    }

    async fn get_json_at<T: DeserializeOwned>(&self, url: Url) -> Result<T, PeerError> {
        self.send_json(reqwest::Method::GET, url).await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: Url,
    ) -> Result<T, PeerError> {
        let path = url.path().to_owned();
        let response = self
            .http
            .request(method, url)
            .bearer_auth(self.key.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(CATALOG_CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport_error(&path, &e))?;

        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(PeerError::Unauthorized { path, status: status.as_u16() });
        }
        if status == StatusCode::GONE {
            return Err(PeerError::Gone { path });
        }
        if !status.is_success() {
            return Err(PeerError::Status { path, status: status.as_u16() });
        }
        let body = self.read_capped(&path, response).await?;
        serde_json::from_slice(&body)
            .map_err(|e| PeerError::Malformed { path, reason: e.to_string() })
    }

    /// Reads a body while counting it, so a peer cannot make us hold more than the cap.
    async fn read_capped(
        &self,
        path: &str,
        response: reqwest::Response,
    ) -> Result<Vec<u8>, PeerError> {
        let limit = self.max_page_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(PeerError::TooLarge { path: path.to_owned(), limit });
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| transport_error(path, &e))?;
            if body.len() + chunk.len() > limit {
                return Err(PeerError::TooLarge { path: path.to_owned(), limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Describes a transport failure without the URL (reqwest's messages include it, and
/// with it possibly a query); the path alone says which call failed.
fn transport_error(path: &str, err: &reqwest::Error) -> PeerError {
    if err.is_timeout() {
        return PeerError::Timeout { path: path.to_owned() };
    }
    // The guarded resolver's refusal travels inside reqwest's and hyper's connect errors.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(internal) = current.downcast_ref::<InternalAddress>() {
            return PeerError::InternalAddress(internal.clone());
        }
        cause = current.source();
    }
    let reason = if err.is_connect() {
        "connection failed".to_owned()
    } else if err.is_body() || err.is_decode() {
        "the body was cut off".to_owned()
    } else {
        "the request failed".to_owned()
    };
    PeerError::Unreachable { path: path.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> PeerClient {
        let url = Url::parse(base).unwrap();
        PeerClient::new(&url, SecretString::from("k"), &PeerSettings::default()).unwrap()
    }

    fn made(base: &str, settings: &PeerSettings) -> Result<PeerClient, PeerError> {
        PeerClient::new(&Url::parse(base).unwrap(), SecretString::from("k"), settings)
    }

    #[test]
    fn http_peers_are_refused_while_https_is_required() {
        let err = made("http://peer.example/", &PeerSettings::default()).unwrap_err();
        assert!(matches!(err, PeerError::HttpsRequired(_)), "{err}");
        let relaxed = PeerSettings { require_https: false, ..PeerSettings::default() };
        assert!(made("http://peer.example/", &relaxed).is_ok());
    }

    #[test]
    fn internal_address_literals_are_refused_unless_allowed() {
        let settings = PeerSettings { require_https: false, ..PeerSettings::default() };
        for base in ["https://10.0.0.5/", "https://169.254.169.254/", "http://[::1]:8080/"] {
            let err = made(base, &settings).unwrap_err();
            assert!(matches!(err, PeerError::InternalAddress(_)), "{base}: {err}");
        }
        assert!(made("https://93.184.216.34/", &settings).is_ok());
        assert!(made("http://127.0.0.1:3000/", &PeerSettings::for_loopback_peers()).is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect() {
        let settings = PeerSettings { require_https: false, ..PeerSettings::default() };
        // Nothing needs to listen: the guard refuses before connecting.
        let peer = made("http://localhost:9/", &settings).unwrap();
        let err = peer.ping().await.unwrap_err();
        let PeerError::InternalAddress(internal) = &err else { panic!("{err}") };
        assert!(internal.addr.is_loopback());
        assert!(!err.is_retryable());
    }

    #[test]
    fn an_unreadable_ca_file_names_its_setting() {
        let settings =
            PeerSettings { ca_file: Some("/nonexistent/ca.pem".into()), ..PeerSettings::default() };
        let err = http_client(&settings).unwrap_err().to_string();
        assert!(err.contains("VELOUR_PEER_CA_FILE"), "{err}");
    }

    #[test]
    fn paths_keep_the_base_prefix() {
        let c = client("https://peer.example/velour");
        assert_eq!(
            c.stream_url(5).unwrap().as_str(),
            "https://peer.example/velour/api/v1/videos/5/stream"
        );
    }

    #[test]
    fn non_http_bases_are_refused() {
        let url = Url::parse("ftp://peer.example/").unwrap();
        let made = PeerClient::new(&url, SecretString::from("k"), &PeerSettings::default());
        assert!(made.is_err());
    }
}
