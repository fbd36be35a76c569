//! A work's title and year, read from where a file sits in its folder.
//!
//! Libraries are commonly laid out as `Title (Year)/anything.mkv` or `Title (Year).mkv`, so
//! the parent folder is asked first, then the file's own name; a name without a year falls
//! back to the file name with dots and underscores read as spaces.

use velour_core::normalize_title;

/// A title (NFC, trimmed, never empty) and maybe a year.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TitleYear {
    pub title: String,
    pub year: Option<i32>,
}

/// Years outside this range in parentheses are taken as part of the title.
const YEARS: std::ops::RangeInclusive<i32> = 1850..=2199;

/// Reads the title of the file at `relative`, its path from the location's root with `/`
/// separators. Only folders inside the root count: the root's own name is not a title.
pub(crate) fn title_for(relative: &str) -> TitleYear {
    let (parent, file_name) = match relative.rsplit_once('/') {
        Some((dirs, name)) => (dirs.rsplit('/').next(), name),
        None => (None, relative),
    };
    let stem = file_stem(file_name);

    let found = parent
        .and_then(parse_title_year)
        .or_else(|| parse_title_year(stem))
        .map(|(title, year)| (title, Some(year)));
    let (title, year) = found.unwrap_or_else(|| {
        let spaced = spaced_out(stem);
        match parse_title_year(&spaced) {
            Some((title, year)) => (title, Some(year)),
            None => (spaced, None),
        }
    });

    let title = normalize_title(&title);
    if title.is_empty() {
        return TitleYear { title: normalize_title(file_name), year: None };
    }
    TitleYear { title, year }
}

/// The name without its last extension (`a.tar.gz` → `a.tar`); a leading dot is not one.
fn file_stem(file_name: &str) -> &str {
    match file_name.rfind('.') {
        Some(dot) if dot > 0 => &file_name[..dot],
        _ => file_name,
    }
}

/// `Title (Year)`, possibly followed by more (`Title (Year) - Director's Cut`). The last
/// parenthesized year wins, so `Blade Runner (Final Cut) (1982)` keeps its subtitle.
fn parse_title_year(name: &str) -> Option<(String, i32)> {
    let bytes = name.as_bytes();
    let mut end = name.len();
    while let Some(open) = name[..end].rfind('(') {
        let digits = bytes.get(open + 1..open + 5);
        let close = bytes.get(open + 5);
        if let (Some(digits), Some(b')')) = (digits, close)
            && digits.iter().all(u8::is_ascii_digit)
        {
            let year: i32 = name[open + 1..open + 5].parse().ok()?;
            let title = tidy(&name[..open]);
            if YEARS.contains(&year) && !title.is_empty() {
                return Some((title, year));
            }
        }
        end = open;
    }
    None
}

/// The text before a year: `Title - ` loses its dash, and a dotted name without spaces
/// (`The.Big.Movie.`) is spaced out, though not initials such as `A.I.`.
fn tidy(before_year: &str) -> String {
    let title = before_year.trim();
    let words = title.split('.').filter(|part| part.chars().count() >= 2).count();
    let dotted = !title.contains(char::is_whitespace) && (title.contains('_') || words >= 2);
    if dotted { spaced_out(title) } else { title.trim_end_matches([' ', '-']).to_owned() }
}

/// `The.Big_Movie` → `The Big Movie`, with runs of spaces collapsed.
fn spaced_out(stem: &str) -> String {
    stem.replace(['.', '_'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(relative: &str) -> (String, Option<i32>) {
        let found = title_for(relative);
        (found.title, found.year)
    }

    #[test]
    fn titles_are_read_from_folders_then_names_then_spaced_names() {
        let cases: &[(&str, &str, Option<i32>)] = &[
            ("Big Buck Bunny (2008)/bbb_sunflower_1080p.mp4", "Big Buck Bunny", Some(2008)),
            ("Movies/Sintel (2010)/Sintel (2010).mkv", "Sintel", Some(2010)),
            ("Sintel (2010).mkv", "Sintel", Some(2010)),
            ("Films/Tears of Steel (2012) - 4K.mkv", "Tears of Steel", Some(2012)),
            ("Blade Runner (Final Cut) (1982).mkv", "Blade Runner (Final Cut)", Some(1982)),
            ("1917 (2019).mp4", "1917", Some(2019)),
            ("Elephants_Dream.mp4", "Elephants Dream", None),
            ("The.Big.Movie.avi", "The Big Movie", None),
            ("The.Big.Movie.(1999).avi", "The Big Movie", Some(1999)),
            ("A.I. (2001).mkv", "A.I.", Some(2001)),
            ("Heat - (1995).mkv", "Heat", Some(1995)),
            ("Extras/making of.mov", "making of", None),
            ("Movie (1080).mp4", "Movie (1080)", None),
            ("(2008).mp4", "(2008)", None),
            ("Clip (20xx).mp4", "Clip (20xx)", None),
            ("...mp4", "...mp4", None),
        ];
        for (path, title, year) in cases {
            assert_eq!(read(path), ((*title).to_owned(), *year), "{path}");
        }
    }

    #[test]
    fn titles_are_nfc_normalized() {
        let (title, year) = read("Ame\u{301}lie (2001)/film.mkv");
        assert_eq!(title, "Am\u{e9}lie");
        assert_eq!(year, Some(2001));
    }

    #[test]
    fn only_the_immediate_parent_folder_is_asked() {
        assert_eq!(read("Sintel (2010)/extras/trailer.mp4"), ("trailer".to_owned(), None));
    }
}
