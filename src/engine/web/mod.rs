//! `!web`: a one-time sign-in link for the read-only web view, sent to
//! the asker alone in a direct message; `!web logout` ends their
//! sessions. The pages themselves are the HTTP listener's.

use std::time::Duration;

use serde_json::json;

mod history;
mod request;

pub use history::{AUDIT_DOWNLOAD, AUDIT_PAGE, DEPLOY_PAGE, WebAudit, WebAuditLine, WebDeploy};
pub use request::{WebApproval, WebCommit, WebEntry, WebParam, WebPlan, WebRequest, WebStream};

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
    /// The last runs, newest first.
    pub recent: Vec<WebDeploy>,
    /// The audit log's state.
    pub audit: WebAuditState,
    /// The locks that hold or queue a run of the viewer's rooms.
    pub locks: Vec<WebLock>,
}

/// The audit log's state, in words.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebAuditState {
    /// Its head: how many entries, and the last one's hash.
    pub head: String,
    /// The last checkpoint posted to the audit room, and when.
    pub posted: String,
    /// What the last whole check of the chain found, and when.
    pub chain: String,
    /// Whether that check found it intact (None: not checked yet).
    pub intact: Option<bool>,
}

/// A lock as the overview shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebLock {
    /// Its name (`deploy/st2-flow`).
    pub name: String,
    /// Who or what holds it, in words (None: free).
    pub held: Option<String>,
    /// The requests waiting for it, first in line first: those of the
    /// viewer's rooms by id; the others are counted, not named.
    pub queue: Vec<String>,
    /// How many more wait in rooms the viewer may not see.
    pub others: usize,
}

/// How many recent runs the overview lists.
const RECENT: usize = 20;

impl Engine {
    /// Whether `user` may see what happens in `room` on the web: as in
    /// chat, where the policy grants them `pending` or `audit` there, or
    /// `audit` in the audit room (which sees every room).
    pub(super) fn web_may_see(&self, user: &str, room: &str, now: u64) -> bool {
        self.web_grants(user, room, "pending", now)
            || self.web_grants(user, room, "audit", now)
            || self.web_sees_all(user, now)
    }

    /// [`Engine::web_may_see`] for many rooms: each room is judged once.
    pub(super) fn web_visibility<'a>(
        &'a self,
        user: &'a str,
        now: u64,
    ) -> impl FnMut(&str) -> bool + 'a {
        let all = self.web_sees_all(user, now);
        let mut judged: std::collections::HashMap<String, bool> = Default::default();
        move |room: &str| {
            all || *judged
                .entry(room.to_string())
                .or_insert_with(|| self.web_may_see(user, room, now))
        }
    }

    /// The rooms `user` may see, when they can be listed (None: every
    /// room, or rooms the policy names by pattern). A query given them
    /// skips other rooms' entries unread; [`Engine::web_visibility`] still
    /// judges each entry.
    pub(super) fn web_rooms(&self, user: &str, now: u64) -> Option<Vec<String>> {
        if self.web_sees_all(user, now) {
            return None;
        }
        let mut rooms = self
            .policy()
            .literal_rooms_for(user, &["pending", "audit"])?;
        rooms.retain(|r| self.web_may_see(user, r, now));
        Some(rooms)
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

    /// Whether `user` may search every room's entries: `audit` in the
    /// audit room.
    pub(super) fn web_sees_all(&self, user: &str, now: u64) -> bool {
        self.settings
            .audit_room
            .as_deref()
            .is_some_and(|room| self.web_grants(user, room, "audit", now))
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
            limit: Some(RECENT),
            rooms: self.web_rooms(user, now),
            ..Default::default()
        };
        let recent = self
            .audit
            .query_where(&q, &mut |e| e.room.as_deref().is_some_and(&mut visible))
            .unwrap_or_default()
            .iter()
            .rev()
            .map(|e| WebDeploy::of(e, None))
            .collect();
        WebOverview {
            user: user.to_string(),
            open,
            recent,
            audit: self.audit_state(),
            locks: self.web_locks(self.web_sees_all(user, now), &mut visible, now),
        }
    }

    /// The audit log's head, the last checkpoint posted, and the last
    /// whole check of the chain, in words.
    fn audit_state(&self) -> WebAuditState {
        let head = match self.audit.checkpoint() {
            None => "The audit log is empty.".to_string(),
            Some(h) => format!(
                "{} entries; the newest's hash {}…",
                h.seq,
                h.hash.chars().take(16).collect::<String>()
            ),
        };
        let posted = self
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_posted();
        let posted = match (&self.settings.audit_room, posted) {
            (None, _) => "No audit room is set: no checkpoint leaves this machine.".to_string(),
            (Some(r), None) => format!("No checkpoint posted to {r} since the start."),
            (Some(r), Some((seq, ms))) => format!(
                "The last checkpoint posted to {r}: entry {seq}, at {}.",
                crate::clock::format_ms(ms)
            ),
        };
        let check = self.last_chain_check();
        let chain = match &check {
            None => "Not checked yet since the start (airlock checks it every 10 minutes; !audit verify checks it now).".to_string(),
            Some(c) if c.problems.is_empty() => format!(
                "Intact at {}: {} entries chain, {}.",
                crate::clock::format_ms(c.at),
                c.entries,
                match c.checkpoints {
                    0 => "with no checkpoint from the audit room to match yet".to_string(),
                    n => format!("matching all {n} checkpoints in the audit room (the newest at entry {})", c.newest_checkpoint),
                }
            ),
            Some(c) => format!(
                "Does NOT verify at {}: {}{}",
                crate::clock::format_ms(c.at),
                c.problems[0],
                match c.problems.len() {
                    1 => String::new(),
                    n => format!(" (and {} more; !audit verify lists them)", n - 1),
                }
            ),
        };
        WebAuditState {
            head,
            posted,
            chain,
            intact: check.map(|c| c.problems.is_empty()),
        }
    }
}
