//! A sealed epoch of the audit log, as one file that stock tools read:
//! a valid zstd stream whose data frames hold the entries' exact stored
//! bytes as JSON lines (`zstd -dc <segment> | jq` prints them), with the
//! header, index and footer in zstd skippable frames, which a decoder
//! passes over (the way zstd's seekable format keeps its seek table).
//!
//! ```text
//! [header: skippable 0x184D2A50, JSON]
//! [data frame] … (each about 8 KiB of JSON lines before compression)
//! [index: skippable 0x184D2A51, binary (index.rs): frames, postings]
//! [footer: skippable 0x184D2A52, 128 bytes, fixed]
//! ```
//!
//! The footer holds where the index is, the entry count and range, the
//! RFC 6962 Merkle root over the entries' hashes in seq order, the SHA-256
//! of every byte before it, and a magic: a torn, truncated or altered file
//! is found when it is opened or verified. Per frame the index keeps its
//! offset, time range and the seqs of its entries; per value of sender,
//! room, alias, action, pack, event, status, request and rule, the frames
//! it occurs in, so a query decompresses only those.
//!
//! Entries are stored grouped by sender, in seq order within each sender,
//! in small frames (about 8 KiB): "everything @alice did", the question
//! asked most, then reads a few frames per segment instead of all of them
//! (measured over 1,000,000 entries: seq order with 64 KiB frames read
//! every frame for one user's 10,000 entries, 2.1 s). Whatever reads in
//! seq order (a follower, `verify --full`, a proof) sorts by seq.

mod index;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::audit::Entry;
use super::merkle::{self, Hash};

const HEADER_MAGIC: u32 = 0x184D_2A50;
const INDEX_MAGIC: u32 = 0x184D_2A51;
const FOOTER_MAGIC: u32 = 0x184D_2A52;
/// The footer's own magic, its last bytes.
const SEGMENT_MAGIC: &[u8; 8] = b"AIRLSEG1";
/// Footer payload: index offset and length, count, first and last seq,
/// first and last time, root, file hash, magic.
const FOOTER_PAYLOAD: usize = 8 * 7 + 32 + 32 + 8;
/// The footer frame on disk (magic and size before the payload).
pub const FOOTER_BYTES: usize = 8 + FOOTER_PAYLOAD;
/// Uncompressed bytes a data frame aims at.
const FRAME_BYTES: usize = 8 * 1024;
/// zstd's level for data frames: fast, and about as small as higher
/// levels on JSON this repetitive.
const LEVEL: i32 = 3;

/// What went wrong reading a segment: which file, where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: at byte {offset}: {why}", path.display())]
pub struct SegmentError {
    /// The segment.
    pub path: PathBuf,
    /// The byte offset in it.
    pub offset: u64,
    /// What is wrong.
    pub why: String,
}

/// One data frame, as the index has it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Frame {
    /// Its offset in the file.
    pub offset: u64,
    /// Its length on disk.
    pub len: u64,
    /// The seqs of its entries, in the order it holds them.
    pub seqs: Vec<u64>,
    /// The earliest timestamp in it (ms).
    pub min_ts: u64,
    /// The latest.
    pub max_ts: u64,
}

pub use index::{FrameAt, Index};

/// What the footer says, and what sealing needs for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footer {
    /// Where the index frame starts.
    pub index_offset: u64,
    /// Its length.
    pub index_len: u64,
    /// Entries in the segment.
    pub count: u64,
    /// The first entry's seq.
    pub first: u64,
    /// The last's.
    pub last: u64,
    /// The earliest timestamp (ms).
    pub min_ts: u64,
    /// The latest.
    pub max_ts: u64,
    /// RFC 6962 root over the entries' hashes, in seq order.
    pub root: Hash,
    /// SHA-256 of every byte before the footer.
    pub body_sha256: Hash,
}

impl Footer {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FOOTER_BYTES);
        out.extend(FOOTER_MAGIC.to_le_bytes());
        out.extend((FOOTER_PAYLOAD as u32).to_le_bytes());
        for n in [
            self.index_offset,
            self.index_len,
            self.count,
            self.first,
            self.last,
            self.min_ts,
            self.max_ts,
        ] {
            out.extend(n.to_le_bytes());
        }
        out.extend(self.root);
        out.extend(self.body_sha256);
        out.extend(SEGMENT_MAGIC);
        out
    }

    fn decode(b: &[u8]) -> Result<Footer, String> {
        if b.len() != FOOTER_BYTES {
            return Err("the footer is cut short".into());
        }
        if u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) != FOOTER_MAGIC
            || &b[FOOTER_BYTES - 8..] != SEGMENT_MAGIC
        {
            return Err("no segment footer here (truncated, or not a segment)".into());
        }
        let n = |i: usize| u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().expect("8"));
        let hash = |at: usize| -> Hash { b[at..at + 32].try_into().expect("32 bytes") };
        Ok(Footer {
            index_offset: n(0),
            index_len: n(1),
            count: n(2),
            first: n(3),
            last: n(4),
            min_ts: n(5),
            max_ts: n(6),
            root: hash(64),
            body_sha256: hash(96),
        })
    }
}

/// The most a data frame may decompress to: an entry is at most a few
/// MB (a run's whole result), and a frame ends after the entry that
/// passes [`FRAME_BYTES`].
const MAX_FRAME: usize = 256 << 20;

/// Decompress one data frame with this thread's decoder: a decoder made
/// per frame cost more than the frame (its context is ~100 KB to set
/// up), and a query over a long history reads hundreds of frames.
fn decompress(frame: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DECODER: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n as usize <= MAX_FRAME => n as usize,
        _ => {
            return Err(std::io::Error::other(
                "no content size, or one too large, in its header",
            ));
        }
    };
    DECODER.with(|d| {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            empty => empty.insert(zstd::bulk::Decompressor::new()?),
        };
        let out = d.decompress(frame, size)?;
        if out.len() != size {
            return Err(std::io::Error::other("shorter than its header says"));
        }
        Ok(out)
    })
}

/// A skippable frame holding `payload`.
fn skippable(magic: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend(magic.to_le_bytes());
    out.extend((payload.len() as u32).to_le_bytes());
    out.extend(payload);
    out
}

/// The values `e` is found by, per field.
pub fn values(e: &Entry) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut put = |f: &'static str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push((f, v.to_string()));
        }
    };
    put("sender", e.sender.as_deref());
    put("room", e.room.as_deref());
    put("alias", e.alias.as_deref());
    put("action", e.action.as_deref());
    let pack = e
        .alias
        .as_deref()
        .or(e.action.as_deref())
        .and_then(|r| r.split_once('.').map(|(p, _)| p));
    put("pack", pack);
    put("event", Some(e.event.name()));
    put("status", e.status.map(|s| s.name()));
    put("request", e.request.as_deref());
    put("rule", e.rule.as_deref());
    for p in e.deployed_packs() {
        out.push(("deployed", p));
    }
    out
}

/// Write a segment of `entries` (consecutive, oldest first), each with its
/// exact stored bytes, to `out`; returns its footer.
pub fn write(out: &mut impl Write, entries: &[(Entry, Vec<u8>)]) -> std::io::Result<Footer> {
    let mut body: Vec<u8> = Vec::new();
    let (first, last) = (
        entries.first().map_or(0, |e| e.0.seq),
        entries.last().map_or(0, |e| e.0.seq),
    );
    body.extend(skippable(
        HEADER_MAGIC,
        &serde_json::to_vec(&serde_json::json!({
            "format": "airlock audit segment", "version": 1, "first": first, "last": last
        }))
        .expect("json"),
    ));
    let mut index = Index::default();
    let mut leaves = Vec::with_capacity(entries.len());
    let mut frame_text: Vec<u8> = Vec::new();
    let mut frame_meta: Option<Frame> = None;
    let flush = |body: &mut Vec<u8>,
                 text: &mut Vec<u8>,
                 meta: &mut Option<Frame>,
                 index: &mut Index|
     -> std::io::Result<()> {
        if let Some(mut m) = meta.take() {
            let compressed = zstd::bulk::compress(text, LEVEL)?;
            m.offset = body.len() as u64;
            m.len = compressed.len() as u64;
            body.extend(compressed);
            index.frames.push(m);
            text.clear();
        }
        Ok(())
    };
    for (e, _) in entries {
        leaves.push(merkle::leaf_hash(
            &merkle::from_hex(&e.hash).unwrap_or_default(),
        ));
    }
    let mut order: Vec<&(Entry, Vec<u8>)> = entries.iter().collect();
    order.sort_by(|a, b| {
        (a.0.sender.as_deref().unwrap_or(""), a.0.seq)
            .cmp(&(b.0.sender.as_deref().unwrap_or(""), b.0.seq))
    });
    let mut last_sender: Option<&str> = None;
    for (e, bytes) in order {
        // A new sender starts a new frame once the current one is half
        // full: a user's entries share as few frames as they can.
        let sender = e.sender.as_deref();
        if sender != last_sender && frame_text.len() >= FRAME_BYTES / 2 {
            flush(&mut body, &mut frame_text, &mut frame_meta, &mut index)?;
        }
        last_sender = sender;
        let m = frame_meta.get_or_insert(Frame {
            offset: 0,
            len: 0,
            seqs: Vec::new(),
            min_ts: e.ts,
            max_ts: e.ts,
        });
        m.seqs.push(e.seq);
        m.min_ts = m.min_ts.min(e.ts);
        m.max_ts = m.max_ts.max(e.ts);
        let frame_no = index.frames.len() as u32;
        for (field, value) in values(e) {
            let list = index
                .postings
                .entry(field.to_string())
                .or_default()
                .entry(value)
                .or_default();
            if list.last() != Some(&frame_no) {
                list.push(frame_no);
            }
        }
        frame_text.extend(bytes);
        frame_text.push(b'\n');
        if frame_text.len() >= FRAME_BYTES {
            flush(&mut body, &mut frame_text, &mut frame_meta, &mut index)?;
        }
    }
    flush(&mut body, &mut frame_text, &mut frame_meta, &mut index)?;
    let index_frame = skippable(INDEX_MAGIC, &index.encode(first));
    let index_offset = body.len() as u64;
    body.extend(&index_frame);
    let footer = Footer {
        index_offset,
        index_len: index_frame.len() as u64,
        count: entries.len() as u64,
        first,
        last,
        min_ts: entries.iter().map(|e| e.0.ts).min().unwrap_or(0),
        max_ts: entries.iter().map(|e| e.0.ts).max().unwrap_or(0),
        root: merkle::root(&leaves),
        body_sha256: Sha256::digest(&body).into(),
    };
    out.write_all(&body)?;
    out.write_all(&footer.encode())?;
    Ok(footer)
}

/// Where an open segment's index is read from: the file at an offset,
/// or memory (an index of the JSON layout, converted when opened).
#[derive(Debug)]
enum Source {
    File(u64),
    Memory(Vec<u8>),
}

/// An open segment: its footer and its index's head, read and checked for
/// shape; the rest of the index is read where it lies, as needed.
#[derive(Debug)]
pub struct Segment {
    /// Its file.
    pub path: PathBuf,
    /// What its footer says.
    pub footer: Footer,
    head: index::Head,
    source: Source,
    /// Held open: a query reads several frames of each segment.
    file: std::fs::File,
}

impl Segment {
    fn error(path: &Path, offset: u64, why: impl Into<String>) -> SegmentError {
        SegmentError {
            path: path.to_path_buf(),
            offset,
            why: why.into(),
        }
    }

    /// Open `path`: read the footer and the index's head (no data frame,
    /// no posting list).
    pub fn open(path: &Path) -> Result<Segment, SegmentError> {
        use std::os::unix::fs::FileExt;
        let err = |offset, why: String| Self::error(path, offset, why);
        let f = std::fs::File::open(path).map_err(|e| err(0, e.to_string()))?;
        let size = f.metadata().map_err(|e| err(0, e.to_string()))?.len();
        if size < FOOTER_BYTES as u64 {
            return Err(err(0, format!("{size} bytes: too short for a segment")));
        }
        let footer_at = size - FOOTER_BYTES as u64;
        let mut fb = vec![0u8; FOOTER_BYTES];
        f.read_exact_at(&mut fb, footer_at)
            .map_err(|e| err(footer_at, e.to_string()))?;
        let footer = Footer::decode(&fb).map_err(|w| err(footer_at, w))?;
        if footer.index_offset.checked_add(footer.index_len) != Some(footer_at)
            || footer.index_len < (8 + index::PREFIX) as u64
        {
            return Err(err(
                footer_at,
                format!(
                    "the footer puts the index at {}+{}, which does not end where the footer starts",
                    footer.index_offset, footer.index_len
                ),
            ));
        }
        let span = footer.last.saturating_sub(footer.first) + 1;
        if (footer.count > 0 && footer.count != span) || footer.count > 1 << 32 {
            return Err(err(
                footer_at,
                "the footer's count and range disagree".into(),
            ));
        }
        let at = footer.index_offset;
        let mut head = [0u8; 8 + index::PREFIX];
        f.read_exact_at(&mut head, at)
            .map_err(|e| err(at, e.to_string()))?;
        if u32::from_le_bytes(head[0..4].try_into().expect("4")) != INDEX_MAGIC
            || u64::from(u32::from_le_bytes(head[4..8].try_into().expect("4")))
                != footer.index_len - 8
        {
            return Err(err(at, "no index frame here".into()));
        }
        let len = (footer.index_len - 8) as usize;
        let prefix = head[8..].try_into().expect("prefix");
        let (source, head_len) = match index::prefix(prefix).map_err(|w| err(at, w))? {
            Some(head_len) => (Source::File(at + 8), head_len),
            None => {
                let mut json = vec![0u8; len];
                f.read_exact_at(&mut json, at + 8)
                    .map_err(|e| err(at, e.to_string()))?;
                let bytes = index::from_json(&json, footer.first).map_err(|w| err(at, w))?;
                let head_len = index::prefix(bytes[..index::PREFIX].try_into().expect("prefix"))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (Source::Memory(bytes), head_len)
            }
        };
        let mut s = Segment {
            path: path.to_path_buf(),
            footer,
            head: index::Head::default(),
            source,
            file: f,
        };
        let len = match &s.source {
            Source::Memory(b) => b.len(),
            Source::File(..) => len,
        };
        let raw = s.index_bytes(index::PREFIX..index::PREFIX.saturating_add(head_len))?;
        s.head = index::Head::decode(&raw, len).map_err(|w| err(at, w))?;
        let mut end = 0;
        let mut count = 0;
        for fr in &s.head.frames {
            if fr.offset < end
                || fr
                    .offset
                    .checked_add(fr.len)
                    .is_none_or(|e| e > s.footer.index_offset)
            {
                return Err(err(
                    fr.offset,
                    "the index's frames overlap or run past it".into(),
                ));
            }
            end = fr.offset + fr.len;
            count += (fr.seqs.len() / 4) as u64;
        }
        if count != s.footer.count {
            return Err(err(at, "the index's frames do not cover the range".into()));
        }
        Ok(s)
    }

    /// Bytes `r` of the index (counted from its magic).
    fn index_bytes(&self, r: std::ops::Range<usize>) -> Result<Vec<u8>, SegmentError> {
        use std::os::unix::fs::FileExt;
        match &self.source {
            Source::Memory(b) => b.get(r.clone()).map(<[u8]>::to_vec).ok_or_else(|| {
                Self::error(
                    &self.path,
                    self.footer.index_offset,
                    "the index is cut short",
                )
            }),
            Source::File(at) => {
                let mut buf = vec![0u8; r.len()];
                let offset = at + r.start as u64;
                self.file
                    .read_exact_at(&mut buf, offset)
                    .map_err(|e| Self::error(&self.path, offset, e.to_string()))?;
                Ok(buf)
            }
        }
    }

    /// Its data frames, in file order.
    pub fn frames(&self) -> &[index::FrameAt] {
        &self.head.frames
    }

    /// Check the file's bytes against the footer's SHA-256.
    pub fn verify_hash(&self) -> Result<(), SegmentError> {
        let mut f = std::fs::File::open(&self.path)
            .map_err(|e| Self::error(&self.path, 0, e.to_string()))?;
        let body_len = self.footer.index_offset + self.footer.index_len;
        let mut h = Sha256::new();
        let mut left = body_len;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            f.read_exact(&mut buf[..n])
                .map_err(|e| Self::error(&self.path, body_len - left, e.to_string()))?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let got: Hash = h.finalize().into();
        if got != self.footer.body_sha256 {
            return Err(Self::error(
                &self.path,
                0,
                "its bytes do not match the SHA-256 in its footer (changed or damaged)",
            ));
        }
        Ok(())
    }

    /// The entries of frame `i`: `(seq, stored bytes)`.
    pub fn frame(&self, i: usize) -> Result<Vec<(u64, Vec<u8>)>, SegmentError> {
        use std::os::unix::fs::FileExt;
        let fr = self
            .head
            .frames
            .get(i)
            .ok_or_else(|| Self::error(&self.path, 0, format!("no frame {i}")))?;
        let err = |why: String| Self::error(&self.path, fr.offset, why);
        let seqs =
            index::seqs(&self.index_bytes(fr.seqs.clone())?, self.footer.first).map_err(err)?;
        if seqs
            .iter()
            .any(|s| *s < self.footer.first || *s > self.footer.last)
        {
            return Err(err("the index places an entry outside the segment".into()));
        }
        let mut buf = vec![0u8; fr.len as usize];
        self.file
            .read_exact_at(&mut buf, fr.offset)
            .map_err(|e| err(e.to_string()))?;
        let text =
            decompress(&buf).map_err(|e| err(format!("a data frame does not decompress: {e}")))?;
        let lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if lines.len() != seqs.len() {
            return Err(err(format!(
                "a data frame holds {} entries where the index says {}",
                lines.len(),
                seqs.len()
            )));
        }
        Ok(seqs
            .into_iter()
            .zip(lines)
            .map(|(seq, l)| (seq, l.to_vec()))
            .collect())
    }

    /// The frame holding entry `seq`, and its line there: one read of
    /// every frame's seqs, searched (a single entry is read seldom).
    pub fn frame_of(&self, seq: u64) -> Option<(usize, usize)> {
        let raw = self.index_bytes(self.head.seqs.clone()).ok()?;
        let want = u32::try_from(seq.checked_sub(self.footer.first)?).ok()?;
        let start = self.head.seqs.start;
        self.head.frames.iter().enumerate().find_map(|(f, fr)| {
            let mine =
                raw.get(fr.seqs.start.checked_sub(start)?..fr.seqs.end.checked_sub(start)?)?;
            let line = mine
                .chunks_exact(4)
                .position(|b| u32::from_le_bytes(b.try_into().expect("4")) == want)?;
            Some((f, line))
        })
    }

    /// The smallest seq in each frame, in file order: one read of every
    /// frame's seqs, for a page far back to skip the frames wholly past
    /// its bound. A frame whose seqs cannot be read says 0, so it is read
    /// and its error reported there.
    pub fn frame_min_seqs(&self) -> Result<Vec<u64>, SegmentError> {
        let raw = self.index_bytes(self.head.seqs.clone())?;
        let start = self.head.seqs.start;
        Ok(self
            .head
            .frames
            .iter()
            .map(|fr| {
                fr.seqs
                    .start
                    .checked_sub(start)
                    .zip(fr.seqs.end.checked_sub(start))
                    .and_then(|(a, b)| raw.get(a..b))
                    .and_then(|mine| {
                        mine.chunks_exact(4)
                            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
                            .min()
                    })
                    .map_or(0, |d| self.footer.first + u64::from(d))
            })
            .collect())
    }

    /// Every entry, in seq order.
    pub fn all(&self) -> Result<Vec<(u64, Vec<u8>)>, SegmentError> {
        let mut out = Vec::with_capacity(self.footer.count as usize);
        for i in 0..self.head.frames.len() {
            out.extend(self.frame(i)?);
        }
        out.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(out)
    }

    /// The frames where `field` has `value` (empty: nowhere), each one
    /// this segment has.
    pub fn postings(&self, field: &str, value: &str) -> Result<Vec<u32>, SegmentError> {
        let Some((n, section)) = self.head.section(field) else {
            return Ok(Vec::new());
        };
        // Read in pieces, each within the section; an unreadable piece
        // finds nothing, and the frames a list names are checked below.
        let mut failed = None;
        let mut list = index::lookup_in(n, value, &mut |r| {
            if r.end > section.len() {
                return None;
            }
            let at = section.start + r.start..section.start + r.end;
            self.index_bytes(at).map_err(|e| failed = Some(e)).ok()
        });
        if let Some(e) = failed {
            return Err(e);
        }
        list.retain(|f| (*f as usize) < self.head.frames.len());
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Event;

    /// `n` chained entries from `first`, as the log would hold them.
    pub(crate) fn entries(first: u64, n: u64) -> Vec<(Entry, Vec<u8>)> {
        let mut prev = String::new();
        (first..first + n)
            .map(|seq| {
                let mut e = Entry::new(Event::Received, 1_700_000_000_000 + seq)
                    .sender(if seq % 3 == 0 { "@alice:x" } else { "@bob:x" })
                    .room("!r:x")
                    .detail(serde_json::json!({"command": format!("ping {seq} ünïcode \" {{")}));
                e.seq = seq;
                e.prev = std::mem::take(&mut prev);
                let bytes = e.seal();
                prev = e.hash.clone();
                (e, bytes)
            })
            .collect()
    }

    fn sealed(dir: &Path, n: u64) -> (PathBuf, Vec<(Entry, Vec<u8>)>) {
        let es = entries(1, n);
        let path = dir.join("seg");
        let mut f = std::fs::File::create(&path).unwrap();
        write(&mut f, &es).unwrap();
        (path, es)
    }

    #[test]
    fn a_segment_reads_back_every_entry_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, es) = sealed(tmp.path(), 2_000);
        let s = Segment::open(&path).unwrap();
        s.verify_hash().unwrap();
        assert_eq!(
            (s.footer.first, s.footer.last, s.footer.count),
            (1, 2_000, 2_000)
        );
        assert!(s.frames().len() > 1, "{:?}", s.frames().len());
        let all = s.all().unwrap();
        assert_eq!(all.len(), es.len());
        for ((seq, bytes), (e, stored)) in all.iter().zip(&es) {
            assert_eq!((*seq, bytes), (e.seq, stored));
        }
        // Grouped by sender: alice's third of the entries fill about a
        // third of the frames, none shared with bob's.
        let alice = s.postings("sender", "@alice:x").unwrap();
        let bob = s.postings("sender", "@bob:x").unwrap();
        assert!(
            alice.len() * 2 < s.frames().len(),
            "{} of {}",
            alice.len(),
            s.frames().len()
        );
        assert!(alice.len() + bob.len() <= s.frames().len() + 1);
        assert!(s.postings("sender", "@nobody:x").unwrap().is_empty());
        // Each frame's smallest seq, as its entries say.
        let mins: Vec<u64> = (0..s.frames().len())
            .map(|i| {
                s.frame(i)
                    .unwrap()
                    .iter()
                    .map(|(seq, _)| *seq)
                    .min()
                    .unwrap()
            })
            .collect();
        assert_eq!(s.frame_min_seqs().unwrap(), mins);
        assert!(mins.iter().any(|m| *m > 1_000), "{mins:?}");
        let (f, l) = s.frame_of(3).unwrap();
        assert_eq!(s.frame(f).unwrap()[l].0, 3);
        assert_eq!(s.frame_of(2_001), None);
        let leaves: Vec<Hash> = es
            .iter()
            .map(|(e, _)| merkle::leaf_hash(&merkle::from_hex(&e.hash).unwrap()))
            .collect();
        assert_eq!(s.footer.root, merkle::root(&leaves));
    }

    #[test]
    fn a_changed_byte_is_found_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, _) = sealed(tmp.path(), 300);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let s = Segment::open(&path).unwrap();
        let e = s.verify_hash().unwrap_err();
        assert!(
            e.to_string().contains("seg") && e.to_string().contains("SHA-256"),
            "{e}"
        );
        // Truncated: no footer.
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let e = Segment::open(&path).unwrap_err();
        assert!(e.to_string().contains("no segment footer"), "{e}");
    }
}
