//! Rendered pages of the works listing, kept while the catalog stays as it was.
//!
//! Peers walk the listing page by page on every full scan, several peers walk the same
//! pages, and nothing in a page changes until a work or video does. Reading a page costs
//! two queries, decoding a hundred and fifty rows and writing out the JSON; answering it
//! again from memory costs a lookup. A page is kept under the catalog version it was read
//! at (`HotRows::catalog_version`, taken *before* the rows were read), so a change
//! committed during the read leaves the page under a version nobody asks for again, and
//! a change announced later moves every request to a new key. While the process is not
//! listening for announcements there is no version and nothing is kept or answered.
//!
//! The memory is bounded in bytes (`VELOUR_CATALOG_CACHE_MIB`): pages are weighed by their
//! length, and the least useful go first when the budget is full.

use crate::catalog::MetadataAccess;
use bytes::Bytes;
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use velour_db::PageRequest;

/// How long a page is kept even without a change announced: the same bound on a lost
/// notification as the stream services' kept rows.
const TIME_TO_LIVE: Duration = Duration::from_secs(60);

/// What a kept page costs beside its body and the title in its key: moka's entry, the
/// key, the `Bytes` (a generous round figure). Without it, many tiny pages asked for
/// after long titles would hold far more memory than the budget says.
const ENTRY_OVERHEAD: usize = 256;

/// Which page, as whom, at which state of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    catalog: u64,
    page: u32,
    per_page: u32,
    /// The work the page starts after (`after`), when it was asked for by key.
    after: Option<(String, i64)>,
    access: MetadataAccess,
}

impl PageKey {
    pub fn new(
        catalog: u64,
        page: PageRequest,
        after: Option<(String, i64)>,
        access: MetadataAccess,
    ) -> Self {
        Self { catalog, page: page.page(), per_page: page.per_page(), after, access }
    }
}

/// The kept pages of one gateway process; cheap to clone.
#[derive(Clone)]
pub struct PageCache {
    /// `None` when the budget is zero: nothing is kept.
    pages: Option<Cache<PageKey, Bytes>>,
    /// The newest catalog version seen: pages of older versions can never be asked for
    /// again, and are thrown away when it moves rather than left to age out.
    newest: std::sync::Arc<AtomicU64>,
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.pages.as_ref().map_or(0, Cache::weighted_size);
        f.debug_struct("PageCache").field("bytes", &bytes).finish()
    }
}

impl PageCache {
    /// Keeps up to `budget_bytes` of rendered pages; 0 keeps none.
    pub fn new(budget_bytes: u64) -> Self {
        let pages = (budget_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(budget_bytes)
                .weigher(|key: &PageKey, body: &Bytes| {
                    let title = key.after.as_ref().map_or(0, |(title, _)| title.len());
                    u32::try_from(ENTRY_OVERHEAD + title + body.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(TIME_TO_LIVE)
                .build()
        });
        Self { pages, newest: Default::default() }
    }

    pub fn get(&self, key: &PageKey) -> Option<Bytes> {
        let pages = self.pages.as_ref()?;
        self.saw(pages, key.catalog);
        pages.get(key)
    }

    pub fn insert(&self, key: PageKey, body: Bytes) {
        let Some(pages) = self.pages.as_ref() else { return };
        if self.saw(pages, key.catalog) {
            pages.insert(key, body);
        }
    }

    /// Notes that `catalog` was seen, throwing every page away when it is newer than the
    /// newest so far; false when it is older (a page read at it is already stale).
    fn saw(&self, pages: &Cache<PageKey, Bytes>, catalog: u64) -> bool {
        let previous = self.newest.fetch_max(catalog, Ordering::AcqRel);
        if catalog > previous {
            pages.invalidate_all();
        }
        catalog >= previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(catalog: u64, page: u32) -> PageKey {
        let page = PageRequest::new(Some(i64::from(page)), Some(50)).expect("valid page");
        PageKey::new(catalog, page, None, MetadataAccess::Shown)
    }

    #[test]
    fn a_page_is_answered_only_at_the_version_it_was_read_at_and_as_the_same_caller() {
        let cache = PageCache::new(1 << 20);
        cache.insert(key(3, 1), Bytes::from_static(b"[1]"));
        assert_eq!(cache.get(&key(3, 1)).as_deref(), Some(&b"[1]"[..]));
        assert_eq!(cache.get(&key(3, 2)), None);
        let withheld = PageKey { access: MetadataAccess::Withheld, ..key(3, 1) };
        assert_eq!(cache.get(&withheld), None);
        let by_key = PageKey { after: Some(("Film".into(), 7)), ..key(3, 1) };
        assert_eq!(cache.get(&by_key), None);

        // A newer version throws the old pages away; a page read at an older version
        // than one already seen is not kept.
        assert_eq!(cache.get(&key(4, 1)), None);
        cache.insert(key(3, 2), Bytes::from_static(b"[2]"));
        assert_eq!(cache.get(&key(3, 2)), None);
        cache.insert(key(4, 2), Bytes::from_static(b"[4]"));
        assert_eq!(cache.get(&key(4, 2)).as_deref(), Some(&b"[4]"[..]));
    }

    #[test]
    fn the_budget_bounds_the_bytes_kept_and_zero_keeps_nothing() {
        let cache = PageCache::new(10_000);
        for page in 1..=100 {
            cache.insert(key(1, page), Bytes::from(vec![b' '; 1_000]));
        }
        // Empty pages after long titles weigh their keys too.
        for id in 1..=100 {
            let after = Some(("t".repeat(2_000), id));
            cache.insert(PageKey { after, ..key(1, 1) }, Bytes::from_static(b"[]"));
        }
        let pages = cache.pages.as_ref().expect("a budget keeps pages");
        pages.run_pending_tasks();
        assert!(pages.weighted_size() <= 10_000, "kept {} bytes", pages.weighted_size());
        assert!(pages.entry_count() <= 10, "kept {} pages", pages.entry_count());
        assert!(pages.entry_count() > 0);

        let none = PageCache::new(0);
        none.insert(key(1, 1), Bytes::from_static(b"[]"));
        assert_eq!(none.get(&key(1, 1)), None);
    }
}
