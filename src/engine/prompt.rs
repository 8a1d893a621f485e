//! The confirmation prompt: what a request will run, what it repeats,
//! what its plan showed, who holds the lock it needs, and who must approve.

use std::time::Duration;

use serde_json::Value;

use super::Engine;
use crate::alias::Params;
use crate::clock;
use crate::render::Message;
use crate::requests::{Confirmation, Request};

impl Engine {
    /// The confirmation prompt of a pending request.
    pub(super) fn prompt(&self, req: &Request, now: u64) -> Message {
        let Some(c) = req.confirmation.as_ref() else {
            return Message::plain(format!("Request {} needs no confirmation.", req.id));
        };
        let mut text = format!(
            "🔐 Confirmation needed — request {}\n{} asks to run {} ({}):\n",
            req.id,
            req.requester,
            req.alias.as_deref().unwrap_or(&req.action),
            req.action
        );
        if let Some(note) = &req.repeats {
            text.push_str(&format!("↩️ {note}\n"));
        }
        text.push_str(&params_text(&req.params));
        for line in &req.shown {
            // An indented line continues the one above it (a commit list).
            match line.strip_prefix("  ") {
                Some(more) => text.push_str(&format!("      {more}\n")),
                None => text.push_str(&format!("  → {line}\n")),
            }
        }
        let needs = needs_text(c);
        if let Some(p) = &req.plan_run {
            text.push_str(&format!(
                "📋 Its plan ({}) shows (digest {}; the whole in {}status {}):\n{}\n",
                p.action,
                &p.digest[..12],
                self.settings.prefix,
                req.id,
                super::plan::first_lines(&p.output, super::plan::PROMPT_LINES)
            ));
        }
        if let Some(note) = self.lock_note(req, now) {
            text.push_str(&note);
            text.push('\n');
        }
        text.push_str(&format!(
            "Needs {needs}.\nReply \"yes\" to this message to approve or \"no\" to deny (or {p}approve {id} / {p}deny {id}). Expires in {} (at {}).",
            clock::human(Duration::from_millis(c.expires_ms.saturating_sub(now))),
            clock::format_ms(c.expires_ms),
            p = self.settings.prefix,
            id = req.id,
        ));
        Message::plain(text)
    }
}

/// Who must approve, in words: "1 approval from group ops — not the
/// requester", a quorum's parts, verified devices.
fn needs_text(c: &Confirmation) -> String {
    let who = if c.self_approve && !c.approvers.is_empty() {
        format!("{} (the requester may approve)", c.approvers_text)
    } else if c.self_approve {
        format!("{} (including the requester)", c.approvers_text)
    } else {
        format!("{} — not the requester", c.approvers_text)
    };
    let mut needs = if c.quorum.is_empty() {
        format!(
            "{} approval{} from {who}",
            c.approvals,
            if c.approvals == 1 { "" } else { "s" }
        )
    } else {
        let parts: Vec<String> = c
            .quorum
            .iter()
            .map(|p| format!("{} from {}", p.approvals, p.text))
            .collect();
        format!(
            "{}{}",
            parts.join(" and "),
            if c.self_approve {
                " (the requester may approve)"
            } else {
                " — not the requester"
            }
        )
    };
    if c.verified_devices {
        needs.push_str(", from cross-signed devices only");
    }
    needs
}

/// Parameters as a prompt lists them.
pub fn params_text(params: &Params) -> String {
    let mut s = String::new();
    for (k, v) in params {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        s.push_str(&format!("  {k}: {v}\n"));
    }
    s
}
