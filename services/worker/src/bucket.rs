//! Scanning a bucket: list it page by page, probe the objects that are new or changed over
//! a short-lived presigned URL, fingerprint them with two ranged reads (never the whole
//! object), and mark what is gone once the whole listing was read.

use crate::local::{IndexedItem, Unindexable, keep_or_skip, save_video, video_extension};
use crate::oshash;
use crate::probe::{self, ProbeError};
use crate::scan::{ScanContext, ScanFailure, Tally};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::info;
use velour_db::ingest::{self, KnownVideo};
use velour_db::locations::LocationWithSecrets;
use velour_storage::s3::{self, S3Object, S3Settings};

/// How much longer than one ffprobe run a presigned URL lives: ffprobe is killed at its
/// timeout, so the URL is useless soon after, and a leaked one expires quickly.
const PRESIGN_MARGIN: Duration = Duration::from_secs(30);

/// Listing pages read before a scan gives up on a store that never stops sending tokens.
/// At S3's 1000 keys a page this is ten million objects.
const MAX_PAGES: usize = 10_000;

pub(crate) async fn scan_bucket(
    scan: &ScanContext<'_>,
    location: &LocationWithSecrets,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    let settings = S3Settings::from_stored(&location.location.configuration.0, &location.secrets.0)
        .map_err(|e| ScanFailure::Misconfigured(e.to_string()))?;
    let client = settings.client();
    let bucket = Bucket { client: &client, settings: &settings };
    let known = ingest::known_videos(scan.pool(), scan.location_id).await?;
    let mut unindexable = Unindexable::load(scan).await?;
    let page_size = scan.state.worker.s3_list_page_size;

    let mut continuation = None;
    let mut pages = 0;
    loop {
        let page = s3::list_page(&client, &settings, continuation.take(), page_size).await?;
        pages += 1;
        for object in &page.objects {
            let known = known.get(&object.key);
            bucket.index_object(scan, object, known, &mut unindexable, tally).await?;
        }
        match page.next {
            Some(token) if pages < MAX_PAGES => continuation = Some(token),
            Some(_) => {
                return Err(ScanFailure::Misconfigured(format!(
                    "the bucket listing did not end after {MAX_PAGES} pages"
                )));
            }
            None => break,
        }
    }
    info!(pages, "bucket listed");

    // Only a listing read to its end shows what is gone.
    let seen = tally.seen_video_ids();
    unindexable.forget_the_rest(scan).await?;
    let sweep = ingest::remove_unseen_videos(scan.pool(), scan.location_id, &seen).await?;
    tally.swept(sweep);
    Ok(())
}

struct Bucket<'a> {
    client: &'a s3::aws_sdk_s3::Client,
    settings: &'a S3Settings,
}

impl Bucket<'_> {
    async fn index_object(
        &self,
        scan: &ScanContext<'_>,
        object: &S3Object,
        known: Option<&KnownVideo>,
        unindexable: &mut Unindexable,
        tally: &mut Tally,
    ) -> Result<(), ScanFailure> {
        let name = self.settings.relative_key(&object.key);
        // Folder markers, hidden files and anything that is not named as a video are
        // passed over, as in a folder.
        let hidden = name.split('/').any(|part| part.starts_with('.'));
        let Some(extension) = video_extension(Path::new(name)).filter(|_| !hidden) else {
            return Ok(());
        };
        let present = known.filter(|k| !k.removed);
        let Ok(size) = i64::try_from(object.size) else {
            return keep_or_skip(scan, &object.key, present, "the object is too large", tally)
                .await;
        };
        if size == 0 {
            return keep_or_skip(scan, &object.key, present, "the object is empty", tally).await;
        }
        // The ETag changes with the content; the size is checked too for stores whose
        // ETags are not content hashes.
        if let Some(known) = present.filter(|k| k.file_size == size && k.etag == object.etag) {
            tally.video(known.id, known.work_id, ingest::VideoChange::Unchanged);
            return Ok(());
        }
        let now = ingest::UnindexableFile {
            source_key: object.key.clone(),
            file_size: size,
            modified_at: None,
            etag: object.etag.clone(),
            reason: String::new(),
        };
        if let Some(reason) = unindexable.unchanged_failure(&now) {
            return keep_or_skip(scan, &object.key, present, &reason, tally).await;
        }

        let facts = match self.probe(scan, &object.key).await {
            Ok(facts) => facts,
            Err(ProbeError::Spawn { program, source }) => {
                return Err(ScanFailure::ProbeTool { program, reason: source.to_string() });
            }
            Err(err) => {
                unindexable.remember(scan, now, &err).await?;
                return keep_or_skip(scan, &object.key, present, &err.to_string(), tally).await;
            }
        };
        let oshash = match self.oshash(&object.key, object.size).await {
            Ok(hash) => hash,
            Err(err) => {
                let reason = format!("could not read the object: {err}");
                return keep_or_skip(scan, &object.key, present, &reason, tally).await;
            }
        };

        let item = IndexedItem {
            source_key: &object.key,
            name,
            size,
            modified: None,
            extension: &extension,
            metadata: json!({ "etag": object.etag }),
            nfo: None,
        };
        save_video(scan, &item, &facts, &oshash, tally).await
    }

    /// ffprobe over a presigned URL: it reads only what it needs, with ranged GETs.
    async fn probe(
        &self,
        scan: &ScanContext<'_>,
        key: &str,
    ) -> Result<probe::ProbeFacts, ProbeError> {
        let worker = &scan.state.worker;
        let timeout = Duration::from_secs(worker.probe_timeout_secs);
        let url = s3::presigned_get_url(self.client, self.settings, key, timeout + PRESIGN_MARGIN)
            .await
            .map_err(|e| ProbeError::Failed(format!("could not sign a URL for ffprobe: {e}")))?;
        scan.state.probes.fetch_add(1, Ordering::Relaxed);
        probe::probe_url(&worker.ffprobe, &url, key, timeout).await
    }

    /// The same oshash as for a file, from the first and the last 64 KiB.
    async fn oshash(&self, key: &str, size: u64) -> Result<String, s3::S3Error> {
        let len = size.min(oshash::CHUNK);
        let head = s3::read_range(self.client, self.settings, key, 0, len - 1).await?;
        let tail = s3::read_range(self.client, self.settings, key, size - len, size - 1).await?;
        // A store that ignored the range sent the whole object (or the object changed
        // under us): a hash of the wrong bytes would match nothing, so it is refused.
        if head.len() as u64 != len || tail.len() as u64 != len {
            return Err(s3::S3Error::Failed(format!(
                "asked for {len} bytes at each end, got {} and {}",
                head.len(),
                tail.len()
            )));
        }
        Ok(oshash::oshash(size, &head, &tail))
    }
}
