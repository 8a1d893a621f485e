//! Deploy history and redeploy by chat: `!deploys <alias|pack> [n]` lists
//! the last runs with their outcome, commit, who asked and who approved;
//! `!redeploy <id>` asks again for exactly what an earlier request ran
//! (for an install, the same commit, wherever the branch is now), under
//! the policy as it is now.

use serde_json::json;

use super::request::{Asking, Repeat};
use super::{Engine, Out};
use crate::action::Deployed;
use crate::alias::Params;
use crate::audit::{Entry, Event, Query, Status};
use crate::clock;

/// Runs `!deploys` lists unless told otherwise, and at most.
const DEPLOYS: usize = 10;
const MOST: usize = 50;

impl Engine {
    /// `!deploys <alias|pack> [n]`, `!deploys lock <name> [n]`: this
    /// room's last `n` runs of an alias (`pack.name`), installs of a pack,
    /// or runs that held a lock, newest first.
    pub(super) fn builtin_deploys(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "audit") {
            return;
        }
        let mut words = args.split_whitespace();
        let mut what = words.next();
        let lock = what == Some("lock");
        if lock {
            what = words.next();
        }
        let Some(what) = what else {
            return out.say(format!(
                "Usage: {p}deploys <alias|pack> [n], or {p}deploys lock <name> [n]",
                p = self.settings.prefix
            ));
        };
        let n = words
            .next()
            .and_then(|w| w.parse::<usize>().ok())
            .unwrap_or(DEPLOYS)
            .clamp(1, MOST);
        let mut q = Query {
            room: Some(out.m.room.clone()),
            event: Some("finished".into()),
            limit: Some(n),
            ..Default::default()
        };
        if what.contains('.') {
            q.alias = Some(what.into());
        } else {
            q.deployed = Some(what.into());
        }
        let e = out
            .entry(Event::Audit)
            .status(Status::Ok)
            .detail(json!({"deploys": what, "n": n}));
        out.log(e);
        let entries = if lock {
            self.runs_under_lock(&out.m.room, what, n)
        } else {
            self.audit.query(&q)
        };
        let entries = match entries {
            Ok(e) => e,
            Err(e) => return out.say(format!("⚠️ Cannot read the audit log: {e}")),
        };
        if entries.is_empty() {
            return out.say(format!("No runs of {what} in this room."));
        }
        let lines: Vec<String> = entries
            .iter()
            .rev()
            .map(|e| {
                let facts = RunFacts::of(e);
                let commit = facts
                    .commit(q.deployed.as_deref())
                    .map(|c| format!(" at {c}"))
                    .unwrap_or_default();
                let approvers = facts.approved_by;
                format!(
                    "{} {} {}{commit} by {}{} at {}",
                    e.request.as_deref().unwrap_or("?"),
                    e.status.map_or("?", |s| s.name()),
                    e.alias.as_deref().or(e.action.as_deref()).unwrap_or("?"),
                    e.sender.as_deref().unwrap_or("?"),
                    if approvers.is_empty() {
                        String::new()
                    } else {
                        format!(", approved by {}", approvers.join(", "))
                    },
                    clock::format_ms(e.ts),
                )
            })
            .collect();
        out.say(format!(
            "Last runs of {what} here (newest first; {}redeploy <id> asks for one again):\n{}",
            self.settings.prefix,
            lines.join("\n")
        ));
    }

    /// The `finished` entries of the last `n` runs in `room` that took lock
    /// `name`, oldest first (as a query answers).
    fn runs_under_lock(
        &self,
        room: &str,
        name: &str,
        n: usize,
    ) -> Result<Vec<crate::audit::Entry>, crate::audit::AuditError> {
        let took = self.audit.query(&Query {
            room: Some(room.into()),
            event: Some("locked".into()),
            limit: None,
            ..Default::default()
        })?;
        let mut ids: Vec<String> = took
            .iter()
            .rev()
            .filter(|e| e.detail_field::<String>("lock").as_deref() == Some(name))
            .filter_map(|e| e.request.clone())
            .take(n)
            .collect();
        ids.reverse();
        let mut out = Vec::new();
        for id in ids {
            let ended = self.audit.query(&Query {
                request: Some(id),
                event: Some("finished".into()),
                ..Default::default()
            })?;
            out.extend(ended.into_iter().last());
        }
        Ok(out)
    }

    /// `!redeploy <id>`: a new request for exactly what request `id` ran:
    /// its alias, its parameters, and (for an install) the commits it
    /// installed. It is decided and confirmed as any request is now.
    pub(super) fn builtin_redeploy(&self, out: &mut Out, args: &str) {
        let id = args.split_whitespace().next().unwrap_or_default();
        // Another room's request answers as an unknown one does.
        let req = match self.requests.get(id) {
            Ok(Some(r)) if r.room == out.m.room => r,
            _ => {
                return out.say(format!(
                    "There is no request \"{id}\" kept here (requests are kept for requests.keep after they end; {}deploys lists recent ones).",
                    self.settings.prefix
                ));
            }
        };
        if req.state.is_open() {
            return out.say(format!(
                "Request {id} is still {}; redeploy asks again for one that has ended.",
                req.state.name()
            ));
        }
        let Some(alias) = req
            .alias
            .as_deref()
            .and_then(|a| self.aliases().get(a).cloned())
        else {
            return out.say(format!(
                "Request {id}'s alias {} is no longer loaded; it cannot be asked for again.",
                req.alias.as_deref().unwrap_or("(none)")
            ));
        };
        // What chat gave it: the alias adds its own fixed parameters again.
        let parsed: Params = req
            .asked
            .iter()
            .filter(|(k, _)| !alias.immutable_parameters.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let pin = self
            .action(&req.action)
            .map(|a| a.pinned(&req.params, &req.plan))
            .unwrap_or_default();
        let e = out
            .entry(Event::Matched)
            .alias(Some(&alias.reference()))
            .action(&alias.action_ref)
            .detail(json!({"redeploy_of": id, "pinned": pin}));
        out.log(e);
        let pinned = if pin.is_empty() {
            String::new()
        } else {
            let set: Vec<String> = pin
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            format!(", pinned to what it ran ({})", set.join(" "))
        };
        let note = format!(
            "Asks again for request {id} ({}, {} at {}) with the same parameters{pinned}.",
            alias.reference(),
            req.state.name(),
            clock::format_ms(req.finished_ms.unwrap_or(req.created_ms)),
        );
        out.say(format!("↩️ {note}"));
        let command = req.command.clone();
        let repeat = Repeat { pinned: pin, note };
        let asking = Asking {
            command: &command,
            set_in_chat: &req.set_in_chat,
            glass: None,
            repeat: Some(&repeat),
        };
        self.request(out, &alias, parsed, &asking);
    }
}

/// What a run's `finished` entry says of it: the packs it put in place,
/// who approved it, how it ended. What `!deploys` and the web view's
/// histories show of each run, read in one pass over the details (a
/// result with a megabyte of output is skipped, not built).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct RunFacts {
    #[serde(default)]
    pub deployed: Vec<Deployed>,
    #[serde(default)]
    pub approved_by: Vec<String>,
    #[serde(default)]
    pub summary: String,
}

impl RunFacts {
    pub(super) fn of(e: &Entry) -> Self {
        e.detail_as().unwrap_or_default()
    }

    /// The short commit it put in place: of `pack` when named, else of
    /// the first pack.
    pub(super) fn commit(&self, pack: Option<&str>) -> Option<String> {
        self.deployed
            .iter()
            .find(|d| pack.is_none_or(|p| d.pack == p))
            .map(|d| d.commit.get(..12).unwrap_or(&d.commit).to_string())
    }
}
