//! Videos in an S3 bucket, or in an S3-compatible store reached through its own endpoint.
//!
//! A location's settings are parsed once, here, from what the admin API stored: the public
//! `configuration` (bucket, region, endpoint, prefix, access key id) and the `secrets`
//! (the secret access key). Clients are built from them alone, never from the process's
//! environment or AWS profile files, so that two locations never share credentials.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::fmt;
use std::time::Duration;
use url::Url;

pub use aws_sdk_s3;

/// The region signed for when a location names none; S3-compatible stores accept any.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The most keys one `ListObjectsV2` page may hold (S3's own ceiling).
pub const MAX_LIST_PAGE: i32 = 1000;

/// A location's settings, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// The store's base URL; `None` for AWS itself.
    pub endpoint: Option<Url>,
    /// Only keys under this prefix belong to the location: empty, or ending with `/`.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which S3-compatible stores need.
    pub path_style: bool,
    pub access_key_id: String,
    secret_access_key: String,
}

// The secret is never printed, not even in debug output.
impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// A setting that is missing or wrong. The message names the field, for people to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("configuration.{field} {problem}")]
pub struct S3ConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn config_error(field: &'static str, problem: impl Into<String>) -> S3ConfigError {
    S3ConfigError { field, problem: problem.into() }
}

impl S3Settings {
    /// Parses the settings a person sent: every field, the secret included, in one object.
    pub fn from_request(config: &Map<String, Value>) -> Result<Self, S3ConfigError> {
        Self::parse(config, config)
    }

    /// Parses what the catalog stored: the public configuration and the secrets apart.
    pub fn from_stored(config: &Value, secrets: &Value) -> Result<Self, S3ConfigError> {
        let empty = Map::new();
        let config = config.as_object().unwrap_or(&empty);
        let secrets = secrets.as_object().unwrap_or(&empty);
        Self::parse(config, secrets)
    }

    fn parse(
        config: &Map<String, Value>,
        secrets: &Map<String, Value>,
    ) -> Result<Self, S3ConfigError> {
        let bucket = required(config, "bucket")?;
        check_bucket_name(bucket)?;
        let region = optional(config, "region")?.unwrap_or(DEFAULT_REGION);
        if !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(config_error("region", "must be a region name such as eu-west-1"));
        }
        let endpoint = optional(config, "endpoint")?.map(parse_endpoint).transpose()?;
        let prefix = normalize_prefix(optional(config, "prefix")?.unwrap_or(""))?;
        let path_style = match config.get("path_style") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(config_error("path_style", "must be true or false")),
        };
        let access_key_id = required(config, "access_key_id")?;
        let secret_access_key = required(secrets, "secret_access_key")?;
        Ok(Self {
            bucket: bucket.to_owned(),
            region: region.to_owned(),
            endpoint,
            prefix,
            path_style,
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
        })
    }

    /// What the API may show: everything but the secret access key.
    pub fn public_json(&self) -> Value {
        json!({
            "bucket": self.bucket,
            "region": self.region,
            "endpoint": self.endpoint.as_ref().map(Url::as_str),
            "prefix": self.prefix,
            "path_style": self.path_style,
            "access_key_id": self.access_key_id,
        })
    }

    /// What is kept apart from the configuration.
    pub fn secrets_json(&self) -> Value {
        json!({ "secret_access_key": self.secret_access_key })
    }

    /// A client for this location. Requests time out rather than hang on a silent store;
    /// checksums are computed and checked only where S3 requires them, because
    /// S3-compatible stores reject the SDK's default (aws-chunked uploads with trailers).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let credentials = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "velour-location",
        );
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build();
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(self.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(timeouts);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }

    /// The key relative to the prefix (what a file name is to a folder).
    pub fn relative_key<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }
}

fn required<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, S3ConfigError> {
    optional(map, field)?.ok_or_else(|| config_error(field, "is required"))
}

fn optional<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, S3ConfigError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(_) => Err(config_error(field, "must be a string")),
    }
}

/// S3's bucket naming rules, in short: 3–63 lowercase letters, digits, dots and hyphens,
/// starting and ending with a letter or digit.
fn check_bucket_name(bucket: &str) -> Result<(), S3ConfigError> {
    let allowed =
        bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !allowed
        || !ends(bucket.bytes().next())
        || !ends(bucket.bytes().last())
    {
        return Err(config_error(
            "bucket",
            "must be 3 to 63 lowercase letters, digits, dots or hyphens",
        ));
    }
    Ok(())
}

fn parse_endpoint(raw: &str) -> Result<Url, S3ConfigError> {
    let url = Url::parse(raw).map_err(|_| config_error("endpoint", "is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(config_error("endpoint", "must be http(s)://host[:port]"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error("endpoint", "must not hold credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config_error("endpoint", "must not have a query or fragment"));
    }
    Ok(url)
}

/// A prefix names a folder: `films` and `/films/` both become `films/`.
fn normalize_prefix(raw: &str) -> Result<String, S3ConfigError> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(config_error("prefix", "must be a path of plain names such as films/2024"));
    }
    Ok(format!("{trimmed}/"))
}

/// Why a request to the store failed. Messages are for logs and scan runs: they never hold
/// the credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    #[error("the bucket or object does not exist ({0})")]
    NotFound(String),
    #[error("the store refused our credentials ({0})")]
    AccessDenied(String),
    #[error("the requested range lies outside the object")]
    InvalidRange,
    /// The object is no longer the one a condition (`If-Match`) named.
    #[error("the object changed")]
    PreconditionFailed,
    #[error("the store cannot be reached: {0}")]
    Unreachable(String),
    #[error("the store failed: {0}")]
    Failed(String),
}

impl S3Error {
    /// Sorts an SDK error by what the caller should do about it.
    pub fn from_sdk<E>(err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let detail = DisplayErrorContext(err).to_string();
        match err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Self::Unreachable(detail),
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                match (service.err().code(), status) {
                    (Some("InvalidRange"), _) | (_, 416) => Self::InvalidRange,
                    (Some("PreconditionFailed"), _) | (_, 412) => Self::PreconditionFailed,
                    (Some("NoSuchKey" | "NoSuchBucket" | "NotFound"), _) | (_, 404) => {
                        Self::NotFound(detail)
                    }
                    (Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"), _)
                    | (_, 401 | 403) => Self::AccessDenied(detail),
                    _ => Self::Failed(detail),
                }
            }
            _ => Self::Failed(detail),
        }
    }
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Object {
    pub key: String,
    pub size: u64,
    /// The ETag as the store sent it, quotes included.
    pub etag: Option<String>,
}

/// One page of a listing, and where the next one starts.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<S3Object>,
    pub next: Option<String>,
}

/// Checks that the bucket exists and our credentials may use it.
pub async fn head_bucket(
    client: &aws_sdk_s3::Client,
    settings: &S3Settings,
) -> Result<(), S3Error> {
    client
        .head_bucket()
        .bucket(&settings.bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| S3Error::from_sdk(&e))
}

/// One page of the objects under the location's prefix, from `continuation` on.
pub async fn list_page(
    client: &aws_sdk_s3::Client,
    settings: &S3Settings,
    continuation: Option<String>,
    max_keys: i32,
) -> Result<ListPage, S3Error> {
    let mut request = client
        .list_objects_v2()
        .bucket(&settings.bucket)
        .max_keys(max_keys.clamp(1, MAX_LIST_PAGE))
        .set_continuation_token(continuation);
    if !settings.prefix.is_empty() {
        request = request.prefix(&settings.prefix);
    }
    let page = request.send().await.map_err(|e| S3Error::from_sdk(&e))?;
    let objects = page
        .contents()
        .iter()
        .filter_map(|object| {
            Some(S3Object {
                key: object.key()?.to_owned(),
                size: u64::try_from(object.size()?).ok()?,
                etag: object.e_tag().map(str::to_owned),
            })
        })
        .collect();
    // A truncated page without a token would make a caller loop on the first page.
    let next = match (page.is_truncated(), page.next_continuation_token()) {
        (Some(true), Some(token)) => Some(token.to_owned()),
        (Some(true), None) => {
            return Err(S3Error::Failed("a truncated listing came without a next token".into()));
        }
        _ => None,
    };
    Ok(ListPage { objects, next })
}

/// Reads bytes `first..=last` of an object into memory; for small reads only.
pub async fn read_range(
    client: &aws_sdk_s3::Client,
    settings: &S3Settings,
    key: &str,
    first: u64,
    last: u64,
) -> Result<Bytes, S3Error> {
    let object = client
        .get_object()
        .bucket(&settings.bucket)
        .key(key)
        .range(format!("bytes={first}-{last}"))
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(&e))?;
    let body = object.body.collect().await.map_err(|e| S3Error::Unreachable(e.to_string()))?;
    Ok(body.into_bytes())
}

/// A URL that lets a tool without our credentials (ffprobe, ffmpeg) GET the object until
/// it expires.
pub async fn presigned_get_url(
    client: &aws_sdk_s3::Client,
    settings: &S3Settings,
    key: &str,
    expires_in: Duration,
) -> Result<String, S3Error> {
    let presigning =
        PresigningConfig::expires_in(expires_in).map_err(|e| S3Error::Failed(e.to_string()))?;
    let request = client
        .get_object()
        .bucket(&settings.bucket)
        .key(key)
        .presigned(presigning)
        .await
        .map_err(|e| S3Error::from_sdk(&e))?;
    Ok(request.uri().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> Result<S3Settings, S3ConfigError> {
        S3Settings::from_request(value.as_object().unwrap())
    }

    fn valid() -> Value {
        json!({
            "bucket": "films",
            "endpoint": "http://127.0.0.1:9000/",
            "prefix": "/library/2024",
            "access_key_id": "AKID",
            "secret_access_key": "s3cret",
        })
    }

    #[test]
    fn a_full_configuration_parses_with_defaults() {
        let settings = request(valid()).unwrap();
        assert_eq!(settings.region, DEFAULT_REGION);
        assert_eq!(settings.prefix, "library/2024/");
        assert!(settings.path_style);
        assert_eq!(settings.relative_key("library/2024/a/b.mp4"), "a/b.mp4");
    }

    #[test]
    fn the_secret_is_stored_apart_and_never_shown() {
        let settings = request(valid()).unwrap();
        let public = settings.public_json();
        assert!(!public.to_string().contains("s3cret"));
        assert!(!format!("{settings:?}").contains("s3cret"));
        let secrets = settings.secrets_json();
        assert_eq!(S3Settings::from_stored(&public, &secrets).unwrap(), settings);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            ("bucket", json!("Films!")),
            ("bucket", json!("ab")),
            ("bucket", json!(null)),
            ("endpoint", json!("ftp://host")),
            ("endpoint", json!("http://user:pw@host")),
            ("prefix", json!("a/../b")),
            ("path_style", json!("yes")),
            ("region", json!("eu west")),
            ("secret_access_key", json!(null)),
            ("access_key_id", json!(7)),
        ];
        for (field, value) in cases {
            let mut config = valid();
            config[field] = value;
            let err = request(config).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
