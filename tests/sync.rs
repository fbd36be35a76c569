//! Incremental sync between two instances, tombstones, and indexed search.

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use velour_tests::{Instance, expect_json, make_video};

const H264_AAC: &[&str] = &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"];

/// Issues a member key on `instance`; returns (id, key).
async fn member_key(instance: &Instance, name: &str) -> anyhow::Result<(i64, String)> {
    let body = json!({ "name": name, "permissions": {
        "can_read": true, "can_stream": true, "can_metadata": true } });
    let created = instance.post_json("/api/v1/admin/api_keys", &body, StatusCode::CREATED).await?;
    let id = created["id"].as_i64().context("no key id")?;
    Ok((id, created["key"].as_str().context("no key")?.to_owned()))
}

fn counts(run: &Value, group: &str) -> [i64; 4] {
    ["seen", "added", "updated", "removed"].map(|k| run[group][k].as_i64().unwrap_or(-1))
}

/// The audit entries of `key_id` on `instance`, once `expected` of them are written.
async fn audit_entries(
    instance: &Instance,
    query: &str,
    expected: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut entries = Vec::new();
    for _ in 0..100 {
        let page = instance.get_json(&format!("/api/v1/admin/audit?{query}")).await?;
        entries = page["entries"].as_array().cloned().unwrap_or_default();
        if entries.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(entries)
}

/// The titles of every work `instance` lists, in its order.
async fn titles(instance: &Instance) -> anyhow::Result<Vec<String>> {
    let works = instance.all_works().await?;
    Ok(works.iter().filter_map(|w| w["title"].as_str().map(str::to_owned)).collect())
}

async fn sync_cursor(instance: &Instance, location: i64) -> anyhow::Result<Option<String>> {
    let cursor = sqlx::query_scalar("SELECT sync_cursor FROM storage_locations WHERE id = $1")
        .bind(location)
        .fetch_one(instance.pool())
        .await?;
    Ok(cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_is_rescanned_by_its_changes_and_deletions_propagate() -> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Alpha (2001)/alpha.mp4"), H264_AAC, 1)?;
    make_video(&library.path().join("Beta.mp4"), H264_AAC, 1)?;
    make_video(&library.path().join("Gamma.mp4"), H264_AAC, 1)?;
    let a = Instance::start("A").await?;
    let b = Instance::start("B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let (key_id, key) = member_key(&a, "B").await?;

    // A advertises the extensions, beside the original design's fields.
    let info = a.http.get(a.url("/api/v1/instance")).bearer_auth(&key).send().await?;
    let info = expect_json(info, StatusCode::OK).await?;
    assert_eq!(info["capabilities"], json!(["works.updated_since", "works.after"]), "{info}");
    assert_eq!(info["total_works"], 3);

    // A cursor reaches one second back (CURSOR_OVERLAP, against transactions that commit
    // late), so rows A wrote within that second of B's first scan would be sent again. This
    // test checks exact counts, so A's scan is let fall out of that window first: a wait for
    // a documented interval to pass, not for something to be ready.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The first scan reads everything and keeps A's cursor.
    let peer = b.add_peer_location("A", &a, &key).await?;
    let first = b.scan(peer).await?;
    assert_eq!(counts(&first, "videos"), [3, 3, 0, 0], "{first}");
    let cursor = sync_cursor(&b, peer).await?.context("no cursor after a complete scan")?;

    // Unchanged: the rescan is one request to A, and changes nothing.
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let query = format!("key_id={key_id}&since={}", urlencode(&since));
    let rescan = b.scan(peer).await?;
    assert_eq!(counts(&rescan, "videos"), [0, 0, 0, 0], "{rescan}");
    let requests = audit_entries(&a, &query, 1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = if requests.len() == 1 { audit_entries(&a, &query, 2).await? } else { requests };
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["action"], "catalog.list_works");

    // Beta leaves A: A's changes since the cursor hold its video's and its work's
    // tombstones and no work.
    std::fs::remove_file(library.path().join("Beta.mp4"))?;
    let swept = a.scan(folder).await?;
    assert_eq!(counts(&swept, "videos")[3], 1, "{swept}");
    let path = format!("/api/v1/works?updated_since={}", urlencode(&cursor));
    let changes = a.http.get(a.url(&path)).bearer_auth(&key).send().await?;
    let changes = expect_json(changes, StatusCode::OK).await?;
    assert_eq!(changes["works"], json!([]), "{changes}");
    let kinds: Vec<&str> = changes["sync"]["deleted"]
        .as_array()
        .context("no tombstones")?
        .iter()
        .filter_map(|t| t["type"].as_str())
        .collect();
    assert_eq!(kinds, ["video", "work"], "{changes}");
    assert_eq!(changes["sync"]["deleted_count"], 2);

    // B's next scan applies the tombstone: the video and its work are gone from B.
    let third = b.scan(peer).await?;
    assert_eq!(counts(&third, "videos"), [0, 0, 0, 1], "{third}");
    assert_eq!(counts(&third, "works")[3], 1, "{third}");
    assert_eq!(titles(&b).await?, ["Alpha", "Gamma"]);
    assert_ne!(sync_cursor(&b, peer).await?, Some(cursor));

    // A location deleted outright on A (its rows gone, not marked) still leaves
    // tombstones: B removes the rest.
    sqlx::query("DELETE FROM storage_locations WHERE id = $1")
        .bind(folder)
        .execute(a.pool())
        .await?;
    let fourth = b.scan(peer).await?;
    assert_eq!(counts(&fourth, "videos"), [0, 0, 0, 2], "{fourth}");
    assert_eq!(counts(&fourth, "works")[3], 2, "{fourth}");
    assert!(b.all_works().await?.is_empty());

    b.stop().await?;
    a.stop().await
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_uses_the_trigram_index_and_normalizes_the_query() -> anyhow::Result<()> {
    let a = Instance::start("A").await?;
    let pool = a.pool();
    // A catalog large enough that reading every row would cost more than the index.
    sqlx::query(
        "WITH l AS (INSERT INTO storage_locations (name, storage_type, configuration)
                    VALUES ('bulk', 'local', '{\"path\": \"/nonexistent\"}') RETURNING id),
              w AS (INSERT INTO works (title, year)
                    SELECT 'Work number ' || n || ' of the bulk catalog', 2000
                    FROM generate_series(1, 30000) n RETURNING id)
         INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
         SELECT w.id, l.id, 'v' || w.id, 'v' || w.id || '.mp4', 1 FROM w, l",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "WITH w AS (INSERT INTO works (title, year) VALUES ('Am\u{e9}lie', 2001) RETURNING id)
         INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
         SELECT w.id, l.id, 'amelie', 'amelie.mkv', 1 FROM w, storage_locations l",
    )
    .execute(pool)
    .await?;
    // As autovacuum would: statistics, and the GIN index's pending list merged into it (the
    // planner prices a long pending list as if every entry had to be read).
    sqlx::query("VACUUM ANALYZE works").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE videos").execute(pool).await?;

    let plan = velour_db::catalog::explain_search(pool, "amélie").await?;
    assert!(plan.contains("works_title_trgm_idx"), "{plan}");
    // The gateway searches on sessions that plan once, without the pattern: that plan
    // finds the works through the trigram index too.
    let planned_once = velour_db::planned_once(pool);
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&planned_once).await?;
    assert_eq!(mode, "force_generic_plan");
    let plan = velour_db::catalog::explain_search(&planned_once, "amélie").await?;
    assert!(plan.contains("works_title_trgm_idx") && plan.contains("$1"), "{plan}");
    planned_once.close().await;

    // The title is stored composed; a query typed decomposed (e + U+0301) still finds it,
    // in any case.
    let query = urlencode("ame\u{301}LIE");
    let found = a.get_json(&format!("/api/v1/videos/search?query={query}")).await?;
    assert_eq!(found["pagination"]["total_count"], 1, "{found}");
    assert_eq!(found["videos"][0]["work_title"], "Am\u{e9}lie");
    a.stop().await
}

/// The titles of one page of `instance`'s works listing at `query`, and its
/// `sync.next_after`.
async fn titles_and_next(
    instance: &Instance,
    query: &str,
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let page = instance.get_json(&format!("/api/v1/works?{query}")).await?;
    let works = page["works"].as_array().context("no works")?;
    let titles = works.iter().filter_map(|w| w["title"].as_str().map(str::to_owned)).collect();
    Ok((titles, page["sync"]["next_after"].as_str().map(str::to_owned)))
}

/// Writes `count` works straight into `instance`'s catalog, `Work 001` onwards, each with
/// one video (`Work 001.mp4`) of a folder that is never scanned.
async fn works_of_one_video(instance: &Instance, count: i32) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO storage_locations (name, storage_type, configuration)
           VALUES ('shelf', 'local', '{\"path\": \"/nonexistent\"}')",
    )
    .execute(instance.pool())
    .await?;
    sqlx::query(
        "INSERT INTO works (title) SELECT format('Work %s', lpad(n::text, 3, '0'))
           FROM generate_series(1, $1) n",
    )
    .bind(count)
    .execute(instance.pool())
    .await?;
    sqlx::query(
        "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
           SELECT id, 1, id::text, title || '.mp4', 1 FROM works",
    )
    .execute(instance.pool())
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_read_by_key_skip_no_work_when_an_earlier_one_leaves() -> anyhow::Result<()> {
    let a = Instance::start("A").await?;
    works_of_one_video(&a, 25).await?;
    let instance = a.get_json("/api/v1/instance").await?;
    assert!(instance["capabilities"].as_array().is_some_and(|c| c.contains(&json!("works.after"))));

    let (first, after) = titles_and_next(&a, "per_page=10").await?;
    assert_eq!(first.first().map(String::as_str), Some("Work 001"));
    let after = after.context("a full page names where the next starts")?;

    // Work 003 leaves the listing between two pages.
    sqlx::query("UPDATE videos SET removed_at = now() WHERE filename = 'Work 003.mp4'")
        .execute(a.pool())
        .await?;
    // By number, page 2 now starts at Work 012: Work 011 is on no page read.
    let pages_agree = || async {
        let (numbered, _) = titles_and_next(&a, "per_page=10&page=2").await?;
        anyhow::Ok(numbered.first().map(String::as_str) == Some("Work 012"))
    };
    for _ in 0..100 {
        if pages_agree().await? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pages_agree().await?, "the removal never reached the listing");

    // By key, the reading goes on right after Work 010, to the end.
    let mut read = first;
    let mut next = Some(after);
    let mut page = 2;
    while let Some(after) = next.take() {
        let query = format!("per_page=10&page={page}&after={after}");
        let (titles, after) = titles_and_next(&a, &query).await?;
        read.extend(titles);
        next = after;
        page += 1;
        assert!(page < 10, "the pages never end");
    }
    let expected: Vec<String> = (1..=25).map(|n| format!("Work {n:03}")).collect();
    assert_eq!(read, expected);

    // What is not a token handed out is refused, and so is one mixed with updated_since.
    for bad in ["garbage", "7.%21%21", "x.V29yaw", "1.AA", &"1.QQ".repeat(2_000)] {
        let response = a.admin(reqwest::Method::GET, &format!("/api/v1/works?after={bad}"));
        let body = expect_json(response.send().await?, StatusCode::BAD_REQUEST).await?;
        assert_eq!(body["code"], "invalid-after", "{bad}");
    }
    let mixed = "/api/v1/works?after=1.QQ&updated_since=2026-01-01T00:00:00Z";
    let response = a.admin(reqwest::Method::GET, mixed).send().await?;
    assert_eq!(expect_json(response, StatusCode::BAD_REQUEST).await?["code"], "invalid-after");
    a.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_location_removes_its_videos_and_the_works_left_without_any()
-> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    make_video(&library.path().join("Alpha (2001).mp4"), H264_AAC, 1)?;
    make_video(&library.path().join("Beta.mp4"), H264_AAC, 1)?;
    let a = Instance::start("A").await?;
    let first = a.add_local_location("films", library.path()).await?;
    let second = a.add_local_location("films again", library.path()).await?;
    a.scan(first).await?;
    a.scan(second).await?;
    let videos = |works: &[Value]| {
        works.iter().map(|w| w["videos"].as_array().map_or(0, Vec::len)).sum::<usize>()
    };
    assert_eq!(videos(&a.all_works().await?), 4);

    let delete = |id: i64| {
        a.admin(reqwest::Method::DELETE, &format!("/api/v1/admin/storage_locations/{id}"))
    };
    // Each work still has a video in the first location.
    let removed = expect_json(delete(second).send().await?, StatusCode::OK).await?;
    assert_eq!(
        (removed["videos_removed"].as_i64(), removed["works_removed"].as_i64()),
        (Some(2), Some(0))
    );
    let works = a.all_works().await?;
    assert_eq!((works.len(), videos(&works)), (2, 2));

    // A location being scanned stays.
    sqlx::query("INSERT INTO scan_runs (storage_location_id) VALUES ($1)")
        .bind(first)
        .execute(a.pool())
        .await?;
    let refused = expect_json(delete(first).send().await?, StatusCode::CONFLICT).await?;
    assert_eq!(refused["code"], "scan-active");
    sqlx::query("UPDATE scan_runs SET state = 'failed' WHERE storage_location_id = $1")
        .bind(first)
        .execute(a.pool())
        .await?;

    let removed = expect_json(delete(first).send().await?, StatusCode::OK).await?;
    assert_eq!(
        (removed["videos_removed"].as_i64(), removed["works_removed"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(a.all_works().await?.is_empty());
    let works_left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM works").fetch_one(a.pool()).await?;
    assert_eq!(works_left, 0);
    let gone = expect_json(delete(first).send().await?, StatusCode::NOT_FOUND).await?;
    assert_eq!(gone["code"], "not-found");
    a.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_another_scan_is_saving_to_outlives_a_location_deleted_meanwhile()
-> anyhow::Result<()> {
    use velour_db::locations::{RemovedVideos, delete_location};
    let db = velour_tests::TestDb::create().await?;
    let pool = db.pool.clone();
    let (old, new): (i64, i64) = sqlx::query_as(
        "WITH l AS (INSERT INTO storage_locations (name, storage_type, configuration)
                    VALUES ('old', 'local', '{\"path\": \"/old\"}'),
                           ('new', 'local', '{\"path\": \"/new\"}') RETURNING id)
         SELECT min(id), max(id) FROM l",
    )
    .fetch_one(&pool)
    .await?;
    // The work's only video so far is one `old` no longer has.
    sqlx::query(
        "WITH w AS (INSERT INTO works (title) VALUES ('Kept') RETURNING id)
         INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size,
                             removed_at)
         SELECT id, $1, 'kept.mp4', 'kept.mp4', 1, now() FROM w",
    )
    .bind(old)
    .execute(&pool)
    .await?;

    // A scan of `new` finds the work, and has not saved its video yet.
    let mut saving = pool.begin().await?;
    let found = velour_db::ingest::FoundWork { title: "Kept", ..Default::default() };
    let (work, _) = velour_db::ingest::upsert_work(&mut saving, &found).await?;
    let deleting = tokio::spawn({
        let pool = pool.clone();
        async move { delete_location(&pool, old).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!deleting.is_finished(), "the delete did not wait for the work being saved to");
    sqlx::query(
        "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
         VALUES ($1, $2, 'kept.mp4', 'kept.mp4', 1)",
    )
    .bind(work)
    .bind(new)
    .execute(&mut *saving)
    .await?;
    saving.commit().await?;

    let removed = deleting.await??;
    assert_eq!(removed, RemovedVideos { videos_removed: 1, works_removed: 0 });
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM videos WHERE storage_location_id = $1")
            .bind(new)
            .fetch_one(&pool)
            .await?;
    assert_eq!(kept, 1);
    // And a scan asked for the deleted location finds it gone.
    let gone = velour_db::scans::enqueue_scan_run(&pool, old).await;
    assert!(matches!(gone, Err(velour_db::DbError::NotFound)), "{gone:?}");
    db.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_whose_cursor_is_older_than_the_tombstones_kept_reads_everything_again()
-> anyhow::Result<()> {
    let library = tempfile::tempdir()?;
    for name in ["Alpha.mp4", "Beta.mp4", "Gamma.mp4"] {
        make_video(&library.path().join(name), H264_AAC, 1)?;
    }
    let a = Instance::start("A").await?;
    let b = Instance::start("B").await?;
    let folder = a.add_local_location("films", library.path()).await?;
    a.scan(folder).await?;
    let (_, key) = member_key(&a, "B").await?;
    let peer = b.add_peer_location("A", &a, &key).await?;
    b.scan(peer).await?;
    assert_eq!(b.all_works().await?.len(), 3);

    // Beta leaves A, and B last read A's changes long ago: A has since pruned the
    // tombstones B would need (Beta's among them).
    std::fs::remove_file(library.path().join("Beta.mp4"))?;
    a.scan(folder).await?;
    sqlx::query(
        "UPDATE videos SET removed_at = now() - interval '40 days' WHERE removed_at IS NOT NULL",
    )
    .execute(a.pool())
    .await?;
    let old_cursor = (chrono::Utc::now() - chrono::Duration::days(41))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    sqlx::query("UPDATE storage_locations SET sync_cursor = $2 WHERE id = $1")
        .bind(peer)
        .bind(&old_cursor)
        .execute(b.pool())
        .await?;
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    velour_db::maintenance::prune_tombstones(a.pool(), before).await?;
    let horizon = velour_db::maintenance::tombstone_horizon(a.pool()).await?;
    assert!(horizon.is_some(), "nothing was pruned");

    // A refuses changes since a cursor from before what it forgot, and serves later ones.
    let since = |cursor: &str| format!("/api/v1/works?updated_since={}", urlencode(cursor));
    let refused = a.http.get(a.url(&since(&old_cursor))).bearer_auth(&key).send().await?;
    let refused = expect_json(refused, StatusCode::GONE).await?;
    assert_eq!(refused["code"], "cursor-too-old", "{refused}");
    let recent = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let served = a.http.get(a.url(&since(&recent))).bearer_auth(&key).send().await?;
    expect_json(served, StatusCode::OK).await?;

    // B's next scan reads A whole instead, and its sweep removes Beta.
    let rescan = b.scan(peer).await?;
    assert_eq!(counts(&rescan, "videos"), [2, 0, 0, 1], "{rescan}");
    assert_eq!(titles(&b).await?, ["Alpha", "Gamma"]);
    let cursor = sync_cursor(&b, peer).await?.context("no cursor after the full scan")?;
    assert_ne!(cursor, old_cursor);

    b.stop().await?;
    a.stop().await
}

/// Relays every request to `peer`, running `meanwhile` on the peer's catalog once, just
/// before it relays the first request whose query holds `trigger`. Returns the relay's URL.
async fn relay_with_change(
    peer: &Instance,
    trigger: &'static str,
    meanwhile: &'static str,
) -> anyhow::Result<url::Url> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let relay = url::Url::parse(&format!("http://{}/", listener.local_addr()?))?;
    let (base, http, pool) = (peer.url("/"), peer.http.clone(), peer.pool().clone());
    let changed = std::sync::Arc::new(tokio::sync::OnceCell::new());
    let app = poem::endpoint::make::<_, _, poem::Response, poem::Result<poem::Response>>(
        move |req: poem::Request| {
            let (base, http, pool, changed) =
                (base.clone(), http.clone(), pool.clone(), changed.clone());
            async move {
                let query = req.uri().query().unwrap_or_default();
                if query.contains(trigger) {
                    changed
                        .get_or_try_init(|| async { sqlx::raw_sql(meanwhile).execute(&pool).await })
                        .await
                        .map_err(poem::error::InternalServerError)?;
                }
                let target = base
                    .join(
                        req.uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .trim_start_matches('/'),
                    )
                    .map_err(poem::error::BadRequest)?;
                let mut upstream = http.request(req.method().clone(), target);
                if let Some(auth) = req.headers().get("authorization") {
                    upstream = upstream.header("authorization", auth);
                }
                let answer = upstream.send().await.map_err(poem::error::BadGateway)?;
                let status = answer.status();
                let kind = answer.headers().get("content-type").cloned();
                let body = answer.bytes().await.map_err(poem::error::BadGateway)?;
                let mut response = poem::Response::builder().status(status);
                if let Some(kind) = kind {
                    response = response.header("content-type", kind);
                }
                poem::Result::Ok(response.body(body))
            }
        },
    );
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    Ok(relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_video_moved_between_works_while_a_peer_is_read_is_not_lost() -> anyhow::Result<()> {
    let a = Instance::start("A").await?;
    let b = Instance::start("B").await?;
    // 150 works, read 100 to a page: Work 140 is on the second page.
    works_of_one_video(&a, 150).await?;
    // Once B has read the first page, A's owner files Work 140's video under Work 001,
    // which B has read already, as A's own scan would.
    let relay = relay_with_change(
        &a,
        "page=2",
        "UPDATE videos SET work_id = (SELECT id FROM works WHERE title = 'Work 001'),
                           updated_at = now()
          WHERE filename = 'Work 140.mp4'",
    )
    .await?;
    let (_, key) = member_key(&a, "B").await?;
    let body = json!({ "name": "A", "storage_type": "velour", "configuration": {
        "remote_instance_url": relay.as_str(), "api_key": key, "instance_name": "A" } });
    let created =
        b.post_json("/api/v1/admin/storage_locations", &body, StatusCode::CREATED).await?;
    let location = created["id"].as_i64().context("no id")?;

    let run = b.scan(location).await?;
    assert_eq!(counts(&run, "videos"), [150, 150, 0, 0], "{run}");
    let works = b.all_works().await?;
    let files = |title: &str| -> Vec<String> {
        let work = works.iter().find(|w| w["title"] == title);
        let videos = work.and_then(|w| w["videos"].as_array()).cloned().unwrap_or_default();
        let mut names: Vec<String> =
            videos.iter().filter_map(|v| v["filename"].as_str().map(str::to_owned)).collect();
        names.sort();
        names
    };
    assert_eq!(files("Work 001"), ["Work 001.mp4", "Work 140.mp4"]);
    assert_eq!(works.len(), 149, "Work 140 has no video left");
    // The next scan reads changes from there on, and finds nothing to add or remove.
    assert!(sync_cursor(&b, location).await?.is_some(), "no cursor kept");
    let rescan = b.scan(location).await?;
    assert_eq!(counts(&rescan, "videos")[1..], [0, 0, 0], "{rescan}");
    assert_eq!(b.all_works().await?.len(), 149);
    a.stop().await?;
    b.stop().await
}
