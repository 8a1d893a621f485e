//! The audit log across its two tiers: the unsealed epochs in sled (the
//! newest takes appends) and the sealed segments on disk. Every read,
//! query, follow and check covers both, and finds each entry once: a
//! segment counts only below the first entry still in sled.

use crate::store::kv::{Batch, Db, Tree};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::Proof;
use super::archive::{Archive, Manifest};
use super::epoch::{Epoch, tree_names};
use super::{AuditError, Checkpoint, Entry, Head, Query, Verification, Walk};

/// The live epochs, in `audit_meta` (absent: epoch 0 alone).
const EPOCHS: &[u8] = b"E";

/// When an epoch is sealed: once it holds `entries`, or its oldest entry
/// is older than `after`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealPolicy {
    /// Entries per epoch (and at most per segment).
    pub entries: u64,
    /// The age of an epoch's oldest entry that seals it.
    pub after: Duration,
    /// Sealed segments whose newest entry is older than this are deleted
    /// (None: everything is kept).
    pub retention: Option<Duration>,
}

impl Default for SealPolicy {
    fn default() -> Self {
        SealPolicy {
            entries: 16_000,
            after: Duration::from_secs(7 * 24 * 3600),
            retention: None,
        }
    }
}

/// The log.
#[derive(Clone)]
pub struct AuditLog {
    db: Db,
    meta: Tree,
    epochs: Arc<RwLock<Vec<Epoch>>>,
    archive: Archive,
    /// Appends take turns: each reads the head it extends.
    append_lock: Arc<Mutex<()>>,
    /// One sealing at a time.
    seal_lock: Arc<Mutex<()>>,
}

impl AuditLog {
    /// Open the log in `db` without an archive directory (a store that
    /// has never sealed, or for what needs only the unsealed part).
    pub fn open(db: &Db) -> Result<Self, AuditError> {
        Self::open_at(db, None)
    }

    /// Open the log in `db`, its segments in `archive`; finish or undo
    /// whatever step of a sealing a crash cut short.
    pub fn open_at(db: &Db, archive: Option<&Path>) -> Result<Self, AuditError> {
        let meta = db.open_tree("audit_meta")?;
        let live: Vec<u64> = match meta.get(EPOCHS)? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| AuditError::Corrupt(0, format!("the list of epochs: {e}")))?,
            None => vec![0],
        };
        let epochs = live
            .iter()
            .map(|n| Epoch::open(db, *n))
            .collect::<Result<Vec<_>, _>>()?;
        // Trees of an epoch sealed but not yet dropped when the process
        // died: its manifest is stored, so they go now.
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            let n = name
                .strip_prefix("audit_index.")
                .or_else(|| name.strip_prefix("audit."))
                .and_then(|n| n.parse::<u64>().ok());
            if n.is_some_and(|n| !live.contains(&n)) {
                tracing::info!("dropping {name}: its epoch was sealed");
                db.drop_tree(name.as_bytes())?;
            }
        }
        if !live.contains(&0) {
            let (t, i) = tree_names(0);
            for name in [t, i] {
                let tree = db.open_tree(&name)?;
                if !tree.is_empty() {
                    tree.clear()?;
                }
            }
        }
        let archive = Archive::new(archive.map(Path::to_path_buf), meta.clone());
        archive.remove_strays()?;
        Ok(AuditLog {
            db: db.clone(),
            meta,
            epochs: Arc::new(RwLock::new(epochs)),
            archive,
            append_lock: Arc::new(Mutex::new(())),
            seal_lock: Arc::new(Mutex::new(())),
        })
    }

    fn live(&self) -> Vec<Epoch> {
        self.epochs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn head(&self) -> Head {
        if let Some(h) = self.live().iter().rev().find_map(Epoch::head) {
            return h;
        }
        match self.archive.last() {
            Ok(Some(m)) => Head {
                seq: m.last,
                hash: m.last_hash,
            },
            _ => Head::default(),
        }
    }

    /// The first entry still in sled (the archive answers below it).
    fn hot_from(epochs: &[Epoch]) -> Result<u64, AuditError> {
        for e in epochs {
            if let Some(first) = e.first()? {
                return Ok(first);
            }
        }
        Ok(u64::MAX)
    }

    /// Append entries atomically (all or none), chained, then flush to disk.
    pub fn append(&self, batch: Vec<Entry>) -> Result<Vec<Entry>, AuditError> {
        let _turn = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let head = self.head();
        let epochs = self.live();
        let newest = epochs.last().expect("one epoch is always live");
        newest.append(batch, head)
    }

    /// Append one entry.
    pub fn record(&self, e: Entry) -> Result<Entry, AuditError> {
        Ok(self.append(vec![e])?.remove(0))
    }

    /// How many entries.
    pub fn len(&self) -> u64 {
        self.head().seq
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `seq`, wherever it is.
    pub(crate) fn read(&self, seq: u64) -> Result<Option<Entry>, AuditError> {
        for e in self.live().iter().rev() {
            if e.first()?.is_some_and(|f| f <= seq) {
                return e.read(seq);
            }
        }
        self.archive.read(seq)
    }

    /// Entries matching `q`, oldest first (the newest `q.limit` of them).
    pub fn query(&self, q: &Query) -> Result<Vec<Entry>, AuditError> {
        self.query_where(q, &mut |_| true)
    }

    /// [`query`](Self::query) of the entries `keep` also accepts, the
    /// limit counting only those: the newest 20 a viewer may see are read
    /// newest first until found, not all matches and then filtered.
    pub fn query_where(
        &self,
        q: &Query,
        keep: &mut dyn FnMut(&Entry) -> bool,
    ) -> Result<Vec<Entry>, AuditError> {
        let limit = q.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let done = std::cell::Cell::new(false);
        let epochs = self.live();
        let hot_from = Self::hot_from(&epochs)?;
        {
            let mut take = |e: Entry| -> bool {
                // Entries come newest first; stop once past `since`.
                if q.since.is_some_and(|t| e.ts < t) {
                    done.set(true);
                    return false;
                }
                if q.accepts(&e) && keep(&e) {
                    out.push(e);
                }
                done.set(out.len() >= limit);
                !done.get()
            };
            for e in epochs.iter().rev() {
                // An epoch wholly past a page's bound holds nothing for it.
                if q.before
                    .is_some_and(|b| e.first().ok().flatten().is_some_and(|f| f >= b))
                {
                    continue;
                }
                e.scan(q, &mut take)?;
                if done.get() {
                    break;
                }
            }
        }
        if !done.get() {
            let mut take = |e: Entry| -> bool {
                if e.seq >= hot_from {
                    return true;
                }
                if q.since.is_some_and(|t| e.ts < t) {
                    return false;
                }
                if q.accepts(&e) && keep(&e) {
                    out.push(e);
                }
                out.len() < limit
            };
            self.archive.scan(q, &mut take)?;
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` entries after entry `seq`, oldest first: how a
    /// follower reads what is new.
    pub fn after(&self, seq: u64, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let epochs = self.live();
        let hot_from = Self::hot_from(&epochs)?;
        let mut out = Vec::new();
        if seq.saturating_add(1) < hot_from {
            out = self.archive.after(seq, limit)?;
            out.retain(|e| e.seq < hot_from);
        }
        let mut last = out.last().map_or(seq, |e| e.seq);
        for e in &epochs {
            if out.len() >= limit {
                break;
            }
            let more = e.after(last, limit - out.len())?;
            if let Some(l) = more.last() {
                last = l.seq;
            }
            out.extend(more);
        }
        Ok(out)
    }

    /// The head now, as a checkpoint (None while the log is empty).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let h = self.head();
        (h.seq > 0).then_some(Checkpoint {
            seq: h.seq,
            hash: h.hash,
        })
    }

    /// Walk the whole chain and report every inconsistency: the sealed
    /// segments by their manifests, hashes and footers, the unsealed
    /// epochs entry by entry.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        self.verify_full(false)
    }

    /// [`verify`](Self::verify), and with `full` every sealed entry
    /// re-hashed and its link checked too.
    pub fn verify_full(&self, full: bool) -> Result<Verification, AuditError> {
        let mut v = Verification::default();
        let mut w = Walk::default();
        self.archive.verify(full, &mut w, &mut v)?;
        for e in &self.live() {
            e.walk(&mut w, &mut v)?;
        }
        let head = self.head();
        if head.seq != w.expected_seq - 1 || head.hash != w.prev_hash {
            v.problems.push(format!(
                "the log ends at entry {} but its head record says {} (entries removed from the end?)",
                w.expected_seq - 1,
                head.seq
            ));
        }
        v.head_hash = head.hash;
        Ok(v)
    }

    /// Entry `seq` with its inclusion proof, if it is sealed.
    pub fn prove(&self, seq: u64) -> Result<Option<Proof>, AuditError> {
        self.archive.prove(seq)
    }

    /// The manifests of the sealed segments, oldest first.
    pub fn manifests(&self) -> Result<Vec<Manifest>, AuditError> {
        Ok(self
            .archive
            .manifests()?
            .into_iter()
            .map(|(m, _)| m)
            .collect())
    }

    /// Seal what is due at `now` (ms): the newest epoch, once it holds
    /// `policy.entries` or its oldest entry is older than `policy.after`,
    /// gives way to a new one; then every epoch but the newest is written
    /// into segments, their manifests stored, and its trees dropped.
    /// Returns the manifests stored. Each step is safe to cut short: the
    /// next call, or the next open, finishes or undoes it.
    pub fn seal_due(&self, now: u64, policy: &SealPolicy) -> Result<Vec<Manifest>, AuditError> {
        let _one = self.seal_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.start_epoch_if_due(now, policy)?;
        let mut sealed = Vec::new();
        loop {
            let epochs = self.live();
            if epochs.len() < 2 {
                break;
            }
            sealed.extend(self.seal_epoch(&epochs[0], policy)?);
        }
        if let Some(keep) = policy.retention {
            self.prune(now, keep)?;
        }
        Ok(sealed)
    }

    /// Delete the segments whose newest entry is older than `keep` at
    /// `now`, keeping their manifests, and record what went and why in a
    /// `pruned` entry: `verify` reports those ranges as pruned, and a
    /// segment missing without one as tampering.
    fn prune(&self, now: u64, keep: Duration) -> Result<(), AuditError> {
        let cutoff = now.saturating_sub(keep.as_millis() as u64);
        let due: Vec<Manifest> = self
            .archive
            .manifests()?
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| m.max_ts < cutoff && self.archive.pruned(m.first).ok().flatten().is_none())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let setting = crate::clock::human(keep);
        let detail = serde_json::json!({
            "segments": due.iter().map(|m| serde_json::json!({
                "segment": m.segment, "first": m.first, "last": m.last,
            })).collect::<Vec<_>>(),
            "retention": setting,
        });
        // The entry first: a crash after it and before the files go
        // leaves them for the next prune, never a gap nobody explained.
        self.archive.mark_pruned(&due, now, &setting)?;
        self.record(
            Entry::new(super::Event::Pruned, now)
                .status(super::Status::Succeeded)
                .detail(detail),
        )?;
        for m in &due {
            self.archive.delete_segment(m)?;
        }
        Ok(())
    }

    fn start_epoch_if_due(&self, now: u64, policy: &SealPolicy) -> Result<(), AuditError> {
        let _turn = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let epochs = self.live();
        let newest = epochs.last().expect("one epoch is always live");
        let Some(first) = newest.first()? else {
            return Ok(());
        };
        let count = newest.head().map_or(0, |h| h.seq + 1 - first);
        let old = newest
            .first_ts()?
            .is_some_and(|ts| now.saturating_sub(ts) >= policy.after.as_millis() as u64);
        if count < policy.entries && !old {
            return Ok(());
        }
        let n = newest.n + 1;
        let next = Epoch::open(&self.db, n)?;
        let mut live: Vec<u64> = epochs.iter().map(|e| e.n).collect();
        live.push(n);
        self.meta
            .insert(EPOCHS, serde_json::to_vec(&live).expect("json"))?;
        self.meta.flush()?;
        crate::crash::point("seal_epoch_started");
        self.epochs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(next);
        Ok(())
    }

    /// Write epoch `e` (not the newest) into segments of at most
    /// `policy.entries`, store their manifests with the epoch gone from
    /// the live list in one batch, then drop its trees.
    fn seal_epoch(&self, e: &Epoch, policy: &SealPolicy) -> Result<Vec<Manifest>, AuditError> {
        let entries = e.all()?;
        let mut prev = match self.archive.manifests()?.last() {
            Some((_, bytes)) => Manifest::hash(bytes),
            None => String::new(),
        };
        let mut manifests = Vec::new();
        // An epoch holds a little more than `policy.entries` when the tick
        // that starts the next comes after it filled: that is one segment,
        // not a full one and a sliver (each sliver a manifest and a seal in
        // the audit room). Only a far larger epoch (a store from before
        // epochs) is cut, into parts of equal size.
        let parts = (entries.len() / policy.entries.max(1) as usize).max(1);
        for part in entries.chunks(entries.len().div_ceil(parts).max(1)) {
            let m = self.archive.write_segment(part, &prev)?;
            prev = Manifest::hash(&serde_json::to_vec(&m).expect("json"));
            manifests.push(m);
        }
        crate::crash::point("seal_segments_written");
        let live: Vec<u64> = self
            .live()
            .iter()
            .map(|x| x.n)
            .filter(|n| *n != e.n)
            .collect();
        let mut batch = Batch::default();
        batch.insert(EPOCHS, serde_json::to_vec(&live).expect("json"));
        self.archive.store(&manifests, batch)?;
        crate::crash::point("seal_manifest_stored");
        self.epochs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.n != e.n);
        e.clone().drop_trees()?;
        self.db.flush()?;
        crate::crash::point("seal_trees_dropped");
        Ok(manifests)
    }

    /// Check the segments against the seals the audit room holds: each
    /// sealed segment's manifest, root and file hash as they were sealed.
    pub fn verify_seals(&self, seals: &[super::Seal]) -> Result<Vec<String>, AuditError> {
        let manifests = self.archive.manifests()?;
        let mut problems = Vec::new();
        for s in seals {
            match manifests.iter().find(|(m, _)| m.first == s.first) {
                None => problems.push(format!(
                    "segment {} (entries {}..{}), sealed and posted to the audit room, has no manifest here",
                    s.segment, s.first, s.last
                )),
                Some((m, bytes)) => {
                    if Manifest::hash(bytes) != s.manifest
                        || m.root != s.root
                        || m.file_sha256 != s.file_sha256
                        || m.last != s.last
                    {
                        problems.push(format!(
                            "segment {} (entries {}..{}) and its manifest differ from the seal the audit room holds: rewritten on this machine",
                            s.segment, s.first, s.last
                        ));
                    }
                }
            }
        }
        Ok(problems)
    }

    /// Check the log against `checkpoints` (any order, duplicates fine):
    /// every entry a checkpoint names must exist with that hash. Returns
    /// the problems, the first mismatch first, with the range it must lie
    /// in: after the newest checkpoint that still matches, at or before
    /// the first that does not.
    pub fn verify_against(&self, checkpoints: &[Checkpoint]) -> Result<Vec<String>, AuditError> {
        let mut cps = checkpoints.to_vec();
        cps.sort_by_key(|c| c.seq);
        cps.dedup();
        let mut problems = Vec::new();
        let mut last_good = 0;
        for c in &cps {
            match self.read(c.seq)? {
                Some(e) if e.hash == c.hash => {
                    if problems.is_empty() {
                        last_good = c.seq;
                    }
                }
                Some(_) if !problems.is_empty() => problems.push(format!(
                    "entry {} no longer matches its checkpoint either (hash {}…)",
                    c.seq,
                    &c.hash[..12]
                )),
                Some(_) => problems.push(format!(
                    "entry {} no longer matches its checkpoint (hash {}…): the history was rewritten {}",
                    c.seq,
                    &c.hash[..12],
                    if last_good == 0 {
                        format!("at or before entry {}", c.seq)
                    } else {
                        format!("between entries {} and {}", last_good + 1, c.seq)
                    }
                )),
                None => problems.push(format!(
                    "entry {}, which a checkpoint vouches for, is missing",
                    c.seq
                )),
            }
        }
        Ok(problems)
    }
}
