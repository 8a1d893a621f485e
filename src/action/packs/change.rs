//! What installing a commit changes, shown in the prompt before anyone
//! approves: from the live commit to the target, whether it moves forward,
//! back (a rewind) or sideways (a force-push), how many commits and which,
//! the diffstat, and a compare link on a known forge.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use git2::{Oid, Repository, Sort};
use serde::{Deserialize, Serialize};

use super::PackManager;
use super::git::{Fetched, Stop, bounded};
use super::source::{Source, local_repository};

/// How long working out a change may take (a fetch of the target
/// included) before the prompt goes without it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Commits listed in the prompt.
const SHOWN: usize = 10;
/// Commits counted at most (a longer range says "more than").
const COUNTED: usize = 10_000;
/// A subject or author name is cut to this many characters.
const TEXT: usize = 100;

/// Which way the target lies from the live commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The same commit.
    Same,
    /// The target descends from the live commit.
    Forward,
    /// The target is an ancestor of the live commit: a rewind.
    Backward,
    /// Neither descends from the other (a force-push, another branch).
    Sideways,
}

/// One commit, as the prompt lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitLine {
    /// The first 12 hex digits.
    pub id: String,
    /// Its subject line, printable and cut.
    pub subject: String,
    /// Its author's name, printable and cut.
    pub author: String,
}

/// From the live commit to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The live commit.
    pub from: String,
    /// The target commit.
    pub to: String,
    /// Which way.
    pub direction: Direction,
    /// Commits the target has that the live one lacks.
    pub ahead: usize,
    /// Commits the live one has that the target lacks (what a rewind or a
    /// force-push drops).
    pub behind: usize,
    /// The newest of the commits it adds (or, going back, of those it
    /// drops), newest first.
    pub commits: Vec<CommitLine>,
    /// Files changed between the two trees.
    pub files: usize,
    /// Lines added.
    pub insertions: usize,
    /// Lines removed.
    pub deletions: usize,
    /// A compare page on the forge, when the remote is a known one.
    #[serde(default)]
    pub compare: Option<String>,
    /// Objects fetched to work it out (the install that follows fetches
    /// none of them again).
    #[serde(default)]
    pub fetched_objects: usize,
}

/// Printable, one line, at most `TEXT` characters: commit text is the
/// pusher's, and reaches a prompt.
fn clean(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    let mut out: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(TEXT)
        .collect();
    if line.chars().count() > TEXT {
        out.push('…');
    }
    out
}

/// The commits reachable from `push` and not from `hide`, newest first:
/// how many (at most `COUNTED`), and the first `SHOWN`.
fn walk(repo: &Repository, push: Oid, hide: Oid) -> Result<(usize, Vec<CommitLine>), git2::Error> {
    let mut w = repo.revwalk()?;
    w.set_sorting(Sort::TOPOLOGICAL | Sort::TIME)?;
    w.push(push)?;
    w.hide(hide)?;
    let mut count = 0;
    let mut shown = Vec::new();
    for oid in w.take(COUNTED) {
        let oid = oid?;
        count += 1;
        if shown.len() < SHOWN {
            let c = repo.find_commit(oid)?;
            shown.push(CommitLine {
                id: oid.to_string()[..12].to_string(),
                subject: clean(&String::from_utf8_lossy(
                    c.summary_bytes().unwrap_or_default(),
                )),
                author: clean(&String::from_utf8_lossy(c.author().name_bytes())),
            });
        }
    }
    Ok((count, shown))
}

/// What moving from `from` to `to` in `repo` changes; `url` (as requested)
/// for a compare link.
pub fn between(repo: &Repository, from: Oid, to: Oid, url: &str) -> Result<Change, git2::Error> {
    let (ahead, added) = walk(repo, to, from)?;
    let (behind, dropped) = walk(repo, from, to)?;
    let direction = match (ahead, behind) {
        (0, 0) => Direction::Same,
        (_, 0) => Direction::Forward,
        (0, _) => Direction::Backward,
        _ => Direction::Sideways,
    };
    let (a, b) = (
        repo.find_commit(from)?.tree()?,
        repo.find_commit(to)?.tree()?,
    );
    let stats = repo.diff_tree_to_tree(Some(&a), Some(&b), None)?.stats()?;
    let (from, to) = (from.to_string(), to.to_string());
    Ok(Change {
        compare: (direction != Direction::Same)
            .then(|| compare_url(url, &from, &to))
            .flatten(),
        from,
        to,
        direction,
        ahead,
        behind,
        commits: if direction == Direction::Backward {
            dropped
        } else {
            added
        },
        files: stats.files_changed(),
        insertions: stats.insertions(),
        deletions: stats.deletions(),
        fetched_objects: 0,
    })
}

/// The compare page between two commits on a forge airlock knows by its
/// host: GitHub, GitLab (gitlab.com or a host named gitlab.*), Gitea and
/// Forgejo (codeberg.org, or a host named gitea.* or forgejo.*). None for
/// any other host, or a URL it cannot read.
pub fn compare_url(url: &str, from: &str, to: &str) -> Option<String> {
    // git@host:owner/repo(.git), ssh://git@host/owner/repo, https://host/owner/repo
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("ssh://"))
        .or_else(|| url.strip_prefix("git@"))?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (host, path) = rest.split_once([':', '/'])?;
    let host = host.split(':').next()?.to_ascii_lowercase();
    let path = path.trim_matches('/').trim_end_matches(".git");
    let fine = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 2 || !parts.iter().all(|p| fine(p)) || !fine(&host) {
        return None;
    }
    let hex = |s: &str| s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit());
    if !hex(from) || !hex(to) {
        return None;
    }
    let base = format!("https://{host}/{path}");
    if host == "github.com" {
        Some(format!("{base}/compare/{from}...{to}"))
    } else if host == "gitlab.com" || host.starts_with("gitlab.") {
        Some(format!("{base}/-/compare/{from}...{to}"))
    } else if host == "codeberg.org" || host.starts_with("gitea.") || host.starts_with("forgejo.") {
        Some(format!("{base}/compare/{from}...{to}"))
    } else {
        None
    }
}

impl PackManager {
    /// What installing `src` changes against the live version of its
    /// pack: None if the pack is not installed; an error, in words, if it
    /// cannot be worked out (in time). The target is fetched into the
    /// pack's cache, so the install that follows fetches nothing more.
    pub(super) fn change_from_live(
        self: &Arc<Self>,
        src: &Source,
    ) -> Option<Result<Change, String>> {
        let live = self.record(&src.pack)?.current.commit;
        let (Ok(from), Ok(to)) = (Oid::from_str(&live), Oid::from_str(&src.commit)) else {
            return Some(Err(
                "the live or the target commit is not a commit id".into()
            ));
        };
        let Some(lock) = self.try_lock(&src.pack) else {
            return Some(Err(format!("an install of {} is running", src.pack)));
        };
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let (mgr, src) = (self.clone(), src.clone());
        let worked = bounded(deadline, &AtomicBool::new(false), lock, move |stop| {
            let mut fetched = Fetched::default();
            let repo = match local_repository(&src.fetch_url) {
                Some(path) => Repository::open(&path).map_err(|e| e.message().to_string())?,
                None => mgr
                    .fetch_into_cache(&src, to, stop, deadline, &mut fetched)
                    .map_err(|e| e.to_string())?,
            };
            if repo.find_commit(from).is_err() {
                return Err(format!(
                    "the live commit {live} is no longer in {}",
                    src.url
                ));
            }
            let mut change =
                between(&repo, from, to, &src.url).map_err(|e| e.message().to_string())?;
            change.fetched_objects = fetched.objects;
            Ok(change)
        });
        Some(match worked {
            Ok((r, _)) => r,
            Err(Stop::Timeout) => Err(format!(
                "not worked out within {} s",
                CHANGE_TIMEOUT.as_secs()
            )),
            Err(Stop::Cancelled) => Err("cancelled".into()),
        })
    }
}

impl Change {
    /// The prompt's lines for pack `pack`.
    pub fn lines(&self, pack: &str) -> Vec<String> {
        let short = |c: &str| c.get(..12).unwrap_or(c).to_string();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let count = |n: usize| {
            if n >= COUNTED {
                format!("more than {COUNTED}")
            } else {
                n.to_string()
            }
        };
        let stat = format!(
            "{} file{} changed, +{} −{}",
            self.files,
            plural(self.files),
            self.insertions,
            self.deletions
        );
        let head = match self.direction {
            Direction::Same => {
                return vec![format!(
                    "{pack}: the live commit {}; nothing changes",
                    short(&self.from)
                )];
            }
            Direction::Forward => format!(
                "{pack}: {} commit{} forward from the live {}; {stat}",
                count(self.ahead),
                plural(self.ahead),
                short(&self.from)
            ),
            Direction::Backward => format!(
                "⚠️ {pack}: goes back {} commit{} from the live {} (a rewind); {stat}; it undoes:",
                count(self.behind),
                plural(self.behind),
                short(&self.from)
            ),
            Direction::Sideways => format!(
                "⚠️ {pack}: moves sideways from the live {} (not a descendant: a force-push or another branch): {} commit{} not live, {} live commit{} dropped; {stat}",
                short(&self.from),
                count(self.ahead),
                plural(self.ahead),
                count(self.behind),
                plural(self.behind)
            ),
        };
        let mut out = vec![head];
        out.extend(
            self.commits
                .iter()
                .map(|c| format!("  • {} {} — {}", c.id, c.subject, c.author)),
        );
        let listed = if self.direction == Direction::Backward {
            self.behind
        } else {
            self.ahead
        };
        if listed > self.commits.len() {
            out.push(format!(
                "  … and {} more",
                count(listed - self.commits.len())
            ));
        }
        if let Some(url) = &self.compare {
            out.push(format!("  compare: {url}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_links_for_known_forges_only() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        assert_eq!(
            compare_url("git@github.com:websages/st2-flow", &a, &b).unwrap(),
            format!("https://github.com/websages/st2-flow/compare/{a}...{b}")
        );
        assert_eq!(
            compare_url("https://gitlab.example.org/ops/deploy.git", &a, &b).unwrap(),
            format!("https://gitlab.example.org/ops/deploy/-/compare/{a}...{b}")
        );
        assert_eq!(
            compare_url("ssh://git@codeberg.org/ops/pack.git", &a, &b).unwrap(),
            format!("https://codeberg.org/ops/pack/compare/{a}...{b}")
        );
        for unknown in [
            "https://git.example.org/ops/pack",
            "file:///srv/pack",
            "https://github.com/only-owner",
            "https://github.com/o/r<script>",
        ] {
            assert_eq!(compare_url(unknown, &a, &b), None, "{unknown}");
        }
        assert_eq!(compare_url("git@github.com:o/r", "HEAD", &b), None);
    }

    #[test]
    fn commit_text_is_one_printable_cut_line() {
        assert_eq!(clean("fix\u{1b}[31m red\nbody"), "fix [31m red");
        let long = "x".repeat(150);
        assert_eq!(clean(&long).chars().count(), TEXT + 1);
    }
}
