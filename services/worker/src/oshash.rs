//! The OpenSubtitles hash ("oshash"): the file size plus every 64-bit little-endian word of
//! the first and of the last 64 KiB, summed with wrap-around, written as 16 lowercase hex
//! digits. It reads 128 KiB whatever the file's size, and peers (and Stash) exchange it
//! under the same name.
//!
//! A file shorter than 64 KiB follows the C implementation on the OpenSubtitles wiki: the
//! head and the tail are then both the whole file (so each word counts twice), and a final
//! partial word is ignored. The wiki's Python version refuses files under 128 KiB and Stash
//! refuses lengths that are not a multiple of 8; on every file they accept, all agree.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read at each end of the file.
pub(crate) const CHUNK: u64 = 64 * 1024;

/// Hashes a file. Blocking: call it from `spawn_blocking`.
pub(crate) fn oshash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    // Both ends are at most CHUNK bytes, so the length fits any usize.
    let len = usize::try_from(size.min(CHUNK)).unwrap_or(0);

    let mut head = vec![0; len];
    file.read_exact(&mut head)?;
    let mut tail = vec![0; len];
    file.seek(SeekFrom::End(-i64::try_from(len).unwrap_or(0)))?;
    file.read_exact(&mut tail)?;

    Ok(oshash(size, &head, &tail))
}

/// The hash of a file of `size` bytes whose first and last bytes are `head` and `tail`.
pub(crate) fn oshash(size: u64, head: &[u8], tail: &[u8]) -> String {
    let sum = size.wrapping_add(sum_words(head)).wrapping_add(sum_words(tail));
    format!("{sum:016x}")
}

fn sum_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|word| {
            let mut le = [0; 8];
            le.copy_from_slice(word);
            u64::from_le_bytes(le)
        })
        .fold(0, u64::wrapping_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    // Expected values were computed with a separate Python implementation of the wiki's
    // C algorithm, not with this code.
    fn hash_of(bytes: &[u8]) -> String {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file.flush().unwrap();
        oshash_file(file.path()).unwrap()
    }

    #[test]
    fn an_all_zero_file_hashes_to_its_size() {
        assert_eq!(hash_of(&vec![0; 1 << 20]), "0000000000100000");
    }

    #[test]
    fn a_small_all_zero_file_hashes_to_its_size() {
        assert_eq!(hash_of(&[0; 100]), "0000000000000064");
    }

    #[test]
    fn words_are_read_little_endian() {
        assert_eq!(hash_of(&[1; 128 * 1024]), "4040404040424000");
    }

    #[test]
    fn the_sum_wraps_around() {
        assert_eq!(hash_of(&[0xff; 128 * 1024]), "000000000001c000");
    }

    #[test]
    fn only_the_ends_of_a_large_file_count() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(hash_of(&bytes), "e19d5212c9812cd6");
    }

    #[test]
    fn head_and_tail_overlap_between_64_and_128_kib() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(hash_of(&bytes), "e59c5111c783a536");
    }

    #[test]
    fn a_file_under_64_kib_counts_twice_and_drops_its_partial_word() {
        let bytes: Vec<u8> = (1..=20).collect();
        assert_eq!(hash_of(&bytes), "302c2824201c1828");
    }

    #[test]
    fn an_empty_file_hashes_to_zero() {
        assert_eq!(hash_of(&[]), "0000000000000000");
    }
}
