//! `!web`: a one-time sign-in link for the read-only web view, sent to
//! the asker alone in a direct message; `!web logout` ends their
//! sessions. The pages themselves are the HTTP listener's.

use std::time::Duration;

use serde_json::json;

use super::{Effect, Engine, Out};
use crate::audit::{Event, Status};
use crate::render::Message;
use crate::store::web::WebAccess;

/// The web view's settings and its sign-in records.
#[derive(Clone)]
pub struct Web {
    /// The links and sessions.
    pub access: WebAccess,
    /// Where users reach the pages (`http.public_url`), without a
    /// trailing slash.
    pub public_url: String,
    /// How long a sign-in link may wait for its use.
    pub link_for: Duration,
    /// How long a session lasts.
    pub session_for: Duration,
}

impl Engine {
    pub(super) fn builtin_web(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "web") {
            return;
        }
        let Some(web) = &self.web else {
            out.say("The web view is off here (http.web and http.public_url in airlock.yaml).");
            return;
        };
        let user = out.m.sender.clone();
        if args.eq_ignore_ascii_case("logout") {
            match web.access.logout(&user) {
                Ok(n) => {
                    let e = out
                        .entry(Event::WebLogout)
                        .status(Status::Ok)
                        .detail(json!({"sessions": n}));
                    out.log(e);
                    out.say(format!(
                        "Ended {n} web session{} of {user}.",
                        if n == 1 { "" } else { "s" }
                    ));
                }
                Err(e) => out.say(format!("Cannot end the web sessions: {e}")),
            }
            return;
        }
        if !args.is_empty() {
            out.say(format!(
                "Usage: {p}web (a sign-in link, sent to you alone) or {p}web logout.",
                p = self.settings.prefix
            ));
            return;
        }
        let expires = out.now + web.link_for.as_millis() as u64;
        let token = match web.access.issue_link(&user, expires) {
            Ok(t) => t,
            Err(e) => return out.say(format!("Cannot make a sign-in link: {e}")),
        };
        let minutes = web.link_for.as_secs().div_ceil(60);
        out.effects.push(Effect::Direct {
            user: user.clone(),
            message: Message::plain(format!(
                "🔑 Your sign-in link to airlock's web view (for you alone, usable once, for {minutes} minutes): {}/web/login?token={token}",
                web.public_url
            )),
        });
        // The token is in no entry and no log: only its user receives it.
        let e = out
            .entry(Event::WebLink)
            .status(Status::Ok)
            .detail(json!({"expires": crate::clock::format_ms(expires)}));
        out.log(e);
        out.say(format!(
            "📬 Sent {user} a sign-in link in a direct message (usable once, for {minutes} minutes)."
        ));
    }
}

impl Engine {
    /// Open a session with sign-in link `token` at `now` (the listener's
    /// `/web/login`): the user and the session's token, or why not. The
    /// link is used up either way.
    pub fn web_sign_in(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(String, String), crate::store::web::WebError> {
        let web = self
            .web
            .as_ref()
            .ok_or(crate::store::web::WebError::Unusable)?;
        let until = now + web.session_for.as_millis() as u64;
        web.access.redeem(token, now, until)
    }

    /// The user whose web session `token` is, while it lasts.
    pub fn web_user(&self, token: &str, now: u64) -> Option<String> {
        self.web.as_ref()?.access.session(token, now)
    }

    /// Request `id`'s page, when the web view is on.
    pub(super) fn web_page(&self, id: &str) -> Option<String> {
        let web = self.web.as_ref()?;
        Some(format!("{}/web/request/{id}", web.public_url))
    }

    /// Whether the web view is reached over https (its cookie is then
    /// sent over TLS only).
    pub fn web_secure(&self) -> bool {
        self.web
            .as_ref()
            .is_some_and(|w| w.public_url.starts_with("https://"))
    }

    /// How long a web session lasts (None: the web view is off).
    pub fn web_session_length(&self) -> Option<Duration> {
        self.web.as_ref().map(|w| w.session_for)
    }
}

/// One request as a page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebRow {
    /// Its id.
    pub id: String,
    /// Its room.
    pub room: String,
    /// Its state's name.
    pub state: String,
    /// The line `!pending` shows for it (with a running one's output).
    pub line: String,
}

/// The overview: what is open, and what ran lately, in the rooms the
/// viewer may see.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebOverview {
    /// Who looks.
    pub user: String,
    /// Open requests (waiting, approved, running), oldest first.
    pub open: Vec<WebRow>,
    /// The last runs' `finished` entries, newest first.
    pub recent: Vec<String>,
    /// The audit log's head, and the last checkpoint posted to the audit
    /// room, in words.
    pub audit: String,
}

/// One request's page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebRequest {
    /// Its id.
    pub id: String,
    /// Its room.
    pub room: String,
    /// What `!status` says of it (masked as in chat), while it is kept.
    pub status: Option<String>,
    /// Its audit entries, oldest first, one line each.
    pub timeline: Vec<String>,
    /// A matrix.to link to its room.
    pub room_link: String,
    /// Its alias (`pack.name`), whose runs the page links to.
    pub alias: Option<String>,
    /// Who approved it, when, and from which device (while it is kept).
    pub approvals: Vec<WebApproval>,
}

/// One approval as a request's page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebApproval {
    /// Who.
    pub user: String,
    /// When, RFC 3339.
    pub at: String,
    /// The device, when known.
    pub device: Option<String>,
    /// "cross-signed", "not cross-signed", or "unknown".
    pub verified: &'static str,
}

/// How many recent runs the overview lists.
const RECENT: usize = 20;

impl Engine {
    /// Whether `user` may see what happens in `room` on the web: as in
    /// chat, where the policy grants them `pending` or `audit` there, or
    /// `audit` in the audit room (which sees every room).
    fn web_may_see(&self, user: &str, room: &str, now: u64) -> bool {
        self.web_grants(user, room, "pending", now)
            || self.web_grants(user, room, "audit", now)
            || self.web_sees_all(user, now)
    }

    /// [`Engine::web_may_see`] for many rooms: each room is judged once.
    fn web_visibility<'a>(&'a self, user: &'a str, now: u64) -> impl FnMut(&str) -> bool + 'a {
        let all = self.web_sees_all(user, now);
        let mut judged: std::collections::HashMap<String, bool> = Default::default();
        move |room: &str| {
            all || *judged
                .entry(room.to_string())
                .or_insert_with(|| self.web_may_see(user, room, now))
        }
    }

    /// Whether the policy lets `user` use built-in `builtin` in `room`.
    /// The web has no room to read a power level in: rules that need one
    /// do not apply (deny by default).
    fn web_grants(&self, user: &str, room: &str, builtin: &str, now: u64) -> bool {
        let who = crate::policy::Subject {
            user,
            room,
            power_level: None,
            at: now,
        };
        self.policy()
            .may_use(&who, &crate::policy::Target::Builtin(builtin))
    }

    /// The overview page's content for `user`.
    pub fn web_overview(&self, user: &str, now: u64) -> WebOverview {
        let mut visible = self.web_visibility(user, now);
        let open = self
            .requests
            .open_requests()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| visible(&r.room))
            .map(|r| WebRow {
                line: self.request_line(&r, now),
                id: r.id,
                room: r.room,
                state: r.state.name().to_string(),
            })
            .collect();
        let q = crate::audit::Query {
            event: Some(Event::Finished.name().into()),
            ..Default::default()
        };
        let recent = self
            .audit
            .query(&q)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .filter(|e| e.room.as_deref().is_some_and(&mut visible))
            .take(RECENT)
            .map(|e| e.summary_line())
            .collect();
        WebOverview {
            user: user.to_string(),
            open,
            recent,
            audit: self.audit_state(),
        }
    }

    /// The audit log's head and the last checkpoint posted, in words.
    fn audit_state(&self) -> String {
        let Some(head) = self.audit.checkpoint() else {
            return "The audit log is empty.".into();
        };
        let hash: String = head.hash.chars().take(16).collect();
        let posted = self
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_posted();
        let room = match (&self.settings.audit_room, posted) {
            (None, _) => "no audit room is set".to_string(),
            (Some(r), None) => format!("no checkpoint posted to {r} since the start"),
            (Some(r), Some((seq, ms))) => format!(
                "the last checkpoint posted to {r}: entry {seq}, at {}",
                crate::clock::format_ms(ms)
            ),
        };
        format!("{} entries, head {hash}…; {room}.", head.seq)
    }

    /// Request `id`'s page for `user`; None when it is unknown or in a
    /// room they may not see (the same answer, so its existence is not
    /// told).
    pub fn web_request(&self, user: &str, id: &str, now: u64) -> Option<WebRequest> {
        let q = crate::audit::Query {
            request: Some(id.to_string()),
            ..Default::default()
        };
        let entries = self.audit.query(&q).ok()?;
        let kept = self.requests.get(id).ok().flatten();
        let room = kept
            .as_ref()
            .map(|r| r.room.clone())
            .or_else(|| entries.iter().find_map(|e| e.room.clone()))?;
        if !self.web_may_see(user, &room, now) {
            return None;
        }
        let alias = kept
            .as_ref()
            .and_then(|r| r.alias.clone())
            .or_else(|| entries.iter().find_map(|e| e.alias.clone()));
        let approvals = kept
            .iter()
            .flat_map(|r| &r.approvals)
            .map(|a| WebApproval {
                user: a.user.clone(),
                at: crate::clock::format_ms(a.ts),
                device: a.device.clone(),
                verified: match a.cross_signed {
                    Some(true) => "cross-signed",
                    Some(false) => "not cross-signed",
                    None => "unknown",
                },
            })
            .collect();
        let status = kept.map(|r| {
            let mut s = self.request_line(&r, now);
            if let Some(summary) = &r.summary {
                s.push_str(&format!(" — {summary}"));
            }
            s
        });
        Some(WebRequest {
            id: id.to_string(),
            room_link: format!("https://matrix.to/#/{room}"),
            room,
            alias,
            approvals,
            status,
            timeline: entries.iter().map(|e| e.summary_line()).collect(),
        })
    }
}

/// An audit search's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebAudit {
    /// The newest matching entries first, one line each (at most
    /// [`AUDIT_PAGE`]).
    pub lines: Vec<String>,
    /// Whether more matched than are shown.
    pub more: bool,
}

/// How many entries an audit search shows.
pub const AUDIT_PAGE: usize = 100;
/// How many entries a download holds at most.
pub const AUDIT_DOWNLOAD: usize = 100_000;

impl Engine {
    /// Whether `user` may search every room's entries: `audit` in the
    /// audit room.
    fn web_sees_all(&self, user: &str, now: u64) -> bool {
        self.settings
            .audit_room
            .as_deref()
            .is_some_and(|room| self.web_grants(user, room, "audit", now))
    }

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
            lines: entries.iter().rev().map(|e| e.summary_line()).collect(),
            more,
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
    /// Who asked.
    pub by: String,
    /// Who approved.
    pub approvers: Vec<String>,
    /// When it ended, RFC 3339.
    pub at: String,
    /// Where on the timeline, 0 (oldest shown) to 1000 (newest).
    pub x: u64,
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
            // Read past what other rooms hold; the page shows its own.
            limit: Some(DEPLOY_PAGE * 5),
            ..Default::default()
        };
        if what.contains('.') {
            q.alias = Some(what.into());
        } else {
            q.deployed = Some(what.into());
        }
        let mut visible = self.web_visibility(user, now);
        let mut entries: Vec<crate::audit::Entry> = self
            .audit
            .query(&q)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.room.as_deref().is_some_and(&mut visible))
            .collect();
        let skip = entries.len().saturating_sub(DEPLOY_PAGE);
        entries.drain(..skip);
        let (first, last) = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) => (f.ts, l.ts),
            _ => return Vec::new(),
        };
        let span = last.saturating_sub(first).max(1);
        entries
            .iter()
            .map(|e| {
                let (commit, approvers) = super::deploys::run_facts(e, q.deployed.as_deref());
                WebDeploy {
                    id: e.request.clone().unwrap_or_default(),
                    status: e.status.map_or("?", |s| s.name()).to_string(),
                    what: e
                        .alias
                        .clone()
                        .or_else(|| e.action.clone())
                        .unwrap_or_default(),
                    commit: commit.unwrap_or_default(),
                    by: e.sender.clone().unwrap_or_default(),
                    approvers,
                    at: crate::clock::format_ms(e.ts),
                    x: if entries.len() == 1 {
                        500
                    } else {
                        e.ts.saturating_sub(first) * 1000 / span
                    },
                }
            })
            .collect()
    }
}
