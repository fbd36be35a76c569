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
    /// Parses a `Range` header value. `None` means the header is to be ignored and the
    /// whole representation sent (RFC 9110 §14.2 lets a server ignore `Range`): an unknown
    /// unit, a malformed or invalid range (`last < first`), or several ranges.
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
            // TODO(#4): multipart/byteranges or coalescing. Until then several ranges get
            // the whole representation, which §14.2 allows; a player asks for one anyway.
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

/// The canonical header value, as forwarded to a peer.
impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed { first, last } => write!(f, "bytes={first}-{last}"),
            Self::From { first } => write!(f, "bytes={first}-"),
            Self::Suffix { length } => write!(f, "bytes=-{length}"),
        }
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
    fn several_ranges_are_ignored_for_now() {
        assert_eq!(ByteRange::parse("bytes=0-1,5-9"), None);
        assert_eq!(ByteRange::parse("bytes=0-1, -5"), None);
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
