//! The engine: chat events in, effects out. It is sans-I/O in the sense
//! that matters for testing and for transports:
//!
//! * **time is an input**: every entry point takes `now` (ms since the
//!   epoch), or a clock function where an action runs for a while
//!   ([`Engine::execute`], [`Engine::prepare`]); nothing in `engine/`
//!   reads a clock;
//! * **stores, actions and the alias/policy catalog are injected** through
//!   [`Engine::builder`]; `engine/` opens no file, database or socket
//!   (the composition root is [`crate::config::Config::open`]);
//! * **slow work is handed back as effects**: [`Effect::Prepare`] (an
//!   action resolving what will run, such as `git ls-remote` for an
//!   install) and [`Effect::Execute`] are run by the transport off its
//!   event loop, and answered with [`Engine::prepare`] and
//!   [`Engine::execute`], which call the injected action.
//!
//! What it does do: it reads and writes its injected stores (the audit log
//! flushes before effects are released, so nothing runs unrecorded).
//!
//! The pipeline, file by file: `events` (an event in: which kind, is it a
//! command, is it stale), `request` (match → policy → prepare → prompt or
//! accept), `approval` (answers to prompts), `run` (execute, expire,
//! recover), `builtins` (help, pending, audit).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use crate::action::executor::{Embedded, Executor};
use crate::action::{Action, Actions};
use crate::alias::{self, AliasSet, Params};
use crate::audit::{AuditLog, Entry, Event, Query};
use crate::diag::Diagnostic;
use crate::metrics::Metrics;
use crate::policy::{self, Policy, Subject, Target};
use crate::render::Message;
use crate::requests::{Request, Requests, State};

mod approval;
mod builtins;
mod checkpoints;
mod deploys;
mod events;
mod explain;
mod inquiry;
mod locks;
mod notices;
mod outcome;
mod plan;
mod prompt;
mod protocol;
mod recheck;
mod request;
mod run;
mod web;

use checkpoints::Checkpoints;

pub use builtins::{pending_line, who_deployed};
pub use checkpoints::ChainCheck;
pub use events::{command_text, strip_prefix_caseless};
pub use explain::{Explained, explain};
pub use notices::{Kind as NoticeKind, Notice, Notify};
pub use prompt::params_text;
pub use protocol::*;
pub use request::{Evaluation, evaluate, execution_params};
pub use web::{
    AUDIT_DOWNLOAD, AUDIT_PAGE, DEPLOY_PAGE, Web, WebApproval, WebAudit, WebAuditLine,
    WebAuditState, WebCommit, WebDeploy, WebEntry, WebLock, WebOverview, WebParam, WebPlan,
    WebRequest, WebRow, WebStream,
};

/// Time as the engine reads it where no entry point hands it in (a
/// question a running action asks): ms since the epoch. The bot passes
/// [`crate::wall::now_ms`]; tests, their own clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A notification target is set up wrong (or its secret is missing).
    #[error("{0}")]
    Notify(String),
    /// The database could not be opened.
    #[error("cannot open the database in {0}: {1}")]
    Database(std::path::PathBuf, String),
    /// The policy has errors; nothing runs with half a policy.
    #[error("the policy has errors:\n{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<Diagnostic>),
    /// The packs directory could not be set up.
    #[error("{0}")]
    Packs(String),
    /// The web view is set up wrong.
    #[error("{0}")]
    Web(String),
}

/// Where aliases and the policy come from (files, in the bot; anything, in
/// a test). Asked again on every reload.
pub trait Catalog: Send + Sync {
    /// Every alias, with the problems found loading them.
    fn aliases(&self) -> alias::load::Loaded;
    /// The policy, with the problems found loading it.
    fn policy(&self) -> policy::LoadedPolicy;
    /// The actions packs bring, with the problems found loading them.
    fn actions(&self) -> (Vec<Arc<dyn Action>>, Vec<Diagnostic>) {
        (Vec::new(), Vec::new())
    }
}

/// A catalog that is what it was built with.
impl Catalog for (Vec<alias::Alias>, Policy) {
    fn aliases(&self) -> alias::load::Loaded {
        alias::load::Loaded {
            aliases: self.0.clone(),
            diagnostics: Vec::new(),
        }
    }

    fn policy(&self) -> policy::LoadedPolicy {
        policy::LoadedPolicy {
            policy: self.1.clone(),
            diagnostics: Vec::new(),
        }
    }
}

/// Answers and audit entries gathered while handling one event.
struct Out<'a> {
    m: &'a Incoming,
    now: u64,
    effects: Vec<Effect>,
    audit: Vec<Entry>,
}

impl<'a> Out<'a> {
    fn new(m: &'a Incoming, now: u64) -> Self {
        Out {
            m,
            now,
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
        let r = self.reaction(key);
        self.effects.push(r);
    }

    /// Reaction `key` on this event.
    fn reaction(&self, key: &'static str) -> Effect {
        Effect::React {
            room: self.m.room.clone(),
            event_id: self.m.event_id.clone(),
            key,
        }
    }

    /// A new audit entry at this event's time.
    fn entry(&self, event: Event) -> Entry {
        Entry::new(event, self.now)
    }

    /// Record an audit entry about this event (room and sender filled in).
    fn log(&mut self, e: Entry) {
        self.audit.push(e.room(&self.m.room).sender(&self.m.sender));
    }
}

/// Builds an [`Engine`] from its parts: the composition root chooses the
/// stores, the actions and the catalog.
pub struct EngineBuilder {
    settings: Settings,
    audit: AuditLog,
    requests: Requests,
    clock: Clock,
    actions: Actions,
    executor: Arc<dyn Executor>,
    catalog: Arc<dyn Catalog>,
    metrics: Arc<Metrics>,
    notifier: Option<Arc<dyn Notify>>,
    web: Option<Web>,
}

impl EngineBuilder {
    /// The web view's sign-in (`!web`); off by default.
    pub fn web(mut self, web: Option<Web>) -> Self {
        self.web = web;
        self
    }

    /// Who it tells of break-glass runs and failures (nobody by default).
    pub fn notifier(mut self, notifier: Option<Arc<dyn Notify>>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Where it counts what it does (its own by default).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The actions it can run (none by default).
    pub fn actions(mut self, actions: Actions) -> Self {
        self.actions = actions;
        self
    }

    /// What runs approved requests (in this process by default).
    pub fn executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executor = executor;
        self
    }

    /// Where aliases and the policy come from (empty by default).
    pub fn catalog(mut self, catalog: Arc<dyn Catalog>) -> Self {
        self.catalog = catalog;
        self
    }

    /// Load aliases and policy, settle what the last run left open, and
    /// return the engine (`now` for the recovery's records).
    pub fn build(self, now: u64) -> Result<Engine, StartError> {
        let loaded = self.catalog.policy();
        if loaded.has_errors() {
            return Err(StartError::Policy(loaded.diagnostics));
        }
        for d in &loaded.diagnostics {
            tracing::warn!("{d}");
        }
        let engine = Engine {
            settings: self.settings,
            audit: self.audit,
            requests: self.requests,
            clock: self.clock,
            builtin: self.actions.clone(),
            actions: RwLock::new(Arc::new(self.actions)),
            executor: self.executor,
            catalog: self.catalog,
            metrics: self.metrics,
            notifier: self.notifier,
            web: self.web,
            aliases: RwLock::new(Arc::new(AliasSet::default())),
            policy: RwLock::new(Arc::new(loaded.policy)),
            noticed: Mutex::new(HashSet::new()),
            warned: Mutex::new(HashMap::new()),
            cancel: Arc::new(AtomicBool::new(false)),
            checkpoints: Mutex::new(Checkpoints::default()),
            outbox: Arc::default(),
            startup: Mutex::new(Vec::new()),
            seal_error: Mutex::new(None),
            write_error: Mutex::new(None),
        };
        engine.reload_actions();
        // Settle the last run first: a pack switch it finished changes
        // which aliases are live.
        engine.recover(now);
        engine.reload_aliases();
        // What a sealing cut short left, or a log from before segments,
        // is sealed now; its seal checkpoints go out once connected.
        let sealed = engine.seal(now);
        engine
            .startup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(sealed);
        Ok(engine)
    }
}

/// The bot's core. Shared between threads; every method takes `&self`.
pub struct Engine {
    settings: Settings,
    audit: AuditLog,
    requests: Requests,
    clock: Clock,
    /// The built-in actions, and those with the packs' actions added.
    builtin: Actions,
    actions: RwLock<Arc<Actions>>,
    /// What runs approved requests.
    executor: Arc<dyn Executor>,
    catalog: Arc<dyn Catalog>,
    /// What it counts, derived from the audit entries it writes.
    metrics: Arc<Metrics>,
    /// Who is told of break-glass runs and failures (`notify:`).
    notifier: Option<Arc<dyn Notify>>,
    /// The web view's sign-in, when it is on.
    web: Option<Web>,
    aliases: RwLock<Arc<AliasSet>>,
    policy: RwLock<Arc<Policy>>,
    /// Edits already answered, and when undecryptable-message warnings were
    /// last sent per (room, sender): say each once, not on every event.
    noticed: Mutex<HashSet<String>>,
    warned: Mutex<HashMap<(String, String), u64>>,
    /// Set on shutdown; running actions stop at their next safe point, and
    /// so does a question they wait on (shared with the inquirers).
    cancel: Arc<AtomicBool>,
    /// Audit checkpoints known to be in the audit room, and when the last
    /// was posted.
    checkpoints: Mutex<Checkpoints>,
    /// Effects produced off any event (a running action's question), for
    /// the next `tick` to hand out.
    outbox: Arc<Mutex<Vec<Effect>>>,
    startup: Mutex<Vec<Effect>>,
    /// Why the last sealing failed, while it keeps failing (`/healthz`).
    seal_error: Mutex<Option<String>>,
    /// Why the last audit write failed, until one succeeds (`/healthz`).
    write_error: Mutex<Option<String>>,
}

impl Engine {
    /// The engine's time, ms since the epoch: what a transport with no
    /// event time of its own (the HTTP listener) hands back in, so a
    /// sign-in link expires by the same clock that issued it.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// An engine over these stores and this clock; see [`EngineBuilder`].
    pub fn builder(
        settings: Settings,
        audit: AuditLog,
        requests: Requests,
        clock: Clock,
    ) -> EngineBuilder {
        EngineBuilder {
            settings,
            clock,
            audit,
            requests,
            actions: Actions::default(),
            executor: Arc::new(Embedded::default()),
            catalog: Arc::new((Vec::new(), Policy::default())),
            metrics: Arc::new(Metrics::new()),
            notifier: None,
            web: None,
        }
    }

    /// What it counts (`/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus text exposition, pending requests counted now.
    pub fn render_metrics(&self) -> String {
        let pending = self
            .requests
            .open_requests()
            .map(|v| v.iter().filter(|r| r.state == State::Pending).count())
            .unwrap_or(0);
        self.metrics.render(pending)
    }

    /// Why nothing new may be written: the disk's free space is under
    /// the reserve (None: it is not).
    pub fn disk_low(&self) -> Option<String> {
        let (dir, reserve) = self.settings.reserve.as_ref()?;
        let free = crate::store::free_bytes(dir).ok()?;
        (free < *reserve).then(|| {
            format!(
                "No space left on device: the disk holding {} has {:.1} MB free, under the {} MB kept in reserve",
                dir.display(),
                free as f64 / 1e6,
                reserve / 1_000_000
            )
        })
    }

    /// Whether the stores answer: `Err` says which does not.
    pub fn stores_ok(&self) -> Result<(), String> {
        if let Some(why) = self.disk_low() {
            return Err(why);
        }
        self.requests
            .open_requests()
            .map_err(|e| format!("request store: {e}"))?;
        self.audit
            .query(&Query {
                limit: Some(1),
                ..Query::default()
            })
            .map_err(|e| format!("audit log: {e}"))?;
        if let Some(e) = &*self.write_error.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(format!("the audit log cannot be written: {e}"));
        }
        match &*self.seal_error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(format!(
                "sealing the audit log fails, and is tried again: {e}"
            )),
            None => Ok(()),
        }
    }

    /// How it answers.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The audit log it writes.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// The request store.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// The aliases now loaded.
    pub fn aliases(&self) -> Arc<AliasSet> {
        self.aliases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The policy now in force.
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

    /// The action called `reference`.
    pub fn action(&self, reference: &str) -> Option<Arc<dyn Action>> {
        self.actions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(reference)
            .cloned()
    }

    /// Reload the packs' actions from the catalog.
    pub fn reload_actions(&self) {
        let (found, diagnostics) = self.catalog.actions();
        for d in &diagnostics {
            tracing::warn!("{d}");
        }
        let mut actions = self.builtin.clone();
        for a in found {
            // A pack cannot replace a built-in action.
            if self.builtin.get(&a.spec().reference).is_none() {
                actions.add(a);
            }
        }
        *self.actions.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(actions);
    }

    /// Reload the aliases (and the packs' actions) from the catalog.
    pub fn reload_aliases(&self) {
        self.reload_actions();
        let loaded = self.catalog.aliases();
        for d in &loaded.diagnostics {
            tracing::warn!("{d}");
        }
        *self.aliases.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(AliasSet::new(loaded.aliases));
    }

    /// Reload aliases, packs' actions and the policy (SIGHUP), then
    /// re-check pending requests ([`Self::recheck_pending`]): what to tell
    /// their rooms. On policy errors the current policy stays and the
    /// errors are returned.
    pub fn reload(&self, now: u64) -> Result<Vec<Effect>, Vec<Diagnostic>> {
        self.reload_aliases();
        let policy = self.reload_policy();
        let fx = self.recheck_pending(now);
        policy.map(|()| fx)
    }

    /// Reload the policy from the catalog; on errors the current one stays
    /// and the errors are returned.
    pub fn reload_policy(&self) -> Result<(), Vec<Diagnostic>> {
        let loaded = self.catalog.policy();
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
        let mut failing = self.write_error.lock().unwrap_or_else(|e| e.into_inner());
        match self.audit.append(entries) {
            Ok(written) => {
                *failing = None;
                written.iter().for_each(|e| self.metrics.observe(e));
                self.notify(&written);
                true
            }
            Err(e) => {
                tracing::error!("audit log write failed: {e}");
                *failing = Some(e.to_string());
                false
            }
        }
    }

    /// Write the audit entries, then release the effects. If the audit
    /// cannot be written nothing runs.
    fn finish(&self, out: Out) -> Vec<Effect> {
        let Out {
            m,
            mut effects,
            audit,
            ..
        } = out;
        let runs = |e: &Effect| matches!(e, Effect::Execute(_) | Effect::Prepare(_));
        if !self.record(audit) && effects.iter().any(runs) {
            // Nothing of this command goes ahead, and nothing says it will
            // (an ack would promise a run).
            effects.clear();
            let why = self
                .write_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            effects.push(Effect::Send(Outgoing {
                room: m.room.clone(),
                reply_to: Some(m.event_id.clone()),
                thread: m.thread.clone(),
                message: Message::plain(format!(
                    "⚠️ The audit log cannot be written ({why}), so nothing runs. Tell an operator; airlock goes on by itself once it can write again."
                )),
                prompt_for: None,
            }));
        }
        effects
    }
}

/// An audit entry about a request (its room, requester, alias, action).
fn request_entry(event: Event, req: &Request, now: u64) -> Entry {
    Entry::new(event, now)
        .room(&req.room)
        .sender(&req.requester)
        .request(&req.id)
        .alias(req.alias.as_deref())
        .action(&req.action)
}

impl Engine {
    /// A `chatops.post_message` announcement from StackStorm's stream
    /// (`st2.announcement__chatops`: `channel`, `message`), judged as
    /// `as_user`: posted only where the policy lets that identity use the
    /// `announce` built-in; recorded either way.
    pub fn announce(&self, as_user: &str, event: &serde_json::Value, now: u64) -> Vec<Effect> {
        let channel = event["channel"].as_str().unwrap_or_default();
        let message = event["message"].as_str().unwrap_or_default();
        let policy = self.policy();
        // A channel may be a room alias the transport resolved.
        let room = policy
            .resolved_room_aliases()
            .get(channel)
            .map(String::as_str)
            .unwrap_or(channel);
        let who = Subject {
            user: as_user,
            room,
            power_level: None,
            at: now,
        };
        let decision = policy.decide(
            &who,
            &Target::Builtin("announce"),
            &Params::new(),
            &crate::policy::FromChat::default(),
        );
        let entry = Entry::new(Event::Announced, now)
            .room(room)
            .sender(as_user)
            .rule(decision.rule());
        if let policy::Decision::Deny { reason, .. } = decision {
            tracing::warn!("StackStorm announcement to {channel} refused: {reason}");
            self.record(vec![
                entry
                    .status(crate::audit::Status::Denied)
                    .detail(serde_json::json!({"channel": channel, "reason": reason})),
            ]);
            return Vec::new();
        }
        if message.is_empty() || !crate::ids::is_room(room) {
            return Vec::new();
        }
        if !self.record(vec![
            entry
                .status(crate::audit::Status::Ok)
                .detail(serde_json::json!({"channel": channel, "message": message})),
        ]) {
            return Vec::new();
        }
        vec![Effect::Send(Outgoing {
            room: room.to_string(),
            reply_to: None,
            thread: None,
            message: Message::plain(format!("📣 StackStorm: {message}")),
            prompt_for: None,
        })]
    }
}

/// What the policy is asked about for `req`.
fn request_target(req: &Request) -> Target<'_> {
    let reference = req.alias.as_deref().unwrap_or(&req.action);
    Target::Alias {
        reference,
        pack: reference.split('.').next().unwrap_or_default(),
        action_ref: &req.action,
    }
}

/// Who asked for `req`, asking again at `at`.
fn request_subject(req: &Request, at: u64) -> Subject<'_> {
    Subject {
        user: &req.requester,
        room: &req.room,
        power_level: req.power_level,
        at,
    }
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

/// The command as it stood when the request was made, as an event to
/// answer: replies after a prepare or a restart go to it.
fn request_event(req: &Request, now: u64) -> Incoming {
    Incoming {
        thread: req.thread.clone(),
        ..Incoming::message(&req.requester, &req.room, &req.event_id, &req.command, now)
    }
}
