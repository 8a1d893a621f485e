//! The per-pack lock, and switching `packs/<name>` recoverably: an
//! intent recorded before the link moves (`store::packs`), settled at
//! start after a crash.

use std::path::PathBuf;
use std::sync::Arc;

use super::{PackError, PackManager};
use crate::store::packs::Intent;
pub use crate::store::packs::{Installed, PackRecord};

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
        self.store.get(name)
    }

    /// Every installed pack's record.
    pub fn records(&self) -> Vec<PackRecord> {
        self.store.all()
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
        let mut intent = Intent {
            request: request.to_string(),
            pack: name.to_string(),
            target: target.map(str::to_string),
            record,
            applied: false,
        };
        self.store
            .begin(&intent)
            .map_err(|e| PackError::Store(format!("cannot record the switch of {name}: {e}")))?;
        crate::crash::point("pack_intent_written");
        if let Err(e) = self.move_link(name, target) {
            let _ = self.store.forget(request, name);
            return Err(e);
        }
        crate::crash::point("pack_switched");
        intent.applied = true;
        if let Err(e) = self.store.apply(&intent) {
            // Put the link back so it agrees with the record again.
            let _ = self.move_link(name, previous);
            let _ = self.store.forget(request, name);
            return Err(PackError::Store(format!("cannot record {name}: {e}")));
        }
        crate::crash::point("pack_recorded");
        Ok(())
    }

    /// After a crash: every switch the link shows happened gets its record;
    /// every other unapplied intent is dropped. Live version and record
    /// agree afterwards.
    pub(super) fn reconcile(&self) -> Result<(), PackError> {
        for mut intent in self.store.intents(None) {
            if intent.applied {
                continue;
            }
            if self.live_commit(&intent.pack) == intent.target {
                intent.applied = true;
                self.store.apply(&intent).map_err(PackError::Store)?;
                tracing::warn!(
                    "pack {}: the switch to {} by request {} had happened before airlock stopped; its record now says so",
                    intent.pack,
                    intent.target.as_deref().unwrap_or("nothing (uninstalled)"),
                    intent.request
                );
            } else {
                self.store
                    .forget(&intent.request, &intent.pack)
                    .map_err(|e| PackError::Store(e.to_string()))?;
            }
        }
        self.store
            .flush()
            .map_err(|e| PackError::Store(e.to_string()))?;
        Ok(())
    }

    /// The switches `request` completed (this run or, after a crash, the
    /// last one): what the engine reads to finish a request the process
    /// died running.
    pub fn switched_by(&self, request: &str) -> Vec<Switched> {
        self.store
            .intents(Some(request))
            .into_iter()
            .filter(|i| i.applied)
            .map(|i| Switched {
                pack: i.pack,
                commit: i.target,
            })
            .collect()
    }

    /// Drop the switch records of a finished request (None: of every
    /// request, at start, once the last run's requests are settled).
    pub fn forget_switches(&self, request: Option<&str>) {
        for i in self.store.intents(request) {
            let _ = self.store.forget(&i.request, &i.pack);
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
