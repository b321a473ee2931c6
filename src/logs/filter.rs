//! Per-block filters: what a sealed block holds, in a few hundred bytes, so that a search
//! can tell that a block cannot match without decompressing it.
//!
//! A filter is a one-hash Bloom filter of the block's trigrams (every 3 consecutive bytes
//! of its line data, ASCII letters folded to lower case), as zoekt and Google Code Search
//! index trigrams. Trigrams, not words: a search's literals are substrings (`needle`
//! matches `needles`, `xyzzy` matches inside `needle-xyzzy`), and every substring of
//! three bytes or more is covered by its trigrams. Folding the case makes one filter serve
//! case-sensitive and case-insensitive searches: a literal is folded the same way before
//! it is looked up, which can only let more blocks through, never fewer.
//!
//! A line with escape codes is searched on its text without them (see `search.rs`), so
//! such a line is indexed both as stored and stripped.
//!
//! Building one is a single pass over the block setting bits in a 64 Kibit map (it stays
//! in the L1 cache); the map is then folded in halves (a one-hash Bloom filter of 2^k bits
//! folds into one of 2^(k-1) bits by OR-ing its halves) until about a third of its bits
//! are set, or until it is small beside the compressed block. The compression stage of
//! the writer builds it, beside the compressed block: capture never pays for it.
//!
//! Record (the `block_filters` table's value; integers little endian):
//!
//! ```text
//! u8  version (1)
//! u32 line count
//! i64 smallest line timestamp (µs)
//! i64 largest line timestamp (µs)
//! u8  log2 of the filter's size in bits (3..=16)
//! filter bits, 2^k / 8 bytes (bit i is byte i / 8, bit i % 8)
//! ```

use super::block::BlockView;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 8 + 8 + 1;
/// log2 of the working map's size in bits.
const MAX_LOG2: u8 = 16;
const MIN_LOG2: u8 = 3;
const ESC: u8 = 0x1b;

/// ASCII letters to lower case; every other byte as it is.
static FOLD: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).to_ascii_lowercase();
        i += 1;
    }
    t
};

/// A byte as the filter sees it (ASCII letters in lower case).
#[inline]
pub fn fold(b: u8) -> u8 {
    FOLD[b as usize]
}

/// The working map's bit for a trigram (24 bits, folded). The filter's bit in a map of
/// 2^k bits is the low k bits of this one.
#[inline]
fn bit_of(trigram: u32) -> u32 {
    let p = trigram.wrapping_mul(0x9E37_79B1);
    (p ^ (p >> 16)) & ((1 << MAX_LOG2) - 1)
}

/// Set the bits of every trigram of `bytes` in `map`.
#[inline]
fn add_trigrams(map: &mut [u64], bytes: &[u8]) {
    let mut t: u32 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        t = ((t << 8) | u32::from(FOLD[b as usize])) & 0x00FF_FFFF;
        if i >= 2 {
            let bit = bit_of(t) as usize;
            map[bit >> 6] |= 1 << (bit & 63);
        }
    }
}

/// Build the filter record of a block whose stored (compressed) form takes `stored_len`
/// bytes. The filter takes at most about a twelfth of that.
pub fn build(view: &BlockView<'_>, stored_len: usize) -> Vec<u8> {
    let mut map = vec![0u64; (1 << MAX_LOG2) / 64];
    add_trigrams(&mut map, view.data);
    if memchr::memchr(ESC, view.data).is_some() {
        for line in view.data.split(|&b| b == b'\n') {
            if memchr::memchr(ESC, line).is_some() {
                add_trigrams(&mut map, &strip_ansi_escapes::strip(line));
            }
        }
    }
    let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
    for m in view.metas() {
        min_ts = min_ts.min(m.ts_us);
        max_ts = max_ts.max(m.ts_us);
    }
    if view.count == 0 {
        (min_ts, max_ts) = (view.base_ts, view.base_ts);
    }
    // Fold while more than about a third of the bits would stay clear, and anyway down to
    // the size budget.
    let budget_bits = (stored_len * 8 / 12).max(1 << MIN_LOG2);
    let mut set: u32 = map.iter().map(|w| w.count_ones()).sum();
    let mut log2 = MAX_LOG2;
    while log2 > MIN_LOG2 {
        let half = map.len() / 2;
        let too_big = (1usize << log2) > budget_bits;
        // After folding, at most `set` bits of 2^(log2-1) are set.
        let sparse = u64::from(set) * 3 <= 1u64 << (log2 - 1);
        if !too_big && !sparse {
            break;
        }
        if half == 0 {
            // Below one word: fold bit halves within the word.
            let bits = 1u32 << (log2 - 1);
            let w = map[0];
            map[0] = (w | (w >> bits)) & ((1u64 << bits) - 1);
        } else {
            for i in 0..half {
                map[i] |= map[half + i];
            }
            map.truncate(half);
        }
        log2 -= 1;
        set = map.iter().map(|w| w.count_ones()).sum();
    }
    let bytes = (1usize << log2) / 8;
    let mut out = Vec::with_capacity(HEADER + bytes);
    out.push(VERSION);
    out.extend_from_slice(&view.count.to_le_bytes());
    out.extend_from_slice(&min_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    out.push(log2);
    for w in &map {
        let le = w.to_le_bytes();
        out.extend_from_slice(&le[..bytes.min(8)]);
    }
    out
}

/// A filter record, read in place.
#[derive(Clone, Copy, Debug)]
pub struct BlockFilter<'a> {
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    log2: u8,
    bits: &'a [u8],
}

impl<'a> BlockFilter<'a> {
    /// `None` for a record this version cannot read (the block is then scanned).
    pub fn parse(bytes: &'a [u8]) -> Option<BlockFilter<'a>> {
        if bytes.len() < HEADER || bytes[0] != VERSION {
            return None;
        }
        let log2 = bytes[HEADER - 1];
        if !(MIN_LOG2..=MAX_LOG2).contains(&log2) || bytes.len() != HEADER + (1 << log2) / 8 {
            return None;
        }
        Some(BlockFilter {
            count: u32::from_le_bytes(bytes[1..5].try_into().ok()?),
            min_ts: i64::from_le_bytes(bytes[5..13].try_into().ok()?),
            max_ts: i64::from_le_bytes(bytes[13..21].try_into().ok()?),
            log2,
            bits: &bytes[HEADER..],
        })
    }

    /// Whether the block may hold `literal` (given folded, see [`fold`]) in a line. A
    /// literal shorter than a trigram may be anywhere.
    pub fn may_contain(&self, literal: &[u8]) -> bool {
        let mask = (1u32 << self.log2) - 1;
        literal.windows(3).all(|w| {
            let t = (u32::from(w[0]) << 16) | (u32::from(w[1]) << 8) | u32::from(w[2]);
            let bit = (bit_of(t) & mask) as usize;
            self.bits[bit >> 3] & (1 << (bit & 7)) != 0
        })
    }

    /// Whether some line of the block may have a timestamp in `since..=until`.
    pub fn overlaps(&self, since: Option<i64>, until: Option<i64>) -> bool {
        since.is_none_or(|s| self.max_ts >= s) && until.is_none_or(|u| self.min_ts <= u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::block::{BlockBuilder, Stream};

    fn filter_of(lines: &[&[u8]], stored_len: usize) -> Vec<u8> {
        let mut b = BlockBuilder::new(0);
        for (i, l) in lines.iter().enumerate() {
            b.push(100 - i as i64, Stream::Stdout, false, l);
        }
        build(&b.seal(1).view(), stored_len)
    }

    fn folded(s: &str) -> Vec<u8> {
        s.bytes().map(fold).collect()
    }

    #[test]
    fn every_substring_of_a_line_passes_and_others_mostly_do_not() {
        let lines: Vec<String> = (0..500)
            .map(|i| format!("{i:08} INFO request handled path=/api/items status=200"))
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let rec = filter_of(&refs, 8000);
        let f = BlockFilter::parse(&rec).unwrap();
        assert_eq!((f.count, f.min_ts, f.max_ts), (500, -399, 100));
        assert!(rec.len() <= 8000 / 12 + HEADER, "{}", rec.len());
        for l in &lines {
            for start in (0..l.len()).step_by(7) {
                let end = (start + 9).min(l.len());
                assert!(f.may_contain(&folded(&l[start..end])));
            }
        }
        assert!(f.may_contain(&folded("PATH=/API")), "case folded");
        assert!(f.may_contain(b"ok"), "shorter than a trigram");
        let absent = ["needle-xyzzy", "connection refused", "qqqjjjvvv", "zzzz"];
        assert!(
            absent
                .iter()
                .filter(|a| f.may_contain(a.as_bytes()))
                .count()
                <= 1
        );
        assert!(f.overlaps(Some(50), None) && !f.overlaps(Some(101), None));
        assert!(f.overlaps(None, Some(-399)) && !f.overlaps(None, Some(-400)));
    }

    #[test]
    fn coloured_lines_are_indexed_without_their_escape_codes() {
        let rec = filter_of(&[b"\x1b[1mLoc\x1b[22mal: http://x"], 1000);
        let f = BlockFilter::parse(&rec).unwrap();
        assert!(f.may_contain(b"local: http"));
        assert!(f.may_contain(b"[1mloc"));
    }

    #[test]
    fn tiny_and_unreadable_records() {
        let rec = filter_of(&[], 0);
        let f = BlockFilter::parse(&rec).unwrap();
        assert_eq!(f.count, 0);
        assert!(!f.may_contain(b"abc"));
        assert!(BlockFilter::parse(&rec[..rec.len() - 1]).is_none());
        assert!(BlockFilter::parse(&[9; 40]).is_none());
    }
}
