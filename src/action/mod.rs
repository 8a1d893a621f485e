//! Actions: what an alias's `action_ref` runs.
//!
//! Each action declares its parameters the way st2's action metadata does
//! (name, type, required, default). The engine validates a request's
//! parameters against that schema, lets the action `prepare` them when the
//! request is made (packs.install pins a git ref to a commit there), and
//! runs exactly the prepared parameters once the request is approved.
//! An alias whose action is not here is refused when it is used, never run.

pub mod core;
pub mod executor;
pub mod metadata;
pub mod packs;
pub mod runners;
pub mod st2;
pub mod temporal;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::alias::Params;
use crate::alias::cast::{self, ParamType};

/// One parameter of an action, as st2's action metadata declares it.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Its name.
    pub name: String,
    /// Its type, which chat values are cast to; None: any value.
    pub ty: Option<ParamType>,
    /// Whether a request must give it.
    pub required: bool,
    /// Its value when not given (a string default may be a template over
    /// the other parameters and `config_context`).
    pub default: Option<Value>,
    /// What it is for.
    pub description: String,
    /// The values it may take (`enum`); empty: any.
    pub allowed: Vec<Value>,
    /// Its place among a script's positional arguments.
    pub position: Option<u64>,
    /// Its value is the default and cannot be given.
    pub immutable: bool,
    /// Its value is masked wherever a person or a file could see it.
    pub secret: bool,
}

impl ParamSpec {
    /// An optional parameter without a default.
    pub fn new(name: &str, ty: ParamType, description: &str) -> Self {
        ParamSpec {
            name: name.to_string(),
            ty: Some(ty),
            required: false,
            default: None,
            description: description.to_string(),
            allowed: Vec::new(),
            position: None,
            immutable: false,
            secret: false,
        }
    }

    /// Mark it required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Give it a default.
    pub fn default(mut self, v: Value) -> Self {
        self.default = Some(v);
        self
    }

    /// Whether its default is a template, rendered when a request is made.
    pub fn templated_default(&self) -> bool {
        matches!(&self.default, Some(Value::String(s)) if is_template(s))
    }
}

/// st2 renders a string as Jinja when it contains `{{` or `{%`.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// An action's schema: its reference and parameters.
#[derive(Debug, Clone)]
pub struct ActionSpec {
    /// `pack.action`.
    pub reference: String,
    /// What it is for.
    pub description: String,
    /// Its parameters, in order.
    pub params: Vec<ParamSpec>,
    /// The engine that runs it checks its parameters (StackStorm): any
    /// name passes here, uncast, and nothing is filled in.
    pub open: bool,
    /// Parameters that change how it runs rather than what it works on (a
    /// runner's `env`, `cwd`, `sudo`, `timeout`…): chat sets them only
    /// where a policy rule names them.
    pub controls: Vec<String>,
    /// Parameters that become a command's arguments (in a `cmd` template,
    /// or positional): a chat value starting with `-` there is an option.
    pub arguments: Vec<String>,
}

/// The parameters of StackStorm's runners that change how an action runs
/// (`runner.yaml` of local, remote, python and http runners): what an
/// action run elsewhere (StackStorm, a Temporal worker) may take.
pub const RUNNER_CONTROLS: &[&str] = &[
    "env",
    "cwd",
    "sudo",
    "sudo_password",
    "timeout",
    "kwarg_op",
    "hosts",
    "username",
    "password",
    "private_key",
    "passphrase",
    "port",
    "bastion_host",
    "parallel",
    "dir",
    "debug",
    "log_level",
    "content_version",
    "headers",
    "cookies",
    "http_proxy",
    "https_proxy",
    "verify_ssl_cert",
    "allow_redirects",
    "url_hosts_blacklist",
    "url_hosts_whitelist",
];

impl ActionSpec {
    /// An action with these parameters.
    pub fn new(reference: &str, description: &str, params: Vec<ParamSpec>) -> Self {
        ActionSpec {
            reference: reference.to_string(),
            description: description.to_string(),
            params,
            open: false,
            controls: Vec::new(),
            arguments: Vec::new(),
        }
    }

    /// An action whose parameters the engine running it checks.
    pub fn open(reference: &str, description: &str) -> Self {
        ActionSpec {
            open: true,
            controls: RUNNER_CONTROLS.iter().map(|s| s.to_string()).collect(),
            ..ActionSpec::new(reference, description, Vec::new())
        }
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The type of parameter `name`.
    pub fn type_of(&self, name: &str) -> Option<ParamType> {
        self.param(name).and_then(|p| p.ty)
    }

    /// Check `params` against the schema: nulls dropped (a regex group that
    /// did not match means "not given"), unknown names refused, immutable
    /// and secret ones refused (a secret given in chat is already seen by
    /// the room), strings cast, types and `enum` checked, required ones
    /// present, defaults filled in. Templated defaults are left as they
    /// are, for the action to render.
    pub fn validate(&self, params: Params) -> Result<Params, String> {
        if self.open {
            return Ok(params.into_iter().filter(|(_, v)| !v.is_null()).collect());
        }
        let unknown: Vec<&str> = params
            .keys()
            .filter(|k| self.param(k).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "unknown parameter{} for {}: {} (it takes: {})",
                if unknown.len() > 1 { "s" } else { "" },
                self.reference,
                unknown.join(", "),
                self.params
                    .iter()
                    .filter(|p| !p.immutable)
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // st2's order: given parameters as given, then the rest in schema
        // order (it fixes the order of a script's named arguments).
        let mut given = Params::new();
        for (k, v) in params {
            if v.is_null() {
                continue;
            }
            let p = self.param(&k).expect("known");
            if p.immutable {
                return Err(format!(
                    "parameter {k} of {} is immutable: it cannot be given",
                    self.reference
                ));
            }
            if p.secret {
                return Err(format!(
                    "parameter {k} of {} is secret: it cannot be given in chat, where the room would see it (set it in the pack's config)",
                    self.reference
                ));
            }
            let v = match p.ty {
                Some(ty) => cast::cast(&p.name, v, ty)?,
                None => v,
            };
            // st2 casts a number with float(): 3 becomes 3.0 everywhere.
            let v = match (p.ty, v.as_i64()) {
                (Some(ParamType::Number), Some(i)) if !v.is_f64() => Value::from(i as f64),
                _ => v,
            };
            check_value(p, &v)?;
            given.insert(k, v);
        }
        for p in &self.params {
            if given.contains_key(&p.name) {
                continue;
            }
            match &p.default {
                Some(d) if p.templated_default() => {
                    given.insert(p.name.clone(), d.clone());
                }
                Some(d) => {
                    check_value(p, d)?;
                    given.insert(p.name.clone(), d.clone());
                }
                None if p.required => {
                    return Err(format!("{} needs parameter {}", self.reference, p.name));
                }
                None => {}
            }
        }
        Ok(given)
    }

    /// `params` as a person or a file may see them: secret ones masked.
    pub fn masked(&self, params: &Params) -> Params {
        params
            .iter()
            .map(|(k, v)| {
                let secret = self.param(k).is_some_and(|p| p.secret);
                let v = if secret {
                    Value::String(runners::secrets::MASK.into())
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// `v` has `p`'s type and is one of its `enum` values.
pub fn check_value(p: &ParamSpec, v: &Value) -> Result<(), String> {
    if !p.ty.is_none_or(|t| t.accepts(v)) {
        return Err(format!(
            "parameter {} must be of type {}, got {v}",
            p.name,
            p.ty.map_or("any", ParamType::name)
        ));
    }
    if !p.allowed.is_empty() && !p.allowed.contains(v) {
        return Err(format!(
            "parameter {} must be one of {}, got {v}",
            p.name,
            p.allowed
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It did what it was asked.
    Succeeded,
    /// It did not.
    Failed,
}

impl Status {
    /// `succeeded` or `failed`, as st2 says it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// st2's `execution.result`.
    pub result: Value,
    /// One line for the audit log and default messages.
    pub summary: String,
    /// Packs this run put in place (install, rollback), with their commits:
    /// what `who-deployed` reads back from the audit log.
    pub deployed: Vec<Deployed>,
    /// Installed or removed packs: the alias set must be reloaded.
    pub packs_changed: bool,
    /// Keyed hashes of the secret values it ran with, by parameter: the
    /// audit proves which value ran without holding it.
    pub proofs: Vec<(String, String)>,
    /// Where another engine ran it, and what that engine says.
    pub remote: Option<Remote>,
}

impl Outcome {
    /// A success with `result`.
    pub fn ok(summary: impl Into<String>, result: Value) -> Self {
        Outcome {
            status: Status::Succeeded,
            result,
            summary: summary.into(),
            deployed: Vec::new(),
            packs_changed: false,
            proofs: Vec::new(),
            remote: None,
        }
    }

    /// A failure, its summary also the result's `error`.
    pub fn failed(summary: impl Into<String>) -> Self {
        let summary = summary.into();
        Outcome {
            status: Status::Failed,
            result: serde_json::json!({ "error": summary }),
            summary,
            deployed: Vec::new(),
            packs_changed: false,
            proofs: Vec::new(),
            remote: None,
        }
    }
}

/// Where another engine (StackStorm, Temporal) ran a request.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The key its view has in the `finished` audit entry.
    pub audit_key: &'static str,
    /// Where it ran, in words ("StackStorm as execution 5f3c…").
    pub place: String,
    /// What that engine says: its `id` and `status`, and the `parameters`
    /// it ran if it renders them itself; what result templates see.
    pub view: Value,
}

/// A pack at a commit, as a run left it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployed {
    /// The pack's name.
    pub pack: String,
    /// The commit now live.
    pub commit: String,
}

pub use crate::core::request::Prepared;

/// What a running action may know about its request.
pub struct RunContext<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// Who asked for it.
    pub requester: &'a str,
    /// Who approved it.
    pub approvers: &'a [String],
    /// What `prepare` planned ([`Prepared::plan`]).
    pub plan: &'a Value,
    /// Set on shutdown or `!cancel`: long actions should stop at the next
    /// safe point.
    pub cancel: &'a AtomicBool,
    /// Set on shutdown only: a run that [continues
    /// elsewhere](Action::continues_elsewhere) stops following (it is
    /// re-attached at the next start) instead of being cancelled.
    pub stopping: &'a AtomicBool,
    /// The last lines it printed, for `!status`.
    pub output: &'a Arc<OutputTail>,
    /// Put a yes/no question to the people who may approve the request, in
    /// its room, and wait for the answer (blocking): `Some(true)` yes,
    /// `Some(false)` no, `None` no answer (it expired, or airlock stops).
    pub ask: &'a Ask,
}

/// Why handing a run to another engine did not work this time.
pub enum Handover {
    /// It cannot be reached (or failed on its side): worth another try.
    Unreachable(String),
    /// It said no: final.
    Refused(String),
}

/// How many times a run is handed to another engine (StackStorm,
/// Temporal) while it cannot be reached: 1 + 2 + 4 + 8 + 16 s of waiting
/// between the attempts.
pub const HANDOVER_ATTEMPTS: u32 = 6;

/// Try `hand_over` until it works, is refused, or has been tried
/// [`HANDOVER_ATTEMPTS`] times (a cancel or shutdown ends it early); the
/// waits are shown in `!status`. Whoever calls it makes a repeat safe
/// (StackStorm: look the run up first; Temporal: the workflow ID).
pub fn hand_over<T>(
    ctx: &RunContext,
    mut hand_over: impl FnMut() -> Result<T, Handover>,
) -> Result<T, String> {
    let mut wait = std::time::Duration::from_secs(1);
    for attempt in 1..=HANDOVER_ATTEMPTS {
        let e = match hand_over() {
            Ok(t) => return Ok(t),
            Err(Handover::Refused(e)) => return Err(e),
            Err(Handover::Unreachable(e)) => e,
        };
        let stop = ctx.cancel.load(std::sync::atomic::Ordering::Relaxed)
            || ctx.stopping.load(std::sync::atomic::Ordering::Relaxed);
        if attempt == HANDOVER_ATTEMPTS || stop {
            return Err(format!(
                "{e}; not handed over after {attempt} attempt{}",
                if attempt == 1 { "" } else { "s" }
            ));
        }
        ctx.output
            .push(format!("{e}; trying again in {}s\n", wait.as_secs()).as_bytes());
        std::thread::sleep(wait);
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    }
    unreachable!("the last attempt returns")
}

/// How a running action asks the request's approvers a question.
pub type Ask = dyn Fn(&str) -> Option<bool> + Send + Sync;

/// For runs with nobody to ask.
pub fn nobody(_: &str) -> Option<bool> {
    None
}

/// The last lines a running action printed, shown by `!pending` and
/// `!status` while it runs: masked when read, so a secret split across
/// two reads of a pipe is still whole when it is looked for.
#[derive(Debug, Default)]
pub struct OutputTail(Mutex<Tail>);

#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    /// The line still being written (no newline yet).
    partial: String,
    secrets: runners::secrets::Secrets,
}

impl OutputTail {
    /// Lines kept.
    pub const LINES: usize = 5;
    /// Characters kept of a line (after masking).
    const LINE_CHARS: usize = 200;
    /// Characters of one line held before masking: room for a secret at
    /// the end of a long line.
    const RAW_CHARS: usize = 4096;

    /// What to mask in the lines from now on.
    pub fn mask(&self, secrets: runners::secrets::Secrets) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).secrets = secrets;
    }

    /// Add output (a chunk of a stream; split into lines).
    pub fn push(&self, chunk: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(chunk);
        let mut parts = text.split('\n').peekable();
        while let Some(part) = parts.next() {
            if t.partial.chars().count() < Self::RAW_CHARS {
                t.partial.push_str(part);
            }
            if parts.peek().is_none() {
                break; // no newline after it yet
            }
            let line = std::mem::take(&mut t.partial);
            if line.trim().is_empty() {
                continue;
            }
            if t.lines.len() == Self::LINES {
                t.lines.pop_front();
            }
            t.lines.push_back(line);
        }
    }

    /// The lines kept, oldest first (the one still being written last),
    /// secrets masked.
    pub fn lines(&self) -> Vec<String> {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let partial = (!t.partial.trim().is_empty()).then_some(&t.partial);
        let skip = (t.lines.len() + usize::from(partial.is_some())).saturating_sub(Self::LINES);
        t.lines
            .iter()
            .chain(partial)
            .skip(skip)
            .map(|l| {
                t.secrets
                    .text(l.trim_end_matches('\r'))
                    .chars()
                    .take(Self::LINE_CHARS)
                    .collect()
            })
            .collect()
    }
}

/// Why an action cannot prepare a request. Each reads as the reason the
/// requester is given ("pack foo is not installed"); the kind says what
/// kind of fix it wants, for a caller that matches on it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// A parameter's value is not one the action accepts: the requester
    /// fixes the command.
    #[error("{0}")]
    Invalid(String),
    /// What the parameters name (a pack, a version, an action on the
    /// remote) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// What it must reach to resolve them (a git remote, StackStorm's API,
    /// the pack on disk) failed: trying again later may work.
    #[error("{0}")]
    Unavailable(String),
}

/// What an alias's `action_ref` runs: a schema, a preparation when the request is made, and the run once it is approved.
pub trait Action: Send + Sync {
    /// Its schema.
    fn spec(&self) -> &ActionSpec;

    /// Complete validated parameters when the request is made. What this
    /// returns is shown in the confirmation prompt and is exactly what runs.
    fn prepare(&self, params: Params) -> Result<Prepared, PrepareError> {
        Ok(Prepared::plain(params))
    }

    /// Whether `prepare` may take long (it reaches the network): the engine
    /// then hands it to the transport as an effect, off the event path.
    fn prepares_slowly(&self) -> bool {
        false
    }

    /// The version live now of what it runs from (a pack's commit), when
    /// that can change under a pending request: approvals given against
    /// another version no longer count.
    fn version(&self) -> Option<String> {
        None
    }

    /// Run it with the prepared parameters (blocking; off the event loop).
    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome;

    /// After a crash: how a run of this request ended, if durable state
    /// shows it got far enough to have an outcome (a pack switch that
    /// happened). None: it did not, and the request is reported interrupted.
    fn recover(&self, _ctx: &RunContext, _params: &Params) -> Option<Outcome> {
        None
    }

    /// Whether a run goes on elsewhere while airlock is down (StackStorm):
    /// after a restart it is re-attached with [`Action::resume`], not
    /// reported interrupted.
    fn continues_elsewhere(&self) -> bool {
        false
    }

    /// After a restart, a run that [continues
    /// elsewhere](Action::continues_elsewhere): find it and follow it to
    /// its end (blocking), submitting it only if it was never received.
    fn resume(&self, ctx: &RunContext, params: &Params) -> Outcome {
        self.run(ctx, params)
    }

    /// The request's outcome is in the audit log: whatever the action kept
    /// to [`recover`](Action::recover) it may go.
    fn settled(&self, _request: &str) {}

    /// For `!redeploy`: the parameters that make a new request run exactly
    /// what `plan` (an earlier request's preparation of `params`) ran,
    /// whatever has moved since (a pack install's refs pinned to the
    /// commits it installed). Empty: the parameters alone say it.
    fn pinned(&self, _params: &Params, _plan: &serde_json::Value) -> Params {
        Params::new()
    }
}

/// The schemas of every action airlock has, without anything to run them
/// (for `policy explain` and other offline checks).
pub fn standard_specs() -> Vec<ActionSpec> {
    vec![
        core::echo_spec(),
        core::noop_spec(),
        core::pause_spec(),
        packs::install_spec(),
        packs::uninstall_spec(),
        packs::rollback_spec(),
        packs::list_spec(),
    ]
}

/// The actions this bot can run, by reference.
#[derive(Clone, Default)]
pub struct Actions {
    by_ref: BTreeMap<String, Arc<dyn Action>>,
}

impl Actions {
    /// The built-in set: core.echo/noop/pause and the packs.* actions.
    pub fn standard(packs: Arc<packs::PackManager>) -> Self {
        let mut a = Actions::default();
        for action in core::actions() {
            a.add(action);
        }
        for action in packs::actions(packs) {
            a.add(action);
        }
        a
    }

    /// Add (or replace) an action, under its reference.
    pub fn add(&mut self, action: Arc<dyn Action>) {
        self.by_ref.insert(action.spec().reference.clone(), action);
    }

    /// The action called `reference`.
    pub fn get(&self, reference: &str) -> Option<&Arc<dyn Action>> {
        self.by_ref.get(reference)
    }

    /// The schemas of every action.
    pub fn specs(&self) -> impl Iterator<Item = &ActionSpec> {
        self.by_ref.values().map(|a| a.spec())
    }
}
