//! Re-approval on change: approvals are given for what a prompt showed
//! under the rule that asked for them. When the policy, the alias or the
//! version of the action changes before a pending request starts, the
//! approvals already given no longer count, and the room is told.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::request::{confirmation, validated};
use super::{
    Effect, Engine, FAILED, Outgoing, react_request, reply_to_request, request_entry,
    request_subject, request_target,
};
use crate::action::Prepared;
use crate::audit::{Event, Status};
use crate::policy::ConfirmPolicy;
use crate::render::Message;
use crate::requests::{Basis, Request, State, Update};

fn digest(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    /// What `req`'s approvals are given against, as loaded now.
    pub(super) fn basis(&self, req: &Request) -> Basis {
        let policy = self.policy();
        let rule = policy
            .rule(&req.rule)
            .map_or_else(|| "gone".to_string(), |r| digest(&r.fingerprint()));
        // What decides what runs: not the ack or result messages.
        let alias = req
            .alias
            .as_deref()
            .and_then(|a| self.aliases().get(a).cloned());
        let alias = alias.map_or_else(
            || "gone".to_string(),
            |a| {
                digest(&format!(
                    "{:?}{:?}{:?}{:?}",
                    a.action_ref, a.formats, a.immutable_parameters, a.extra
                ))
            },
        );
        let action = self
            .action(&req.action)
            .and_then(|a| a.version())
            .unwrap_or_default();
        Basis {
            rule,
            alias,
            action,
        }
    }

    /// After the aliases, the packs or the policy were reloaded: every
    /// pending request whose basis changed loses its approvals and is
    /// asked again under the rule as it is now, or, if the policy no
    /// longer allows it, ends `refused`. Either way its room is told.
    pub fn recheck_pending(&self, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        let pending = self.requests.open_requests().unwrap_or_default();
        for req in pending.into_iter().filter(|r| r.state == State::Pending) {
            let Some(old) = req.basis.clone() else {
                continue;
            };
            let new = self.basis(&req);
            if new == old {
                continue;
            }
            let mut changed = Vec::new();
            if new.rule != old.rule {
                changed.push(format!("rule {}", req.rule));
            }
            if new.alias != old.alias {
                changed.push(format!(
                    "alias {}",
                    req.alias.as_deref().unwrap_or(&req.action)
                ));
            }
            if new.action != old.action {
                changed.push(format!(
                    "the version of {} (now {})",
                    req.action,
                    &new.action[..new.action.len().min(12)]
                ));
            }
            let changed = changed.join(" and ");
            let who = request_subject(&req, now);
            let verdict = self
                .policy()
                .recheck(&who, &request_target(&req), &req.rule);
            let verdict = match (verdict, new.alias.as_str()) {
                (Ok(_), "gone") => Err(format!(
                    "alias {} is gone",
                    req.alias.as_deref().unwrap_or_default()
                )),
                (Ok(c), _) => Ok(c
                    .or_else(|| {
                        let alias = req
                            .alias
                            .as_deref()
                            .and_then(|a| self.aliases().get(a).cloned());
                        alias
                            .filter(|a| a.twofactor())
                            .map(|_| ConfirmPolicy::second_person())
                    })
                    // A pending request stays confirmed by someone, even
                    // if its rule now asks for no confirmation.
                    .unwrap_or_else(ConfirmPolicy::second_person)),
                (Err(e), _) => Err(e),
            };
            // A new version of the action is prepared again: the prompt
            // shows, and the run uses, what is live now.
            let verdict = verdict.and_then(|c| {
                if new.action == old.action {
                    return Ok((c, None));
                }
                let action = self
                    .action(&req.action)
                    .ok_or_else(|| format!("action {} is gone", req.action))?;
                let prepared = validated(Some(action.spec()), req.asked.clone())
                    .and_then(|params| action.prepare(params).map_err(|e| e.to_string()))
                    .map_err(|e| format!("it cannot be prepared again: {e}"))?;
                Ok((c, Some(prepared)))
            });
            // Its plan runs again against what is live now: the approvals
            // to come are for what it shows then.
            let verdict = verdict.and_then(|(c, prepared)| {
                let against = prepared.clone().unwrap_or_else(|| Prepared {
                    params: req.params.clone(),
                    shown: req.shown.clone(),
                    plan: req.plan.clone(),
                });
                match self.run_plan(&req, &against, || now) {
                    Some(Err(failed)) => Err(failed),
                    _ => Ok((c, prepared)),
                }
            });
            match verdict {
                Err(why) => fx.extend(self.refuse_pending(&req, &changed, &why, now)),
                Ok((c, prepared)) => {
                    fx.extend(self.ask_again(&req, &c, new, prepared, &changed, now))
                }
            }
        }
        fx
    }

    fn refuse_pending(&self, req: &Request, changed: &str, why: &str, now: u64) -> Vec<Effect> {
        let msg = format!("{changed} changed and {why}");
        let req = match self.requests.update(&req.id, |r| r.refuse(&msg, now)) {
            Ok(Update::Done(r, ())) => r,
            _ => return Vec::new(),
        };
        self.record(vec![
            request_entry(Event::Denied, &req, now)
                .rule(Some(&req.rule))
                .status(Status::Denied)
                .detail(json!({"reason": msg, "when": "pending, after a reload"})),
        ]);
        vec![
            Effect::Send(reply_to_request(
                &req,
                Message::plain(format!(
                    "🚫 Request {} will not run: {msg}. The approvals given no longer count.",
                    req.id
                )),
            )),
            react_request(&req, FAILED),
        ]
    }

    fn ask_again(
        &self,
        req: &Request,
        c: &ConfirmPolicy,
        basis: Basis,
        prepared: Option<Prepared>,
        changed: &str,
        now: u64,
    ) -> Vec<Effect> {
        let expires_ms = req.confirmation.as_ref().map_or(now, |c| c.expires_ms);
        let result = self.requests.update(&req.id, |r| {
            r.reconfirm(confirmation(c, expires_ms), basis.clone(), prepared.clone())
        });
        let (req, dropped) = match result {
            Ok(Update::Done(r, dropped)) => (r, dropped),
            _ => return Vec::new(),
        };
        let dropped: Vec<String> = dropped.into_iter().map(|a| a.user).collect();
        self.record(vec![
            request_entry(Event::ConfirmationRequested, &req, now).detail(json!({
                "changed": changed,
                "dropped_approvals": dropped,
                "approvers": c.describe(),
                "approvals": req.approvals_needed(),
            })),
        ]);
        let notice = if dropped.is_empty() {
            format!(
                "♻️ {changed} changed since request {} was asked for; it is asked again.",
                req.id
            )
        } else {
            format!(
                "♻️ {changed} changed since request {} was asked for, so the approvals given ({}) no longer count; it is asked again.",
                req.id,
                dropped.join(", ")
            )
        };
        let prompt = self.prompt(&req, now);
        vec![Effect::Send(Outgoing {
            room: req.room.clone(),
            reply_to: Some(req.event_id.clone()),
            thread: req.thread.clone(),
            message: Message::plain(format!("{notice}\n{}", prompt.body)),
            prompt_for: Some(req.id.clone()),
        })]
    }
}
