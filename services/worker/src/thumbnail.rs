//! `GenerateThumbnail`: one frame of a video, taken by ffmpeg at about a tenth of its
//! length, checked to decode as an image, and kept in the asset store.

use crate::WorkerState;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tracing::{info, instrument, warn};
use velour_core::StorageType;
use velour_db::DbError;
use velour_db::assets::{self, NewThumbnail, Recorded};
use velour_db::catalog::VideoRow;
use velour_db::locations::LocationWithSecrets;
use velour_storage::LocalFile;
use velour_storage::s3::{self, S3Settings};

/// The widest thumbnail made; narrower videos keep their own width. Players show
/// thumbnails in grids, where 640 pixels is sharp on a high-density screen.
const MAX_WIDTH: u32 = 640;

/// The most bytes ffmpeg may write for one frame. A 640-pixel JPEG is tens of kilobytes;
/// a video with an absurd aspect ratio must not make the worker hold an absurd image.
const MAX_IMAGE_BYTES: u64 = 4 * 1024 * 1024;

/// Clips shorter than this give their first frame: a tenth of them is a fraction of a
/// second, often before the first decodable frame of a stream cut mid-GOP.
const SHORT_CLIP_SECS: f64 = 2.0;

/// A thumbnail ready to store.
#[derive(Debug)]
pub(crate) struct Thumbnail {
    pub jpeg: Bytes,
    pub width: u32,
    pub height: u32,
}

/// Why a video gives no thumbnail.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ThumbnailError {
    /// ffmpeg could not be started: no thumbnail can be made on this worker at all.
    #[error("could not run {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ffmpeg did not finish within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("ffmpeg could not read the video: {0}")]
    Failed(String),
    #[error("the video gave no frame")]
    NoFrame,
    #[error("ffmpeg's image is over {MAX_IMAGE_BYTES} bytes")]
    TooLarge,
    #[error("ffmpeg's output is not a readable image: {0}")]
    NotAnImage(String),
}

impl ThumbnailError {
    /// Whether the failure says something about the video (recorded, not retried) rather
    /// than about this worker.
    fn is_about_the_video(&self, input: &Input) -> bool {
        match self {
            Self::Spawn { .. } => false,
            // A timeout may be the machine's load; a failed read over the network may be
            // the network: neither is held against the video.
            Self::TimedOut(_) => false,
            Self::Failed(_) => matches!(input, Input::File(_)),
            Self::NoFrame | Self::TooLarge | Self::NotAnImage(_) => true,
        }
    }
}

/// Where in a video its thumbnail is taken: about a tenth in, the first frame of a clip too
/// short for that, or of one whose length is unknown.
pub(crate) fn thumbnail_offset(duration: Option<f64>) -> f64 {
    match duration {
        Some(seconds) if seconds.is_finite() && seconds >= SHORT_CLIP_SECS => seconds / 10.0,
        _ => 0.0,
    }
}

/// Takes one frame of `input` at `offset` seconds, falling back to the first frame when the
/// seek lands past the last decodable one (a damaged tail, a wrong duration).
pub(crate) async fn make_thumbnail(
    ffmpeg: &str,
    input: &Input,
    offset: f64,
    timeout: Duration,
) -> Result<Thumbnail, ThumbnailError> {
    let jpeg = match run_ffmpeg(ffmpeg, input, offset, timeout).await {
        Err(ThumbnailError::NoFrame) if offset > 0.0 => {
            run_ffmpeg(ffmpeg, input, 0.0, timeout).await?
        }
        other => other?,
    };
    // Decoding the whole image is the check that ffmpeg's bytes are one; it is CPU work.
    let checked = jpeg.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        image::load_from_memory_with_format(&checked, image::ImageFormat::Jpeg)
            .map(|image| (image.width(), image.height()))
    })
    .await
    .map_err(|e| ThumbnailError::NotAnImage(e.to_string()))?;
    let (width, height) = decoded.map_err(|e| ThumbnailError::NotAnImage(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ThumbnailError::NotAnImage("the image is empty".to_owned()));
    }
    Ok(Thumbnail { jpeg, width, height })
}

/// What ffmpeg reads.
#[derive(Debug)]
pub(crate) enum Input {
    /// A checked path, as `file:PATH`.
    File(OsString),
    /// A presigned URL; messages show `shown_as` in its place.
    Url { url: String, shown_as: String },
}

async fn run_ffmpeg(
    ffmpeg: &str,
    input: &Input,
    offset: f64,
    timeout: Duration,
) -> Result<Bytes, ThumbnailError> {
    let (source, url): (&OsStr, _) = match input {
        Input::File(path) => (path, None),
        Input::Url { url, shown_as } => (OsStr::new(url), Some((url.as_str(), shown_as.as_str()))),
    };
    let mut command = Command::new(ffmpeg);
    command.args(["-nostdin", "-hide_banner", "-loglevel", "error"]);
    if url.is_some() {
        command.args(["-format_whitelist", crate::probe::URL_FORMAT_WHITELIST]);
    }
    // `-ss` before `-i` seeks by the container's index instead of decoding up to the
    // offset; `-frames:v 1` stops after one frame. The scale keeps the aspect ratio with an
    // even height, as JPEG encoders of subsampled video want.
    let scale = format!("scale='min({MAX_WIDTH},iw)':-2");
    let mut child = command
        .arg("-ss")
        .arg(format!("{offset:.3}"))
        .arg("-i")
        .arg(source)
        .args(["-map", "0:v:0", "-frames:v", "1", "-vf", &scale])
        .args(["-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "3", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ThumbnailError::Spawn { program: ffmpeg.to_owned(), source })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ThumbnailError::Failed("ffmpeg's output could not be read".to_owned()));
    };

    let run = async {
        let mut image = Vec::new();
        let mut message = Vec::new();
        let (mut stdout, mut stderr) = (stdout.take(MAX_IMAGE_BYTES + 1), stderr.take(64 * 1024));
        // Past the cap, the rest is read and dropped so that ffmpeg is not left blocked on
        // a full pipe; the image is refused below.
        let read_image = async {
            stdout.read_to_end(&mut image).await?;
            tokio::io::copy(&mut stdout.into_inner(), &mut tokio::io::sink()).await
        };
        // Past its first 64 KiB, ffmpeg's chatter is read and dropped: left unread, it
        // would fill the pipe and stall ffmpeg until the timeout.
        let read_message = async {
            stderr.read_to_end(&mut message).await?;
            tokio::io::copy(&mut stderr.into_inner(), &mut tokio::io::sink()).await
        };
        let (read_image, read_message) = tokio::join!(read_image, read_message);
        read_image.and(read_message).map_err(|e| ThumbnailError::Failed(e.to_string()))?;
        if image.len() as u64 > MAX_IMAGE_BYTES {
            return Err(ThumbnailError::TooLarge);
        }
        let status = child.wait().await.map_err(|e| ThumbnailError::Failed(e.to_string()))?;
        Ok((status, image, message))
    };
    // On a timeout the child is dropped with `run`, which kills it.
    let (status, image, message) = match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome?,
        Err(_) => return Err(ThumbnailError::TimedOut(timeout)),
    };
    if !status.success() {
        return Err(ThumbnailError::Failed(crate::probe::tool_message(&message, url)));
    }
    if image.is_empty() {
        return Err(ThumbnailError::NoFrame);
    }
    Ok(Bytes::from(image))
}

/// Why a thumbnail job did not finish; what the job runner should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailJobError {
    /// Worth trying again soon: the catalog or the asset store failed.
    #[error("{0}")]
    Retry(String),
    /// Trying again now cannot help (no ffmpeg here, the file is gone, the location is
    /// misconfigured). The video keeps no asset row, so the next scan queues it again.
    #[error("{0}")]
    GiveUp(String),
}

impl From<DbError> for ThumbnailJobError {
    fn from(err: DbError) -> Self {
        Self::Retry(format!("catalog: {err}"))
    }
}

impl From<velour_storage::AssetError> for ThumbnailJobError {
    fn from(err: velour_storage::AssetError) -> Self {
        Self::Retry(err.to_string())
    }
}

/// What a thumbnail job did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThumbnailOutcome {
    Made {
        key: String,
    },
    /// The video yields no image; the reason is recorded on its asset row.
    Failed(String),
    /// Nothing to do: the video is gone, held by a peer, or its thumbnail is current.
    Skipped(&'static str),
}

/// Makes the thumbnail of one video and records it.
#[instrument(skip_all, fields(video.id = video_id))]
pub async fn generate_thumbnail(
    state: &WorkerState,
    video_id: i64,
) -> Result<ThumbnailOutcome, ThumbnailJobError> {
    let pool = &state.pool;
    let video = match velour_db::catalog::get_video(pool, video_id).await {
        Ok(video) => video,
        Err(DbError::NotFound) => return Ok(ThumbnailOutcome::Skipped("the video is gone")),
        Err(err) => return Err(err.into()),
    };
    let oshash = video.fingerprints.0.get("oshash").and_then(serde_json::Value::as_str);
    let version = assets::source_version(video.file_size, oshash);
    if assets::thumbnail_is_current(pool, video_id, &version).await? {
        return Ok(ThumbnailOutcome::Skipped("the thumbnail is current"));
    }
    let location = match velour_db::locations::get_location_with_secrets(
        pool,
        &state.secrets,
        video.storage_location_id,
    )
    .await
    {
        Ok(location) => location,
        Err(DbError::NotFound) => return Ok(ThumbnailOutcome::Skipped("the location is gone")),
        Err(err) => return Err(err.into()),
    };

    let timeout = Duration::from_secs(state.worker.thumbnail_timeout_secs);
    let Some(input) = ffmpeg_input(&video, &location, timeout).await? else {
        return Ok(ThumbnailOutcome::Skipped("the video is not in this instance's storage"));
    };
    let offset = thumbnail_offset(video.duration);
    let made = make_thumbnail(&state.worker.ffmpeg, &input, offset, timeout).await;
    let thumbnail = match made {
        Ok(thumbnail) => thumbnail,
        Err(err) if err.is_about_the_video(&input) => {
            let reason = err.to_string();
            info!(reason, "no thumbnail for this video");
            let recorded =
                assets::save_thumbnail_failure(pool, video_id, &version, &reason).await?;
            if let Recorded::Saved { replaced: Some(old) } = recorded {
                delete_quietly(state, &old).await;
            }
            return Ok(ThumbnailOutcome::Failed(reason));
        }
        Err(err) => return Err(ThumbnailJobError::GiveUp(err.to_string())),
    };

    let sha256 = hex::encode(Sha256::digest(&thumbnail.jpeg));
    // The key names the video's version too: two versions that give the same image never
    // share a file, so a stale job can delete its own without touching the live one.
    let key = format!(
        "thumbnails/{video_id}/{}-{}/{sha256}.jpg",
        video.file_size,
        oshash.unwrap_or("none")
    );
    let byte_size = i64::try_from(thumbnail.jpeg.len()).unwrap_or(i64::MAX);
    state.assets.put(&key, thumbnail.jpeg, "image/jpeg").await?;
    let new = NewThumbnail {
        storage_key: &key,
        content_type: "image/jpeg",
        byte_size,
        width: i32::try_from(thumbnail.width).unwrap_or(i32::MAX),
        height: i32::try_from(thumbnail.height).unwrap_or(i32::MAX),
        sha256: &sha256,
    };
    match assets::save_thumbnail(pool, video_id, &version, new).await? {
        Recorded::Saved { replaced } => {
            if let Some(old) = replaced {
                delete_quietly(state, &old).await;
            }
            info!(bytes = byte_size, width = thumbnail.width, "thumbnail made");
            Ok(ThumbnailOutcome::Made { key })
        }
        Recorded::Stale => {
            // Another version's job owns the row now; the image is kept only if that job
            // happened to make the very same one.
            let current = assets::thumbnail(pool, video_id).await?;
            if current.is_none_or(|row| row.storage_key != key) {
                delete_quietly(state, &key).await;
            }
            Ok(ThumbnailOutcome::Skipped("the video changed while its thumbnail was made"))
        }
    }
}

/// What ffmpeg reads: the checked path of a file, or a presigned URL of an object. `None`
/// for a peer's video, whose thumbnail the peer makes and serves.
async fn ffmpeg_input(
    video: &VideoRow,
    location: &LocationWithSecrets,
    timeout: Duration,
) -> Result<Option<Input>, ThumbnailJobError> {
    match location.location.kind() {
        Some(StorageType::Local) => {
            let root = location.location.config_str("path").map(PathBuf::from);
            let Some(root) = root else {
                return Err(ThumbnailJobError::GiveUp("the folder location has no path".into()));
            };
            // Opening checks that the file still lies inside the root (no link out).
            let file = LocalFile::open(&root, &video.source_key).await.map_err(|e| {
                ThumbnailJobError::GiveUp(format!("the file cannot be opened: {e}"))
            })?;
            // The `file:` prefix keeps a name such as `rtmp:clip.mp4` from being read as a
            // URL.
            let mut input = OsString::from("file:");
            input.push(file.path());
            Ok(Some(Input::File(input)))
        }
        Some(StorageType::S3) => {
            let settings =
                S3Settings::from_stored(&location.location.configuration.0, &location.secrets.0)
                    .map_err(|e| ThumbnailJobError::GiveUp(e.to_string()))?;
            // The URL lives a little longer than ffmpeg may run (twice, should the first
            // seek find no frame), and no longer.
            let lifetime = timeout * 2 + Duration::from_secs(30);
            let url =
                s3::presigned_get_url(&settings.client(), &settings, &video.source_key, lifetime)
                    .await
                    .map_err(|e| ThumbnailJobError::Retry(format!("could not sign a URL: {e}")))?;
            Ok(Some(Input::Url { url, shown_as: video.source_key.clone() }))
        }
        Some(StorageType::Velour) => Ok(None),
        None => Err(ThumbnailJobError::GiveUp(format!(
            "unknown storage type {:?}",
            location.location.storage_type
        ))),
    }
}

/// Removes an image nobody points to any more; a failure leaves an orphan file, not a
/// broken thumbnail, so it is logged and the job goes on.
async fn delete_quietly(state: &WorkerState, key: &str) {
    if let Err(err) = state.assets.delete(key).await {
        warn!(asset.key = key, error = %err, "could not delete a replaced thumbnail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_a_tenth_except_for_short_or_unknown_clips() {
        assert_eq!(thumbnail_offset(Some(600.0)), 60.0);
        assert_eq!(thumbnail_offset(Some(2.0)), 0.2);
        assert_eq!(thumbnail_offset(Some(0.5)), 0.0);
        assert_eq!(thumbnail_offset(None), 0.0);
        assert_eq!(thumbnail_offset(Some(f64::NAN)), 0.0);
        assert_eq!(thumbnail_offset(Some(f64::INFINITY)), 0.0);
    }
}
