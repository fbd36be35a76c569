//! Playback in a browser: a `<video>` element cannot send `Authorization`, so a key holder
//! asks for a short-lived signed URL of one video and hands that to the element. The URL
//! carries the video, the key's id, an expiry and an HMAC over the three; never the key.
//! The stream service checks the signature, and that the key is still active.

use crate::GatewayState;
use crate::auth::ApiKeyAuth;
use crate::catalog::ApiTags;
use crate::error::ApiError;
use crate::stream::{StreamResponse, relay};
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Json, Response};
use poem_openapi::{Object, OpenApi};
use url::form_urlencoded;
use velour_core::signing::{EXPIRES_PARAM, KEY_ID_PARAM, SIGNATURE_PARAM, StreamGrant};

/// A signed stream URL and when it stops working.
#[derive(Debug, Object)]
pub struct SignedStreamUrl {
    /// The video's signed stream URL, as a path on this gateway
    /// (`/api/v1/videos/{id}/stream/signed?expires=…&key_id=…&signature=…`). It needs no
    /// `Authorization` header and holds no API key.
    pub url: String,
    /// When the URL stops working.
    pub expires_at: DateTime<Utc>,
}

pub struct PlaybackApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Stream")]
impl PlaybackApi {
    /// A short-lived signed URL of the video's stream, for players that cannot send an
    /// `Authorization` header (a browser's `<video>`). It works until `expires_at`
    /// (`VELOUR_SIGNED_URL_TTL_SECS` after now) and only while the key that asked for it
    /// stays active and may stream.
    #[oai(
        path = "/videos/:id/stream_url",
        method = "post",
        operation_id = "create_signed_stream_url"
    )]
    async fn create(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<Json<SignedStreamUrl>, ApiError> {
        let key = auth.require_stream()?;
        let Some(signer) = &state.url_signer else {
            return Err(ApiError::unavailable(
                "signing-unavailable",
                "this gateway cannot sign stream URLs",
            ));
        };
        velour_db::catalog::get_video(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "video"))?;

        let ttl =
            chrono::Duration::from_std(state.signed_url_ttl).map_err(|e| ApiError::internal(&e))?;
        let expires_at = Utc::now() + ttl;
        let grant = StreamGrant { video_id: id.0, key_id: key.id, expires: expires_at.timestamp() };
        let query = signed_query(grant.expires, grant.key_id, &signer.sign(grant));
        tracing::info!(video.id = id.0, api_key.id = key.id, %expires_at, "stream URL signed");
        let url = format!("/api/v1/videos/{}/stream/signed?{query}", id.0);
        Ok(Json(SignedStreamUrl { url, expires_at }))
    }

    /// The video's bytes through a signed URL, with HTTP range requests as on
    /// `/videos/{id}/stream`. No `Authorization` header: the signature stands for it.
    /// A wrong or expired signature, or one whose key was revoked, is answered 401.
    #[oai(path = "/videos/:id/stream/signed", method = "get", operation_id = "stream_video_signed")]
    async fn stream_signed(
        &self,
        state: Data<&GatewayState>,
        request: &poem::Request,
        id: Path<i64>,
        expires: Query<i64>,
        key_id: Query<i64>,
        signature: Query<String>,
    ) -> Result<Response<StreamResponse>, ApiError> {
        let query = signed_query(expires.0, key_id.0, &signature.0);
        relay(&state, reqwest::Method::GET, id.0, request, Some(&query)).await
    }

    /// The headers a signed `GET` would answer, without the bytes.
    #[oai(
        path = "/videos/:id/stream/signed",
        method = "head",
        operation_id = "head_video_stream_signed"
    )]
    async fn stream_signed_head(
        &self,
        state: Data<&GatewayState>,
        request: &poem::Request,
        id: Path<i64>,
        expires: Query<i64>,
        key_id: Query<i64>,
        signature: Query<String>,
    ) -> Result<Response<StreamResponse>, ApiError> {
        let query = signed_query(expires.0, key_id.0, &signature.0);
        relay(&state, reqwest::Method::HEAD, id.0, request, Some(&query)).await
    }
}

/// A signed URL's query: the three signed parameters. Relayed requests rebuild it from
/// the parsed values, so nothing else of the caller's query travels on.
fn signed_query(expires: i64, key_id: i64, signature: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair(EXPIRES_PARAM, &expires.to_string())
        .append_pair(KEY_ID_PARAM, &key_id.to_string())
        .append_pair(SIGNATURE_PARAM, signature)
        .finish()
}
