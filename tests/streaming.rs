//! Range requests and validators (RFC 9110 §13, §14), checked case by case against every
//! kind of storage a video can live in: each case is sent for a local video of A, for the
//! same file in a bucket of A, and for A's local video proxied by B, and must get the same
//! status, headers and bytes.

use crate::{VP9_OPUS, find_video};
use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode, header};
use velour_core::Permissions;
use velour_tests::s3::S3Server;
use velour_tests::{Instance, make_video};

const NAME: &str = "Range Test (2020).webm";

/// Where a video is read from, and how to reach it.
struct Source<'a> {
    label: &'static str,
    instance: &'a Instance,
    video_id: i64,
}

/// What one request must get back.
#[derive(Debug, Clone)]
enum Expect {
    /// 200 with the whole file.
    Full,
    /// 206 with one part, both positions inclusive.
    Partial(usize, usize),
    /// 206 `multipart/byteranges` with these parts, in this order.
    Parts(Vec<(usize, usize)>),
    /// 416 with `Content-Range: bytes */SIZE`.
    Unsatisfiable,
    /// 304 without a body.
    NotModified,
    /// 412 with our JSON error.
    PreconditionFailed,
}

struct Case {
    method: Method,
    headers: Vec<(header::HeaderName, String)>,
    expect: Expect,
}

fn get(headers: &[(header::HeaderName, String)], expect: Expect) -> Case {
    Case { method: Method::GET, headers: headers.to_vec(), expect }
}

fn range(value: impl Into<String>) -> Vec<(header::HeaderName, String)> {
    vec![(header::RANGE, value.into())]
}

/// Every case, for a file of `size` bytes whose validators are `etag` and `modified`.
fn cases(size: usize, etag: &str, modified: &str) -> Vec<Case> {
    let last = size - 1;
    let mut every_other: Vec<String> = (0..64).map(|i| format!("{0}-{0}", 1000 + 2 * i)).collect();
    every_other.reverse();
    let too_many = vec!["0-0"; 65].join(",");
    vec![
        get(&[], Expect::Full),
        get(&range("bytes=0-99"), Expect::Partial(0, 99)),
        get(&range("bytes=100-"), Expect::Partial(100, last)),
        get(&range("bytes=-500"), Expect::Partial(size - 500, last)),
        get(&range(format!("bytes={last}-{last}")), Expect::Partial(last, last)),
        // A last position past the end is clamped; a suffix longer than the file is all.
        get(&range(format!("bytes=10-{}", size + 1000)), Expect::Partial(10, last)),
        get(&range(format!("bytes=-{}", size + 1000)), Expect::Partial(0, last)),
        get(&range("bytes=0-18446744073709551615"), Expect::Partial(0, last)),
        get(&range(format!("bytes={size}-")), Expect::Unsatisfiable),
        get(&range(format!("bytes={size}-{}", size + 5)), Expect::Unsatisfiable),
        get(&range("bytes=-0"), Expect::Unsatisfiable),
        get(&range("bytes=99999999999999999999999-"), Expect::Unsatisfiable),
        // Unknown units and malformed headers are ignored.
        get(&range("items=0-5"), Expect::Full),
        get(&range("bytes=5-1"), Expect::Full),
        get(&range("bytes=abc"), Expect::Full),
        get(&range("bytes=0-1,x"), Expect::Full),
        // Several ranges: merged when they touch, parts in the order asked when not,
        // unsatisfiable ones dropped, and past the part limit one covering span.
        get(&range("bytes=0-9,5-19"), Expect::Partial(0, 19)),
        get(&range("bytes=10-19,0-9"), Expect::Partial(0, 19)),
        get(&range("bytes=200-299,0-9"), Expect::Parts(vec![(200, 299), (0, 9)])),
        get(&range("bytes=0-9,-10"), Expect::Parts(vec![(0, 9), (size - 10, last)])),
        get(&range(format!("bytes=0-9,{size}-")), Expect::Partial(0, 9)),
        get(&range(format!("bytes={}", every_other.join(","))), Expect::Partial(1000, 1126)),
        get(&range(format!("bytes={too_many}")), Expect::Full),
        // If-Range: the current tag or date honours the range; anything else gets all of
        // the current file.
        get(
            &[(header::RANGE, "bytes=0-99".into()), (header::IF_RANGE, etag.into())],
            Expect::Partial(0, 99),
        ),
        get(
            &[(header::RANGE, "bytes=0-99".into()), (header::IF_RANGE, modified.into())],
            Expect::Partial(0, 99),
        ),
        get(
            &[(header::RANGE, "bytes=0-99".into()), (header::IF_RANGE, "\"stale\"".into())],
            Expect::Full,
        ),
        get(
            &[(header::RANGE, "bytes=0-99".into()), (header::IF_RANGE, format!("W/{etag}"))],
            Expect::Full,
        ),
        get(
            &[
                (header::RANGE, "bytes=0-99".into()),
                (header::IF_RANGE, "Thu, 01 Jan 1970 00:00:00 GMT".into()),
            ],
            Expect::Full,
        ),
        // Revalidation: 304 for the current tag or an unchanged date.
        get(&[(header::IF_NONE_MATCH, etag.into())], Expect::NotModified),
        get(&[(header::IF_NONE_MATCH, format!("\"x\", W/{etag}"))], Expect::NotModified),
        get(&[(header::IF_NONE_MATCH, "\"x\"".into())], Expect::Full),
        get(&[(header::IF_MODIFIED_SINCE, modified.into())], Expect::NotModified),
        get(&[(header::IF_MODIFIED_SINCE, "Thu, 01 Jan 1970 00:00:00 GMT".into())], Expect::Full),
        // Preconditions (§13.1.1, §13.1.4): another version named is a 412, before any
        // range or revalidation is looked at.
        get(&[(header::IF_MATCH, etag.into())], Expect::Full),
        get(
            &[(header::IF_MATCH, "*".into()), (header::RANGE, "bytes=0-99".into())],
            Expect::Partial(0, 99),
        ),
        get(&[(header::IF_MATCH, "\"other\"".into())], Expect::PreconditionFailed),
        get(&[(header::IF_MATCH, format!("W/{etag}"))], Expect::PreconditionFailed),
        get(
            &[
                (header::IF_UNMODIFIED_SINCE, "Thu, 01 Jan 1970 00:00:00 GMT".into()),
                (header::RANGE, "bytes=0-99".into()),
            ],
            Expect::PreconditionFailed,
        ),
        get(&[(header::IF_UNMODIFIED_SINCE, modified.into())], Expect::Full),
        // HEAD: GET's headers, no body.
        Case { method: Method::HEAD, headers: vec![], expect: Expect::Full },
        Case { method: Method::HEAD, headers: range("bytes=0-99"), expect: Expect::Partial(0, 99) },
        Case { method: Method::HEAD, headers: range("bytes=-0"), expect: Expect::Unsatisfiable },
    ]
}

/// Sends one case and checks status, `Content-Range`, `Content-Length`, `Content-Type`
/// and the exact body.
async fn check(source: &Source<'_>, case: &Case, original: &[u8]) -> anyhow::Result<()> {
    let size = original.len();
    let path = format!("/api/v1/videos/{}/stream", source.video_id);
    let mut request = source.instance.admin(case.method.clone(), &path);
    for (name, value) in &case.headers {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = |name: header::HeaderName| {
        headers.get(&name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let content_length = text(header::CONTENT_LENGTH);
    let body = response.bytes().await?;
    let head = case.method == Method::HEAD;
    let sent = |expected: &[u8]| -> anyhow::Result<()> {
        ensure!(content_length == Some(expected.len().to_string()), "Content-Length");
        if head {
            ensure!(body.is_empty(), "HEAD sent a body");
        } else {
            ensure!(body[..] == *expected, "body differs ({} bytes)", body.len());
        }
        Ok(())
    };

    match &case.expect {
        Expect::Full => {
            ensure!(status == StatusCode::OK, "status {status}");
            ensure!(text(header::CONTENT_RANGE).is_none(), "Content-Range on a 200");
            ensure!(text(header::CONTENT_TYPE).as_deref() == Some("video/webm"), "type");
            ensure!(text(header::ACCEPT_RANGES).as_deref() == Some("bytes"), "Accept-Ranges");
            sent(original)?;
        }
        Expect::Partial(first, last) => {
            ensure!(status == StatusCode::PARTIAL_CONTENT, "status {status}");
            let expected = format!("bytes {first}-{last}/{size}");
            ensure!(text(header::CONTENT_RANGE) == Some(expected), "Content-Range");
            ensure!(text(header::CONTENT_TYPE).as_deref() == Some("video/webm"), "type");
            sent(&original[*first..=*last])?;
        }
        Expect::Parts(parts) => {
            ensure!(status == StatusCode::PARTIAL_CONTENT, "status {status}");
            ensure!(text(header::CONTENT_RANGE).is_none(), "Content-Range on a multipart");
            let content_type = text(header::CONTENT_TYPE).context("no Content-Type")?;
            let boundary = content_type
                .strip_prefix("multipart/byteranges; boundary=")
                .context("not multipart/byteranges")?;
            let mut expected = Vec::new();
            for (first, last) in parts {
                let part_head = format!(
                    "\r\n--{boundary}\r\nContent-Type: video/webm\r\n\
                     Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
                );
                expected.extend_from_slice(part_head.as_bytes());
                expected.extend_from_slice(&original[*first..=*last]);
            }
            expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            sent(&expected)?;
        }
        Expect::Unsatisfiable => {
            ensure!(status == StatusCode::RANGE_NOT_SATISFIABLE, "status {status}");
            ensure!(text(header::CONTENT_RANGE) == Some(format!("bytes */{size}")), "CR");
            if !head {
                let error: serde_json::Value = serde_json::from_slice(&body)?;
                ensure!(error["code"] == "range-not-satisfiable", "code {error}");
            }
        }
        Expect::PreconditionFailed => {
            ensure!(status == StatusCode::PRECONDITION_FAILED, "status {status}");
            if !head {
                let error: serde_json::Value = serde_json::from_slice(&body)?;
                ensure!(error["code"] == "precondition-failed", "code {error}");
            }
        }
        Expect::NotModified => {
            ensure!(status == StatusCode::NOT_MODIFIED, "status {status}");
            ensure!(body.is_empty(), "a 304 with a body");
            ensure!(text(header::ETAG).is_some(), "a 304 without its ETag");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_and_validator_cases_answer_alike_for_local_bucket_and_peer_videos()
-> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join(NAME), VP9_OPUS, 2)?;
    let original = std::fs::read(library.path().join(NAME))?;
    ensure!(original.len() > 2000, "the test video is too small: {}", original.len());

    let a = Instance::start("ranges A").await?;
    let b = Instance::start("ranges B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let perms = Permissions { can_read: true, can_stream: true, can_metadata: false };
    let key_for_b = a.issue_key("instance B", perms).await?;
    let peer = b.add_peer_location("A", &a, &key_for_b).await?;
    b.scan(peer).await?;

    // The same file in a bucket of A, under the same name.
    let server = S3Server::start().await?;
    server.create_bucket("films").await?;
    server.put("films", NAME, original.clone()).await?;
    let config = server.location_config("films", "");
    let body =
        serde_json::json!({ "name": "bucket", "storage_type": "s3", "configuration": config });
    let bucket = a.post_json("/api/v1/admin/storage_locations", &body, StatusCode::CREATED).await?;
    a.scan(bucket["id"].as_i64().context("bucket id")?).await?;

    let of_type = |works: &[serde_json::Value], kind: &str| -> anyhow::Result<i64> {
        works
            .iter()
            .flat_map(|w| w["videos"].as_array().into_iter().flatten())
            .find(|v| v["storage_type"] == kind && v["filename"].as_str() == Some(NAME))
            .and_then(|v| v["id"].as_i64())
            .with_context(|| format!("no {kind} video named {NAME}"))
    };
    let works_of_a = a.all_works().await?;
    let remote_id = find_video(&b.all_works().await?, NAME)?["id"].as_i64().context("id")?;
    let sources = [
        Source { label: "local", instance: &a, video_id: of_type(&works_of_a, "local")? },
        Source { label: "s3", instance: &a, video_id: of_type(&works_of_a, "s3")? },
        Source { label: "peer", instance: &b, video_id: remote_id },
    ];

    let mut failures = Vec::new();
    for source in &sources {
        // Each store has validators of its own (a bucket's ETag is the object's).
        let path = format!("/api/v1/videos/{}/stream", source.video_id);
        let probe = source.instance.admin(Method::HEAD, &path).send().await?;
        ensure!(probe.status() == StatusCode::OK, "{}: HEAD {}", source.label, probe.status());
        let etag = probe.headers()[header::ETAG].to_str()?.to_owned();
        let modified = probe.headers()[header::LAST_MODIFIED].to_str()?.to_owned();
        ensure!(etag.starts_with('"'), "{}: the ETag is not strong: {etag}", source.label);
        for case in cases(original.len(), &etag, &modified) {
            if let Err(e) = check(source, &case, &original).await {
                failures.push(format!(
                    "{} {} {:?} (expected {:?}): {e:#}",
                    source.label, case.method, case.headers, case.expect
                ));
            }
        }
    }
    a.stop().await?;
    b.stop().await?;
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}
