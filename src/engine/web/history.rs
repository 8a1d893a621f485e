//! The audit search page and a pack's or alias's deploy history: the
//! audit's own queries (the CLI's filters), limited to the rooms the
//! viewer may see.

use crate::audit::Event;
use crate::engine::Engine;

/// An audit search's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebAudit {
    /// The newest matching entries first (at most [`AUDIT_PAGE`]).
    pub entries: Vec<WebAuditLine>,
    /// When more matched than are shown: the oldest entry shown, where
    /// the next page begins (`before=`).
    pub older: Option<u64>,
}

/// One entry of an audit search.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebAuditLine {
    /// The entry, in a line.
    pub line: String,
    /// The request it is about, whose page it links to.
    pub request: Option<String>,
}

/// How many entries an audit search shows.
pub const AUDIT_PAGE: usize = 100;
/// How many entries a download holds at most.
pub const AUDIT_DOWNLOAD: usize = 100_000;

impl Engine {
    /// The entries `q` matches that `user` may see, newest last, at most
    /// `limit` of them (and whether there were more); an error says why
    /// the search is refused (a room must be named unless they may see
    /// every room).
    pub fn web_audit_entries(
        &self,
        user: &str,
        mut q: crate::audit::Query,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<crate::audit::Entry>, bool), String> {
        if !self.web_sees_all(user, now) {
            match q.room.as_deref() {
                Some(room) if self.web_may_see(user, room, now) => {}
                Some(_) => return Err("There is no room by that name you may see.".into()),
                None => {
                    return Err(
                        "Name a room (room=!id:server): you may search the rooms where you may use pending or audit."
                            .into(),
                    );
                }
            }
        }
        q.limit = Some(limit + 1);
        let mut entries = self.audit.query(&q).map_err(|e| e.to_string())?;
        let more = entries.len() > limit;
        if more {
            entries.remove(0);
        }
        Ok((entries, more))
    }

    /// An audit search for the page: newest first.
    pub fn web_audit(
        &self,
        user: &str,
        q: crate::audit::Query,
        now: u64,
    ) -> Result<WebAudit, String> {
        let (entries, more) = self.web_audit_entries(user, q, AUDIT_PAGE, now)?;
        Ok(WebAudit {
            older: entries.first().filter(|_| more).map(|e| e.seq),
            entries: entries
                .iter()
                .rev()
                .map(|e| WebAuditLine {
                    line: e.summary_line(),
                    request: e.request.clone(),
                })
                .collect(),
        })
    }
}

/// One run in a deploy history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebDeploy {
    /// The request.
    pub id: String,
    /// How it ended (`succeeded`, `failed`, …).
    pub status: String,
    /// The alias or action.
    pub what: String,
    /// The commit it deployed, short, if it deployed one.
    pub commit: String,
    /// The version it put in place (the pack's `version`), if it says.
    pub version: Option<String>,
    /// Whether it was a rollback (`packs.rollback`).
    pub rollback: bool,
    /// How it ended, in a line.
    pub summary: String,
    /// Who asked.
    pub by: String,
    /// Who approved.
    pub approvers: Vec<String>,
    /// When it ended, RFC 3339.
    pub at: String,
    /// Where on the timeline, 0 (oldest shown) to 1000 (newest).
    pub x: u64,
}

impl WebDeploy {
    /// The run a `finished` entry records; `pack`: the pack whose commit
    /// and version it shows (the first it deployed when None).
    pub(super) fn of(e: &crate::audit::Entry, pack: Option<&str>) -> Self {
        let facts = crate::engine::deploys::RunFacts::of(e);
        let shown = pack.or(facts.deployed.first().map(|d| d.pack.as_str()));
        // Only a run that put a pack in place has a version, and only then
        // is its result read: another run's may hold a megabyte of output.
        let version = match shown {
            Some(p) if !facts.deployed.is_empty() => {
                let result: serde_json::Value = e.detail_field("result").unwrap_or_default();
                super::request::pack_facts(&result, p).version
            }
            _ => None,
        };
        WebDeploy {
            id: e.request.clone().unwrap_or_default(),
            status: e.status.map_or("?", |s| s.name()).to_string(),
            what: e
                .alias
                .clone()
                .or_else(|| e.action.clone())
                .unwrap_or_default(),
            commit: facts.commit(pack).unwrap_or_default(),
            version,
            rollback: e.action.as_deref() == Some("packs.rollback"),
            by: e.sender.clone().unwrap_or_default(),
            approvers: facts.approved_by,
            summary: facts.summary,
            at: crate::clock::format_ms(e.ts),
            x: 0,
        }
    }
}

/// How many runs a deploy history shows.
pub const DEPLOY_PAGE: usize = 100;

impl Engine {
    /// The runs of alias `what` (`pack.name`) or of pack `what`, in the
    /// rooms `user` may see, oldest first, with their places on a
    /// timeline.
    pub fn web_deploys(&self, user: &str, what: &str, now: u64) -> Vec<WebDeploy> {
        let mut q = crate::audit::Query {
            event: Some(Event::Finished.name().into()),
            limit: Some(DEPLOY_PAGE),
            rooms: self.web_rooms(user, now),
            ..Default::default()
        };
        if what.contains('.') {
            q.alias = Some(what.into());
        } else {
            q.deployed = Some(what.into());
        }
        let mut visible = self.web_visibility(user, now);
        let entries = self
            .audit
            .query_where(&q, &mut |e| e.room.as_deref().is_some_and(&mut visible))
            .unwrap_or_default();
        let (first, last) = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) => (f.ts, l.ts),
            _ => return Vec::new(),
        };
        let span = last.saturating_sub(first).max(1);
        entries
            .iter()
            .map(|e| WebDeploy {
                x: if entries.len() == 1 {
                    500
                } else {
                    e.ts.saturating_sub(first) * 1000 / span
                },
                ..WebDeploy::of(e, q.deployed.as_deref())
            })
            .collect()
    }
}
