//! How the unsealed log packs entries into sled values. sled keeps a
//! record of every page for the life of the process, so a key per entry
//! or per posting would grow the bot's memory with its history: entries,
//! copies by sender and posting lists are packed into chunks of a few
//! KiB instead, each keyed by its first seq.

use crate::store::kv::{self, Batch, Bytes, Tree};

use super::AuditError;

/// The prefix of the log's chunks of entries.
pub(super) const CHUNK: &[u8] = b"c";

/// The key of the chunk of entries that starts at `seq`.
pub(super) fn chunk_key(seq: u64) -> [u8; 9] {
    let mut k = [CHUNK[0]; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq in the last 8 bytes of a key (an entry's, a copy's) or of
/// a stored seq (the watermark, a posting).
pub(super) fn key_seq(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A posting chunk grows to this many bytes (128 seqs) before the next
/// starts. sled keeps a record of every page for the life of the process
/// (and rebuilds it at every start), a page holding at most 16 keys: a
/// chunk per (field, value) per append was three quarters of the keys a
/// command wrote, and the bot's memory grew with them.
pub(super) const CHUNK_BYTES: usize = 1024;

/// A chunk of entries (the log's, a sender's copies) grows to about this
/// many bytes, a few entries, before the next starts, for the same
/// reason: a key per entry and per copy were ten keys a command. Each
/// append rewrites the newest chunk, and sled rewrites whole pages, so a
/// bigger chunk costs disk: measured over 30,000 commands, 2 KiB chunks
/// took 1,030 MB on disk and 11 MiB at the next start, 4 KiB 1,185 MB and
/// 10 MiB, a key each 704 MB and 31 MiB.
pub(super) const ENTRY_CHUNK_BYTES: usize = 2048;

/// An entry as a chunk holds it: seq, length, its stored bytes.
pub(super) fn framed(seq: u64, bytes: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(12 + bytes.len());
    r.extend_from_slice(&seq.to_be_bytes());
    r.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    r.extend_from_slice(bytes);
    r
}

/// The entries in `chunk`: (seq, where its bytes lie), oldest first; None
/// if the chunk does not parse (cut or altered).
pub(super) fn framed_in(chunk: &[u8]) -> Option<Vec<(u64, std::ops::Range<usize>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        let head = chunk.get(at..at + 12)?;
        let seq = u64::from_be_bytes(head[..8].try_into().ok()?);
        let len = u32::from_be_bytes(head[8..].try_into().ok()?) as usize;
        let body = at + 12..at + 12 + len;
        chunk.get(body.clone())?;
        out.push((seq, body.clone()));
        at = body.end;
    }
    Some(out)
}

/// Add `records` (seq, bytes; in seq order) to the chunks under `prefix`:
/// to the newest while it is under `cap` bytes, then to new ones keyed by
/// their first seq.
pub(super) fn add_to_chunks(
    tree: &Tree,
    batch: &mut Batch,
    prefix: &[u8],
    records: &[(u64, Vec<u8>)],
    cap: usize,
) -> kv::Result<()> {
    let newest = tree.scan_prefix(prefix).next_back().transpose()?;
    let mut open = newest
        .filter(|(_, old)| old.len() < cap)
        .map(|(key, old)| (key.to_vec(), old.to_vec()));
    for (seq, record) in records {
        let chunk = match open.as_mut() {
            Some((_, bytes)) if bytes.len() < cap => bytes,
            _ => {
                if let Some((key, bytes)) = open.take() {
                    batch.insert(key, bytes);
                }
                let mut key = prefix.to_vec();
                key.extend_from_slice(&seq.to_be_bytes());
                &mut open.insert((key, Vec::new())).1
            }
        };
        chunk.extend_from_slice(record);
    }
    if let Some((key, bytes)) = open {
        batch.insert(key, bytes);
    }
    Ok(())
}

/// An entry as stored: its seq, the chunk that holds it, where its bytes
/// lie in the chunk.
pub(super) type Stored = (u64, Bytes, std::ops::Range<usize>);

/// What a chunk of the log holds, as its errors name it.
pub(super) const ENTRIES: &str = "entries";
/// What a chunk filed under a sender holds.
pub(super) const COPIES: &str = "copies for queries by user";

/// The entries in chunk `(key, chunk)` (of the log, or of copies: `what`),
/// oldest first.
pub(super) fn unchunk((key, chunk): (Bytes, Bytes), what: &str) -> Result<Vec<Stored>, AuditError> {
    let framed = framed_in(&chunk).ok_or_else(|| {
        AuditError::Corrupt(
            key_seq(&key),
            format!("the chunk of {what} starting here is cut or altered"),
        )
    })?;
    Ok(framed
        .into_iter()
        .map(|(seq, at)| (seq, chunk.clone(), at))
        .collect())
}

/// The chunk of the log that holds entry `seq`, if any: the last to start
/// at or before it.
pub(super) fn holder(tree: &Tree, seq: u64) -> kv::Result<Option<(Bytes, Bytes)>> {
    tree.range(chunk_key(0)..=chunk_key(seq))
        .next_back()
        .transpose()
}
