//! Kodi/Jellyfin `.nfo` sidecars: the title, year, director, plot and rating people (or
//! their media managers) wrote beside a film, preferred to what its file name says.
//!
//! A sidecar is `<file name>.nfo` beside the video, or else `movie.nfo` in its folder. It is
//! XML with a `<movie>` root; media managers often append the film's web address after the
//! closing tag, and some `.nfo` files hold only that address: those give no facts.

use chrono::{DateTime, SubsecRound, Utc};
use std::path::{Path, PathBuf};
use velour_core::normalize_title;

/// Sidecars larger than this are not read: a real one is a few kilobytes.
const MAX_NFO_BYTES: u64 = 1024 * 1024;

/// Longest title, director or plot kept, in bytes; longer text is not a sidecar's.
const MAX_TITLE_BYTES: usize = 1024;
const MAX_PLOT_BYTES: usize = 64 * 1024;

/// Deepest element nesting read; Kodi's sidecars nest three or four levels.
const MAX_DEPTH: usize = 32;

/// Ratings outside this scale are ignored (Kodi and Jellyfin rate out of ten).
const RATINGS: std::ops::RangeInclusive<f64> = 0.0..=10.0;

/// What a sidecar says about a work. Every fact is optional: names fill the gaps.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Nfo {
    pub title: Option<String>,
    pub year: Option<i32>,
    pub director: Option<String>,
    pub plot: Option<String>,
    pub rating: Option<f64>,
}

/// A video's sidecar and when it last changed (microseconds, as Postgres keeps time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sidecar {
    pub path: PathBuf,
    pub modified: Option<DateTime<Utc>>,
}

impl Sidecar {
    /// The stamp kept with the video, so that a rescan notices an edited sidecar.
    pub fn stamp(&self) -> String {
        self.modified.map(|t| t.to_rfc3339()).unwrap_or_default()
    }
}

/// The sidecar of the video at `video`, if there is one. Links are not followed: a
/// sidecar must be a regular file in the video's own folder. Blocking.
pub(crate) fn find_sidecar(video: &Path) -> Option<Sidecar> {
    let own = video.with_extension("nfo");
    let folder = video.parent()?.join("movie.nfo");
    [own, folder].into_iter().find_map(|path| {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() {
            return None;
        }
        let modified = meta.modified().ok().map(|t| DateTime::<Utc>::from(t).trunc_subsecs(6));
        Some(Sidecar { path, modified })
    })
}

/// Reads and parses a sidecar; `None` when it cannot be read or holds no facts. The file
/// is opened without following a link (one swapped in since the walk is refused) and read
/// no further than the cap, whatever its size says.
pub(crate) async fn read_sidecar(sidecar: &Sidecar) -> Option<Nfo> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&sidecar.path)
        .await
        .ok()?;
    if !file.metadata().await.ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_NFO_BYTES + 1).read_to_end(&mut bytes).await.ok()?;
    if bytes.len() as u64 > MAX_NFO_BYTES {
        return None;
    }
    parse_nfo(&decode(bytes))
}

/// UTF-8, or else Latin-1, which older media managers wrote: every byte is a character.
fn decode(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|e| e.into_bytes().iter().map(|&b| char::from(b)).collect())
}

/// Parses a sidecar's text.
pub(crate) fn parse_nfo(text: &str) -> Option<Nfo> {
    // The XML ends with the root's closing tag; what follows (a web address) is not XML.
    // The first closing tag ends the root: XML text cannot hold one unescaped.
    let end = text.find("</movie>")? + "</movie>".len();
    let xml = text.get(..end)?;
    // The parser descends one call per element: a deeply nested file would overflow the
    // worker's stack (an abort, not a panic). Real sidecars are a few levels deep.
    if nesting_depth(xml) > MAX_DEPTH {
        return None;
    }
    let document = roxmltree::Document::parse(xml).ok()?;
    let root = document.root_element();
    if !root.has_tag_name("movie") {
        return None;
    }

    let text_of = |name: &str, limit: usize| {
        root.children()
            .filter(|n| n.has_tag_name(name))
            .filter_map(|n| n.text())
            .map(str::trim)
            .find(|t| !t.is_empty() && t.len() <= limit)
    };
    let title = text_of("title", MAX_TITLE_BYTES).map(normalize_title).filter(|t| !t.is_empty());
    let year = text_of("year", 8)
        .and_then(|y| y.parse().ok())
        .or_else(|| text_of("premiered", 32).and_then(|d| d.get(..4)?.parse().ok()))
        .filter(|y| (1850..=2199).contains(y));
    let directors: Vec<&str> = root
        .children()
        .filter(|n| n.has_tag_name("director"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let director =
        Some(directors.join(", ")).filter(|d| !d.is_empty() && d.len() <= MAX_TITLE_BYTES);
    let plot = text_of("plot", MAX_PLOT_BYTES).map(str::to_owned);
    let rating = rating(root);

    let nfo = Nfo { title, year, director, plot, rating };
    (nfo != Nfo::default()).then_some(nfo)
}

/// The deepest element nesting of `xml`, counted from its tags alone (an upper bound is
/// enough: it only guards the parser).
fn nesting_depth(xml: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        let tag = &rest[open + 1..];
        let close = tag.find('>').unwrap_or(tag.len());
        if tag.starts_with('/') {
            depth = depth.saturating_sub(1);
        } else if !tag.starts_with('?') && !tag.starts_with('!') && !tag[..close].ends_with('/') {
            depth += 1;
            deepest = deepest.max(depth);
        }
        rest = tag.get(close..).unwrap_or_default();
    }
    deepest
}

/// `<ratings><rating default="true"><value>7.5</value></rating></ratings>` (current
/// Kodi: the default rating, else the first), or the older `<rating>7.5</rating>`.
fn rating(root: roxmltree::Node<'_, '_>) -> Option<f64> {
    let number = |text: Option<&str>| {
        text.and_then(|t| t.trim().parse::<f64>().ok()).filter(|r| RATINGS.contains(r))
    };
    let value_of = |rating: roxmltree::Node<'_, '_>| {
        number(rating.children().find(|n| n.has_tag_name("value")).and_then(|n| n.text()))
    };
    let listed: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("ratings"))
        .flat_map(|r| r.children().filter(|n| n.has_tag_name("rating")))
        .collect();
    let default = listed.iter().find(|r| r.attribute("default") == Some("true"));
    default
        .and_then(|r| value_of(*r))
        .or_else(|| listed.iter().find_map(|r| value_of(*r)))
        .or_else(|| number(root.children().find(|n| n.has_tag_name("rating"))?.text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kodi_sidecar_gives_every_fact() {
        let text = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes" ?>
<movie>
    <title>Le Cercle Rouge</title>
    <originaltitle>Le Cercle rouge</originaltitle>
    <ratings>
        <rating name="themoviedb" max="10"><value>7.9</value><votes>512</votes></rating>
        <rating name="imdb" max="10" default="true"><value>8.0</value></rating>
    </ratings>
    <plot>  A thief, a killer and an ex-cop plan a heist.  </plot>
    <director>Jean-Pierre Melville</director>
    <premiered>1970-10-20</premiered>
</movie>
https://www.imdb.com/title/tt0065531/
"#;
        let nfo = parse_nfo(text).unwrap();
        assert_eq!(nfo.title.as_deref(), Some("Le Cercle Rouge"));
        assert_eq!(nfo.year, Some(1970));
        assert_eq!(nfo.rating, Some(8.0));
        assert_eq!(nfo.director.as_deref(), Some("Jean-Pierre Melville"));
        assert_eq!(nfo.plot.as_deref(), Some("A thief, a killer and an ex-cop plan a heist."));
    }

    #[test]
    fn older_and_partial_sidecars_give_what_they_hold() {
        let legacy = "<movie><title>Alphaville</title><year>1965</year><rating>7.1</rating>\
                      <director>Jean-Luc Godard</director>\
                      <director>Someone Else</director></movie>";
        let nfo = parse_nfo(legacy).unwrap();
        assert_eq!((nfo.year, nfo.rating), (Some(1965), Some(7.1)));
        assert_eq!(nfo.director.as_deref(), Some("Jean-Luc Godard, Someone Else"));

        // Titles in either Unicode normal form come out NFC.
        let nfd = parse_nfo("<movie><title>E\u{301}te\u{301}</title></movie>").unwrap();
        assert_eq!(nfd.title.as_deref(), Some("\u{c9}t\u{e9}"));

        let only_plot = parse_nfo("<movie><plot>Something happens.</plot></movie>").unwrap();
        assert_eq!(only_plot.title, None);
        assert_eq!(only_plot.plot.as_deref(), Some("Something happens."));
    }

    #[test]
    fn what_is_not_a_movie_sidecar_gives_nothing() {
        let cases = [
            "https://www.imdb.com/title/tt0065531/",
            "",
            "<movie><title>Unclosed</movie>",
            "<tvshow><title>A Show</title></tvshow>",
            "<movie><title>  </title><year>nineteen</year><rating>eleven</rating></movie>",
            "<movie></movie>",
            "<!DOCTYPE movie [<!ENTITY a 'aaaaaaaaaa'>]><movie><title>&a;&a;</title></movie>",
        ];
        for text in cases {
            let parsed = parse_nfo(text);
            // A document type declaration with entities is refused by the parser or, at
            // most, expanded within its own limits; never more than a title's worth.
            if let Some(nfo) = &parsed {
                assert!(nfo.title.as_ref().is_some_and(|t| t.len() <= MAX_TITLE_BYTES), "{text}");
                continue;
            }
            assert_eq!(parsed, None, "{text}");
        }
        let nested = format!("<movie>{}{}</movie>", "<a>".repeat(100_000), "</a>".repeat(100_000));
        assert_eq!(parse_nfo(&nested), None, "a deep file is refused before parsing");
        let odd = "<movie><year>3000</year><rating>-1</rating><rating>99</rating></movie>";
        assert_eq!(parse_nfo(odd), None);
    }

    #[test]
    fn latin1_and_trailing_addresses_are_read() {
        let latin1 = b"<movie><title>Caf\xe9 Society</title></movie>\nhttp://x/</movie>".to_vec();
        let nfo = parse_nfo(&decode(latin1)).unwrap();
        assert_eq!(nfo.title.as_deref(), Some("Caf\u{e9} Society"));
    }

    #[test]
    fn the_own_sidecar_comes_before_the_folder_one_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("film.mkv");
        assert_eq!(find_sidecar(&video), None);
        std::fs::write(dir.path().join("movie.nfo"), "<movie/>").unwrap();
        assert_eq!(find_sidecar(&video).unwrap().path, dir.path().join("movie.nfo"));
        std::fs::write(dir.path().join("film.nfo"), "<movie/>").unwrap();
        assert_eq!(find_sidecar(&video).unwrap().path, dir.path().join("film.nfo"));

        let elsewhere = tempfile::tempdir().unwrap();
        let secret = elsewhere.path().join("secret.nfo");
        std::fs::write(&secret, "<movie><title>Secret</title></movie>").unwrap();
        let linked = dir.path().join("linked.mkv");
        std::os::unix::fs::symlink(&secret, dir.path().join("linked.nfo")).unwrap();
        // The link is passed over; the folder's movie.nfo applies instead.
        assert_eq!(find_sidecar(&linked).unwrap().path, dir.path().join("movie.nfo"));
    }
}
