//! Bucket locations against a real S3-compatible server on loopback.

use crate::{H264_AAC, VP9_OPUS, counts, find_video};
use anyhow::Context;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use velour_core::settings::{AssetSettings, WorkerSettings};
use velour_storage::AssetStore;
use velour_tests::s3::S3Server;
use velour_tests::{Instance, make_video};

const NIGHT_TRAIN: &str = "Night Train (1999)/Night Train.mp4";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_is_listed_by_pages_streamed_by_range_and_meets_its_local_twin()
-> anyhow::Result<()> {
    let server = S3Server::start().await?;
    server.create_bucket("films").await?;

    // Three videos under the prefix, an impostor, a text file, and a video outside it:
    // more objects than one listing page of two keys.
    let library = tempfile::tempdir()?;
    let night_train = library.path().join(NIGHT_TRAIN);
    make_video(&night_train, H264_AAC, 2)?;
    let webm = library.path().join("clip.webm");
    make_video(&webm, VP9_OPUS, 1)?;
    let original = std::fs::read(&night_train)?;
    let size = original.len();
    server.put("films", &format!("library/{NIGHT_TRAIN}"), original.clone()).await?;
    server.put("films", "library/clips/Harbour Lights.webm", std::fs::read(&webm)?).await?;
    server.put("films", "library/Über Straße (2004).mp4", original.clone()).await?;
    server.put("films", "library/broken.mp4", b"these bytes are no video".to_vec()).await?;
    server.put("films", "library/notes.txt", b"not a video".to_vec()).await?;
    server.put("films", "elsewhere/Other (2001).mp4", original.clone()).await?;

    let worker = WorkerSettings { s3_list_page_size: 2, ..WorkerSettings::default() };
    let a = Instance::start_with("bucket", worker).await?;
    let locations = "/api/v1/admin/storage_locations";

    // Bad settings are refused with the field to fix; a bucket that is not there too.
    let mut bad = server.location_config("films", "library");
    bad["bucket"] = json!("Not A Bucket");
    let body = json!({ "name": "bad", "storage_type": "s3", "configuration": bad });
    let refused = a.post_json(locations, &body, StatusCode::BAD_REQUEST).await?;
    assert_eq!(refused["code"], "invalid-configuration", "{refused}");
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("bucket")), "{refused}");
    let missing = server.location_config("no-such-bucket", "");
    let body = json!({ "name": "missing", "storage_type": "s3", "configuration": missing });
    let refused = a.post_json(locations, &body, StatusCode::BAD_REQUEST).await?;
    assert_eq!(refused["code"], "storage-unreachable", "{refused}");

    // The location is created; its secret is never shown.
    let config = server.location_config("films", "/library");
    let body = json!({ "name": "bucket", "storage_type": "s3", "configuration": config });
    let created = a.post_json(locations, &body, StatusCode::CREATED).await?;
    let id = created["id"].as_i64().context("id")?;
    assert_eq!(created["configuration"]["prefix"], "library/");
    let shown = a.get_json(&format!("{locations}/{id}")).await?;
    assert!(!shown.to_string().contains("velour-test-secret"), "{shown}");
    assert!(!a.get_json(locations).await?.to_string().contains("velour-test-secret"));

    let run = a.scan(id).await?;
    assert_eq!(counts(&run, "videos"), [3, 3, 0, 0], "{run}");
    assert_eq!(run["videos_skipped"], 1, "{run}");
    assert_eq!(run["skipped"][0]["path"], "library/broken.mp4", "{run}");
    let works = a.all_works().await?;
    assert_eq!(works.len(), 3, "{works:?}");
    let video = find_video(&works, NIGHT_TRAIN)?;
    assert_eq!(video["file_size"].as_u64(), Some(size as u64));
    assert_eq!(video["video_codec"], "h264");
    assert!(video["duration"].as_f64().is_some_and(|d| (d - 2.0).abs() < 0.1), "{video}");
    let night = works.iter().find(|w| w["title"] == "Night Train").context("Night Train")?;
    assert_eq!(night["year"], 1999);
    assert!(works.iter().any(|w| w["title"] == "Über Straße" && w["year"] == 2004));

    // Ranges come back byte for byte; a multi-range request gets the whole object as 200.
    let stream = format!("/api/v1/videos/{}/stream", video["id"].as_i64().context("id")?);
    let get = |range: Option<&str>| {
        let request = a.admin(Method::GET, &stream);
        match range {
            Some(range) => request.header(header::RANGE, range),
            None => request,
        }
    };
    let ranged = get(Some("bytes=100-1123")).send().await?;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.headers()[header::CONTENT_RANGE], format!("bytes 100-1123/{size}").as_str());
    assert_eq!(ranged.headers()[header::CONTENT_TYPE], "video/mp4");
    assert_eq!(&ranged.bytes().await?[..], &original[100..1124]);
    let suffix = get(Some("bytes=-500")).send().await?;
    assert_eq!(suffix.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&suffix.bytes().await?[..], &original[size - 500..]);
    let whole = get(None).send().await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(&whole.bytes().await?[..], &original[..]);
    // Several ranges are planned here (S3 would send the whole object): touching ones
    // merge into one ranged read, others come as `multipart/byteranges`.
    let merged = get(Some("bytes=0-9,10-29")).send().await?;
    assert_eq!(merged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(merged.headers()[header::CONTENT_RANGE], format!("bytes 0-29/{size}").as_str());
    assert_eq!(&merged.bytes().await?[..], &original[..30]);
    let several = get(Some("bytes=0-9,20-29")).send().await?;
    assert_eq!(several.status(), StatusCode::PARTIAL_CONTENT);
    let content_type = several.headers()[header::CONTENT_TYPE].to_str()?.to_owned();
    assert!(content_type.starts_with("multipart/byteranges; boundary="), "{content_type}");
    let body = several.bytes().await?;
    let needle = format!("Content-Range: bytes 20-29/{size}\r\n\r\n");
    let at = body.windows(needle.len()).position(|w| w == needle.as_bytes()).context("part 2")?;
    assert_eq!(&body[at + needle.len()..at + needle.len() + 10], &original[20..30]);
    let beyond = get(Some(&format!("bytes={size}-"))).send().await?;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers()[header::CONTENT_RANGE], format!("bytes */{size}").as_str());
    let head = a.admin(Method::HEAD, &stream).send().await?;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], size.to_string().as_str());

    // Conditional requests are decided against the object's own validators.
    let etag = head.headers()[header::ETAG].to_str()?.to_owned();
    let revalidated = get(None).header(header::IF_NONE_MATCH, &etag).send().await?;
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.headers()[header::ETAG], etag.as_str());
    assert!(revalidated.bytes().await?.is_empty());
    let head_revalidated =
        a.admin(Method::HEAD, &stream).header(header::IF_NONE_MATCH, &etag).send().await?;
    assert_eq!(head_revalidated.status(), StatusCode::NOT_MODIFIED);
    let other = get(None).header(header::IF_NONE_MATCH, "\"another\"").send().await?;
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(other.bytes().await?.len(), size);
    let resumed = get(Some("bytes=100-1123")).header(header::IF_RANGE, &etag).send().await?;
    assert_eq!(resumed.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&resumed.bytes().await?[..], &original[100..1124]);
    let changed = get(Some("bytes=100-1123")).header(header::IF_MATCH, "\"old\"").send().await?;
    assert_eq!(changed.status(), StatusCode::PRECONDITION_FAILED);
    let matched = get(Some("bytes=100-1123")).header(header::IF_MATCH, &etag).send().await?;
    assert_eq!(matched.status(), StatusCode::PARTIAL_CONTENT);
    let stale = get(Some("bytes=100-1123")).header(header::IF_RANGE, "\"old\"").send().await?;
    assert_eq!(stale.status(), StatusCode::OK, "a stale If-Range gets the whole object");
    assert_eq!(&stale.bytes().await?[..], &original[..]);

    // The same file in a folder is the same video by fingerprint, under the same work.
    let folder = a.add_local_location("folder", library.path()).await?;
    a.scan(folder).await?;
    let works = a.all_works().await?;
    let night = works.iter().find(|w| w["title"] == "Night Train").context("Night Train")?;
    let videos = night["videos"].as_array().context("videos")?;
    let kinds: Vec<&Value> = videos.iter().map(|v| &v["storage_type"]).collect();
    assert_eq!(videos.len(), 2, "{night}");
    assert!(kinds.contains(&&json!("s3")) && kinds.contains(&&json!("local")), "{kinds:?}");
    let hashes: Vec<&Value> = videos.iter().map(|v| &v["fingerprints"]["oshash"]).collect();
    assert!(hashes[0].is_string());
    assert_eq!(hashes[0], hashes[1]);

    // The bucket's videos get thumbnails too: ffmpeg reads them over presigned URLs.
    let thumbnail = format!("/api/v1/videos/{}/thumbnail", video["id"].as_i64().context("id")?);
    let mut made = None;
    for _ in 0..600 {
        let response = a.admin(Method::GET, &thumbnail).send().await?;
        if response.status() == StatusCode::OK {
            made = Some(response.bytes().await?);
            break;
        }
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let jpeg = made.context("no thumbnail for the bucket's video within a minute")?;
    let image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)?;
    assert_eq!((image.width(), image.height()), (320, 240));

    // An unchanged bucket is not probed again; a deleted object is marked removed.
    let again = a.scan(id).await?;
    assert_eq!(counts(&again, "videos"), [3, 0, 0, 0], "{again}");
    let reason = again["skipped"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.ends_with("(unchanged since an earlier scan; not probed again)"), "{again}");
    let settings = server.settings("films")?;
    settings.client().delete_object().bucket("films").key("library/broken.mp4").send().await?;
    let key = "library/clips/Harbour Lights.webm";
    settings.client().delete_object().bucket("films").key(key).send().await?;
    let after = a.scan(id).await?;
    assert_eq!(counts(&after, "videos"), [2, 0, 0, 1], "{after}");
    assert_eq!(after["videos_skipped"], 0, "{after}");

    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_can_be_kept_in_a_bucket() -> anyhow::Result<()> {
    let server = S3Server::start().await?;
    server.create_bucket("assets").await?;
    let mut settings = AssetSettings::directory(std::path::Path::new("unused"));
    settings.asset_store = "s3://assets/velour".to_owned();
    settings.s3_endpoint = Some(server.endpoint.clone());
    settings.s3_access_key_id = Some("velour-test".to_owned());
    settings.s3_secret_access_key = Some("velour-test-secret".to_owned().into());
    let store = AssetStore::from_settings(&settings)?;

    let key = "thumbnails/7/0123abcd.jpg";
    assert_eq!(store.get(key).await?, None);
    store.put(key, bytes::Bytes::from_static(b"\xff\xd8 image"), "image/jpeg").await?;
    assert_eq!(store.get(key).await?.as_deref(), Some(&b"\xff\xd8 image"[..]));
    // Under the prefix, with its type, as any other client of the bucket sees it.
    let object = server
        .settings("assets")?
        .client()
        .head_object()
        .bucket("assets")
        .key(format!("velour/{key}"))
        .send()
        .await?;
    assert_eq!(object.content_type(), Some("image/jpeg"));
    store.delete(key).await?;
    store.delete(key).await?;
    assert_eq!(store.get(key).await?, None);

    // Wrong credentials are an error of the store, not "no such asset".
    settings.s3_secret_access_key = Some("wrong".to_owned().into());
    settings.s3_endpoint = Some(url::Url::parse("http://127.0.0.1:9/")?);
    let unreachable = AssetStore::from_settings(&settings)?;
    assert!(unreachable.get(key).await.is_err());
    Ok(())
}
