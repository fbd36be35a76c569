//! Scanning a peer: read every page of its catalog and mirror its works and videos.

use crate::scan::{ScanContext, ScanFailure, Tally};
use chrono::Utc;
use secrecy::SecretString;
use serde_json::{Value, json};
use tracing::{debug, info, warn};
use url::Url;
use velour_core::ConnectionStatus;
use velour_core::normalize_title;
use velour_db::connections;
use velour_db::ingest::{self, FoundVideo, FoundWork};
use velour_db::locations::{self, LocationWithSecrets};
use velour_peer::{PeerClient, PeerError, RotatedKey, WorkVideo, WorksPage};

/// Works asked for per page: the most a Velour peer serves at once.
const PER_PAGE: u32 = 100;

/// Pages read beyond the count the peer gave on its first page. A catalog may grow while
/// we read it; a peer whose pages never end must not keep a worker busy forever.
const EXTRA_PAGES: i64 = 100;

/// The most pages one scan reads, whatever the peer claims: ten million works. A peer that
/// reports more is refused rather than trusted to keep a worker busy for days.
const MAX_PAGES: i64 = 100_000;

pub(crate) async fn scan_peer(
    scan: &ScanContext<'_>,
    location: &LocationWithSecrets,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    check_peer_scan_allowed(scan).await?;
    let client = peer_client(scan, location)?;
    client.ping().await?;
    let client = rotate_key_if_expiring(scan, client).await?;
    let instance = client.instance().await?;
    info!(
        peer.name = %instance.name,
        peer.version = %instance.version,
        peer.total_works = instance.total_works,
        "peer answered"
    );

    let base_url = client.base_url().as_str().to_owned();
    let mut page_number: u32 = 1;
    let mut last_page_allowed: Option<i64> = None;
    loop {
        let page = client.works_page(page_number, PER_PAGE).await?;
        let pagination = page.pagination;
        if pagination.current_page != i64::from(page_number) {
            return Err(ScanFailure::PeerListing(format!(
                "asked for page {page_number}, the peer answered page {}",
                pagination.current_page
            )));
        }
        if pagination.total_pages > MAX_PAGES {
            return Err(ScanFailure::PeerListing(format!(
                "the peer reports {} pages of works, more than the {MAX_PAGES} a scan reads",
                pagination.total_pages
            )));
        }
        let allowed =
            *last_page_allowed.get_or_insert(pagination.total_pages.saturating_add(EXTRA_PAGES));
        debug!(page = page_number, total_pages = pagination.total_pages, "peer page read");
        if page.works.is_empty() {
            // An empty page before the last one means the listing changed under us or the
            // peer is inconsistent; either way this is not a complete listing, and removing
            // what it did not show would be wrong.
            if i64::from(page_number) < pagination.total_pages {
                return Err(ScanFailure::PeerListing(format!(
                    "page {page_number} was empty though the peer reported {} pages",
                    pagination.total_pages
                )));
            }
            break;
        }

        // Each page is saved whole or not at all; earlier pages stay saved if a later one
        // fails, and nothing is marked removed unless every page was read.
        let page_tally = save_page(scan, &base_url, &page).await?;
        tally.merge(page_tally);

        let number = i64::from(page_number);
        if number >= pagination.total_pages {
            break;
        }
        if number >= allowed {
            return Err(ScanFailure::PeerListing(format!(
                "the peer still reported {} pages after {number} were read",
                pagination.total_pages
            )));
        }
        page_number = page_number.checked_add(1).ok_or_else(|| {
            ScanFailure::PeerListing("the peer listed more pages than can be asked for".into())
        })?;
    }

    let sweep =
        ingest::remove_unseen_videos(scan.pool(), scan.location_id, &tally.seen_video_ids())
            .await?;
    tally.swept(sweep);
    Ok(())
}

/// A peer is scanned only with federation on and its connection, if it has one, active:
/// the gateway refuses such scan requests, and a job queued before a change is refused
/// here.
async fn check_peer_scan_allowed(scan: &ScanContext<'_>) -> Result<(), ScanFailure> {
    if !scan.state.federation.enabled {
        return Err(ScanFailure::FederationDisabled);
    }
    match connections::status_for_location(scan.pool(), scan.location_id).await? {
        None | Some(ConnectionStatus::Active) => Ok(()),
        Some(status) => Err(ScanFailure::ConnectionInactive(status)),
    }
}

/// Rotates the key we hold for the peer when it expires within the rotation grace window,
/// and stores the successor in the location's secrets. A peer that does not know
/// `keys/self` (one of the original design) is scanned with the key as it is.
async fn rotate_key_if_expiring(
    scan: &ScanContext<'_>,
    client: PeerClient,
) -> Result<PeerClient, ScanFailure> {
    let own = match client.key_self().await {
        Ok(own) => own,
        Err(PeerError::Status { status: 404 | 405, .. }) => {
            debug!("the peer cannot tell our key's expiry; not rotating");
            return Ok(client);
        }
        Err(err) => return Err(err.into()),
    };
    let Some(expires_at) = own.expires_at else {
        return Ok(client);
    };
    if expires_at - Utc::now() > scan.state.federation.rotation_grace() {
        return Ok(client);
    }
    if own.replaced_by.is_some() {
        // Rotated before, but its successor never reached our secrets (we failed between
        // the peer's answer and our write): only the peer's administrator can help now.
        warn!(api_key.id = own.id, %expires_at, "our key for the peer was rotated elsewhere");
        return Ok(client);
    }
    let rotated = client.rotate_key().await?;
    ingest_rotated_key(scan, &rotated).await?;
    info!(
        old_key.id = own.id,
        new_key.id = rotated.id,
        old_key.expires_at = %rotated.previous_key_expires_at,
        "rotated the key we hold for the peer"
    );
    Ok(client.with_key(SecretString::from(rotated.key)))
}

async fn ingest_rotated_key(
    scan: &ScanContext<'_>,
    rotated: &RotatedKey,
) -> Result<(), ScanFailure> {
    if rotated.key.is_empty() || !rotated.key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ScanFailure::PeerListing("the peer's rotated key is not usable".into()));
    }
    locations::set_peer_api_key(scan.pool(), scan.location_id, &rotated.key).await?;
    Ok(())
}

fn peer_client(
    scan: &ScanContext<'_>,
    location: &LocationWithSecrets,
) -> Result<PeerClient, ScanFailure> {
    let raw_url = location
        .location
        .config_str("remote_instance_url")
        .ok_or_else(|| ScanFailure::Misconfigured("it has no remote_instance_url".to_owned()))?;
    let url = Url::parse(raw_url).map_err(|e| {
        ScanFailure::Misconfigured(format!("remote_instance_url {raw_url:?} is not a URL: {e}"))
    })?;
    let key = location
        .secret_str("api_key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ScanFailure::Misconfigured("it has no api_key".to_owned()))?;
    Ok(PeerClient::new(&url, SecretString::from(key), &scan.state.peer)?)
}

/// Saves one page in one transaction, and returns what it saw once it is committed.
async fn save_page(
    scan: &ScanContext<'_>,
    base_url: &str,
    page: &WorksPage,
) -> Result<Tally, ScanFailure> {
    let mut tally = Tally::default();
    let mut skips: Vec<(String, &'static str)> = Vec::new();
    let mut tx = scan.pool().begin().await?;

    for work in &page.works {
        let mut videos: Vec<&WorkVideo> = Vec::new();
        for video in &work.videos {
            match skip_reason(video) {
                Some(reason) => skips.push((skip_path(video), reason)),
                None => videos.push(video),
            }
        }
        // A work is only created for a video it holds: an empty one would never be shown.
        if videos.is_empty() {
            continue;
        }
        let title = normalize_title(&work.title);
        if let Some(reason) = unstorable_work(&title) {
            for video in videos {
                skips.push((skip_path(video), reason));
            }
            continue;
        }
        if title.is_empty() {
            for video in videos {
                skips.push((skip_path(video), "the peer listed it under a work with no title"));
            }
            continue;
        }

        let found = FoundWork {
            title: &title,
            year: work.year,
            description: work.description.as_deref().filter(storable_text),
            director: work.director.as_deref().filter(storable_text),
            rating: work.rating.filter(|r| r.is_finite()),
        };
        let (work_id, work_change) = ingest::upsert_work(&mut tx, &found).await?;
        tally.work(work_id, work_change);

        for video in videos {
            let source_key = video.id.to_string();
            let fingerprints = match &video.fingerprints {
                Value::Object(_) => video.fingerprints.clone(),
                _ => json!({}),
            };
            let metadata = json!({ "remote_video_id": video.id, "remote_instance_url": base_url });
            let found = FoundVideo {
                work_id,
                storage_location_id: scan.location_id,
                source_key: &source_key,
                filename: &video.filename,
                file_size: video.file_size,
                modified_at: None,
                duration: video.duration.filter(|d| d.is_finite() && *d >= 0.0),
                width: video.width,
                height: video.height,
                video_codec: video.video_codec.as_deref(),
                audio_codec: video.audio_codec.as_deref(),
                container: None,
                web_compatible: video.web_compatible,
                fingerprints: &fingerprints,
                video_metadata: &metadata,
            };
            let (video_id, video_change) = ingest::upsert_video(&mut tx, &found).await?;
            tally.video(video_id, work_id, video_change);
        }
    }
    tx.commit().await?;

    for (path, reason) in skips {
        scan.skip(&path, reason).await?;
    }
    Ok(tally)
}

fn skip_reason(video: &WorkVideo) -> Option<&'static str> {
    if video.storage_type.as_deref() == Some("velour") {
        // The peer reads it from yet another peer; listing it here would make catalogs
        // federate each other's copies in a loop.
        return Some("the peer itself reads this video from another peer");
    }
    if video.file_size < 0 {
        return Some("the peer reported a negative file size");
    }
    let texts =
        [Some(video.filename.as_str()), video.video_codec.as_deref(), video.audio_codec.as_deref()];
    if texts.into_iter().flatten().any(|t| t.contains('\0'))
        || video.fingerprints.to_string().contains("\\u0000")
    {
        // Postgres cannot store NUL in text or JSON; one such entry must not fail the page.
        return Some("the peer sent text with a NUL character");
    }
    if video.filename.len() > MAX_TEXT_BYTES {
        return Some("the peer sent a file name too long to store");
    }
    None
}

/// The longest title or file name taken from a peer. Titles are indexed, and Postgres'
/// B-tree entries hold at most 2704 bytes.
const MAX_TEXT_BYTES: usize = 1024;

/// Optional text worth keeping: storable, and not absurdly long.
fn storable_text(text: &&str) -> bool {
    !text.contains('\0') && text.len() <= 64 * 1024
}

fn unstorable_work(title: &str) -> Option<&'static str> {
    if title.contains('\0') {
        return Some("the peer listed it under a title with a NUL character");
    }
    if title.len() > MAX_TEXT_BYTES {
        return Some("the peer listed it under a title too long to store");
    }
    None
}

/// How a skipped peer video is named in the scan run: its file name made storable (no NUL,
/// not endless) and its id on the peer.
fn skip_path(video: &WorkVideo) -> String {
    let name: String = video.filename.chars().take(300).collect();
    format!("{} (peer video {})", name.replace('\0', "\u{fffd}"), video.id)
}
