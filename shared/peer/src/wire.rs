//! The federation wire format.

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /api/v1/ping`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct Ping {
    /// Always `ok` when the instance answers.
    pub status: String,
    /// The instance's clock, ISO 8601.
    pub timestamp: DateTime<Utc>,
}

/// `GET /api/v1/instance`: who the instance is and how much it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct InstanceInfo {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Works with at least one present video.
    #[serde(default)]
    pub total_works: i64,
    /// Present videos.
    #[serde(default)]
    pub total_videos: i64,
    /// Bytes held by present videos.
    #[serde(default)]
    pub total_storage: i64,
    /// Velour's extensions to the original design that this instance supports, such as
    /// `works.updated_since` (incremental listings, see `GET /api/v1/works`). Instances of
    /// the original design send none.
    #[serde(default)]
    #[oai(default)]
    pub capabilities: Vec<String>,
}

/// The capability of `GET /api/v1/works?updated_since=`: changed works, tombstones and a
/// cursor in `sync`.
pub const SYNC_CAPABILITY: &str = "works.updated_since";

/// The capability of `GET /api/v1/works?after=`: pages that start after the last work of
/// the previous one (`sync.next_after`) rather than at a position, so that a work removed
/// from an earlier page while the listing is read shifts nothing and no work is skipped.
pub const AFTER_CAPABILITY: &str = "works.after";

/// Where a listing stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct Pagination {
    /// The page returned, from 1.
    pub current_page: i64,
    /// Pages in the whole listing at the time of the request.
    pub total_pages: i64,
    /// Items in the whole listing at the time of the request.
    pub total_count: i64,
}

/// A video as listed inside its work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct WorkVideo {
    pub id: i64,
    pub filename: String,
    /// Bytes, exact.
    pub file_size: i64,
    /// Whether browsers play it as it is (H.264/VP8/VP9/AV1 video in MP4 or WebM).
    #[serde(default)]
    pub web_compatible: bool,
    /// Seconds. Technical metadata, like `width`, `height`, `video_codec` and
    /// `audio_codec`: null for keys without `can_metadata`.
    #[serde(default)]
    pub duration: Option<f64>,
    #[serde(default)]
    pub width: Option<i32>,
    #[serde(default)]
    pub height: Option<i32>,
    #[serde(default)]
    pub video_codec: Option<String>,
    #[serde(default)]
    pub audio_codec: Option<String>,
    /// Content fingerprints by algorithm, e.g. `{"oshash": "0123456789abcdef"}`; an empty
    /// object for keys without `can_metadata`.
    #[serde(default)]
    pub fingerprints: Value,
    /// `local`, `s3` or `velour` (a video this instance itself reads from a peer).
    #[serde(default)]
    pub storage_type: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// A film or show with its videos.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct Work {
    pub id: i64,
    pub title: String,
    #[serde(default)]
    pub year: Option<i32>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub director: Option<String>,
    #[serde(default)]
    pub rating: Option<f64>,
    #[serde(default)]
    pub organized: bool,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub videos: Vec<WorkVideo>,
}

/// `GET /api/v1/works`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct WorksPage {
    pub works: Vec<Work>,
    pub pagination: Pagination,
    /// Velour's extension for incremental sync; absent from instances of the original
    /// design, which peers then read in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub sync: Option<SyncState>,
}

/// Where a listing leaves a peer that syncs incrementally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct SyncState {
    /// Pass this back as `updated_since` next time, once every page of this listing has
    /// been read. It is the server's own clock, reaching back before any write that may
    /// still be in progress, so nothing committed late is missed (a few changes may be
    /// sent twice).
    pub cursor: String,
    /// With `updated_since`: the videos and works removed since then, one page of them
    /// (the same page number and size as the works). Without it: empty, the listing being
    /// complete.
    #[serde(default)]
    pub deleted: Vec<Tombstone>,
    /// With `updated_since`: how many tombstones there are in all. `pagination` counts the
    /// changed works, and its `total_pages` covers the tombstones' pages too.
    #[serde(default)]
    pub deleted_count: i64,
    /// Without `updated_since`: pass this as `after`, with the next page's number, to read
    /// the works after this page's last one; null on a page that is not full (the last).
    #[serde(default)]
    pub next_after: Option<String>,
}

/// A video or work that left the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct Tombstone {
    /// `video` or `work`.
    #[serde(rename = "type")]
    #[oai(rename = "type")]
    pub kind: String,
    pub id: i64,
    /// The work a removed video was listed under.
    #[serde(default)]
    pub work_id: Option<i64>,
    #[serde(serialize_with = "rfc3339")]
    pub removed_at: DateTime<Utc>,
}

/// A video on its own (`GET /api/v1/videos/{id}` and search), naming its work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct Video {
    pub id: i64,
    pub filename: String,
    pub work_id: i64,
    pub work_title: String,
    pub file_size: i64,
    #[serde(default)]
    pub web_compatible: bool,
    /// Seconds. Technical metadata, like `width`, `height`, `video_codec` and
    /// `audio_codec`: null for keys without `can_metadata`.
    #[serde(default)]
    pub duration: Option<f64>,
    #[serde(default)]
    pub width: Option<i32>,
    #[serde(default)]
    pub height: Option<i32>,
    #[serde(default)]
    pub video_codec: Option<String>,
    #[serde(default)]
    pub audio_codec: Option<String>,
    /// Content fingerprints by algorithm; an empty object for keys without
    /// `can_metadata`.
    #[serde(default)]
    pub fingerprints: Value,
    #[serde(default)]
    pub storage_type: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// `GET /api/v1/videos/search`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct VideosPage {
    pub videos: Vec<Video>,
    pub pagination: Pagination,
}

/// What a key may do, as its holder sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct KeyPermissionsWire {
    #[serde(default)]
    pub can_read: bool,
    #[serde(default)]
    pub can_stream: bool,
    #[serde(default)]
    pub can_metadata: bool,
}

/// `GET /api/v1/keys/self`: the caller's own key, never the key itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Object)]
pub struct KeySelf {
    pub id: i64,
    /// The key's first characters, to recognise it.
    pub key_prefix: String,
    pub permissions: KeyPermissionsWire,
    /// When the key stops working; absent or null for a key that never expires.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's successor, if it was already rotated.
    #[serde(default)]
    pub replaced_by: Option<i64>,
}

/// `POST /api/v1/keys/rotate`: the caller's new key, in clear this once.
#[derive(Clone, PartialEq, Serialize, Deserialize, Object)]
pub struct RotatedKey {
    pub id: i64,
    /// The new key in clear. This is the only time it is shown: store it now.
    pub key: String,
    pub key_prefix: String,
    pub permissions: KeyPermissionsWire,
    /// When the new key stops working; null for a key that never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key that asked, which keeps working until this time.
    pub previous_key_id: i64,
    pub previous_key_expires_at: DateTime<Utc>,
}

// The clear key never reaches a log through `{:?}`.
impl std::fmt::Debug for RotatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatedKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("previous_key_id", &self.previous_key_id)
            .finish_non_exhaustive()
    }
}

/// Writes an instant as poem-openapi does (`2026-12-04T09:15:00.5+00:00`), so that a body
/// serialized by serde reads exactly as one rendered by the API's `Json` payload.
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as the original design's server writes it: extra fields, missing optional
    /// ones, and a null fingerprint map.
    const SEED_STYLE_PAGE: &str = r#"{
        "works": [{
            "id": 7, "title": "Big Buck Bunny", "year": 2008, "description": null,
            "director": null, "rating": null, "organized": false,
            "created_at": "2025-10-31T03:36:14Z",
            "videos": [{
                "id": 11, "filename": "bbb.mp4", "file_size": 1055736, "web_compatible": true,
                "duration": 5.312, "width": 1280, "height": 720, "video_codec": "h264",
                "audio_codec": "aac", "fingerprints": null, "storage_type": "local",
                "created_at": "2025-10-31T03:36:14+11:00", "unknown_extra": 1
            }]
        }],
        "pagination": {"current_page": 1, "total_pages": 1, "total_count": 1}
    }"#;

    #[test]
    fn a_seed_style_page_parses() {
        let page: WorksPage = serde_json::from_str(SEED_STYLE_PAGE).unwrap();
        assert_eq!(page.works[0].videos[0].file_size, 1_055_736);
        assert_eq!(page.pagination.total_count, 1);
    }

    #[test]
    fn a_seed_style_page_has_no_sync_state_and_ours_parse_back() {
        let page: WorksPage = serde_json::from_str(SEED_STYLE_PAGE).unwrap();
        assert_eq!(page.sync, None);
        let ours = r#"{"works": [], "pagination": {"current_page": 1, "total_pages": 0,
            "total_count": 0}, "sync": {"cursor": "2026-12-03T19:00:00.000001Z",
            "deleted": [{"type": "video", "id": 3, "work_id": 1,
            "removed_at": "2026-12-03T19:00:00Z"}], "deleted_count": 1}}"#;
        let page: WorksPage = serde_json::from_str(ours).unwrap();
        let sync = page.sync.unwrap();
        assert_eq!((sync.deleted[0].kind.as_str(), sync.deleted[0].id), ("video", 3));
    }

    #[test]
    fn a_bare_array_is_not_a_page() {
        assert!(serde_json::from_str::<WorksPage>("[]").is_err());
    }
}
