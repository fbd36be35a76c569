//! Video facts read by ffprobe, and whether browsers can play the file as it is.

use serde::Deserialize;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// What a scan stores about a video file's streams.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ProbeFacts {
    /// Seconds.
    pub duration: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    /// ffprobe's `format_name`, e.g. `mov,mp4,m4a,3gp,3g2,mj2`.
    pub container: Option<String>,
}

/// Why a file's facts could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// ffprobe itself could not be started: no file can be probed, so the scan stops.
    #[error("could not run {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ffprobe did not finish within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("ffprobe could not read the file: {0}")]
    Failed(String),
    #[error("ffprobe's answer could not be read: {0}")]
    Unreadable(String),
    #[error("the file has no video stream")]
    NoVideo,
}

impl ProbeError {
    /// Whether the failure is a verdict on the file, not on the machine or the network.
    /// ffmpeg's own words are the only sign of a failed HTTP transfer.
    pub(crate) fn is_about_the_file(&self) -> bool {
        const TRANSFER: [&str; 4] =
            ["Server returned", "Connection", "Input/output error", "timed out"];
        match self {
            Self::Spawn { .. } | Self::TimedOut(_) => false,
            Self::Failed(message) => !TRANSFER.iter().any(|sign| message.contains(sign)),
            Self::Unreadable(_) | Self::NoVideo => true,
        }
    }
}

/// Longest ffprobe error message kept in a skip reason.
const MAX_MESSAGE_CHARS: usize = 300;

/// Runs ffprobe on one file. The process is killed if it outlives `timeout` (a damaged file
/// can make it read for a very long time) or if this future is dropped.
pub(crate) async fn probe_file(
    ffprobe: &str,
    path: &Path,
    timeout: Duration,
) -> Result<ProbeFacts, ProbeError> {
    // The `file:` prefix keeps a name such as `rtmp:clip.mp4` from being read as a URL.
    let mut input = std::ffi::OsString::from("file:");
    input.push(path);
    run_ffprobe(ffprobe, &input, timeout, None).await
}

/// Runs ffprobe on an HTTP(S) URL, such as a presigned URL of an object in a bucket. The
/// URL is a credential while it lasts: ffprobe's messages show `shown_as` in its place.
pub(crate) async fn probe_url(
    ffprobe: &str,
    url: &str,
    shown_as: &str,
    timeout: Duration,
) -> Result<ProbeFacts, ProbeError> {
    run_ffprobe(ffprobe, std::ffi::OsStr::new(url), timeout, Some((url, shown_as))).await
}

/// Demuxers a remote object may be read with: the containers Velour indexes. ffmpeg picks
/// a demuxer by content, and some (HLS, concat) fetch further addresses that a file names:
/// an object in a bucket must not make the worker fetch what it likes.
pub(crate) const URL_FORMAT_WHITELIST: &str =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,asf,flv,mpeg,mpegvideo,ogg";

/// ffmpeg's first error line, with a URL input shown as `shown_as` (a presigned URL is a
/// credential while it lasts) before it is cut to a readable length.
pub(crate) fn tool_message(stderr: &[u8], url: Option<(&str, &str)>) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let line = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
    let line = match url {
        Some((url, shown_as)) => line.replace(url, shown_as),
        None => line.to_owned(),
    };
    // A URL cut short by the tool itself is not matched above: drop any query left.
    let line = match (url, line.find("X-Amz-")) {
        (Some((_, shown_as)), Some(_)) => format!("{shown_as}: the store refused the read"),
        _ => line,
    };
    line.trim().chars().take(MAX_MESSAGE_CHARS).collect()
}

async fn run_ffprobe(
    ffprobe: &str,
    input: &std::ffi::OsStr,
    timeout: Duration,
    url: Option<(&str, &str)>,
) -> Result<ProbeFacts, ProbeError> {
    let mut command = Command::new(ffprobe);
    command.args(["-v", "error", "-print_format", "json", "-show_format", "-show_streams"]);
    if url.is_some() {
        command.args(["-format_whitelist", URL_FORMAT_WHITELIST]);
    }
    let child = command
        .arg("-i")
        .arg(input)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProbeError::Spawn { program: ffprobe.to_owned(), source })?;

    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.map_err(|e| ProbeError::Failed(e.to_string()))?,
        Err(_) => return Err(ProbeError::TimedOut(timeout)),
    };
    if !output.status.success() {
        return Err(ProbeError::Failed(tool_message(&output.stderr, url)));
    }
    parse_ffprobe(&output.stdout)
}

#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    streams: Vec<Stream>,
    #[serde(default)]
    format: Option<Format>,
}

#[derive(Deserialize)]
struct Stream {
    #[serde(default)]
    codec_type: Option<String>,
    #[serde(default)]
    codec_name: Option<String>,
    #[serde(default)]
    width: Option<i64>,
    #[serde(default)]
    height: Option<i64>,
    #[serde(default)]
    disposition: Disposition,
}

#[derive(Default, Deserialize)]
struct Disposition {
    #[serde(default)]
    attached_pic: i64,
}

#[derive(Deserialize)]
struct Format {
    #[serde(default)]
    format_name: Option<String>,
    /// Seconds as a decimal string, or `N/A`.
    #[serde(default)]
    duration: Option<String>,
}

/// Reads ffprobe's JSON (`-print_format json -show_format -show_streams`).
pub(crate) fn parse_ffprobe(json: &[u8]) -> Result<ProbeFacts, ProbeError> {
    let output: Output =
        serde_json::from_slice(json).map_err(|e| ProbeError::Unreadable(e.to_string()))?;

    // Cover art in an audio file is a one-frame "video" stream flagged as an attached
    // picture; it does not make the file a video.
    let video = output
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("video") && s.disposition.attached_pic == 0)
        .ok_or(ProbeError::NoVideo)?;
    let audio = output.streams.iter().find(|s| s.codec_type.as_deref() == Some("audio"));

    let dimension = |d: Option<i64>| d.and_then(|d| i32::try_from(d).ok()).filter(|d| *d > 0);
    let format = output.format.as_ref();
    Ok(ProbeFacts {
        duration: format
            .and_then(|f| f.duration.as_deref())
            .and_then(|d| d.parse::<f64>().ok())
            .filter(|d| d.is_finite() && *d >= 0.0),
        width: dimension(video.width),
        height: dimension(video.height),
        video_codec: video.codec_name.clone(),
        audio_codec: audio.and_then(|a| a.codec_name.clone()),
        container: format.and_then(|f| f.format_name.clone()),
    })
}

/// Whether browsers play the file without transcoding: H.264, VP8, VP9 or AV1 video with
/// AAC, MP3, Opus, Vorbis or no audio, in an MP4/MOV or WebM file.
///
/// ffprobe names Matroska and WebM alike (`matroska,webm`), and MP4 and MOV alike, so the
/// file's extension decides between them: browsers play `.webm` but not `.mkv`.
pub(crate) fn is_web_compatible(facts: &ProbeFacts, extension: &str) -> bool {
    let formats: Vec<&str> = facts.container.as_deref().unwrap_or("").split(',').collect();
    let container = match extension {
        "mp4" | "m4v" | "mov" => formats.iter().any(|f| matches!(*f, "mp4" | "mov")),
        "webm" => formats.contains(&"webm"),
        _ => false,
    };
    let video = matches!(facts.video_codec.as_deref(), Some("h264" | "vp8" | "vp9" | "av1"));
    let audio =
        matches!(facts.audio_codec.as_deref(), None | Some("aac" | "mp3" | "opus" | "vorbis"));
    container && video && audio
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded with ffprobe 5 from files made by ffmpeg's test sources (see each name).
    const H264_AAC_MP4: &str = include_str!("../tests/fixtures/ffprobe_h264_aac.json");
    const VP9_OPUS_WEBM: &str = include_str!("../tests/fixtures/ffprobe_vp9_opus.json");
    const MPEG4_MP3_MKV: &str = include_str!("../tests/fixtures/ffprobe_mpeg4_mp3.json");
    const MP3_WITH_COVER: &str = include_str!("../tests/fixtures/ffprobe_audio_cover.json");

    #[test]
    fn an_h264_mp4_is_read_and_plays_in_browsers() {
        let facts = parse_ffprobe(H264_AAC_MP4.as_bytes()).unwrap();
        assert_eq!(
            facts,
            ProbeFacts {
                duration: Some(1.0),
                width: Some(160),
                height: Some(120),
                video_codec: Some("h264".into()),
                audio_codec: Some("aac".into()),
                container: Some("mov,mp4,m4a,3gp,3g2,mj2".into()),
            }
        );
        assert!(is_web_compatible(&facts, "mp4"));
        assert!(is_web_compatible(&facts, "mov"));
    }

    #[test]
    fn a_vp9_webm_plays_in_browsers_but_not_as_mkv() {
        let facts = parse_ffprobe(VP9_OPUS_WEBM.as_bytes()).unwrap();
        assert_eq!(facts.video_codec.as_deref(), Some("vp9"));
        assert_eq!(facts.audio_codec.as_deref(), Some("opus"));
        assert_eq!(facts.duration, Some(1.008));
        assert!(is_web_compatible(&facts, "webm"));
        assert!(!is_web_compatible(&facts, "mkv"));
    }

    #[test]
    fn an_mpeg4_mkv_does_not_play_in_browsers() {
        let facts = parse_ffprobe(MPEG4_MP3_MKV.as_bytes()).unwrap();
        assert_eq!(facts.video_codec.as_deref(), Some("mpeg4"));
        assert_eq!(facts.container.as_deref(), Some("matroska,webm"));
        assert!(!is_web_compatible(&facts, "mkv"));
        assert!(!is_web_compatible(&facts, "webm"));
    }

    #[test]
    fn cover_art_does_not_make_an_audio_file_a_video() {
        assert!(matches!(parse_ffprobe(MP3_WITH_COVER.as_bytes()), Err(ProbeError::NoVideo)));
    }

    #[test]
    fn a_silent_h264_mp4_plays_but_an_unknown_audio_codec_does_not() {
        let mut facts = parse_ffprobe(H264_AAC_MP4.as_bytes()).unwrap();
        facts.audio_codec = None;
        assert!(is_web_compatible(&facts, "mp4"));
        facts.audio_codec = Some("ac3".into());
        assert!(!is_web_compatible(&facts, "mp4"));
    }

    #[test]
    fn missing_and_unknown_values_are_left_empty() {
        let json = br#"{"streams":[{"codec_type":"video","width":0}],
                        "format":{"duration":"N/A"}}"#;
        let facts = parse_ffprobe(json).unwrap();
        assert_eq!((facts.duration, facts.width, facts.video_codec), (None, None, None));
        let wrong_shape = br#"{"streams": 3}"#;
        assert!(matches!(parse_ffprobe(wrong_shape), Err(ProbeError::Unreadable(_))));
        assert!(matches!(parse_ffprobe(b"{}"), Err(ProbeError::NoVideo)));
    }
}
