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
use velour_peer::{
    AFTER_CAPABILITY, PeerClient, PeerError, RotatedKey, SYNC_CAPABILITY, Work, WorkVideo,
    WorksPage,
};

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
    let base_url = client.base_url().as_str().to_owned();
    let pool = scan.pool();

    // A cursor is stored only after a complete scan of a peer that advertised incremental
    // listings. With one, an unchanged peer costs one small request: no ping, no
    // `/instance`, one page that lists nothing.
    if let Some(cursor) = locations::sync_cursor(pool, scan.location_id).await? {
        let pages = Pages::Changes(&cursor);
        match read_listing(scan, &client, &base_url, pages, tally).await {
            Ok(Listing { next_cursor: Some(next) }) => {
                locations::set_sync_cursor(pool, scan.location_id, Some(&next)).await?;
                info!(incremental = true, "peer changes read");
                return Ok(());
            }
            // The peer answered like an instance of the original design (no `sync`): it
            // no longer lists changes, and a full scan follows.
            Ok(Listing { next_cursor: None }) => {
                info!("the peer no longer lists changes; reading its whole catalog");
            }
            // The peer pruned tombstones we had not read. Changes saved from earlier pages
            // stand; the full scan and its sweep catch up with what was forgotten.
            Err(ScanFailure::Peer(PeerError::Gone { .. })) => {
                info!("the peer no longer keeps changes since our cursor; reading everything");
            }
            Err(failure) => return Err(failure),
        }
        locations::set_sync_cursor(pool, scan.location_id, None).await?;
        tally.forget_seen();
    }

    client.ping().await?;
    let client = rotate_key_if_expiring(scan, client).await?;
    let instance = client.instance().await?;
    let incremental = instance.capabilities.iter().any(|c| c == SYNC_CAPABILITY);
    let by_key = instance.capabilities.iter().any(|c| c == AFTER_CAPABILITY);
    info!(
        peer.name = %instance.name,
        peer.version = %instance.version,
        peer.total_works = instance.total_works,
        peer.incremental = incremental,
        peer.pages_by_key = by_key,
        "peer answered"
    );

    let pages = if by_key { Pages::AfterKey } else { Pages::Numbered };
    let listing = read_listing(scan, &client, &base_url, pages, tally).await?;
    let cursor = listing.next_cursor.filter(|_| incremental);
    // A video the peer moved, while we read, from a work not yet read to one already read
    // was on no page; the sweep would remove it until the next scan. The peer's changes
    // since the first page hold its new work (and tombstones of what went meanwhile), so
    // they are read before the sweep. Changes are paged by number, and a work that leaves
    // them meanwhile can push another past the pages read: the cursor kept is still the
    // full listing's, so that the next scan reads all of them again. A peer without
    // changes is read by page number and keeps the gap.
    if let Some(since) = &cursor {
        match read_listing(scan, &client, &base_url, Pages::Changes(since), tally).await {
            Ok(changes) => debug!(listed = changes.next_cursor.is_some(), "changes meanwhile read"),
            // The cursor reaches back past the peer's pruned tombstones (a transaction of
            // the peer's was open for that long): the sweep goes on without the catch-up,
            // and the next scan reads everything again.
            Err(ScanFailure::Peer(PeerError::Gone { .. })) => {
                info!("the peer no longer keeps changes since its listing began");
            }
            Err(failure) => return Err(failure),
        }
    }
    // Only a complete listing gets here: every failure above returned early.
    let sweep =
        ingest::remove_unseen_videos(pool, scan.location_id, &tally.seen_video_ids()).await?;
    tally.swept(sweep);
    locations::set_sync_cursor(pool, scan.location_id, cursor.as_deref()).await?;
    Ok(())
}

/// What reading every page of a listing left us with.
struct Listing {
    /// The first page's `sync.cursor`: everything changed after it is in a later listing.
    /// `None` when the peer does not report one.
    next_cursor: Option<String>,
}

/// The longest cursor accepted from a peer; ours are RFC 3339 timestamps (~30 bytes).
const MAX_CURSOR_BYTES: usize = 256;
/// The longest `sync.next_after` sent back to a peer; ours name a work by id and title.
const MAX_AFTER_BYTES: usize = 4096;

/// How a listing's pages are asked for.
#[derive(Clone, Copy, Debug)]
enum Pages<'a> {
    /// The whole catalog, by page number (peers of the original design). A work removed
    /// from an earlier page while the pages are read shifts the rest, and one of them is
    /// then on no page read.
    Numbered,
    /// The whole catalog, each page after the last work of the one before (`works.after`):
    /// every work listed throughout the reading is on a page read.
    AfterKey,
    /// The works changed after this cursor, with tombstones, by page number: a change
    /// made while they are read only adds to the set, which the next reading covers.
    Changes(&'a str),
}

/// Reads every page of the peer's listing: the whole catalog, or with `since` the changes
/// after that cursor. Each page is saved as it comes. With `since`, a first page without
/// `sync` (a peer that ignores the parameter) ends the reading at once with no cursor,
/// before anything is saved.
async fn read_listing(
    scan: &ScanContext<'_>,
    client: &PeerClient,
    base_url: &str,
    pages: Pages<'_>,
    tally: &mut Tally,
) -> Result<Listing, ScanFailure> {
    let since = match pages {
        Pages::Changes(cursor) => Some(cursor),
        Pages::Numbered | Pages::AfterKey => None,
    };
    let by_key = matches!(pages, Pages::AfterKey);
    let mut page_number: u32 = 1;
    let mut last_page_allowed: Option<i64> = None;
    let mut next_cursor: Option<String> = None;
    // The next page is fetched while this one is saved: the peer's work and ours overlap.
    let mut prefetched: Option<Result<WorksPage, PeerError>> = None;
    loop {
        let page = match prefetched.take() {
            Some(fetched) => fetched?,
            None => fetch_page(client, pages, page_number, None).await?,
        };
        let pagination = page.pagination;
        if pagination.current_page != i64::from(page_number) {
            return Err(ScanFailure::PeerListing(format!(
                "asked for page {page_number}, the peer answered page {}",
                pagination.current_page
            )));
        }
        match (&page.sync, since) {
            (None, Some(_)) if page_number == 1 => return Ok(Listing { next_cursor: None }),
            (None, Some(_)) => {
                return Err(ScanFailure::PeerListing(format!(
                    "page {page_number} of the peer's changes came without its sync state"
                )));
            }
            (Some(sync), _) if page_number == 1 => {
                if sync.cursor.is_empty() || sync.cursor.len() > MAX_CURSOR_BYTES {
                    return Err(ScanFailure::PeerListing(
                        "the peer's sync cursor is empty or too long".to_owned(),
                    ));
                }
                next_cursor = Some(sync.cursor.clone());
            }
            _ => {}
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
        let tombstones = since.and(page.sync.as_ref()).map_or(0, |s| s.deleted.len());
        // By key, the page that names no next one is the last (an empty one after the
        // first included), once `keyed_end` agrees it may be. (The first page is read by
        // number, and an empty one is checked as such below.)
        let after = if by_key { next_after(&page)? } else { None };
        if by_key && after.is_none() {
            keyed_end(&page, page_number)?;
            if page.works.is_empty() && page_number > 1 {
                break;
            }
        }
        if page.works.is_empty() && tombstones == 0 {
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
        // fails, and nothing is marked removed unless every page was read (tombstones are
        // the peer's own word, so they apply page by page).
        let number = i64::from(page_number);
        let saving = save_page(scan, base_url, &page, since.is_some());
        // By key the listing goes on while pages are full, also past the total counted
        // at the first page: works added meanwhile before the reading's position push
        // the last ones further on.
        let more = if by_key { after.is_some() } else { number < pagination.total_pages };
        let next = page_number.checked_add(1).filter(|_| more && number < allowed);
        let page_tally = match next {
            Some(next) => {
                let fetching = fetch_page(client, pages, next, after.as_deref());
                let (saved, fetched) = tokio::join!(saving, fetching);
                prefetched = Some(fetched);
                saved?
            }
            None => saving.await?,
        };
        tally.merge(page_tally);
        scan.wrote_listing().await;

        if !more {
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
    Ok(Listing { next_cursor })
}

/// Page `page` of the listing; by key, `after` is the previous page's `sync.next_after`.
async fn fetch_page(
    client: &PeerClient,
    pages: Pages<'_>,
    page: u32,
    after: Option<&str>,
) -> Result<WorksPage, PeerError> {
    match (pages, after) {
        (Pages::Changes(cursor), _) => client.works_page_since(cursor, page, PER_PAGE).await,
        (Pages::AfterKey, Some(after)) => client.works_page_after(after, page, PER_PAGE).await,
        (Pages::Numbered | Pages::AfterKey, _) => client.works_page(page, PER_PAGE).await,
    }
}

/// Whether `page`, which names no next page, may end a listing read by key. Not when it is
/// full: a peer that pages by key names the next page after every full one, so this answer
/// came from something that does not (an older replica behind the same address, which
/// also ignores `after`). Not before the last page the peer counts as it answered: the
/// count is taken afresh for every page, so works that left the listing meanwhile lower
/// it. Either way what was read is not the whole listing, and the sweep must not run.
fn keyed_end(page: &WorksPage, number: u32) -> Result<(), ScanFailure> {
    let full = u32::try_from(page.works.len()).is_ok_and(|n| n >= PER_PAGE);
    if full {
        return Err(ScanFailure::PeerListing(format!(
            "page {number} is full but names no next page (sync.next_after); the peer does \
             not page by key after all"
        )));
    }
    if i64::from(number) < page.pagination.total_pages {
        return Err(ScanFailure::PeerListing(format!(
            "the listing by key ended at page {number} though the peer counts {} pages",
            page.pagination.total_pages
        )));
    }
    Ok(())
}

/// Where the page after `page` starts, for a peer that pages by key: `None` when `page`
/// is the last.
fn next_after(page: &WorksPage) -> Result<Option<String>, ScanFailure> {
    let Some(after) = page.sync.as_ref().and_then(|s| s.next_after.clone()) else {
        return Ok(None);
    };
    if after.is_empty() || after.len() > MAX_AFTER_BYTES {
        return Err(ScanFailure::PeerListing(
            "the peer's sync.next_after is empty or too long".to_owned(),
        ));
    }
    if page.works.is_empty() {
        return Err(ScanFailure::PeerListing(
            "the peer named a next page after an empty one".to_owned(),
        ));
    }
    Ok(Some(after))
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
    locations::set_peer_api_key(scan.pool(), &scan.state.secrets, scan.location_id, &rotated.key)
        .await?;
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

/// How often a page is saved again after Postgres broke a deadlock by rolling it back.
/// Works are locked in one order, so a deadlock needs a page's tombstones and another
/// scan's page to cross; a second try almost always passes.
const SAVE_ATTEMPTS: u32 = 3;

/// A work of a page as it will be saved, with the videos it keeps.
struct PageWork<'a> {
    title: String,
    listed: &'a Work,
    videos: Vec<&'a WorkVideo>,
}

/// Saves one page in one transaction, and returns what it saw once it is committed.
// TODO(#5): a full scan of 100,000 works takes 40-55 s on one two-core VM and 72 s on a
// slower one (target 60 s). The videos statement is most of a page's save (27 ms idle, 85
// ms during a scan): on a first scan each work is written twice, inserted by the works
// statement and updated by the present-video count, never as a HOT update since the
// listing's partial index reads that count.
/// The page costs a handful of statements whatever its size: its works in one upsert,
/// its videos in another, its tombstones in a third.
async fn save_page(
    scan: &ScanContext<'_>,
    base_url: &str,
    page: &WorksPage,
    apply_tombstones: bool,
) -> Result<Tally, ScanFailure> {
    let mut skips: Vec<(String, &'static str)> = Vec::new();
    let works = storable_works(page, &mut skips);
    let gone: Vec<String> = match &page.sync {
        Some(sync) if apply_tombstones => {
            sync.deleted.iter().filter(|t| t.kind == "video").map(|t| t.id.to_string()).collect()
        }
        _ => Vec::new(),
    };

    let mut attempt = 1;
    let tally = loop {
        match save_page_once(scan, base_url, &works, &gone).await {
            Err(ScanFailure::Database(err)) if err.is_deadlock() && attempt < SAVE_ATTEMPTS => {
                warn!(attempt, "a peer page was rolled back to break a deadlock; saving again");
                attempt += 1;
            }
            outcome => break outcome?,
        }
    };

    for (path, reason) in skips {
        scan.skip(&path, reason).await?;
    }
    Ok(tally)
}

/// The page's works that can be stored, each with the videos it keeps; what cannot be
/// stored goes to `skips`.
fn storable_works<'a>(
    page: &'a WorksPage,
    skips: &mut Vec<(String, &'static str)>,
) -> Vec<PageWork<'a>> {
    let mut works = Vec::with_capacity(page.works.len());
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
        let reason = unstorable_work(&title)
            .or(title.is_empty().then_some("the peer listed it under a work with no title"));
        if let Some(reason) = reason {
            skips.extend(videos.iter().map(|video| (skip_path(video), reason)));
            continue;
        }
        works.push(PageWork { title, listed: work, videos });
    }
    works
}

async fn save_page_once(
    scan: &ScanContext<'_>,
    base_url: &str,
    works: &[PageWork<'_>],
    gone: &[String],
) -> Result<Tally, ScanFailure> {
    let mut tally = Tally::default();
    let mut tx = scan.pool().begin().await?;

    let found: Vec<FoundWork<'_>> = works
        .iter()
        .map(|work| FoundWork {
            title: &work.title,
            year: work.listed.year,
            description: work.listed.description.as_deref().filter(storable_text),
            director: work.listed.director.as_deref().filter(storable_text),
            rating: work.listed.rating.filter(|r| r.is_finite()),
        })
        .collect();
    let work_changes = ingest::upsert_works(&mut tx, &found).await?;

    let mut rows: Vec<(i64, &WorkVideo, String, Value, Value)> = Vec::new();
    for (work, (work_id, work_change)) in works.iter().zip(work_changes) {
        tally.work(work_id, work_change);
        for video in &work.videos {
            let fingerprints = match &video.fingerprints {
                Value::Object(_) => video.fingerprints.clone(),
                _ => json!({}),
            };
            let metadata = json!({ "remote_video_id": video.id, "remote_instance_url": base_url });
            rows.push((work_id, video, video.id.to_string(), fingerprints, metadata));
        }
    }
    let videos: Vec<FoundVideo<'_>> = rows
        .iter()
        .map(|(work_id, video, source_key, fingerprints, metadata)| FoundVideo {
            work_id: *work_id,
            storage_location_id: scan.location_id,
            source_key,
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
            fingerprints,
            video_metadata: metadata,
        })
        .collect();
    // A peer that lists one video twice gets it saved twice, in order, as before: each
    // statement takes every source key at most once.
    for batch in without_repeated_keys(&videos) {
        let changes = ingest::upsert_videos(&mut tx, scan.location_id, &batch).await?;
        for (video, (video_id, change)) in batch.iter().zip(changes) {
            tally.video(video_id, video.work_id, change);
        }
    }

    let sweep = ingest::remove_videos_by_source_key(&mut tx, scan.location_id, gone).await?;
    tally.removed(sweep);
    tx.commit().await?;
    Ok(tally)
}

/// Splits videos into consecutive batches in which no source key repeats, keeping their
/// order; one batch unless the peer listed a video twice.
fn without_repeated_keys<'a>(videos: &[FoundVideo<'a>]) -> Vec<Vec<FoundVideo<'a>>> {
    let mut batches: Vec<Vec<FoundVideo<'a>>> = Vec::new();
    let mut keys: Vec<std::collections::HashSet<&str>> = Vec::new();
    for video in videos {
        // Into the batch after the last one holding this key.
        let after = keys.iter().rposition(|k| k.contains(video.source_key)).map_or(0, |i| i + 1);
        if after == batches.len() {
            batches.push(Vec::new());
            keys.push(Default::default());
        }
        batches[after].push(video.clone());
        keys[after].insert(video.source_key);
    }
    batches
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
