//! Byte ranges (RFC 9110 §14): the `Range` a client sends, the span of a representation it
//! resolves to, and the `Content-Range` that describes a partial answer.
//!
//! Positions are `u64` throughout and no arithmetic here can overflow: numbers too long for
//! a `u64` saturate, which keeps their meaning (a last position past any file is clamped,
//! a first position past any file is unsatisfiable).

use std::fmt;

/// One range of bytes a client asked for, parsed from a `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last`: both positions inclusive, `first <= last`.
    Closed { first: u64, last: u64 },
    /// `bytes=first-`: from `first` to the end.
    From { first: u64 },
    /// `bytes=-length`: the last `length` bytes.
    Suffix { length: u64 },
}

/// The inclusive span of a representation that a range selects, never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedRange {
    /// First byte sent.
    pub start: u64,
    /// Last byte sent (inclusive), `start <= end < size`.
    pub end: u64,
}

/// No byte of the representation lies within the range: the answer is 416.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the range selects no byte of the representation")]
pub struct Unsatisfiable;

impl ByteRange {
    /// Parses a `Range` header value holding one range. `None` means the header is to be
    /// ignored and the whole representation sent (RFC 9110 §14.2 lets a server ignore
    /// `Range`): an unknown unit, a malformed or invalid range (`last < first`), or
    /// several ranges (see [`RangeSet`] for those).
    pub fn parse(header: &str) -> Option<Self> {
        let (unit, set) = header.trim().split_once('=')?;
        // §14.1: range units are compared case-insensitively.
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        // §5.6.1: a list may contain empty elements, which do not count.
        let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
        let spec = specs.next()?;
        if specs.next().is_some() {
            // Several ranges are a `RangeSet`; this is for callers that take one only.
            return None;
        }
        Self::parse_spec(spec)
    }

    /// One `range-spec` (§14.1.1): `int-range` or `suffix-range`.
    fn parse_spec(spec: &str) -> Option<Self> {
        let (first, last) = spec.split_once('-')?;
        match (first.is_empty(), last.is_empty()) {
            (true, true) => None,
            (true, false) => Some(Self::Suffix { length: parse_digits(last)? }),
            (false, true) => Some(Self::From { first: parse_digits(first)? }),
            (false, false) => {
                let first = parse_digits(first)?;
                let last = parse_digits(last)?;
                // §14.1.1: a range whose last position is before its first is invalid,
                // and an invalid range set makes the whole header ignored.
                (first <= last).then_some(Self::Closed { first, last })
            }
        }
    }

    /// The bytes this range selects from a representation of `size` bytes (§14.1.1).
    ///
    /// `Ok(None)` means there is no partial answer to give and the whole (empty)
    /// representation is sent: a suffix range of an empty file is satisfiable but selects
    /// nothing, and `Content-Range` cannot describe an empty span.
    pub fn resolve(self, size: u64) -> Result<Option<ResolvedRange>, Unsatisfiable> {
        match self {
            Self::Closed { first, last } => {
                if first >= size {
                    return Err(Unsatisfiable);
                }
                // A last position at or past the end means "to the end".
                Ok(Some(ResolvedRange { start: first, end: last.min(size - 1) }))
            }
            Self::From { first } => {
                if first >= size {
                    return Err(Unsatisfiable);
                }
                Ok(Some(ResolvedRange { start: first, end: size - 1 }))
            }
            Self::Suffix { length: 0 } => Err(Unsatisfiable),
            Self::Suffix { .. } if size == 0 => Ok(None),
            // A suffix longer than the representation selects all of it.
            Self::Suffix { length } => {
                Ok(Some(ResolvedRange { start: size.saturating_sub(length), end: size - 1 }))
            }
        }
    }

    /// Whether a peer's 206 answers this range: a well-formed span that starts where we
    /// asked and ends no later than we asked. A server may send less than asked (§14.2),
    /// never something else.
    pub fn is_answered_by(self, answer: ContentRange) -> bool {
        if answer.complete_length.is_some_and(|size| answer.last >= size) {
            return false;
        }
        match (self, answer.complete_length) {
            (Self::Closed { first, last }, _) => answer.first == first && answer.last <= last,
            (Self::From { first }, _) => answer.first == first,
            (Self::Suffix { .. }, Some(size)) => match self.resolve(size) {
                Ok(Some(wanted)) => answer.first == wanted.start,
                _ => false,
            },
            // Without the size we cannot tell where the suffix starts; it must at least
            // not be longer than asked.
            (Self::Suffix { length }, None) => answer.last - answer.first < length,
        }
    }
}

/// The most range specs a `Range` header may hold before it is ignored as a whole
/// (§14.2 lets a server ignore a range set it finds abusive). Parsing and resolving a
/// header therefore costs at most this many steps, however long the header is.
pub const MAX_RANGE_SPECS: usize = 64;

/// The most parts a `multipart/byteranges` answer carries. A set that still has more
/// after merging is answered as one part spanning them all: a request of thousands of
/// tiny ranges then costs what one range does (one seek, one stream).
pub const MAX_PARTS: usize = 16;

/// Every range of a `Range` header, in the order the client listed them: 1 to
/// [`MAX_RANGE_SPECS`] of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(Vec<ByteRange>);

/// What to send for a range set, once the representation's size is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangePlan {
    /// 200 with the whole representation (a suffix range of an empty one).
    Full,
    /// 206 with one part and its `Content-Range`.
    Single(ResolvedRange),
    /// 206 `multipart/byteranges`: 2 to [`MAX_PARTS`] disjoint, non-adjacent parts, in
    /// the order the client asked for them.
    Multipart(Vec<ResolvedRange>),
}

impl RangeSet {
    /// Parses a `Range` header value; `None` when it is to be ignored, as for
    /// [`ByteRange::parse`], or when it holds more than [`MAX_RANGE_SPECS`] ranges. One
    /// invalid range makes the whole set invalid (§14.1.1).
    pub fn parse(header: &str) -> Option<Self> {
        let (unit, set) = header.trim().split_once('=')?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        let mut ranges = Vec::new();
        for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if ranges.len() == MAX_RANGE_SPECS {
                return None;
            }
            ranges.push(ByteRange::parse_spec(spec)?);
        }
        (!ranges.is_empty()).then_some(Self(ranges))
    }

    pub fn ranges(&self) -> &[ByteRange] {
        &self.0
    }

    /// The one range, if the client asked for one only.
    pub fn single(&self) -> Option<ByteRange> {
        match self.0.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// What to send from a representation of `size` bytes.
    ///
    /// Ranges that select nothing are dropped; the set is unsatisfiable only if all are
    /// (§14.1.1). Overlapping and adjacent ranges are merged, which §15.3.7.2 allows and
    /// which keeps a part from repeating bytes. What remains is sent as one part, or as
    /// `multipart/byteranges` in the client's order (§15.3.7.2 asks for that order) when
    /// there are a few; past [`MAX_PARTS`] the parts are coalesced into the one span
    /// covering them all, so the work stays that of a single range whatever was asked.
    pub fn resolve(&self, size: u64) -> Result<RangePlan, Unsatisfiable> {
        // (span, position in the header of the first range it came from)
        let mut spans: Vec<(ResolvedRange, usize)> = Vec::with_capacity(self.0.len());
        for (position, range) in self.0.iter().enumerate() {
            match range.resolve(size) {
                Ok(Some(span)) => spans.push((span, position)),
                // Only a suffix of an empty representation: nothing to describe.
                Ok(None) => return Ok(RangePlan::Full),
                Err(Unsatisfiable) => {}
            }
        }
        if spans.is_empty() {
            return Err(Unsatisfiable);
        }

        spans.sort_unstable_by_key(|(span, _)| span.start);
        let mut merged: Vec<(ResolvedRange, usize)> = Vec::with_capacity(spans.len());
        for (span, position) in spans {
            match merged.last_mut() {
                // `end < size <= u64::MAX`, so `end + 1` cannot overflow.
                Some((last, first_position)) if span.start <= last.end + 1 => {
                    last.end = last.end.max(span.end);
                    *first_position = (*first_position).min(position);
                }
                _ => merged.push((span, position)),
            }
        }

        match merged.as_slice() {
            [(one, _)] => Ok(RangePlan::Single(*one)),
            [(first, _), .., (last, _)] if merged.len() > MAX_PARTS => {
                Ok(RangePlan::Single(ResolvedRange { start: first.start, end: last.end }))
            }
            _ => {
                merged.sort_unstable_by_key(|(_, position)| *position);
                Ok(RangePlan::Multipart(merged.into_iter().map(|(span, _)| span).collect()))
            }
        }
    }

    /// Whether a peer's single-part 206 answers this set: for one range, as
    /// [`ByteRange::is_answered_by`]; for several, a span within the one covering them
    /// all (a server may coalesce), which needs the size to tell.
    pub fn is_answered_by(&self, answer: ContentRange) -> bool {
        if let Some(one) = self.single() {
            return one.is_answered_by(answer);
        }
        let Some(size) = answer.complete_length else {
            return false;
        };
        if answer.last >= size {
            return false;
        }
        let spans = self.0.iter().filter_map(|r| r.resolve(size).ok().flatten());
        let covering = spans.fold(None, |acc: Option<(u64, u64)>, span| match acc {
            None => Some((span.start, span.end)),
            Some((start, end)) => Some((start.min(span.start), end.max(span.end))),
        });
        covering.is_some_and(|(start, end)| answer.first >= start && answer.last <= end)
    }
}

/// The canonical header value, as forwarded to a peer.
impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes=")?;
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            range.fmt_spec(f)?;
        }
        Ok(())
    }
}

impl ByteRange {
    /// The `range-spec` alone, without the unit.
    fn fmt_spec(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed { first, last } => write!(f, "{first}-{last}"),
            Self::From { first } => write!(f, "{first}-"),
            Self::Suffix { length } => write!(f, "-{length}"),
        }
    }
}

/// The canonical header value, as forwarded to a peer.
impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes=")?;
        self.fmt_spec(f)
    }
}

impl ResolvedRange {
    /// Bytes in the span; at least 1.
    pub fn len(self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a resolved range holds at least one byte.
    pub fn is_empty(self) -> bool {
        false
    }

    /// `Content-Range` of a 206 (§14.4): `bytes start-end/size`.
    pub fn content_range(self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end)
    }
}

/// `Content-Range` of a 416 (§14.4): `bytes */size`.
pub fn unsatisfied_content_range(size: u64) -> String {
    format!("bytes */{size}")
}

/// A `Content-Range` describing a partial answer: `bytes first-last/size` or
/// `bytes first-last/*` (§14.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    /// The whole representation's size, when the sender knows it.
    pub complete_length: Option<u64>,
}

impl ContentRange {
    /// `None` for anything but a well-formed byte span with `first <= last`, including
    /// the unsatisfied form `bytes */size`.
    pub fn parse(value: &str) -> Option<Self> {
        let (unit, rest) = value.trim().split_once(' ')?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        let (span, complete) = rest.trim_start().split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let first = parse_exact(first)?;
        let last = parse_exact(last)?;
        let complete_length = match complete {
            "*" => None,
            digits => Some(parse_exact(digits)?),
        };
        (first <= last).then_some(Self { first, last, complete_length })
    }
}

/// `1*DIGIT` as a `u64`, saturating: the caller's rules give a huge position its meaning.
/// `u64::from_str` alone would also accept a leading `+`.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// `1*DIGIT` that must fit: a peer describing bytes past `u64::MAX` is not believed.
fn parse_exact(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(first: u64, last: u64) -> Option<ByteRange> {
        Some(ByteRange::Closed { first, last })
    }

    fn span(start: u64, end: u64) -> Result<Option<ResolvedRange>, Unsatisfiable> {
        Ok(Some(ResolvedRange { start, end }))
    }

    #[test]
    fn well_formed_single_ranges_parse() {
        let cases = [
            ("bytes=0-499", closed(0, 499)),
            ("bytes=500-999", closed(500, 999)),
            ("bytes=7-7", closed(7, 7)),
            ("bytes=9500-", Some(ByteRange::From { first: 9500 })),
            ("bytes=-500", Some(ByteRange::Suffix { length: 500 })),
            ("bytes=-0", Some(ByteRange::Suffix { length: 0 })),
            ("Bytes=0-1", closed(0, 1)),
            ("  bytes=0-1  ", closed(0, 1)),
            ("bytes= 0-1 ", closed(0, 1)),
            ("bytes=0-1,", closed(0, 1)),
            ("bytes=, 0-1", closed(0, 1)),
        ];
        for (header, expected) in cases {
            assert_eq!(ByteRange::parse(header), expected, "{header:?}");
        }
    }

    #[test]
    fn malformed_or_foreign_headers_are_ignored() {
        let cases = [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=,",
            "bytes=a-b",
            "bytes=1-a",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "bytes=1--2",
            "bytes=1-2-3",
            "bytes=0x10-",
            "bytes 0-1",
            "bits=0-1",
            "items=0-1",
            "bytes=5-4",
        ];
        for header in cases {
            assert_eq!(ByteRange::parse(header), None, "{header:?}");
        }
    }

    #[test]
    fn several_ranges_are_not_one_byte_range() {
        assert_eq!(ByteRange::parse("bytes=0-1,5-9"), None);
        assert_eq!(ByteRange::parse("bytes=0-1, -5"), None);
    }

    fn plan(header: &str, size: u64) -> Result<RangePlan, Unsatisfiable> {
        RangeSet::parse(header).unwrap_or_else(|| panic!("{header:?} did not parse")).resolve(size)
    }

    fn spans(list: &[(u64, u64)]) -> Vec<ResolvedRange> {
        list.iter().map(|&(start, end)| ResolvedRange { start, end }).collect()
    }

    #[test]
    fn range_sets_parse_every_spec_or_none() {
        let set = RangeSet::parse("bytes=0-1, 5-, -3,").unwrap();
        assert_eq!(
            set.ranges(),
            [
                ByteRange::Closed { first: 0, last: 1 },
                ByteRange::From { first: 5 },
                ByteRange::Suffix { length: 3 }
            ]
        );
        assert_eq!(set.to_string(), "bytes=0-1,5-,-3");
        assert_eq!(set.single(), None);
        assert_eq!(RangeSet::parse("bytes=4-9").unwrap().single(), closed(4, 9));
        for ignored in ["bytes=0-1,5-4", "bytes=0-1,x", "items=0-1,2-3", "bytes=,", "bytes"] {
            assert_eq!(RangeSet::parse(ignored), None, "{ignored:?}");
        }
    }

    #[test]
    fn more_specs_than_the_limit_are_ignored_without_reading_them_all() {
        let at_limit = vec!["0-0"; MAX_RANGE_SPECS].join(",");
        assert!(RangeSet::parse(&format!("bytes={at_limit}")).is_some());
        let over = vec!["0-0"; MAX_RANGE_SPECS + 1].join(",");
        assert_eq!(RangeSet::parse(&format!("bytes={over}")), None);
        // Thousands of specs, the last one malformed: refused by the count, not the parse.
        let huge = format!("bytes={},nonsense", vec!["1-2"; 5000].join(","));
        assert_eq!(RangeSet::parse(&huge), None);
    }

    #[test]
    fn range_sets_resolve_to_the_parts_to_send() {
        let cases = [
            ("bytes=0-9", Ok(RangePlan::Single(spans(&[(0, 9)])[0]))),
            // Overlapping and adjacent ranges merge into one part.
            ("bytes=0-9,5-19", Ok(RangePlan::Single(spans(&[(0, 19)])[0]))),
            ("bytes=10-19,0-9", Ok(RangePlan::Single(spans(&[(0, 19)])[0]))),
            ("bytes=0-0,0-0,0-0", Ok(RangePlan::Single(spans(&[(0, 0)])[0]))),
            // Disjoint ranges are parts, in the order asked.
            ("bytes=50-59,0-9", Ok(RangePlan::Multipart(spans(&[(50, 59), (0, 9)])))),
            ("bytes=0-9,-10", Ok(RangePlan::Multipart(spans(&[(0, 9), (90, 99)])))),
            // A merged part keeps the place of the first range it holds.
            (
                "bytes=80-89,0-4,85-95,40-49",
                Ok(RangePlan::Multipart(spans(&[(80, 95), (0, 4), (40, 49)]))),
            ),
            // Unsatisfiable ranges are dropped, and only all of them make a 416.
            ("bytes=0-9,500-600", Ok(RangePlan::Single(spans(&[(0, 9)])[0]))),
            ("bytes=500-600,-0", Err(Unsatisfiable)),
            ("bytes=0-1,5-9", Ok(RangePlan::Multipart(spans(&[(0, 1), (5, 9)])))),
        ];
        for (header, expected) in cases {
            assert_eq!(plan(header, 100), expected, "{header}");
        }
        assert_eq!(plan("bytes=-5,-6", 0), Ok(RangePlan::Full));
        assert_eq!(plan("bytes=0-5,7-9", 0), Err(Unsatisfiable));
    }

    #[test]
    fn more_parts_than_the_limit_coalesce_into_one_span() {
        // Every other byte: nothing merges, so the parts would be MAX_RANGE_SPECS.
        let specs: Vec<String> =
            (0..MAX_RANGE_SPECS as u64).rev().map(|i| format!("{0}-{0}", i * 2 + 1)).collect();
        let header = format!("bytes={}", specs.join(","));
        let last = MAX_RANGE_SPECS as u64 * 2 - 1;
        assert_eq!(plan(&header, 10_000), Ok(RangePlan::Single(spans(&[(1, last)])[0])));

        let few: Vec<String> = (0..MAX_PARTS as u64).map(|i| format!("{0}-{0}", i * 2)).collect();
        let header = format!("bytes={}", few.join(","));
        match plan(&header, 10_000) {
            Ok(RangePlan::Multipart(parts)) => assert_eq!(parts.len(), MAX_PARTS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn positions_near_u64_max_merge_without_overflow() {
        let max = u64::MAX;
        let header = format!("bytes={}-,0-{}", max - 2, max);
        assert_eq!(plan(&header, max), Ok(RangePlan::Single(spans(&[(0, max - 1)])[0])));
    }

    #[test]
    fn a_peer_answer_to_several_ranges_must_lie_within_them() {
        let set = RangeSet::parse("bytes=10-19,50-59").unwrap();
        let answer = |first, last, size| ContentRange { first, last, complete_length: size };
        assert!(set.is_answered_by(answer(10, 59, Some(100))));
        assert!(set.is_answered_by(answer(10, 19, Some(100))));
        assert!(!set.is_answered_by(answer(0, 59, Some(100))));
        assert!(!set.is_answered_by(answer(10, 60, Some(100))));
        assert!(!set.is_answered_by(answer(10, 59, None)));
        assert!(!set.is_answered_by(answer(10, 59, Some(50))));
    }

    #[test]
    fn positions_too_long_for_u64_saturate() {
        let huge = "99999999999999999999999999";
        assert_eq!(ByteRange::parse(&format!("bytes=0-{huge}")), closed(0, u64::MAX));
        assert_eq!(
            ByteRange::parse(&format!("bytes={huge}-")),
            Some(ByteRange::From { first: u64::MAX })
        );
        assert_eq!(
            ByteRange::parse(&format!("bytes=-{huge}")),
            Some(ByteRange::Suffix { length: u64::MAX })
        );
    }

    #[test]
    fn ranges_resolve_against_the_size_as_rfc_9110_says() {
        use ByteRange::*;
        let cases = [
            (Closed { first: 0, last: 99 }, 1000, span(0, 99)),
            (Closed { first: 10, last: 10 }, 1000, span(10, 10)),
            (Closed { first: 0, last: 0 }, 1, span(0, 0)),
            // A last position past the end is clamped.
            (Closed { first: 900, last: 5000 }, 1000, span(900, 999)),
            (Closed { first: 0, last: u64::MAX }, 1000, span(0, 999)),
            (Closed { first: 999, last: 999 }, 1000, span(999, 999)),
            (Closed { first: 1000, last: 1000 }, 1000, Err(Unsatisfiable)),
            (Closed { first: 0, last: 10 }, 0, Err(Unsatisfiable)),
            (From { first: 0 }, 1000, span(0, 999)),
            (From { first: 999 }, 1000, span(999, 999)),
            (From { first: 1000 }, 1000, Err(Unsatisfiable)),
            (From { first: u64::MAX }, u64::MAX, Err(Unsatisfiable)),
            (From { first: 0 }, 0, Err(Unsatisfiable)),
            (Suffix { length: 100 }, 1000, span(900, 999)),
            (Suffix { length: 1000 }, 1000, span(0, 999)),
            // A suffix longer than the file selects all of it.
            (Suffix { length: 5000 }, 1000, span(0, 999)),
            (Suffix { length: u64::MAX }, 1000, span(0, 999)),
            (Suffix { length: 0 }, 1000, Err(Unsatisfiable)),
            (Suffix { length: 0 }, 0, Err(Unsatisfiable)),
            (Suffix { length: 5 }, 0, Ok(None)),
            (Closed { first: 0, last: u64::MAX - 1 }, u64::MAX, span(0, u64::MAX - 1)),
        ];
        for (range, size, expected) in cases {
            assert_eq!(range.resolve(size), expected, "{range} of {size} bytes");
        }
    }

    #[test]
    fn a_resolved_range_describes_itself_as_content_range() {
        let range = ResolvedRange { start: 0, end: 499 };
        assert_eq!(range.len(), 500);
        assert_eq!(range.content_range(1234), "bytes 0-499/1234");
        assert_eq!(unsatisfied_content_range(1234), "bytes */1234");
    }

    #[test]
    fn ranges_print_as_the_header_they_came_from() {
        for header in ["bytes=0-499", "bytes=9500-", "bytes=-500"] {
            let parsed = ByteRange::parse(header).map(|r| r.to_string());
            assert_eq!(parsed.as_deref(), Some(header));
        }
    }

    #[test]
    fn content_range_parses_only_byte_spans() {
        let cases = [
            ("bytes 0-499/1234", Some((0, 499, Some(1234)))),
            ("bytes 0-499/*", Some((0, 499, None))),
            ("BYTES 7-7/8", Some((7, 7, Some(8)))),
            ("bytes */1234", None),
            ("bytes 5-4/10", None),
            ("bytes 0-1", None),
            ("items 0-1/2", None),
            ("bytes 0-99999999999999999999999/*", None),
            ("bytes +0-1/2", None),
        ];
        for (value, expected) in cases {
            let parsed = ContentRange::parse(value).map(|c| (c.first, c.last, c.complete_length));
            assert_eq!(parsed, expected, "{value:?}");
        }
    }

    #[test]
    fn a_peer_answer_must_start_where_we_asked() {
        use ByteRange::*;
        let answer = |first, last, size| ContentRange { first, last, complete_length: size };
        let cases = [
            (Closed { first: 0, last: 99 }, answer(0, 99, Some(1000)), true),
            (Closed { first: 0, last: 99 }, answer(0, 49, Some(1000)), true),
            (Closed { first: 0, last: 99 }, answer(5, 99, Some(1000)), false),
            (Closed { first: 0, last: 99 }, answer(0, 150, Some(1000)), false),
            (Closed { first: 0, last: 5000 }, answer(0, 999, Some(1000)), true),
            (From { first: 10 }, answer(10, 999, Some(1000)), true),
            (From { first: 10 }, answer(0, 999, Some(1000)), false),
            (From { first: 10 }, answer(10, 1000, Some(1000)), false),
            (Suffix { length: 100 }, answer(900, 999, Some(1000)), true),
            (Suffix { length: 100 }, answer(0, 999, Some(1000)), false),
            (Suffix { length: 100 }, answer(900, 999, None), true),
            (Suffix { length: 100 }, answer(800, 999, None), false),
        ];
        for (range, content_range, expected) in cases {
            assert_eq!(range.is_answered_by(content_range), expected, "{range} {content_range:?}");
        }
    }
}
