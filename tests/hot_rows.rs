//! Storage locations kept in memory between stream requests (velour-db `hot`): answered
//! from memory while their rows are unchanged, forgotten as soon as any process changes
//! them, and never trusted while the connection that announces changes is down.

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use velour_core::Permissions;
use velour_core::StorageType;
use velour_db::hot::HotRows;
use velour_db::locations::{self, NewLocation};
use velour_db::secrets::SecretsCipher;
use velour_tests::{Instance, TestDb};

async fn add_folder(pool: &PgPool, cipher: &SecretsCipher) -> anyhow::Result<i64> {
    let new = NewLocation {
        name: "films",
        storage_type: StorageType::Local,
        configuration: json!({ "path": "/srv/films" }),
        secrets: json!({}),
        rescan_interval_secs: None,
    };
    Ok(locations::create_location(pool, cipher, new).await?.id)
}

/// The folder a location names, as `hot` answers it.
async fn path_of(hot: &HotRows, pool: &PgPool, cipher: &SecretsCipher, id: i64) -> String {
    match hot.location(pool, cipher, id).await {
        Ok(found) => found.location.config_str("path").unwrap_or_default().to_owned(),
        Err(err) => format!("error: {err}"),
    }
}

/// Waits (up to 5 s) for `done`, polling every millisecond; the time it took.
async fn within_5s<F: Future<Output = bool>>(
    mut done: impl FnMut() -> F,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if done().await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("still not so after 5 s")
}

/// Moves location `id` to another folder without the trigger that announces it, as if the
/// notification were lost: what memory answers next tells whether it was asked at all.
async fn move_silently(pool: &PgPool, id: i64, path: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("ALTER TABLE storage_locations DISABLE TRIGGER storage_locations_announce")
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE storage_locations SET configuration = $2 WHERE id = $1")
        .bind(id)
        .bind(json!({ "path": path }))
        .execute(&mut *tx)
        .await?;
    sqlx::query("ALTER TABLE storage_locations ENABLE TRIGGER storage_locations_announce")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A test database with one folder location, kept by a listening `HotRows` and then moved
/// to `/srv/moved` behind its back: `hot` still answers `/srv/films`.
async fn kept_then_moved_silently() -> anyhow::Result<(TestDb, HotRows, i64)> {
    let db = TestDb::create().await?;
    let (pool, cipher) = (&db.pool, SecretsCipher::default());
    let id = add_folder(pool, &cipher).await?;
    let hot = HotRows::start(pool);
    within_5s(|| async { hot.is_live() }).await?;
    assert_eq!(path_of(&hot, pool, &cipher, id).await, "/srv/films");
    // The row changes, but nobody says so: the answer comes from memory.
    move_silently(pool, id, "/srv/moved").await?;
    assert_eq!(path_of(&hot, pool, &cipher, id).await, "/srv/films", "it was not kept");
    Ok((db, hot, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_location_is_forgotten_when_any_connection_changes_it() -> anyhow::Result<()> {
    let (db, hot, id) = kept_then_moved_silently().await?;
    let (pool, cipher) = (db.pool.clone(), SecretsCipher::default());

    // Any change to the table, from any connection, is announced and empties memory.
    sqlx::query("UPDATE storage_locations SET name = 'renamed' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await?;
    let took =
        within_5s(|| async { path_of(&hot, &pool, &cipher, id).await == "/srv/moved" }).await?;
    assert!(took < Duration::from_secs(1), "the change took {took:?} to arrive");

    // A deleted location is not answered from memory either.
    sqlx::query("DELETE FROM storage_locations WHERE id = $1").bind(id).execute(&pool).await?;
    within_5s(|| async { path_of(&hot, &pool, &cipher, id).await.starts_with("error") }).await?;

    drop(hot);
    db.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_announcements_forgets_everything_kept() -> anyhow::Result<()> {
    let (db, hot, id) = kept_then_moved_silently().await?;
    let (pool, cipher) = (db.pool.clone(), SecretsCipher::default());

    // Cut the listening connection: changes made meanwhile could never be announced, so
    // what was kept must go, and the location is read as the database has it.
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(cut, [true], "exactly one listening connection");
    within_5s(|| async { path_of(&hot, &pool, &cipher, id).await == "/srv/moved" }).await?;

    // It listens again and keeps locations again.
    within_5s(|| async { hot.is_live() }).await?;
    assert_eq!(path_of(&hot, &pool, &cipher, id).await, "/srv/moved");
    move_silently(&pool, id, "/srv/again").await?;
    assert_eq!(path_of(&hot, &pool, &cipher, id).await, "/srv/moved", "not kept after relisten");

    drop(hot);
    db.drop_database().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_listener_nothing_is_kept() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let (pool, cipher) = (db.pool.clone(), SecretsCipher::default());
    let id = add_folder(&pool, &cipher).await?;
    let hot = HotRows::disabled();
    assert_eq!(path_of(&hot, &pool, &cipher, id).await, "/srv/films");
    move_silently(&pool, id, "/srv/moved").await?;
    assert_eq!(path_of(&hot, &pool, &cipher, id).await, "/srv/moved");
    db.drop_database().await
}

/// Adds a work with one present video, in one transaction; with `announce` false, the
/// triggers that announce changes to works and videos are off for it.
async fn add_work(pool: &PgPool, location: i64, title: &str, announce: bool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    // The video's count trigger updates its work: that announces too.
    let triggers = [
        ("works", "works_announce_insert"),
        ("works", "works_announce_update"),
        ("videos", "videos_announce_insert"),
    ];
    if !announce {
        for (table, trigger) in triggers {
            let off = format!("ALTER TABLE {table} DISABLE TRIGGER {trigger}");
            sqlx::query(sqlx::AssertSqlSafe(off)).execute(&mut *tx).await?;
        }
    }
    let work: i64 = sqlx::query_scalar("INSERT INTO works (title) VALUES ($1) RETURNING id")
        .bind(title)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO videos (work_id, storage_location_id, source_key, filename, file_size)
         VALUES ($1, $2, $3, $3, 1)",
    )
    .bind(work)
    .bind(location)
    .bind(format!("{title}.mp4"))
    .execute(&mut *tx)
    .await?;
    if !announce {
        for (table, trigger) in triggers {
            let on = format!("ALTER TABLE {table} ENABLE TRIGGER {trigger}");
            sqlx::query(sqlx::AssertSqlSafe(on)).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn the_listings_total_is_read_once_per_catalog_version() -> anyhow::Result<()> {
    use velour_db::PageRequest;
    use velour_db::catalog::{ListingCache, list_works_at};
    let db = TestDb::create().await?;
    let pool = &db.pool;
    let location = add_folder(pool, &SecretsCipher::default()).await?;
    let hot = HotRows::start(pool);
    within_5s(|| async { hot.is_live() }).await?;
    let (cache, page) = (ListingCache::default(), PageRequest::new(None, None)?);

    let before = hot.catalog_version();
    add_work(pool, location, "First", true).await?;
    within_5s(|| async { hot.catalog_version() != before }).await?;
    let version = hot.catalog_version();
    let listed = list_works_at(pool, &cache, version, page).await?;
    assert_eq!((listed.works.len(), listed.total), (1, 1));

    // A work added without a word: the page's rows are read afresh, the total is the one
    // kept for this version.
    add_work(pool, location, "Second", false).await?;
    let listed = list_works_at(pool, &cache, version, page).await?;
    assert_eq!((listed.works.len(), listed.total), (2, 1), "the total was read again");
    // Without a version (nobody listening), nothing kept is used.
    assert_eq!(list_works_at(pool, &cache, None, page).await?.total, 2);

    // An announced change moves the version on, and the total is read again.
    add_work(pool, location, "Third", true).await?;
    within_5s(|| async { hot.catalog_version() != version }).await?;
    let listed = list_works_at(pool, &cache, hot.catalog_version(), page).await?;
    assert_eq!((listed.works.len(), listed.total), (3, 3));
    // A statement that changes no row announces nothing. Notifications arrive in commit
    // order, so one for it would come before the one for the work changed after it.
    let before = hot.catalog_version().context("not live")?;
    sqlx::query("UPDATE videos SET filename = 'none' WHERE id = -1").execute(pool).await?;
    sqlx::query("UPDATE works SET description = 'seen' WHERE title = 'First'")
        .execute(pool)
        .await?;
    within_5s(|| async { hot.catalog_version() != Some(before) }).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hot.catalog_version(), Some(before + 1), "a change of nothing was announced");

    // And the cursor handed out with it reaches back before the change.
    let newest: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(updated_at) FROM works").fetch_one(pool).await?;
    assert!(listed.cursor <= newest, "{} > {newest}", listed.cursor);

    db.drop_database().await
}

/// Renames video `id`'s file, with the triggers that announce it off when `announce` is
/// false.
async fn rename_video(pool: &PgPool, id: i64, name: &str, announce: bool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    if !announce {
        sqlx::query("ALTER TABLE videos DISABLE TRIGGER videos_announce_update")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE videos SET filename = $2 WHERE id = $1")
        .bind(id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if !announce {
        sqlx::query("ALTER TABLE videos ENABLE TRIGGER videos_announce_update")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_video_is_answered_until_the_catalog_changes() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let pool = &db.pool;
    let location = add_folder(pool, &SecretsCipher::default()).await?;
    add_work(pool, location, "Film", true).await?;
    let id: i64 = sqlx::query_scalar("SELECT id FROM videos").fetch_one(pool).await?;
    let hot = HotRows::start(pool);
    within_5s(|| async { hot.is_live() }).await?;
    let filename = |hot: HotRows| async move {
        hot.video(pool, id).await.map_or_else(|e| format!("error: {e}"), |v| v.filename)
    };
    assert_eq!(filename(hot.clone()).await, "Film.mp4");

    // Changed without a word: memory answers.
    rename_video(pool, id, "silent.mp4", false).await?;
    assert_eq!(filename(hot.clone()).await, "Film.mp4", "the video was not kept");

    // Any announced change to the catalog, even of another work, forgets it.
    add_work(pool, location, "Other", true).await?;
    within_5s(|| async { filename(hot.clone()).await == "silent.mp4" }).await?;

    // A removed video is not answered from memory.
    sqlx::query("UPDATE videos SET removed_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    within_5s(|| async { filename(hot.clone()).await.starts_with("error") }).await?;

    // Without a listener every lookup reads the database.
    let cold = HotRows::disabled();
    sqlx::query("UPDATE videos SET removed_at = NULL WHERE id = $1").bind(id).execute(pool).await?;
    assert_eq!(filename(cold.clone()).await, "silent.mp4");
    rename_video(pool, id, "quiet.mp4", false).await?;
    assert_eq!(filename(cold).await, "quiet.mp4");

    drop(hot);
    db.drop_database().await
}

/// The titles on the first page of the works listing, as `key` reads it.
async fn listed_titles(instance: &Instance, key: &str) -> anyhow::Result<Vec<String>> {
    let response = instance.http.get(instance.url("/api/v1/works")).bearer_auth(key).send().await?;
    let page = velour_tests::expect_json(response, reqwest::StatusCode::OK).await?;
    let works = page["works"].as_array().context("no works in the page")?;
    Ok(works.iter().filter_map(|w| w["title"].as_str().map(str::to_owned)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendered_listing_page_is_sent_again_until_the_catalog_changes() -> anyhow::Result<()> {
    let instance = Instance::start("pages").await?;
    let pool = instance.pool();
    let admin = instance.admin_key.expose_secret().to_owned();
    let location = add_folder(pool, &SecretsCipher::default()).await?;
    add_work(pool, location, "First", true).await?;
    within_5s(|| async {
        listed_titles(&instance, &admin).await.ok() == Some(vec!["First".into()])
    })
    .await?;

    // Added without a word: the page the gateway rendered is sent again as it was.
    add_work(pool, location, "Second", false).await?;
    assert_eq!(listed_titles(&instance, &admin).await?, ["First"], "the page was not kept");

    // A key that may not see technical metadata gets a page rendered for it, not the
    // admin's: read now, it has both works, and no fingerprints.
    let reader = Permissions { can_read: true, can_stream: false, can_metadata: false };
    let member = instance.issue_key("member", reader).await?;
    assert_eq!(listed_titles(&instance, &member).await?, ["First", "Second"]);
    let response = instance.http.get(instance.url("/api/v1/works")).bearer_auth(&member);
    let page = velour_tests::expect_json(response.send().await?, reqwest::StatusCode::OK).await?;
    assert_eq!(page["works"][0]["videos"][0]["fingerprints"], json!({}));

    // An announced change, from any connection, is seen by the next page read.
    add_work(pool, location, "Third", true).await?;
    let all: Vec<String> = ["First", "Second", "Third"].map(String::from).into();
    within_5s(|| async { listed_titles(&instance, &admin).await.ok().as_ref() == Some(&all) })
        .await?;

    instance.stop().await
}
