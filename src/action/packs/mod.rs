//! `packs.install`, `packs.uninstall`, `packs.rollback` and `packs.list`:
//! StackStorm packs deployed from git, atomically.
//!
//! Layout under the packs directory:
//!
//! ```text
//! packs/<name>                         -> .airlock/versions/<name>/<sha>  (symlink)
//! packs/.airlock/git/<name>.git        bare repository: fetched objects are kept,
//!                                      so a re-install fetches only what changed
//!                                      (a repository on this machine is read in
//!                                      place instead)
//! packs/.airlock/versions/<name>/<sha> one checked-out tree per installed commit
//! packs/.airlock/staging/              checkouts being validated
//! ```
//!
//! An install fetches, writes the commit's tree into staging, validates
//! it (pack.yaml present and naming the requested pack, every alias file
//! valid, no symlink leaving the pack) and only then swaps the
//! `packs/<name>` symlink with one `rename`. Any failure leaves the pack as
//! it was. Earlier versions stay on disk so `packs.rollback` is one swap.
//!
//! The git ref is resolved to a commit when the request is made (`prepare`)
//! and that commit, not the branch, is what gets installed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};

use crate::action::RunContext;
use crate::alias::Params;

mod actions;
mod change;
mod git;
mod layout;
mod records;
mod source;

pub use actions::{actions, install_spec, list_spec, rollback_spec, uninstall_spec};
pub use git::{Fetched, set_git_timeouts};
use git::{Stop, bounded, resolve_ref};
use layout::{validate_pack, write_tree};
pub use records::{Installed, PackRecord, Switched};
use source::local_repository;
pub use source::{GitConfig, InsteadOf, Source, valid_pack_name, valid_ref, valid_url};

/// Versions kept per pack (the current one included).
const KEEP_VERSIONS: usize = 4;
/// How long resolving a ref (ls-remote) may take when a request is made.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a pack operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The request names something airlock does not accept: a pack name,
    /// a repository URL, a git ref, a parameter.
    #[error("{0}")]
    Invalid(String),
    /// git could not do it: the remote is unreachable, the ref or commit
    /// does not exist.
    #[error("{0}")]
    Git(String),
    /// The fetch did not finish within the request's timeout.
    #[error("timed out after {secs}s fetching {url}")]
    Timeout {
        /// The timeout.
        secs: u64,
        /// What was being fetched.
        url: String,
    },
    /// Shutdown stopped the fetch.
    #[error("interrupted by shutdown while fetching")]
    Cancelled,
    /// The commit's tree is not a valid pack (no pack.yaml, wrong name,
    /// invalid aliases, a symlink leaving the pack).
    #[error("{0}")]
    NotAPack(String),
    /// The packs directory could not be read or changed.
    #[error("{0}")]
    Disk(String),
    /// The pack records could not be read or written.
    #[error("pack records: {0}")]
    Store(String),
    /// No such pack is installed.
    #[error("pack {0} is not installed")]
    NotInstalled(String),
    /// The pack has no earlier version on disk.
    #[error("pack {0} has no earlier version to roll back to")]
    NoEarlierVersion(String),
}

impl From<PackError> for crate::action::PrepareError {
    fn from(e: PackError) -> Self {
        use crate::action::PrepareError as P;
        let text = e.to_string();
        match e {
            PackError::Invalid(_) | PackError::NotAPack(_) => P::Invalid(text),
            PackError::NotInstalled(_) | PackError::NoEarlierVersion(_) => P::NotFound(text),
            _ => P::Unavailable(text),
        }
    }
}

/// The packs directory and its records: installs, rollbacks and uninstalls, serialized per pack.
pub struct PackManager {
    dir: PathBuf,
    store: crate::store::packs::PackRecords,
    git: GitConfig,
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

impl PackManager {
    /// Manage packs under `dir`, their records in `db`; settles what a crash left half-switched.
    pub fn new(
        dir: &Path,
        db: &crate::store::kv::Db,
        git: GitConfig,
    ) -> Result<Arc<Self>, PackError> {
        for sub in ["git", "versions", "staging"] {
            std::fs::create_dir_all(dir.join(".airlock").join(sub)).map_err(|e| {
                PackError::Disk(format!(
                    "cannot create {}: {e}",
                    dir.join(".airlock").join(sub).display()
                ))
            })?;
        }
        let mgr = PackManager {
            dir: dir.to_path_buf(),
            store: crate::store::packs::PackRecords::open(db)
                .map_err(|e| PackError::Store(e.to_string()))?,
            git,
            busy: Mutex::new(HashSet::new()),
            freed: Condvar::new(),
        };
        mgr.clean_staging();
        mgr.reconcile()?;
        Ok(Arc::new(mgr))
    }

    /// The packs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resolve what `params` ask for into sources pinned to commits
    /// (network: `ls-remote` per source).
    fn resolve(self: &Arc<Self>, params: &Params) -> Result<Vec<Source>, PackError> {
        let (wanted, subtree) = source::wanted(params)?;
        let mut out = Vec::new();
        for w in wanted {
            let fetch_url = source::fetch_url(&self.git, &w.url);
            let commit = resolve_ref(self, &fetch_url, w.reference.as_deref())?;
            out.push(Source {
                pack: w.pack,
                url: w.url,
                fetch_url,
                reference: w.reference,
                commit,
                subtree,
            });
        }
        Ok(out)
    }

    /// Install one source: fetch, stage, validate, swap. Returns the record.
    fn install(
        self: &Arc<Self>,
        src: &Source,
        ctx: &RunContext,
        timeout: Duration,
        aliases: bool,
    ) -> Result<(PackRecord, bool, Fetched), PackError> {
        let lock = self.lock(&src.pack);
        let deadline = Instant::now() + timeout;
        let mgr = self.clone();
        let src2 = src.clone();
        // The lock is kept until the fetch has really ended, even when the
        // request gave up waiting for it.
        let (fetched, _lock) = bounded(deadline, ctx.cancel, lock, move |stop| {
            mgr.fetch(&src2, stop, deadline)
        })
        .map_err(|why| match why {
            Stop::Timeout => PackError::Timeout {
                secs: timeout.as_secs(),
                url: src.fetch_url.clone(),
            },
            Stop::Cancelled => PackError::Cancelled,
        })?;
        let (_, version, stats) = fetched?;

        let link = self.dir.join(&src.pack);
        if let Ok(meta) = std::fs::symlink_metadata(&link)
            && !meta.file_type().is_symlink()
        {
            return Err(PackError::Disk(format!(
                "{} exists and is not managed by airlock; not replacing it",
                link.display()
            )));
        }
        let previous = self.record(&src.pack);
        let now = Installed {
            commit: src.commit.clone(),
            reference: src.reference.clone(),
            url: src.url.clone(),
            version,
            installed_ms: crate::wall::now_ms(),
            installed_by: ctx.requester.to_string(),
            request: ctx.request_id.to_string(),
            aliases,
        };
        let changed = previous
            .as_ref()
            .is_none_or(|p| p.current.commit != now.commit);
        let mut rec = match previous {
            Some(mut p) => {
                if p.current.commit != now.commit {
                    p.previous.retain(|v| v.commit != now.commit);
                    p.previous.insert(0, p.current.clone());
                }
                p.current = now;
                p
            }
            None => PackRecord {
                name: src.pack.clone(),
                current: now,
                previous: Vec::new(),
            },
        };
        rec.previous.truncate(KEEP_VERSIONS - 1);
        let live = self.live_commit(&src.pack);
        self.switch(
            ctx.request_id,
            &src.pack,
            Some(&src.commit),
            Some(rec.clone()),
            live.as_deref(),
        )?;
        self.prune_versions(&rec);
        Ok((rec, changed, stats))
    }

    /// Fetch the commit and produce a validated version directory; returns
    /// it with the pack's version and what the fetch transferred.
    fn fetch(
        self: &Arc<Self>,
        src: &Source,
        cancel: &AtomicBool,
        deadline: Instant,
    ) -> Result<(PathBuf, Option<String>, Fetched), PackError> {
        crate::crash::point("pack_fetching");
        let oid = Oid::from_str(&src.commit).map_err(|e| PackError::Git(e.to_string()))?;
        let mut stats = Fetched::default();
        let repo = match local_repository(&src.fetch_url) {
            // A repository on this machine is read in place: nothing crosses
            // a network, and libgit2's local transport would re-pack every
            // object (4x `git clone`'s time on a 10,000-commit history).
            // Objects are hash-checked as they are read.
            Some(path) => Repository::open(&path)
                .map_err(|e| PackError::Git(format!("{}: {}", src.fetch_url, e.message())))?,
            None => self.fetch_into_cache(src, oid, cancel, deadline, &mut stats)?,
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(PackError::Cancelled);
        }
        let commit = repo.find_commit(oid).map_err(|_| {
            PackError::Git(format!("commit {} is not in {}", src.commit, src.fetch_url))
        })?;
        let mut tree = commit.tree().map_err(|e| PackError::Git(e.to_string()))?;
        if src.subtree {
            let entry = tree
                .get_path(Path::new("packs").join(&src.pack).as_path())
                .map_err(|_| {
                    PackError::Git(format!(
                        "the repository has no packs/{} directory",
                        src.pack
                    ))
                })?;
            tree = entry
                .to_object(&repo)
                .and_then(|o| o.peel_to_tree())
                .map_err(|e| PackError::Git(e.to_string()))?;
        }
        let version_dir = self
            .dir
            .join(".airlock/versions")
            .join(&src.pack)
            .join(&src.commit);
        if version_dir.join("pack.yaml").is_file() {
            let version = validate_pack(&version_dir, &src.pack)?;
            return Ok((version_dir, version, stats));
        }
        let staging = self.dir.join(".airlock/staging").join(format!(
            "{}-{}-{}",
            src.pack,
            &src.commit[..12],
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        let result = (|| -> Result<Option<String>, PackError> {
            write_tree(&repo, &tree, &staging)?;
            let version = validate_pack(&staging, &src.pack)?;
            std::fs::create_dir_all(version_dir.parent().expect("versions dir"))
                .map_err(|e| PackError::Disk(e.to_string()))?;
            crate::crash::point("pack_staged");
            std::fs::rename(&staging, &version_dir)
                .map_err(|e| PackError::Disk(format!("cannot move staging into place: {e}")))?;
            Ok(version)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok((version_dir, result?, stats))
    }

    /// Pack `name` at `commit`, from `url`, in its version directory,
    /// fetched if it is not there yet; no link is switched and no record
    /// written (a Temporal worker's copy of what a request was approved
    /// for). Everything is checked as for an install: the name, the URL,
    /// the commit, the tree. Returns the directory.
    pub fn materialize(
        self: &Arc<Self>,
        name: &str,
        url: &str,
        commit: &str,
    ) -> Result<PathBuf, PackError> {
        if !valid_pack_name(name) || !valid_url(url) {
            return Err(PackError::Invalid(format!(
                "pack {name:?} from {url:?} is not something airlock installs"
            )));
        }
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PackError::Invalid(format!("{commit:?} is not a commit")));
        }
        let dir = self.version_dir(name, commit);
        if dir.join("pack.yaml").is_file() {
            return Ok(dir);
        }
        let mut src = Source {
            pack: name.to_string(),
            url: url.to_string(),
            fetch_url: source::fetch_url(&self.git, url),
            reference: None,
            commit: commit.to_string(),
            subtree: false,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let never = AtomicBool::new(false);
        // Which layout the install used is not recorded: a repository that
        // is not the pack itself may hold it in packs/<name> (st2 1.x).
        match self.fetch(&src, &never, deadline) {
            Err(PackError::NotAPack(first)) => {
                src.subtree = true;
                self.fetch(&src, &never, deadline)
                    .map(|(d, _, _)| d)
                    .map_err(|_| PackError::NotAPack(first))
            }
            other => other.map(|(d, _, _)| d),
        }
    }

    fn rollback(
        self: &Arc<Self>,
        name: &str,
        ctx: &RunContext,
    ) -> Result<(Installed, Installed), PackError> {
        let _lock = self.lock(name);
        let mut rec = self
            .record(name)
            .ok_or_else(|| PackError::NotInstalled(name.to_string()))?;
        let Some(target) = rec.previous.first().cloned() else {
            return Err(PackError::NoEarlierVersion(name.to_string()));
        };
        let dir = self
            .dir
            .join(".airlock/versions")
            .join(name)
            .join(&target.commit);
        validate_pack(&dir, name).map_err(|e| {
            PackError::NotAPack(format!("version {} cannot be restored: {e}", target.commit))
        })?;
        let from = rec.current.clone();
        rec.previous.remove(0);
        rec.current = Installed {
            installed_ms: crate::wall::now_ms(),
            installed_by: ctx.requester.to_string(),
            request: ctx.request_id.to_string(),
            ..target
        };
        self.switch(
            ctx.request_id,
            name,
            Some(&rec.current.commit),
            Some(rec.clone()),
            Some(&from.commit),
        )?;
        self.prune_versions(&rec);
        Ok((from, rec.current))
    }

    fn uninstall(self: &Arc<Self>, name: &str, ctx: &RunContext) -> Result<PackRecord, PackError> {
        let _lock = self.lock(name);
        let rec = self
            .record(name)
            .ok_or_else(|| PackError::NotInstalled(name.to_string()))?;
        let live = self.live_commit(name);
        self.switch(ctx.request_id, name, None, None, live.as_deref())?;
        let _ = std::fs::remove_dir_all(self.dir.join(".airlock/versions").join(name));
        let _ = std::fs::remove_dir_all(self.dir.join(".airlock/git").join(format!("{name}.git")));
        Ok(rec)
    }
}
