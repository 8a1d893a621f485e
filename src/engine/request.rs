//! From a matched alias to a request: parameters, policy, confirmation prompt or acceptance.

use super::*;

impl Engine {
    pub(super) fn subject<'a>(&self, m: &'a Incoming) -> Subject<'a> {
        Subject {
            user: &m.sender,
            room: &m.room,
            power_level: m.power_level,
        }
    }

    pub(super) fn run_alias(&self, out: &mut Out, cmd: &str) {
        let matched = match self.aliases().match_command(cmd) {
            Ok(x) => x,
            Err(e) => {
                out.log(
                    Entry::new("no_match").detail(json!({"command": cmd, "error": e.to_string()})),
                );
                out.say(format!("{e}. Try {}help.", self.settings.prefix));
                return;
            }
        };
        let alias = matched.alias.clone();
        out.log(
            Entry::new("matched")
                .alias(Some(&alias.reference()))
                .action(&alias.action_ref)
                .detail(json!({"representation": matched.representation, "parameters": matched.parameters})),
        );
        for params in matched.parameters {
            self.request(out, &alias, cmd, params, &matched.overrides);
        }
    }

    /// One execution of an alias: parameters, policy, then confirmation or run.
    pub(super) fn request(
        &self,
        out: &mut Out,
        alias: &Arc<Alias>,
        cmd: &str,
        parsed: Params,
        set_in_chat: &[String],
    ) {
        let m = out.m;
        let reference = alias.reference();
        let action = self.actions.get(&alias.action_ref).cloned();
        let fail = |out: &mut Out, msg: String| {
            out.log(
                Entry::new("error")
                    .alias(Some(&reference))
                    .action(&alias.action_ref)
                    .status("error")
                    .detail(json!({"error": msg})),
            );
            out.say(format!("⚠️ {msg}"));
            out.react(FAILED);
        };
        let params = match execution_params(
            alias,
            action.as_ref().map(|a| a.spec()),
            &self.subject(m),
            parsed,
        ) {
            Ok(p) => p,
            Err(e) => return fail(out, e),
        };
        let target = Target::Alias {
            reference: &reference,
            pack: &alias.pack,
            action_ref: &alias.action_ref,
        };
        let decision = self
            .policy()
            .decide(&self.subject(m), &target, &params, set_in_chat);
        let (rule, confirm) = match decision {
            Decision::Deny { rule, reason } => {
                out.log(
                    Entry::new("denied")
                        .alias(Some(&reference))
                        .action(&alias.action_ref)
                        .rule(rule.as_deref())
                        .status("denied")
                        .detail(json!({"reason": reason, "parameters": params})),
                );
                out.say(format!("🚫 Refused: {reason}."));
                out.react(FAILED);
                return;
            }
            Decision::Allow { rule, confirm } => (rule, confirm),
        };
        let Some(action) = action else {
            return fail(
                out,
                format!(
                    "action {} is not available in airlock, so {reference} cannot run",
                    alias.action_ref
                ),
            );
        };
        let params = match action.prepare(params) {
            Ok(p) => p,
            Err(e) => return fail(out, format!("{reference} cannot run: {e}")),
        };
        let now = now_ms();
        let confirmation = confirm.as_ref().map(|c| Confirmation {
            approvers: c.approvers.user_globs(),
            approvers_text: if c.approvers.is_empty() {
                "anyone allowed to run it here".to_string()
            } else {
                c.approvers.describe()
            },
            approvals: c.approvals,
            self_approve: c.self_approve,
            expires_ms: now + c.expires.as_millis() as u64,
        });
        let req = Request {
            id: String::new(),
            state: if confirmation.is_some() {
                State::Pending
            } else {
                State::Approved
            },
            requester: m.sender.clone(),
            room: m.room.clone(),
            event_id: m.event_id.clone(),
            thread: m.thread.clone(),
            command: cmd.to_string(),
            alias: Some(reference.clone()),
            action: alias.action_ref.clone(),
            params,
            set_in_chat: set_in_chat.to_vec(),
            rule: rule.clone(),
            created_ms: now,
            confirmation,
            approvals: Vec::new(),
            prompt_event: None,
            decided_by: None,
            result: None,
            summary: None,
            started_ms: None,
            finished_ms: None,
        };
        let req = match self.requests.create(req) {
            Ok(r) => r,
            Err(e) => return fail(out, format!("cannot store the request: {e}")),
        };
        crate::crash::point("request_stored");
        out.log(
            request_entry("allowed", &req)
                .rule(Some(&rule))
                .status(req.state.name())
                .detail(json!({"parameters": req.params, "confirmation": req.confirmation})),
        );
        if req.confirmation.is_some() {
            out.log(request_entry("confirmation_requested", &req).detail(json!({
                "approvers": req.confirmation.as_ref().map(|c| &c.approvers_text),
                "approvals": req.approvals_needed(),
                "expires": req.confirmation.as_ref().map(|c| clock::format_ms(c.expires_ms)),
            })));
            out.effects.push(Effect::Send(Outgoing {
                room: m.room.clone(),
                reply_to: Some(m.event_id.clone()),
                thread: m.thread.clone(),
                message: self.prompt(&req, now),
                prompt_for: Some(req.id.clone()),
            }));
            out.react(WAITING);
        } else {
            out.react(SEEN);
            self.accept(out, &req, alias);
        }
    }

    /// The request runs: ack it and hand it to the transport to execute.
    pub(super) fn accept(&self, out: &mut Out, req: &Request, alias: &Alias) {
        let execution = json!({
            "id": req.id, "status": "scheduled", "action": {"ref": req.action},
            "parameters": req.params, "context": {"user": req.requester, "api_user": req.requester,
            "source_channel": req.room},
        });
        if let Some(text) = render::ack(alias, &execution) {
            out.effects
                .push(Effect::Send(reply_to_request(req, Message::plain(text))));
        }
        out.effects.push(Effect::Execute(req.id.clone()));
    }

    pub(super) fn prompt(&self, req: &Request, now: u64) -> Message {
        let c = req
            .confirmation
            .as_ref()
            .expect("prompt needs a confirmation");
        let mut text = format!(
            "🔐 Confirmation needed — request {}\n{} asks to run {} ({}):\n",
            req.id,
            req.requester,
            req.alias.as_deref().unwrap_or(&req.action),
            req.action
        );
        text.push_str(&params_text(&req.params));
        let who = if c.self_approve && !c.approvers.is_empty() {
            format!("{} (the requester may approve)", c.approvers_text)
        } else if c.self_approve {
            format!("{} (including the requester)", c.approvers_text)
        } else {
            format!("{} — not the requester", c.approvers_text)
        };
        text.push_str(&format!(
            "Needs {} approval{} from {who}.\nReply \"yes\" to this message to approve or \"no\" to deny (or {p}approve {id} / {p}deny {id}). Expires in {} (at {}).",
            c.approvals,
            if c.approvals == 1 { "" } else { "s" },
            clock::human(Duration::from_millis(c.expires_ms.saturating_sub(now))),
            clock::format_ms(c.expires_ms),
            p = self.settings.prefix,
            id = req.id,
        ));
        Message::plain(text)
    }
}

/// st2's alias execution parameters for one parsed match: immutable
/// parameters rendered with the chat context, values cast and checked by the
/// action's schema. For an action airlock lacks (`spec` None), nulls are
/// dropped and the rest kept, so the policy can still be asked about them.
pub fn execution_params(
    alias: &Alias,
    spec: Option<&ActionSpec>,
    who: &Subject,
    parsed: Params,
) -> Result<Params, String> {
    let context = json!({
        "api_user": who.user, "user": who.user, "source_channel": who.room,
        "action_alias_ref": alias.reference(),
    });
    let params =
        alias.execution_parameters(parsed, &context, |k| spec.and_then(|s| s.type_of(k)))?;
    match spec {
        Some(s) => s.validate(params),
        None => Ok(params.into_iter().filter(|(_, v)| !v.is_null()).collect()),
    }
}

/// What a command would do, decided but not done (`airlock policy explain`).
pub struct Evaluation {
    pub alias: Arc<Alias>,
    pub representation: String,
    /// Per execution: final parameters and the policy's explanation, or why
    /// the parameters are unacceptable.
    pub executions: Vec<Result<(Params, policy::Explanation), String>>,
    pub action_available: bool,
}

pub fn evaluate(
    aliases: &AliasSet,
    policy: &Policy,
    specs: &[ActionSpec],
    who: &Subject,
    command: &str,
) -> Result<Evaluation, alias::MatchError> {
    let matched = aliases.match_command(&alias::normalize_command(command))?;
    let alias = matched.alias.clone();
    let spec = specs.iter().find(|s| s.reference == alias.action_ref);
    let reference = alias.reference();
    let target = Target::Alias {
        reference: &reference,
        pack: &alias.pack,
        action_ref: &alias.action_ref,
    };
    let executions = matched
        .parameters
        .clone()
        .into_iter()
        .map(|parsed| {
            let params = execution_params(&alias, spec, who, parsed)?;
            let explanation = policy.explain(who, &target, &params, &matched.overrides);
            Ok((params, explanation))
        })
        .collect();
    Ok(Evaluation {
        alias: alias.clone(),
        representation: matched.representation,
        executions,
        action_available: spec.is_some(),
    })
}

/// Parameters as a prompt lists them, resolved commits spelled out.
pub fn params_text(params: &Params) -> String {
    let mut s = String::new();
    for (k, v) in params {
        if k == "resolved" {
            for src in v.as_array().into_iter().flatten() {
                let fetched = match (src["url"].as_str(), src["fetch_url"].as_str()) {
                    (Some(u), Some(f)) if u != f => format!(" (fetched from {f})"),
                    _ => String::new(),
                };
                s.push_str(&format!(
                    "  → {} at commit {} ({}) from {}{}\n",
                    src["pack"].as_str().unwrap_or("?"),
                    src["commit"].as_str().unwrap_or("?"),
                    src["reference"].as_str().unwrap_or("default branch"),
                    src["url"].as_str().unwrap_or("?"),
                    fetched
                ));
            }
            continue;
        }
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        s.push_str(&format!("  {k}: {v}\n"));
    }
    s
}
