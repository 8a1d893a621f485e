//! Running approved requests, expiring pending ones, shutting down.

use super::*;

impl Engine {
    /// Run an approved request. Blocks for as long as the action runs, so
    /// transports call it off their event loop. A request that is not
    /// `approved` (already running, or run) is left alone: exactly once.
    pub fn execute(&self, id: &str) -> Vec<Effect> {
        let started = now_ms();
        // Durations come from the monotonic clock: the wall clock can step
        // back while an action runs.
        let timer = std::time::Instant::now();
        let req = match self.requests.update(id, |r| {
            if r.state != State::Approved {
                return Err(format!("it is {}", r.state.name()));
            }
            r.state = State::Running;
            r.started_ms = Some(started);
            Ok(())
        }) {
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
            request_entry("started", &req)
                .status("running")
                .detail(json!({"parameters": req.params})),
        ]) {
            let _ = self.requests.update(id, |r| {
                r.state = State::Failed;
                r.summary = Some("audit log unavailable".into());
                Ok(())
            });
            return vec![Effect::Send(reply_to_request(
                &req,
                Message::plain("⚠️ The audit log cannot be written, so the request did not run."),
            ))];
        }
        crate::crash::point("action_started");
        let outcome = match self.actions.get(&req.action) {
            Some(action) => {
                let ctx = RunContext {
                    request_id: &req.id,
                    requester: &req.requester,
                    cancel: &self.cancel,
                };
                // An action that panics is a failed run, not a dead bot.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    action.run(&ctx, &req.params)
                }))
                .unwrap_or_else(|_| Outcome::failed("the action crashed"))
            }
            None => Outcome::failed(format!("action {} is not available in airlock", req.action)),
        };
        let interrupted = self.cancel.load(Ordering::Relaxed) && outcome.status == Status::Failed;
        let elapsed_ms = timer.elapsed().as_millis() as u64;
        self.complete(req, outcome, interrupted, started, elapsed_ms, None)
    }

    /// Record how a run ended (request state, `finished` or `interrupted`
    /// entry), reload aliases if packs changed, and render the result.
    /// `recovered` says, for a run the last process died in, what to tell
    /// the room first.
    fn complete(
        &self,
        req: Request,
        outcome: Outcome,
        interrupted: bool,
        started: u64,
        elapsed_ms: u64,
        recovered: Option<String>,
    ) -> Vec<Effect> {
        // Resolve the alias before reloading: an uninstall may remove it.
        let alias = req
            .alias
            .as_deref()
            .and_then(|a| self.aliases().get(a).cloned());
        let finished = now_ms().max(started);
        let state = match (outcome.status, interrupted) {
            (_, true) => State::Interrupted,
            (Status::Succeeded, _) => State::Succeeded,
            (Status::Failed, _) => State::Failed,
        };
        let id = req.id.clone();
        let req = match self.requests.update(&id, |r| {
            r.state = state;
            r.result = Some(outcome.result.clone());
            r.summary = Some(outcome.summary.clone());
            r.finished_ms = Some(finished);
            Ok(())
        }) {
            Ok(Update::Done(r, ())) => r,
            _ => req,
        };
        let mut detail = json!({"summary": outcome.summary, "elapsed_ms": elapsed_ms});
        if let Some(c) = &outcome.commit {
            detail["commit"] = json!(c);
        }
        if recovered.is_some() {
            detail["recovered"] = json!(true);
        }
        self.record(vec![
            request_entry(
                if interrupted {
                    "interrupted"
                } else {
                    "finished"
                },
                &req,
            )
            .status(state.name())
            .detail(detail),
        ]);
        // The audit now holds the outcome; the switch records may go.
        self.packs.forget_switches(Some(&req.id));
        if outcome.packs_changed {
            self.reload_aliases();
        }
        let execution = execution_view(&req, &outcome, started, finished, elapsed_ms);
        let mut fx = Vec::new();
        if let Some(text) = recovered {
            fx.push(Effect::Send(reply_to_request(&req, Message::plain(text))));
        }
        if let Some(text) = render::result(alias.as_deref(), &execution) {
            fx.push(Effect::Send(reply_to_request(
                &req,
                Message::from_template_output(&text),
            )));
        }
        fx.push(react_request(
            &req,
            if state == State::Succeeded {
                SUCCEEDED
            } else {
                FAILED
            },
        ));
        fx
    }

    /// A request the last process died running: finished from what its
    /// action made durable (a pack switch that happened), else None.
    pub(super) fn recover_run(&self, req: &Request) -> Option<Vec<Effect>> {
        let action = self.actions.get(&req.action)?;
        let ctx = RunContext {
            request_id: &req.id,
            requester: &req.requester,
            cancel: &self.cancel,
        };
        let outcome = action.recover(&ctx, &req.params)?;
        let started = req.started_ms.unwrap_or(req.created_ms);
        let text = format!(
            "♻️ airlock stopped while request {} ({}) was running, after its change had taken effect; recorded as {}: {}.",
            req.id,
            req.alias.as_deref().unwrap_or(&req.action),
            outcome.status.name(),
            outcome.summary
        );
        Some(self.complete(req.clone(), outcome, false, started, 0, Some(text)))
    }

    /// Expire pending requests whose time is up; announce each in its room.
    pub fn tick(&self, now: u64) -> Vec<Effect> {
        let Ok(open) = self.requests.open_requests() else {
            return Vec::new();
        };
        let mut fx = Vec::new();
        let mut entries = Vec::new();
        for r in open {
            let due = r.state == State::Pending
                && r.confirmation.as_ref().is_some_and(|c| now >= c.expires_ms);
            if !due {
                continue;
            }
            if let Ok(Update::Done(req, ())) = self.requests.update(&r.id, |r| {
                if r.state != State::Pending {
                    return Err("changed".into());
                }
                r.state = State::Expired;
                r.finished_ms = Some(now);
                Ok(())
            }) {
                entries.push(
                    request_entry("expired", &req)
                        .status("expired")
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
        }
        self.record(entries);
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
    }

    /// Requests still running when the process must exit: marked
    /// interrupted in the audit log (they are not re-run on restart).
    pub fn interrupt_running(&self) {
        self.interrupt(&[State::Running], "airlock was shut down while it ran");
    }
}

/// st2's `execution` as result templates see it.
fn execution_view(
    req: &Request,
    outcome: &Outcome,
    started: u64,
    finished: u64,
    elapsed_ms: u64,
) -> Value {
    json!({
        "id": req.id,
        "status": match outcome.status { Status::Succeeded => "succeeded", Status::Failed => "failed" },
        "action": {"ref": req.action},
        "parameters": req.params,
        "result": outcome.result,
        "context": {
            "user": req.requester, "api_user": req.requester, "source_channel": req.room,
            "approvers": req.approvals.iter().map(|a| &a.user).collect::<Vec<_>>(),
        },
        "start_timestamp": clock::format_ms(started),
        "end_timestamp": clock::format_ms(finished),
        "elapsed_seconds": elapsed_ms as f64 / 1000.0,
        "web_url": Value::Null,
    })
}
