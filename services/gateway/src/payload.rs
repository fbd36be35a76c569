//! JSON bodies for the catalog's large answers, written straight from the value by serde.
//!
//! poem-openapi's `Json` payload turns a value into a `serde_json::Value` tree (a map and a
//! string per field) before writing it out; for a page of fifty works with their videos
//! that tree cost more of the gateway's time than the database did. `WireJson` documents
//! itself exactly as `Json` does (same media type, same schema) and writes the body with
//! the type's own `Serialize`: the peer wire types derive both, and the test below holds
//! the two renderings equal.

use crate::error::ApiError;
use bytes::Bytes;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Serialize;
use std::marker::PhantomData;

/// A JSON response body written by serde; see the module's documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct WireJson<T>(pub T);

/// A JSON body rendered once as `WireJson` would write it, and kept to be sent again
/// (see `pages`): documented as `T`, sent as the bytes it holds.
pub struct RenderedJson<T> {
    body: Bytes,
    of: PhantomData<fn() -> T>,
}

impl<T: Serialize> RenderedJson<T> {
    /// Renders `value`. Our own types always serialize; should one ever fail, the error
    /// is the API's internal one.
    pub fn render(value: &T) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(value).map_err(|err| ApiError::internal(&err))?;
        Ok(Self::kept(Bytes::from(body)))
    }
}

impl<T> RenderedJson<T> {
    /// A body rendered earlier from a `T`.
    pub fn kept(body: Bytes) -> Self {
        Self { body, of: PhantomData }
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The one response both payloads document: 200, JSON, `T`'s schema.
fn json_responses<T: Type>() -> MetaResponses {
    MetaResponses {
        responses: vec![MetaResponse {
            description: "",
            status: Some(200),
            status_range: None,
            content: vec![MetaMediaType { content_type: CONTENT_TYPE, schema: T::schema_ref() }],
            headers: vec![],
        }],
    }
}

/// `Payload` and `ApiResponse` for a JSON body documented as `T`.
macro_rules! documented_as_json {
    ($payload:ident) => {
        impl<T: Type> Payload for $payload<T> {
            const CONTENT_TYPE: &'static str = CONTENT_TYPE;

            fn check_content_type(content_type: &str) -> bool {
                poem_openapi::payload::Json::<T>::check_content_type(content_type)
            }

            fn schema_ref() -> MetaSchemaRef {
                T::schema_ref()
            }

            fn register(registry: &mut Registry) {
                T::register(registry);
            }
        }

        impl<T: Type> ApiResponse for $payload<T>
        where
            $payload<T>: IntoResponse,
        {
            fn meta() -> MetaResponses {
                json_responses::<T>()
            }

            fn register(registry: &mut Registry) {
                T::register(registry);
            }
        }
    };
}

documented_as_json!(WireJson);
documented_as_json!(RenderedJson);

impl<T: Type + Serialize + Send> IntoResponse for WireJson<T> {
    fn into_response(self) -> Response {
        match RenderedJson::render(&self.0) {
            Ok(rendered) => rendered.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

impl<T: Send> IntoResponse for RenderedJson<T> {
    fn into_response(self) -> Response {
        Response::builder().content_type(CONTENT_TYPE).body(self.body)
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;
    use serde_json::{Value, json};
    use velour_peer::{Video, VideosPage, WorksPage};

    /// Serde's rendering and poem-openapi's agree, for every field, null or not.
    fn same_both_ways<T: serde::Serialize + ToJSON>(value: &T) {
        let by_serde: Value = serde_json::to_value(value).expect("serializes");
        let by_openapi = value.to_json().expect("renders");
        // Only the members' order differs: serde keeps the declaration's, poem-openapi's
        // map sorts them; JSON objects are unordered.
        assert_eq!(by_serde, by_openapi);
    }

    fn video(id: i64, known: bool) -> Value {
        let some = |v: Value| if known { v } else { Value::Null };
        json!({
            "id": id, "filename": "Film (2001).mkv", "file_size": 1_234_567_890_123_i64,
            "web_compatible": known, "duration": some(json!(5400.25)),
            "width": some(json!(1920)), "height": some(json!(1080)),
            "video_codec": some(json!("h264")), "audio_codec": some(json!("aac")),
            "fingerprints": if known { json!({"oshash": "0123456789abcdef"}) } else { json!({}) },
            "storage_type": some(json!("local")),
            "created_at": "2026-12-04T09:15:00.123456+00:00",
            "work_id": 7, "work_title": "Film \"quoted\" ü",
        })
    }

    #[test]
    fn works_pages_read_the_same_as_poem_openapi_renders_them() {
        for sync in [
            json!(null),
            json!({ "cursor": "2026-12-04T09:15:00Z", "deleted": [
            { "type": "video", "id": 3, "work_id": 7, "removed_at": "2026-12-04T09:00:00Z" },
            { "type": "work", "id": 7, "work_id": null, "removed_at": "2026-12-04T09:00:01Z" },
        ], "deleted_count": 2 }),
        ] {
            let page: WorksPage = serde_json::from_value(json!({
                "works": [{
                    "id": 7, "title": "Film", "year": 2001, "description": "Line\nbreak",
                    "director": null, "rating": 7.5, "organized": true,
                    "created_at": "2026-12-04T09:15:00+00:00",
                    "videos": [video(1, true), video(2, false)],
                }, {
                    "id": 8, "title": "Bare", "year": null, "description": null,
                    "director": "Someone", "rating": null, "organized": false,
                    "created_at": "2026-12-04T09:15:00.5+00:00", "videos": [],
                }],
                "pagination": { "current_page": 1, "total_pages": 1, "total_count": 2 },
                "sync": sync,
            }))
            .unwrap();
            same_both_ways(&page);
        }
    }

    #[test]
    fn videos_pages_read_the_same_as_poem_openapi_renders_them() {
        let videos: Vec<Video> = [video(1, true), video(2, false)]
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        same_both_ways(&videos[0]);
        let page = VideosPage {
            videos,
            pagination: velour_peer::Pagination {
                current_page: 2,
                total_pages: 3,
                total_count: 41,
            },
        };
        same_both_ways(&page);
    }
}
