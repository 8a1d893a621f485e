//! One epoch of the unsealed audit log, in sled trees of its own (its
//! entries in chunks, posting lists, copies by sender). The newest takes
//! appends; an older one is sealed and its trees dropped whole.

use crate::store::kv::{self, Batch, Bytes, Db, Tree};
use sha2::{Digest, Sha256};

use super::chunks::{
    CHUNK, CHUNK_BYTES, COPIES, ENTRIES, ENTRY_CHUNK_BYTES, Stored, add_to_chunks, chunk_key,
    framed, holder, key_seq, unchunk,
};
use super::parallel::in_batches;
use super::{AuditError, Entry, Head, Query, Verification, Walk};

// Tree `audit`: the entries in chunks of about ENTRY_CHUNK_BYTES, `c` +
// first seq → for each entry its seq, its length (4 bytes) and its bytes;
// and `h` → head; written in one atomic batch. (An older airlock stored
// `e` + seq → entry, a key each; `open` moves those into chunks.)
// Tree `audit_index`: posting lists in chunks of up to 128 seqs
// (CHUNK_BYTES): tag + value + 0 + first seq → the seqs, 8 bytes each;
// copies of entries filed by sender, chunked as the log is: `U` + sender
// + 0 + first seq → the entries; the watermark, the last seq indexed; and
// the index's format. The index is derived: if the process dies between
// the two writes, `open` indexes what the watermark lacks, and an index
// of another format is rebuilt.
//
// Why copies for senders: "everything @alice did" is the query people
// ask, and her entries lie spread across the whole log. Read through a
// posting list, each is a page sled's small cache (config.rs) has not
// got: 10,000 of 1,000,000 took 150 ms. Filed together they are a few
// hundred pages read in order: 16 ms. The cost is the log stored twice.
pub(super) const HEAD: &[u8] = b"h";
pub(super) const WATERMARK: &[u8] = b"#watermark";
pub(super) const FORMAT: &[u8] = b"#format";
pub(super) const INDEX_FORMAT: &[u8] = b"4";
pub(super) const BY_SENDER: u8 = b'U';
/// Entries indexed per batch when an index is rebuilt.
pub(super) const REBUILD_BATCH: u64 = 10_000;

/// An older airlock's entries, a key each: `e` + seq.
pub(super) const OLD_ENTRY: &[u8] = b"e";

/// The most selective index query `q` can use: (tag, value).
pub(super) fn query_index(q: &Query) -> Option<(u8, &str)> {
    [
        (b'q', &q.request),
        (b'd', &q.deployed),
        (b'a', &q.alias),
        (BY_SENDER, &q.user),
        (b'r', &q.room),
        (b'x', &q.action),
    ]
    .into_iter()
    .find_map(|(t, v)| v.as_deref().map(|v| (t, v)))
}

/// The fields of an entry with posting lists: (tag, value).
pub(super) fn indexed(e: &Entry) -> Vec<(u8, std::borrow::Cow<'_, str>)> {
    [
        (b'q', &e.request),
        (b'a', &e.alias),
        (b'r', &e.room),
        (b'x', &e.action),
    ]
    .into_iter()
    .filter_map(|(t, v)| v.as_deref().map(|v| (t, v.into())))
    .chain(e.status.map(|s| (b's', s.name().into())))
    .chain(e.deployed_packs().into_iter().map(|p| (b'd', p.into())))
    .collect()
}

pub(super) fn index_prefix(tag: u8, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 10);
    k.push(tag);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

/// What names entry `seq`'s copy filed under `sender` (its chunk's prefix
/// and its seq): a copy moved to another sender no longer matches.
pub(super) fn copy_key(sender: &str, seq: u64) -> Vec<u8> {
    let mut k = index_prefix(BY_SENDER, sender);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Index writes for `entries` (in seq order), stored as `stored`: each
/// field value's seqs and each sender's copies added to their newest
/// chunks in `index`.
pub(super) fn index_batch(index: &Tree, entries: &[Entry], stored: &[Bytes]) -> kv::Result<Batch> {
    type Records = Vec<(u64, Vec<u8>)>;
    let mut postings: std::collections::BTreeMap<Vec<u8>, Records> = Default::default();
    let mut copies: std::collections::BTreeMap<Vec<u8>, Records> = Default::default();
    for (e, bytes) in entries.iter().zip(stored) {
        for (tag, value) in indexed(e) {
            postings
                .entry(index_prefix(tag, &value))
                .or_default()
                .push((e.seq, e.seq.to_be_bytes().to_vec()));
        }
        if let Some(sender) = &e.sender {
            copies
                .entry(index_prefix(BY_SENDER, sender))
                .or_default()
                .push((e.seq, framed(e.seq, bytes)));
        }
    }
    let mut batch = Batch::default();
    for (prefix, records) in postings {
        add_to_chunks(index, &mut batch, &prefix, &records, CHUNK_BYTES)?;
    }
    for (prefix, records) in copies {
        add_to_chunks(index, &mut batch, &prefix, &records, ENTRY_CHUNK_BYTES)?;
    }
    if let Some(last) = entries.last() {
        batch.insert(WATERMARK, &last.seq.to_be_bytes());
    }
    Ok(batch)
}

/// One epoch: trees `audit` and `audit_index` for the first (the log of
/// an airlock from before epochs), `audit.N` and `audit_index.N` after.
#[derive(Clone)]
pub(super) struct Epoch {
    /// Its number.
    pub(super) n: u64,
    db: Db,
    tree: Tree,
    index: Tree,
}

/// The names of epoch `n`'s trees: (entries, index).
pub(super) fn tree_names(n: u64) -> (String, String) {
    if n == 0 {
        ("audit".into(), "audit_index".into())
    } else {
        (format!("audit.{n}"), format!("audit_index.{n}"))
    }
}

impl Epoch {
    /// Open epoch `n` in `db`, indexing what a crash left unindexed.
    pub(super) fn open(db: &Db, n: u64) -> Result<Self, AuditError> {
        let (t, i) = tree_names(n);
        let log = Epoch {
            n,
            db: db.clone(),
            tree: db.open_tree(t)?,
            index: db.open_tree(i)?,
        };
        log.migrate()?;
        log.catch_up_index()?;
        Ok(log)
    }

    /// Drop its trees, freeing every page they held.
    pub(super) fn drop_trees(self) -> Result<(), AuditError> {
        let (t, i) = tree_names(self.n);
        if self.n == 0 {
            // The first epoch's trees also held what an older airlock
            // stored there; clearing them is the same.
            self.tree.clear()?;
            self.index.clear()?;
        }
        self.db.drop_tree(t)?;
        self.db.drop_tree(i)?;
        Ok(())
    }

    /// Its first entry's seq, if it holds any.
    pub(super) fn first(&self) -> Result<Option<u64>, AuditError> {
        Ok(self
            .tree
            .scan_prefix(CHUNK)
            .next()
            .transpose()?
            .map(|(k, _)| key_seq(&k)))
    }

    /// Its first entry's timestamp, if it holds any.
    pub(super) fn first_ts(&self) -> Result<Option<u64>, AuditError> {
        Ok(match self.stored_from(0)?.next() {
            Some(item) => {
                let (seq, chunk, at) = item?;
                Some(parse(seq, &chunk[at])?.ts)
            }
            None => None,
        })
    }

    /// Every entry it holds with its stored bytes, oldest first.
    pub(super) fn all(&self) -> Result<Vec<(Entry, Vec<u8>)>, AuditError> {
        self.stored_from(0)?
            .map(|item| {
                let (seq, chunk, at) = item?;
                Ok((parse(seq, &chunk[at.clone()])?, chunk[at].to_vec()))
            })
            .collect()
    }

    /// Move the entries an older airlock stored a key each into chunks,
    /// oldest first, a batch at a time: each batch writes its chunks and
    /// removes its keys atomically, so a move cut short goes on at the
    /// next open. The bytes stay as they were: hashes and copies match.
    fn migrate(&self) -> Result<(), AuditError> {
        let mut moved = 0u64;
        loop {
            let old = self
                .tree
                .scan_prefix(OLD_ENTRY)
                .take(REBUILD_BATCH as usize)
                .collect::<Result<Vec<_>, _>>()?;
            if old.is_empty() {
                break;
            }
            if moved == 0 {
                tracing::info!(
                    "storing the audit log's entries in chunks (log from another version)"
                );
            }
            let records: Vec<(u64, Vec<u8>)> = old
                .iter()
                .map(|(k, b)| (key_seq(k), framed(key_seq(k), b)))
                .collect();
            let mut batch = Batch::default();
            add_to_chunks(&self.tree, &mut batch, CHUNK, &records, ENTRY_CHUNK_BYTES)?;
            for (k, _) in &old {
                batch.remove(k);
            }
            self.tree.apply_batch(batch)?;
            moved += old.len() as u64;
        }
        if moved > 0 {
            self.db.flush()?;
        }
        Ok(())
    }

    /// The chunks of entries from the one holding `first` on.
    fn chunks_from(
        &self,
        first: u64,
    ) -> Result<impl DoubleEndedIterator<Item = kv::Result<(Bytes, Bytes)>>, AuditError> {
        let start = holder(&self.tree, first)?.map_or(0, |(k, _)| key_seq(&k));
        Ok(self.tree.range(chunk_key(start)..=chunk_key(u64::MAX)))
    }

    /// The stored entries from `first` on, oldest first.
    fn stored_from(
        &self,
        first: u64,
    ) -> Result<impl Iterator<Item = Result<Stored, AuditError>>, AuditError> {
        Ok(self
            .chunks_from(first)?
            .flat_map(|kv| {
                match kv
                    .map_err(AuditError::from)
                    .and_then(|kv| unchunk(kv, ENTRIES))
                {
                    Ok(v) => v.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                }
            })
            .filter(move |r| r.as_ref().map_or(true, |(seq, _, _)| *seq >= first)))
    }

    /// Index the entries an interrupted append left unindexed, or all of
    /// them if the index is of another format (an older airlock's). The
    /// format is written last: a rebuild cut short starts over.
    fn catch_up_index(&self) -> Result<(), AuditError> {
        let current = self.index.get(FORMAT)?.is_some_and(|f| f == INDEX_FORMAT);
        if !current {
            self.index.clear()?;
        }
        let mut indexed = self.index.get(WATERMARK)?.map(|b| key_seq(&b)).unwrap_or(0);
        let head = self.head().map_or(0, |h| h.seq);
        if head > indexed && !current {
            tracing::info!("indexing the audit log's {head} entries (index from another version)");
        }
        while indexed < head {
            let last = head.min(indexed + REBUILD_BATCH);
            let (mut entries, mut stored) = (Vec::new(), Vec::new());
            for item in self.stored_from(indexed + 1)? {
                let (seq, chunk, at) = item?;
                if seq > last {
                    break;
                }
                entries.push(parse(seq, &chunk[at.clone()])?);
                stored.push(Bytes::from(&chunk[at]));
            }
            self.index
                .apply_batch(index_batch(&self.index, &entries, &stored)?)?;
            indexed = last;
        }
        if !current {
            self.index.insert(FORMAT, INDEX_FORMAT)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Append entries after `head` atomically (all or none), chained, then
    /// flush to disk. The caller holds the log's append turn.
    pub(super) fn append(
        &self,
        mut batch: Vec<Entry>,
        mut head: Head,
    ) -> Result<Vec<Entry>, AuditError> {
        if batch.is_empty() {
            return Ok(batch);
        }
        let mut writes = Batch::default();
        let mut stored = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        for e in batch.iter_mut() {
            e.seq = head.seq + 1;
            e.prev = std::mem::take(&mut head.hash);
            let bytes = Bytes::from(e.seal());
            records.push((e.seq, framed(e.seq, &bytes)));
            stored.push(bytes);
            head = Head {
                seq: e.seq,
                hash: e.hash.clone(),
            };
        }
        add_to_chunks(&self.tree, &mut writes, CHUNK, &records, ENTRY_CHUNK_BYTES)?;
        writes.insert(HEAD, serde_json::to_vec(&head).expect("head serializes"));
        self.tree.apply_batch(writes)?;
        self.index
            .apply_batch(index_batch(&self.index, &batch, &stored)?)?;
        crate::crash::point("audit_before_flush");
        self.db.flush()?;
        crate::crash::point("audit_after_flush");
        Ok(batch)
    }

    pub(super) fn read(&self, seq: u64) -> Result<Option<Entry>, AuditError> {
        let Some(kv) = holder(&self.tree, seq)? else {
            return Ok(None);
        };
        match unchunk(kv, ENTRIES)?
            .into_iter()
            .find(|(s, _, _)| *s == seq)
        {
            None => Ok(None),
            Some((_, chunk, at)) => parse(seq, &chunk[at]).map(Some),
        }
    }

    /// The head as its last append left it (None before its first).
    pub(super) fn head(&self) -> Option<Head> {
        self.tree
            .get(HEAD)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Hand `take` the entries `q` may match, newest first, until it
    /// says stop.
    pub(super) fn scan(
        &self,
        q: &Query,
        take: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), AuditError> {
        // A page far back names its bound: entries at or past it are
        // skipped by their seq, never read or parsed.
        let below = |seq: u64| q.before.is_none_or(|b| seq < b);
        match query_index(q) {
            Some((BY_SENDER, user)) => {
                let mut copies = self
                    .index
                    .scan_prefix(index_prefix(BY_SENDER, user))
                    .rev()
                    .flat_map(|kv| {
                        match kv
                            .map_err(AuditError::from)
                            .and_then(|kv| unchunk(kv, COPIES))
                        {
                            Ok(v) => v
                                .into_iter()
                                .rev()
                                .filter(|(seq, _, _)| below(*seq))
                                .map(Ok)
                                .collect(),
                            Err(e) => vec![Err(e)],
                        }
                    });
                in_batches(
                    &mut copies,
                    |(seq, chunk, at)| parse(*seq, &chunk[at.clone()]).map(Some),
                    take,
                )?;
            }
            Some((tag, value)) => {
                let mut seqs = self
                    .index
                    .scan_prefix(index_prefix(tag, value))
                    .values()
                    .rev()
                    .flat_map(|chunk| match chunk {
                        Ok(c) => c
                            .chunks_exact(8)
                            .rev()
                            .map(key_seq)
                            .filter(|s| below(*s))
                            .map(Ok)
                            .collect(),
                        Err(e) => vec![Err(AuditError::from(e))],
                    });
                in_batches(&mut seqs, |s| self.read(*s), take)?;
            }
            None => {
                // Chunks are keyed by their first seq: those starting
                // past the bound are not read at all.
                let last = q.before.map_or(u64::MAX, |b| b.saturating_sub(1));
                let chunks = self.tree.range(chunk_key(0)..=chunk_key(last));
                'chunks: for kv in chunks.rev() {
                    for (seq, chunk, at) in unchunk(kv?, ENTRIES)?.into_iter().rev() {
                        if below(seq) && !take(parse(seq, &chunk[at])?) {
                            break 'chunks;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` entries after entry `seq`, oldest first: how a
    /// follower reads what is new.
    pub(super) fn after(&self, seq: u64, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let mut out = Vec::new();
        for item in self.stored_from(seq.saturating_add(1))?.take(limit) {
            let (seq, chunk, at) = item?;
            out.push(parse(seq, &chunk[at])?);
        }
        Ok(out)
    }

    /// Walk its chain on from `w` (where the entries before it left off)
    /// and report every inconsistency into `v`.
    pub(super) fn walk(&self, w: &mut Walk, v: &mut Verification) -> Result<(), AuditError> {
        // What each entry's copy under its sender must be, to check the
        // copies against after the walk: they are what queries by user
        // show, and must not say other than the chain.
        let mut copies: Vec<(u64, u128)> = Vec::new();
        for item in self.stored_from(0)? {
            let (seq, chunk, at) = match item {
                Ok(stored) => stored,
                Err(err) => {
                    // The entries it held are that problem, not a gap.
                    v.problems.push(err.to_string());
                    w.resync = true;
                    w.prev_hash.clear();
                    continue;
                }
            };
            let b = &chunk[at];
            let e = match parse(seq, b) {
                Ok(e) => e,
                Err(err) => {
                    v.problems.push(err.to_string());
                    w.expected_seq = seq + 1;
                    w.prev_hash.clear();
                    continue;
                }
            };
            if let Some(sender) = &e.sender {
                copies.push((seq, copy_digest(&copy_key(sender, seq), b)));
            }
            w.step(seq, &e, v);
        }
        self.verify_copies(&copies, &mut v.problems)
    }

    /// Check the copies filed by sender against `expected` (seq, digest
    /// of key and bytes; in seq order): each must be there, under its
    /// entry's sender, byte for byte the entry.
    pub(super) fn verify_copies(
        &self,
        expected: &[(u64, u128)],
        problems: &mut Vec<String>,
    ) -> Result<(), AuditError> {
        const SHOWN: usize = 10;
        let mut seen = vec![false; expected.len()];
        let mut wrong = 0usize;
        for item in self.index.scan_prefix([BY_SENDER]) {
            let (k, chunk) = item?;
            let prefix = k[..k.len().saturating_sub(8)].to_vec();
            let copies = match unchunk((k, chunk), COPIES) {
                Ok(copies) => copies,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            for (seq, chunk, at) in copies {
                let mut key = prefix.clone();
                key.extend_from_slice(&seq.to_be_bytes());
                let found = expected.binary_search_by_key(&seq, |(s, _)| *s).ok();
                if let Some(i) = found {
                    seen[i] = true;
                    if expected[i].1 == copy_digest(&key, &chunk[at]) {
                        continue;
                    }
                }
                wrong += 1;
                if wrong <= SHOWN {
                    problems.push(format!(
                        "the copy of entry {seq} that queries by user read differs from the log (altered or misfiled)"
                    ));
                }
            }
        }
        if wrong > SHOWN {
            problems.push(format!("{} more copies differ from the log", wrong - SHOWN));
        }
        match seen.iter().filter(|s| !**s).count() {
            0 => {}
            1 => {
                problems.push("1 entry has no copy for queries by user (it would not show)".into())
            }
            n => problems.push(format!(
                "{n} entries have no copy for queries by user (they would not show)"
            )),
        }
        Ok(())
    }
}

/// Entry `seq`'s stored bytes replaced, in place, by what `edit` makes of
/// them (None: removed): what someone with write access to the store
/// could do, and what `verify` and the checkpoints are tested against.
#[doc(hidden)]
pub fn edit_stored(
    db: &Db,
    seq: u64,
    edit: impl FnOnce(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Result<(), AuditError> {
    let tree = db.open_tree("audit")?;
    let (key, entries) = match holder(&tree, seq)? {
        Some(kv) => (kv.0.clone(), unchunk(kv, ENTRIES)?),
        None => (Bytes::default(), Vec::new()),
    };
    let Some((_, chunk, at)) = entries.iter().find(|(s, _, _)| *s == seq) else {
        // Not stored: filed in a chunk of its own.
        if let Some(bytes) = edit(None) {
            tree.insert(chunk_key(seq), framed(seq, &bytes))?;
        }
        return Ok(());
    };
    let new = edit(Some(&chunk[at.clone()]));
    let mut rest = Vec::new();
    for (s, chunk, at) in &entries {
        match (*s == seq, &new) {
            (false, _) => rest.extend(framed(*s, &chunk[at.clone()])),
            (true, Some(bytes)) => rest.extend(framed(seq, bytes)),
            (true, None) => {}
        }
    }
    if rest.is_empty() {
        tree.remove(key)?;
    } else {
        tree.insert(key, rest)?;
    }
    Ok(())
}

/// Entry `seq` from its stored bytes.
pub(super) fn parse(seq: u64, bytes: &[u8]) -> Result<Entry, AuditError> {
    serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt(seq, e.to_string()))
}

/// A copy's key and bytes, digested (128 bits of SHA-256 tell copies
/// apart as well as all 256 would, at half the memory for a large log).
pub(super) fn copy_digest(key: &[u8], bytes: &[u8]) -> u128 {
    let d = Sha256::new()
        .chain_update((key.len() as u64).to_be_bytes())
        .chain_update(key)
        .chain_update(bytes)
        .finalize();
    u128::from_be_bytes(d[..16].try_into().expect("16 of 32 bytes"))
}
