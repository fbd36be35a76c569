//! Videos in a folder on a local disk.
//!
//! A video's `source_key` is a path relative to its location's root. The key comes from
//! our own scanner, but the root is configured and the tree can change under us, so every
//! open checks that the file it reaches is a regular file inside the root: no absolute
//! keys, no `..`, and no symbolic link leading out.

use crate::multipart::Multipart;
use crate::range::ResolvedRange;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;
use tokio::task::JoinHandle;

/// Bytes read from disk per chunk of a streamed body: each read is a trip through tokio's
/// blocking pool, so larger chunks mean fewer trips. 256 KiB against 64 KiB measured +20 %
/// for 1 MiB ranges (bench/stream.sh) for 18 MiB more resident memory with 32 streams.
const CHUNK_BYTES: usize = 256 * 1024;

/// Why a file could not be opened. Messages name paths: they are for logs, not clients.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the source key {0:?} is not a relative path without `..`")]
    InvalidKey(String),
    #[error("the location root {root} is unavailable: {source}")]
    RootUnavailable { root: PathBuf, source: io::Error },
    #[error("no file at {0}")]
    NotFound(PathBuf),
    #[error("{path} resolves to {resolved}, outside the location root")]
    OutsideRoot { path: PathBuf, resolved: PathBuf },
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("could not read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// An open video file, checked to lie inside its location's root.
#[derive(Debug)]
pub struct LocalFile {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    modified: SystemTime,
}

impl LocalFile {
    /// Opens `source_key` under `root`. Nothing of the file's content is read. The checks
    /// and the open are one trip through the blocking pool.
    pub async fn open(root: &Path, source_key: &str) -> Result<Self, LocalError> {
        let relative = checked_relative(source_key)?;
        let root = root.to_owned();
        tokio::task::spawn_blocking(move || open_inside(&root, &relative)).await.unwrap_or_else(
            |joined| Err(LocalError::Io { path: PathBuf::new(), source: io::Error::other(joined) }),
        )
    }

    /// Bytes in the file when it was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn modified(&self) -> SystemTime {
        self.modified
    }

    /// The canonical path, for logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `Content-Type` to serve the file with.
    pub fn content_type(&self) -> &'static str {
        content_type_for(&self.path)
    }

    /// Streams `range`, or the whole file, holding at most two chunks: the one being sent
    /// and the next, read meanwhile.
    pub fn into_stream(self, range: Option<ResolvedRange>) -> FileStream {
        let (start, len) = self.span(range);
        FileStream::new(self.file, start, len)
    }

    /// Where `range` starts and how long it is; without one, the whole file.
    fn span(&self, range: Option<ResolvedRange>) -> (u64, u64) {
        range.map_or((0, self.size), |range| (range.start, range.len()))
    }

    /// The bytes of `range` (the whole file without one) as stand-ins that `region` makes,
    /// one per `max_region` bytes at most, for a connection to send from the file itself
    /// (`velour_http::FileSender`, which also reads regions not in the page cache into it
    /// off the runtime before sending them).
    pub fn into_regions<F>(
        self,
        range: Option<ResolvedRange>,
        max_region: usize,
        mut region: F,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
    where
        F: FnMut(Arc<File>, u64, usize) -> io::Result<Bytes> + Send + 'static,
    {
        let (start, len) = self.span(range);
        let (file, end, max_region) = (self.file, start.saturating_add(len), max_region.max(1));
        let steps = RegionSteps { next: start, end, step: max_region as u64 };
        futures_util::stream::iter(steps).map(move |(offset, len)| {
            region(Arc::clone(&file), offset, usize::try_from(len).unwrap_or(max_region))
        })
    }

    /// Streams a `multipart/byteranges` body of this file, one part after the other. Every
    /// part is read from the file opened here, so all come from one version of it.
    pub fn into_multipart_stream(
        self,
        multipart: Multipart,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let file = self.file;
        multipart.into_stream(move |part| {
            let stream = FileStream::new(Arc::clone(&file), part.start, part.len());
            std::future::ready(Ok(stream))
        })
    }
}

/// The blocking half of [`LocalFile::open`].
fn open_inside(root: &Path, relative: &Path) -> Result<LocalFile, LocalError> {
    let root = std::fs::canonicalize(root)
        .map_err(|source| LocalError::RootUnavailable { root: root.to_owned(), source })?;
    let joined = root.join(relative);
    let path = match std::fs::canonicalize(&joined) {
        Ok(path) => path,
        Err(e) if is_missing(&e) => return Err(LocalError::NotFound(joined)),
        Err(source) => return Err(LocalError::Io { path: joined, source }),
    };
    // Canonical paths have no links and no `..` left, so a prefix check is exact.
    if !path.starts_with(&root) {
        return Err(LocalError::OutsideRoot { path: joined, resolved: path });
    }

    // Checked before opening: opening a FIFO would block until a writer appears.
    let io_error = |source| LocalError::Io { path: path.clone(), source };
    let metadata = std::fs::metadata(&path).map_err(io_error)?;
    if !metadata.is_file() {
        return Err(LocalError::NotAFile(path));
    }
    let file = File::open(&path).map_err(io_error)?;
    // Size and time of the file actually opened, should it have been replaced since.
    let metadata = file.metadata().map_err(io_error)?;
    let modified = metadata.modified().map_err(io_error)?;
    Ok(LocalFile { file: Arc::new(file), size: metadata.len(), modified, path })
}

/// A byte range of an open file, read a chunk at a time with positional reads in the
/// blocking pool. The next chunk is read while the previous one is being sent, so the disk
/// and the socket work at once.
///
/// The body never goes past the range, whatever the file does meanwhile: a file that grew
/// is read only up to the length promised in `Content-Length`, and one that shrank ends the
/// body with an error (hyper then closes the connection rather than send a short body).
pub struct FileStream {
    file: Arc<File>,
    /// Where the next chunk to read starts.
    next: u64,
    /// One past the range's last byte.
    end: u64,
    /// The chunk being read, if any.
    reading: Option<JoinHandle<io::Result<Bytes>>>,
}

impl FileStream {
    fn new(file: Arc<File>, start: u64, len: u64) -> Self {
        Self { file, next: start, end: start.saturating_add(len), reading: None }
    }

    /// Starts reading the next chunk, unless the range is all read.
    fn read_ahead(&mut self) {
        let left = self.end.saturating_sub(self.next);
        if left == 0 {
            return;
        }
        let len = usize::try_from(left).map_or(CHUNK_BYTES, |left| left.min(CHUNK_BYTES));
        let (file, offset) = (Arc::clone(&self.file), self.next);
        self.next += len as u64;
        self.reading = Some(tokio::task::spawn_blocking(move || read_chunk(&file, offset, len)));
    }
}

impl Stream for FileStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.reading.is_none() {
            self.read_ahead();
        }
        let Some(reading) = self.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let read = ready!(Pin::new(reading).poll(cx));
        self.reading = None;
        match read.unwrap_or_else(|joined| Err(io::Error::other(joined))) {
            Ok(chunk) => {
                self.read_ahead();
                Poll::Ready(Some(Ok(chunk)))
            }
            Err(err) => {
                // Nothing after a failed chunk: the body would have a hole.
                self.next = self.end;
                Poll::Ready(Some(Err(err)))
            }
        }
    }
}

/// The (offset, length) of each region of `next..end`, `step` bytes at most each.
struct RegionSteps {
    next: u64,
    end: u64,
    step: u64,
}

impl Iterator for RegionSteps {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let len = self.end.saturating_sub(self.next).min(self.step);
        (len > 0).then(|| {
            let offset = self.next;
            self.next += len;
            (offset, len)
        })
    }
}

/// Reads exactly `len` bytes at `offset`, straight into the buffer that is sent (no
/// zeroing, no second copy). Fewer bytes in the file than that is an error.
fn read_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being sent",
                ));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    // The allocator may have given more room than asked for, and a read may fill it.
    buf.truncate(len);
    Ok(Bytes::from(buf))
}

/// The key as a relative path of plain names. `.` segments are harmless and dropped.
fn checked_relative(source_key: &str) -> Result<PathBuf, LocalError> {
    let invalid = || LocalError::InvalidKey(source_key.to_owned());
    if source_key.contains('\0') {
        return Err(invalid());
    }
    let mut relative = PathBuf::new();
    for component in Path::new(source_key).components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(invalid());
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(invalid());
    }
    Ok(relative)
}

fn is_missing(err: &io::Error) -> bool {
    // A file name used as a folder (`movie.mkv/x`) is missing too.
    matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// The media type of a video file by its extension. The common video containers are
/// named here so that browsers get the types they play, whatever the MIME database says.
pub fn content_type_for(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match extension.to_ascii_lowercase().as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        _ => mime_guess::from_path(path).first_raw().unwrap_or("application/octet-stream"),
    }
}

/// The media type of a video by what ffprobe found in it (`format_name`, codecs), so that
/// a WebM named `.mkv` or an MP4 named `.m4v` is served as what it is; by its extension when
/// the container is unknown. Matroska holding only WebM codecs is WebM, which browsers play.
pub fn content_type_for_video(
    container: Option<&str>,
    video_codec: Option<&str>,
    audio_codec: Option<&str>,
    path: &Path,
) -> &'static str {
    let Some(container) = container else {
        return content_type_for(path);
    };
    let names: Vec<&str> = container.split(',').map(str::trim).collect();
    let has = |name: &str| names.contains(&name);
    let webm_codecs = video_codec.is_some_and(|c| matches!(c, "vp8" | "vp9" | "av1"))
        && audio_codec.is_none_or(|c| matches!(c, "opus" | "vorbis"));
    if has("mp4") || has("mov") {
        // One demuxer reads both; only a `.mov` name says QuickTime.
        let quicktime = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mov"));
        return if quicktime { "video/quicktime" } else { "video/mp4" };
    }
    if has("matroska") || has("webm") {
        return if webm_codecs { "video/webm" } else { "video/x-matroska" };
    }
    match names.first().copied().unwrap_or_default() {
        "avi" => "video/x-msvideo",
        "mpegts" => "video/mp2t",
        "mpeg" | "mpegvideo" => "video/mpeg",
        "ogg" => "video/ogg",
        "flv" => "video/x-flv",
        "asf" => "video/x-ms-asf",
        _ => content_type_for(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_container_decides_the_type_and_the_name_only_when_it_is_unknown() {
        let mkv = Path::new("film.mkv");
        let cases = [
            (Some("matroska,webm"), Some("vp9"), Some("opus"), mkv, "video/webm"),
            (Some("matroska,webm"), Some("h264"), Some("aac"), mkv, "video/x-matroska"),
            (Some("matroska,webm"), Some("vp9"), None, mkv, "video/webm"),
            (Some("mov,mp4,m4a,3gp,3g2,mj2"), Some("h264"), None, Path::new("a.m4v"), "video/mp4"),
            (
                Some("mov,mp4,m4a,3gp,3g2,mj2"),
                Some("h264"),
                None,
                Path::new("a.MOV"),
                "video/quicktime",
            ),
            (Some("mov,mp4,m4a,3gp,3g2,mj2"), Some("h264"), None, Path::new("a.webm"), "video/mp4"),
            (Some("mpegts"), Some("h264"), None, Path::new("a.ts"), "video/mp2t"),
            (Some("avi"), Some("mpeg4"), None, Path::new("a.avi"), "video/x-msvideo"),
            (None, None, None, Path::new("a.webm"), "video/webm"),
            (Some("something new"), None, None, Path::new("a.mp4"), "video/mp4"),
        ];
        for (container, video, audio, path, expected) in cases {
            let found = content_type_for_video(container, video, audio, path);
            assert_eq!(found, expected, "{container:?} {video:?} {audio:?} {path:?}");
        }
    }
    use futures_util::TryStreamExt;

    fn root_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        dir
    }

    async fn read_all(file: LocalFile, range: Option<ResolvedRange>) -> Vec<u8> {
        let chunks: Vec<Bytes> = file.into_stream(range).try_collect().await.unwrap();
        chunks.concat()
    }

    #[test]
    fn keys_must_be_relative_paths_without_parent_segments() {
        let cases = [
            ("movie.mkv", true),
            ("films/2008/movie.mkv", true),
            ("./films//movie.mkv", true),
            ("films/../movie.mkv", false),
            ("../movie.mkv", false),
            ("/etc/passwd", false),
            ("", false),
            (".", false),
            ("a\0b", false),
        ];
        for (key, allowed) in cases {
            assert_eq!(checked_relative(key).is_ok(), allowed, "{key:?}");
        }
    }

    #[tokio::test]
    async fn a_file_inside_the_root_opens_with_its_size() {
        let root = root_with(&[("films/a.mkv", b"0123456789")]);
        let file = LocalFile::open(root.path(), "films/a.mkv").await.unwrap();
        assert_eq!(file.size(), 10);
        assert_eq!(file.content_type(), "video/x-matroska");
        assert_eq!(read_all(file, None).await, b"0123456789");
    }

    #[tokio::test]
    async fn a_range_streams_only_its_bytes() {
        let root = root_with(&[("a.mp4", b"0123456789")]);
        let file = LocalFile::open(root.path(), "a.mp4").await.unwrap();
        let range = ResolvedRange { start: 2, end: 5 };
        assert_eq!(read_all(file, Some(range)).await, b"2345");
    }

    #[tokio::test]
    async fn a_multipart_body_reads_each_part_from_the_file() {
        let root = root_with(&[("a.webm", b"0123456789")]);
        let file = LocalFile::open(root.path(), "a.webm").await.unwrap();
        let parts = vec![ResolvedRange { start: 7, end: 8 }, ResolvedRange { start: 1, end: 2 }];
        let multipart = Multipart::new(parts, file.content_type(), file.size());
        let length = multipart.content_length();
        let chunks: Vec<Bytes> = file.into_multipart_stream(multipart).try_collect().await.unwrap();
        let body = String::from_utf8(chunks.concat()).unwrap();
        assert_eq!(body.len() as u64, length);
        let first = body.find("bytes 7-8/10\r\n\r\n78\r\n").unwrap();
        let second = body.find("bytes 1-2/10\r\n\r\n12\r\n").unwrap();
        assert!(first < second, "{body}");
    }

    #[tokio::test]
    async fn a_missing_file_is_not_found() {
        let root = root_with(&[("a.mp4", b"x")]);
        for key in ["b.mp4", "a.mp4/inner"] {
            let err = LocalFile::open(root.path(), key).await.unwrap_err();
            assert!(matches!(err, LocalError::NotFound(_)), "{key}: {err}");
        }
    }

    #[tokio::test]
    async fn a_missing_root_is_unavailable() {
        let root = root_with(&[]);
        let gone = root.path().join("nope");
        let err = LocalFile::open(&gone, "a.mp4").await.unwrap_err();
        assert!(matches!(err, LocalError::RootUnavailable { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_folder_is_not_a_file() {
        let root = root_with(&[("films/a.mp4", b"x")]);
        let err = LocalFile::open(root.path(), "films").await.unwrap_err();
        assert!(matches!(err, LocalError::NotAFile(_)), "{err}");
    }

    #[tokio::test]
    async fn parent_segments_are_refused_before_touching_the_disk() {
        let root = root_with(&[("a.mp4", b"x")]);
        let inner = root.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let err = LocalFile::open(&inner, "../a.mp4").await.unwrap_err();
        assert!(matches!(err, LocalError::InvalidKey(_)), "{err}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_out_of_the_root_is_refused() {
        let outside = root_with(&[("secret.mp4", b"secret")]);
        let root = root_with(&[]);
        std::os::unix::fs::symlink(outside.path().join("secret.mp4"), root.path().join("a.mp4"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("linked")).unwrap();
        for key in ["a.mp4", "linked/secret.mp4"] {
            let err = LocalFile::open(root.path(), key).await.unwrap_err();
            assert!(matches!(err, LocalError::OutsideRoot { .. }), "{key}: {err}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_within_the_root_is_followed() {
        let root = root_with(&[("films/a.webm", b"abc")]);
        std::os::unix::fs::symlink(root.path().join("films/a.webm"), root.path().join("b.webm"))
            .unwrap();
        let file = LocalFile::open(root.path(), "b.webm").await.unwrap();
        assert_eq!(file.size(), 3);
        assert_eq!(file.content_type(), "video/webm");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_root_reached_through_a_symlink_still_works() {
        let real = root_with(&[("a.mp4", b"abc")]);
        let holder = root_with(&[]);
        let link = holder.path().join("library");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let file = LocalFile::open(&link, "a.mp4").await.unwrap();
        assert_eq!(file.size(), 3);
    }

    #[test]
    fn video_containers_get_the_types_browsers_play() {
        let cases = [
            ("a.mp4", "video/mp4"),
            ("a.M4V", "video/mp4"),
            ("a.webm", "video/webm"),
            ("a.MKV", "video/x-matroska"),
            ("a.avi", "video/x-msvideo"),
            ("a", "application/octet-stream"),
        ];
        for (name, expected) in cases {
            assert_eq!(content_type_for(Path::new(name)), expected, "{name}");
        }
    }
}
