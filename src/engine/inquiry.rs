//! Questions a running action puts to people (StackStorm's `core.ask`):
//! each becomes a request of its own, prompted in the room its request
//! came from and answered by reply under the same approver rules. The
//! action waits for the answer on its own thread; the prompt goes out
//! through the engine's outbox, which `tick` empties. A question still
//! open when airlock stops stays open: the next start, following the
//! same workflow, waits on that prompt instead of asking again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::{Effect, Outgoing, request_entry};
use crate::audit::{AuditLog, Event};
use crate::clock;
use crate::metrics::Metrics;
use crate::render::Message;
use crate::requests::{Ask, Confirmation, Origin, Request, Requests, State};

/// The action name an inquiry's request carries: never run, only answered.
pub const INQUIRY: &str = "st2.inquiry";

/// How long a question waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(3600);

/// What a running request's action asks through: its stores, the outbox,
/// and the request it runs for.
pub(super) struct Inquirer {
    pub requests: Requests,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub outbox: Arc<Mutex<Vec<Effect>>>,
    pub prefix: String,
    pub parent: Request,
    /// The engine's clock.
    pub clock: super::Clock,
    /// Set when airlock stops: the wait ends, the question stays open.
    pub stopping: Arc<AtomicBool>,
}

impl Inquirer {
    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn record(&self, entry: crate::audit::Entry) {
        match self.audit.append(vec![entry]) {
            Ok(written) => written.iter().for_each(|e| self.metrics.observe(e)),
            Err(e) => tracing::error!("audit log write failed: {e}"),
        }
    }

    /// Ask `question`; block until it is answered (see `RunContext::ask`),
    /// or until airlock stops (None).
    pub fn ask(&self, question: &str) -> Option<bool> {
        let id = match self.open_question(question) {
            Some(id) => id,
            None => self.put(question)?,
        };
        self.answer_to(&id)
    }

    /// The question `question` this request's action asked before airlock
    /// last stopped, still unanswered: the workflow now asking is the same
    /// one, re-attached, and its prompt is already in the room.
    fn open_question(&self, question: &str) -> Option<String> {
        let open = self.requests.open_requests().ok()?;
        let (parent, question) = (json!(self.parent.id), json!(question));
        open.into_iter()
            .find(|r| {
                is_inquiry(r)
                    && r.params.get("request") == Some(&parent)
                    && r.params.get("question") == Some(&question)
            })
            .map(|r| r.id)
    }

    /// Store `question` as a request of its own and prompt it; its id.
    fn put(&self, question: &str) -> Option<String> {
        let p = &self.parent;
        let now = self.now();
        // The approvers of the request it runs for; with none, anyone
        // allowed to run it here but the requester.
        let confirmation = Confirmation {
            expires_ms: now + ANSWER_WITHIN.as_millis() as u64,
            ..p.confirmation.clone().unwrap_or(Confirmation {
                approvers: Vec::new(),
                approvers_text: "anyone allowed to run it here".into(),
                approvals: 1,
                self_approve: false,
                expires_ms: 0,
                quorum: Vec::new(),
                verified_devices: false,
            })
        };
        let req = Request::question(
            Origin {
                requester: p.requester.clone(),
                room: p.room.clone(),
                event_id: p.event_id.clone(),
                thread: p.thread.clone(),
                power_level: p.power_level,
            },
            Ask {
                command: format!("StackStorm asks: {question}"),
                alias: p.alias.clone(),
                action: INQUIRY.into(),
                asked: Default::default(),
                params: json!({"question": question, "request": p.id})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                set_in_chat: Vec::new(),
                rule: p.rule.clone(),
            },
            confirmation,
            now,
        );
        let req = match self.requests.create(req) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot store StackStorm's question for {}: {e}", p.id);
                return None;
            }
        };
        let c = req.confirmation.as_ref().expect("set above");
        self.record(
            request_entry(Event::ConfirmationRequested, &req, now).detail(json!({
                "question": question, "for": p.id, "approvers": c.approvers_text,
            })),
        );
        let who = if c.self_approve {
            c.approvers_text.clone()
        } else {
            format!("{} — not the requester", c.approvers_text)
        };
        let text = format!(
            "❓ StackStorm asks, for request {} ({}): {question}\nAnswer {id}: needs 1 answer from {who}. Reply \"yes\" or \"no\" to this message (or {p}approve {id} / {p}deny {id}). Expires in {} (at {}).",
            p.id,
            p.alias.as_deref().unwrap_or(&p.action),
            clock::human(ANSWER_WITHIN),
            clock::format_ms(c.expires_ms),
            id = req.id,
            p = self.prefix,
        );
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Effect::Send(Outgoing {
                room: req.room.clone(),
                reply_to: Some(req.event_id.clone()),
                thread: req.thread.clone(),
                message: Message::plain(text),
                prompt_for: Some(req.id.clone()),
            }));
        Some(req.id)
    }

    /// Wait for request `id`'s answer: woken by each write of it (an
    /// answer, an expiry, the touch `begin_shutdown` gives it), never by
    /// a timer but the question's own deadline.
    fn answer_to(&self, id: &str) -> Option<bool> {
        // Watched before it is read: a write between the two still wakes.
        let mut watch = self.requests.watch(id);
        let mut first = true;
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return None;
            }
            if !first {
                watch.wait(ANSWER_WITHIN);
            }
            first = false;
            let state = match self.requests.get(id) {
                Ok(Some(r)) => r.state,
                _ => return None,
            };
            match state {
                State::Pending => {}
                State::Approved => {
                    // Answered: the question's request ends here.
                    let now = self.now();
                    let _ = self.requests.update(id, |r| {
                        r.start(now)?;
                        r.finish(
                            State::Succeeded,
                            json!({"answer": true}),
                            "answered yes",
                            now,
                        )
                    });
                    return Some(true);
                }
                State::Denied => return Some(false),
                _ => return None,
            }
        }
    }
}

/// Whether `req` is a question an action asked (answered, never run).
pub(super) fn is_inquiry(req: &Request) -> bool {
    req.action == INQUIRY
}
