//! The sealed part of the audit log: one segment file per sealed epoch in
//! `data_dir/audit/`, and a manifest per segment in sled (tree
//! `audit_meta`). A manifest names its segment's range, the hashes at
//! both ends, the Merkle root, the file's SHA-256, the time range and the
//! values present per indexed field, and the hash of the manifest before
//! it, so the manifests chain as CloudTrail's digest files do: a segment
//! deleted, swapped or rewritten, or a manifest changed, breaks the chain
//! or its file's hash (and a segment rewritten together with its
//! manifest no longer matches the seal checkpoint in the audit room).
//!
//! Nothing here stays in memory but a few open segments' indexes.
//! How a query reads it is in `scan.rs`.

mod scan;

use crate::store::kv::{Batch, Tree};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuditError, Entry, Proof, Verification, Walk, epoch::parse};
use crate::store::merkle::{self, Hash};
use crate::store::segment::{self, Segment};

/// The key prefix of a manifest in `audit_meta`: `m` + first seq.
const MANIFEST: u8 = b'm';
/// The key prefix of a pruned segment's record: `p` + first seq.
const PRUNED: u8 = b'p';
/// The most values of a field a manifest lists.
pub const MANY: usize = 256;
/// Open segments kept (their indexes decoded): a query over a long
/// history opens the rest again.
const CACHED: usize = 16;

/// What sealing one segment recorded about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The segment's file name in the archive directory.
    pub segment: String,
    /// Its first entry.
    pub first: u64,
    /// Its last.
    pub last: u64,
    /// The hash the first entry chains to (the entry before it).
    pub first_prev: String,
    /// The last entry's hash.
    pub last_hash: String,
    /// The earliest timestamp in it (ms).
    pub min_ts: u64,
    /// The latest.
    pub max_ts: u64,
    /// RFC 6962 root over its entries' hashes.
    pub root: String,
    /// SHA-256 of the whole file.
    pub file_sha256: String,
    /// Per indexed field, the values it holds (but those in `many`).
    pub values: BTreeMap<String, BTreeSet<String>>,
    /// The fields with more than `MANY` (256) values (request ids, say),
    /// whose sets are left out: a manifest stays small, and a query on
    /// such a field looks in the segment's own index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub many: Vec<String>,
    /// The SHA-256 of the manifest before it ("" for the first).
    pub prev_manifest: String,
}

impl Manifest {
    /// Its SHA-256, over its JSON as stored.
    pub fn hash(bytes: &[u8]) -> String {
        super::hex(&Sha256::digest(bytes))
    }
}

/// A segment's manifest's key: `m` + its first seq.
fn manifest_key(first: u64) -> [u8; 9] {
    let mut k = [MANIFEST; 9];
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

fn pruned_key(first: u64) -> [u8; 9] {
    let mut k = [PRUNED; 9];
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

/// The archive: its directory and its manifests.
#[derive(Clone)]
pub(super) struct Archive {
    dir: Option<PathBuf>,
    meta: Tree,
    open: Arc<Mutex<Vec<Arc<Segment>>>>,
}

impl Archive {
    pub(super) fn new(dir: Option<PathBuf>, meta: Tree) -> Self {
        Archive {
            dir,
            meta,
            open: Arc::default(),
        }
    }

    /// The manifests, oldest first, each with its stored bytes.
    pub(super) fn manifests(&self) -> Result<Vec<(Manifest, Vec<u8>)>, AuditError> {
        self.meta
            .scan_prefix([MANIFEST])
            .map(|kv| {
                let (k, v) = kv?;
                let m = serde_json::from_slice(&v).map_err(|e| {
                    AuditError::Corrupt(super::chunks::key_seq(&k), format!("its manifest: {e}"))
                })?;
                Ok((m, v.to_vec()))
            })
            .collect()
    }

    /// The newest manifest.
    pub(super) fn last(&self) -> Result<Option<Manifest>, AuditError> {
        match self.meta.scan_prefix([MANIFEST]).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                serde_json::from_slice(&v).map(Some).map_err(|e| {
                    AuditError::Corrupt(super::chunks::key_seq(&k), format!("its manifest: {e}"))
                })
            }
        }
    }

    /// The manifest of the segment holding `seq`.
    fn manifest_of(&self, seq: u64) -> Result<Option<Manifest>, AuditError> {
        match self
            .meta
            .range(manifest_key(0)..=manifest_key(seq))
            .next_back()
        {
            None => Ok(None),
            Some(kv) => {
                let m: Manifest = serde_json::from_slice(&kv?.1)
                    .map_err(|e| AuditError::Corrupt(seq, format!("its manifest: {e}")))?;
                Ok((m.last >= seq).then_some(m))
            }
        }
    }

    fn dir(&self) -> Result<&Path, AuditError> {
        self.dir.as_deref().ok_or_else(|| {
            AuditError::Archive(
                "this store has sealed segments, but no archive directory was given".into(),
            )
        })
    }

    /// Segment `m` names, opened (or from the few kept open).
    fn segment(&self, m: &Manifest) -> Result<Arc<Segment>, AuditError> {
        self.open_segment(&m.segment, m.first, m.last)
    }

    /// Segment file `name`, which holds `first..=last`, opened (or from
    /// the few kept open).
    fn open_segment(&self, name: &str, first: u64, last: u64) -> Result<Arc<Segment>, AuditError> {
        let path = self.dir()?.join(name);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = open.iter().find(|s| s.path == path) {
            return Ok(s.clone());
        }
        let s = Arc::new(Segment::open(&path).map_err(|e| AuditError::Archive(e.to_string()))?);
        if s.footer.first != first || s.footer.last != last {
            return Err(AuditError::Archive(format!(
                "{}: holds entries {}..{} where its manifest says {first}..{last}",
                path.display(),
                s.footer.first,
                s.footer.last,
            )));
        }
        if open.len() >= CACHED {
            open.remove(0);
        }
        open.push(s.clone());
        Ok(s)
    }

    /// Why segment `first` was deleted, if it was pruned.
    pub(super) fn pruned(&self, first: u64) -> Result<Option<String>, AuditError> {
        Ok(self
            .meta
            .get(pruned_key(first))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Record that `due` are deleted under retention `setting` at `now`.
    pub(super) fn mark_pruned(
        &self,
        due: &[Manifest],
        now: u64,
        setting: &str,
    ) -> Result<(), AuditError> {
        let mut batch = Batch::default();
        for m in due {
            batch.insert(
                &pruned_key(m.first),
                format!(
                    "entries {}..{} ({}) pruned on {} under audit.retention {setting}",
                    m.first,
                    m.last,
                    m.segment,
                    crate::clock::format_ms(now)
                )
                .as_bytes(),
            );
        }
        self.meta.apply_batch(batch)?;
        self.meta.flush()?;
        Ok(())
    }

    /// Delete segment `m`'s file.
    pub(super) fn delete_segment(&self, m: &Manifest) -> Result<(), AuditError> {
        let path = self.dir()?.join(&m.segment);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.path != path);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(AuditError::Archive(format!("{}: {e}", path.display())))
            }
            _ => Ok(()),
        }
    }

    /// Entry `seq`, if sealed (and not pruned).
    pub(super) fn read(&self, seq: u64) -> Result<Option<Entry>, AuditError> {
        let Some(m) = self.manifest_of(seq)? else {
            return Ok(None);
        };
        if self.pruned(m.first)?.is_some() {
            return Ok(None);
        }
        let s = self.segment(&m)?;
        let Some((f, l)) = s.frame_of(seq) else {
            return Ok(None);
        };
        let frame = s.frame(f).map_err(|e| AuditError::Archive(e.to_string()))?;
        match frame.into_iter().nth(l) {
            Some((seq, bytes)) => parse(seq, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` sealed entries after `seq`, oldest first.
    pub(super) fn after(&self, seq: u64, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let mut out = Vec::new();
        let mut next = seq + 1;
        while out.len() < limit {
            let Some(m) = self.manifest_of(next)? else {
                break;
            };
            if self.pruned(m.first)?.is_some() {
                next = m.last + 1;
                continue;
            }
            let s = self.segment(&m)?;
            for (seq, bytes) in s.all().map_err(|e| AuditError::Archive(e.to_string()))? {
                if seq >= next && out.len() < limit {
                    out.push(parse(seq, &bytes)?);
                }
            }
            next = m.last + 1;
        }
        Ok(out)
    }

    /// Write `entries` (consecutive, oldest first) as one segment and
    /// return its manifest, chained to `prev_manifest`. The file is
    /// written beside its final name, synced, renamed and the directory
    /// synced: after a crash it is there whole or not at all.
    pub(super) fn write_segment(
        &self,
        entries: &[(Entry, Vec<u8>)],
        prev_manifest: &str,
    ) -> Result<Manifest, AuditError> {
        use std::io::Write;
        let dir = self.dir()?;
        let io = |e: std::io::Error| AuditError::Archive(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let (first, last) = (entries[0].0.seq, entries[entries.len() - 1].0.seq);
        let name = format!("{first:020}-{last:020}.zst");
        let tmp = dir.join(format!("{name}.tmp"));
        let mut buf = Vec::new();
        let footer = segment::write(&mut buf, entries).map_err(io)?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&buf).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        crate::crash::point("seal_file_synced");
        std::fs::rename(&tmp, dir.join(&name)).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (e, _) in entries {
            for (f, v) in segment::values(e) {
                values.entry(f.to_string()).or_default().insert(v);
            }
        }
        let many: Vec<String> = values
            .iter()
            .filter(|(_, set)| set.len() > MANY)
            .map(|(f, _)| f.clone())
            .collect();
        values.retain(|f, _| !many.contains(f));
        Ok(Manifest {
            segment: name,
            first,
            last,
            first_prev: entries[0].0.prev.clone(),
            last_hash: entries[entries.len() - 1].0.hash.clone(),
            min_ts: footer.min_ts,
            max_ts: footer.max_ts,
            root: merkle::to_hex(&footer.root),
            file_sha256: super::hex(&Sha256::digest(&buf)),
            values,
            many,
            prev_manifest: prev_manifest.to_string(),
        })
    }

    /// Store `manifests` and the meta writes of `more` in one batch.
    pub(super) fn store(&self, manifests: &[Manifest], more: Batch) -> Result<(), AuditError> {
        let mut batch = more;
        for m in manifests {
            batch.insert(&manifest_key(m.first), serde_json::to_vec(m).expect("json"));
        }
        self.meta.apply_batch(batch)?;
        self.meta.flush()?;
        Ok(())
    }

    /// Segment files that no manifest names (a sealing cut short before
    /// its manifest was stored): removed, since the epoch they came from
    /// is still in sled and is sealed again.
    pub(super) fn remove_strays(&self) -> Result<(), AuditError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let Ok(files) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let named: BTreeSet<String> = self
            .manifests()?
            .into_iter()
            .map(|(m, _)| m.segment)
            .collect();
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !named.contains(&name) && (name.ends_with(".zst") || name.ends_with(".tmp")) {
                tracing::info!("removing {name}: a sealing was cut short before its manifest");
                let _ = std::fs::remove_file(f.path());
            }
        }
        Ok(())
    }

    /// Check the archive: the manifest chain, each file's hash and
    /// footer, the ranges following on, and the chain of entry hashes
    /// across segment boundaries (the first entry's `prev` is the last
    /// hash before it); `full` also re-hashes every entry. Segments are
    /// checked on two threads; the chain between them in order. Leaves
    /// `w` at the last sealed entry.
    pub(super) fn verify(
        &self,
        full: bool,
        w: &mut Walk,
        v: &mut Verification,
    ) -> Result<(), AuditError> {
        let manifests = self.manifests()?;
        let mut pruned = Vec::with_capacity(manifests.len());
        for (m, _) in &manifests {
            pruned.push(self.pruned(m.first)?);
        }
        let half = |parity: usize| {
            manifests
                .iter()
                .zip(&pruned)
                .enumerate()
                .filter(|(i, _)| i % 2 == parity)
                .map(|(i, ((m, _), p))| {
                    let found = if p.is_some() {
                        Vec::new()
                    } else {
                        self.check_segment(m, full)
                    };
                    (i, found)
                })
                .collect::<Vec<_>>()
        };
        let checks: Vec<Vec<String>> = std::thread::scope(|scope| {
            let half = &half;
            let other = scope.spawn(move || half(1));
            let mut all = half(0);
            all.extend(other.join().unwrap_or_default());
            all.sort_by_key(|(i, _)| *i);
            all.into_iter().map(|(_, p)| p).collect()
        });
        let mut prev_manifest = String::new();
        for (((m, bytes), why), problems) in manifests.iter().zip(pruned).zip(checks) {
            let place = format!("segment {} (entries {}..{})", m.segment, m.first, m.last);
            if m.prev_manifest != prev_manifest {
                v.problems.push(format!(
                    "{place}: its manifest does not chain to the one before it (a segment removed, swapped or its manifest changed)"
                ));
            }
            prev_manifest = Manifest::hash(bytes);
            if m.first != w.expected_seq {
                v.problems.push(format!(
                    "{place}: follows entry {} (entries {}..{} are missing)",
                    w.expected_seq.saturating_sub(1),
                    w.expected_seq,
                    m.first.saturating_sub(1)
                ));
            }
            if m.first_prev != w.prev_hash && !w.resync {
                v.problems.push(format!(
                    "{place}: its first entry does not chain to the entry before it"
                ));
            }
            match why {
                Some(why) => v.pruned.push(why),
                None => {
                    v.problems.extend(problems);
                    v.entries += m.last + 1 - m.first;
                }
            }
            w.skip_to(m.last, &m.last_hash);
        }
        Ok(())
    }

    /// Segment `m` checked on its own: its file against its manifest and
    /// footer, and with `full` every entry re-hashed, linked to the one
    /// before it, the Merkle root recomputed and the last hash compared.
    fn check_segment(&self, m: &Manifest, full: bool) -> Vec<String> {
        let place = format!("segment {} (entries {}..{})", m.segment, m.first, m.last);
        let mut problems = Vec::new();
        let path = match self.dir() {
            Ok(d) => d.join(&m.segment),
            Err(e) => return vec![e.to_string()],
        };
        // The whole file's hash covers its footer's own hash of the rest:
        // only when it differs is the footer's asked, to say more.
        let file_ok = match std::fs::read(&path) {
            Err(e) => {
                problems.push(format!("{place}: {}: {e} (deleted?)", path.display()));
                return problems;
            }
            Ok(bytes) => super::hex(&Sha256::digest(&bytes)) == m.file_sha256,
        };
        if !file_ok {
            problems.push(format!(
                "{place}: the file differs from what was sealed (its SHA-256 does not match its manifest)"
            ));
        }
        let s = match Segment::open(&path) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{place}: {e}"));
                return problems;
            }
        };
        if !file_ok && let Err(e) = s.verify_hash() {
            problems.push(format!("{place}: {e}"));
        }
        if merkle::to_hex(&s.footer.root) != m.root
            || s.footer.first != m.first
            || s.footer.last != m.last
        {
            problems.push(format!("{place}: its footer does not match its manifest"));
        }
        if !full {
            return problems;
        }
        let mut v = Verification::default();
        let mut w = Walk {
            expected_seq: m.first,
            prev_hash: m.first_prev.clone(),
            resync: false,
        };
        let mut leaves = Vec::new();
        match s.all() {
            Ok(entries) => {
                for (seq, b) in entries {
                    match parse(seq, &b) {
                        Ok(e) => {
                            leaves.push(merkle::leaf_hash(
                                &merkle::from_hex(&e.hash).unwrap_or_default(),
                            ));
                            w.step(seq, &e, &mut v);
                        }
                        Err(e) => v.problems.push(format!("{place}: {e}")),
                    }
                }
            }
            Err(e) => v.problems.push(format!("{place}: {e}")),
        }
        problems.extend(v.problems);
        if merkle::to_hex(&merkle::root(&leaves)) != m.root {
            problems.push(format!(
                "{place}: its entries' Merkle root differs from the one sealed"
            ));
        }
        if w.prev_hash != m.last_hash {
            problems.push(format!(
                "{place}: its last entry's hash differs from its manifest's"
            ));
        }
        problems
    }

    /// Entry `seq` with its inclusion proof against its segment's root.
    pub(super) fn prove(&self, seq: u64) -> Result<Option<Proof>, AuditError> {
        let Some(m) = self.manifest_of(seq)? else {
            return Ok(None);
        };
        let s = self.segment(&m)?;
        let mut leaves: Vec<Hash> = Vec::with_capacity((m.last - m.first + 1) as usize);
        let mut entry = None;
        for (n, b) in s.all().map_err(|e| AuditError::Archive(e.to_string()))? {
            let e = parse(n, &b)?;
            leaves.push(merkle::leaf_hash(
                &merkle::from_hex(&e.hash).unwrap_or_default(),
            ));
            if n == seq {
                entry = Some(String::from_utf8_lossy(&b).into_owned());
            }
        }
        let index = (seq - m.first) as usize;
        Ok(entry.map(|entry| Proof {
            entry,
            segment: m.segment.clone(),
            index: index as u64,
            size: leaves.len() as u64,
            path: merkle::inclusion_proof(index, &leaves)
                .iter()
                .map(merkle::to_hex)
                .collect(),
            root: m.root.clone(),
        }))
    }
}
