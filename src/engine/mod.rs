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
//!
//! This file holds the types and the dispatch of incoming events;
//! `request` turns a matched alias into a request, `approval` answers
//! confirmations, `run` executes and expires requests, `builtins` are
//! help, pending and audit.

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
use crate::diag::Diagnostic;
use crate::policy::{self, Decision, Policy, Subject, Target};
use crate::render::{self, Message};
use crate::requests::{Approval, Confirmation, Request, Requests, State, Update};

mod approval;
mod builtins;
mod request;
mod run;

use approval::Verdict;
pub use builtins::{pending_line, who_deployed};
pub use request::{Evaluation, evaluate, execution_params, params_text};

/// Status reactions on a command.
pub const SEEN: &str = "👀";
pub const WAITING: &str = "⏳";
pub const SUCCEEDED: &str = "✅";
pub const FAILED: &str = "❌";

/// Longest command the bot will try to match.
const MAX_COMMAND_CHARS: usize = 4000;

/// sled's page cache (its default is 1 GiB): the bot reads little beyond
/// recent entries, and a long-running process should not grow toward that.
const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;

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

impl Engine {
    /// Open the store under `data_dir`, load policy and aliases, and settle
    /// requests left open by the previous run.
    pub fn open(settings: Settings) -> Result<Engine, StartError> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| StartError::Database(settings.data_dir.clone(), e.to_string()))?;
        let db_path = settings.data_dir.join("airlock.sled");
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(SLED_CACHE_BYTES)
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
        // Settle the last run first: a pack switch it finished changes
        // which aliases are live.
        engine.recover();
        engine.reload_aliases();
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

    /// Settle what the previous process left open. A request it died
    /// running is finished from what its action made durable (a pack
    /// switch that happened is a deploy that happened); otherwise it, and
    /// any approved but not started, is marked interrupted, never silently
    /// re-run. A pending request whose prompt may never have been sent gets
    /// it sent again. The room is told each time.
    fn recover(&self) {
        let open = self.requests.open_requests().unwrap_or_default();
        for req in open.iter().filter(|r| r.state == State::Running) {
            if let Some(fx) = self.recover_run(req) {
                self.startup
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(fx);
            }
        }
        self.packs.forget_switches(None);
        let now = now_ms();
        for req in open
            .iter()
            .filter(|r| r.state == State::Pending && r.prompt_event.is_none())
        {
            self.startup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Effect::Send(Outgoing {
                    room: req.room.clone(),
                    reply_to: Some(req.event_id.clone()),
                    thread: req.thread.clone(),
                    message: self.prompt(req, now),
                    prompt_for: Some(req.id.clone()),
                }));
        }
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
        if self.settings.bot_user.as_deref() == Some(m.sender.as_str())
            || !crate::ids::is_user_id(&m.sender)
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
        let Some(cmd) = command_text(&self.settings, &m.body, m.addressed) else {
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
        if command_text(&self.settings, &m.body, m.addressed).is_none() && !approving {
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
            _ if command_text(&self.settings, &out.m.body, out.m.addressed).is_some() => {
                return false;
            }
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
            _ => out.say(approval::unknown_request(id)),
        }
    }
}

/// The command in a message addressed to the bot, if it is one: after
/// the prefix (`!deploy`), after one of the bot's names (`airlock:
/// deploy`), or after a mention the transport recognised.
pub fn command_text(settings: &Settings, body: &str, addressed: bool) -> Option<String> {
    let b = body.trim_start();
    let after_name = settings
        .names
        .iter()
        .chain(settings.bot_user.as_ref())
        .find_map(|n| strip_prefix_caseless(b, n))
        .and_then(|r| {
            r.strip_prefix([':', ','])
                .or_else(|| r.starts_with(char::is_whitespace).then_some(r))
        });
    let rest = if let Some(r) = b.strip_prefix(settings.prefix.as_str()) {
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
        .strip_prefix(settings.prefix.as_str())
        .unwrap_or(rest)
        .trim();
    (!rest.is_empty()).then(|| alias::normalize_command(rest))
}

/// `text` after `prefix`, compared without case. The rest is sliced where
/// the original text's own characters end: a length taken from a lowercased
/// copy would be wrong (and can split a character) when lowercasing changes
/// a character's byte length, as for the Kelvin sign.
pub fn strip_prefix_caseless<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let mut rest = text.char_indices();
    for p in prefix.chars() {
        let (_, t) = rest.next()?;
        if !t.to_lowercase().eq(p.to_lowercase()) {
            return None;
        }
    }
    Some(rest.as_str())
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
