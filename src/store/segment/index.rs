//! A segment's index in a binary layout that is read in place.
//!
//! A query over a year of history opens the index of every segment it
//! cannot skip, so opening one must cost little: the first layout (JSON,
//! zstd-compressed) was decompressed and parsed whole, every request id
//! of the segment allocated, to look up one sender (5 ms a segment; one
//! user's 10,000 entries across 62 segments took 312 ms). This layout is
//! stored uncompressed and read with one `read`; the frames are parsed,
//! and a posting list is found by binary search over its field's sorted
//! values without allocating any of them.
//!
//! ```text
//! "AIRLIX02"
//! u32 frames; per frame: u64 offset, u64 len, u64 min_ts, u64 max_ts,
//!     u32 n, then n × u32 (seq − first), in the order the frame holds them
//! u32 fields; per field: u16 name length, name, u32 values, u32 blob length,
//!     values × (u32 value at, u32 value length, u32 postings at, u32 postings),
//!     blob: the values' bytes (sorted), the posting lists (u32 frame numbers)
//! ```
//!
//! All integers are little-endian. Segments sealed with the JSON layout
//! are still read: their index is converted into this one at open.

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

/// A segment's index as the writer builds it (and as the JSON layout
/// stored it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Index {
    /// Data frames in order.
    pub frames: Vec<Frame>,
    /// Per field, per value, the frames (indexes into `frames`) it is in.
    pub postings: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
}

impl Index {
    /// The binary layout of this index; `first` is the segment's first seq.
    pub fn encode(&self, first: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put32(&mut out, self.frames.len());
        for f in &self.frames {
            for n in [f.offset, f.len, f.min_ts, f.max_ts] {
                out.extend(n.to_le_bytes());
            }
            put32(&mut out, f.seqs.len());
            for s in &f.seqs {
                put32(&mut out, (s - first) as usize);
            }
        }
        put32(&mut out, self.postings.len());
        for (field, values) in &self.postings {
            out.extend((field.len() as u16).to_le_bytes());
            out.extend(field.as_bytes());
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
            put32(&mut out, values.len());
            put32(&mut out, blob.len());
            out.extend(dir);
            out.extend(blob);
        }
        out
    }
}

fn put32(out: &mut Vec<u8>, n: usize) {
    out.extend((n as u32).to_le_bytes());
}

/// A cursor over the index's bytes whose every read is checked.
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
            .ok_or_else(|| format!("the index is cut short at its byte {}", self.at))?;
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

/// The posting lists of an opened segment, searched in place.
#[derive(Debug, Clone, Default)]
pub struct Postings {
    bytes: Vec<u8>,
    /// Per field: its name, its values' count, its directory and its blob.
    fields: Vec<(String, usize, Range<usize>, Range<usize>)>,
}

impl Postings {
    /// The frames where `field` has `value` (empty: nowhere). A damaged
    /// list yields what it can address: the frames it names are checked
    /// against the frame count by the caller.
    pub fn get(&self, field: &str, value: &str) -> Vec<u32> {
        let Some((_, n, dir, blob)) = self.fields.iter().find(|f| f.0 == field) else {
            return Vec::new();
        };
        let (dir, blob) = (&self.bytes[dir.clone()], &self.bytes[blob.clone()]);
        let entry = |i: usize| -> Option<(&[u8], usize, usize)> {
            let e = i * DIR_ENTRY;
            let (vat, vlen) = (u32_at(dir, e)? as usize, u32_at(dir, e + 4)? as usize);
            let (pat, pn) = (u32_at(dir, e + 8)? as usize, u32_at(dir, e + 12)? as usize);
            Some((blob.get(vat..vat.checked_add(vlen)?)?, pat, pn))
        };
        let (mut lo, mut hi) = (0, *n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some((v, pat, pn)) = entry(mid) else {
                return Vec::new();
            };
            match v.cmp(value.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return (0..pn).map_while(|k| u32_at(blob, pat + 4 * k)).collect();
                }
            }
        }
        Vec::new()
    }
}

/// Read an index frame's payload: its frames and its postings. `first`
/// is the segment's first seq; errors say what is wrong, for the caller
/// to place at the index's offset.
pub fn decode(payload: Vec<u8>, first: u64) -> Result<(Vec<Frame>, Postings), String> {
    if payload.starts_with(&ZSTD_MAGIC) {
        let json = zstd::bulk::decompress(&payload, 64 << 20)
            .map_err(|e| format!("the index does not decompress: {e}"))?;
        let old: Index =
            serde_json::from_slice(&json).map_err(|e| format!("the index does not parse: {e}"))?;
        if old.frames.iter().flat_map(|f| &f.seqs).any(|s| *s < first) {
            return Err("the index places an entry before the segment".into());
        }
        return decode(old.encode(first), first);
    }
    let mut c = Cursor { b: &payload, at: 0 };
    if c.take(MAGIC.len())? != MAGIC {
        return Err("the index is in no layout this airlock reads".into());
    }
    let nframes = c.u32()? as usize;
    let mut frames = Vec::with_capacity(nframes.min(payload.len() / 36));
    for _ in 0..nframes {
        let (offset, len, min_ts, max_ts) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?);
        let n = c.u32()? as usize;
        let raw = c.take(n.checked_mul(4).ok_or("the index is damaged")?)?;
        let seqs = raw
            .chunks_exact(4)
            .map(|b| first.checked_add(u64::from(u32::from_le_bytes(b.try_into().expect("4")))))
            .collect::<Option<Vec<u64>>>()
            .ok_or("the index places an entry past the last seq")?;
        frames.push(Frame {
            offset,
            len,
            seqs,
            min_ts,
            max_ts,
        });
    }
    let nfields = c.u32()? as usize;
    let mut fields = Vec::new();
    for _ in 0..nfields {
        let name_len = c.u16()? as usize;
        let name = String::from_utf8_lossy(c.take(name_len)?).into_owned();
        let (n, blob_len) = (c.u32()? as usize, c.u32()? as usize);
        let dir_start = c.at;
        c.take(n.checked_mul(DIR_ENTRY).ok_or("the index is damaged")?)?;
        let blob_start = c.at;
        c.take(blob_len)?;
        fields.push((name, n, dir_start..blob_start, blob_start..c.at));
    }
    if c.at != payload.len() {
        return Err(format!(
            "the index has {} bytes after its end",
            payload.len() - c.at
        ));
    }
    Ok((
        frames,
        Postings {
            bytes: payload,
            fields,
        },
    ))
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

    #[test]
    fn every_posting_list_is_found_by_its_value_and_no_other() {
        let ix = index();
        let (frames, postings) = decode(ix.encode(100), 100).unwrap();
        assert_eq!(frames, ix.frames);
        for (field, values) in &ix.postings {
            for (v, list) in values {
                assert_eq!(&postings.get(field, v), list, "{field} {v}");
            }
        }
        assert!(postings.get("sender", "@d:x").is_empty());
        assert!(postings.get("sender", "").is_empty());
        assert!(postings.get("room", "@a:x").is_empty());
    }

    #[test]
    fn the_json_layout_is_still_read() {
        let ix = index();
        let json = zstd::bulk::compress(&serde_json::to_vec(&ix).unwrap(), 3).unwrap();
        let (frames, postings) = decode(json, 100).unwrap();
        assert_eq!(frames, ix.frames);
        assert_eq!(postings.get("sender", "@ü:x"), vec![3, 1]);
    }

    #[test]
    fn a_damaged_index_errs_or_finds_less_and_never_panics() {
        let good = index().encode(100);
        for cut in 0..good.len() {
            assert!(decode(good[..cut].to_vec(), 100).is_err(), "cut at {cut}");
        }
        for at in 0..good.len() {
            for bit in [0x01, 0x80, 0xff] {
                let mut b = good.clone();
                b[at] ^= bit;
                if let Ok((_, p)) = decode(b, 100) {
                    for v in ["@a:x", "@b:x", "@c:x", "@ü:x", "zzz"] {
                        p.get("sender", v);
                    }
                }
            }
        }
    }
}
