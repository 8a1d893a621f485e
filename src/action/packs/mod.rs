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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use git2::{Direction, FetchOptions, ObjectType, Oid, RemoteCallbacks, Repository};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Action, ActionSpec, Outcome, ParamSpec, RunContext, Status};
use crate::alias::Params;
use crate::alias::cast::ParamType;
use crate::clock;

/// Versions kept per pack (the current one included).
const KEEP_VERSIONS: usize = 4;
/// How long resolving a ref (ls-remote) may take when a request is made.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
const EXCHANGE: &str = "https://github.com/StackStorm-Exchange/stackstorm-";

/// Git settings from the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// Private key for ssh:// and git@host: URLs (ssh-agent is tried first).
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// `url.<base>.insteadOf`: fetch `to` whenever a URL starts with `from`
    /// (mirrors, or a local copy in tests). The request still shows the URL
    /// it was given; the fetch URL is shown beside it.
    #[serde(default)]
    pub instead_of: Vec<InsteadOf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsteadOf {
    pub from: String,
    pub to: String,
}

/// What the packs directory records about one installed pack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    pub commit: String,
    #[serde(default)]
    pub reference: Option<String>,
    pub url: String,
    #[serde(default)]
    pub version: Option<String>,
    pub installed_ms: u64,
    pub installed_by: String,
    pub request: String,
    /// Whether its aliases are registered (`register` all or aliases).
    pub aliases: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackRecord {
    pub name: String,
    pub current: Installed,
    /// Earlier versions still on disk, newest first.
    #[serde(default)]
    pub previous: Vec<Installed>,
}

/// One pack to install, as resolved at request time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub pack: String,
    /// The URL as requested (what policies constrain).
    pub url: String,
    /// Where it is actually fetched from, after `instead_of`.
    pub fetch_url: String,
    /// Branch, tag or commit asked for; None: the remote's default branch.
    pub reference: Option<String>,
    pub commit: String,
    /// The pack lives in `packs/<pack>` of the repository (st2 1.x `subtree`).
    pub subtree: bool,
}

/// A change of `packs/<name>` about to happen. It is written and flushed
/// before the link moves, so that after a crash the link and the record
/// can be made to agree: a link already at `target` means the switch
/// happened and `record` is written; otherwise the intent is dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    request: String,
    pack: String,
    /// The version the link will point at; None: the link goes (uninstall).
    target: Option<String>,
    /// The pack's record once switched; None: no record (uninstall).
    record: Option<PackRecord>,
    /// The record has been written to match the link.
    applied: bool,
}

fn intent_key(request: &str, pack: &str) -> Vec<u8> {
    format!("{request}\0{pack}").into_bytes()
}

/// A switch that a request completed: which pack, and the commit it now
/// runs (None: uninstalled). What a restart reads to finish the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Switched {
    pub pack: String,
    pub commit: Option<String>,
}

pub struct PackManager {
    dir: PathBuf,
    records: sled::Tree,
    /// Switches of `packs/<name>` in progress, by `request \0 pack`.
    intents: sled::Tree,
    git: GitConfig,
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// Held while a pack is being changed; released on drop (also from a
/// fetch thread that outlives a timed-out request).
struct PackLock {
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

pub fn valid_pack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// git's check-ref-format rules for a branch or tag, or a full commit id.
pub fn valid_ref(r: &str) -> bool {
    if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    !r.is_empty()
        && r.len() <= 200
        && !r.starts_with('-')
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.ends_with('.')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && r != "@"
        && !r.split('/').any(|c| c.starts_with('.'))
        && r.bytes()
            .all(|b| b > 0x20 && b != 0x7f && !b"~^:?*[\\".contains(&b))
}

/// Accepted repository URLs: https/http, ssh, git, file, scp-like, or an
/// absolute local path. Never an option, never another transport.
pub fn valid_url(u: &str) -> bool {
    if u.is_empty() || u.starts_with('-') || u.chars().any(|c| c.is_control() || c == ' ') {
        return false;
    }
    let schemes = ["https://", "http://", "ssh://", "git://", "file://"];
    if schemes.iter().any(|s| u.starts_with(s)) {
        // No host that could pass for an option (`ssh://-oProxyCommand=...`).
        return u
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('-'));
    }
    if u.starts_with('/') {
        return true;
    }
    // scp-like: user@host:path
    u.split_once(':').is_some_and(|(host, path)| {
        host.contains('@') && !host.contains('/') && !host.starts_with('-') && !path.is_empty()
    })
}

/// The pack name a URL implies: its last path segment without `.git` and
/// without the Exchange's `stackstorm-` prefix.
fn name_from_url(url: &str) -> String {
    let last = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let last = last.strip_suffix(".git").unwrap_or(last);
    last.strip_prefix("stackstorm-").unwrap_or(last).to_string()
}

fn looks_like_url(s: &str) -> bool {
    s.contains("://") || s.starts_with('/') || (s.contains('@') && s.contains(':'))
}

/// The directory of a repository on this machine (`file://` or a path).
fn local_repository(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Bound how long libgit2 waits for a stalled server (connect 15 s, each
/// read or write 60 s), so a fetch cannot hang for ever.
///
/// # Safety
/// libgit2's global options may be set only while no other thread exists:
/// `main` calls this first, before the runtime or any other thread starts.
pub unsafe fn set_git_timeouts() {
    // SAFETY: the caller guarantees this process has one thread.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(15_000);
        let _ = git2::opts::set_server_timeout_in_milliseconds(60_000);
    }
}

impl PackManager {
    pub fn new(dir: &Path, db: &sled::Db, git: GitConfig) -> Result<Arc<Self>, String> {
        for sub in ["git", "versions", "staging"] {
            std::fs::create_dir_all(dir.join(".airlock").join(sub)).map_err(|e| {
                format!(
                    "cannot create {}: {e}",
                    dir.join(".airlock").join(sub).display()
                )
            })?;
        }
        let mgr = PackManager {
            dir: dir.to_path_buf(),
            records: db.open_tree("packs").map_err(|e| e.to_string())?,
            intents: db.open_tree("pack_intents").map_err(|e| e.to_string())?,
            git,
            busy: Mutex::new(HashSet::new()),
            freed: Condvar::new(),
        };
        mgr.clean_staging();
        mgr.reconcile()?;
        Ok(Arc::new(mgr))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn clean_staging(&self) {
        let staging = self.dir.join(".airlock/staging");
        if let Ok(rd) = std::fs::read_dir(&staging) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn lock(self: &Arc<Self>, name: &str) -> PackLock {
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

    pub fn record(&self, name: &str) -> Option<PackRecord> {
        self.records
            .get(name.as_bytes())
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn records(&self) -> Vec<PackRecord> {
        self.records
            .iter()
            .values()
            .filter_map(|v| v.ok().and_then(|b| serde_json::from_slice(&b).ok()))
            .collect()
    }

    /// The commit `packs/<name>` points at now, if it is a link.
    fn live_commit(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.dir.join(name)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    fn version_dir(&self, name: &str, commit: &str) -> PathBuf {
        self.dir.join(".airlock/versions").join(name).join(commit)
    }

    /// Point `packs/<name>` at `target` (None: remove it) and make `record`
    /// the pack's record, as one recoverable step: the intent is durable
    /// before the link moves, and record and intent change in one
    /// transaction after. `previous` is where the link pointed, to put it
    /// back if the record cannot be written.
    fn switch(
        &self,
        request: &str,
        name: &str,
        target: Option<&str>,
        record: Option<PackRecord>,
        previous: Option<&str>,
    ) -> Result<(), String> {
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
            .map_err(|e| format!("cannot record the switch of {name}: {e}"))?;
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
            return Err(format!("cannot record {name}: {e}"));
        }
        crate::crash::point("pack_recorded");
        Ok(())
    }

    fn move_link(&self, name: &str, target: Option<&str>) -> Result<(), String> {
        match target {
            Some(commit) => swap_symlink(&self.dir, name, &self.version_dir(name, commit)),
            None => {
                let link = self.dir.join(name);
                if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                    std::fs::remove_file(&link)
                        .map_err(|e| format!("cannot remove {}: {e}", link.display()))?;
                }
                Ok(())
            }
        }
    }

    /// Write an intent's record (or remove it) and mark the intent applied,
    /// in one transaction. Not flushed: the intent was, so a crash before
    /// the next flush redoes this at start.
    fn apply(&self, key: &[u8], intent: &Intent) -> Result<(), String> {
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
            .map_err(|e| format!("{e:?}"))
    }

    fn intents(&self, prefix: &[u8]) -> Vec<(sled::IVec, Intent)> {
        self.intents
            .scan_prefix(prefix)
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| serde_json::from_slice(&v).ok().map(|i| (k, i)))
            .collect()
    }

    /// After a crash: every switch the link shows happened gets its record;
    /// every other unapplied intent is dropped. Live version and record
    /// agree afterwards.
    fn reconcile(&self) -> Result<(), String> {
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
                self.intents.remove(&key).map_err(|e| e.to_string())?;
            }
        }
        self.intents.flush().map_err(|e| e.to_string())?;
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

    fn fetch_url(&self, url: &str) -> String {
        for rule in &self.git.instead_of {
            if let Some(rest) = url.strip_prefix(&rule.from) {
                return format!("{}{rest}", rule.to);
            }
        }
        url.to_string()
    }

    fn callbacks<'a>(&'a self, cancel: &'a AtomicBool, deadline: Instant) -> RemoteCallbacks<'a> {
        let mut cb = RemoteCallbacks::new();
        let mut attempts = 0;
        let key = self.git.ssh_key.clone();
        cb.credentials(move |_url, user, allowed| {
            attempts += 1;
            if attempts > 3 {
                return Err(git2::Error::from_str("authentication failed"));
            }
            let user = user.unwrap_or("git");
            if allowed.contains(git2::CredentialType::SSH_KEY) {
                if attempts == 1 && std::env::var_os("SSH_AUTH_SOCK").is_some() {
                    return git2::Cred::ssh_key_from_agent(user);
                }
                if let Some(k) = &key {
                    return git2::Cred::ssh_key(user, None, k, None);
                }
            }
            git2::Cred::default()
        });
        let stop = move || cancel.load(Ordering::Relaxed) || Instant::now() > deadline;
        cb.transfer_progress(move |_| !stop());
        cb.sideband_progress(move |_| !stop());
        cb
    }

    /// Resolve what `params` ask for into sources pinned to commits.
    fn resolve(self: &Arc<Self>, params: &Params) -> Result<Vec<Source>, String> {
        let packs: Vec<String> = params
            .get("packs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if packs.is_empty() {
            return Err("packs.install needs at least one pack".into());
        }
        let repo_url = params.get("repo_url").and_then(Value::as_str);
        let branch = params.get("branch").and_then(Value::as_str);
        let subtree = params
            .get("subtree")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut wanted = Vec::new();
        for entry in &packs {
            let entry = entry.trim();
            // StackStorm 3.x: name or URL, each optionally `=<ref>`.
            let (what, reference) = match entry.rsplit_once('=') {
                Some((w, r)) if !r.is_empty() => (w, Some(r.to_string())),
                _ => (entry, None),
            };
            let (name, url) = if looks_like_url(what) {
                if repo_url.is_some() {
                    return Err(format!(
                        "give the repository either in packs ({what}) or as repo_url, not both"
                    ));
                }
                (name_from_url(what), what.to_string())
            } else if let Some(u) = repo_url {
                (what.to_string(), u.to_string())
            } else {
                (what.to_string(), format!("{EXCHANGE}{what}.git"))
            };
            let reference = reference.or_else(|| branch.map(str::to_string));
            if !valid_url(&url) {
                return Err(format!("\"{url}\" is not a repository URL airlock accepts"));
            }
            if !valid_pack_name(&name) {
                return Err(format!(
                    "\"{name}\" is not a valid pack name (lowercase letters, digits, _ and -, at most 64)"
                ));
            }
            if let Some(r) = &reference
                && !valid_ref(r)
            {
                return Err(format!("\"{r}\" is not a valid git branch, tag or commit"));
            }
            wanted.push((name, url, reference));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (name, url, reference) in wanted {
            if !seen.insert(name.clone()) {
                return Err(format!("pack {name} is named twice"));
            }
            let fetch_url = self.fetch_url(&url);
            let commit = resolve_ref(self, &fetch_url, reference.as_deref())?;
            out.push(Source {
                pack: name,
                url,
                fetch_url,
                reference,
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
    ) -> Result<(PackRecord, bool, Fetched), String> {
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
            Stop::Timeout => format!(
                "timed out after {}s fetching {}",
                timeout.as_secs(),
                src.fetch_url
            ),
            Stop::Cancelled => "interrupted by shutdown while fetching".to_string(),
        })?;
        let (version_dir, version, stats) = fetched?;

        let link = self.dir.join(&src.pack);
        if let Ok(meta) = std::fs::symlink_metadata(&link)
            && !meta.file_type().is_symlink()
        {
            return Err(format!(
                "{} exists and is not managed by airlock; not replacing it",
                link.display()
            ));
        }
        let previous = self.record(&src.pack);
        let now = Installed {
            commit: src.commit.clone(),
            reference: src.reference.clone(),
            url: src.url.clone(),
            version,
            installed_ms: clock::now_ms(),
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
        debug_assert!(version_dir.ends_with(&src.commit));
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
    ) -> Result<(PathBuf, Option<String>, Fetched), String> {
        crate::crash::point("pack_fetching");
        let oid = Oid::from_str(&src.commit).map_err(|e| e.to_string())?;
        let mut stats = Fetched::default();
        let repo = match local_repository(&src.fetch_url) {
            // A repository on this machine is read in place: nothing crosses
            // a network, and libgit2's local transport would re-pack every
            // object (4x `git clone`'s time on a 10,000-commit history).
            // Objects are hash-checked as they are read.
            Some(path) => Repository::open(&path)
                .map_err(|e| format!("{}: {}", src.fetch_url, e.message()))?,
            None => self.fetch_into_cache(src, oid, cancel, deadline, &mut stats)?,
        };
        if cancel.load(Ordering::Relaxed) {
            return Err("fetch cancelled".into());
        }
        let commit = repo
            .find_commit(oid)
            .map_err(|_| format!("commit {} is not in {}", src.commit, src.fetch_url))?;
        let mut tree = commit.tree().map_err(|e| e.to_string())?;
        if src.subtree {
            let entry = tree
                .get_path(Path::new("packs").join(&src.pack).as_path())
                .map_err(|_| format!("the repository has no packs/{} directory", src.pack))?;
            tree = entry
                .to_object(&repo)
                .and_then(|o| o.peel_to_tree())
                .map_err(|e| e.to_string())?;
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
        let result = (|| -> Result<Option<String>, String> {
            write_tree(&repo, &tree, &staging)?;
            let version = validate_pack(&staging, &src.pack)?;
            std::fs::create_dir_all(version_dir.parent().expect("versions dir"))
                .map_err(|e| e.to_string())?;
            crate::crash::point("pack_staged");
            std::fs::rename(&staging, &version_dir)
                .map_err(|e| format!("cannot move staging into place: {e}"))?;
            Ok(version)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok((version_dir, result?, stats))
    }

    /// The pack's bare repository, holding `oid` (fetched if it did not).
    /// Fetched objects are kept, so the next fetch sends only new ones.
    fn fetch_into_cache(
        &self,
        src: &Source,
        oid: Oid,
        cancel: &AtomicBool,
        deadline: Instant,
        stats: &mut Fetched,
    ) -> Result<Repository, String> {
        let git_dir = self
            .dir
            .join(".airlock/git")
            .join(format!("{}.git", src.pack));
        let repo = match Repository::open_bare(&git_dir) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(&git_dir)
                .map_err(|e| format!("cannot create {}: {e}", git_dir.display()))?,
        };
        if repo.find_commit(oid).is_err() {
            let mut remote = repo
                .remote_anonymous(&src.fetch_url)
                .map_err(|e| format!("{}: {}", src.fetch_url, e.message()))?;
            let mut opts = FetchOptions::new();
            opts.remote_callbacks(self.callbacks(cancel, deadline));
            opts.download_tags(git2::AutotagOption::None);
            // Fetch into refs of our own: they are the "haves" that make
            // the next fetch send only new objects.
            let refspec = match &src.reference {
                Some(r) if Oid::from_str(r).is_ok() && r.len() == 40 => None,
                Some(r) if r.starts_with("refs/") => Some(format!(
                    "+{r}:refs/airlock/{}",
                    r.trim_start_matches("refs/")
                )),
                Some(r) => Some(format!("+refs/heads/{r}:refs/airlock/heads/{r}")),
                None => Some("+HEAD:refs/airlock/HEAD".to_string()),
            };
            let tag_refspec = src
                .reference
                .as_ref()
                .map(|r| format!("+refs/tags/{r}:refs/airlock/tags/{r}"));
            let mut specs: Vec<String> = refspec.into_iter().collect();
            if let Some(t) = tag_refspec {
                specs.push(t);
            }
            let by_ref = remote.fetch(&specs, Some(&mut opts), None);
            stats.add(&remote.stats());
            if cancel.load(Ordering::Relaxed) {
                return Err("fetch cancelled".into());
            }
            if repo.find_commit(oid).is_err() {
                // The ref moved on and dropped the commit: ask for it by id.
                let mut opts = FetchOptions::new();
                opts.remote_callbacks(self.callbacks(cancel, deadline));
                let by_id = remote.fetch(&[src.commit.as_str()], Some(&mut opts), None);
                stats.add(&remote.stats());
                if repo.find_commit(oid).is_err() {
                    let why = [by_ref.err(), by_id.err()]
                        .into_iter()
                        .flatten()
                        .map(|e| e.message().to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(format!(
                        "commit {} is not available from {}{}",
                        src.commit,
                        src.fetch_url,
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({why})")
                        }
                    ));
                }
            }
            repo.reference(
                &format!("refs/airlock/commits/{}", src.commit),
                oid,
                true,
                "airlock install",
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(repo)
    }

    fn prune_versions(&self, rec: &PackRecord) {
        let keep: HashSet<&str> = std::iter::once(rec.current.commit.as_str())
            .chain(rec.previous.iter().map(|v| v.commit.as_str()))
            .collect();
        let dir = self.dir.join(".airlock/versions").join(&rec.name);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(name.as_str()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    fn rollback(
        self: &Arc<Self>,
        name: &str,
        ctx: &RunContext,
    ) -> Result<(Installed, Installed), String> {
        let _lock = self.lock(name);
        let mut rec = self
            .record(name)
            .ok_or_else(|| format!("pack {name} is not installed"))?;
        let Some(target) = rec.previous.first().cloned() else {
            return Err(format!(
                "pack {name} has no earlier version to roll back to"
            ));
        };
        let dir = self
            .dir
            .join(".airlock/versions")
            .join(name)
            .join(&target.commit);
        validate_pack(&dir, name)
            .map_err(|e| format!("version {} cannot be restored: {e}", target.commit))?;
        let from = rec.current.clone();
        rec.previous.remove(0);
        rec.current = Installed {
            installed_ms: clock::now_ms(),
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

    fn uninstall(self: &Arc<Self>, name: &str, ctx: &RunContext) -> Result<PackRecord, String> {
        let _lock = self.lock(name);
        let rec = self
            .record(name)
            .ok_or_else(|| format!("pack {name} is not installed"))?;
        let live = self.live_commit(name);
        self.switch(ctx.request_id, name, None, None, live.as_deref())?;
        let _ = std::fs::remove_dir_all(self.dir.join(".airlock/versions").join(name));
        let _ = std::fs::remove_dir_all(self.dir.join(".airlock/git").join(format!("{name}.git")));
        Ok(rec)
    }
}

/// What a fetch transferred.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Fetched {
    pub objects: usize,
    pub bytes: usize,
}

impl Fetched {
    fn add(&mut self, p: &git2::Progress) {
        self.objects += p.received_objects();
        self.bytes += p.received_bytes();
    }
}

enum Stop {
    Timeout,
    Cancelled,
}

/// Run `f` on its own thread and wait for it until `deadline` or until
/// `cancel` is set. libgit2 blocks in network reads a callback cannot
/// interrupt; this bounds how long a request waits for a stalled server.
/// `f` sees a flag raised when the caller gave up; `keep` (a lock) is
/// dropped only when `f` has returned.
fn bounded<T: Send + 'static, K: Send + 'static>(
    deadline: Instant,
    cancel: &AtomicBool,
    keep: K,
    f: impl FnOnce(&AtomicBool) -> T + Send + 'static,
) -> Result<(T, K), Stop> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let out = f(&stop2);
        let _ = tx.send((out, keep));
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => return Ok(r),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if cancel.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(Stop::Cancelled);
                }
                if Instant::now() > deadline {
                    stop.store(true, Ordering::Relaxed);
                    return Err(Stop::Timeout);
                }
            }
            // The thread panicked.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(Stop::Cancelled),
        }
    }
}

/// Resolve `reference` (None: the default branch) on `url` to a commit id,
/// giving up after `RESOLVE_TIMEOUT`.
fn resolve_ref(
    mgr: &Arc<PackManager>,
    url: &str,
    reference: Option<&str>,
) -> Result<String, String> {
    let (m, u, r) = (mgr.clone(), url.to_string(), reference.map(str::to_string));
    let never = AtomicBool::new(false);
    bounded(Instant::now() + RESOLVE_TIMEOUT, &never, (), move |stop| {
        ls_remote(&m, &u, r.as_deref(), stop)
    })
    .map_err(|_| format!("{url} did not answer within {}s", RESOLVE_TIMEOUT.as_secs()))?
    .0
}

/// Resolve `reference` (None: the default branch) on `url` to a commit id.
fn ls_remote(
    mgr: &PackManager,
    url: &str,
    reference: Option<&str>,
    cancel: &AtomicBool,
) -> Result<String, String> {
    if let Some(r) = reference
        && r.len() == 40
        && Oid::from_str(r).is_ok()
    {
        return Ok(r.to_lowercase());
    }
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let mut remote =
        git2::Remote::create_detached(url).map_err(|e| format!("{url}: {}", e.message()))?;
    let conn = remote
        .connect_auth(
            Direction::Fetch,
            Some(mgr.callbacks(cancel, deadline)),
            None,
        )
        .map_err(|e| format!("cannot reach {url}: {}", e.message()))?;
    let heads: HashMap<String, Oid> = conn
        .list()
        .map_err(|e| format!("{url}: {}", e.message()))?
        .iter()
        .map(|h| (h.name().to_string(), h.oid()))
        .collect();
    let candidates: Vec<String> = match reference {
        None => vec!["HEAD".to_string()],
        Some(r) if r.starts_with("refs/") => vec![format!("{r}^{{}}"), r.to_string()],
        Some(r) => vec![
            format!("refs/heads/{r}"),
            // An annotated tag: the commit it points to is listed as `^{}`.
            format!("refs/tags/{r}^{{}}"),
            format!("refs/tags/{r}"),
        ],
    };
    candidates
        .iter()
        .find_map(|c| heads.get(c))
        .map(|o| o.to_string())
        .ok_or_else(|| match reference {
            Some(r) => format!("{url} has no branch or tag \"{r}\""),
            None => format!("{url} has no default branch"),
        })
}

/// Write `tree` to `dest`: files, executables, and symlinks that stay
/// inside the pack. Submodules are skipped.
fn write_tree(repo: &Repository, tree: &git2::Tree, dest: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    for entry in tree.iter() {
        let name = entry
            .name()
            .ok_or("a file name in the repository is not UTF-8")?;
        if name == ".." || name == "." || name.contains('/') || name == ".git" {
            return Err(format!("refusing repository entry {name:?}"));
        }
        let path = dest.join(name);
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = entry
                    .to_object(repo)
                    .and_then(|o| o.peel_to_tree())
                    .map_err(|e| e.to_string())?;
                write_tree(repo, &sub, &path)?;
            }
            Some(ObjectType::Blob) => {
                let blob = entry
                    .to_object(repo)
                    .and_then(|o| o.peel_to_blob())
                    .map_err(|e| e.to_string())?;
                if entry.filemode() == 0o120000 {
                    let target = String::from_utf8_lossy(blob.content()).into_owned();
                    if target.starts_with('/')
                        || Path::new(&target)
                            .components()
                            .any(|c| c.as_os_str() == "..")
                    {
                        return Err(format!(
                            "symlink {name} -> {target} points outside the pack"
                        ));
                    }
                    std::os::unix::fs::symlink(&target, &path).map_err(|e| e.to_string())?;
                } else {
                    std::fs::write(&path, blob.content())
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    if entry.filemode() == 0o100755 {
                        use std::os::unix::fs::PermissionsExt;
                        let _ =
                            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
                    }
                }
            }
            _ => {} // submodule commits: not fetched
        }
    }
    Ok(())
}

/// A staged pack is installable: pack.yaml names it, its aliases load.
/// Returns the pack's version.
fn validate_pack(dir: &Path, name: &str) -> Result<Option<String>, String> {
    let meta_path = dir.join("pack.yaml");
    let text = std::fs::read_to_string(&meta_path)
        .map_err(|_| "the repository has no pack.yaml".to_string())?;
    let meta: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("pack.yaml is not valid YAML: {e}"))?;
    let declared = meta
        .get("ref")
        .or_else(|| meta.get("name"))
        .and_then(|v| v.as_str())
        .ok_or("pack.yaml has no name")?;
    if declared != name {
        return Err(format!(
            "pack.yaml names the pack \"{declared}\", not \"{name}\""
        ));
    }
    if dir.join("aliases").is_dir() {
        let loaded = crate::alias::load::load_pack(dir, name);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                let rel = d.file.strip_prefix(dir).unwrap_or(&d.file);
                format!(
                    "{}:{}:{}: {}{}",
                    rel.display(),
                    d.line,
                    d.column,
                    if d.field.is_empty() {
                        String::new()
                    } else {
                        format!("{}: ", d.field)
                    },
                    d.message
                )
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!("invalid aliases: {}", errors.join("; ")));
        }
    }
    Ok(meta.get("version").and_then(|v| match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }))
}

/// Point `packs/<name>` at `target` with one rename over the old link.
fn swap_symlink(dir: &Path, name: &str, target: &Path) -> Result<(), String> {
    let rel = target
        .strip_prefix(dir)
        .map_err(|_| "version outside packs dir".to_string())?;
    let tmp = dir.join(format!(".airlock/link-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(rel, &tmp).map_err(|e| format!("cannot create link: {e}"))?;
    // The temp link lives one level down; its target is relative to packs/.
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot switch {name}: {e}")
    })
}

// ---------------------------------------------------------------- actions

pub fn actions(mgr: Arc<PackManager>) -> Vec<Arc<dyn Action>> {
    vec![
        Arc::new(Install {
            spec: install_spec(),
            mgr: mgr.clone(),
        }),
        Arc::new(Uninstall {
            spec: uninstall_spec(),
            mgr: mgr.clone(),
        }),
        Arc::new(Rollback {
            spec: rollback_spec(),
            mgr: mgr.clone(),
        }),
        Arc::new(List {
            spec: list_spec(),
            mgr,
        }),
    ]
}

struct Install {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

pub fn install_spec() -> ActionSpec {
    use ParamType::*;
    ActionSpec {
        reference: "packs.install",
        description: "Install packs from git",
        params: vec![
            ParamSpec::new(
                "packs",
                Array,
                "pack names or git URLs, each optionally =<ref>",
            )
            .required(),
            ParamSpec::new(
                "repo_url",
                String,
                "repository holding the packs (StackStorm 1.x)",
            ),
            ParamSpec::new("branch", String, "branch, tag or commit (StackStorm 1.x)"),
            ParamSpec::new(
                "subtree",
                Boolean,
                "packs live in packs/<name> of the repository",
            ),
            ParamSpec::new(
                "register",
                String,
                "what to register: all, aliases, or other st2 kinds",
            )
            .default(json!("all")),
            ParamSpec::new("force", Boolean, "accepted for compatibility").default(json!(false)),
            ParamSpec::new("skip_dependencies", Boolean, "accepted for compatibility")
                .default(json!(false)),
            ParamSpec::new("timeout", Integer, "seconds the fetch may take").default(json!(600)),
            ParamSpec::new(
                "env",
                Object,
                "accepted for compatibility; airlock runs no virtualenv",
            ),
            ParamSpec::new(
                "python3",
                Boolean,
                "accepted for compatibility (st2 2.7–3.3)",
            ),
        ],
    }
}

pub fn uninstall_spec() -> ActionSpec {
    ActionSpec {
        reference: "packs.uninstall",
        description: "Remove installed packs",
        params: vec![ParamSpec::new("packs", ParamType::Array, "pack names").required()],
    }
}

pub fn rollback_spec() -> ActionSpec {
    ActionSpec {
        reference: "packs.rollback",
        description: "Restore a pack's previous installed version",
        params: vec![ParamSpec::new("pack", ParamType::String, "pack name").required()],
    }
}

pub fn list_spec() -> ActionSpec {
    ActionSpec {
        reference: "packs.list",
        description: "List installed packs",
        params: vec![],
    }
}

const REGISTER_KINDS: [&str; 11] = [
    "all",
    "sensors",
    "actions",
    "rules",
    "aliases",
    "runners",
    "triggers",
    "rule_types",
    "policy_types",
    "policies",
    "configs",
];

impl Action for Install {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn settled(&self, request: &str) {
        self.mgr.forget_switches(Some(request));
    }

    /// Resolving the ref asks the remote (`git ls-remote`).
    fn prepares_slowly(&self) -> bool {
        true
    }

    fn prepare(&self, mut params: Params) -> Result<Params, String> {
        let register = params
            .get("register")
            .and_then(Value::as_str)
            .unwrap_or("all");
        for kind in register.split(',').map(str::trim) {
            if !REGISTER_KINDS.contains(&kind) {
                return Err(format!(
                    "register: unknown kind \"{kind}\" (one of {})",
                    REGISTER_KINDS.join(", ")
                ));
            }
        }
        if let Some(t) = params.get("timeout").and_then(Value::as_i64)
            && t <= 0
        {
            return Err("timeout must be a positive number of seconds".into());
        }
        let sources = self.mgr.resolve(&params)?;
        params.insert(
            "resolved".into(),
            serde_json::to_value(sources).expect("sources"),
        );
        Ok(params)
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let sources: Vec<Source> = match params.get("resolved").cloned().map(serde_json::from_value)
        {
            Some(Ok(s)) => s,
            _ => return Outcome::failed("the request carries no resolved commits"),
        };
        let timeout =
            Duration::from_secs(params.get("timeout").and_then(Value::as_u64).unwrap_or(600));
        let register = params
            .get("register")
            .and_then(Value::as_str)
            .unwrap_or("all");
        let aliases = register
            .split(',')
            .any(|k| matches!(k.trim(), "all" | "aliases"));
        let mut installed = Vec::new();
        let mut changed = false;
        for src in &sources {
            match self.mgr.install(src, ctx, timeout, aliases) {
                Ok((rec, c, stats)) => {
                    changed |= c;
                    installed.push((rec, stats));
                }
                Err(e) => {
                    let mut out = Outcome::failed(format!("pack {}: {e}", src.pack));
                    out.packs_changed = changed;
                    out.result = json!({
                        "error": out.summary,
                        "installed": installed.iter().map(|(r, _)| &r.name).collect::<Vec<_>>(),
                    });
                    return out;
                }
            }
        }
        installed_outcome(&installed, aliases || changed)
    }

    fn recover(&self, ctx: &RunContext, params: &Params) -> Option<Outcome> {
        let switched = self.mgr.switched_by(ctx.request_id);
        if switched.is_empty() {
            return None;
        }
        let sources: Vec<Source> = params
            .get("resolved")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let (done, missing): (Vec<&Source>, Vec<&Source>) = sources
            .iter()
            .partition(|s| switched.iter().any(|w| w.pack == s.pack));
        let installed: Vec<(PackRecord, Fetched)> = done
            .iter()
            .filter_map(|s| self.mgr.record(&s.pack))
            .map(|r| (r, Fetched::default()))
            .collect();
        let mut out = installed_outcome(&installed, true);
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.pack.as_str()).collect();
            out.status = Status::Failed;
            out.summary = format!("{}; not installed: {}", out.summary, names.join(", "));
            out.result["error"] = json!(out.summary);
        }
        Some(out)
    }
}

/// The outcome of installing `installed` (records as now written).
fn installed_outcome(installed: &[(PackRecord, Fetched)], packs_changed: bool) -> Outcome {
    let summary = installed
        .iter()
        .map(|(r, _)| {
            format!(
                "{}{} at {}",
                r.name,
                r.current
                    .version
                    .as_ref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                &r.current.commit[..12]
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Outcome {
        status: Status::Succeeded,
        result: json!({
            "packs": installed.iter().map(|(r, fetched)| json!({
                "name": r.name, "version": r.current.version, "commit": r.current.commit,
                "url": r.current.url, "ref": r.current.reference,
                "previous": r.previous.first().map(|p| &p.commit),
                "fetched": fetched,
            })).collect::<Vec<_>>(),
            "message": format!("Successfully installed {summary}"),
        }),
        summary: format!("installed {summary}"),
        commit: installed.first().map(|(r, _)| r.current.commit.clone()),
        packs_changed,
    }
}

struct Uninstall {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

impl Action for Uninstall {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn settled(&self, request: &str) {
        self.mgr.forget_switches(Some(request));
    }

    fn prepare(&self, params: Params) -> Result<Params, String> {
        for p in params
            .get("packs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = p.as_str().unwrap_or_default();
            if !valid_pack_name(name) {
                return Err(format!("\"{name}\" is not a valid pack name"));
            }
            if self.mgr.record(name).is_none() {
                return Err(format!("pack {name} is not installed"));
            }
        }
        Ok(params)
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let mut removed = Vec::new();
        for p in params
            .get("packs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = p.as_str().unwrap_or_default();
            match self.mgr.uninstall(name, ctx) {
                Ok(rec) => removed.push(json!({"name": rec.name, "commit": rec.current.commit})),
                Err(e) => {
                    let mut out = Outcome::failed(e);
                    out.packs_changed = !removed.is_empty();
                    return out;
                }
            }
        }
        let names: Vec<&str> = removed.iter().filter_map(|r| r["name"].as_str()).collect();
        let mut out = Outcome::ok(
            format!("uninstalled {}", names.join(", ")),
            json!({"removed": removed}),
        );
        out.packs_changed = true;
        out
    }

    fn recover(&self, ctx: &RunContext, params: &Params) -> Option<Outcome> {
        let switched = self.mgr.switched_by(ctx.request_id);
        if switched.is_empty() {
            return None;
        }
        let names: Vec<&str> = switched.iter().map(|w| w.pack.as_str()).collect();
        let wanted = params
            .get("packs")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let mut out = Outcome::ok(
            format!("uninstalled {}", names.join(", ")),
            json!({"removed": names}),
        );
        if names.len() < wanted {
            out = Outcome::failed(format!(
                "uninstalled only {} before airlock stopped",
                names.join(", ")
            ));
        }
        out.packs_changed = true;
        Some(out)
    }
}

struct Rollback {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

impl Action for Rollback {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn settled(&self, request: &str) {
        self.mgr.forget_switches(Some(request));
    }

    /// Pin the version to restore, so the prompt shows it and approval
    /// restores exactly that one.
    fn prepare(&self, mut params: Params) -> Result<Params, String> {
        let name = params
            .get("pack")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !valid_pack_name(&name) {
            return Err(format!("\"{name}\" is not a valid pack name"));
        }
        let rec = self
            .mgr
            .record(&name)
            .ok_or_else(|| format!("pack {name} is not installed"))?;
        let target = rec
            .previous
            .first()
            .ok_or_else(|| format!("pack {name} has no earlier version to roll back to"))?;
        params.insert("from_commit".into(), json!(rec.current.commit));
        params.insert("to_commit".into(), json!(target.commit));
        Ok(params)
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let name = params
            .get("pack")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let want = params
            .get("to_commit")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self
            .mgr
            .record(name)
            .and_then(|r| r.previous.first().map(|p| p.commit.clone()))
            .as_deref()
            != Some(want)
        {
            return Outcome::failed(format!(
                "pack {name} changed since the request was made; its previous version is no longer {}",
                &want[..want.len().min(12)]
            ));
        }
        match self.mgr.rollback(name, ctx) {
            Ok((from, to)) => Outcome {
                status: Status::Succeeded,
                result: json!({"pack": name, "from": from.commit, "to": to.commit, "version": to.version}),
                summary: format!(
                    "rolled {name} back from {} to {}",
                    &from.commit[..12],
                    &to.commit[..12]
                ),
                commit: Some(to.commit),
                packs_changed: true,
            },
            Err(e) => Outcome::failed(e),
        }
    }

    fn recover(&self, ctx: &RunContext, params: &Params) -> Option<Outcome> {
        let switched = self.mgr.switched_by(ctx.request_id).into_iter().next()?;
        let from = params
            .get("from_commit")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let to = switched.commit.unwrap_or_default();
        Some(Outcome {
            status: Status::Succeeded,
            result: json!({"pack": switched.pack, "from": from, "to": to}),
            summary: format!(
                "rolled {} back from {} to {}",
                switched.pack,
                &from[..from.len().min(12)],
                &to[..to.len().min(12)]
            ),
            commit: Some(to),
            packs_changed: true,
        })
    }
}

struct List {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

impl Action for List {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn run(&self, _: &RunContext, _: &Params) -> Outcome {
        let mut recs = self.mgr.records();
        recs.sort_by(|a, b| a.name.cmp(&b.name));
        let lines: Vec<String> = recs
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} ({}) installed {} by {}",
                    r.name,
                    r.current.version.as_deref().unwrap_or("-"),
                    &r.current.commit[..12],
                    r.current.reference.as_deref().unwrap_or("default branch"),
                    clock::format_ms(r.current.installed_ms),
                    r.current.installed_by
                )
            })
            .collect();
        let summary = if recs.is_empty() {
            "no packs installed".to_string()
        } else {
            format!("{} pack(s) installed", recs.len())
        };
        Outcome::ok(
            summary,
            json!({
                "packs": recs.iter().map(|r| json!({
                    "name": r.name, "version": r.current.version, "commit": r.current.commit,
                    "ref": r.current.reference, "url": r.current.url,
                    "installed_at": clock::format_ms(r.current.installed_ms),
                    "installed_by": r.current.installed_by,
                    "request": r.current.request,
                    "previous": r.previous.iter().map(|p| &p.commit).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "stdout": lines.join("\n"),
            }),
        )
    }
}
