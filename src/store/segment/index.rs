//! A segment's index in a binary layout read in pieces, where it lies.
//!
//! A query over a year of history opens the index of every segment it
//! cannot skip, so opening one must cost little. The first layout (JSON,
//! zstd-compressed) was decompressed and parsed whole, every request id of
//! the segment allocated, to look up one sender: 5 ms a segment, and one
//! user's 10,000 entries across 62 segments took 312 ms. In this one,
//! opening reads only the head (the frames' places and time ranges, and
//! where each field's postings lie); a posting list is read when a query
//! names its field, and found by binary search over the field's sorted
//! values; a frame's seqs are read when the frame is.
//!
//! ```text
//! "AIRLIX02", u32 head length
//! head: u32 frames; per frame u64 offset, u64 len, u64 min_ts, u64 max_ts,
//!           u32 seqs at, u32 seqs
//!       u32 fields; per field u16 name length, name, u32 values,
//!           u32 section at, u32 section length
//! seqs: per frame its entries' (seq − first) as u32, in the frame's order
//! sections: per field values × (u32 value at, u32 value length,
//!           u32 postings at, u32 postings), then the values' bytes
//!           (sorted) and the posting lists (u32 frame numbers)
//! ```
//!
//! All integers are little-endian; every "at" counts from the magic.
//! Segments sealed with the JSON layout are still read: their index is
//! converted into this one, in memory, when opened.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::Frame;

/// The first bytes of an index in this layout.
const MAGIC: &[u8; 8] = b"AIRLIX02";
/// The first bytes of a zstd frame: an index in the JSON layout.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// One value's entry in a field's directory.
const DIR_ENTRY: usize = 16;
/// One frame in the head.
const FRAME_ENTRY: usize = 40;
/// Magic and head length.
pub const PREFIX: usize = 12;

/// A segment's index as the writer builds it (and as the JSON layout
/// stored it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Index {
    /// Data frames in order.
    pub frames: Vec<Frame>,
    /// Per field, per value, the frames (indexes into `frames`) it is in.
    pub postings: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
}

fn put32(out: &mut Vec<u8>, n: usize) {
    out.extend((n as u32).to_le_bytes());
}

impl Index {
    /// The binary layout of this index; `first` is the segment's first seq.
    pub fn encode(&self, first: u64) -> Vec<u8> {
        let names: Vec<&String> = self.postings.keys().collect();
        let head_len = 4
            + self.frames.len() * FRAME_ENTRY
            + 4
            + names.iter().map(|n| 2 + n.len() + 12).sum::<usize>();
        let mut at = PREFIX + head_len;
        let mut head = Vec::with_capacity(head_len);
        let mut seqs = Vec::new();
        put32(&mut head, self.frames.len());
        for f in &self.frames {
            for n in [f.offset, f.len, f.min_ts, f.max_ts] {
                head.extend(n.to_le_bytes());
            }
            put32(&mut head, at + seqs.len());
            put32(&mut head, f.seqs.len());
            for s in &f.seqs {
                put32(&mut seqs, (s - first) as usize);
            }
        }
        at += seqs.len();
        put32(&mut head, names.len());
        let mut sections = Vec::new();
        for (field, values) in &self.postings {
            let mut dir = Vec::with_capacity(values.len() * DIR_ENTRY);
            let mut blob = Vec::new();
            for (value, frames) in values {
                put32(&mut dir, blob.len());
                put32(&mut dir, value.len());
                blob.extend(value.as_bytes());
                put32(&mut dir, blob.len());
                put32(&mut dir, frames.len());
                for f in frames {
                    put32(&mut blob, *f as usize);
                }
            }
            head.extend((field.len() as u16).to_le_bytes());
            head.extend(field.as_bytes());
            put32(&mut head, values.len());
            put32(&mut head, at + sections.len());
            put32(&mut head, dir.len() + blob.len());
            sections.extend(dir);
            sections.extend(blob);
        }
        let mut out = MAGIC.to_vec();
        put32(&mut out, head.len());
        out.extend(head);
        out.extend(seqs);
        out.extend(sections);
        out
    }
}

/// A cursor whose every read is checked.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| format!("the index's head is cut short at its byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Where a data frame is and what it spans, and where its seqs lie.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameAt {
    /// Its offset in the file.
    pub offset: u64,
    /// Its length on disk.
    pub len: u64,
    /// The earliest timestamp in it (ms).
    pub min_ts: u64,
    /// The latest.
    pub max_ts: u64,
    /// Its seqs in the index (bytes from the magic), 4 bytes each.
    pub(super) seqs: Range<usize>,
}

/// An index's head: the frames, and per field its count and section.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// The data frames, in file order.
    pub frames: Vec<FrameAt>,
    fields: Vec<(String, usize, Range<usize>)>,
    /// Where the seqs of every frame lie, together.
    pub(super) seqs: Range<usize>,
}

/// What the index's first bytes say: the head's length, or that it is an
/// index in the JSON layout (converted by [`from_json`]).
pub fn prefix(b: &[u8; PREFIX]) -> Result<Option<usize>, String> {
    if b[..4] == ZSTD_MAGIC {
        return Ok(None);
    }
    if &b[..8] != MAGIC {
        return Err("the index is in no layout this airlock reads".into());
    }
    Ok(Some(
        u32::from_le_bytes(b[8..12].try_into().expect("4")) as usize
    ))
}

/// A JSON-layout index (zstd-compressed), in this layout.
pub fn from_json(payload: &[u8], first: u64) -> Result<Vec<u8>, String> {
    let json = zstd::bulk::decompress(payload, 64 << 20)
        .map_err(|e| format!("the index does not decompress: {e}"))?;
    let old: Index =
        serde_json::from_slice(&json).map_err(|e| format!("the index does not parse: {e}"))?;
    if old.frames.iter().flat_map(|f| &f.seqs).any(|s| *s < first) {
        return Err("the index places an entry before the segment".into());
    }
    Ok(old.encode(first))
}

impl Head {
    /// Read a head (the bytes after the prefix) of an index `len` bytes
    /// long.
    pub fn decode(head: &[u8], len: usize) -> Result<Head, String> {
        let mut c = Cursor { b: head, at: 0 };
        let within = |r: &Range<usize>| r.start <= r.end && r.end <= len;
        let nframes = c.u32()? as usize;
        let mut frames = Vec::with_capacity(nframes.min(head.len() / FRAME_ENTRY));
        for _ in 0..nframes {
            let (offset, len_, min_ts, max_ts) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?);
            let (at, n) = (c.u32()? as usize, c.u32()? as usize);
            let seqs = at..at.saturating_add(n.saturating_mul(4));
            if !within(&seqs) {
                return Err(format!(
                    "the head puts a frame's seqs at {seqs:?}, outside the index"
                ));
            }
            frames.push(FrameAt {
                offset,
                len: len_,
                min_ts,
                max_ts,
                seqs,
            });
        }
        let nfields = c.u32()? as usize;
        let mut fields = Vec::new();
        for _ in 0..nfields {
            let name_len = c.u16()? as usize;
            let name = String::from_utf8_lossy(c.take(name_len)?).into_owned();
            let n = c.u32()? as usize;
            let (at, section_len) = (c.u32()? as usize, c.u32()? as usize);
            let section = at..at.saturating_add(section_len);
            if !within(&section) || n.saturating_mul(DIR_ENTRY) > section_len {
                return Err(format!(
                    "the head puts field {name}'s postings outside the index"
                ));
            }
            fields.push((name, n, section));
        }
        if c.at != head.len() {
            return Err(format!(
                "the head has {} bytes after its end",
                head.len() - c.at
            ));
        }
        let start = frames.first().map_or(PREFIX + head.len(), |f| f.seqs.start);
        let end = frames.last().map_or(start, |f| f.seqs.end);
        Ok(Head {
            frames,
            fields,
            seqs: start..end.max(start),
        })
    }

    /// The section of `field`'s postings, and how many values it has.
    pub fn section(&self, field: &str) -> Option<(usize, Range<usize>)> {
        self.fields
            .iter()
            .find(|f| f.0 == field)
            .map(|f| (f.1, f.2.clone()))
    }
}

/// In a field's section (`n` values), the frames where it has `value`
/// (empty: nowhere; a damaged section yields nothing for the values it
/// cannot address). `read(r)` gives bytes `r` of the section (None past
/// its end): a search touches a dozen entries of a section that can be
/// hundreds of KiB (a segment's request ids), and reading it whole for
/// each value looked up was a tenth of a request page's time.
pub fn lookup_in(
    n: usize,
    value: &str,
    read: &mut dyn FnMut(Range<usize>) -> Option<Vec<u8>>,
) -> Vec<u32> {
    let Some(blob) = n.checked_mul(DIR_ENTRY) else {
        return Vec::new();
    };
    let mut entry = |i: usize| -> Option<(Vec<u8>, usize, usize)> {
        let d = read(i * DIR_ENTRY..(i + 1) * DIR_ENTRY)?;
        let (vat, vlen) = (u32_at(&d, 0)? as usize, u32_at(&d, 4)? as usize);
        let (pat, pn) = (u32_at(&d, 8)? as usize, u32_at(&d, 12)? as usize);
        let v = blob.checked_add(vat)?;
        Some((read(v..v.checked_add(vlen)?)?, pat, pn))
    };
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let Some((v, pat, pn)) = entry(mid) else {
            return Vec::new();
        };
        match v.as_slice().cmp(value.as_bytes()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => {
                let list = blob
                    .checked_add(pat)
                    .and_then(|at| Some(at..at.checked_add(pn.checked_mul(4)?)?))
                    .and_then(&mut *read);
                return list.map_or_else(Vec::new, |l| {
                    l.chunks_exact(4)
                        .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
                        .collect()
                });
            }
        }
    }
    Vec::new()
}

/// Seqs stored as (seq − first), 4 bytes each.
pub fn seqs(raw: &[u8], first: u64) -> Result<Vec<u64>, String> {
    raw.chunks_exact(4)
        .map(|b| {
            first
                .checked_add(u64::from(u32::from_le_bytes(b.try_into().expect("4"))))
                .ok_or_else(|| "the index places an entry past the last seq".to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        let mut postings: BTreeMap<String, BTreeMap<String, Vec<u32>>> = BTreeMap::new();
        for (i, user) in ["@b:x", "@a:x", "@c:x", "@ü:x"].iter().enumerate() {
            postings
                .entry("sender".into())
                .or_default()
                .insert(user.to_string(), vec![i as u32, 1]);
        }
        postings
            .entry("status".into())
            .or_default()
            .insert("succeeded".into(), vec![0]);
        Index {
            frames: (0..2)
                .map(|f| Frame {
                    offset: 10 + f * 100,
                    len: 100,
                    seqs: vec![100 + f, 102 + f],
                    min_ts: 5,
                    max_ts: 9,
                })
                .collect(),
            postings,
        }
    }

    /// Per frame its offset and seqs; per (field, value) found its frames.
    type Read = (Vec<(u64, Vec<u64>)>, Vec<(String, String, Vec<u32>)>);

    /// Everything an index says, read back from its bytes as a segment
    /// reads it.
    fn read(b: &[u8], first: u64) -> Result<Read, String> {
        let p: [u8; PREFIX] = b.get(..PREFIX).ok_or("short")?.try_into().unwrap();
        let head_len = prefix(&p)?.ok_or("json")?;
        let head = Head::decode(b.get(PREFIX..PREFIX + head_len).ok_or("short")?, b.len())?;
        let frames = head
            .frames
            .iter()
            .map(|f| Ok((f.offset, seqs(&b[f.seqs.clone()], first)?)))
            .collect::<Result<_, String>>()?;
        let mut found = Vec::new();
        for field in ["sender", "status", "room"] {
            for v in ["@a:x", "@b:x", "@c:x", "@ü:x", "succeeded", "zzz", ""] {
                if let Some((n, r)) = head.section(field) {
                    let section = &b[r];
                    let list = lookup_in(n, v, &mut |x| section.get(x).map(<[u8]>::to_vec));
                    if !list.is_empty() {
                        found.push((field.to_string(), v.to_string(), list));
                    }
                }
            }
        }
        Ok((frames, found))
    }

    #[test]
    fn every_posting_list_is_found_by_its_value_and_no_other() {
        let ix = index();
        let (frames, found) = read(&ix.encode(100), 100).unwrap();
        let want: Vec<(u64, Vec<u64>)> = ix
            .frames
            .iter()
            .map(|f| (f.offset, f.seqs.clone()))
            .collect();
        assert_eq!(frames, want);
        let mut expected: Vec<(String, String, Vec<u32>)> = Vec::new();
        for (field, values) in &ix.postings {
            for (v, list) in values {
                expected.push((field.clone(), v.clone(), list.clone()));
            }
        }
        expected.sort();
        let mut found = found;
        found.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn the_json_layout_is_still_read() {
        let ix = index();
        let json = zstd::bulk::compress(&serde_json::to_vec(&ix).unwrap(), 3).unwrap();
        assert_eq!(prefix(&json[..PREFIX].try_into().unwrap()), Ok(None));
        let (frames, found) = read(&from_json(&json, 100).unwrap(), 100).unwrap();
        assert_eq!(frames[1], (110, vec![101, 103]));
        assert!(found.contains(&("sender".into(), "@ü:x".into(), vec![3, 1])));
    }

    #[test]
    fn a_damaged_index_errs_or_finds_less_and_never_panics() {
        let good = index().encode(100);
        for cut in 0..good.len() {
            // Cut short, an index errs or (cut in its postings) finds less.
            if let Ok((_, found)) = read(&good[..cut], 100) {
                assert!(found.len() < 5, "cut at {cut}");
            }
        }
        for at in 0..good.len() {
            for bit in [0x01, 0x80, 0xff] {
                let mut b = good.clone();
                b[at] ^= bit;
                let _ = read(&b, 100);
            }
        }
    }
}
