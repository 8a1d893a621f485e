//! What the on-call hear of (`notify:`), derived from the audit entries
//! the engine writes, as its metrics are: a break-glass run (resolved
//! when someone reviews it) and a failed run under a rule marked
//! `page_on_failure`.

use serde_json::json;

use super::Engine;
use crate::audit::{Entry, Event, Status};
use crate::notify::{Kind, Notice};

impl Engine {
    /// Hand the notices `written` gives rise to to the notifier (which
    /// never waits).
    pub(super) fn notify(&self, written: &[Entry]) {
        let Some(n) = &self.notifier else { return };
        for e in written {
            if let Some(notice) = self.notice(e) {
                n.send(notice);
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
