//! From a matched alias to a request: parameters, policy, preparation
//! (possibly off the event path), then a confirmation prompt or acceptance.

use std::sync::Arc;

use serde_json::json;

use super::{
    Effect, Engine, FAILED, Out, Outgoing, SEEN, WAITING, reply_to_request, request_entry,
    request_event,
};
use crate::action::{ActionSpec, Prepared};
use crate::alias::{self, Alias, AliasSet, Params};
use crate::audit::{Event, Status};
use crate::clock;
use crate::policy::{self, ConfirmPolicy, Decision, FromChat, Policy, Subject, Target};
use crate::render::{self, Message};
use crate::requests::{Ask, BreakGlass, Confirmation, Origin, QuorumPart, Request, State, Update};

impl Engine {
    /// Who sent the event `out` answers, where and when.
    pub(super) fn subject<'a>(&self, out: &Out<'a>) -> Subject<'a> {
        Subject {
            user: &out.m.sender,
            room: &out.m.room,
            power_level: out.m.power_level,
            at: out.now,
        }
    }

    /// `cmd` as the audit may keep it: the values it gives secret
    /// parameters masked. Such a command is refused, but what was typed is
    /// recorded before that is known.
    pub(super) fn masked_command(&self, cmd: &str) -> String {
        let (bare, _) = split_break_glass(cmd);
        let Ok(matched) = self.aliases().match_command(&bare) else {
            return cmd.to_string();
        };
        let Some(action) = self.action(&matched.alias.action_ref) else {
            return cmd.to_string();
        };
        let secrets: Vec<String> = matched
            .parameters
            .iter()
            .flat_map(|p| p.iter())
            .filter(|(k, _)| action.spec().param(k).is_some_and(|p| p.secret))
            .map(|(_, v)| crate::action::runners::python::str_of(v))
            .filter(|v| !v.is_empty())
            .collect();
        crate::action::runners::secrets::Secrets::new(secrets).text(cmd)
    }

    pub(super) fn run_alias(&self, out: &mut Out, cmd: &str) {
        let (cmd, glass) = split_break_glass(cmd);
        let glass = match glass {
            None => None,
            Some(Ok(reason)) => Some(reason),
            Some(Err(())) => {
                return out.say(format!(
                    "Break-glass needs a reason: {}{cmd} --break-glass \"why it cannot wait\"",
                    self.settings.prefix
                ));
            }
        };
        let cmd = cmd.as_str();
        let matched = match self.aliases().match_command(cmd) {
            Ok(x) => x,
            Err(e) => {
                let entry = out
                    .entry(Event::NoMatch)
                    .detail(json!({"command": cmd, "error": e.to_string()}));
                out.log(entry);
                out.say(format!("{e}. Try {}help.", self.settings.prefix));
                return;
            }
        };
        let alias = matched.alias.clone();
        let shown: Vec<Params> = match self.action(&alias.action_ref) {
            Some(a) => matched
                .parameters
                .iter()
                .map(|p| a.spec().masked(p))
                .collect(),
            None => matched.parameters.clone(),
        };
        let entry = out
            .entry(Event::Matched)
            .alias(Some(&alias.reference()))
            .action(&alias.action_ref)
            .detail(json!({"representation": matched.representation, "parameters": shown}));
        out.log(entry);
        for params in matched.parameters {
            let asking = Asking {
                command: cmd,
                set_in_chat: &matched.overrides,
                glass: glass.as_deref(),
                repeat: None,
            };
            self.request(out, &alias, params, &asking);
        }
    }

    /// Say why a command cannot run, and record it.
    fn refuse_to_run(&self, out: &mut Out, alias: &Alias, msg: String) {
        let entry = out
            .entry(Event::Error)
            .alias(Some(&alias.reference()))
            .action(&alias.action_ref)
            .status(Status::Error)
            .detail(json!({"error": msg}));
        out.log(entry);
        out.say(format!("⚠️ {msg}"));
        out.react(FAILED);
    }

    /// One execution of an alias with `parsed` parameters: policy, then a
    /// request, prepared here or (when its action must reach the network,
    /// or its rule has a plan) by the transport through
    /// [`Effect::Prepare`].
    pub(super) fn request(
        &self,
        out: &mut Out,
        alias: &Arc<Alias>,
        parsed: Params,
        asking: &Asking,
    ) {
        let Asking {
            command: cmd,
            set_in_chat,
            glass,
            repeat,
        } = *asking;
        let m = out.m;
        let now = out.now;
        let reference = alias.reference();
        let action = self.action(&alias.action_ref);
        let spec = action.as_ref().map(|a| a.spec());
        let chat = from_chat(alias, spec, &parsed, set_in_chat);
        let (asked, params) = match asked_params(alias, spec, &self.subject(out), parsed)
            .map(|mut asked| {
                if let Some(r) = repeat {
                    asked.extend(r.pinned.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                asked
            })
            .and_then(|asked| Ok((asked.clone(), validated(spec, asked)?)))
        {
            Ok(p) => p,
            Err(e) => return self.refuse_to_run(out, alias, e),
        };
        let Some((rule, confirm, break_glass)) = self.allowed(out, alias, &params, &chat, glass)
        else {
            return;
        };
        let Some(action) = action else {
            return self.refuse_to_run(
                out,
                alias,
                format!(
                    "action {} is not available in airlock, so {reference} cannot run",
                    alias.action_ref
                ),
            );
        };
        let confirmation = confirm
            .as_ref()
            .map(|c| confirmation(c, now + c.expires.as_millis() as u64));
        let req = Request::asked(
            Origin {
                requester: m.sender.clone(),
                room: m.room.clone(),
                event_id: m.event_id.clone(),
                thread: m.thread.clone(),
                power_level: m.power_level,
            },
            Ask {
                command: cmd.to_string(),
                alias: Some(reference.clone()),
                action: alias.action_ref.clone(),
                asked,
                params,
                set_in_chat: chat.pairs,
                rule,
            },
            confirmation,
            break_glass,
            now,
        )
        .repeating(repeat.map(|r| r.note.clone()));
        self.store_and_prepare(out, alias, action, req);
    }

    /// The policy's answer for this execution: the rule, who must confirm
    /// (the alias's st2 `twofactor` asks for a second person where the
    /// rule asks for none), and the break-glass it runs under; or None,
    /// said and recorded.
    fn allowed(
        &self,
        out: &mut Out,
        alias: &Alias,
        params: &Params,
        chat: &FromChat,
        glass: Option<&str>,
    ) -> Option<(String, Option<ConfirmPolicy>, Option<BreakGlass>)> {
        let reference = alias.reference();
        let target = Target::Alias {
            reference: &reference,
            pack: &alias.pack,
            action_ref: &alias.action_ref,
        };
        let decision = self
            .policy()
            .decide(&self.subject(out), &target, params, chat);
        let (rule, confirm, may_break_glass) = match decision {
            Decision::Deny { rule, reason } => {
                deny(out, alias, rule.as_deref(), &reason, params);
                return None;
            }
            Decision::Allow {
                rule,
                confirm,
                break_glass,
            } => (rule, confirm, break_glass),
        };
        let confirm = confirm.or_else(|| alias.twofactor().then(ConfirmPolicy::second_person));
        // Break-glass skips the confirmation (never a deny rule), only
        // where the rule names the requester for it.
        match glass {
            None => Some((rule, confirm, None)),
            Some(reason) if may_break_glass => Some((
                rule,
                None,
                Some(BreakGlass {
                    reason: reason.to_string(),
                    reviewed_by: None,
                    reviewed_ms: None,
                }),
            )),
            Some(_) => {
                let reason = format!(
                    "rule {rule} does not let {} break glass for {reference}; ask without --break-glass to get it approved",
                    out.m.sender
                );
                deny(out, alias, Some(&rule), &reason, params);
                None
            }
        }
    }

    /// Store the new request and prepare it: here, or (when its action
    /// must reach the network, or its rule has a plan) by the transport
    /// through [`Effect::Prepare`].
    fn store_and_prepare(
        &self,
        out: &mut Out,
        alias: &Alias,
        action: Arc<dyn crate::action::Action>,
        req: Request,
    ) {
        let req = match self.requests.create(req) {
            Ok(r) => r,
            Err(e) => {
                return self.refuse_to_run(out, alias, format!("cannot store the request: {e}"));
            }
        };
        tracing::Span::current().record("request", req.id.as_str());
        tracing::info!("request {} for {}", req.id, alias.reference());
        crate::crash::point("request_stored");
        // A plan runs an action: never on the event path.
        if action.prepares_slowly() || self.has_plan(&req) {
            out.effects.push(Effect::Prepare(req.id.clone()));
        } else {
            let prepared = action.prepare(req.params.clone());
            self.prepared(out, req, prepared.map_err(|e| e.to_string()));
        }
    }

    /// Prepare request `id` (its action may reach the network: call this
    /// off the event loop) and go on to its prompt or its run. `now` is
    /// read once the preparation is done.
    pub fn prepare(&self, id: &str, now: impl Fn() -> u64) -> Vec<Effect> {
        let req = match self.requests.get(id) {
            Ok(Some(r)) if r.state == State::Preparing => r,
            _ => return Vec::new(),
        };
        let prepared = match self.action(&req.action) {
            Some(action) => action
                .prepare(req.params.clone())
                .map_err(|e| e.to_string()),
            None => Err(format!("action {} is not available in airlock", req.action)),
        };
        // The rule's plan, against exactly what will run.
        let prepared = prepared.and_then(|p| match self.run_plan(&req, &p, &now) {
            Some(Err(failed)) => Err(failed),
            _ => Ok(p),
        });
        // Read again: the plan's run is kept on it.
        let req = self.requests.get(id).ok().flatten().unwrap_or(req);
        let now = now();
        let m = request_event(&req, now);
        let mut out = Out::new(&m, now);
        self.prepared(&mut out, req, prepared);
        self.finish(out)
    }

    /// What will run is known (or cannot be): prompt, accept, or say why not.
    fn prepared(&self, out: &mut Out, req: Request, prepared: Result<Prepared, String>) {
        let now = out.now;
        let reference = req.alias.clone().unwrap_or_else(|| req.action.clone());
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("{reference} cannot run: {e}");
                let _ = self.requests.update(&req.id, |r| r.unprepared(&msg, now));
                let entry = request_entry(Event::Error, &req, now)
                    .status(Status::Error)
                    .detail(json!({"error": msg}));
                out.log(entry);
                out.say(format!("⚠️ {msg}"));
                out.react(FAILED);
                return;
            }
        };
        let basis = self.basis(&req);
        let req = match self.requests.update(&req.id, |r| {
            r.prepared(prepared.clone(), now)?;
            r.basis = r.confirmation.is_some().then(|| basis.clone());
            Ok(())
        }) {
            Ok(Update::Done(r, ())) => r,
            _ => return,
        };
        out.log(
            request_entry(Event::Allowed, &req, now)
                .rule(Some(&req.rule))
                .status(req.state)
                .detail({
                    // The command and its event again: the `received`
                    // entry came before the request had an id, and a
                    // request's history is read by its id.
                    let mut d = json!({
                        "command": req.command, "event": req.event_id,
                        "parameters": req.params, "confirmation": req.confirmation,
                    });
                    if !req.shown.is_empty() {
                        // What approvers are shown (for an install, the
                        // commit range): the approval is for exactly that.
                        d["shown"] = json!(req.shown);
                    }
                    d
                }),
        );
        if let Some(c) = &req.confirmation {
            out.log(
                request_entry(Event::ConfirmationRequested, &req, now).detail(json!({
                    "approvers": c.approvers_text,
                    "approvals": req.approvals_needed(),
                    "expires": clock::format_ms(c.expires_ms),
                })),
            );
            out.effects.push(Effect::Send(Outgoing {
                room: req.room.clone(),
                reply_to: Some(req.event_id.clone()),
                thread: req.thread.clone(),
                message: self.prompt(&req, now),
                prompt_for: Some(req.id.clone()),
            }));
            out.react(WAITING);
        } else {
            if let Some(glass) = &req.break_glass {
                self.announce_break_glass(out, &req, &glass.reason);
            }
            let at = out.effects.len();
            self.accept(out, &req);
            // 👀 says "seen, working on it"; an ack already says so, and a
            // reaction sent first would hold up the answer.
            let acked = out.effects[at..]
                .iter()
                .any(|e| matches!(e, Effect::Send(_)));
            if !acked {
                let seen = out.reaction(SEEN);
                out.effects.insert(at, seen);
            }
        }
    }

    /// A break-glass run, told to its room, the audit room and the audit
    /// log before it starts.
    fn announce_break_glass(&self, out: &mut Out, req: &Request, reason: &str) {
        let now = out.now;
        out.log(
            request_entry(Event::BreakGlass, req, now)
                .rule(Some(&req.rule))
                .status(Status::Approved)
                .detail(json!({"reason": reason, "parameters": req.params})),
        );
        let text = format!(
            "🚨 Break-glass: {} runs {} ({}) without approval under rule {}. Reason: “{reason}”. \
             Request {id} stays flagged until someone else reviews it: {p}review {id}",
            req.requester,
            req.alias.as_deref().unwrap_or(&req.action),
            req.action,
            req.rule,
            id = req.id,
            p = self.settings.prefix,
        );
        if let Some(room) = self
            .settings
            .audit_room
            .as_ref()
            .filter(|r| **r != req.room)
        {
            out.effects.push(Effect::Send(Outgoing {
                room: room.clone(),
                reply_to: None,
                thread: None,
                message: Message::plain(format!("{text} (in {})", req.room)),
                prompt_for: None,
            }));
        }
        out.effects
            .push(Effect::Send(reply_to_request(req, Message::plain(text))));
    }

    /// The request runs: ack it and hand it to the transport to execute.
    pub(super) fn accept(&self, out: &mut Out, req: &Request) {
        let alias = req
            .alias
            .as_deref()
            .and_then(|a| self.aliases().get(a).cloned());
        let execution = json!({
            "id": req.id, "status": "scheduled", "action": {"ref": req.action},
            "parameters": req.params, "context": {"user": req.requester, "api_user": req.requester,
            "source_channel": req.room},
        });
        if let Some(text) = alias.and_then(|a| render::ack(&*a, &execution)) {
            out.effects
                .push(Effect::Send(reply_to_request(req, Message::plain(text))));
        }
        out.effects.push(Effect::Execute(req.id.clone()));
    }
}

/// How a request is asked for, besides its parameters.
pub(super) struct Asking<'a> {
    /// The command as matched.
    pub(super) command: &'a str,
    /// Parameters chat set as trailing `key=value` pairs.
    pub(super) set_in_chat: &'a [String],
    /// `--break-glass` and its reason.
    pub(super) glass: Option<&'a str>,
    /// A `!redeploy`: its pinned parameters are set over the alias's own
    /// before the policy sees them, and its prompt says what it repeats.
    pub(super) repeat: Option<&'a Repeat>,
}

/// What a `!redeploy` asks again for.
pub(super) struct Repeat {
    /// Parameters pinned to what the earlier request ran.
    pub(super) pinned: Params,
    /// For its prompt: which request it repeats, and how and when that
    /// ended.
    pub(super) note: String,
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
    validated(spec, asked_params(alias, spec, who, parsed)?)
}

/// Which parameters the command set, and how the action uses them: the
/// policy's parameter rules look at these. A `key=value` pair naming a
/// parameter the format captures counts as captured.
fn from_chat(
    alias: &Alias,
    spec: Option<&ActionSpec>,
    parsed: &Params,
    pairs: &[String],
) -> FromChat {
    FromChat {
        pairs: pairs
            .iter()
            .filter(|k| !alias.captures(k))
            .cloned()
            .collect(),
        typed: parsed.keys().cloned().collect(),
        controls: spec.map(|s| s.controls.clone()).unwrap_or_default(),
        arguments: spec.map(|s| s.arguments.clone()).unwrap_or_default(),
    }
}

/// The alias's side of [`execution_params`]: chat values and immutable
/// parameters, before the action's schema fills in its defaults.
fn asked_params(
    alias: &Alias,
    spec: Option<&ActionSpec>,
    who: &Subject,
    parsed: Params,
) -> Result<Params, String> {
    // A secret fixed by the alias file was never typed in chat: say so.
    if let Some(k) = alias
        .immutable_parameters
        .keys()
        .find(|k| spec.and_then(|s| s.param(k)).is_some_and(|p| p.secret))
    {
        return Err(format!(
            "alias {} sets secret parameter {k} of {} in its immutable_parameters; a secret belongs in the pack's config, not in an alias file anyone can read",
            alias.reference(),
            alias.action_ref
        ));
    }
    let context = json!({
        "api_user": who.user, "user": who.user, "source_channel": who.room,
        "action_alias_ref": alias.reference(),
    });
    alias.execution_parameters(parsed, &context, |k| spec.and_then(|s| s.type_of(k)))
}

/// The action's side of [`execution_params`]: its schema's defaults and
/// checks.
pub(super) fn validated(spec: Option<&ActionSpec>, params: Params) -> Result<Params, String> {
    match spec {
        Some(s) => s.validate(params),
        None => Ok(params.into_iter().filter(|(_, v)| !v.is_null()).collect()),
    }
}

/// Refuse an execution the policy denies: said, recorded, ❌ on the command.
fn deny(out: &mut Out, alias: &Alias, rule: Option<&str>, reason: &str, params: &Params) {
    let entry = out
        .entry(Event::Denied)
        .alias(Some(&alias.reference()))
        .action(&alias.action_ref)
        .rule(rule)
        .status(Status::Denied)
        .detail(json!({"reason": reason, "parameters": params}));
    out.log(entry);
    out.say(format!("🚫 Refused: {reason}."));
    out.react(FAILED);
}

/// What a command would do, decided but not done (`airlock policy explain`).
pub struct Evaluation {
    /// The alias matched.
    pub alias: Arc<Alias>,
    /// The representation that matched.
    pub representation: String,
    /// Per execution: final parameters and the policy's explanation, or why
    /// the parameters are unacceptable.
    pub executions: Vec<Result<(Params, policy::Explanation), String>>,
    /// Whether airlock has its action.
    pub action_available: bool,
}

/// Match `command` and decide each execution without running anything.
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
            let chat = from_chat(&alias, spec, &parsed, &matched.overrides);
            let params = execution_params(&alias, spec, who, parsed)?;
            let explanation = policy.explain(who, &target, &params, &chat);
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

/// What a request stores of a rule's confirmation, expiring at `expires_ms`.
pub(super) fn confirmation(c: &ConfirmPolicy, expires_ms: u64) -> Confirmation {
    Confirmation {
        approvers: c.approvers.user_globs(),
        approvers_text: if c.approvers.is_empty() {
            "anyone allowed to run it here".to_string()
        } else {
            c.approvers.describe()
        },
        approvals: c.approvals,
        self_approve: c.self_approve,
        expires_ms,
        verified_devices: c.verified_devices,
        quorum: c
            .quorum
            .iter()
            .map(|(who, n)| QuorumPart {
                approvers: who.user_globs(),
                text: who.describe(),
                approvals: *n,
            })
            .collect(),
    }
}

/// A trailing `--break-glass "reason"`: the command without it and the
/// reason (quotes dropped), or `Err` when the flag has no reason.
pub fn split_break_glass(cmd: &str) -> (String, Option<Result<String, ()>>) {
    const FLAG: &str = "--break-glass";
    let at = cmd.match_indices(FLAG).map(|(i, _)| i).find(|&i| {
        (i == 0 || cmd[..i].ends_with(char::is_whitespace))
            && cmd[i + FLAG.len()..]
                .chars()
                .next()
                .is_none_or(char::is_whitespace)
    });
    let Some(at) = at else {
        return (cmd.to_string(), None);
    };
    let rest = cmd[at + FLAG.len()..].trim();
    let reason = [('"', '"'), ('\'', '\''), ('“', '”')]
        .iter()
        .find_map(|&(a, b)| rest.strip_prefix(a).and_then(|r| r.strip_suffix(b)))
        .unwrap_or(rest)
        .trim();
    let reason = if reason.is_empty() {
        Err(())
    } else {
        Ok(reason.to_string())
    };
    (cmd[..at].trim_end().to_string(), Some(reason))
}
