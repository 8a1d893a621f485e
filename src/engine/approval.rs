//! Answers to a confirmation: approve, deny, cancel.

use super::*;

impl Engine {
    /// Whether `user` may approve or deny `req`.
    pub(super) fn may_decide(
        &self,
        req: &Request,
        user: &str,
        power_level: Option<i64>,
    ) -> Result<(), String> {
        let Some(c) = &req.confirmation else {
            return Err("it does not need confirmation".into());
        };
        if user == req.requester {
            return if c.self_approve {
                Ok(())
            } else {
                Err("you made this request; someone else must approve it".into())
            };
        }
        if !c.approvers.is_empty() {
            return if c
                .approvers
                .iter()
                .any(|g| policy::Glob::new(g).matches(user))
            {
                Ok(())
            } else {
                Err(format!("only {} may approve it", c.approvers_text))
            };
        }
        // No approvers named: anyone allowed to run the same thing here.
        let alias = req.alias.as_deref().unwrap_or_default();
        let pack = alias.split('.').next().unwrap_or_default();
        let target = Target::Alias {
            reference: alias,
            pack,
            action_ref: &req.action,
        };
        let who = Subject {
            user,
            room: &req.room,
            power_level,
        };
        if self
            .policy()
            .decide(&who, &target, &req.params, &req.set_in_chat)
            .is_allowed()
        {
            Ok(())
        } else {
            Err("you may not run this command here, so you cannot approve it".into())
        }
    }

    /// Whether `user` could know of `req`: its requester, someone who may
    /// answer it, or someone the policy lets list requests in its room.
    pub(super) fn may_see(&self, req: &Request, user: &str, power_level: Option<i64>) -> bool {
        let who = Subject {
            user,
            room: &req.room,
            power_level,
        };
        user == req.requester
            || self.may_decide(req, user, power_level).is_ok()
            || self.policy().may_use(&who, &Target::Builtin("pending"))
    }

    pub(super) fn decide(&self, out: &mut Out, req: &Request, verdict: Verdict) {
        let m = out.m;
        let user = m.sender.as_str();
        if req.room != m.room {
            // Only someone who could see the request learns it exists.
            if self.may_see(req, user, m.power_level) {
                out.say(format!(
                    "Request {} belongs to another room; answer it there.",
                    req.id
                ));
            } else {
                out.say(unknown_request(&req.id));
            }
            return;
        }
        let verdict = if verdict == Verdict::Deny && user == req.requester {
            Verdict::Cancel
        } else {
            verdict
        };
        let refuse = |out: &mut Out, why: String| {
            out.log(
                request_entry("approval_refused", req)
                    .sender(user)
                    .detail(json!({"verdict": verdict.name(), "reason": why})),
            );
            out.say(format!(
                "🚫 Cannot {} request {}: {why}.",
                verdict.name(),
                req.id
            ));
        };
        if verdict == Verdict::Cancel {
            if user != req.requester {
                return refuse(out, "only the requester can cancel it".into());
            }
        } else if let Err(why) = self.may_decide(req, user, m.power_level) {
            return refuse(out, why);
        }
        let now = now_ms();
        let result = self.requests.update(&req.id, |r| {
            if r.state != State::Pending {
                return Err(format!("it is already {}", r.state.name()));
            }
            if r.confirmation.as_ref().is_some_and(|c| now >= c.expires_ms) {
                r.state = State::Expired;
                r.finished_ms = Some(now);
                return Ok(Step::Expired);
            }
            match verdict {
                Verdict::Cancel => {
                    r.state = State::Cancelled;
                    r.decided_by = Some(user.to_string());
                    r.finished_ms = Some(now);
                    Ok(Step::Closed)
                }
                Verdict::Deny => {
                    r.state = State::Denied;
                    r.decided_by = Some(user.to_string());
                    r.finished_ms = Some(now);
                    Ok(Step::Closed)
                }
                Verdict::Approve => {
                    if r.approvals.iter().any(|a| a.user == user) {
                        return Err(format!(
                            "you already approved it; it needs {} more from someone else",
                            r.approvals_needed() as usize - r.approvals.len()
                        ));
                    }
                    r.approvals.push(Approval {
                        user: user.to_string(),
                        ts: now,
                    });
                    if r.approvals.len() as u32 >= r.approvals_needed() {
                        r.state = State::Approved;
                        r.decided_by = Some(user.to_string());
                        Ok(Step::Approved)
                    } else {
                        Ok(Step::Counted)
                    }
                }
            }
        });
        let (req, what) = match result {
            Ok(Update::Done(r, what)) => {
                crate::crash::point("approval_recorded");
                (r, what)
            }
            Ok(Update::Refused(_, why)) => return refuse(out, why),
            Err(e) => return refuse(out, e.to_string()),
        };
        match what {
            Step::Expired => {
                out.log(
                    request_entry("expired", &req)
                        .status("expired")
                        .sender(user),
                );
                out.say(format!(
                    "⌛ Request {} expired before it was approved.",
                    req.id
                ));
                out.effects.push(react_request(&req, FAILED));
            }
            Step::Closed => {
                let event = if verdict == Verdict::Cancel {
                    "cancelled"
                } else {
                    "rejected"
                };
                out.log(
                    request_entry(event, &req)
                        .sender(user)
                        .status(req.state.name()),
                );
                // The answer goes to whoever asked; the command gets ❌.
                out.say(format!(
                    "{} Request {} was {} by {user}; it will not run.",
                    if verdict == Verdict::Cancel {
                        "🛑"
                    } else {
                        "🚫"
                    },
                    req.id,
                    if verdict == Verdict::Cancel {
                        "cancelled"
                    } else {
                        "denied"
                    }
                ));
                out.effects.push(react_request(&req, FAILED));
            }
            Step::Counted => {
                let (have, need) = (req.approvals.len(), req.approvals_needed());
                out.log(
                    request_entry("approval", &req)
                        .sender(user)
                        .status("pending")
                        .detail(json!({"approvals": have, "needed": need})),
                );
                out.say(format!(
                    "👍 Approval {have} of {need} for request {} recorded from {user}.",
                    req.id
                ));
            }
            Step::Approved => {
                out.log(
                    request_entry("approval", &req)
                        .sender(user)
                        .status("approved")
                        .detail(json!({
                            "approvals": req.approvals.len(), "needed": req.approvals_needed(),
                            "approvers": req.approvals.iter().map(|a| &a.user).collect::<Vec<_>>(),
                        })),
                );
                // `!approve <id>` is not a reply to the prompt: answer it
                // directly (the ack goes to the command, as in st2).
                if m.reply_to.is_none() && !matches!(m.kind, Kind::Reaction(_)) {
                    out.say(format!(
                        "👍 Request {} approved by {user}; it runs now.",
                        req.id
                    ));
                }
                let alias = req
                    .alias
                    .as_deref()
                    .and_then(|a| self.aliases().get(a).cloned());
                match alias {
                    Some(alias) => self.accept(out, &req, &alias),
                    None => {
                        out.effects.push(Effect::Execute(req.id.clone()));
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Approve,
    Deny,
    Cancel,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
            Verdict::Cancel => "cancel",
        }
    }
}

/// What an approval, denial or cancellation did to a request.
enum Step {
    Counted,
    Approved,
    Closed,
    Expired,
}

/// The answer to an id nobody here may know of.
pub(super) fn unknown_request(id: &str) -> String {
    format!("There is no request \"{id}\".")
}
