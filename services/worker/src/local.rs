//! Scanning a folder: walk it, probe the video files that are new or changed, and mark the
//! ones that are gone.

use crate::nfo::{self, Nfo, Sidecar};
use crate::oshash::oshash_file;
use crate::probe::{self, ProbeError, ProbeFacts};
use crate::scan::{ScanContext, ScanFailure, Tally};
use crate::title::title_for;
use chrono::{DateTime, SubsecRound, Utc};
use futures_util::StreamExt;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};
use velour_db::ingest::{self, FoundVideo, FoundWork, KnownVideo, VideoChange};
use velour_db::locations::LocationWithSecrets;
use walkdir::{DirEntry, WalkDir};

/// File extensions (lowercase) that are taken for videos.
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mkv", "webm", "mov", "avi", "wmv", "flv", "mpg", "mpeg", "ts", "m2ts", "ogv",
    "3gp",
];

pub(crate) async fn scan_folder(
    scan: &ScanContext<'_>,
    location: &LocationWithSecrets,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    let root = folder_root(location)?;
    if let Err(err) = tokio::fs::read_dir(&root).await {
        return Err(ScanFailure::FolderUnreadable {
            path: root.display().to_string(),
            reason: err.to_string(),
        });
    }
    let known = ingest::known_videos(scan.pool(), scan.location_id).await?;
    let mut unindexable = Unindexable::load(scan).await?;

    // Walking is blocking file-system work: off the async threads, so that the worker's
    // heartbeat to Redis keeps its rhythm during a long walk.
    let walk_root = root.clone();
    let walk = tokio::task::spawn_blocking(move || walk_folder(&walk_root))
        .await
        .map_err(|e| ScanFailure::Internal(format!("the folder walk stopped: {e}")))?;
    info!(files = walk.files.len(), complete = walk.complete, "folder walked");

    for skip in &walk.skips {
        scan.skip(&skip.path, &skip.reason).await?;
    }
    // Files that are there but could not be examined keep their rows as they were.
    for key in &walk.unexamined {
        if let Some(known) = known.get(key).filter(|k| !k.removed) {
            tally.video(known.id, known.work_id, ingest::VideoChange::Unchanged);
        }
    }
    // Rows whose files are no longer where they were: a new file of the same size and
    // fingerprint is the same video moved, and keeps its row and its work.
    let walked: HashSet<&str> = walk.files.iter().map(|f| f.key.as_str()).collect();
    let mut moved_from: Vec<&KnownVideo> = known
        .values()
        .filter(|k| !k.removed && k.oshash.is_some())
        .filter(|k| {
            !walked.contains(k.source_key.as_str()) && !walk.unexamined.contains(&k.source_key)
        })
        .collect();
    // What needs no reading is settled first, in walk order. The files left are read
    // (ffprobe, fingerprint) `VELOUR_PROBE_CONCURRENCY` at a time, and each is saved in
    // walk order as its reading ends, while the next ones are read.
    // (Items are indices into the walk: a stream of borrowed files would not be `Send`.)
    let mut to_read = Vec::new();
    for (index, file) in walk.files.iter().enumerate() {
        let known = known.get(&file.key);
        if known.is_none() && claim_moved(scan, file, &mut moved_from, tally).await? {
            continue;
        }
        if let Some(now) = settle_unread(scan, file, known, &mut unindexable, tally).await? {
            to_read.push((index, now));
        }
    }
    let worker = &scan.state.worker;
    let timeout = Duration::from_secs(worker.probe_timeout_secs);
    let mut reads = futures_util::stream::iter(to_read)
        .map(|(index, now)| {
            scan.state.probes.fetch_add(1, Ordering::Relaxed);
            // A task of its own, so that its ffprobe runs on while this scan saves what
            // the files before it gave; dropped with the scan, it is aborted.
            let file = walk.files[index].clone();
            let reading = AbortOnDropHandle::new(tokio::spawn(read_file(
                worker.ffprobe.clone(),
                timeout,
                file,
            )));
            async move { (index, now, reading.await) }
        })
        .buffered(usize::from(worker.probe_concurrency));
    while let Some((index, now, read)) = reads.next().await {
        let read =
            read.map_err(|e| ScanFailure::Internal(format!("reading a file stopped: {e}")))?;
        let file = &walk.files[index];
        let present = known.get(&file.key).filter(|k| !k.removed);
        record_read(scan, file, present, now, read, &mut unindexable, tally).await?;
    }

    // A folder that could not be read entirely may hide files that are still there.
    if walk.complete {
        unindexable.forget_the_rest(scan).await?;
        let sweep =
            ingest::remove_unseen_videos(scan.pool(), scan.location_id, &tally.seen_video_ids())
                .await?;
        tally.swept(sweep);
    } else {
        warn!("parts of the folder could not be read; no video is marked removed");
        scan.skip(
            &root.display().to_string(),
            "parts of the folder could not be read, so no video was marked removed",
        )
        .await?;
    }
    Ok(())
}

fn folder_root(location: &LocationWithSecrets) -> Result<PathBuf, ScanFailure> {
    let path = location
        .location
        .config_str("path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ScanFailure::Misconfigured("it has no folder path".to_owned()))?;
    let root = PathBuf::from(path);
    // A relative path would depend on the directory each worker happens to start in.
    if !root.is_absolute() {
        return Err(ScanFailure::Misconfigured(format!("the folder path {path:?} is relative")));
    }
    Ok(root)
}

/// Whether `file`, new at its path, is a known video that moved there; if so its row
/// follows it, without probing it again.
async fn claim_moved(
    scan: &ScanContext<'_>,
    file: &FoundFile,
    moved_from: &mut Vec<&KnownVideo>,
    tally: &mut Tally,
) -> Result<bool, ScanFailure> {
    if file.size == 0 || !moved_from.iter().any(|k| k.file_size == file.size) {
        return Ok(false);
    }
    let path = file.path.clone();
    let Ok(Ok(hash)) = tokio::task::spawn_blocking(move || oshash_file(&path)).await else {
        return Ok(false);
    };
    let Some(position) = moved_from
        .iter()
        .position(|k| k.file_size == file.size && k.oshash.as_deref() == Some(hash.as_str()))
    else {
        return Ok(false);
    };
    let known = moved_from.swap_remove(position);
    ingest::move_video(scan.pool(), known.id, &file.key, &file.key, file.modified).await?;
    info!(video.id = known.id, from = known.source_key, to = file.key, "video moved");
    tally.video(known.id, known.work_id, ingest::VideoChange::Updated);
    Ok(true)
}

/// Files that could not be indexed: as earlier scans left them, and those this scan found
/// still (or newly) unindexable.
pub(crate) struct Unindexable {
    known: HashMap<String, ingest::UnindexableFile>,
    still: Vec<String>,
}

impl Unindexable {
    pub async fn load(scan: &ScanContext<'_>) -> Result<Self, ScanFailure> {
        let known = ingest::unindexable_files(scan.pool(), scan.location_id).await?;
        Ok(Self { known, still: Vec::new() })
    }

    /// Why the file could not be indexed before, if it has not changed since (same size,
    /// date and ETag): it is not probed again.
    pub fn unchanged_failure(&mut self, now: &ingest::UnindexableFile) -> Option<String> {
        let before = self.known.get(&now.source_key)?;
        let unchanged = before.file_size == now.file_size
            && before.modified_at == now.modified_at
            && before.etag == now.etag;
        if !unchanged {
            return None;
        }
        self.still.push(now.source_key.clone());
        Some(format!("{} (unchanged since an earlier scan; not probed again)", before.reason))
    }

    /// Remembers a failure that says something about the file itself. A timeout may be the
    /// machine's load, and a failed transfer (bucket objects are read over HTTP) the
    /// network, rather than the file: those are tried again by the next scan.
    pub async fn remember(
        &mut self,
        scan: &ScanContext<'_>,
        mut file: ingest::UnindexableFile,
        err: &ProbeError,
    ) -> Result<(), ScanFailure> {
        if !err.is_about_the_file() {
            return Ok(());
        }
        file.reason = err.to_string();
        ingest::remember_unindexable(scan.pool(), scan.location_id, &file).await?;
        self.still.push(file.source_key);
        Ok(())
    }

    /// After a complete listing: files not found unindexable again were indexed, changed
    /// or are gone.
    pub async fn forget_the_rest(&self, scan: &ScanContext<'_>) -> Result<(), ScanFailure> {
        ingest::forget_unindexable_except(scan.pool(), scan.location_id, &self.still).await?;
        Ok(())
    }
}

/// Settles a file that need not be read: unchanged since the last scan, empty, or as
/// unindexable as before. Otherwise returns the file as the catalog would remember it
/// should it prove unindexable, for `read_file`.
async fn settle_unread(
    scan: &ScanContext<'_>,
    file: &FoundFile,
    known: Option<&KnownVideo>,
    unindexable: &mut Unindexable,
    tally: &mut Tally,
) -> Result<Option<ingest::UnindexableFile>, ScanFailure> {
    let present = known.filter(|k| !k.removed);
    // An edited, added or removed sidecar re-indexes the video, so that its facts show.
    let nfo_stamp = file.sidecar.as_ref().map(Sidecar::stamp);
    if let Some(known) = present.filter(|k| {
        k.file_size == file.size && k.modified_at == file.modified && k.nfo_modified == nfo_stamp
    }) {
        tally.video(known.id, known.work_id, ingest::VideoChange::Unchanged);
        return Ok(None);
    }

    if file.size == 0 {
        keep_or_skip(scan, &file.key, present, "the file is empty", tally).await?;
        return Ok(None);
    }
    let now = ingest::UnindexableFile {
        source_key: file.key.clone(),
        file_size: file.size,
        modified_at: file.modified,
        etag: None,
        reason: String::new(),
    };
    if let Some(reason) = unindexable.unchanged_failure(&now) {
        keep_or_skip(scan, &file.key, present, &reason, tally).await?;
        return Ok(None);
    }
    Ok(Some(now))
}

/// What reading a file gave.
enum FileRead {
    Facts {
        facts: ProbeFacts,
        oshash: String,
    },
    /// ffprobe could not be started: no file can be read, and the scan stops.
    NoProbe {
        program: String,
        reason: String,
    },
    /// ffprobe failed on the file.
    Unprobed(ProbeError),
    Unreadable(String),
    StillChanging,
}

/// Probes a file and fingerprints it. Touches nothing but the file, so that several are
/// read at once.
async fn read_file(ffprobe: String, timeout: Duration, file: FoundFile) -> FileRead {
    let facts = match probe::probe_file(&ffprobe, &file.path, timeout).await {
        Ok(facts) => facts,
        Err(ProbeError::Spawn { program, source }) => {
            return FileRead::NoProbe { program, reason: source.to_string() };
        }
        Err(_) if still_changing(&file).await => return FileRead::StillChanging,
        Err(err) => return FileRead::Unprobed(err),
    };
    let path = file.path.clone();
    let oshash = match tokio::task::spawn_blocking(move || oshash_file(&path)).await {
        Ok(Ok(hash)) => hash,
        Ok(Err(err)) => return FileRead::Unreadable(format!("could not read the file: {err}")),
        Err(err) => return FileRead::Unreadable(format!("hashing the file stopped: {err}")),
    };
    // A file still being copied in would be recorded with a partial size, duration and
    // fingerprint: it is left for a later scan, once its size and date hold still.
    if still_changing(&file).await {
        return FileRead::StillChanging;
    }
    FileRead::Facts { facts, oshash }
}

/// Saves what reading `file` gave, or records why it gave nothing.
async fn record_read(
    scan: &ScanContext<'_>,
    file: &FoundFile,
    present: Option<&KnownVideo>,
    now: ingest::UnindexableFile,
    read: FileRead,
    unindexable: &mut Unindexable,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    let key = &file.key;
    match read {
        FileRead::Facts { facts, oshash } => save_file(scan, file, &facts, &oshash, tally).await,
        FileRead::NoProbe { program, reason } => Err(ScanFailure::ProbeTool { program, reason }),
        FileRead::Unprobed(err) => {
            unindexable.remember(scan, now, &err).await?;
            keep_or_skip(scan, key, present, &err.to_string(), tally).await
        }
        FileRead::Unreadable(reason) => keep_or_skip(scan, key, present, &reason, tally).await,
        FileRead::StillChanging => keep_or_skip(scan, key, present, STILL_CHANGING, tally).await,
    }
}

const STILL_CHANGING: &str =
    "the file changed while it was read (still being copied?); a later scan will index it";

/// Whether the file's size or modification time moved since the walk saw it.
async fn still_changing(file: &FoundFile) -> bool {
    match tokio::fs::metadata(&file.path).await {
        Ok(meta) => {
            let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
            let modified = meta.modified().ok().map(|t| DateTime::<Utc>::from(t).trunc_subsecs(6));
            size != file.size || modified != file.modified
        }
        Err(_) => true,
    }
}

/// Writes a probed file's work and video in one transaction.
async fn save_file(
    scan: &ScanContext<'_>,
    file: &FoundFile,
    facts: &ProbeFacts,
    oshash: &str,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    let nfo = match &file.sidecar {
        Some(sidecar) => nfo::read_sidecar(sidecar).await,
        None => None,
    };
    let metadata = match &file.sidecar {
        Some(sidecar) => json!({ "nfo_modified": sidecar.stamp() }),
        None => json!({}),
    };
    let item = IndexedItem {
        source_key: &file.key,
        name: &file.key,
        size: file.size,
        modified: file.modified,
        extension: &file.extension,
        metadata,
        nfo: nfo.as_ref(),
    };
    save_video(scan, &item, facts, oshash, tally).await
}

/// A probed file or object, as the catalog will hold it.
pub(crate) struct IndexedItem<'a> {
    pub source_key: &'a str,
    /// The path people see, from the location's root: the title is read from it.
    pub name: &'a str,
    pub size: i64,
    pub modified: Option<DateTime<Utc>>,
    /// Lowercase.
    pub extension: &'a str,
    pub metadata: serde_json::Value,
    /// What a `.nfo` sidecar says of the work; it wins over the name.
    pub nfo: Option<&'a Nfo>,
}

/// Writes a probed item's work and video in one transaction.
pub(crate) async fn save_video(
    scan: &ScanContext<'_>,
    item: &IndexedItem<'_>,
    facts: &ProbeFacts,
    oshash: &str,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    let named = title_for(item.name);
    let nfo = item.nfo.cloned().unwrap_or_default();
    let fingerprints = json!({ "oshash": oshash });
    let mut tx = scan.pool().begin().await?;
    let work = FoundWork {
        title: nfo.title.as_deref().unwrap_or(&named.title),
        year: nfo.year.or(named.year),
        description: nfo.plot.as_deref(),
        director: nfo.director.as_deref(),
        rating: nfo.rating,
    };
    let (work_id, work_change) = ingest::upsert_work(&mut tx, &work).await?;
    let video = FoundVideo {
        work_id,
        storage_location_id: scan.location_id,
        source_key: item.source_key,
        filename: item.name,
        file_size: item.size,
        modified_at: item.modified,
        duration: facts.duration,
        width: facts.width,
        height: facts.height,
        video_codec: facts.video_codec.as_deref(),
        audio_codec: facts.audio_codec.as_deref(),
        container: facts.container.as_deref(),
        web_compatible: probe::is_web_compatible(facts, item.extension),
        fingerprints: &fingerprints,
        video_metadata: &item.metadata,
    };
    let (video_id, video_change) = ingest::upsert_video(&mut tx, &video).await?;
    tx.commit().await?;
    if matches!(video_change, VideoChange::Created | VideoChange::Restored) {
        scan.wrote_listing().await;
    }

    tally.work(work_id, work_change);
    tally.video(video_id, work_id, video_change);
    Ok(())
}

/// A file that is there but could not be probed or read: it is recorded as skipped, and a
/// row it already has is kept as it was rather than marked removed.
pub(crate) async fn keep_or_skip(
    scan: &ScanContext<'_>,
    key: &str,
    present: Option<&KnownVideo>,
    reason: &str,
    tally: &mut Tally,
) -> Result<(), ScanFailure> {
    match present {
        Some(known) => {
            tally.video(known.id, known.work_id, ingest::VideoChange::Unchanged);
            let reason = format!("{reason}; the facts from an earlier scan are kept");
            scan.skip(key, &reason).await?;
        }
        None => scan.skip(key, reason).await?,
    }
    Ok(())
}

/// A video file found by the walk.
#[derive(Clone, Debug)]
pub(crate) struct FoundFile {
    pub path: PathBuf,
    /// The path from the root with `/` separators: the video's source key and file name.
    pub key: String,
    pub size: i64,
    /// Truncated to microseconds, as Postgres keeps it, so that it compares equal later.
    pub modified: Option<DateTime<Utc>>,
    /// Lowercase.
    pub extension: String,
    pub sidecar: Option<Sidecar>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Skip {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub files: Vec<FoundFile>,
    pub skips: Vec<Skip>,
    /// Keys of video files that exist but whose size or date could not be read.
    pub unexamined: Vec<String>,
    /// False when some folder could not be read: files in it may exist unseen.
    pub complete: bool,
}

/// Lists the video files under `root`. Hidden files and folders (a leading dot, as in
/// `.git` or macOS's `._` companions) are passed over. Symbolic links are not followed, so
/// a scan never leaves its root nor loops. Blocking.
/// The longest relative path indexed: Postgres' B-tree entries hold at most 2704 bytes, and
/// the key shares its entry with the location id.
const MAX_KEY_BYTES: usize = 2000;

pub(crate) fn walk_folder(root: &Path) -> Walk {
    let mut walk = Walk { complete: true, ..Walk::default() };
    let entries = WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| entry.depth() == 0 || !is_hidden(entry));

    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                walk.complete = false;
                let path = err.path().map(|p| relative_display(root, p)).unwrap_or_default();
                let reason = match err.io_error() {
                    Some(io) => format!("could not be read: {io}"),
                    None => format!("could not be read: {err}"),
                };
                walk.skips.push(Skip { path, reason });
                continue;
            }
        };
        if entry.file_type().is_dir() {
            continue;
        }
        let Some(extension) = video_extension(entry.path()) else {
            continue;
        };
        let Some(key) = entry.path().strip_prefix(root).ok().and_then(source_key) else {
            let path = relative_display(root, entry.path());
            let reason = "the name is not valid UTF-8".to_owned();
            walk.skips.push(Skip { path, reason });
            continue;
        };
        if key.len() > MAX_KEY_BYTES {
            // The catalog indexes the path; Postgres cannot index one this long.
            let reason = format!("the path is longer than {MAX_KEY_BYTES} bytes");
            walk.skips.push(Skip { path: key, reason });
            continue;
        }
        if entry.path_is_symlink() {
            let reason = "symbolic links are not followed".to_owned();
            walk.skips.push(Skip { path: key, reason });
            continue;
        }
        if !entry.file_type().is_file() {
            // A FIFO would block ffprobe until a writer appears; a device is no video.
            let reason = "not a regular file".to_owned();
            walk.skips.push(Skip { path: key, reason });
            continue;
        }
        match entry.metadata() {
            Ok(meta) => walk.files.push(FoundFile {
                path: entry.path().to_owned(),
                key,
                size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
                modified: meta.modified().ok().map(|t| DateTime::<Utc>::from(t).trunc_subsecs(6)),
                extension,
                sidecar: nfo::find_sidecar(entry.path()),
            }),
            Err(err) => {
                let reason = format!("could not be read: {err}");
                walk.skips.push(Skip { path: key.clone(), reason });
                walk.unexamined.push(key);
            }
        }
    }
    drop_shared_folder_sidecars(&mut walk.files);
    walk
}

/// A `movie.nfo` describes the one film of its folder: in a folder of several videos it
/// would give them all one title, so there it is not used.
fn drop_shared_folder_sidecars(files: &mut [FoundFile]) {
    let mut per_folder: HashMap<PathBuf, usize> = HashMap::new();
    for file in files.iter() {
        if let Some(parent) = file.path.parent() {
            *per_folder.entry(parent.to_owned()).or_default() += 1;
        }
    }
    for file in files.iter_mut() {
        let shared = file.path.parent().is_some_and(|p| per_folder.get(p).copied() > Some(1));
        let folder_wide = file
            .sidecar
            .as_ref()
            .is_some_and(|s| s.path.file_name() == Some(std::ffi::OsStr::new("movie.nfo")));
        if shared && folder_wide {
            file.sidecar = None;
        }
    }
}

fn is_hidden(entry: &DirEntry) -> bool {
    entry.file_name().as_encoded_bytes().starts_with(b".")
}

pub(crate) fn video_extension(path: &Path) -> Option<String> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    VIDEO_EXTENSIONS.contains(&extension.as_str()).then_some(extension)
}

/// The relative path with `/` between components, if every component is UTF-8.
fn source_key(relative: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = relative.components().map(|c| c.as_os_str().to_str()).collect();
    parts.map(|parts| parts.join("/")).filter(|key| !key.is_empty())
}

fn relative_display(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::fs;

    fn by_key(walk: &Walk) -> HashMap<&str, &FoundFile> {
        walk.files.iter().map(|f| (f.key.as_str(), f)).collect()
    }

    #[test]
    fn the_walk_finds_videos_and_passes_over_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("Sintel (2010)")).unwrap();
        fs::create_dir_all(root.join(".git/objects")).unwrap();
        fs::write(root.join("Sintel (2010)/Sintel.MKV"), b"x").unwrap();
        fs::write(root.join("Elephants_Dream.mp4"), b"xy").unwrap();
        fs::write(root.join("notes.txt"), b"n").unwrap();
        fs::write(root.join("._Elephants_Dream.mp4"), b"apple double").unwrap();
        fs::write(root.join(".git/objects/clip.mp4"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("Elephants_Dream.mp4"), root.join("link.mp4"))
            .unwrap();

        let walk = walk_folder(root);
        let files = by_key(&walk);
        let mut keys: Vec<&str> = files.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["Elephants_Dream.mp4", "Sintel (2010)/Sintel.MKV"]);
        assert_eq!(files["Sintel (2010)/Sintel.MKV"].extension, "mkv");
        assert_eq!(files["Elephants_Dream.mp4"].size, 2);
        assert!(walk.complete);
        assert_eq!(
            walk.skips,
            [Skip { path: "link.mp4".into(), reason: "symbolic links are not followed".into() }]
        );
    }

    #[test]
    fn paths_too_long_to_index_are_skipped_with_a_reason() {
        let root = tempfile::tempdir().unwrap();
        let mut deep = root.path().to_owned();
        for n in 0..9 {
            deep.push(format!("{n}{}", "d".repeat(249)));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("clip.mp4"), b"x").unwrap();
        let walk = walk_folder(root.path());
        assert!(walk.files.is_empty());
        assert_eq!(walk.skips.len(), 1);
        assert!(walk.skips[0].reason.contains("longer than 2000 bytes"), "{:?}", walk.skips);
    }

    #[test]
    fn names_that_are_not_utf8_are_skipped_with_a_reason() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.mp4");
        fs::write(dir.path().join(name), b"x").unwrap();

        let walk = walk_folder(dir.path());
        assert!(walk.files.is_empty());
        assert_eq!(walk.skips.len(), 1);
        assert_eq!(walk.skips[0].reason, "the name is not valid UTF-8");
        assert!(walk.complete);
    }
}
