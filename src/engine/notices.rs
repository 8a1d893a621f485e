//! What the on-call hear of (`notify:`), derived from the audit entries
//! the engine writes, as its metrics are: a break-glass run (resolved
//! when someone reviews it) and a failed run under a rule marked
//! `page_on_failure`; and, from the tick, an approved request that has
//! not started in time (`stuck_after`) or a lock held too long
//! (`lock_held_after`), each resolved when it moves on.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::Engine;
use crate::audit::{Entry, Event, Status};
use crate::requests::State;

/// Where the engine's notices go: the on-call's webhook or pager
/// (`transport::notify`'s `Notifier`), or a test's.
pub trait Notify: Send + Sync {
    /// Queue `n` for whoever it is routed to; never waits.
    fn send(&self, n: Notice);
    /// Send `n` if it triggers a matter not already open, or resolves one
    /// that is.
    fn once(&self, n: Notice);
    /// How long an approved request may wait to start before it is news.
    fn stuck_after(&self) -> Option<Duration>;
    /// How long a lock may be held before it is news.
    fn lock_held_after(&self) -> Option<Duration>;
    /// What keeps notices from arriving, for `/healthz`.
    fn problems(&self) -> Vec<String>;
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A run without its confirmation (resolved when someone reviews it).
    BreakGlass,
    /// A run failed under a rule marked `page_on_failure`.
    Failed,
    /// Approved, and not started within `stuck_after`.
    Stuck,
    /// A lock held longer than `lock_held_after`.
    LockHeld,
}

impl Kind {
    /// Its name in configuration and payloads (`break_glass`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::BreakGlass => "break_glass",
            Kind::Failed => "failed",
            Kind::Stuck => "stuck",
            Kind::LockHeld => "lock_held",
        }
    }
}

/// One notice.
#[derive(Debug, Clone)]
pub struct Notice {
    /// About what.
    pub kind: Kind,
    /// False: the matter is settled (PagerDuty's `resolve`).
    pub trigger: bool,
    /// The request it is about (for a lock held by hand, `hand:` and the
    /// lock's name).
    pub request: String,
    /// One line for a person.
    pub summary: String,
    /// The rest (room, who, alias, reason…).
    pub details: Value,
    /// When (ms since the epoch).
    pub ts_ms: u64,
}

/// The matters `e` settles: a request that started or ended is no longer
/// stuck; a released lock is no longer held too long.
fn moved_on(e: &Entry) -> Vec<Notice> {
    let resolve = |kind, request: String| Notice {
        kind,
        trigger: false,
        summary: String::new(),
        details: json!({}),
        request,
        ts_ms: e.ts,
    };
    let Some(request) = e.request.clone() else {
        return match e.event {
            Event::Unlocked => e
                .detail_field::<String>("lock")
                .map(|l| vec![resolve(Kind::LockHeld, format!("hand:{l}"))])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
    };
    match e.event {
        Event::Started
        | Event::Finished
        | Event::Expired
        | Event::Cancelled
        | Event::Interrupted
        | Event::Denied => vec![resolve(Kind::Stuck, request)],
        Event::Unlocked => vec![resolve(Kind::LockHeld, request)],
        _ => Vec::new(),
    }
}

impl Engine {
    /// Hand the notices `written` gives rise to to the notifier (which
    /// never waits).
    pub(super) fn notify(&self, written: &[Entry]) {
        let Some(n) = &self.notifier else { return };
        for e in written {
            if let Some(notice) = self.notice(e) {
                n.send(notice);
            }
            for settled in moved_on(e) {
                n.once(settled);
            }
        }
    }

    /// At a tick: approved requests not started within `stuck_after`, and
    /// locks held longer than `lock_held_after`, each told once.
    pub(super) fn notify_overdue(&self, now: u64) {
        let Some(n) = &self.notifier else { return };
        let over =
            |since: u64, bound: Duration| now.saturating_sub(since) >= bound.as_millis() as u64;
        let ago =
            |since: u64| crate::clock::human(Duration::from_millis(now.saturating_sub(since)));
        if let Some(bound) = n.stuck_after() {
            for r in self.requests.open_requests().unwrap_or_default() {
                let approved = r
                    .approvals
                    .iter()
                    .map(|a| a.ts)
                    .max()
                    .unwrap_or(r.created_ms);
                if r.state != State::Approved || !over(approved, bound) {
                    continue;
                }
                let waiting = self.queue_note(&r).unwrap_or_default();
                let what = r.alias.clone().unwrap_or_else(|| r.action.clone());
                n.once(Notice {
                    kind: Kind::Stuck,
                    trigger: true,
                    request: r.id.clone(),
                    summary: format!(
                        "Request {} ({what}) in {} was approved {} ago and has not started{waiting}",
                        r.id,
                        r.room,
                        ago(approved)
                    ),
                    details: json!({"request": r.id, "alias": what, "requester": r.requester, "room": r.room}),
                    ts_ms: now,
                });
            }
        }
        if let Some(bound) = n.lock_held_after() {
            for l in self.requests.locks().all().unwrap_or_default() {
                let holders = l
                    .held
                    .iter()
                    .map(|h| {
                        (
                            h.request.clone(),
                            format!("request {}", h.request),
                            h.since_ms,
                        )
                    })
                    .chain(l.manual.iter().map(|m| {
                        (
                            format!("hand:{}", l.name),
                            format!("{} ({})", m.by, m.reason),
                            m.since_ms,
                        )
                    }));
                for (key, by, since) in holders {
                    if over(since, bound) {
                        n.once(Notice {
                            kind: Kind::LockHeld,
                            trigger: true,
                            request: key,
                            summary: format!(
                                "Lock {} has been held by {by} for {}",
                                l.name,
                                ago(since)
                            ),
                            details: json!({"lock": l.name, "held_by": by, "waiting": l.queue}),
                            ts_ms: now,
                        });
                    }
                }
            }
        }
    }

    /// Problems of the notification targets, for `/healthz`.
    pub fn notify_problems(&self) -> Vec<String> {
        self.notifier
            .as_ref()
            .map(|n| n.problems())
            .unwrap_or_default()
    }

    fn notice(&self, e: &Entry) -> Option<Notice> {
        let request = e.request.clone()?;
        let what = e.alias.as_deref().or(e.action.as_deref()).unwrap_or("?");
        let who = e.sender.as_deref().unwrap_or("?");
        let room = e.room.as_deref().unwrap_or("?");
        let details = |extra: serde_json::Value| {
            let mut d = json!({"request": request, "alias": what, "requester": who, "room": room});
            if let (Some(d), Some(x)) = (d.as_object_mut(), extra.as_object()) {
                d.extend(x.clone());
            }
            d
        };
        let (kind, trigger, summary, details) = match e.event {
            Event::BreakGlass => {
                let reason: String = e.detail_field("reason").unwrap_or_default();
                (
                    Kind::BreakGlass,
                    true,
                    format!(
                        "Break-glass: {who} runs {what} in {room} without approval (request {request}): {reason}"
                    ),
                    details(json!({"reason": reason})),
                )
            }
            Event::Reviewed => (
                Kind::BreakGlass,
                false,
                format!("Break-glass request {request} reviewed"),
                details(json!({"reviewed_by": who})),
            ),
            Event::Finished if e.status == Some(Status::Failed) => {
                let rule = self.requests.get(&request).ok()??.rule;
                if !self.policy().rule(&rule).is_some_and(|r| r.page_on_failure) {
                    return None;
                }
                let why: String = e.detail_field("summary").unwrap_or_default();
                (
                    Kind::Failed,
                    true,
                    format!("{what} failed in {room} (request {request} by {who}): {why}"),
                    details(json!({"rule": rule, "summary": why})),
                )
            }
            _ => return None,
        };
        Some(Notice {
            kind,
            trigger,
            request,
            summary,
            details,
            ts_ms: e.ts,
        })
    }
}
