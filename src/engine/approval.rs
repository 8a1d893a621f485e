//! Answers to a confirmation: approve, deny, cancel. Who may answer is
//! decided here; what an answer does to the request is
//! [`Request`]'s own state machine.

use serde_json::json;

use super::{Device, Engine, FAILED, Kind, Out, react_request, request_entry, request_target};
use crate::audit::{Event, Status};
use crate::policy::{Subject, Target};
use crate::requests::{Request, State, Step, Update};

/// An answer to a prompt.
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

/// The device an answer came from, and whether it was cross-signed, as
/// an approval records it.
fn device_of(d: &Device) -> (Option<String>, Option<bool>) {
    match d {
        Device::Unknown => (None, None),
        Device::CrossSigned(id) => (Some(id.clone()), Some(true)),
        Device::NotCrossSigned(id) => (Some(id.clone()), Some(false)),
    }
}

/// For a quorum: the part the last approval counts for, and what is
/// still missing (both empty without one).
fn quorum_text(req: &Request) -> (String, String) {
    let Some(c) = req.confirmation.as_ref().filter(|c| !c.quorum.is_empty()) else {
        return (String::new(), String::new());
    };
    let users: Vec<&str> = req.approvals.iter().map(|a| a.user.as_str()).collect();
    let part = c
        .assign(&users)
        .last()
        .copied()
        .flatten()
        .map(|i| format!(" ({})", c.quorum[i].text))
        .unwrap_or_default();
    (
        part,
        format!(" Still needed: {}.", c.missing(&users).join(" and ")),
    )
}

/// What the audit keeps of the last approval of `req`: which part of
/// its confirmation it counted for (`as`), and the device it came from
/// and whether that device was cross-signed, when the transport knew.
fn approval_detail(req: &Request, mut detail: serde_json::Value) -> serde_json::Value {
    let Some(last) = req.approvals.last() else {
        return detail;
    };
    let part = req.confirmation.as_ref().and_then(|c| {
        if c.quorum.is_empty() {
            return Some(c.approvers_text.clone());
        }
        let users: Vec<&str> = req.approvals.iter().map(|a| a.user.as_str()).collect();
        let i = c.assign(&users).last().copied().flatten()?;
        Some(c.quorum[i].text.clone())
    });
    if let Some(part) = part {
        detail["as"] = json!(part);
    }
    if let Some(device) = &last.device {
        detail["device"] = json!(device);
    }
    if let Some(cross_signed) = last.cross_signed {
        detail["cross_signed"] = json!(cross_signed);
    }
    detail
}

/// What a check of an answer found: go on and record it, or it was
/// handled already (a queued request taken out of its queue).
enum Answer {
    Record,
    Handled,
}

/// Refuse `verdict` on `req` to its sender, saying why, and record it.
fn refuse(out: &mut Out, req: &Request, verdict: Verdict, why: String) {
    let user = out.m.sender.as_str();
    out.log(
        request_entry(Event::ApprovalRefused, req, out.now)
            .sender(user)
            .detail(json!({"verdict": verdict.name(), "reason": why})),
    );
    out.say(format!(
        "🚫 Cannot {} request {}: {why}.",
        verdict.name(),
        req.id
    ));
}

/// Under `verified_devices`, an approval counts only from a device its
/// owner has cross-signed: an access token alone (a new, unsigned login)
/// cannot approve.
fn device_counts(req: &Request, user: &str, device: &Device) -> Result<(), String> {
    if !req
        .confirmation
        .as_ref()
        .is_some_and(|c| c.verified_devices)
    {
        return Ok(());
    }
    match device {
        Device::CrossSigned(_) => Ok(()),
        Device::NotCrossSigned(d) => Err(format!(
            "your answer came from device {d}, which {user} has not cross-signed; this rule \
             counts approvals only from verified devices (verify this session from another of \
             yours, or answer from a verified one)"
        )),
        Device::Unknown => Err(
            "this rule counts approvals only from verified devices, and this answer was not \
             encrypted, so its device cannot be checked; answer in an encrypted room"
                .into(),
        ),
    }
}

/// The answer to an id nobody here may know of.
pub(super) fn unknown_request(id: &str) -> String {
    format!("There is no request \"{id}\".")
}

impl Engine {
    /// Whether `user` may approve or deny `req`.
    pub(super) fn may_decide(
        &self,
        req: &Request,
        user: &str,
        power_level: Option<i64>,
        at: u64,
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
                .any(|g| crate::policy::Glob::new(g).matches(user))
            {
                Ok(())
            } else {
                Err(format!("only {} may approve it", c.approvers_text))
            };
        }
        // No approvers named: anyone allowed to run the same thing here.
        let target = request_target(req);
        let who = Subject {
            user,
            room: &req.room,
            power_level,
            at,
        };
        if self
            .policy()
            .decide(
                &who,
                &target,
                &req.params,
                &crate::policy::FromChat::pairs(&req.set_in_chat),
            )
            .is_allowed()
        {
            Ok(())
        } else {
            Err("you may not run this command here, so you cannot approve it".into())
        }
    }

    /// Whether `user` could know of `req`: its requester, someone who may
    /// answer it, or someone the policy lets list requests in its room.
    pub(super) fn may_see(
        &self,
        req: &Request,
        user: &str,
        power_level: Option<i64>,
        at: u64,
    ) -> bool {
        let who = Subject {
            user,
            room: &req.room,
            power_level,
            at,
        };
        user == req.requester
            || self.may_decide(req, user, power_level, at).is_ok()
            || self.policy().may_use(&who, &Target::Builtin("pending"))
    }

    pub(super) fn decide(&self, out: &mut Out, req: &Request, verdict: Verdict) {
        let m = out.m;
        let now = out.now;
        let user = m.sender.as_str();
        if req.room != m.room {
            // Only someone who could see the request learns it exists.
            if self.may_see(req, user, m.power_level, now) {
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
        if verdict == Verdict::Cancel && req.state == State::Running {
            if let Err(why) = self.stop_for(out, req, user) {
                refuse(out, req, verdict, why);
            }
            return;
        }
        match self.may_answer(out, req, verdict) {
            Ok(Answer::Handled) => return,
            Ok(Answer::Record) => {}
            Err(why) => return refuse(out, req, verdict, why),
        }
        let result = self.requests.update(&req.id, |r| match verdict {
            Verdict::Approve => r.approve_from(user, device_of(&out.m.device), now),
            Verdict::Deny => r.deny(user, now),
            Verdict::Cancel => r.cancel(user, now),
        });
        match result {
            Ok(Update::Done(r, step)) => {
                crate::crash::point("approval_recorded");
                self.answered(out, &r, step, verdict);
            }
            Ok(Update::Refused(_, why)) => refuse(out, req, verdict, why.to_string()),
            Err(e) => refuse(out, req, verdict, e.to_string()),
        }
    }

    /// `!cancel` of a running request: the requester, or anyone who could
    /// have approved it, may stop it (without a confirmation, whoever may
    /// use `cancel` here).
    fn stop_for(&self, out: &mut Out, req: &Request, user: &str) -> Result<(), String> {
        let approver = req.confirmation.is_none()
            || self
                .may_decide(req, user, out.m.power_level, out.now)
                .is_ok();
        if user != req.requester && !approver {
            return Err("only the requester or an approver can stop it".into());
        }
        if !self.stop_running(&req.id, user) {
            return Err("it is not running in this process".into());
        }
        out.log(
            request_entry(Event::Cancelled, req, out.now)
                .sender(user)
                .status(Status::Running)
                .detail(json!({"while": "running"})),
        );
        out.say(format!("🛑 Stopping request {} for {user}…", req.id));
        Ok(())
    }

    /// Whether the sender may give this answer: only the requester
    /// cancels (a queued request leaves its queue here); approvals and
    /// denials follow the confirmation's rules, and an approval its
    /// device rules.
    fn may_answer(&self, out: &mut Out, req: &Request, verdict: Verdict) -> Result<Answer, String> {
        let m = out.m;
        let user = m.sender.as_str();
        if verdict == Verdict::Cancel {
            if user != req.requester {
                return Err("only the requester can cancel it".into());
            }
            if self.cancel_waiting(out, req, user) {
                return Ok(Answer::Handled);
            }
            return Ok(Answer::Record);
        }
        self.may_decide(req, user, m.power_level, out.now)?;
        if verdict == Verdict::Approve {
            device_counts(req, user, &m.device)?;
        }
        Ok(Answer::Record)
    }

    /// Say what the recorded answer did: counted, approved (and on to its
    /// run), closed, or too late.
    fn answered(&self, out: &mut Out, req: &Request, step: Step, verdict: Verdict) {
        let m = out.m;
        let now = out.now;
        let user = m.sender.as_str();
        match step {
            Step::Expired => {
                out.log(
                    request_entry(Event::Expired, req, now)
                        .status(Status::Expired)
                        .sender(user),
                );
                out.say(format!(
                    "⌛ Request {} expired before it was approved.",
                    req.id
                ));
                out.effects.push(react_request(req, FAILED));
            }
            Step::Closed => {
                let (event, icon, done) = if verdict == Verdict::Cancel {
                    (Event::Cancelled, "🛑", "cancelled")
                } else {
                    (Event::Rejected, "🚫", "denied")
                };
                out.log(
                    request_entry(event, req, now)
                        .sender(user)
                        .status(req.state),
                );
                // The answer goes to whoever asked; the command gets ❌.
                out.say(format!(
                    "{icon} Request {} was {done} by {user}; it will not run.",
                    req.id
                ));
                out.effects.push(react_request(req, FAILED));
            }
            Step::Counted => {
                let (have, need) = (req.approvals.len(), req.approvals_needed());
                out.log(
                    request_entry(Event::Approval, req, now)
                        .sender(user)
                        .status(Status::Pending)
                        .detail(approval_detail(
                            req,
                            json!({"approvals": have, "needed": need}),
                        )),
                );
                let (part, missing) = quorum_text(req);
                out.say(format!(
                    "👍 Approval {have} of {need} for request {} recorded from {user}{part}.{missing}",
                    req.id
                ));
            }
            Step::Approved if super::inquiry::is_inquiry(req) => {
                // A question a running action asked: the answer goes back to
                // it (it waits on the request's state); nothing runs here.
                out.log(
                    request_entry(Event::Approval, req, now)
                        .sender(user)
                        .status(Status::Approved)
                        .detail(json!({"answer": "yes"})),
                );
                out.say(format!(
                    "👍 {user} answered yes to StackStorm's question ({}).",
                    req.id
                ));
            }
            Step::Approved => {
                out.log(
                    request_entry(Event::Approval, req, now)
                        .sender(user)
                        .status(Status::Approved)
                        .detail(approval_detail(
                            req,
                            json!({
                                "approvals": req.approvals.len(), "needed": req.approvals_needed(),
                                "approvers": req.approvals.iter().map(|a| &a.user).collect::<Vec<_>>(),
                            }),
                        )),
                );
                // `!approve <id>` is not a reply to the prompt: answer it
                // directly (the ack goes to the command, as in st2).
                if m.reply_to.is_none() && !matches!(m.kind, Kind::Reaction(_)) {
                    out.say(format!(
                        "👍 Request {} approved by {user}; it runs now.",
                        req.id
                    ));
                }
                self.accept(out, req);
            }
        }
    }
}
