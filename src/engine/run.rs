//! Running approved requests, expiring pending ones, settling what a
//! previous process left open, shutting down.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::{
    Effect, Engine, FAILED, Outgoing, react_request, reply_to_request, request_entry,
    request_subject, request_target,
};
use crate::action::executor::{Followed, Job};
use crate::action::{Action, Outcome, Status as RunStatus};
use crate::audit::{Event, Query, Status};
use crate::render::{self, Message};
use crate::requests::{Request, State, Update};

use super::outcome::{Ending, end_reaction, execution_view, outcome_detail};

impl Engine {
    /// Run an approved request; blocks for as long as the action runs, so
    /// transports call it off their event loop. `now` is the transport's
    /// clock, read when the run starts and when it ends. A request that is
    /// not `approved` (already running, or run) is left alone: exactly once.
    pub fn execute(&self, id: &str, now: impl Fn() -> u64) -> Vec<Effect> {
        let span = tracing::info_span!(
            "request",
            request = %id,
            room = tracing::field::Empty,
            sender = tracing::field::Empty
        )
        .entered();
        let started = now();
        // Shutting down: nothing new starts. A request waiting for its
        // lock keeps its place, and the next start runs it.
        if self.cancel.load(Ordering::Relaxed) {
            return Vec::new();
        }
        if let Some(refused) = self.refuse_to_start(id, started) {
            return refused;
        }
        // Its lock first: held, or it waits in the lock's queue (and is
        // started when the run ahead of it ends).
        if let Ok(Some(waiting)) = self.requests.get(id)
            && waiting.state == State::Approved
            && let Err(fx) = self.claim_lock(&waiting, started)
        {
            return fx;
        }
        let req = match self.requests.update(id, |r| r.start(started)) {
            Ok(Update::Done(r, ())) => r,
            Ok(Update::Refused(_, why)) => {
                tracing::debug!("not executing {id}: {why}");
                return Vec::new();
            }
            Err(e) => {
                tracing::error!("cannot execute {id}: {e}");
                return Vec::new();
            }
        };
        if !self.record(vec![
            request_entry(Event::Started, &req, started)
                .status(Status::Running)
                .detail(json!({"parameters": req.params, "executor": self.executor.name()})),
        ]) {
            let _ = self.requests.update(id, |r| {
                r.finish(State::Failed, Value::Null, "audit log unavailable", started)
            });
            let mut fx = vec![Effect::Send(reply_to_request(
                &req,
                Message::plain("⚠️ The audit log cannot be written, so the request did not run."),
            ))];
            fx.extend(self.release_lock(&req, started));
            return fx;
        }
        span.record("room", req.room.as_str());
        span.record("sender", req.requester.as_str());
        crate::crash::point("action_started");
        let Some(action) = self.action(&req.action) else {
            let outcome =
                Outcome::failed(format!("action {} is not available in airlock", req.action));
            return self.complete(req, outcome, Ending::Ran, started, now(), None);
        };
        let action_elsewhere = action.continues_elsewhere();
        let job = self.job(&req, action, started);
        let followed = match self.executor.submit(job) {
            Ok(()) => self.executor.follow(&req.id),
            Err(e) => Followed {
                outcome: Outcome::failed(e.to_string()),
                cancelled_by: None,
            },
        };
        if self.cancel.load(Ordering::Relaxed) && action_elsewhere {
            // Shut down while it runs elsewhere: not ended, only no longer
            // followed. The next start re-attaches.
            return Vec::new();
        }
        let outcome = followed.outcome;
        let ending = match followed.cancelled_by {
            Some(user) if outcome.status == RunStatus::Failed => Ending::CancelledBy(user),
            _ if self.cancel.load(Ordering::Relaxed) && outcome.status == RunStatus::Failed => {
                Ending::Interrupted
            }
            _ => Ending::Ran,
        };
        self.complete(req, outcome, ending, started, now(), None)
    }

    /// An approved request whose rule's change window has closed, or that a
    /// freeze now covers, does not start: it ends `refused`, and the room
    /// is told why and when it opens. None: it may start.
    fn refuse_to_start(&self, id: &str, now: u64) -> Option<Vec<Effect>> {
        let req = self.requests.get(id).ok()??;
        if req.state != State::Approved {
            return None;
        }
        let who = request_subject(&req, now);
        let why = self
            .policy()
            .gate(&who, &request_target(&req), &req.rule)
            .err()?;
        let req = match self.requests.update(id, |r| r.refuse(&why, now)) {
            Ok(Update::Done(r, ())) => r,
            _ => return None,
        };
        self.record(vec![
            request_entry(Event::Denied, &req, now)
                .rule(Some(&req.rule))
                .status(Status::Denied)
                .detail(json!({"reason": why, "when": "at start"})),
        ]);
        let mut fx = vec![
            Effect::Send(reply_to_request(
                &req,
                Message::plain(format!(
                    "🚫 Request {} will not start: {why}. Ask again then.",
                    req.id
                )),
            )),
            react_request(&req, FAILED),
        ];
        fx.extend(self.release_lock(&req, now));
        Some(fx)
    }

    /// Follow request `id`'s run, which went on elsewhere (StackStorm)
    /// while airlock was down, to its end, and report it once; blocks like
    /// [`Self::execute`].
    pub fn resume(&self, id: &str, now: impl Fn() -> u64) -> Vec<Effect> {
        let Ok(Some(req)) = self.requests.get(id) else {
            return Vec::new();
        };
        let Some(action) = self
            .action(&req.action)
            .filter(|_| req.state == State::Running)
        else {
            return Vec::new();
        };
        let started = req.started_ms.unwrap_or(req.created_ms);
        let mut job = self.job(&req, action, started);
        job.resume = true;
        let followed = match self.executor.submit(job) {
            Ok(()) => self.executor.follow(&req.id),
            Err(e) => Followed {
                outcome: Outcome::failed(e.to_string()),
                cancelled_by: None,
            },
        };
        if self.cancel.load(Ordering::Relaxed) {
            return Vec::new(); // shut down again: the next start re-attaches
        }
        let ending = match followed.cancelled_by {
            Some(user) if followed.outcome.status == RunStatus::Failed => Ending::CancelledBy(user),
            _ => Ending::Ran,
        };
        let text = format!(
            "♻️ airlock restarted while request {} ({}) was running on {}; re-attached, not run again.",
            req.id,
            req.alias.as_deref().unwrap_or(&req.action),
            followed
                .outcome
                .remote
                .as_ref()
                .map_or("another engine", |r| r.place.as_str()),
        );
        self.complete(req, followed.outcome, ending, started, now(), Some(text))
    }

    /// What the executor gets for `req`.
    fn job(&self, req: &Request, action: Arc<dyn Action>, started: u64) -> Job {
        Job {
            request_id: req.id.clone(),
            requester: req.requester.clone(),
            approvers: req.approvals.iter().map(|a| a.user.clone()).collect(),
            action,
            params: req.params.clone(),
            plan: req.plan.clone(),
            started,
            resume: false,
            ask: {
                let inquirer = super::inquiry::Inquirer {
                    requests: self.requests.clone(),
                    audit: self.audit.clone(),
                    metrics: self.metrics.clone(),
                    outbox: self.outbox.clone(),
                    prefix: self.settings.prefix.clone(),
                    parent: req.clone(),
                    clock: self.clock.clone(),
                    stopping: self.cancel.clone(),
                };
                Arc::new(move |q: &str| inquirer.ask(q))
            },
        }
    }

    /// Stop the running request `id` on behalf of `user`: its action is
    /// told to stop (a process group gets SIGTERM, then SIGKILL). False if
    /// it is not running here.
    pub(super) fn stop_running(&self, id: &str, user: &str) -> bool {
        self.executor.cancel(id, user)
    }

    /// For `!status`: how long request `id` has been running (ms, by
    /// `now`) and the last lines it printed.
    pub(super) fn running_view(&self, id: &str, now: u64) -> Option<(u64, Vec<String>)> {
        self.executor
            .progress(id)
            .map(|p| (now.saturating_sub(p.started), p.lines))
    }

    /// Record how a run ended (request state, `finished` or `interrupted`
    /// entry), reload aliases if packs changed, and render the result.
    /// `recovered` says, for a run the last process died in, what to tell
    /// the room first.
    fn complete(
        &self,
        req: Request,
        outcome: Outcome,
        ending: Ending,
        started: u64,
        finished: u64,
        recovered: Option<String>,
    ) -> Vec<Effect> {
        // Resolve the alias before reloading: an uninstall may remove it.
        let alias = req
            .alias
            .as_deref()
            .and_then(|a| self.aliases().get(a).cloned());
        // A wall clock that stepped back gives 0, not a panic.
        let elapsed_ms = finished.saturating_sub(started);
        let state = match (&ending, outcome.status) {
            (Ending::Interrupted, _) => State::Interrupted,
            (Ending::CancelledBy(_), _) => State::Cancelled,
            (Ending::Ran, RunStatus::Succeeded) => State::Succeeded,
            (Ending::Ran, RunStatus::Failed) => State::Failed,
        };
        let interrupted = ending == Ending::Interrupted;
        let mut outcome = outcome;
        if let Ending::CancelledBy(user) = &ending {
            outcome.summary = format!("cancelled by {user} while running: {}", outcome.summary);
        }
        let detail = outcome_detail(&req, &outcome, &ending, elapsed_ms, recovered.is_some());
        let event = if interrupted {
            Event::Interrupted
        } else {
            Event::Finished
        };
        // The outcome reaches the audit log (flushed) before the request's
        // final state: sled may write a later change on its own before an
        // explicit flush, and a final state without its audit entry would
        // never be recovered. A request found running with a final entry
        // is settled from the entry at start.
        self.record(vec![
            request_entry(event, &req, finished)
                .status(state)
                .detail(detail),
        ]);
        crate::crash::point("outcome_recorded");
        let req = match self.requests.update(&req.id, |r| {
            r.finish(state, outcome.result.clone(), &outcome.summary, finished)
        }) {
            Ok(Update::Done(r, ())) => r,
            _ => req,
        };
        // Not flushed: if a crash loses this state, the request is found
        // running with its `finished` entry, and settled from the entry
        // at start (`settle_recorded`). One fsync fewer per run.
        // The audit now holds the outcome; the action's recovery notes may go.
        if let Some(action) = self.action(&req.action) {
            action.settled(&req.id);
        }
        let mut fx = Vec::new();
        if outcome.packs_changed {
            self.reload_aliases();
            fx.extend(self.recheck_pending(finished));
        }
        // st2's status for a run stopped by `!cancel` is `canceled`.
        let status = if state == State::Cancelled {
            "canceled"
        } else {
            outcome.status.name()
        };
        let page = self.web_page(&req.id);
        let execution =
            execution_view(&req, &outcome, status, (started, finished), page.as_deref());
        if let Some(text) = recovered {
            fx.push(Effect::Send(reply_to_request(&req, Message::plain(text))));
        }
        // Handed elsewhere (StackStorm) but never run there: the alias's
        // result template knows nothing of why, so the room is told.
        let handed_off = self
            .action(&req.action)
            .is_some_and(|a| a.continues_elsewhere());
        if handed_off && outcome.remote.is_none() && state == State::Failed {
            fx.push(Effect::Send(reply_to_request(
                &req,
                Message::plain(format!(
                    "⚠️ Request {} did not run: {}",
                    req.id, outcome.summary
                )),
            )));
        }
        if let Some(text) = result_text(alias.as_deref(), &execution, page) {
            fx.push(Effect::Send(reply_to_request(
                &req,
                Message::from_template_output(&text),
            )));
        }
        fx.push(react_request(&req, end_reaction(state)));
        // Its lock goes to the next in the queue.
        fx.extend(self.release_lock(&req, finished));
        fx
    }

    /// A request found running whose outcome the audit log already holds
    /// (the process died between the two writes): its final state is taken
    /// from that entry, and the room is told.
    fn settle_recorded(&self, req: &Request, now: u64) -> Option<Vec<Effect>> {
        let q = Query {
            request: Some(req.id.clone()),
            limit: None,
            ..Default::default()
        };
        let entry = self
            .audit
            .query(&q)
            .ok()?
            .into_iter()
            .rev()
            .find(|e| matches!(e.event, Event::Finished | Event::Interrupted))?;
        let state = match entry.status {
            Some(Status::Succeeded) => State::Succeeded,
            Some(Status::Interrupted) => State::Interrupted,
            Some(Status::Cancelled) => State::Cancelled,
            _ => State::Failed,
        };
        let summary: String = entry.detail_field("summary").unwrap_or_default();
        let result: Value = entry.detail_field("result").unwrap_or(Value::Null);
        let _ = self
            .requests
            .update(&req.id, |r| r.finish(state, result.clone(), &summary, now));
        if let Some(action) = self.action(&req.action) {
            action.settled(&req.id);
        }
        let mut fx = vec![
            Effect::Send(reply_to_request(
                req,
                Message::plain(format!(
                    "♻️ Request {} ({}) {} just before airlock stopped: {summary}.",
                    req.id,
                    req.alias.as_deref().unwrap_or(&req.action),
                    state.name()
                )),
            )),
            react_request(req, end_reaction(state)),
        ];
        fx.extend(self.release_lock(req, now));
        Some(fx)
    }

    /// A request the last process died running: finished from what its
    /// action made durable (a pack switch that happened), else None.
    fn recover_run(&self, req: &Request, now: u64) -> Option<Vec<Effect>> {
        let action = self.action(&req.action)?;
        let started = req.started_ms.unwrap_or(req.created_ms);
        let outcome = self.executor.reattach(&self.job(req, action, started))?;
        let text = format!(
            "♻️ airlock stopped while request {} ({}) was running, after its change had taken effect; recorded as {}: {}.",
            req.id,
            req.alias.as_deref().unwrap_or(&req.action),
            outcome.status.name(),
            outcome.summary
        );
        Some(self.complete(req.clone(), outcome, Ending::Ran, started, now, Some(text)))
    }

    /// Expire pending requests whose time is up; announce each in its room.
    pub fn tick(&self, now: u64) -> Vec<Effect> {
        let mut fx: Vec<Effect> =
            std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        // Under the disk's reserve, writing waits (sealing, expiry, the
        // removal of old requests) until space returns.
        if let Some(why) = self.disk_low() {
            tracing::warn!("{why}: sealing and expiry wait");
            return fx;
        }
        fx.extend(self.checkpoint(now, false));
        fx.extend(self.seal(now));
        let keep = u64::try_from(self.settings.keep_requests.as_millis()).unwrap_or(u64::MAX);
        match self.requests.prune(now.saturating_sub(keep)) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(
                    requests = gone.len(),
                    "closed requests left the store after requests.keep; the audit log answers for them"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("removing old requests: {e} (tried again at the next tick)"),
        }
        let Ok(open) = self.requests.open_requests() else {
            return fx;
        };
        let mut entries = Vec::new();
        for r in open.iter().filter(|r| r.state == State::Pending) {
            let Ok(Update::Done(req, ())) = self.requests.update(&r.id, |r| r.expire(now)) else {
                continue;
            };
            entries.push(
                request_entry(Event::Expired, &req, now)
                    .status(Status::Expired)
                    .detail(json!({
                        "approvals": req.approvals.len(), "needed": req.approvals_needed(),
                    })),
            );
            fx.push(Effect::Send(Outgoing {
                room: req.room.clone(),
                reply_to: req
                    .prompt_event
                    .clone()
                    .or_else(|| Some(req.event_id.clone())),
                thread: req.thread.clone(),
                message: Message::plain(format!(
                    "⌛ Request {} ({}) expired with {} of {} approvals; it will not run.",
                    req.id,
                    req.alias.as_deref().unwrap_or(&req.action),
                    req.approvals.len(),
                    req.approvals_needed()
                )),
                prompt_for: None,
            }));
            fx.push(react_request(&req, FAILED));
        }
        self.record(entries);
        fx.extend(self.tick_locks(now));
        self.notify_overdue(now);
        fx
    }

    /// The transport sent the prompt for `request` as `event_id`.
    pub fn bind_prompt(&self, request: &str, room: &str, event_id: &str) {
        if let Err(e) = self.requests.bind_prompt(request, room, event_id) {
            tracing::error!("cannot remember the prompt of {request}: {e}");
        }
    }

    /// Ask running actions to stop at their next safe point.
    pub fn begin_shutdown(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.executor.shutdown();
        // A question an action waits on ends its wait now: its request is
        // written (unchanged), which wakes the waiter to see the shutdown.
        for r in self.requests.open_requests().unwrap_or_default() {
            if super::inquiry::is_inquiry(&r) {
                let _ = self.requests.touch(&r.id);
            }
        }
    }

    /// Requests still running when the process must exit: marked
    /// interrupted in the audit log (they are not re-run on restart).
    /// Final states are stored here (runs do not flush them).
    pub fn interrupt_running(&self, now: u64) {
        // Runs that go on elsewhere stay running: the next start follows
        // them again.
        let elsewhere: Vec<String> = self
            .requests
            .open_requests()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                self.action(&r.action)
                    .is_some_and(|a| a.continues_elsewhere())
            })
            .map(|r| r.id)
            .collect();
        self.interrupt(
            &[State::Running],
            "airlock was shut down while it ran",
            &elsewhere,
            now,
        );
        if let Err(e) = self.requests.flush() {
            tracing::error!("cannot store the requests' final states: {e}");
        }
    }

    /// Settle what the previous process left open. A request it died
    /// running is finished from what its action made durable (a pack
    /// switch that happened is a deploy that happened); otherwise it, and
    /// any approved or still preparing, is marked interrupted, never
    /// silently re-run. A pending request whose prompt may never have been
    /// sent gets it sent again. The room is told each time.
    pub(super) fn recover(&self, now: u64) {
        let open = self.requests.open_requests().unwrap_or_default();
        let mut startup = Vec::new();
        // Runs that went on elsewhere are re-attached, not interrupted.
        let mut resumed = Vec::new();
        for req in open.iter().filter(|r| r.state == State::Running) {
            if let Some(fx) = self.settle_recorded(req, now) {
                startup.extend(fx);
            } else if self
                .action(&req.action)
                .is_some_and(|a| a.continues_elsewhere())
            {
                resumed.push(req.id.clone());
                startup.push(Effect::Resume(req.id.clone()));
            } else if let Some(fx) = self.recover_run(req, now) {
                startup.extend(fx);
            }
        }
        for req in open
            .iter()
            .filter(|r| r.state == State::Pending && r.prompt_event.is_none())
        {
            startup.push(Effect::Send(Outgoing {
                room: req.room.clone(),
                reply_to: Some(req.event_id.clone()),
                thread: req.thread.clone(),
                message: self.prompt(req, now),
                prompt_for: Some(req.id.clone()),
            }));
        }
        // Requests waiting in a lock's queue wait on: the queue is as it
        // was, and each starts when its turn comes (the next tick).
        let mut keep = resumed;
        keep.extend(
            self.requests
                .locks()
                .all_waiting()
                .unwrap_or_default()
                .into_iter()
                .map(|(id, _)| id),
        );
        for (req, was) in self.interrupt(
            &[State::Running, State::Approved, State::Preparing],
            "airlock stopped before it finished; not re-run",
            &keep,
            now,
        ) {
            startup.push(Effect::Send(reply_to_request(
                &req,
                Message::plain(format!(
                    "⚠️ Request {} ({}) was {} when airlock stopped. It was not re-run; ask again if it is still needed.",
                    req.id,
                    req.alias.as_deref().unwrap_or(&req.action),
                    was.name()
                )),
            )));
            startup.push(react_request(&req, FAILED));
        }
        // A lock whose run ended just before the stop is released, and
        // the queue it held back moves on.
        startup.extend(self.settle_locks(now));
        // What was settled without an audit entry of its own is made
        // durable here.
        if let Err(e) = self.requests.flush() {
            tracing::error!("cannot store the settled requests: {e}");
        }
        self.startup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(startup);
    }

    /// Move every open request in one of `states` to `interrupted`, with an
    /// audit entry giving `reason`. Returns them with their former state.
    fn interrupt(
        &self,
        states: &[State],
        reason: &str,
        keep: &[String],
        now: u64,
    ) -> Vec<(Request, State)> {
        let Ok(open) = self.requests.open_requests() else {
            return Vec::new();
        };
        let mut done = Vec::new();
        for r in open
            .into_iter()
            .filter(|r| states.contains(&r.state) && !keep.contains(&r.id))
        {
            if let Ok(Update::Done(req, was)) =
                self.requests.update(&r.id, |r| r.interrupt(states, now))
            {
                self.record(vec![
                    request_entry(Event::Interrupted, &req, now)
                        .status(Status::Interrupted)
                        .detail(json!({"was": was.name(), "reason": reason})),
                ]);
                // Its lock is released; what waited starts at the next
                // tick.
                let _ = self.release_lock(&req, now);
                done.push((req, was));
            }
        }
        done
    }
}

/// The alias's result message for `execution`, with the request's `page`
/// appended, as st2's chat adapters appended the web UI's link, unless the
/// alias's `result.append_url` is false.
fn result_text(
    alias: Option<&crate::alias::Alias>,
    execution: &Value,
    page: Option<String>,
) -> Option<String> {
    let mut text = render::result(alias, execution)?;
    let appended = alias
        .and_then(|a| a.result.as_ref())
        .and_then(|r| r.append_url)
        != Some(false);
    if let Some(url) = page.filter(|_| appended) {
        text.push_str(&format!("\n{url}"));
    }
    Some(text)
}
