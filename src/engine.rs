//! The transport-independent core ("sans I/O"): a chat message goes in,
//! effects come out (messages, reactions, executions to start).
//!
//! The console, the Matrix adapter and the tests all drive this same code:
//!
//! * [`Engine::handle`] for each incoming message, edit or reaction;
//! * [`Engine::bind_prompt`] once a confirmation prompt has been sent and
//!   has an event ID (replies to that event approve the request);
//! * [`Engine::execute`] for each [`Effect::Execute`], off the transport's
//!   event loop (it blocks for as long as the action runs);
//! * [`Engine::tick`] now and then, to expire confirmations.
//!
//! Everything that happens is recorded in the audit log before the effects
//! are handed back.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::action::packs::{GitConfig, PackManager};
use crate::action::{ActionSpec, Actions, Outcome, RunContext, Status};
use crate::alias::{self, Alias, AliasSet, Params};
use crate::audit::{AuditLog, Entry, Query};
use crate::clock::{self, now_ms};
use crate::confirm::{Approval, Confirmation, Request, Requests, State, Update};
use crate::diag::Diagnostic;
use crate::policy::{self, Decision, Policy, Subject, Target};
use crate::render::{self, Message};

/// Status reactions on a command.
pub const SEEN: &str = "👀";
pub const WAITING: &str = "⏳";
pub const SUCCEEDED: &str = "✅";
pub const FAILED: &str = "❌";

/// Longest command the bot will try to match.
const MAX_COMMAND_CHARS: usize = 4000;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Command prefix, `!` by default.
    pub prefix: String,
    /// Names the bot answers to as `name: command` (besides the prefix).
    pub names: Vec<String>,
    /// The bot's own user ID: its messages are never commands.
    pub bot_user: Option<String>,
    pub alias_dirs: Vec<PathBuf>,
    pub policy_paths: Vec<PathBuf>,
    pub packs_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Commands older than this (by their timestamp) are not run.
    pub max_age: Duration,
    /// Whether 👍/👎 reactions on a prompt approve or deny.
    pub reaction_approvals: bool,
    pub git: GitConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prefix: "!".into(),
            names: vec!["airlock".into()],
            bot_user: None,
            alias_dirs: vec![PathBuf::from("aliases")],
            policy_paths: vec![PathBuf::from("policies")],
            packs_dir: PathBuf::from("packs"),
            data_dir: PathBuf::from("data"),
            max_age: Duration::from_secs(120),
            reaction_approvals: false,
            git: GitConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Message,
    /// An `m.replace` edit: never runs or approves anything.
    Edit,
    /// A reaction (its key) on `relates_to`.
    Reaction(String),
    /// An encrypted event the transport could not decrypt.
    Undecryptable,
}

/// One event from a room, as any transport sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub kind: Kind,
    /// A Matrix user ID; display names never identify anyone.
    pub sender: String,
    pub room: String,
    pub event_id: String,
    /// Plain text, reply fallback already removed.
    pub body: String,
    /// The event this one replies to (`m.in_reply_to`).
    pub reply_to: Option<String>,
    /// The event an edit replaces or a reaction annotates.
    pub relates_to: Option<String>,
    /// Thread root, when the event is in a thread.
    pub thread: Option<String>,
    /// When the homeserver received it (ms since epoch).
    pub ts_ms: u64,
    /// The sender's power level in the room, when known.
    pub power_level: Option<i64>,
    /// The transport saw the bot mentioned (Matrix `m.mentions`).
    pub addressed: bool,
}

impl Incoming {
    pub fn message(sender: &str, room: &str, event_id: &str, body: &str) -> Self {
        Incoming {
            kind: Kind::Message,
            sender: sender.into(),
            room: room.into(),
            event_id: event_id.into(),
            body: body.into(),
            reply_to: None,
            relates_to: None,
            thread: None,
            ts_ms: now_ms(),
            power_level: None,
            addressed: false,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub room: String,
    pub reply_to: Option<String>,
    pub thread: Option<String>,
    pub message: Message,
    /// This is the confirmation prompt of a request: report its event ID
    /// back with [`Engine::bind_prompt`].
    pub prompt_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send(Outgoing),
    React {
        room: String,
        event_id: String,
        key: &'static str,
    },
    /// Run this approved request with [`Engine::execute`].
    Execute(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database in {0}: {1}")]
    Database(PathBuf, String),
    #[error("the policy has errors:\n{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<Diagnostic>),
    #[error("{0}")]
    Packs(String),
}

/// Answers and audit entries gathered while handling one event.
struct Out<'a> {
    m: &'a Incoming,
    effects: Vec<Effect>,
    audit: Vec<Entry>,
}

impl<'a> Out<'a> {
    fn new(m: &'a Incoming) -> Self {
        Out {
            m,
            effects: Vec::new(),
            audit: Vec::new(),
        }
    }

    fn reply(&mut self, message: Message) {
        self.effects.push(Effect::Send(Outgoing {
            room: self.m.room.clone(),
            reply_to: Some(self.m.event_id.clone()),
            thread: self.m.thread.clone(),
            message,
            prompt_for: None,
        }));
    }

    fn say(&mut self, text: impl Into<String>) {
        self.reply(Message::plain(text));
    }

    fn react(&mut self, key: &'static str) {
        self.effects.push(Effect::React {
            room: self.m.room.clone(),
            event_id: self.m.event_id.clone(),
            key,
        });
    }

    /// An audit entry about this event (room and sender filled in).
    fn log(&mut self, e: Entry) {
        self.audit.push(e.room(&self.m.room).sender(&self.m.sender));
    }
}

pub struct Engine {
    settings: Settings,
    audit: AuditLog,
    requests: Requests,
    packs: Arc<PackManager>,
    actions: Actions,
    aliases: RwLock<Arc<AliasSet>>,
    policy: RwLock<Arc<Policy>>,
    /// Edits already answered, and when undecryptable-message warnings were
    /// last sent per (room, sender): say each once, not on every event.
    noticed: Mutex<HashSet<String>>,
    warned: Mutex<HashMap<(String, String), u64>>,
    /// Set on shutdown; running actions stop at their next safe point.
    cancel: AtomicBool,
    startup: Mutex<Vec<Effect>>,
}

fn valid_user_id(u: &str) -> bool {
    // @localpart:server — the localpart has no colon.
    u.strip_prefix('@')
        .and_then(|r| r.split_once(':'))
        .is_some_and(|(l, s)| !l.is_empty() && !s.is_empty() && !u.contains(char::is_whitespace))
}

impl Engine {
    /// Open the store under `data_dir`, load policy and aliases, and settle
    /// requests left open by the previous run.
    pub fn open(settings: Settings) -> Result<Engine, StartError> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| StartError::Database(settings.data_dir.clone(), e.to_string()))?;
        let db_path = settings.data_dir.join("airlock.sled");
        let db = sled::Config::new()
            .path(&db_path)
            .open()
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        let audit = AuditLog::open(&db)
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        let requests = Requests::open(&db)
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        let loaded = policy::load(&settings.policy_paths);
        if loaded.has_errors() {
            return Err(StartError::Policy(loaded.diagnostics));
        }
        let packs = PackManager::new(&settings.packs_dir, &db, settings.git.clone())
            .map_err(StartError::Packs)?;
        let actions = Actions::standard(packs.clone());
        let engine = Engine {
            settings,
            audit,
            requests,
            packs,
            actions,
            aliases: RwLock::new(Arc::new(AliasSet::default())),
            policy: RwLock::new(Arc::new(loaded.policy)),
            noticed: Mutex::new(HashSet::new()),
            warned: Mutex::new(HashMap::new()),
            cancel: AtomicBool::new(false),
            startup: Mutex::new(Vec::new()),
        };
        for d in &loaded.diagnostics {
            tracing::warn!("{d}");
        }
        engine.reload_aliases();
        engine.recover();
        Ok(engine)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    pub fn packs(&self) -> &Arc<PackManager> {
        &self.packs
    }

    pub fn aliases(&self) -> Arc<AliasSet> {
        self.aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Messages to send once the transport is connected (requests the
    /// last run left unfinished).
    pub fn take_startup_effects(&self) -> Vec<Effect> {
        std::mem::take(&mut *self.startup.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reload aliases from the alias directories and registered packs.
    pub fn reload_aliases(&self) {
        let mut dirs = self.settings.alias_dirs.clone();
        dirs.extend(self.packs.alias_dirs());
        let loaded = alias::load_dirs(&dirs);
        for d in &loaded.diagnostics {
            tracing::warn!("{d}");
        }
        *self.aliases.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(AliasSet::new(loaded.aliases));
    }

    /// Reload the policy; on errors the current one stays and the errors
    /// are returned.
    pub fn reload_policy(&self) -> Result<(), Vec<Diagnostic>> {
        let loaded = policy::load(&self.settings.policy_paths);
        if loaded.has_errors() {
            return Err(loaded.diagnostics);
        }
        let mut p = loaded.policy;
        // Keep room aliases the transport resolved for the old policy.
        p.set_room_aliases(self.policy().resolved_room_aliases().clone());
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
        Ok(())
    }

    /// Room aliases (`#ops:example.org`) resolved by the transport.
    pub fn set_room_aliases(&self, resolved: HashMap<String, String>) {
        let mut p = (*self.policy()).clone();
        p.set_room_aliases(resolved);
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
    }

    fn record(&self, entries: Vec<Entry>) -> bool {
        match self.audit.append(entries) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!("audit log write failed: {e}");
                false
            }
        }
    }

    /// Requests the previous process left running (or approved but not
    /// started) are marked interrupted, never silently re-run.
    fn recover(&self) {
        for (req, was) in self.interrupt(
            &[State::Running, State::Approved],
            "airlock stopped before it finished; not re-run",
        ) {
            let mut startup = self.startup.lock().unwrap_or_else(|e| e.into_inner());
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
    }

    /// Move every open request in one of `states` to `interrupted`, with an
    /// audit entry giving `reason`. Returns them with their former state.
    fn interrupt(&self, states: &[State], reason: &str) -> Vec<(Request, State)> {
        let Ok(open) = self.requests.open_requests() else {
            return Vec::new();
        };
        let mut done = Vec::new();
        for r in open.into_iter().filter(|r| states.contains(&r.state)) {
            let was = r.state;
            if let Ok(Update::Done(req, ())) = self.requests.update(&r.id, |r| {
                if r.state != was {
                    return Err("changed".into());
                }
                r.state = State::Interrupted;
                r.finished_ms = Some(now_ms());
                Ok(())
            }) {
                self.record(vec![
                    request_entry("interrupted", &req)
                        .status("interrupted")
                        .detail(json!({"was": was.name(), "reason": reason})),
                ]);
                done.push((req, was));
            }
        }
        done
    }

    // ------------------------------------------------------------ input

    pub fn handle(&self, m: &Incoming) -> Vec<Effect> {
        if self.settings.bot_user.as_deref() == Some(m.sender.as_str()) || !valid_user_id(&m.sender)
        {
            return Vec::new();
        }
        let mut out = Out::new(m);
        match &m.kind {
            Kind::Message => self.on_message(&mut out),
            Kind::Edit => self.on_edit(&mut out),
            Kind::Reaction(key) => self.on_reaction(&mut out, key),
            Kind::Undecryptable => self.on_undecryptable(&mut out),
        }
        self.finish(out)
    }

    /// Write the audit entries, then release the effects. If the audit
    /// cannot be written nothing runs.
    fn finish(&self, out: Out) -> Vec<Effect> {
        let Out {
            m,
            mut effects,
            audit,
        } = out;
        if !self.record(audit) && effects.iter().any(|e| matches!(e, Effect::Execute(_))) {
            effects.retain(|e| !matches!(e, Effect::Execute(_)));
            effects.push(Effect::Send(Outgoing {
                room: m.room.clone(),
                reply_to: Some(m.event_id.clone()),
                thread: m.thread.clone(),
                message: Message::plain(
                    "⚠️ The audit log cannot be written, so nothing runs. Tell an operator.",
                ),
                prompt_for: None,
            }));
        }
        effects
    }

    /// The command in a message addressed to the bot, if it is one: after
    /// the prefix (`!deploy`), after one of the bot's names (`airlock:
    /// deploy`), or after a mention the transport recognised.
    fn command_text(&self, body: &str, addressed: bool) -> Option<String> {
        let b = body.trim_start();
        let lower = b.to_lowercase();
        let after_name = self
            .settings
            .names
            .iter()
            .chain(self.settings.bot_user.as_ref())
            .find(|n| lower.starts_with(&n.to_lowercase()))
            .and_then(|n| {
                let r = &b[n.len()..];
                r.strip_prefix([':', ','])
                    .or_else(|| r.starts_with(char::is_whitespace).then_some(r))
            });
        let rest = if let Some(r) = b.strip_prefix(self.settings.prefix.as_str()) {
            r
        } else if let Some(r) = after_name {
            r
        } else if addressed {
            // A mention pill reads "Display Name: command".
            match b.split_once(':') {
                Some((head, r)) if head.len() <= 64 && !head.contains('\n') => r,
                _ => b,
            }
        } else {
            return None;
        };
        let rest = rest.trim();
        let rest = rest
            .strip_prefix(self.settings.prefix.as_str())
            .unwrap_or(rest)
            .trim();
        (!rest.is_empty()).then(|| alias::normalize_command(rest))
    }

    fn stale(&self, out: &mut Out, what: &str) -> bool {
        let age = now_ms().saturating_sub(out.m.ts_ms);
        if age <= self.settings.max_age.as_millis() as u64 {
            return false;
        }
        out.say(format!(
            "⏱️ Not acting on your {what} from {} ago: anything older than {} is ignored (sent while I was away?). Send it again if it still applies.",
            clock::human(Duration::from_millis(age)),
            clock::human(self.settings.max_age)
        ));
        out.log(Entry::new("ignored_stale").detail(json!({"body": out.m.body, "age_ms": age})));
        true
    }

    fn on_message(&self, out: &mut Out) {
        let m = out.m;
        // A reply to a prompt: the relation decides, never quoted text.
        if let Some(parent) = &m.reply_to
            && let Ok(Some(req)) = self.requests.by_prompt(&m.room, parent)
            && (self.stale(out, "reply") || self.on_prompt_reply(out, &req))
        {
            return;
        }
        let Some(cmd) = self.command_text(&m.body, m.addressed) else {
            return;
        };
        if self.stale(out, "command") {
            return;
        }
        out.log(Entry::new("received").detail(json!({"command": cmd, "event": m.event_id})));
        if cmd.chars().count() > MAX_COMMAND_CHARS {
            out.say(format!(
                "That command is too long (over {MAX_COMMAND_CHARS} characters)."
            ));
            return;
        }
        let (word, args) = match cmd.split_once(char::is_whitespace) {
            Some((w, a)) => (w, a.trim()),
            None => (cmd.as_str(), ""),
        };
        match word {
            "help" => self.builtin_help(out, args),
            "pending" => self.builtin_pending(out),
            "audit" => self.builtin_audit(out, args),
            "cancel" => self.by_id(out, args, Verdict::Cancel),
            "approve" => self.by_id(out, args, Verdict::Approve),
            "deny" => self.by_id(out, args, Verdict::Deny),
            _ => self.run_alias(out, &cmd),
        }
    }

    fn on_edit(&self, out: &mut Out) {
        let m = out.m;
        let original = m.relates_to.clone().unwrap_or_else(|| m.event_id.clone());
        let approving = m
            .reply_to
            .as_ref()
            .is_some_and(|p| matches!(self.requests.by_prompt(&m.room, p), Ok(Some(_))));
        if self.command_text(&m.body, m.addressed).is_none() && !approving {
            return;
        }
        if !self
            .noticed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("edit:{original}"))
        {
            return;
        }
        out.log(Entry::new("ignored_edit").detail(json!({"body": m.body, "edits": original})));
        out.say("✋ Edited messages never run or approve anything. Send the command (or your reply) again as a new message.");
    }

    fn on_undecryptable(&self, out: &mut Out) {
        let m = out.m;
        let key = (m.room.clone(), m.sender.clone());
        let now = now_ms();
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned
            .get(&key)
            .is_some_and(|t| now.saturating_sub(*t) < 300_000)
        {
            return;
        }
        warned.insert(key, now);
        out.log(Entry::new("undecryptable").detail(json!({"event": m.event_id})));
        out.say(format!(
            "⚠️ {}: I could not decrypt your message, so if it was a command it did not run. Check that this device is verified or shares keys with the room, then send it again.",
            m.sender
        ));
    }

    fn on_reaction(&self, out: &mut Out, key: &str) {
        let m = out.m;
        if !self.settings.reaction_approvals {
            return;
        }
        let verdict = match key.trim_end_matches(['\u{fe0f}']) {
            "👍" => Verdict::Approve,
            "👎" => Verdict::Deny,
            _ => return,
        };
        let Some(target) = &m.relates_to else { return };
        if let Ok(Some(req)) = self.requests.by_prompt(&m.room, target) {
            if self.stale(out, "reaction") {
                return;
            }
            self.decide(out, &req, verdict);
        }
    }

    /// Answer a reply to a prompt. Returns false when the reply is not an
    /// answer but a command, to be handled as one; anything else gets a hint.
    fn on_prompt_reply(&self, out: &mut Out, req: &Request) -> bool {
        let body = out.m.body.trim();
        let body = body
            .strip_prefix(self.settings.prefix.as_str())
            .unwrap_or(body);
        let word = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches(['.', '!', ','])
            .to_lowercase();
        let verdict = match word.as_str() {
            "yes" | "y" | "approve" | "approved" | "ok" | "lgtm" | "👍" => Verdict::Approve,
            "no" | "n" | "deny" | "denied" | "reject" | "👎" => Verdict::Deny,
            "cancel" => Verdict::Cancel,
            _ if self.command_text(&out.m.body, out.m.addressed).is_some() => return false,
            _ => {
                out.say(format!(
                    "Reply \"yes\" to approve request {}, \"no\" to deny it, or \"cancel\" if it is yours.",
                    req.id
                ));
                return true;
            }
        };
        out.log(
            Entry::new("received")
                .request(&req.id)
                .detail(json!({"reply": body, "event": out.m.event_id})),
        );
        self.decide(out, req, verdict);
        true
    }

    fn by_id(&self, out: &mut Out, args: &str, verdict: Verdict) {
        let id = args.split_whitespace().next().unwrap_or_default();
        if verdict == Verdict::Cancel && !self.gate(out, "cancel") {
            return;
        }
        match self.requests.get(id) {
            Ok(Some(req)) => self.decide(out, &req, verdict),
            _ => out.say(format!("There is no request \"{id}\".")),
        }
    }

    // ------------------------------------------------------------ aliases

    fn subject<'a>(&self, m: &'a Incoming) -> Subject<'a> {
        Subject {
            user: &m.sender,
            room: &m.room,
            power_level: m.power_level,
        }
    }

    fn run_alias(&self, out: &mut Out, cmd: &str) {
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
            self.request(out, &alias, cmd, params);
        }
    }

    /// One execution of an alias: parameters, policy, then confirmation or run.
    fn request(&self, out: &mut Out, alias: &Arc<Alias>, cmd: &str, parsed: Params) {
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
        let decision = self.policy().decide(&self.subject(m), &target, &params);
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
    fn accept(&self, out: &mut Out, req: &Request, alias: &Alias) {
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

    fn prompt(&self, req: &Request, now: u64) -> Message {
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

    // ------------------------------------------------------------ confirmation

    /// Whether `user` may approve or deny `req`.
    fn may_decide(
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
            .decide(&who, &target, &req.params)
            .is_allowed()
        {
            Ok(())
        } else {
            Err("you may not run this command here, so you cannot approve it".into())
        }
    }

    fn decide(&self, out: &mut Out, req: &Request, verdict: Verdict) {
        let m = out.m;
        let user = m.sender.as_str();
        if req.room != m.room {
            out.say(format!(
                "Request {} belongs to another room; answer it there.",
                req.id
            ));
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
            Ok(Update::Done(r, what)) => (r, what),
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
                out.effects.push(Effect::Send(reply_to_request(
                    &req,
                    Message::plain(format!(
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
                    )),
                )));
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

    // ------------------------------------------------------------ execution

    /// Run an approved request. Blocks for as long as the action runs, so
    /// transports call it off their event loop. A request that is not
    /// `approved` (already running, or run) is left alone: exactly once.
    pub fn execute(&self, id: &str) -> Vec<Effect> {
        let started = now_ms();
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
        // Resolve the alias before running: an uninstall may remove it.
        let alias = req
            .alias
            .as_deref()
            .and_then(|a| self.aliases().get(a).cloned());
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
        let finished = now_ms();
        let state = match (outcome.status, interrupted) {
            (_, true) => State::Interrupted,
            (Status::Succeeded, _) => State::Succeeded,
            (Status::Failed, _) => State::Failed,
        };
        let req = match self.requests.update(id, |r| {
            r.state = state;
            r.result = Some(outcome.result.clone());
            r.summary = Some(outcome.summary.clone());
            r.finished_ms = Some(finished);
            Ok(())
        }) {
            Ok(Update::Done(r, ())) => r,
            _ => req,
        };
        let mut detail = json!({"summary": outcome.summary, "elapsed_ms": finished - started});
        if let Some(c) = &outcome.commit {
            detail["commit"] = json!(c);
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
        if outcome.packs_changed {
            self.reload_aliases();
        }
        let execution = execution_view(&req, &outcome, started, finished);
        let mut fx = Vec::new();
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

    // ------------------------------------------------------------ built-ins

    /// Whether the sender may use a built-in here; says why not if not.
    fn gate(&self, out: &mut Out, builtin: &str) -> bool {
        let m = out.m;
        let d = self
            .policy()
            .decide(&self.subject(m), &Target::Builtin(builtin), &Params::new());
        if let Decision::Deny { rule, reason } = d {
            out.log(
                Entry::new("denied")
                    .rule(rule.as_deref())
                    .status("denied")
                    .detail(json!({"builtin": builtin, "reason": reason})),
            );
            out.say(format!("🚫 Refused: {reason}."));
            return false;
        }
        true
    }

    fn builtin_help(&self, out: &mut Out, filter: &str) {
        if !self.gate(out, "help") {
            return;
        }
        let m = out.m;
        let who = self.subject(m);
        let policy = self.policy();
        let p = &self.settings.prefix;
        let mut lines = Vec::new();
        for e in self.aliases().help(Some(filter)) {
            let target = Target::Alias {
                reference: &e.reference,
                pack: &e.pack,
                action_ref: &e.action_ref,
            };
            if policy.may_use(&who, &target) {
                lines.push(
                    match e
                        .description
                        .as_deref()
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                    {
                        Some(d) => format!("{p}{} — {d}", e.display),
                        None => format!("{p}{}", e.display),
                    },
                );
            }
        }
        let builtins: Vec<String> = [
            ("help", "help [filter]"),
            ("pending", "pending"),
            ("audit", "audit [n] | audit who deployed <pack>"),
            ("cancel", "cancel <id>"),
        ]
        .iter()
        .filter(|(b, _)| policy.may_use(&who, &Target::Builtin(b)))
        .map(|(_, usage)| format!("{p}{usage}"))
        .collect();
        let mut text = if lines.is_empty() {
            "There are no commands you may run in this room.".to_string()
        } else {
            format!("Commands you may run here:\n{}", lines.join("\n"))
        };
        text.push_str(&format!(
            "\nBuilt-in: {}\nTo answer a confirmation, reply \"yes\" or \"no\" to its message (or {p}approve <id> / {p}deny <id>).",
            builtins.join(", ")
        ));
        out.log(
            Entry::new("help")
                .status("ok")
                .detail(json!({"commands": lines.len()})),
        );
        out.say(text);
    }

    fn builtin_pending(&self, out: &mut Out) {
        if !self.gate(out, "pending") {
            return;
        }
        let now = now_ms();
        let open: Vec<Request> = self
            .requests
            .open_requests()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.room == out.m.room)
            .collect();
        out.log(
            Entry::new("pending")
                .status("ok")
                .detail(json!({"open": open.len()})),
        );
        if open.is_empty() {
            return out.say("No open requests in this room.");
        }
        let lines: Vec<String> = open.iter().map(|r| pending_line(r, now)).collect();
        out.say(format!("Open requests:\n{}", lines.join("\n")));
    }

    fn builtin_audit(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "audit") {
            return;
        }
        let room = out.m.room.clone();
        if let Some(pack) = args.strip_prefix("who deployed").map(str::trim) {
            let text = who_deployed(&self.audit, &self.requests, pack, Some(&room));
            out.log(
                Entry::new("audit")
                    .status("ok")
                    .detail(json!({"query": args})),
            );
            return out.say(text);
        }
        let n = if args.is_empty() {
            Ok(10)
        } else {
            args.parse::<usize>()
        };
        let Ok(n) = n else {
            return out.say("Usage: audit [n] or audit who deployed <pack>");
        };
        let q = Query {
            room: Some(room),
            limit: Some(n.clamp(1, 50)),
            ..Default::default()
        };
        out.log(
            Entry::new("audit")
                .status("ok")
                .detail(json!({"query": args})),
        );
        match self.audit.query(&q) {
            Ok(entries) if entries.is_empty() => {
                out.say("The audit log has nothing for this room yet.")
            }
            Ok(entries) => {
                let lines: Vec<String> = entries.iter().map(Entry::summary_line).collect();
                out.reply(Message::from_template_output(&format!(
                    "Last {} audit entries for this room:{{~}}{}",
                    entries.len(),
                    lines.join("\n")
                )));
            }
            Err(e) => out.say(format!("⚠️ Cannot read the audit log: {e}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
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

/// Who deployed `pack`, when, at which commit, approved by whom
/// (newest first). `room` limits it to one room.
pub fn who_deployed(
    audit: &AuditLog,
    requests: &Requests,
    pack: &str,
    room: Option<&str>,
) -> String {
    let mut entries = Vec::new();
    for action in ["packs.install", "packs.rollback"] {
        let q = Query {
            action: Some(action.into()),
            room: room.map(str::to_string),
            event: Some("finished".into()),
            ..Default::default()
        };
        match audit.query(&q) {
            Ok(mut e) => entries.append(&mut e),
            Err(e) => return format!("⚠️ Cannot read the audit log: {e}"),
        }
    }
    entries.sort_by_key(|e| e.seq);
    let mut lines = Vec::new();
    for e in entries.iter().rev() {
        let Some(id) = &e.request else { continue };
        let Ok(Some(req)) = requests.get(id) else {
            continue;
        };
        let names_pack = match req.action.as_str() {
            "packs.rollback" => req.params.get("pack").and_then(Value::as_str) == Some(pack),
            _ => req
                .params
                .get("resolved")
                .and_then(Value::as_array)
                .is_some_and(|srcs| srcs.iter().any(|s| s["pack"] == pack)),
        };
        if !names_pack {
            continue;
        }
        let approvers: Vec<&str> = req.approvals.iter().map(|a| a.user.as_str()).collect();
        lines.push(format!(
            "{} {} {} by {}{} at {} — {} [request {}]",
            clock::format_ms(e.ts),
            if req.action == "packs.rollback" {
                "rolled back"
            } else {
                "deployed"
            },
            pack,
            req.requester,
            if approvers.is_empty() {
                String::new()
            } else {
                format!(" (approved by {})", approvers.join(", "))
            },
            e.detail
                .get("commit")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            e.status.as_deref().unwrap_or("?"),
            req.id,
        ));
    }
    if lines.is_empty() {
        format!("No deployments of {pack} in the audit log.")
    } else {
        format!("Deployments of {pack}, newest first:\n{}", lines.join("\n"))
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
        .into_iter()
        .map(|parsed| {
            let params = execution_params(&alias, spec, who, parsed)?;
            let explanation = policy.explain(who, &target, &params);
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

/// An audit entry about a request (its room, requester, alias, action).
fn request_entry(event: &str, req: &Request) -> Entry {
    Entry::new(event)
        .room(&req.room)
        .sender(&req.requester)
        .request(&req.id)
        .alias(req.alias.as_deref())
        .action(&req.action)
}

fn reply_to_request(req: &Request, message: Message) -> Outgoing {
    Outgoing {
        room: req.room.clone(),
        reply_to: Some(req.event_id.clone()),
        thread: req.thread.clone(),
        message,
        prompt_for: None,
    }
}

fn react_request(req: &Request, key: &'static str) -> Effect {
    Effect::React {
        room: req.room.clone(),
        event_id: req.event_id.clone(),
        key,
    }
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

pub fn pending_line(r: &Request, now: u64) -> String {
    let params: Vec<String> = r
        .params
        .iter()
        .filter(|(k, _)| *k != "resolved")
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    let mut s = format!(
        "{} {} {} by {} in {} ({})",
        r.id,
        r.state.name(),
        r.alias.as_deref().unwrap_or(&r.action),
        r.requester,
        r.room,
        params.join(" ")
    );
    if r.state == State::Pending {
        s.push_str(&format!(
            " — {}/{} approvals, expires in {}",
            r.approvals.len(),
            r.approvals_needed(),
            clock::human(r.expires_in(now).unwrap_or_default())
        ));
    }
    s
}

/// st2's `execution` as result templates see it.
fn execution_view(req: &Request, outcome: &Outcome, started: u64, finished: u64) -> Value {
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
        "elapsed_seconds": (finished - started) as f64 / 1000.0,
        "web_url": Value::Null,
    })
}
