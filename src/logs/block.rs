//! Line framing and the block encoding shared by the ring cache and the store.
//!
//! One redb row per line costs far more than the line itself (key, B-tree entry, page
//! slack), so lines are kept in blocks of up to [`BLOCK_TARGET_BYTES`], the way journald
//! and Loki store them. A block is immutable once sealed, and the very same bytes live in
//! the ring (behind an `Arc`) and in the `blocks` table, so the two layers cannot disagree.
//!
//! Encoding of a block (all integers little endian):
//!
//! ```text
//! u8   version (1)
//! i64  base timestamp, microseconds since the Unix epoch (the first line's)
//! u32  line count
//! u32  meta length in bytes
//! meta: per line, varint(zigzag(ts - previous ts)), varint(len << 2 | continuation << 1 | stderr)
//! data: per line, the line's bytes followed by b'\n'
//! ```
//!
//! Keeping the line bytes contiguous and newline-separated lets search run one regex over a
//! whole block (as grep does over a file) instead of once per line.
//!
//! In the store a block is kept LZ4-compressed (journald and Loki compress their chunks
//! too): `u8 2, u32 raw length, lz4 block` — or raw, starting with the version byte 1,
//! when compression would not make it smaller. Log text shrinks several times over, which
//! makes the store smaller than the text and ingest faster than writing the text to a file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A sealed block aims for this many bytes of line data. Below redb's 64 KiB allocation
/// order so that a block with its header and meta fits one allocation.
pub const BLOCK_TARGET_BYTES: usize = 56 * 1024;
/// A line longer than this is split into continuation lines.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

const VERSION: u8 = 1;
const LZ4: u8 = 2;
const HEADER: usize = 1 + 8 + 4 + 4;

/// Which pipe a line came from.
// Variants are stored by index (bincode), so the JSON names can change freely.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stream {
    type Err = String;
    fn from_str(s: &str) -> Result<Stream, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(format!("unknown stream `{other}`; use stdout or stderr")),
        }
    }
}

/// One line of output, owned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    pub instance: u64,
    pub seq: u64,
    /// UTC, microseconds since the Unix epoch, taken when the bytes were read.
    pub ts_us: i64,
    pub stream: Stream,
    /// This line continues the previous one (it was split at the maximum line length).
    pub continuation: bool,
    pub bytes: Vec<u8>,
}

impl Line {
    /// The line as text; invalid UTF-8 is shown lossily (the bytes are kept as they were).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}

/// Per-line metadata decoded from a block's meta section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineMeta {
    pub ts_us: i64,
    pub stream: Stream,
    pub continuation: bool,
    /// Offset of the line's first byte in the data section.
    pub offset: u32,
    pub len: u32,
}

/// A sealed, immutable block of consecutive lines of one instance.
#[derive(Debug)]
pub struct Block {
    pub instance: u64,
    pub first_seq: u64,
    /// The encoding above, uncompressed (what the ring reads).
    pub bytes: Vec<u8>,
    /// The compressed form for the store, made by the writer's compression stage (beside
    /// the capture side, not on it) and taken by the writer.
    stored: Mutex<Option<Vec<u8>>>,
    /// Set by the writer once the block is durable, so the ring may evict it.
    committed: AtomicBool,
    /// Set when the writer queue was full and the block never reached the store.
    dropped: AtomicBool,
}

impl Block {
    pub fn new(instance: u64, first_seq: u64, bytes: Vec<u8>) -> Arc<Block> {
        Arc::new(Block {
            instance,
            first_seq,
            stored: Mutex::new(None),
            bytes,
            committed: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
        })
    }
    /// Compress the block for the store (once).
    pub fn compress(&self) {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if stored.is_none() {
            *stored = Some(encode_stored(&self.bytes));
        }
    }
    /// The stored form, made now if nobody did yet.
    pub fn take_stored(&self) -> Vec<u8> {
        let taken = self.stored.lock().unwrap_or_else(|p| p.into_inner()).take();
        taken.unwrap_or_else(|| encode_stored(&self.bytes))
    }
    pub fn view(&self) -> BlockView<'_> {
        BlockView::parse(self.first_seq, &self.bytes).expect("blocks built here are well formed")
    }
    pub fn mark_committed(&self) {
        self.committed.store(true, Ordering::Release);
    }
    pub fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::Release);
    }
    /// The ring may forget this block: it is durable, or it will never be.
    pub fn evictable(&self) -> bool {
        self.committed.load(Ordering::Acquire) || self.dropped.load(Ordering::Acquire)
    }
}

/// The stored form of a block's encoding: compressed when that is smaller.
pub fn encode_stored(raw: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(raw);
    if compressed.len() + 5 >= raw.len() {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(compressed.len() + 5);
    out.push(LZ4);
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&compressed);
    out
}

/// The encoding of a stored block, decompressed into `buf` when it was compressed.
pub fn stored_raw<'a>(
    first_seq: u64,
    stored: &'a [u8],
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], CorruptBlock> {
    if stored.first() != Some(&LZ4) {
        return Ok(stored);
    }
    let bad = |why| CorruptBlock { first_seq, why };
    if stored.len() < 5 {
        return Err(bad("compressed block shorter than its header"));
    }
    let len = u32::from_le_bytes(stored[1..5].try_into().unwrap()) as usize;
    buf.clear();
    buf.resize(len, 0);
    let n = lz4_flex::block::decompress_into(&stored[5..], buf)
        .map_err(|_| bad("compressed block does not decompress"))?;
    if n != len {
        return Err(bad("compressed block has the wrong length"));
    }
    Ok(&buf[..])
}

/// A borrowed view of an encoded block (from the ring, or straight from a redb page).
#[derive(Clone, Copy, Debug)]
pub struct BlockView<'a> {
    pub first_seq: u64,
    pub base_ts: i64,
    pub count: u32,
    pub meta: &'a [u8],
    pub data: &'a [u8],
}

/// The stored bytes are not a block this version can read.
#[derive(Debug, thiserror::Error)]
#[error("corrupt log block (first line {first_seq}): {why}")]
pub struct CorruptBlock {
    pub first_seq: u64,
    pub why: &'static str,
}

impl<'a> BlockView<'a> {
    pub fn parse(first_seq: u64, bytes: &'a [u8]) -> Result<BlockView<'a>, CorruptBlock> {
        let bad = |why| CorruptBlock { first_seq, why };
        if bytes.len() < HEADER {
            return Err(bad("shorter than its header"));
        }
        if bytes[0] != VERSION {
            return Err(bad("unknown block version"));
        }
        let base_ts = i64::from_le_bytes(bytes[1..9].try_into().unwrap());
        let count = u32::from_le_bytes(bytes[9..13].try_into().unwrap());
        let meta_len = u32::from_le_bytes(bytes[13..17].try_into().unwrap()) as usize;
        if bytes.len() < HEADER + meta_len {
            return Err(bad("meta section runs past the end"));
        }
        Ok(BlockView {
            first_seq,
            base_ts,
            count,
            meta: &bytes[HEADER..HEADER + meta_len],
            data: &bytes[HEADER + meta_len..],
        })
    }

    /// Sequence number one past the last line.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// Decode every line's metadata, in order.
    pub fn metas(&self) -> MetaIter<'a> {
        MetaIter {
            meta: self.meta,
            pos: 0,
            ts: self.base_ts,
            offset: 0,
            left: self.count,
        }
    }

    pub fn line_bytes(&self, m: &LineMeta) -> &'a [u8] {
        &self.data[m.offset as usize..(m.offset + m.len) as usize]
    }

    pub fn line(&self, index: u32, m: &LineMeta, instance: u64) -> Line {
        Line {
            instance,
            seq: self.first_seq + u64::from(index),
            ts_us: m.ts_us,
            stream: m.stream,
            continuation: m.continuation,
            bytes: self.line_bytes(m).to_vec(),
        }
    }

    /// The timestamp of the last line (the first line's when empty).
    pub fn last_ts(&self) -> i64 {
        self.metas().last().map_or(self.base_ts, |m| m.ts_us)
    }
}

pub struct MetaIter<'a> {
    meta: &'a [u8],
    pos: usize,
    ts: i64,
    offset: u32,
    left: u32,
}

impl Iterator for MetaIter<'_> {
    type Item = LineMeta;
    #[inline]
    fn next(&mut self) -> Option<LineMeta> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let dts = unzigzag(read_varint(self.meta, &mut self.pos));
        let packed = read_varint(self.meta, &mut self.pos);
        self.ts = self.ts.wrapping_add(dts);
        let len = (packed >> 2) as u32;
        let m = LineMeta {
            ts_us: self.ts,
            stream: if packed & 1 == 1 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            continuation: packed & 2 == 2,
            offset: self.offset,
            len,
        };
        self.offset += len + 1;
        Some(m)
    }
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}
#[inline]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}
#[inline]
fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
/// Reads a varint; a truncated one reads as what was there (blocks are checksummed by redb,
/// and a bad length is caught by the bounds of the data section).
#[inline]
fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = buf.get(*pos) {
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 || shift >= 63 {
            break;
        }
        shift += 7;
    }
    v
}

/// The block being filled for a live instance. Readable like a sealed block, so the ring
/// can answer with lines that are not sealed yet.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    first_seq: u64,
    base_ts: i64,
    last_ts: i64,
    count: u32,
    meta: Vec<u8>,
    data: Vec<u8>,
}

impl BlockBuilder {
    pub fn new(first_seq: u64) -> BlockBuilder {
        BlockBuilder {
            first_seq,
            meta: Vec::with_capacity(4096),
            data: Vec::with_capacity(BLOCK_TARGET_BYTES + 1024),
            ..Default::default()
        }
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }
    pub fn data_len(&self) -> usize {
        self.data.len()
    }
    pub fn is_full(&self) -> bool {
        self.data.len() >= BLOCK_TARGET_BYTES
    }

    #[inline]
    pub fn push(&mut self, ts_us: i64, stream: Stream, continuation: bool, bytes: &[u8]) {
        if self.count == 0 {
            self.base_ts = ts_us;
            self.last_ts = ts_us;
        }
        write_varint(&mut self.meta, zigzag(ts_us.wrapping_sub(self.last_ts)));
        let packed = ((bytes.len() as u64) << 2)
            | (u64::from(continuation) << 1)
            | u64::from(stream == Stream::Stderr);
        write_varint(&mut self.meta, packed);
        self.last_ts = ts_us;
        self.data.extend_from_slice(bytes);
        self.data.push(b'\n');
        self.count += 1;
    }

    /// Append whole lines at once: `body` is complete lines, each ending in '\n' (the
    /// data section's own format, so the bytes are copied in one go). Returns how many
    /// bytes were taken: it stops after the line that fills the block, and before a line
    /// it cannot take as it is (a "\r\n" ending, or longer than `max_line`), which the
    /// caller then frames line by line.
    pub fn push_lines(
        &mut self,
        ts_us: i64,
        stream: Stream,
        body: &[u8],
        max_line: usize,
    ) -> usize {
        if self.count == 0 {
            self.base_ts = ts_us;
            self.last_ts = ts_us;
        }
        let room = BLOCK_TARGET_BYTES.saturating_sub(self.data.len());
        let stderr = u64::from(stream == Stream::Stderr);
        let mut taken = 0;
        for nl in memchr::memchr_iter(b'\n', body) {
            let len = nl - taken;
            if len > max_line || (len > 0 && body[nl - 1] == b'\r') {
                break;
            }
            write_varint(&mut self.meta, zigzag(ts_us.wrapping_sub(self.last_ts)));
            self.last_ts = ts_us;
            write_varint(&mut self.meta, ((len as u64) << 2) | stderr);
            self.count += 1;
            taken = nl + 1;
            if taken >= room {
                break;
            }
        }
        self.data.extend_from_slice(&body[..taken]);
        taken
    }

    fn header(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.extend_from_slice(&self.base_ts.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
    }

    /// A copy of the unsealed lines, encoded as a block (for readers of the ring).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.meta.len() + self.data.len());
        self.header(&mut out);
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(&self.data);
        out
    }

    /// Seal the lines gathered so far and start a new builder after them.
    pub fn seal(&mut self, instance: u64) -> Arc<Block> {
        let bytes = self.snapshot();
        let block = Block::new(instance, self.first_seq, bytes);
        let next = self.first_seq + u64::from(self.count);
        self.meta.clear();
        self.data.clear();
        self.count = 0;
        self.first_seq = next;
        block
    }
}

/// Splits a byte stream into lines: `\n` and `\r\n` end a line, a line longer than the
/// maximum is cut into continuation lines, invalid UTF-8 is kept as it is, and
/// [`Framer::finish`] keeps a final line that has no newline.
#[derive(Debug)]
pub struct Framer {
    partial: Vec<u8>,
    /// The partial line already had a piece emitted (it is over the maximum).
    continuing: bool,
    max_line: usize,
}

impl Framer {
    pub fn new(max_line: usize) -> Framer {
        Framer {
            partial: Vec::new(),
            continuing: false,
            max_line: max_line.max(1),
        }
    }

    /// No partial line is pending: the next byte starts a new line.
    pub fn is_idle(&self) -> bool {
        self.partial.is_empty() && !self.continuing
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Feed bytes; `emit(bytes, continuation)` is called for each complete line.
    #[inline]
    pub fn feed(&mut self, mut input: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while !input.is_empty() {
            match memchr::memchr(b'\n', input) {
                Some(nl) => {
                    if self.partial.is_empty() {
                        let line = &input[..nl];
                        self.emit_long(line, true, &mut emit);
                    } else {
                        self.partial.extend_from_slice(&input[..nl]);
                        let line = std::mem::take(&mut self.partial);
                        self.emit_long(&line, true, &mut emit);
                        self.partial = line;
                        self.partial.clear();
                    }
                    input = &input[nl + 1..];
                }
                None => {
                    self.partial.extend_from_slice(input);
                    // Emit full-size pieces now so a newline-less flood stays bounded. Keep
                    // a trailing '\r' back: it may be the first half of "\r\n".
                    while self.partial.len() > self.max_line {
                        let piece: Vec<u8> = self.partial.drain(..self.max_line).collect();
                        emit(&piece, self.continuing);
                        self.continuing = true;
                    }
                    return;
                }
            }
        }
    }

    /// Emit `line` (a complete line, without its '\n'), cut into pieces of the maximum.
    fn emit_long(&mut self, mut line: &[u8], complete: bool, emit: &mut impl FnMut(&[u8], bool)) {
        if complete && line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        loop {
            if line.len() <= self.max_line {
                // An empty remainder after exact-size pieces is not a line of its own.
                if !(line.is_empty() && self.continuing) {
                    emit(line, self.continuing);
                }
                self.continuing = false;
                return;
            }
            emit(&line[..self.max_line], self.continuing);
            self.continuing = true;
            line = &line[self.max_line..];
        }
    }

    /// The stream ended: a final line without a newline is still a line.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit_long(&line, false, &mut emit);
        }
        self.continuing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]], max: usize) -> Vec<(Vec<u8>, bool)> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, |l, cont| out.push((l.to_vec(), cont)));
        }
        f.finish(|l, cont| out.push((l.to_vec(), cont)));
        out
    }

    fn plain(v: &[(Vec<u8>, bool)]) -> Vec<String> {
        v.iter()
            .map(|(l, c)| {
                format!(
                    "{}{}",
                    if *c { "+" } else { "" },
                    String::from_utf8_lossy(l)
                )
            })
            .collect()
    }

    #[test]
    fn newlines_crlf_and_final_line() {
        let out = frame(&[b"a\nb\r\nc", b"d\n\ne"], 100);
        assert_eq!(plain(&out), ["a", "b", "cd", "", "e"]);
    }

    #[test]
    fn crlf_split_across_reads() {
        let out = frame(&[b"abc\r", b"\nx\n"], 100);
        assert_eq!(plain(&out), ["abc", "x"]);
    }

    #[test]
    fn long_lines_become_continuations() {
        let out = frame(&[b"0123456789ab\nxy\n"], 5);
        assert_eq!(plain(&out), ["01234", "+56789", "+ab", "xy"]);
        // Exactly a multiple of the maximum: no empty continuation.
        let out = frame(&[b"0123456789\nz"], 5);
        assert_eq!(plain(&out), ["01234", "+56789", "z"]);
        // A newline-less flood is emitted as it arrives, not buffered without bound.
        let mut f = Framer::new(4);
        let mut n = 0;
        for _ in 0..1000 {
            f.feed(b"abcdefgh", |_, _| n += 1);
        }
        assert!(n >= 1999, "{n}");
    }

    #[test]
    fn invalid_utf8_is_kept() {
        let out = frame(&[b"\xff\xfe ok\n"], 100);
        assert_eq!(out[0].0, b"\xff\xfe ok");
    }

    #[test]
    fn block_roundtrip() {
        let mut b = BlockBuilder::new(40);
        b.push(1_000, Stream::Stdout, false, b"hello");
        b.push(900, Stream::Stderr, true, b"");
        b.push(5_000_000_000, Stream::Stdout, false, b"\xffbin");
        let block = b.seal(7);
        assert_eq!(b.first_seq(), 43);
        let v = block.view();
        let metas: Vec<_> = v.metas().collect();
        assert_eq!(v.count, 3);
        assert_eq!(metas[1].ts_us, 900);
        assert_eq!(metas[1].stream, Stream::Stderr);
        assert!(metas[1].continuation);
        assert_eq!(v.line(2, &metas[2], 7).bytes, b"\xffbin");
        assert_eq!(v.line(2, &metas[2], 7).seq, 42);
        assert_eq!(v.data, b"hello\n\n\xffbin\n");
        assert_eq!(v.last_ts(), 5_000_000_000);
        assert!(BlockView::parse(0, &[9, 9]).is_err());
        let mut buf = Vec::new();
        let stored = encode_stored(&block.bytes);
        assert_eq!(stored_raw(40, &stored, &mut buf).unwrap(), &block.bytes[..]);
        // Compressible text is stored compressed, and reads back the same.
        let mut b = BlockBuilder::new(0);
        for i in 0..500 {
            b.push(
                i,
                Stream::Stdout,
                false,
                format!("GET /api/items/{} 200", i % 7).as_bytes(),
            );
        }
        let block = b.seal(1);
        let stored = encode_stored(&block.bytes);
        assert!(stored.len() * 3 < block.bytes.len());
        assert_eq!(stored_raw(0, &stored, &mut buf).unwrap(), &block.bytes[..]);
        assert!(stored_raw(0, &[LZ4, 1, 0, 0, 0, 9], &mut buf).is_err());
    }
}
