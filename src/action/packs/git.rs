//! The git transport: resolving refs (`ls-remote`), fetching into the
//! per-pack bare repository, bounded in time and stoppable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use git2::{Direction, FetchOptions, Oid, RemoteCallbacks, Repository};
use serde::Serialize;

use super::source::Source;
use super::{PackError, PackManager, RESOLVE_TIMEOUT};

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

/// What a fetch transferred.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Fetched {
    /// Objects received.
    pub objects: usize,
    /// Bytes received.
    pub bytes: usize,
}

impl Fetched {
    pub(super) fn add(&mut self, p: &git2::Progress) {
        self.objects += p.received_objects();
        self.bytes += p.received_bytes();
    }
}

pub(super) enum Stop {
    Timeout,
    Cancelled,
}

/// Run `f` on its own thread and wait for it until `deadline` or until
/// `cancel` is set. libgit2 blocks in network reads a callback cannot
/// interrupt; this bounds how long a request waits for a stalled server.
/// `f` sees a flag raised when the caller gave up; `keep` (a lock) is
/// dropped only when `f` has returned.
pub(super) fn bounded<T: Send + 'static, K: Send + 'static>(
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
pub(super) fn resolve_ref(
    mgr: &Arc<PackManager>,
    url: &str,
    reference: Option<&str>,
) -> Result<String, PackError> {
    let (m, u, r) = (mgr.clone(), url.to_string(), reference.map(str::to_string));
    let never = AtomicBool::new(false);
    bounded(Instant::now() + RESOLVE_TIMEOUT, &never, (), move |stop| {
        ls_remote(&m, &u, r.as_deref(), stop)
    })
    .map_err(|_| {
        PackError::Git(format!(
            "{url} did not answer within {}s",
            RESOLVE_TIMEOUT.as_secs()
        ))
    })?
    .0
}

/// Resolve `reference` (None: the default branch) on `url` to a commit id.
pub(super) fn ls_remote(
    mgr: &PackManager,
    url: &str,
    reference: Option<&str>,
    cancel: &AtomicBool,
) -> Result<String, PackError> {
    if let Some(r) = reference
        && r.len() == 40
        && Oid::from_str(r).is_ok()
    {
        return Ok(r.to_lowercase());
    }
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    let mut remote = git2::Remote::create_detached(url)
        .map_err(|e| PackError::Git(format!("{url}: {}", e.message())))?;
    let conn = remote
        .connect_auth(
            Direction::Fetch,
            Some(mgr.callbacks(cancel, deadline)),
            None,
        )
        .map_err(|e| PackError::Git(format!("cannot reach {url}: {}", e.message())))?;
    let heads: HashMap<String, Oid> = conn
        .list()
        .map_err(|e| PackError::Git(format!("{url}: {}", e.message())))?
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
        .ok_or_else(|| {
            PackError::Git(match reference {
                Some(r) => format!("{url} has no branch or tag \"{r}\""),
                None => format!("{url} has no default branch"),
            })
        })
}

impl PackManager {
    pub(super) fn callbacks<'a>(
        &'a self,
        cancel: &'a AtomicBool,
        deadline: Instant,
    ) -> RemoteCallbacks<'a> {
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

    /// The pack's bare repository, holding `oid` (fetched if it did not).
    /// Fetched objects are kept, so the next fetch sends only new ones.
    pub(super) fn fetch_into_cache(
        &self,
        src: &Source,
        oid: Oid,
        cancel: &AtomicBool,
        deadline: Instant,
        stats: &mut Fetched,
    ) -> Result<Repository, PackError> {
        let git_dir = self
            .dir
            .join(".airlock/git")
            .join(format!("{}.git", src.pack));
        let repo = match Repository::open_bare(&git_dir) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(&git_dir)
                .map_err(|e| PackError::Git(format!("cannot create {}: {e}", git_dir.display())))?,
        };
        if repo.find_commit(oid).is_err() {
            let mut remote = repo
                .remote_anonymous(&src.fetch_url)
                .map_err(|e| PackError::Git(format!("{}: {}", src.fetch_url, e.message())))?;
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
                return Err(PackError::Git("fetch cancelled".into()));
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
                    return Err(PackError::Git(format!(
                        "commit {} is not available from {}{}",
                        src.commit,
                        src.fetch_url,
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({why})")
                        }
                    )));
                }
            }
            repo.reference(
                &format!("refs/airlock/commits/{}", src.commit),
                oid,
                true,
                "airlock install",
            )
            .map_err(|e| PackError::Git(e.to_string()))?;
        }
        Ok(repo)
    }
}
