//! The bot's own commands: help, pending, audit.

use serde_json::{Value, json};

use super::{Engine, Out};
use crate::alias::Params;
use crate::audit::{AuditLog, Entry, Event, Query, Status};
use crate::clock;
use crate::policy::{Decision, FromChat, Target};
use crate::render::Message;
use crate::requests::{Request, Requests, State, Update};

impl Engine {
    /// Whether the sender may use a built-in here; says why not if not.
    pub(super) fn gate(&self, out: &mut Out, builtin: &str) -> bool {
        let d = self.policy().decide(
            &self.subject(out),
            &Target::Builtin(builtin),
            &Params::new(),
            &FromChat::default(),
        );
        if let Decision::Deny { rule, reason } = d {
            let e = out
                .entry(Event::Denied)
                .rule(rule.as_deref())
                .status(Status::Denied)
                .detail(json!({"builtin": builtin, "reason": reason}));
            out.log(e);
            out.say(format!("🚫 Refused: {reason}."));
            return false;
        }
        true
    }

    pub(super) fn builtin_help(&self, out: &mut Out, filter: &str) {
        if !self.gate(out, "help") {
            return;
        }
        let who = self.subject(out);
        let policy = self.policy();
        let p = &self.settings.prefix;
        let mut lines = Vec::new();
        for e in self.aliases().help(Some(filter)) {
            let target = Target::Alias {
                reference: &e.reference,
                pack: &e.pack,
                action_ref: &e.action_ref,
            };
            if policy.may_use(&who, &target) {
                lines.push(
                    match e
                        .description
                        .as_deref()
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                    {
                        Some(d) => format!("{p}{} — {d}", e.display),
                        None => format!("{p}{}", e.display),
                    },
                );
            }
        }
        let builtins: Vec<String> = [
            ("help", "help [filter]"),
            ("pending", "pending"),
            ("pending", "status <id>"),
            (
                "audit",
                "audit [n] | audit who deployed <pack> | audit unreviewed",
            ),
            ("cancel", "cancel <id>"),
            ("review", "review <id> [note]"),
            ("lock", "lock <name> [reason]"),
            ("lock", "unlock <name>"),
            ("locks", "locks"),
            ("web", "web | web logout"),
            (
                "audit",
                "deploys <alias|pack> [n] | deploys lock <name> [n]",
            ),
        ]
        .iter()
        .filter(|(b, _)| policy.may_use(&who, &Target::Builtin(b)))
        .map(|(_, usage)| format!("{p}{usage}"))
        .collect();
        let mut text = if lines.is_empty() {
            "There are no commands you may run in this room.".to_string()
        } else {
            format!("Commands you may run here:\n{}", lines.join("\n"))
        };
        text.push_str(&format!(
            "\nBuilt-in: {}\nTo answer a confirmation, reply \"yes\" or \"no\" to its message (or {p}approve <id> / {p}deny <id>).",
            builtins.join(", ")
        ));
        let e = out
            .entry(Event::Help)
            .status(Status::Ok)
            .detail(json!({"commands": lines.len()}));
        out.log(e);
        out.say(text);
    }

    pub(super) fn builtin_pending(&self, out: &mut Out) {
        if !self.gate(out, "pending") {
            return;
        }
        let now = out.now;
        let open: Vec<Request> = self
            .requests
            .open_requests()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.room == out.m.room)
            .collect();
        let e = out
            .entry(Event::Pending)
            .status(Status::Ok)
            .detail(json!({"open": open.len()}));
        out.log(e);
        if open.is_empty() {
            return out.say("No open requests in this room.");
        }
        let lines: Vec<String> = open.iter().map(|r| self.request_line(r, now)).collect();
        out.say(format!("Open requests:\n{}", lines.join("\n")));
    }

    /// `!status <id>`: one request, with a running one's elapsed time and
    /// last lines of output.
    pub(super) fn builtin_status(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "pending") {
            return;
        }
        let id = args.split_whitespace().next().unwrap_or_default();
        let req = match self.requests.get(id) {
            Ok(Some(r)) if r.room == out.m.room => r,
            // Gone from the store after `requests.keep`: its history is
            // in the audit log, sealed or not.
            Ok(None) if !id.is_empty() => match archived_status(&self.audit, id, &out.m.room) {
                Some(text) => {
                    let e = out
                        .entry(Event::Pending)
                        .status(Status::Ok)
                        .detail(json!({"request": id}));
                    out.log(e);
                    return out.say(text);
                }
                None => return out.say(super::approval::unknown_request(id)),
            },
            _ => return out.say(super::approval::unknown_request(id)),
        };
        let e = out
            .entry(Event::Pending)
            .status(Status::Ok)
            .detail(json!({"request": req.id}));
        out.log(e);
        let mut text = self.request_line(&req, out.now);
        if let Some(summary) = &req.summary {
            text.push_str(&format!(" — {summary}"));
        }
        // The whole plan its approvers were shown the start of (a chat
        // message is cut at its limit; the audit's `planned` entry keeps it).
        if let Some(p) = &req.plan_run {
            text.push_str(&format!(
                "\nIts plan ({}, {}, digest {}){}:\n{}",
                p.action,
                if p.ok { "succeeded" } else { "failed" },
                p.digest,
                if p.truncated { ", cut at 64 KiB" } else { "" },
                p.output
            ));
        }
        out.say(text);
    }

    /// A request in one line; a running one adds its elapsed time and
    /// its last lines of output.
    pub(super) fn request_line(&self, r: &Request, now: u64) -> String {
        let mut s = pending_line(r, now);
        if let Some(note) = self.queue_note(r) {
            s.push_str(&note);
        }
        if let Some((elapsed_ms, lines)) = self.running_view(&r.id, now) {
            s.push_str(&format!(
                " — running for {}",
                clock::human(std::time::Duration::from_millis(elapsed_ms))
            ));
            for l in lines {
                s.push_str(&format!("\n    │ {l}"));
            }
        }
        s
    }

    pub(super) fn builtin_audit(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "audit") {
            return;
        }
        let room = out.m.room.clone();
        if let Some(pack) = args.strip_prefix("who deployed").map(str::trim) {
            let text = who_deployed(&self.audit, &self.requests, pack, Some(&room));
            let e = out
                .entry(Event::Audit)
                .status(Status::Ok)
                .detail(json!({"query": args}));
            out.log(e);
            return out.say(text);
        }
        if args == "verify" {
            let e = out
                .entry(Event::Audit)
                .status(Status::Ok)
                .detail(json!({"query": args}));
            out.log(e);
            return out.say(self.verify_text(out.now));
        }
        if args == "unreviewed" {
            let e = out
                .entry(Event::Audit)
                .status(Status::Ok)
                .detail(json!({"query": args}));
            out.log(e);
            return out.say(self.unreviewed(&room));
        }
        let n = if args.is_empty() {
            Ok(10)
        } else {
            args.parse::<usize>()
        };
        let Ok(n) = n else {
            return out.say(
                "Usage: audit [n], audit who deployed <pack>, audit unreviewed or audit verify",
            );
        };
        let q = Query {
            room: Some(room),
            limit: Some(n.clamp(1, 50)),
            ..Default::default()
        };
        let e = out
            .entry(Event::Audit)
            .status(Status::Ok)
            .detail(json!({"query": args}));
        out.log(e);
        match self.audit.query(&q) {
            Ok(entries) if entries.is_empty() => {
                out.say("The audit log has nothing for this room yet.")
            }
            Ok(entries) => {
                let lines: Vec<String> = entries.iter().map(Entry::summary_line).collect();
                out.reply(Message::from_template_output(&format!(
                    "Last {} audit entries for this room:{{~}}{}",
                    entries.len(),
                    lines.join("\n")
                )));
            }
            Err(e) => out.say(format!("⚠️ Cannot read the audit log: {e}")),
        }
    }
}

impl Engine {
    /// `!review <id> [note]`: someone other than whoever broke glass
    /// clears the flag, in the request's room or the audit room.
    pub(super) fn builtin_review(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "review") {
            return;
        }
        let (id, note) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        if id.is_empty() {
            return out.say(format!("Usage: {}review <id> [note]", self.settings.prefix));
        }
        let here = out.m.room.as_str();
        let in_audit_room = self.settings.audit_room.as_deref() == Some(here);
        match self.requests.get(id) {
            Ok(Some(r)) if r.room == here || in_audit_room => r,
            _ => return out.say(super::approval::unknown_request(id)),
        };
        let user = out.m.sender.clone();
        let now = out.now;
        let req = match self.requests.update(id, |r| r.review(&user, now)) {
            Ok(Update::Done(r, ())) => r,
            Ok(Update::Refused(_, why)) => {
                return out.say(format!("🚫 Cannot review request {id}: {why}."));
            }
            Err(e) => return out.say(format!("⚠️ Cannot review request {id}: {e}")),
        };
        let reason = req.break_glass.as_ref().map(|g| g.reason.clone());
        out.log(
            super::request_entry(Event::Reviewed, &req, now)
                .sender(&user)
                .status(Status::Ok)
                .detail(json!({"reason": reason, "note": note.trim(), "state": req.state.name()})),
        );
        out.say(format!(
            "✅ Break-glass request {id} ({} by {}, {}) reviewed by {user}.",
            req.alias.as_deref().unwrap_or(&req.action),
            req.requester,
            req.state.name()
        ));
    }

    /// `!audit verify`: the hash chain, then every checkpoint known to be
    /// in the audit room.
    /// Break-glass runs nobody has reviewed yet: this room's, or every
    /// room's in the audit room.
    fn unreviewed(&self, room: &str) -> String {
        let all = self.settings.audit_room.as_deref() == Some(room);
        let q = Query {
            event: Some(Event::BreakGlass.name().to_string()),
            room: (!all).then(|| room.to_string()),
            ..Default::default()
        };
        let entries = match self.audit.query(&q) {
            Ok(e) => e,
            Err(e) => return format!("⚠️ Cannot read the audit log: {e}"),
        };
        let lines: Vec<String> = entries
            .iter()
            .filter_map(|e| self.requests.get(e.request.as_deref()?).ok()?)
            .filter(|r| {
                r.break_glass
                    .as_ref()
                    .is_some_and(|g| g.reviewed_by.is_none())
            })
            .map(|r| {
                format!(
                    "{} {} {} by {} in {} at {}: “{}”",
                    r.id,
                    r.state.name(),
                    r.alias.as_deref().unwrap_or(&r.action),
                    r.requester,
                    r.room,
                    clock::format_ms(r.created_ms),
                    r.break_glass.as_ref().map_or("", |g| g.reason.as_str())
                )
            })
            .collect();
        if lines.is_empty() {
            "No unreviewed break-glass runs.".to_string()
        } else {
            format!(
                "Unreviewed break-glass runs ({}review <id> to clear):\n{}",
                self.settings.prefix,
                lines.join("\n")
            )
        }
    }
}

/// Who deployed `pack`, when, at which commit, approved by whom
/// (newest first). `room` limits it to one room. Everything comes from
/// the audit log, sealed history included: the run's `finished` entry
/// names what it put in place, who asked and (since it says so) who
/// approved; an older entry's approvers are read from its request, or
/// from the request's last approval entry once the request is gone.
pub fn who_deployed(
    audit: &AuditLog,
    requests: &Requests,
    pack: &str,
    room: Option<&str>,
) -> String {
    let q = Query {
        deployed: Some(pack.into()),
        room: room.map(str::to_string),
        event: Some("finished".into()),
        ..Default::default()
    };
    let entries = match audit.query(&q) {
        Ok(e) => e,
        Err(e) => return format!("⚠️ Cannot read the audit log: {e}"),
    };
    let mut lines = Vec::new();
    for e in entries.iter().rev() {
        let Some(id) = &e.request else { continue };
        let facts = super::deploys::RunFacts::of(e);
        let Some(this) = facts.deployed.iter().find(|d| d.pack == pack) else {
            continue;
        };
        // An entry records `approved_by` only when someone approved; older
        // ones never did, and the request or its approval entry says.
        let approvers = if facts.approved_by.is_empty() {
            approvers_of(audit, requests, id)
        } else {
            facts.approved_by.clone()
        };
        lines.push(format!(
            "{} {} {} by {}{} at {} — {} [request {id}]",
            clock::format_ms(e.ts),
            if e.action.as_deref() == Some("packs.rollback") {
                "rolled back"
            } else {
                "deployed"
            },
            pack,
            e.sender.as_deref().unwrap_or("?"),
            if approvers.is_empty() {
                String::new()
            } else {
                format!(" (approved by {})", approvers.join(", "))
            },
            this.commit,
            e.status.map_or("?", |s| s.name()),
        ));
    }
    if lines.is_empty() {
        format!("No deployments of {pack} in the audit log.")
    } else {
        format!("Deployments of {pack}, newest first:\n{}", lines.join("\n"))
    }
}

/// Who approved request `id`: its record while it is kept, else its last
/// approval entry (`approvers`).
fn approvers_of(audit: &AuditLog, requests: &Requests, id: &str) -> Vec<String> {
    if let Ok(Some(req)) = requests.get(id) {
        return req.approvals.into_iter().map(|a| a.user).collect();
    }
    let q = Query {
        request: Some(id.into()),
        event: Some("approval".into()),
        status: Some("approved".into()),
        limit: Some(1),
        ..Default::default()
    };
    audit
        .query(&q)
        .ok()
        .and_then(|e| e.last()?.detail_field("approvers"))
        .unwrap_or_default()
}

/// A request no longer in the store, in one line from its audit entries
/// in `room` (None: it never was there).
fn archived_status(audit: &AuditLog, id: &str, room: &str) -> Option<String> {
    let q = Query {
        request: Some(id.into()),
        room: Some(room.into()),
        ..Default::default()
    };
    let entries = audit.query(&q).ok()?;
    // Its lock's release comes after its end: the last step of its own
    // life is what it came to.
    let last = entries
        .iter()
        .rev()
        .find(|e| !matches!(e.event, Event::Locked | Event::Queued | Event::Unlocked))?;
    let first = entries.first()?;
    let mut s = format!(
        "{id} {} {} by {}, {} at {}",
        last.status.map_or(last.event.name(), |s| s.name()),
        first
            .alias
            .as_deref()
            .or(first.action.as_deref())
            .unwrap_or("?"),
        first.sender.as_deref().unwrap_or("?"),
        last.event.name(),
        clock::format_ms(last.ts),
    );
    if let Some(summary) = last.detail_field::<String>("summary") {
        s.push_str(&format!(" — {summary}"));
    }
    s.push_str(" (from the audit log: the request itself is no longer kept)");
    Some(s)
}

/// One line of `!pending` / `airlock pending`.
pub fn pending_line(r: &Request, now: u64) -> String {
    let params: Vec<String> = r
        .params
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    let mut s = format!(
        "{} {} {} by {} in {} ({})",
        r.id,
        r.state.name(),
        r.alias.as_deref().unwrap_or(&r.action),
        r.requester,
        r.room,
        params.join(" ")
    );
    if let Some(g) = &r.break_glass {
        match &g.reviewed_by {
            None => s.push_str(" — 🚨 break-glass, not reviewed"),
            Some(by) => s.push_str(&format!(" — break-glass, reviewed by {by}")),
        }
    }
    if r.state == State::Pending {
        s.push_str(&format!(
            " — {}/{} approvals",
            r.approvals.len(),
            r.approvals_needed(),
        ));
        // Who approved, and for a quorum which part each counted for and
        // what is still missing.
        let users: Vec<&str> = r.approvals.iter().map(|a| a.user.as_str()).collect();
        let c = r.confirmation.as_ref().filter(|c| !c.quorum.is_empty());
        let parts = c.map(|c| c.assign(&users)).unwrap_or_default();
        if !users.is_empty() {
            let who: Vec<String> = users
                .iter()
                .enumerate()
                .map(|(i, u)| match (c, parts.get(i).copied().flatten()) {
                    (Some(c), Some(p)) => format!("{u} ({})", c.quorum[p].text),
                    _ => u.to_string(),
                })
                .collect();
            s.push_str(&format!(" so far: {}", who.join(", ")));
        }
        if let Some(c) = c {
            s.push_str(&format!(
                "; still needed: {}",
                c.missing(&users).join(" and ")
            ));
        }
        s.push_str(&format!(
            ", expires in {}",
            clock::human(r.expires_in(now).unwrap_or_default())
        ));
    }
    s
}
