//! Catalog reads: works, videos, search and instance totals.
//!
//! A video counts as present until a scan marks it removed; a work is listed only while it
//! has at least one present video.

use crate::{DbError, PageRequest};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::Json;
use std::collections::HashMap;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WorkRow {
    pub id: i64,
    pub title: String,
    pub year: Option<i32>,
    pub description: Option<String>,
    pub director: Option<String>,
    pub rating: Option<f64>,
    pub organized: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct VideoRow {
    pub id: i64,
    pub work_id: i64,
    pub work_title: String,
    pub storage_location_id: i64,
    pub storage_type: String,
    pub source_key: String,
    pub filename: String,
    pub file_size: i64,
    pub modified_at: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub container: Option<String>,
    pub web_compatible: bool,
    pub fingerprints: Json<Value>,
    pub video_metadata: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A work with its present videos.
#[derive(Clone, Debug)]
pub struct WorkWithVideos {
    pub work: WorkRow,
    pub videos: Vec<VideoRow>,
}

/// The totals `/api/v1/instance` reports.
#[derive(Clone, Copy, Debug, sqlx::FromRow)]
pub struct InstanceTotals {
    pub total_works: i64,
    pub total_videos: i64,
    pub total_storage: i64,
}

/// The `SELECT` of a `VideoRow`: videos `v` of the works `w` named by `$works` (any
/// relation with `id` and `title`: the table, a search's matches, a page's works), with
/// their locations `l`.
macro_rules! video_select {
    ($works:literal) => {
        concat!(
            "SELECT v.id, v.work_id, w.title AS work_title, v.storage_location_id,
                    l.storage_type, v.source_key, v.filename, v.file_size, v.modified_at,
                    v.duration, v.width, v.height, v.video_codec, v.audio_codec, v.container,
                    v.web_compatible, v.fingerprints, v.video_metadata, v.created_at,
                    v.updated_at
             FROM ",
            $works,
            " JOIN videos v ON v.work_id = w.id
              JOIN storage_locations l ON l.id = v.storage_location_id"
        )
    };
}

const VIDEO_SELECT: &str = video_select!("works w");

/// A work with at least one present video. The count is kept by a trigger on videos, and
/// `works_listed_idx` covers exactly these works in the listing's order.
const PRESENT_WORK: &str = "w.present_videos > 0";

/// Folds the listed-works deltas written so far into one row; scans call it when they
/// end, so that reading the total stays a matter of a few rows.
pub async fn compact_listed_works(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT compact_listed_works()").execute(pool).await?;
    Ok(())
}

pub async fn instance_totals(pool: &PgPool) -> Result<InstanceTotals, DbError> {
    let totals = sqlx::query_as(
        "SELECT
            (SELECT COALESCE(sum(works), 0)::BIGINT FROM listed_works_deltas) AS total_works,
            count(*) AS total_videos,
            -- numeric sum, clamped: peers' sizes are not ours to trust with an overflow
            LEAST(COALESCE(sum(file_size), 0), 9223372036854775807)::BIGINT AS total_storage
         FROM videos WHERE removed_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(totals)
}

/// Entries of the listing between two remembered keys. A page is found by seeking to the
/// nearest remembered key before it and stepping over at most this many entries.
const LISTING_STRIDE: i64 = 100;

/// Every `LISTING_STRIDE`-th key of the listing (title, id), as of one state of the
/// listed-works deltas. Titles never change and ids are fixed, so the listing's order can
/// only change when a work joins or leaves it, and each such statement writes a delta row:
/// the deltas' (highest id, row count) names a state of the listing.
struct ListingKeys {
    version: (i64, i64),
    /// `keys[k]` is the key at position `(k + 1) * LISTING_STRIDE - 1` (from 0).
    keys: Vec<(String, i64)>,
}

/// What every page of the listing starts from, read in one statement: the sync cursor
/// (read before the page's rows, see `sync_cursor`), the listed-works total and the
/// deltas' state naming the listing's order.
#[derive(Clone, Copy, Debug)]
struct ListingHead {
    cursor: DateTime<Utc>,
    total: i64,
    version: (i64, i64),
}

/// The remembered keys of the works listing, shared by one process's requests: deep pages
/// then cost a seek and a short step instead of an OFFSET over every earlier work. Also
/// the listing's head, reused while the catalog's version (`hot::HotRows`) stays the same.
#[derive(Default)]
pub struct ListingCache {
    keys: tokio::sync::Mutex<Option<std::sync::Arc<ListingKeys>>>,
    head: std::sync::Mutex<Option<KeptHead>>,
}

/// A head, the catalog version it was read at, and when.
#[derive(Clone, Copy)]
struct KeptHead {
    catalog: u64,
    read_at: std::time::Instant,
    head: ListingHead,
}

/// How long a head is reused at most, whatever the version says: a bound on a stale total
/// should an announcement be lost without the listening connection noticing.
const HEAD_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// One page of the works listing.
#[derive(Clone, Debug)]
pub struct ListedPage {
    pub works: Vec<WorkWithVideos>,
    /// Every listed work, on all pages.
    pub total: i64,
    /// Where the next incremental read (`list_changed_works`) may start.
    pub cursor: DateTime<Utc>,
    /// The key (title, id) of the page's last work when the page is full: where the next
    /// page starts (`list_works_after`). `None` on a page that is not full.
    pub next: Option<(String, i64)>,
}

impl ListedPage {
    async fn read(
        pool: &PgPool,
        works: Vec<WorkRow>,
        limit: i64,
        total: i64,
        cursor: DateTime<Utc>,
    ) -> Result<Self, DbError> {
        let full = i64::try_from(works.len()).is_ok_and(|n| n >= limit);
        let next = works.last().filter(|_| full).map(|w| (w.title.clone(), w.id));
        let works = with_videos(pool, works).await?;
        Ok(Self { works, total, cursor, next })
    }
}

impl ListingCache {
    /// The head for the catalog at `catalog` (`None`: unknown, read it), read again after
    /// any change. Reusing a head is safe for its cursor too: a cursor taken earlier only
    /// reaches further back, and a change committed since has moved the version on.
    async fn head(&self, pool: &PgPool, catalog: Option<u64>) -> Result<ListingHead, DbError> {
        let kept = *self.head.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current =
            |k: &KeptHead| Some(k.catalog) == catalog && k.read_at.elapsed() < HEAD_MAX_AGE;
        if let Some(kept) = kept.filter(current) {
            return Ok(kept.head);
        }
        let read_at = std::time::Instant::now();
        let (cursor, total, top, rows) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT ({CURSOR}), COALESCE(sum(works), 0)::BIGINT, COALESCE(max(id), 0), count(*)
             FROM listed_works_deltas"
        )))
        .fetch_one(pool)
        .await?;
        let head = ListingHead { cursor, total, version: (top, rows) };
        if let Some(catalog) = catalog {
            *self.head.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(KeptHead { catalog, read_at, head });
        }
        Ok(head)
    }

    /// Forgets the kept head: the listing's deltas were found in another state than it
    /// says (they were folded together, which announces nothing).
    fn forget_head(&self) {
        *self.head.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The keys for the listing at `version` or later, read again when it changed.
    /// Concurrent requests wait for one reading rather than each making its own. Every
    /// delta, folded ones included, takes a new id from a sequence, so keys read at a
    /// higher top id are newer than `version` and serve its callers too.
    async fn keys(
        &self,
        pool: &PgPool,
        version: (i64, i64),
    ) -> Result<std::sync::Arc<ListingKeys>, DbError> {
        let mut cached = self.keys.lock().await;
        let usable =
            |k: &&std::sync::Arc<ListingKeys>| k.version == version || k.version.0 > version.0;
        if let Some(keys) = cached.as_ref().filter(usable) {
            return Ok(keys.clone());
        }
        // The version is read with the keys, in one snapshot, so that they belong together.
        let rows: Vec<(i64, i64, Option<String>, Option<i64>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "WITH version AS (
                    SELECT COALESCE(max(id), 0) AS top, count(*) AS rows
                    FROM listed_works_deltas
                 ), keys AS (
                    SELECT title, id FROM (
                        SELECT w.title, w.id, row_number() OVER (ORDER BY w.title, w.id) AS n
                        FROM works w WHERE {PRESENT_WORK}) numbered
                    WHERE n % {LISTING_STRIDE} = 0
                 )
                 SELECT v.top, v.rows, k.title, k.id
                 FROM version v LEFT JOIN keys k ON true
                 ORDER BY k.title, k.id"
            )))
            .fetch_all(pool)
            .await?;
        let version = rows.first().map_or(version, |r| (r.0, r.1));
        let keys = rows.into_iter().filter_map(|r| Some((r.2?, r.3?))).collect();
        let keys = std::sync::Arc::new(ListingKeys { version, keys });
        *cached = Some(keys.clone());
        Ok(keys)
    }
}

/// One page of works ordered by title (then id, so pages never overlap), with the total.
pub async fn list_works(
    pool: &PgPool,
    cache: &ListingCache,
    page: PageRequest,
) -> Result<(Vec<WorkWithVideos>, i64), DbError> {
    let listed = list_works_at(pool, cache, None, page).await?;
    Ok((listed.works, listed.total))
}

/// One page of works, as `list_works`, with the cursor of the next incremental read.
/// `catalog` is the catalog's version as this process knows it (`HotRows::catalog_version`):
/// what the listing's pages share is read once per version instead of once per page.
pub async fn list_works_at(
    pool: &PgPool,
    cache: &ListingCache,
    catalog: Option<u64>,
    page: PageRequest,
) -> Result<ListedPage, DbError> {
    let ListingHead { cursor, total, version: (top, rows) } = cache.head(pool, catalog).await?;

    // A page at or past the end has no works; no need to look for them.
    let works: Vec<WorkRow> = if page.offset() >= total {
        Vec::new()
    } else if page.offset() < LISTING_STRIDE {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{WORK_SELECT}
             FROM (SELECT w.id FROM works w WHERE {PRESENT_WORK}
                   ORDER BY w.title, w.id LIMIT $1 OFFSET $2) page
             JOIN works w ON w.id = page.id
             ORDER BY w.title, w.id"
        )))
        .bind(page.limit())
        .bind(page.offset())
        .fetch_all(pool)
        .await?
    } else {
        // The page's ids come from the partial index alone (an index-only scan of
        // `works_listed_idx` from the remembered key); only the page's rows are read from
        // the table. A listing that changes between the two reads shifts the page by what
        // changed, as an OFFSET would.
        let keys = cache.keys(pool, (top, rows)).await?;
        if keys.version.0 > top {
            // Otherwise every deep page would read the keys again until the next change.
            cache.forget_head();
        }
        let k = usize::try_from(page.offset() / LISTING_STRIDE).unwrap_or(usize::MAX);
        match keys.keys.get(k - 1) {
            Some((title, id)) => {
                let step = page.offset() - i64::try_from(k).unwrap_or(0) * LISTING_STRIDE;
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{WORK_SELECT}
                     FROM (SELECT w.id FROM works w
                           WHERE {PRESENT_WORK} AND (w.title, w.id) > ($3, $4)
                           ORDER BY w.title, w.id LIMIT $1 OFFSET $2) page
                     JOIN works w ON w.id = page.id
                     ORDER BY w.title, w.id"
                )))
                .bind(page.limit())
                .bind(step)
                .bind(title)
                .bind(id)
                .fetch_all(pool)
                .await?
            }
            // The listing shrank since the total was read.
            None => Vec::new(),
        }
    };

    ListedPage::read(pool, works, page.limit(), total, cursor).await
}

/// The works listed after the work whose key (title, id) is `after`, as many as `page`
/// holds (its number plays no part), with what `list_works_at` reports. Reading a listing
/// this way, each page after the last work of the one before, sees every work listed
/// throughout the reading exactly once, whatever joins or leaves it meanwhile (titles
/// never change).
pub async fn list_works_after(
    pool: &PgPool,
    cache: &ListingCache,
    catalog: Option<u64>,
    after: (&str, i64),
    page: PageRequest,
) -> Result<ListedPage, DbError> {
    let ListingHead { cursor, total, .. } = cache.head(pool, catalog).await?;
    let works: Vec<WorkRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{WORK_SELECT}
         FROM (SELECT w.id FROM works w
               WHERE {PRESENT_WORK} AND (w.title, w.id) > ($2, $3)
               ORDER BY w.title, w.id LIMIT $1) page
         JOIN works w ON w.id = page.id
         ORDER BY w.title, w.id"
    )))
    .bind(page.limit())
    .bind(after.0)
    .bind(after.1)
    .fetch_all(pool)
    .await?;
    ListedPage::read(pool, works, page.limit(), total, cursor).await
}

const WORK_SELECT: &str = "SELECT w.id, w.title, w.year, w.description, w.director, w.rating,
    w.organized, w.created_at, w.updated_at";

/// One work with its present videos; a work whose videos are all gone is not found.
pub async fn get_work(pool: &PgPool, id: i64) -> Result<WorkWithVideos, DbError> {
    let work: WorkRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT w.id, w.title, w.year, w.description, w.director, w.rating, w.organized,
                w.created_at, w.updated_at
         FROM works w WHERE w.id = $1 AND {PRESENT_WORK}"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)?;
    let videos =
        videos_of_works(pool, std::slice::from_ref(&work)).await?.remove(&id).unwrap_or_default();
    Ok(WorkWithVideos { work, videos })
}

/// The present videos of `works`, by work. The works' titles travel with their ids, so
/// that no video has to look its work up again.
async fn videos_of_works(
    pool: &PgPool,
    works: &[WorkRow],
) -> Result<HashMap<i64, Vec<VideoRow>>, DbError> {
    if works.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<i64> = works.iter().map(|w| w.id).collect();
    let titles: Vec<&str> = works.iter().map(|w| w.title.as_str()).collect();
    let rows: Vec<VideoRow> = sqlx::query_as(concat!(
        video_select!("unnest($1::BIGINT[], $2::TEXT[]) AS w (id, title)"),
        " WHERE v.removed_at IS NULL ORDER BY v.id"
    ))
    .bind(&ids)
    .bind(&titles)
    .fetch_all(pool)
    .await?;
    let mut by_work: HashMap<i64, Vec<VideoRow>> = HashMap::new();
    for row in rows {
        by_work.entry(row.work_id).or_default().push(row);
    }
    Ok(by_work)
}

/// A present video.
pub async fn get_video(pool: &PgPool, id: i64) -> Result<VideoRow, DbError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIDEO_SELECT} WHERE v.id = $1 AND v.removed_at IS NULL"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)
}

/// Escapes LIKE's wildcards so that `%` and `_` in a query match themselves.
fn like_pattern(query: &str) -> String {
    let mut escaped = String::with_capacity(query.len() + 2);
    escaped.push('%');
    for c in query.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

/// Matches present videos whose work title contains the pattern `$1`.
const SEARCH_MATCH: &str = "v.removed_at IS NULL AND w.title ILIKE $1 ESCAPE '\\'";

/// Present videos whose work title contains the pattern `$1`, as `VIDEO_SELECT` reads
/// them, the works being found first, on their own (see `search_videos`).
const SEARCH_SELECT: &str = concat!(
    "WITH w AS MATERIALIZED (SELECT id, title FROM works WHERE title ILIKE $1 ESCAPE '\\') ",
    video_select!("w"),
    " WHERE v.removed_at IS NULL"
);

/// Present videos whose work title contains `query` (case-insensitive, NFC-normalized).
/// `pool` is best a `planned_once` pool: each statement here has one plan whatever the
/// pattern, chosen below.
pub async fn search_videos(
    pool: &PgPool,
    query: &str,
    page: PageRequest,
) -> Result<(Vec<VideoRow>, i64), DbError> {
    // The pattern is matched through the trigram index on titles (works_title_trgm_idx);
    // queries shorter than three characters have no trigram to look up and read the whole
    // index, which is still cheaper than reading every row.
    let normalized = velour_core::normalize_title(query);
    let pattern = like_pattern(&normalized);
    // Two plans, chosen here rather than by Postgres: it guesses that a pattern matches one
    // title in a hundred whatever the pattern, and for a rare one would walk the title
    // index in order, filtering all 100,000 works of the federation benchmark to fill a
    // page (60-850 ms instead of 1 ms). So a pattern of three characters or more, which
    // has trigrams, finds its works through the trigram index first and sorts only those.
    // A shorter one has no trigram to look up and usually matches many titles: walking
    // the titles in order stops after a page.
    // TODO(#5): a common pattern of three characters or more (`the`) sorts every work it
    // matches: 87 ms against 31 ms for the ordered walk on 100,000 works.
    let sql = if normalized.chars().count() >= 3 {
        format!("{SEARCH_SELECT} ORDER BY w.title, v.id LIMIT $2 OFFSET $3")
    } else {
        format!("{VIDEO_SELECT} WHERE {SEARCH_MATCH} ORDER BY w.title, v.id LIMIT $2 OFFSET $3")
    };
    let rows: Vec<VideoRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&pattern)
        .bind(page.limit())
        .bind(page.offset())
        .fetch_all(pool)
        .await?;

    // A page that is not full, and not past the end, ends the results: its total needs
    // no second pass over the index (most searches fit in one page).
    let fetched = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    if fetched < page.limit() && (fetched > 0 || page.offset() == 0) {
        return Ok((rows, page.offset() + fetched));
    }
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM videos v JOIN works w ON w.id = v.work_id WHERE {SEARCH_MATCH}"
    )))
    .bind(&pattern)
    .fetch_one(pool)
    .await?;
    Ok((rows, total))
}

/// The plan Postgres picks for a search's page query, as `EXPLAIN` prints it: for tests
/// and for operators checking that the trigram index is used.
pub async fn explain_search(pool: &PgPool, query: &str) -> Result<String, DbError> {
    use sqlx::Connection;
    let pattern = like_pattern(&velour_core::normalize_title(query));
    // Prepared and run by name, as the search's own statement is, so that the plan shown
    // is the one the session would use: on a `planned_once` session, the generic plan.
    // The connection leaves the pool and is closed after, prepared statement and all.
    let mut conn = pool.acquire().await?.detach();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE velour_explain_search(TEXT, BIGINT, BIGINT) AS
         {SEARCH_SELECT} ORDER BY w.title, v.id LIMIT $2 OFFSET $3"
    )))
    .execute(&mut conn)
    .await?;
    // EXECUTE's arguments take no bound parameters: the pattern goes in as a literal that
    // Postgres itself quoted.
    let literal: String =
        sqlx::query_scalar("SELECT quote_literal($1)").bind(&pattern).fetch_one(&mut conn).await?;
    let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE velour_explain_search({literal}, 50, 0)"
    )))
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    Ok(lines.join("\n"))
}

/// The cursor a listing hands out for the next incremental read: every change made after
/// it has `updated_at`/`removed_at` at or after it.
///
/// Why not simply `now()`: rows are stamped with their transaction's start time, and a
/// transaction that started before this read but commits after it would carry a stamp
/// older than `now()` and be skipped forever. So the cursor is the start of the oldest
/// transaction still open in this database (which includes any that may still write),
/// minus a small overlap (autovacuum and other background workers, which write no catalog
/// rows, are left out). Timestamps all come from this server's clock, never a peer's, so
/// peers' clock skew does not matter. Call it *before* reading the rows it covers.
///
/// Requires that every Velour process uses the same database role: `pg_stat_activity`
/// hides other roles' transaction start times from roles without `pg_read_all_stats`.
pub async fn sync_cursor(pool: &PgPool) -> Result<DateTime<Utc>, DbError> {
    let cursor =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {CURSOR}"))).fetch_one(pool).await?;
    Ok(cursor)
}

/// The expression `sync_cursor` reads. It reaches back a second before the oldest open
/// transaction: a transaction's entry in `pg_stat_activity` is published a moment after
/// its start time is taken, and the server's clock may be slewed by NTP; a second of
/// overlap covers both. Re-sending a
/// few rows is harmless: peers apply changes idempotently.
const CURSOR: &str = "LEAST(now(), COALESCE(
        (SELECT min(xact_start) FROM pg_stat_activity
         WHERE datname = current_database() AND xact_start IS NOT NULL
           AND backend_type = 'client backend'),
        now())) - interval '1 second'";

/// Works changed at or after `since` (the work itself, or any of its videos), as
/// `list_works` shows them, with their total. Works left without present videos are not
/// here: they are tombstones.
pub async fn list_changed_works(
    pool: &PgPool,
    since: DateTime<Utc>,
    page: PageRequest,
) -> Result<(Vec<WorkWithVideos>, i64), DbError> {
    const CHANGED: &str = "WITH changed AS (
            SELECT id FROM works WHERE updated_at >= $1
            UNION SELECT work_id FROM videos WHERE updated_at >= $1)";
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "{CHANGED} SELECT count(*) FROM works w JOIN changed c ON c.id = w.id
         WHERE {PRESENT_WORK}"
    )))
    .bind(since)
    .fetch_one(pool)
    .await?;

    let works: Vec<WorkRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CHANGED} SELECT w.id, w.title, w.year, w.description, w.director, w.rating,
                w.organized, w.created_at, w.updated_at
         FROM works w JOIN changed c ON c.id = w.id WHERE {PRESENT_WORK}
         ORDER BY w.title, w.id LIMIT $2 OFFSET $3"
    )))
    .bind(since)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(pool)
    .await?;
    with_videos(pool, works).await.map(|listed| (listed, total))
}

/// A video or work that left the listing.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Tombstone {
    /// `video` or `work`.
    pub kind: String,
    pub id: i64,
    /// The work a removed video belonged to; `None` for a work.
    pub work_id: Option<i64>,
    pub removed_at: DateTime<Utc>,
}

/// Videos removed at or after `since`, and works whose last present video went then, one
/// page of them (same page size as the works), with their total.
pub async fn list_tombstones(
    pool: &PgPool,
    since: DateTime<Utc>,
    page: PageRequest,
) -> Result<(Vec<Tombstone>, i64), DbError> {
    // Videos marked removed, and rows deleted outright (kept by a trigger in
    // `deleted_videos`); a work is gone when none of its videos is present any more.
    const TOMBSTONES: &str = "WITH gone AS (
            SELECT id, work_id, removed_at FROM videos WHERE removed_at >= $1
            UNION ALL
            SELECT id, work_id, removed_at FROM deleted_videos WHERE removed_at >= $1
         ), tombstones AS (
            SELECT 'video' AS kind, id, work_id, removed_at FROM gone
            UNION ALL
            SELECT 'work', g.work_id, NULL, max(g.removed_at) FROM gone g
            WHERE NOT EXISTS (SELECT 1 FROM videos p
                              WHERE p.work_id = g.work_id AND p.removed_at IS NULL)
            GROUP BY g.work_id)";
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "{TOMBSTONES} SELECT count(*) FROM tombstones"
    )))
    .bind(since)
    .fetch_one(pool)
    .await?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{TOMBSTONES} SELECT kind, id, work_id, removed_at FROM tombstones
         ORDER BY kind, id LIMIT $2 OFFSET $3"
    )))
    .bind(since)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(pool)
    .await?;
    Ok((rows, total))
}

async fn with_videos(pool: &PgPool, works: Vec<WorkRow>) -> Result<Vec<WorkWithVideos>, DbError> {
    let mut videos = videos_of_works(pool, &works).await?;
    Ok(works
        .into_iter()
        .map(|work| {
            let videos = videos.remove(&work.id).unwrap_or_default();
            WorkWithVideos { work, videos }
        })
        .collect())
}

/// Other present videos with the same content as `video` (same size and oshash), at most
/// `limit`: local and bucket copies first, then peers. Empty when `video` has no
/// fingerprint.
pub async fn other_sources(
    pool: &PgPool,
    video: &VideoRow,
    limit: i64,
) -> Result<Vec<VideoRow>, DbError> {
    let Some(oshash) = video.fingerprints.0.get("oshash").and_then(Value::as_str) else {
        return Ok(Vec::new());
    };
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIDEO_SELECT}
         WHERE v.removed_at IS NULL AND v.id <> $1 AND v.file_size = $2
           AND v.fingerprints->>'oshash' = $3
         ORDER BY l.storage_type = 'velour', v.id
         LIMIT $4"
    )))
    .bind(video.id)
    .bind(video.file_size)
    .bind(oshash)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_match_themselves() {
        assert_eq!(like_pattern("100%"), "%100\\%%");
        assert_eq!(like_pattern("a_b"), "%a\\_b%");
        assert_eq!(like_pattern("c:\\x"), "%c:\\\\x%");
    }
}
