//! What is installed (records in sled), the per-pack lock, and the
//! intents that make a switch of `packs/<name>` recoverable after a crash.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{PackError, PackManager};

/// What the packs directory records about one installed pack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    /// The commit installed.
    pub commit: String,
    /// The branch or tag asked for; None: the default branch.
    #[serde(default)]
    pub reference: Option<String>,
    /// The repository, as requested.
    pub url: String,
    /// `version` from its pack.yaml.
    #[serde(default)]
    pub version: Option<String>,
    /// When (ms since the epoch).
    pub installed_ms: u64,
    /// Who asked for it.
    pub installed_by: String,
    /// The request that installed it.
    pub request: String,
    /// Whether its aliases are registered (`register` all or aliases).
    pub aliases: bool,
}

/// One installed pack: the live version and the earlier ones on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackRecord {
    /// The pack's name.
    pub name: String,
    /// The version `packs/<name>` points at.
    pub current: Installed,
    /// Earlier versions still on disk, newest first.
    #[serde(default)]
    pub previous: Vec<Installed>,
}

/// A change of `packs/<name>` about to happen. It is written and flushed
/// before the link moves, so that after a crash the link and the record
/// can be made to agree: a link already at `target` means the switch
/// happened and `record` is written; otherwise the intent is dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Intent {
    request: String,
    pack: String,
    /// The version the link will point at; None: the link goes (uninstall).
    target: Option<String>,
    /// The pack's record once switched; None: no record (uninstall).
    record: Option<PackRecord>,
    /// The record has been written to match the link.
    applied: bool,
}

pub(super) fn intent_key(request: &str, pack: &str) -> Vec<u8> {
    format!("{request}\0{pack}").into_bytes()
}

/// A switch that a request completed: which pack, and the commit it now
/// runs (None: uninstalled). What a restart reads to finish the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Switched {
    /// The pack.
    pub pack: String,
    /// The commit now live; None: uninstalled.
    pub commit: Option<String>,
}

/// Held while a pack is being changed; released on drop (also from a
/// fetch thread that outlives a timed-out request).
pub(super) struct PackLock {
    mgr: Arc<PackManager>,
    name: String,
}

impl Drop for PackLock {
    fn drop(&mut self) {
        let mut busy = self.mgr.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.name);
        self.mgr.freed.notify_all();
    }
}

impl PackManager {
    /// Pack `name`'s lock if nothing holds it now.
    pub(super) fn try_lock(self: &Arc<Self>, name: &str) -> Option<PackLock> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(name.to_string()) {
            return None;
        }
        Some(PackLock {
            mgr: self.clone(),
            name: name.to_string(),
        })
    }

    pub(super) fn lock(self: &Arc<Self>, name: &str) -> PackLock {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while busy.contains(name) {
            busy = self.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        busy.insert(name.to_string());
        PackLock {
            mgr: self.clone(),
            name: name.to_string(),
        }
    }

    /// The record of pack `name`, if installed.
    pub fn record(&self, name: &str) -> Option<PackRecord> {
        self.records
            .get(name.as_bytes())
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Every installed pack's record.
    pub fn records(&self) -> Vec<PackRecord> {
        self.records
            .iter()
            .values()
            .filter_map(|v| v.ok().and_then(|b| serde_json::from_slice(&b).ok()))
            .collect()
    }

    /// Point `packs/<name>` at `target` (None: remove it) and make `record`
    /// the pack's record, as one recoverable step: the intent is durable
    /// before the link moves, and record and intent change in one
    /// transaction after. `previous` is where the link pointed, to put it
    /// back if the record cannot be written.
    pub(super) fn switch(
        &self,
        request: &str,
        name: &str,
        target: Option<&str>,
        record: Option<PackRecord>,
        previous: Option<&str>,
    ) -> Result<(), PackError> {
        let key = intent_key(request, name);
        let mut intent = Intent {
            request: request.to_string(),
            pack: name.to_string(),
            target: target.map(str::to_string),
            record,
            applied: false,
        };
        let store = |i: &Intent| serde_json::to_vec(i).expect("intent serializes");
        self.intents
            .insert(&key, store(&intent))
            .and_then(|_| self.intents.flush())
            .map_err(|e| PackError::Store(format!("cannot record the switch of {name}: {e}")))?;
        crate::crash::point("pack_intent_written");
        if let Err(e) = self.move_link(name, target) {
            let _ = self.intents.remove(&key);
            return Err(e);
        }
        crate::crash::point("pack_switched");
        intent.applied = true;
        if let Err(e) = self.apply(&key, &intent) {
            // Put the link back so it agrees with the record again.
            let _ = self.move_link(name, previous);
            let _ = self.intents.remove(&key);
            return Err(PackError::Store(format!("cannot record {name}: {e}")));
        }
        crate::crash::point("pack_recorded");
        Ok(())
    }

    /// Write an intent's record (or remove it) and mark the intent applied,
    /// in one transaction. Not flushed: the intent was, so a crash before
    /// the next flush redoes this at start.
    pub(super) fn apply(&self, key: &[u8], intent: &Intent) -> Result<(), PackError> {
        use sled::Transactional;
        let name = intent.pack.as_bytes();
        let rec = intent
            .record
            .as_ref()
            .map(|r| serde_json::to_vec(r).expect("record serializes"));
        let value = serde_json::to_vec(intent).expect("intent serializes");
        (&self.records, &self.intents)
            .transaction(|(records, intents)| {
                match &rec {
                    Some(r) => records.insert(name, r.as_slice())?,
                    None => records.remove(name)?,
                };
                intents.insert(key, value.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| PackError::Store(format!("{e:?}")))
    }

    pub(super) fn intents(&self, prefix: &[u8]) -> Vec<(sled::IVec, Intent)> {
        self.intents
            .scan_prefix(prefix)
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| serde_json::from_slice(&v).ok().map(|i| (k, i)))
            .collect()
    }

    /// After a crash: every switch the link shows happened gets its record;
    /// every other unapplied intent is dropped. Live version and record
    /// agree afterwards.
    pub(super) fn reconcile(&self) -> Result<(), PackError> {
        for (key, mut intent) in self.intents(b"") {
            if intent.applied {
                continue;
            }
            if self.live_commit(&intent.pack) == intent.target {
                intent.applied = true;
                self.apply(&key, &intent)?;
                tracing::warn!(
                    "pack {}: the switch to {} by request {} had happened before airlock stopped; its record now says so",
                    intent.pack,
                    intent.target.as_deref().unwrap_or("nothing (uninstalled)"),
                    intent.request
                );
            } else {
                self.intents
                    .remove(&key)
                    .map_err(|e| PackError::Store(e.to_string()))?;
            }
        }
        self.intents
            .flush()
            .map_err(|e| PackError::Store(e.to_string()))?;
        Ok(())
    }

    /// The switches `request` completed (this run or, after a crash, the
    /// last one): what the engine reads to finish a request the process
    /// died running.
    pub fn switched_by(&self, request: &str) -> Vec<Switched> {
        let mut prefix = request.as_bytes().to_vec();
        prefix.push(0);
        self.intents(&prefix)
            .into_iter()
            .filter(|(_, i)| i.applied)
            .map(|(_, i)| Switched {
                pack: i.pack,
                commit: i.target,
            })
            .collect()
    }

    /// Drop the switch records of a finished request (None: of every
    /// request, at start, once the last run's requests are settled).
    pub fn forget_switches(&self, request: Option<&str>) {
        let prefix = request.map(|r| intent_key(r, "")).unwrap_or_default();
        for (key, _) in self.intents(&prefix) {
            let _ = self.intents.remove(&key);
        }
    }

    /// Directories of installed packs whose aliases are registered.
    pub fn alias_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .records()
            .into_iter()
            .filter(|r| r.current.aliases)
            .map(|r| self.dir.join(&r.name))
            .filter(|p| p.join("aliases").is_dir())
            .collect();
        v.sort();
        v
    }
}
