//! Federated requests (those made with a non-admin key: peers, players) are rate-limited
//! per key and audited, by one middleware in front of the API.
//!
//! Limits are shared by every gateway replica through Redis, with GCRA (the generic cell
//! rate algorithm): each key has a theoretical arrival time (TAT) that every allowed
//! request pushes one emission interval (`window / quota`) ahead; a request is refused
//! while the TAT lies more than a window ahead of now. That allows a burst of the whole
//! quota, then an even refill, with no counter that resets all at once.
//!
//! Why our own script: the crates that do GCRA either keep state in process memory
//! (`governor`, `gcra`), or are young single-author crates on older `redis` versions
//! (`redis-rate`, `throttle-kit`); the algorithm is a dozen lines of Lua run atomically by
//! Redis with `EVALSHA`, on the `redis` 1.x connection the gateway already holds.
//!
//! Headers follow draft-ietf-httpapi-ratelimit-headers (draft 09): `RateLimit-Policy:
//! "catalog";q=5000;w=3600` and `RateLimit: "catalog";r=4999;t=1`, plus `Retry-After` on
//! a 429 (RFC 9110, section 10.2.3).
//!
//! Admin keys are exempt from both limits and audit: they belong to the instance's own
//! operators, whose scripts must not be locked out of the admin API by a quota.
//!
//! When Redis cannot answer within `REDIS_TIMEOUT`, requests are let through (fail-open)
//! and a warning is logged. The limit guards against a peer we trust misbehaving, not
//! against anonymous floods (every federated call needs a key we issued and can revoke);
//! refusing all federation during a Redis blip would turn a small outage into a large one.

use crate::GatewayState;
use crate::audit::{AuditSink, CountedBody};
use crate::error::{ApiError, ErrorBody};
use chrono::Utc;
use poem::http::{Method, StatusCode};
use poem::web::headers::authorization::Bearer;
use poem::web::headers::{Authorization, HeaderMapExt};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::payload::Json;
use std::time::Duration;
use velour_core::signing::signed_grant;
use velour_db::audit::AuditEntry;
use velour_db::keys::AuthenticatedKey;

/// The longest a request waits for Redis before it is let through unlimited.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// The window every quota is counted over: an hour.
const WINDOW_MS: u64 = 3_600_000;

/// GCRA in one atomic step. The clock is Redis' own (`TIME`), so gateways whose clocks
/// disagree still share one limit. Returns `{allowed, ms}`: when allowed, how far the new
/// TAT lies ahead of now; when refused, how far the current one does.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > window then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, new_tat - now}
";

/// Which quota a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    Catalog,
    Stream,
}

impl Quota {
    fn name(self) -> &'static str {
        match self {
            Self::Catalog => "catalog",
            Self::Stream => "stream",
        }
    }
}

/// A federated request, recognised by its method and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub name: &'static str,
    pub quota: Quota,
    /// The id the request is about, if any.
    pub target: Option<String>,
}

/// Names the federated operation a request calls; `None` for anything else (the admin API,
/// documents, health checks, unknown routes). A signed stream URL counts against the
/// quota of the key it was issued to (see `FederationEndpoint::key_of`).
pub fn classify(method: &Method, path: &str) -> Option<Action> {
    let rest = path.strip_prefix("/api/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let get = method == Method::GET;
    let (name, quota, target) = match (segments.as_slice(), method.as_str()) {
        (["ping"], "GET") => ("catalog.ping", Quota::Catalog, None),
        (["instance"], "GET") => ("catalog.instance", Quota::Catalog, None),
        (["works"], "GET") => ("catalog.list_works", Quota::Catalog, None),
        (["works", id], "GET") => ("catalog.get_work", Quota::Catalog, Some(*id)),
        (["videos", "search"], "GET") => ("catalog.search_videos", Quota::Catalog, None),
        (["videos", id], "GET") => ("catalog.get_video", Quota::Catalog, Some(*id)),
        (["videos", id, "stream"], "GET" | "HEAD") => ("stream.video", Quota::Stream, Some(*id)),
        (["videos", id, "stream", "signed"], "GET" | "HEAD") => {
            ("stream.video_signed", Quota::Stream, Some(*id))
        }
        (["videos", id, "thumbnail"], _) if get => ("stream.thumbnail", Quota::Stream, Some(*id)),
        (["videos", id, "stream_url"], "POST") => ("stream.signed_url", Quota::Stream, Some(*id)),
        _ => return None,
    };
    // Targets are ids; anything else is cut short so that the log stays small.
    let target = target.map(|t| t.chars().take(40).collect());
    Some(Action { name, quota, target })
}

/// A key found by the middleware, so that the operation's own check does not look it up
/// a second time.
#[derive(Clone, Debug)]
pub struct PreAuthenticated(pub AuthenticatedKey);

/// The hourly quotas, and the Redis connection that keeps every replica's count.
#[derive(Clone)]
pub struct RateLimiter {
    redis: apalis_redis::ConnectionManager,
    script: redis::Script,
    catalog_per_hour: u32,
    stream_per_hour: u32,
}

/// What Redis decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed { quota: u32, remaining: u64, reset_secs: u64 },
    Refused { quota: u32, retry_after_secs: u64 },
}

impl RateLimiter {
    pub fn new(redis: apalis_redis::ConnectionManager, catalog: u32, stream: u32) -> Self {
        Self {
            redis,
            script: redis::Script::new(GCRA_SCRIPT),
            catalog_per_hour: catalog.max(1),
            stream_per_hour: stream.max(1),
        }
    }

    /// The Redis connection, to build a limiter with other quotas.
    pub fn redis(&self) -> apalis_redis::ConnectionManager {
        self.redis.clone()
    }

    fn per_hour(&self, quota: Quota) -> u32 {
        match quota {
            Quota::Catalog => self.catalog_per_hour,
            Quota::Stream => self.stream_per_hour,
        }
    }

    /// Counts one request of `key_id` against `quota`; `None` when Redis did not answer
    /// (the caller lets the request through).
    pub async fn check(&self, key_id: i64, quota: Quota) -> Option<Decision> {
        let per_hour = self.per_hour(quota);
        let interval = (WINDOW_MS / u64::from(per_hour)).max(1);
        // The window as the script sees it: a whole number of intervals, so that a fresh
        // key gets exactly its quota at once.
        let window = interval * u64::from(per_hour);
        let redis_key = format!("velour:ratelimit:{}:{key_id}", quota.name());
        let mut conn = self.redis.clone();
        let mut call = self.script.prepare_invoke();
        call.key(redis_key).arg(interval).arg(window);
        let answer = tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async(&mut conn)).await;
        let (allowed, ms): (i64, i64) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "rate limit unavailable; request let through");
                return None;
            }
            Err(_) => {
                tracing::warn!("rate limit timed out; request let through");
                return None;
            }
        };
        let ms = u64::try_from(ms).unwrap_or(0);
        Some(if allowed == 1 {
            Decision::Allowed {
                quota: per_hour,
                remaining: window.saturating_sub(ms) / interval,
                reset_secs: ms.div_ceil(1000),
            }
        } else {
            let wait = (ms + interval).saturating_sub(window);
            Decision::Refused { quota: per_hour, retry_after_secs: wait.div_ceil(1000).max(1) }
        })
    }
}

fn policy_header(quota: Quota, per_hour: u32) -> String {
    format!("\"{}\";q={per_hour};w={}", quota.name(), WINDOW_MS / 1000)
}

fn limit_header(quota: Quota, remaining: u64, reset_secs: u64) -> String {
    format!("\"{}\";r={remaining};t={reset_secs}", quota.name())
}

/// The 429 answer: our JSON error, `Retry-After` and the draft's headers.
fn refused(quota: Quota, per_hour: u32, retry_after_secs: u64) -> Response {
    ApiError::TooManyRequests(
        Json(ErrorBody {
            code: "rate-limited".to_owned(),
            error: format!(
                "this key made more than {per_hour} {} calls in an hour; retry in {} s",
                quota.name(),
                retry_after_secs
            ),
        }),
        retry_after_secs.to_string(),
        limit_header(quota, 0, retry_after_secs),
        policy_header(quota, per_hour),
    )
    .into_response()
}

/// The middleware: rate limit and audit for federated requests.
pub struct Federation {
    state: GatewayState,
}

impl Federation {
    pub fn new(state: GatewayState) -> Self {
        Self { state }
    }
}

impl<E: Endpoint> Middleware<E> for Federation {
    type Output = FederationEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        FederationEndpoint { inner: ep, state: self.state.clone() }
    }
}

pub struct FederationEndpoint<E> {
    inner: E,
    state: GatewayState,
}

impl<E: Endpoint> FederationEndpoint<E> {
    async fn pass(&self, req: Request) -> poem::Result<Response> {
        self.inner.call(req).await.map(IntoResponse::into_response)
    }

    /// The key a request presents, if it is known and active: the one in `Authorization`,
    /// or for a signed stream URL the key it was issued to, once the signature holds (a
    /// forged URL must not spend another key's quota). Parsed exactly as the operations
    /// parse them, so both see the same key.
    async fn key_of(&self, req: &Request, action: &Action) -> Option<AuthenticatedKey> {
        let state = &self.state;
        let found = if action.name == SIGNED_STREAM {
            let key_id = self.signed_key_id(req, action)?;
            velour_db::keys::find_usable_key(&state.pool, key_id).await
        } else {
            let bearer = req.headers().typed_get::<Authorization<Bearer>>()?;
            velour_db::keys::authenticate(&state.pool, bearer.token().trim()).await
        };
        match found {
            // A refused key (expired, revoked, of an inactive connection) is not counted:
            // the operation looks it up again and answers the refusal itself.
            Ok(found) => found.ok(),
            // The operation looks the key up again and answers the error itself.
            Err(err) => {
                tracing::warn!(error = %err, "could not look up a key for the rate limit");
                None
            }
        }
    }

    /// The id of the key a signed URL was issued to, if its signature is good and current.
    fn signed_key_id(&self, req: &Request, action: &Action) -> Option<i64> {
        let video_id = action.target.as_deref()?.parse().ok()?;
        let (grant, signature) = signed_grant(req.uri().query(), video_id).ok()??;
        let signer = self.state.url_signer.as_ref()?;
        signer.verify(grant, &signature, Utc::now().timestamp()).ok()?;
        Some(grant.key_id)
    }
}

/// The action of a signed stream URL, whose key is named in the query.
const SIGNED_STREAM: &str = "stream.video_signed";

impl<E: Endpoint> Endpoint for FederationEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let Some(action) = classify(req.method(), req.uri().path()) else {
            return self.pass(req).await;
        };
        let Some(key) = self.key_of(&req, &action).await else {
            return self.pass(req).await;
        };
        req.extensions_mut().insert(PreAuthenticated(key.clone()));
        if key.is_admin {
            return self.pass(req).await;
        }
        let occurred_at = Utc::now();

        let decision = self.state.rate_limiter.check(key.id, action.quota).await;
        let response = match decision {
            Some(Decision::Refused { quota, retry_after_secs }) => {
                tracing::info!(api_key.id = key.id, action = action.name, "rate limited");
                refused(action.quota, quota, retry_after_secs)
            }
            Some(Decision::Allowed { quota, remaining, reset_secs }) => {
                let mut response = self.pass(req).await?;
                let headers = response.headers_mut();
                let limit = limit_header(action.quota, remaining, reset_secs);
                let policy = policy_header(action.quota, quota);
                for (name, value) in [("ratelimit", limit), ("ratelimit-policy", policy)] {
                    if let Ok(value) = value.parse() {
                        headers.insert(name, value);
                    }
                }
                response
            }
            None => self.pass(req).await?,
        };

        let entry = AuditEntry {
            api_key_id: key.id,
            action: action.name,
            target: action.target,
            status: response.status().as_u16(),
            bytes_sent: 0,
            occurred_at,
        };
        Ok(audited(response, action.quota, entry, &self.state.audit).await)
    }
}

/// Attaches the audit entry to the response: a catalog answer is small JSON and counted
/// at once; a stream's bytes are counted as they are sent, and the entry is written when
/// the body ends or the client goes away.
async fn audited(
    response: Response,
    quota: Quota,
    mut entry: AuditEntry,
    sink: &AuditSink,
) -> Response {
    let (parts, body) = response.into_parts();
    if quota == Quota::Stream && parts.status != StatusCode::TOO_MANY_REQUESTS {
        let counted = CountedBody::new(body, entry, sink.clone());
        return Response::from_parts(parts, Body::from_bytes_stream(counted));
    }
    match body.into_bytes().await {
        Ok(bytes) => {
            entry.bytes_sent = bytes.len() as u64;
            sink.record(entry);
            Response::from_parts(parts, Body::from_bytes(bytes))
        }
        Err(err) => {
            sink.record(entry);
            ApiError::internal(&err).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federated_calls_are_named_and_others_are_not() {
        let get = Method::GET;
        let action = classify(&get, "/api/v1/videos/7/stream").unwrap();
        assert_eq!((action.name, action.quota), ("stream.video", Quota::Stream));
        assert_eq!(action.target.as_deref(), Some("7"));
        assert_eq!(
            classify(&Method::HEAD, "/api/v1/videos/7/stream").unwrap().name,
            "stream.video"
        );
        assert_eq!(classify(&get, "/api/v1/works").unwrap().name, "catalog.list_works");
        assert_eq!(classify(&get, "/api/v1/videos/search").unwrap().name, "catalog.search_videos");
        assert_eq!(classify(&get, "/api/v1/videos/3").unwrap().quota, Quota::Catalog);
        assert_eq!(classify(&get, "/api/v1/admin/storage_locations"), None);
        let signed = classify(&Method::HEAD, "/api/v1/videos/3/stream/signed").unwrap();
        assert_eq!((signed.name, signed.quota), ("stream.video_signed", Quota::Stream));
        assert_eq!(classify(&Method::POST, "/api/v1/videos/3/stream/signed"), None);
        assert_eq!(classify(&get, "/healthz"), None);
        assert_eq!(classify(&Method::DELETE, "/api/v1/works"), None);
    }

    #[test]
    fn headers_follow_the_draft() {
        assert_eq!(policy_header(Quota::Catalog, 5000), "\"catalog\";q=5000;w=3600");
        assert_eq!(limit_header(Quota::Stream, 3, 10), "\"stream\";r=3;t=10");
    }
}
