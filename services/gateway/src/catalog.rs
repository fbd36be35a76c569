//! Catalog reads, in the federation wire format peers depend on.

use crate::GatewayState;
use crate::auth::ApiKeyAuth;
use crate::error::ApiError;
use crate::pages::PageKey;
use crate::payload::{RenderedJson, WireJson};
use chrono::{DateTime, SecondsFormat, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{OpenApi, Tags};
use velour_db::PageRequest;
use velour_db::catalog::{VideoRow, WorkWithVideos};
use velour_peer::{
    AFTER_CAPABILITY, InstanceInfo, Pagination, Ping, SYNC_CAPABILITY, SyncState, Tombstone, Video,
    VideosPage, Work, WorkVideo, WorksPage,
};

#[derive(Tags)]
pub enum ApiTags {
    /// The instance, its works and videos: what peers read.
    Catalog,
    /// Video bytes and images.
    Stream,
    /// Keys, storage locations, scans and federation connections, for administrators.
    Admin,
    /// The caller's own key: what it is and its rotation.
    Keys,
}

pub struct CatalogApi;

pub(crate) fn page_request(
    page: Option<i64>,
    per_page: Option<i64>,
) -> Result<PageRequest, ApiError> {
    PageRequest::new(page, per_page)
        .map_err(|e| ApiError::bad_request("invalid-pagination", e.to_string()))
}

pub(crate) fn pagination(page: PageRequest, total: i64) -> Pagination {
    Pagination {
        current_page: i64::from(page.page()),
        total_pages: page.total_pages(total),
        total_count: total,
    }
}

/// What a key may see of a video. Technical metadata (duration, width, height, video and
/// audio codecs) and fingerprints are shown only to keys with `can_metadata`; for others
/// they are null, and fingerprints an empty object, so the JSON keeps its shape. Playback
/// needs neither: `web_compatible`, the file name and size stay visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetadataAccess {
    Shown,
    Withheld,
}

impl MetadataAccess {
    fn of(auth: &ApiKeyAuth) -> Self {
        if auth.0.can_metadata { Self::Shown } else { Self::Withheld }
    }
}

/// A video row with what `access` withholds cleared.
fn visible(mut row: VideoRow, access: MetadataAccess) -> VideoRow {
    if access == MetadataAccess::Withheld {
        row.duration = None;
        row.width = None;
        row.height = None;
        row.video_codec = None;
        row.audio_codec = None;
        row.container = None;
        row.fingerprints = sqlx::types::Json(serde_json::json!({}));
        row.video_metadata = sqlx::types::Json(serde_json::json!({}));
    }
    row
}

fn work_video(row: VideoRow, access: MetadataAccess) -> WorkVideo {
    let row = visible(row, access);
    WorkVideo {
        id: row.id,
        filename: row.filename,
        file_size: row.file_size,
        web_compatible: row.web_compatible,
        duration: row.duration,
        width: row.width,
        height: row.height,
        video_codec: row.video_codec,
        audio_codec: row.audio_codec,
        fingerprints: row.fingerprints.0,
        storage_type: Some(row.storage_type),
        created_at: row.created_at,
    }
}

fn video(row: VideoRow, access: MetadataAccess) -> Video {
    let row = visible(row, access);
    Video {
        id: row.id,
        work_id: row.work_id,
        work_title: row.work_title,
        filename: row.filename,
        file_size: row.file_size,
        web_compatible: row.web_compatible,
        duration: row.duration,
        width: row.width,
        height: row.height,
        video_codec: row.video_codec,
        audio_codec: row.audio_codec,
        fingerprints: row.fingerprints.0,
        storage_type: Some(row.storage_type),
        created_at: row.created_at,
    }
}

fn work(listed: WorkWithVideos, access: MetadataAccess) -> Work {
    let w = listed.work;
    Work {
        id: w.id,
        title: w.title,
        year: w.year,
        description: w.description,
        director: w.director,
        rating: w.rating,
        organized: w.organized,
        created_at: w.created_at,
        videos: listed.videos.into_iter().map(|v| work_video(v, access)).collect(),
    }
}

/// The longest `after` accepted: a work's key, with a title of any sensible length.
const MAX_AFTER_BYTES: usize = 4096;

/// The `after` token naming the listing's key (title, id): `ID.TITLE` with the title in
/// unpadded URL-safe base64, so the token needs no escaping in a query string. Clients
/// treat it as opaque.
fn after_token(title: &str, id: i64) -> String {
    use base64::Engine;
    format!("{id}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(title))
}

fn parse_after(token: &str) -> Result<(String, i64), ApiError> {
    use base64::Engine;
    let invalid = || {
        ApiError::bad_request(
            "invalid-after",
            "after must be a sync.next_after this instance handed out, unchanged",
        )
    };
    if token.len() > MAX_AFTER_BYTES {
        return Err(invalid());
    }
    let (id, title) = token.split_once('.').ok_or_else(invalid)?;
    let id = id.parse::<i64>().map_err(|_| invalid())?;
    let title = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(title)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        // Postgres text holds no NUL, so no title has one.
        .filter(|title| !title.contains('\0'))
        .ok_or_else(invalid)?;
    Ok((title, id))
}

fn tombstone(row: velour_db::catalog::Tombstone) -> Tombstone {
    Tombstone { kind: row.kind, id: row.id, work_id: row.work_id, removed_at: row.removed_at }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Catalog")]
impl CatalogApi {
    /// Is the instance up, and does it accept this key?
    #[oai(path = "/ping", method = "get", operation_id = "ping")]
    async fn ping(&self, auth: ApiKeyAuth) -> Result<Json<Ping>, ApiError> {
        auth.require_read()?;
        Ok(Json(Ping { status: "ok".to_owned(), timestamp: Utc::now() }))
    }

    /// Who this instance is and how much it holds.
    #[oai(path = "/instance", method = "get", operation_id = "get_instance")]
    async fn instance(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
    ) -> Result<Json<InstanceInfo>, ApiError> {
        auth.require_read()?;
        let totals = velour_db::catalog::instance_totals(&state.pool)
            .await
            .map_err(|e| ApiError::from_db(e, "instance"))?;
        Ok(Json(InstanceInfo {
            name: state.instance_name.clone(),
            version: velour_core::VERSION.to_owned(),
            description: Some("Velour video library".to_owned()),
            total_works: totals.total_works,
            total_videos: totals.total_videos,
            total_storage: totals.total_storage,
            capabilities: vec![SYNC_CAPABILITY.to_owned(), AFTER_CAPABILITY.to_owned()],
        }))
    }

    /// Works with their videos, by title. Peers read every page of this to sync.
    ///
    /// Velour's extension (capability `works.updated_since` in `/instance`): with
    /// `updated_since`, only the works changed since then are listed, and `sync.deleted`
    /// holds the tombstones of videos and works removed since then. Every answer carries
    /// `sync.cursor`, the `updated_since` to use next time once all pages are read.
    /// Tombstones are kept for a while (`VELOUR_TOMBSTONE_RETENTION_DAYS`): a cursor from
    /// before the oldest kept gets 410 `cursor-too-old`, and the reader starts over.
    #[oai(path = "/works", method = "get", operation_id = "list_works")]
    async fn works(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        /// Page number, from 1.
        page: Query<Option<i64>>,
        /// Works per page, 1 to 100 (default 50).
        per_page: Query<Option<i64>>,
        /// RFC 3339. Only works changed at or after this instant, with the tombstones of
        /// what was removed since; pass the `sync.cursor` of the previous listing.
        updated_since: Query<Option<DateTime<Utc>>>,
        /// The `sync.next_after` of the previous page (capability `works.after`): this
        /// page starts after that page's last work, and `page` only numbers it.
        after: Query<Option<String>>,
    ) -> Result<RenderedJson<WorksPage>, ApiError> {
        auth.require_read()?;
        let page = page_request(page.0, per_page.0)?;
        let db = |e| ApiError::from_db(e, "works");
        let rfc3339 = |cursor: DateTime<Utc>| cursor.to_rfc3339_opts(SecondsFormat::Micros, true);
        let access = MetadataAccess::of(&auth);

        let Some(since) = updated_since.0 else {
            // TODO(#5): with pages kept, 64 connections on a two-core VM get p99 41-45 ms
            // (target 25 ms) at ~3,800 pages/s: the key lookup, the GCRA call and the audit
            // insert every request makes, and pages past the cache budget, fill both cores.
            // Taken before the rows are read: see `pages`.
            let catalog = state.hot.catalog_version();
            let after = after.0.as_deref().map(parse_after).transpose()?;
            let key = catalog.map(|catalog| PageKey::new(catalog, page, after.clone(), access));
            if let Some(body) = key.as_ref().and_then(|key| state.pages.get(key)) {
                return Ok(RenderedJson::kept(body));
            }
            let listed = match &after {
                None => {
                    velour_db::catalog::list_works_at(&state.pool, &state.listing, catalog, page)
                        .await
                        .map_err(db)?
                }
                Some((title, id)) => velour_db::catalog::list_works_after(
                    &state.pool,
                    &state.listing,
                    catalog,
                    (title, *id),
                    page,
                )
                .await
                .map_err(db)?,
            };
            let sync = SyncState {
                cursor: rfc3339(listed.cursor),
                deleted: Vec::new(),
                deleted_count: 0,
                next_after: listed.next.map(|(title, id)| after_token(&title, id)),
            };
            let rendered = RenderedJson::render(&WorksPage {
                works: listed.works.into_iter().map(|w| work(w, access)).collect(),
                pagination: pagination(page, listed.total),
                sync: Some(sync),
            })?;
            if let Some(key) = key {
                state.pages.insert(key, rendered.body().clone());
            }
            return Ok(rendered);
        };
        if after.0.is_some() {
            return Err(ApiError::bad_request(
                "invalid-after",
                "after reads the whole listing; it cannot be combined with updated_since",
            ));
        }
        // Taken before the rows are read, so that nothing written meanwhile is missed.
        let cursor = velour_db::catalog::sync_cursor(&state.pool).await.map_err(db)?;
        let cursor = rfc3339(cursor);
        let (works, total) =
            velour_db::catalog::list_changed_works(&state.pool, since, page).await.map_err(db)?;
        let (deleted, deleted_count) =
            velour_db::catalog::list_tombstones(&state.pool, since, page).await.map_err(db)?;
        // Read after the tombstones: a prune commits its horizon with its deletions, so
        // tombstones read without a prune's deletions are whole, and a read that saw them
        // finds the horizon here.
        let horizon = velour_db::maintenance::tombstone_horizon(&state.pool).await.map_err(db)?;
        if let Some(horizon) = horizon.filter(|horizon| since <= *horizon) {
            return Err(ApiError::gone(
                "cursor-too-old",
                format!(
                    "removals up to {} are no longer kept; read the whole listing again, \
                     without updated_since",
                    rfc3339(horizon)
                ),
            ));
        }
        let mut pagination = pagination(page, total);
        pagination.total_pages = pagination.total_pages.max(page.total_pages(deleted_count));
        RenderedJson::render(&WorksPage {
            works: works.into_iter().map(|w| work(w, access)).collect(),
            pagination,
            sync: Some(SyncState {
                cursor,
                deleted: deleted.into_iter().map(tombstone).collect(),
                deleted_count,
                next_after: None,
            }),
        })
    }

    /// One work with its videos.
    #[oai(path = "/works/:id", method = "get", operation_id = "get_work")]
    async fn work(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<WireJson<Work>, ApiError> {
        auth.require_read()?;
        let found = velour_db::catalog::get_work(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "work"))?;
        Ok(WireJson(work(found, MetadataAccess::of(&auth))))
    }

    /// Videos whose work title contains the query (case-insensitive; `%` and `_` match
    /// themselves).
    #[oai(path = "/videos/search", method = "get", operation_id = "search_videos")]
    async fn search(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        /// Text to find in work titles.
        query: Query<String>,
        page: Query<Option<i64>>,
        per_page: Query<Option<i64>>,
    ) -> Result<WireJson<VideosPage>, ApiError> {
        auth.require_read()?;
        let page = page_request(page.0, per_page.0)?;
        let query = query.0.trim();
        if query.is_empty() {
            return Err(ApiError::bad_request("empty-query", "query must not be empty"));
        }
        if query.contains('\0') {
            return Err(ApiError::bad_request("invalid-query", "query must not contain NUL"));
        }
        let (rows, total) = velour_db::catalog::search_videos(&state.search_pool, query, page)
            .await
            .map_err(|e| ApiError::from_db(e, "videos"))?;
        Ok(WireJson(VideosPage {
            videos: rows.into_iter().map(|v| video(v, MetadataAccess::of(&auth))).collect(),
            pagination: pagination(page, total),
        }))
    }

    /// One video.
    #[oai(path = "/videos/:id", method = "get", operation_id = "get_video")]
    async fn video(
        &self,
        auth: ApiKeyAuth,
        state: Data<&GatewayState>,
        id: Path<i64>,
    ) -> Result<WireJson<Video>, ApiError> {
        auth.require_read()?;
        let row = velour_db::catalog::get_video(&state.pool, id.0)
            .await
            .map_err(|e| ApiError::from_db(e, "video"))?;
        Ok(WireJson(video(row, MetadataAccess::of(&auth))))
    }
}
