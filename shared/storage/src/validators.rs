//! Validators of a stored file (`ETag`, `Last-Modified`) and the conditional requests that
//! use them (RFC 9110 §13): a player resuming a download sends `If-Range`, a browser
//! revalidating its cache sends `If-None-Match` or `If-Modified-Since`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What identifies one version of a file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validators {
    etag: String,
    /// Whole seconds, the precision of an HTTP-date.
    last_modified: SystemTime,
}

impl Validators {
    /// Validators from a file's size and modification time. The tag is strong in
    /// practice: a rewrite that keeps both the size and the nanosecond mtime is the only
    /// change it misses.
    pub fn for_file(size: u64, modified: SystemTime) -> Self {
        let since_epoch = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
        let etag = format!("\"{size:x}-{:x}\"", since_epoch.as_nanos());
        let last_modified = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
        Self { etag, last_modified }
    }

    /// Validators of content known by a digest (hex or other tag-safe characters) and the
    /// time it was made.
    pub fn for_digest(digest: &str, modified: SystemTime) -> Self {
        let since_epoch = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
        let last_modified = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
        Self { etag: format!("\"{digest}\""), last_modified }
    }

    /// Validators a store reported for an object: its `ETag` as sent (quoted) and its
    /// modification time.
    pub fn from_store(etag: &str, modified: SystemTime) -> Self {
        let since_epoch = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
        let last_modified = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
        Self { etag: etag.to_owned(), last_modified }
    }

    /// The `ETag` value, quoted.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// The `Last-Modified` value, an IMF-fixdate.
    pub fn last_modified(&self) -> String {
        httpdate::fmt_http_date(self.last_modified)
    }

    /// Whether the request's preconditions hold (§13.2.2 steps 1 and 2): `If-Match` lists
    /// the current tag (strong comparison, §13.1.1) or is `*`; without it,
    /// `If-Unmodified-Since` is not before the last modification (§13.1.4; an invalid date
    /// is ignored). A request whose preconditions fail is answered 412.
    pub fn preconditions_hold(
        &self,
        if_match: Option<&str>,
        if_unmodified_since: Option<&str>,
    ) -> bool {
        if let Some(list) = if_match {
            if list.trim() == "*" {
                return true;
            }
            let ours = opaque_tag(&self.etag);
            return entity_tags(list).any(|(weak, tag)| !weak && Some(tag) == ours);
        }
        match if_unmodified_since.map(|date| httpdate::parse_http_date(date.trim())) {
            Some(Ok(since)) => self.last_modified <= since,
            _ => true,
        }
    }

    /// Whether a GET or HEAD is answered 304 Not Modified (§13.2.2 steps 3 and 4).
    /// `If-Modified-Since` counts only when `If-None-Match` is absent (§13.1.3).
    pub fn is_not_modified(
        &self,
        if_none_match: Option<&str>,
        if_modified_since: Option<&str>,
    ) -> bool {
        if let Some(list) = if_none_match {
            // §13.1.2: weak comparison; `*` matches any current representation.
            if list.trim() == "*" {
                return true;
            }
            let ours = opaque_tag(&self.etag);
            return entity_tags(list).any(|(_, tag)| Some(tag) == ours);
        }
        match if_modified_since.map(|date| httpdate::parse_http_date(date.trim())) {
            // An invalid date is ignored (§13.1.3).
            Some(Ok(since)) => self.last_modified <= since,
            _ => false,
        }
    }

    /// Whether a `Range` may be honoured given the request's `If-Range` (§13.1.5): only
    /// if the client's copy is the current one. Otherwise the whole file is sent.
    pub fn range_is_current(&self, if_range: Option<&str>) -> bool {
        let Some(value) = if_range.map(str::trim) else {
            return true;
        };
        if value.starts_with('"') || value.starts_with("W/") {
            // Strong comparison: a weak tag never matches.
            let mut tags = entity_tags(value);
            return match (tags.next(), tags.next()) {
                (Some((false, tag)), None) => Some(tag) == opaque_tag(&self.etag),
                _ => false,
            };
        }
        httpdate::parse_http_date(value).is_ok_and(|date| date == self.last_modified)
    }
}

/// The inside of a strong tag of ours.
fn opaque_tag(etag: &str) -> Option<&str> {
    etag.strip_prefix('"')?.strip_suffix('"')
}

/// The entity tags of a comma-separated list (§8.8.3), as (weak, opaque tag). Commas may
/// appear inside a tag, so the list is read tag by tag; it stops at the first malformed
/// element.
fn entity_tags(list: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let (weak, quoted) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let inner = quoted.strip_prefix('"')?;
        let close = inner.find('"')?;
        let tag = inner.get(..close)?;
        rest = inner.get(close + 1..)?;
        Some((weak, tag))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_compares_strongly_and_if_unmodified_since_only_without_it() {
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = Validators::for_digest("abc", modified);
        let before = httpdate::fmt_http_date(modified - Duration::from_secs(60));
        let after = httpdate::fmt_http_date(modified + Duration::from_secs(60));
        assert!(v.preconditions_hold(None, None));
        assert!(v.preconditions_hold(Some("\"abc\""), None));
        assert!(v.preconditions_hold(Some("\"x\", \"abc\""), None));
        assert!(v.preconditions_hold(Some("*"), None));
        assert!(!v.preconditions_hold(Some("W/\"abc\""), None), "weak tags never match");
        assert!(!v.preconditions_hold(Some("\"old\""), Some(&after)));
        // If-Match decides alone when present.
        assert!(v.preconditions_hold(Some("\"abc\""), Some(&before)));
        assert!(v.preconditions_hold(None, Some(&after)));
        assert!(!v.preconditions_hold(None, Some(&before)));
        assert!(v.preconditions_hold(None, Some("not a date")));
    }

    fn file() -> Validators {
        // 2024-03-01T12:00:00.5Z, 1000 bytes.
        Validators::for_file(1000, UNIX_EPOCH + Duration::from_millis(1_709_294_400_500))
    }

    #[test]
    fn the_etag_changes_with_size_and_mtime() {
        let a = file();
        let b = Validators::for_file(1001, UNIX_EPOCH + Duration::from_millis(1_709_294_400_500));
        let c = Validators::for_file(1000, UNIX_EPOCH + Duration::from_millis(1_709_294_400_501));
        assert!(a.etag().starts_with('"') && a.etag().ends_with('"'));
        assert_ne!(a.etag(), b.etag());
        assert_ne!(a.etag(), c.etag());
    }

    #[test]
    fn last_modified_is_an_imf_fixdate_in_whole_seconds() {
        assert_eq!(file().last_modified(), "Fri, 01 Mar 2024 12:00:00 GMT");
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let v = file();
        let tag = v.etag().to_owned();
        let cases = [
            (tag.clone(), true),
            (format!("W/{tag}"), true),
            (format!("\"other\", {tag}"), true),
            ("\"a,b\", \"c\"".to_owned(), false),
            ("*".to_owned(), true),
            ("\"other\"".to_owned(), false),
            ("garbage".to_owned(), false),
        ];
        for (header, expected) in cases {
            assert_eq!(v.is_not_modified(Some(&header), None), expected, "{header:?}");
        }
    }

    #[test]
    fn if_modified_since_counts_only_without_if_none_match() {
        let v = file();
        let same = "Fri, 01 Mar 2024 12:00:00 GMT";
        let before = "Fri, 01 Mar 2024 11:59:59 GMT";
        assert!(v.is_not_modified(None, Some(same)));
        assert!(v.is_not_modified(None, Some("Sat, 02 Mar 2024 00:00:00 GMT")));
        assert!(!v.is_not_modified(None, Some(before)));
        assert!(!v.is_not_modified(None, Some("yesterday")));
        assert!(!v.is_not_modified(Some("\"other\""), Some(same)));
        assert!(!v.is_not_modified(None, None));
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        let v = file();
        let tag = v.etag().to_owned();
        let cases = [
            (None, true),
            (Some(tag.clone()), true),
            (Some(format!("W/{tag}")), false),
            (Some(format!("{tag}, {tag}")), false),
            (Some("\"other\"".to_owned()), false),
            (Some("Fri, 01 Mar 2024 12:00:00 GMT".to_owned()), true),
            (Some("Fri, 01 Mar 2024 12:00:01 GMT".to_owned()), false),
            (Some("not a date".to_owned()), false),
        ];
        for (header, expected) in cases {
            assert_eq!(v.range_is_current(header.as_deref()), expected, "{header:?}");
        }
    }
}
