//! The request: its state machine and what it records. Pure: every
//! transition takes `now`; the store (`store::requests`) only persists
//! what these methods produce.
//!
//! ```text
//! preparing ──▶ pending ──approve×N──▶ approved ──▶ running ──▶ succeeded | failed
//!     │            │ deny / cancel / expiry                       │
//!     ▼            ▼                                               ▼
//!   failed     denied | cancelled | expired              interrupted (restart, shutdown)
//! ```
//!
//! [`Request`] owns the machine: each transition is a method that takes
//! `now` and refuses from a wrong state, so no caller can skip a step; a
//! request is made only by [`Request::asked`] (a chat command, from
//! `preparing`) or [`Request::question`] (a question an action asks,
//! straight to `pending`). The store applies a transition in a sled transaction on the stored record
//! ([`crate::requests::Requests::update`]), so two approvals racing each other cannot both
//! move a request to `approved`, and only one caller ever moves `approved`
//! to `running`. sled runs transactions one at a time, holding off every
//! other write meanwhile: a transition must stay a pure function of the
//! request, never touching a store itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alias::Params;

mod confirm;
pub use confirm::*;

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Allowed; its action is resolving what exactly will run (a git ref
    /// to a commit) off the event path. Where every request's life begins.
    #[default]
    Preparing,
    /// Waiting for approvals.
    Pending,
    /// Approved (or needing none); about to run.
    Approved,
    /// Its action is running.
    Running,
    /// Ran and succeeded.
    Succeeded,
    /// Ran and failed, or could not be prepared.
    Failed,
    /// An approver said no.
    Denied,
    /// The requester withdrew it.
    Cancelled,
    /// Not approved in time.
    Expired,
    /// airlock stopped while it was open; never re-run.
    Interrupted,
    /// The policy stopped it before it started (a change window closed or
    /// a freeze began after it was asked for or approved).
    Refused,
}

impl State {
    /// The lowercase name used in messages and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            State::Preparing => "preparing",
            State::Pending => "pending",
            State::Approved => "approved",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Denied => "denied",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
            State::Interrupted => "interrupted",
            State::Refused => "refused",
        }
    }

    /// Not yet in a final state.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            State::Preparing | State::Pending | State::Approved | State::Running
        )
    }
}

/// Why a transition was refused. The text completes "Cannot approve
/// request x: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request is not in a state this transition starts from.
    #[error("it is already {}", .0.name())]
    State(State),
    /// This approver's approval is already counted.
    #[error("you already approved it; it needs {0} more from someone else")]
    AlreadyApproved(u32),
    /// The parts of a quorum this approver belongs to are complete.
    #[error("your part of the quorum is complete; still needed: {0}")]
    PartComplete(String),
    /// A pending request whose time is not up cannot expire.
    #[error("it has not expired yet")]
    NotDue,
    /// Only break-glass runs are reviewed.
    #[error("it did not break glass, so there is nothing to review")]
    NotBreakGlass,
    /// Someone reviewed it already.
    #[error("{0} reviewed it already")]
    Reviewed(String),
    /// Whoever broke glass cannot review their own run.
    #[error("you ran it; someone else must review it")]
    OwnReview,
}

/// What an answer to a pending request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An approval was counted; more are needed.
    Counted,
    /// The last approval needed: the request is approved.
    Approved,
    /// Denied or cancelled: it will not run.
    Closed,
    /// Its time was up before the answer came: it expired instead.
    Expired,
}

/// One command on its way to execution: exactly what will run, who asked,
/// and who approved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// Six readable characters.
    pub id: String,
    /// Where it is in its life.
    pub state: State,
    /// Who asked.
    pub requester: String,
    /// Where.
    pub room: String,
    /// The command's event, for replies and status reactions.
    pub event_id: String,
    /// The thread it was asked in.
    pub thread: Option<String>,
    /// The command as matched.
    pub command: String,
    /// The alias (`pack.name`).
    pub alias: Option<String>,
    /// The action.
    pub action: String,
    /// Exactly what will run.
    pub params: Params,
    /// The parameters as asked, before preparation: what a new version of
    /// its action is prepared from again.
    #[serde(default)]
    pub asked: Params,
    /// What the parameters resolved to, as the prompt shows it.
    #[serde(default)]
    pub shown: Vec<String>,
    /// What the action planned when the request was prepared (opaque).
    #[serde(default)]
    pub plan: Value,
    /// Parameters the chat command set as trailing `key=value` pairs.
    #[serde(default)]
    pub set_in_chat: Vec<String>,
    /// The rule that allowed it.
    pub rule: String,
    /// The requester's power level in the room when they asked, for
    /// re-checking the policy before it starts.
    #[serde(default)]
    pub power_level: Option<i64>,
    /// When it was made (or prepared).
    pub created_ms: u64,
    /// Who must approve it; None: nobody.
    pub confirmation: Option<Confirmation>,
    /// Run without its confirmation on a reason (`--break-glass`).
    #[serde(default)]
    pub break_glass: Option<BreakGlass>,
    /// What its approvals are given against (pending requests).
    #[serde(default)]
    pub basis: Option<Basis>,
    /// The approvals so far.
    #[serde(default)]
    pub approvals: Vec<Approval>,
    /// The prompt's event, once sent.
    #[serde(default)]
    pub prompt_event: Option<String>,
    /// Who gave the deciding answer.
    #[serde(default)]
    pub decided_by: Option<String>,
    /// st2's `execution.result`.
    #[serde(default)]
    pub result: Option<Value>,
    /// One line on how it ended.
    #[serde(default)]
    pub summary: Option<String>,
    /// When it started running.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When it reached a final state.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// What it asks for again (`!redeploy`): the request, its end, when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<String>,
    /// What its rule's plan showed before the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_run: Option<PlanRun>,
}

/// A plan's run: what approvers were shown, and its digest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PlanRun {
    /// The action that ran.
    pub action: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its output (at most 64 KiB; `truncated` says if cut).
    pub output: String,
    /// Whether the output was cut.
    pub truncated: bool,
    /// SHA-256 of the whole output, hex: what the approvals are for.
    pub digest: String,
}

/// What `prepare` fixed when the request was made: exactly what will run.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The parameters, as the prompt lists them and the run receives them.
    pub params: Params,
    /// What they resolved to, one line each, shown under the parameters
    /// ("→ st2-flow at commit 5d1f0c… (main) from …").
    pub shown: Vec<String>,
    /// What the action itself needs at run time beyond the parameters (an
    /// install's pinned commits); opaque to the engine.
    pub plan: Value,
}

impl Prepared {
    /// Parameters that need no resolving.
    pub fn plain(params: Params) -> Self {
        Prepared {
            params,
            shown: Vec::new(),
            plan: Value::Null,
        }
    }
}

/// Who asked, where: what every request starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// A Matrix user ID.
    pub requester: String,
    /// The room ID.
    pub room: String,
    /// The event that asked.
    pub event_id: String,
    /// The thread it was asked in.
    pub thread: Option<String>,
    /// The requester's power level there, then.
    pub power_level: Option<i64>,
}

/// What a chat command asks to run ([`Request::asked`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// The command as matched.
    pub command: String,
    /// The alias (`pack.name`).
    pub alias: Option<String>,
    /// The action.
    pub action: String,
    /// The parameters as asked.
    pub asked: Params,
    /// What will run (the asked ones with the alias's fixed ones).
    pub params: Params,
    /// Parameters the command set as trailing `key=value` pairs.
    pub set_in_chat: Vec<String>,
    /// The rule that allowed it.
    pub rule: String,
}

impl Request {
    /// A chat command's request, in `preparing`: its action resolves
    /// what will run next ([`Request::prepared`]). The store gives its id.
    pub fn asked(
        origin: Origin,
        ask: Ask,
        confirmation: Option<Confirmation>,
        break_glass: Option<BreakGlass>,
        now: u64,
    ) -> Request {
        Request::new(
            State::Preparing,
            origin,
            ask,
            confirmation,
            break_glass,
            now,
        )
    }

    /// A question an action asks in chat (a StackStorm inquiry): nothing
    /// to prepare, so straight to `pending`, under `confirmation`.
    pub fn question(origin: Origin, ask: Ask, confirmation: Confirmation, now: u64) -> Request {
        Request::new(State::Pending, origin, ask, Some(confirmation), None, now)
    }

    fn new(
        state: State,
        origin: Origin,
        ask: Ask,
        confirmation: Option<Confirmation>,
        break_glass: Option<BreakGlass>,
        now: u64,
    ) -> Request {
        Request {
            id: String::new(),
            state,
            requester: origin.requester,
            room: origin.room,
            event_id: origin.event_id,
            thread: origin.thread,
            power_level: origin.power_level,
            command: ask.command,
            alias: ask.alias,
            action: ask.action,
            params: ask.params,
            asked: ask.asked,
            set_in_chat: ask.set_in_chat,
            rule: ask.rule,
            shown: Vec::new(),
            plan: Value::Null,
            created_ms: now,
            confirmation,
            break_glass,
            basis: None,
            approvals: Vec::new(),
            prompt_event: None,
            decided_by: None,
            result: None,
            summary: None,
            started_ms: None,
            finished_ms: None,
            repeats: None,
            plan_run: None,
        }
    }

    /// Mark it as asking again for what another request ran (`!redeploy`).
    pub fn repeating(mut self, note: Option<String>) -> Request {
        self.repeats = note;
        self
    }
    fn expect(&self, from: &[State]) -> Result<(), Refusal> {
        if from.contains(&self.state) {
            Ok(())
        } else {
            Err(Refusal::State(self.state))
        }
    }

    fn close(&mut self, state: State, now: u64) {
        self.state = state;
        self.finished_ms = Some(now);
    }

    fn due(&self, now: u64) -> bool {
        self.confirmation
            .as_ref()
            .is_some_and(|c| now >= c.expires_ms)
    }

    /// Preparation done: what will run is now fixed (`params`); the request
    /// waits for approvals, or is approved at once when it needs none. Its
    /// expiry counts from `now`.
    pub fn prepared(&mut self, prepared: Prepared, now: u64) -> Result<(), Refusal> {
        self.expect(&[State::Preparing])?;
        self.params = prepared.params;
        self.shown = prepared.shown;
        self.plan = prepared.plan;
        if let Some(c) = &mut self.confirmation {
            c.expires_ms = now + c.expires_ms.saturating_sub(self.created_ms);
        }
        self.created_ms = now;
        self.state = if self.confirmation.is_some() {
            State::Pending
        } else {
            State::Approved
        };
        Ok(())
    }

    /// Preparation failed: the request never runs.
    pub fn unprepared(&mut self, why: &str, now: u64) -> Result<(), Refusal> {
        self.expect(&[State::Preparing])?;
        self.summary = Some(why.to_string());
        self.close(State::Failed, now);
        Ok(())
    }

    /// `user`'s approval (who may approve is the engine's question).
    pub fn approve(&mut self, user: &str, now: u64) -> Result<Step, Refusal> {
        self.approve_from(user, (None, None), now)
    }

    /// `user`'s approval from `device` (its ID, and whether its owner had
    /// cross-signed it), as the request's record keeps it.
    pub fn approve_from(
        &mut self,
        user: &str,
        (device, cross_signed): (Option<String>, Option<bool>),
        now: u64,
    ) -> Result<Step, Refusal> {
        self.expect(&[State::Pending])?;
        if self.due(now) {
            self.close(State::Expired, now);
            return Ok(Step::Expired);
        }
        if self.approvals.iter().any(|a| a.user == user) {
            return Err(Refusal::AlreadyApproved(
                self.approvals_needed()
                    .saturating_sub(self.approvals.len() as u32),
            ));
        }
        if let Some(c) = self.confirmation.as_ref().filter(|c| !c.quorum.is_empty()) {
            let mut users: Vec<&str> = self.approvals.iter().map(|a| a.user.as_str()).collect();
            users.push(user);
            if c.assign(&users).last() == Some(&None) {
                return Err(Refusal::PartComplete(
                    c.missing(&users[..users.len() - 1]).join(" and "),
                ));
            }
        }
        self.approvals.push(Approval {
            user: user.to_string(),
            ts: now,
            device,
            cross_signed,
        });
        if self.approvals.len() as u32 >= self.approvals_needed() {
            self.state = State::Approved;
            self.decided_by = Some(user.to_string());
            Ok(Step::Approved)
        } else {
            Ok(Step::Counted)
        }
    }

    /// `user` says no.
    pub fn deny(&mut self, user: &str, now: u64) -> Result<Step, Refusal> {
        self.answer(State::Denied, user, now)
    }

    /// The requester withdraws it.
    pub fn cancel(&mut self, user: &str, now: u64) -> Result<Step, Refusal> {
        self.answer(State::Cancelled, user, now)
    }

    fn answer(&mut self, to: State, user: &str, now: u64) -> Result<Step, Refusal> {
        self.expect(&[State::Pending])?;
        if self.due(now) {
            self.close(State::Expired, now);
            return Ok(Step::Expired);
        }
        self.decided_by = Some(user.to_string());
        self.close(to, now);
        Ok(Step::Closed)
    }

    /// Its time is up with approvals missing.
    pub fn expire(&mut self, now: u64) -> Result<(), Refusal> {
        self.expect(&[State::Pending])?;
        if !self.due(now) {
            return Err(Refusal::NotDue);
        }
        self.close(State::Expired, now);
        Ok(())
    }

    /// Approved and waiting for its lock, `user` withdrew it.
    pub fn cancel_waiting(&mut self, user: &str, now: u64) -> Result<(), Refusal> {
        self.expect(&[State::Approved])?;
        self.decided_by = Some(user.to_string());
        self.close(State::Cancelled, now);
        Ok(())
    }

    /// Approved, it waited for its lock longer than its rule's
    /// `queue_timeout`: it will not run.
    pub fn expire_waiting(&mut self, why: &str, now: u64) -> Result<(), Refusal> {
        self.expect(&[State::Approved])?;
        self.summary = Some(why.to_string());
        self.close(State::Expired, now);
        Ok(())
    }

    /// The policy no longer lets it start (see `Policy::gate`), or no
    /// longer allows it at all.
    pub fn refuse(&mut self, why: &str, now: u64) -> Result<(), Refusal> {
        self.expect(&[State::Pending, State::Approved])?;
        self.summary = Some(why.to_string());
        self.close(State::Refused, now);
        Ok(())
    }

    /// What its approvals were given against changed: they no longer
    /// count, and it needs `confirmation` against `basis` (and, when its
    /// action has a new version, runs what that prepared). Returns the
    /// approvals dropped.
    pub fn reconfirm(
        &mut self,
        confirmation: Confirmation,
        basis: Basis,
        prepared: Option<Prepared>,
    ) -> Result<Vec<Approval>, Refusal> {
        self.expect(&[State::Pending])?;
        if let Some(p) = prepared {
            self.params = p.params;
            self.shown = p.shown;
            self.plan = p.plan;
        }
        self.confirmation = Some(confirmation);
        self.basis = Some(basis);
        Ok(std::mem::take(&mut self.approvals))
    }

    /// `user` reviewed this break-glass run (not its requester; once).
    pub fn review(&mut self, user: &str, now: u64) -> Result<(), Refusal> {
        let requester = self.requester.clone();
        let glass = self.break_glass.as_mut().ok_or(Refusal::NotBreakGlass)?;
        if let Some(by) = &glass.reviewed_by {
            return Err(Refusal::Reviewed(by.clone()));
        }
        if user == requester {
            return Err(Refusal::OwnReview);
        }
        glass.reviewed_by = Some(user.to_string());
        glass.reviewed_ms = Some(now);
        Ok(())
    }

    /// The action starts (exactly once: only from `approved`).
    pub fn start(&mut self, now: u64) -> Result<(), Refusal> {
        self.expect(&[State::Approved])?;
        self.state = State::Running;
        self.started_ms = Some(now);
        Ok(())
    }

    /// The action ended: `succeeded`, `failed` or `interrupted`.
    pub fn finish(
        &mut self,
        to: State,
        result: Value,
        summary: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        self.expect(&[State::Running])?;
        debug_assert!(matches!(
            to,
            State::Succeeded | State::Failed | State::Interrupted | State::Cancelled
        ));
        self.result = Some(result);
        self.summary = Some(summary.to_string());
        self.close(to, now);
        Ok(())
    }

    /// airlock stopped while the request was open in one of `from`;
    /// returns the state it was in.
    pub fn interrupt(&mut self, from: &[State], now: u64) -> Result<State, Refusal> {
        self.expect(from)?;
        let was = self.state;
        self.close(State::Interrupted, now);
        Ok(was)
    }

    /// How many approvals it needs in all.
    pub fn approvals_needed(&self) -> u32 {
        self.confirmation.as_ref().map_or(0, |c| c.approvals)
    }

    /// Time left to approve it.
    pub fn expires_in(&self, now_ms: u64) -> Option<Duration> {
        self.confirmation
            .as_ref()
            .map(|c| Duration::from_millis(c.expires_ms.saturating_sub(now_ms)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn request(approvals: u32) -> Request {
        let mut r = Request::asked(
            Origin {
                requester: "@alice:example.org".into(),
                room: "!ops".into(),
                event_id: "$cmd".into(),
                thread: None,
                power_level: None,
            },
            Ask {
                command: "flow deploy main".into(),
                alias: Some("st2-flow.flow_deploy".into()),
                action: "packs.install".into(),
                asked: Params::new(),
                params: Params::new(),
                set_in_chat: Vec::new(),
                rule: "r".into(),
            },
            (approvals > 0).then(|| Confirmation {
                approvers: Vec::new(),
                approvers_text: "anyone".into(),
                approvals,
                self_approve: false,
                expires_ms: 1_000 + 600_000,
                quorum: Vec::new(),
                verified_devices: false,
            }),
            None,
            1_000,
        );
        r.id = "abc234".into();
        r
    }

    #[test]
    fn a_deploy_goes_from_preparing_to_succeeded() {
        let mut r = request(2);
        assert_eq!(
            r.approve("@bob", 2_000),
            Err(Refusal::State(State::Preparing))
        );
        r.prepared(Prepared::plain(Params::new()), 5_000).unwrap();
        assert_eq!(r.state, State::Pending);
        // The expiry counts from when the prompt can be shown.
        assert_eq!(r.confirmation.as_ref().unwrap().expires_ms, 605_000);
        assert_eq!(r.start(5_000), Err(Refusal::State(State::Pending)));
        assert_eq!(r.approve("@bob", 6_000), Ok(Step::Counted));
        assert_eq!(r.approve("@bob", 6_001), Err(Refusal::AlreadyApproved(1)));
        assert_eq!(r.approve("@carol", 7_000), Ok(Step::Approved));
        assert_eq!(r.decided_by.as_deref(), Some("@carol"));
        r.start(8_000).unwrap();
        // Exactly once: a second start is refused.
        assert_eq!(r.start(8_001), Err(Refusal::State(State::Running)));
        r.finish(State::Succeeded, Value::Null, "ok", 9_000)
            .unwrap();
        assert_eq!((r.state, r.finished_ms), (State::Succeeded, Some(9_000)));
        assert_eq!(
            r.finish(State::Failed, Value::Null, "x", 9_001),
            Err(Refusal::State(State::Succeeded))
        );
    }

    #[test]
    fn a_request_needing_no_approval_is_approved_when_prepared() {
        let mut r = request(0);
        r.prepared(Prepared::plain(Params::new()), 2_000).unwrap();
        assert_eq!(r.state, State::Approved);
    }

    #[test]
    fn answers_after_the_expiry_expire_it_instead() {
        let mut r = request(1);
        r.prepared(Prepared::plain(Params::new()), 1_000).unwrap();
        assert_eq!(r.expire(600_999), Err(Refusal::NotDue));
        assert_eq!(r.approve("@bob", 601_000), Ok(Step::Expired));
        assert_eq!(r.state, State::Expired);
        let mut r = request(1);
        r.prepared(Prepared::plain(Params::new()), 1_000).unwrap();
        assert_eq!(r.deny("@bob", 700_000), Ok(Step::Expired));
        let mut r = request(1);
        r.prepared(Prepared::plain(Params::new()), 1_000).unwrap();
        r.expire(601_000).unwrap();
        assert_eq!(
            r.cancel("@alice", 601_001),
            Err(Refusal::State(State::Expired))
        );
    }

    #[test]
    fn deny_cancel_and_interrupt_close_it() {
        let mut r = request(1);
        r.prepared(Prepared::plain(Params::new()), 1_000).unwrap();
        assert_eq!(r.deny("@bob", 2_000), Ok(Step::Closed));
        assert_eq!(
            (r.state, r.decided_by.as_deref()),
            (State::Denied, Some("@bob"))
        );
        let mut r = request(1);
        r.prepared(Prepared::plain(Params::new()), 1_000).unwrap();
        assert_eq!(r.cancel("@alice", 2_000), Ok(Step::Closed));
        assert_eq!(r.state, State::Cancelled);
        let mut r = request(0);
        assert_eq!(
            r.interrupt(&[State::Running], 1),
            Err(Refusal::State(State::Preparing))
        );
        assert_eq!(r.interrupt(&[State::Preparing], 2), Ok(State::Preparing));
        assert!(!r.state.is_open());
        let mut r = request(1);
        r.unprepared("no such commit", 3).unwrap();
        assert_eq!(
            (r.state, r.summary.as_deref()),
            (State::Failed, Some("no such commit"))
        );
    }

    #[test]
    fn a_quorum_counts_each_person_once_for_one_part() {
        let pending = |n| {
            let mut r = request(n);
            r.prepared(Prepared::plain(Params::new()), 1_000).unwrap();
            r
        };
        let mut r = pending(2);
        let part = |globs: &[&str], text: &str| QuorumPart {
            approvers: globs.iter().map(|g| g.to_string()).collect(),
            text: text.into(),
            approvals: 1,
        };
        // bob is in both teams, carol only in ops, dave only in security.
        r.confirmation.as_mut().unwrap().quorum = vec![
            part(&["@bob:x", "@carol:x"], "group ops"),
            part(&["@bob:x", "@dave:x"], "group security"),
        ];
        assert_eq!(r.approve("@bob:x", 2_000), Ok(Step::Counted));
        // carol takes ops; bob moves to security: both count.
        assert_eq!(r.approve("@carol:x", 2_000), Ok(Step::Approved));
        let mut r2 = pending(2);
        r2.confirmation = r.confirmation.clone();
        assert_eq!(r2.approve("@carol:x", 2_000), Ok(Step::Counted));
        // A second ops member adds nothing: refused, saying what is missing.
        r2.confirmation.as_mut().unwrap().quorum[0]
            .approvers
            .push("@erin:x".into());
        assert_eq!(
            r2.approve("@erin:x", 2_000),
            Err(Refusal::PartComplete("1 from group security".into()))
        );
        assert_eq!(r2.approve("@dave:x", 2_000), Ok(Step::Approved));
    }
}
