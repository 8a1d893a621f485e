//! `airlock.yaml`: where things live and how to reach the homeserver.
//! Secrets never go in the file: `AIRLOCK_PASSWORD` or
//! `AIRLOCK_ACCESS_TOKEN` come from the environment, and
//! `AIRLOCK_HOMESERVER`, `AIRLOCK_USER`, `AIRLOCK_DATA_DIR` override it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use std::sync::Arc;

use crate::action::packs::{GitConfig, PackManager};
use crate::action::runners::sandbox::Sandbox;
use crate::action::runners::{PackAction, RunnerConfig};
use crate::action::st2::{St2Action, St2Config};
use crate::action::temporal::TemporalConfig;
use crate::action::{Action, Actions, metadata};
use crate::audit::AuditLog;
use crate::diag::{self, Diagnostic, Severity, YamlIndex};
use crate::engine::{Catalog, Engine, Settings, StartError};
use crate::requests::Requests;
use crate::{alias, clock, ids, policy};

pub use crate::http::HttpConfig;
pub use crate::store::db::{Compacted, compact_store, open_store, store_exists};

/// `airlock.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Homeserver base URL, e.g. `https://matrix.example.org`.
    #[serde(default)]
    pub homeserver: Option<String>,
    /// The bot's Matrix user ID.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Display name of the bot's device.
    #[serde(default = "default_device")]
    pub device_name: String,
    /// The sled database and the Matrix store.
    #[serde(default = "default_data")]
    pub data_dir: PathBuf,
    /// Alias directories (alias files, or packs).
    #[serde(default = "default_aliases")]
    pub aliases: Vec<PathBuf>,
    /// Policy files or directories.
    #[serde(default = "default_policies")]
    pub policies: Vec<PathBuf>,
    /// Where packs are installed.
    #[serde(default = "default_packs")]
    pub packs: PathBuf,
    /// The command prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Names the bot answers to as `name: command`.
    #[serde(default)]
    pub names: Vec<String>,
    /// Commands older than this are not run (`2m`, `90s`).
    #[serde(default = "default_age")]
    pub max_command_age: String,
    /// 👍/👎 on a prompt counts as a reply.
    #[serde(default)]
    pub reaction_approvals: bool,
    /// The optional HTTP listener for `/healthz` and `/metrics`.
    #[serde(default)]
    pub http: HttpConfig,
    /// `text` (default) or `json`: one JSON object a line, with the room,
    /// sender and request of the event being handled.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A room ID that is told of every break-glass run and gets the audit
    /// log's head as checkpoints (the bot must be in it).
    #[serde(default)]
    pub audit_room: Option<String>,
    /// When checkpoints are posted to `audit_room`.
    #[serde(default)]
    pub audit_checkpoints: CheckpointConfig,
    /// When the audit log's history is sealed into segment files.
    #[serde(default)]
    pub audit: AuditConfig,
    /// How long closed requests stay in the store.
    #[serde(default)]
    pub requests: RequestsConfig,
    /// On-call notifications (`notify:`): a signed webhook, PagerDuty.
    #[serde(default)]
    pub notify: Option<crate::notify::NotifyConfig>,
    /// Free space (MB) kept on the disk holding `data_dir`: below it,
    /// nothing new is written, commands are refused with the reason, and
    /// all resumes once space returns. (sled cannot go on after a write
    /// has failed for want of space: the guard keeps it from getting
    /// there.) 0 turns it off.
    #[serde(default = "default_reserve")]
    pub disk_reserve_mb: u64,
    /// Git settings for pack installs.
    #[serde(default)]
    pub git: GitConfig,
    /// How packs' actions run.
    #[serde(default)]
    pub runners: RunnerConfig,
    /// Actions that run on a StackStorm cluster instead.
    #[serde(default)]
    pub st2: Option<St2Config>,
    /// Actions that run on Temporal workers instead (`airlock worker`;
    /// needs the `temporal` cargo feature).
    #[serde(default)]
    pub temporal: Option<TemporalConfig>,
}

/// When the audit log's head is posted to the audit room: after `entries`
/// new entries, or `every` (a duration such as 1h) after the last if any
/// were written, and at shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Entries between checkpoints.
    #[serde(default = "default_checkpoint_entries")]
    pub entries: u64,
    /// Longest time between checkpoints.
    #[serde(default = "default_checkpoint_every")]
    pub every: String,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            entries: default_checkpoint_entries(),
            every: default_checkpoint_every(),
        }
    }
}

fn default_checkpoint_entries() -> u64 {
    100
}
fn default_checkpoint_every() -> String {
    "1h".into()
}

/// `audit:`: an epoch of the audit log is sealed into a segment file in
/// `data_dir/audit/` once it holds `seal_entries` entries or its oldest is
/// older than `seal_after`, whichever comes first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Entries per sealed segment.
    #[serde(default = "default_seal_entries")]
    pub seal_entries: u64,
    /// The age of the oldest unsealed entry that seals them (a duration
    /// such as 7d).
    #[serde(default = "default_seal_after")]
    pub seal_after: String,
    /// Sealed segments whose newest entry is older than this (a duration
    /// such as 400d) are deleted, their manifests kept and a `pruned`
    /// entry written; absent: everything is kept.
    #[serde(default)]
    pub retention: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            seal_entries: default_seal_entries(),
            seal_after: default_seal_after(),
            retention: None,
        }
    }
}

/// `requests:`: a closed request leaves the store `keep` after it closed
/// (a break-glass run only once reviewed); the audit log keeps its
/// history and answers for it from then on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsConfig {
    /// A duration such as 30d.
    #[serde(default = "default_keep")]
    pub keep: String,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            keep: default_keep(),
        }
    }
}

fn default_reserve() -> u64 {
    64
}

fn default_keep() -> String {
    "30d".into()
}

fn default_seal_entries() -> u64 {
    16_000
}
fn default_seal_after() -> String {
    "7d".into()
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line, fields as `key=value`.
    #[default]
    Text,
    /// For log shippers: one JSON object a line.
    Json,
}

fn default_device() -> String {
    "airlock".into()
}
fn default_data() -> PathBuf {
    "data".into()
}
fn default_aliases() -> Vec<PathBuf> {
    vec!["aliases".into()]
}
fn default_policies() -> Vec<PathBuf> {
    vec!["policies".into()]
}
fn default_packs() -> PathBuf {
    "packs".into()
}
fn default_prefix() -> String {
    "!".into()
}
fn default_age() -> String {
    "2m".into()
}

impl Default for Config {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults")
    }
}

impl Config {
    /// Read `path` (relative paths inside it are relative to its
    /// directory), then apply the environment overrides.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::file(path, format!("cannot read: {e}"))])?;
        let mut c: Config = serde_yaml::from_str::<Option<Config>>(&text)
            .map_err(|e| vec![diag::from_serde_yaml(path, &e)])?
            .unwrap_or_default();
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut c.data_dir);
        rebase(&mut c.packs);
        rebase(&mut c.runners.configs);
        c.aliases.iter_mut().for_each(rebase);
        c.policies.iter_mut().for_each(rebase);
        let idx = YamlIndex::parse(&text);
        let mut errors = Vec::new();
        if let Some(room) = c.audit_room.as_deref().filter(|r| !ids::is_room_id(r)) {
            errors.push(idx.diag(
                Severity::Error,
                path,
                "audit_room",
                format!("\"{room}\" is not a room ID (!id)"),
            ));
        }
        if clock::parse_duration(&c.audit_checkpoints.every).is_none_or(|d| d.is_zero())
            || c.audit_checkpoints.entries == 0
        {
            errors.push(idx.diag(
                Severity::Error,
                path,
                "audit_checkpoints",
                "expected entries: a number above 0 and every: a duration such as 1h".to_string(),
            ));
        }
        if clock::parse_duration(&c.audit.seal_after).is_none_or(|d| d.is_zero())
            || c.audit.seal_entries == 0
            || c.audit
                .retention
                .as_deref()
                .is_some_and(|r| clock::parse_duration(r).is_none_or(|d| d.is_zero()))
        {
            errors.push(
                idx.diag(
                    Severity::Error,
                    path,
                    "audit",
                    "expected seal_entries: a number above 0, seal_after: a duration such as 7d, and retention (if any) a duration such as 400d"
                        .to_string(),
                ),
            );
        }
        if clock::parse_duration(&c.requests.keep).is_none() {
            errors.push(idx.diag(
                Severity::Error,
                path,
                "requests",
                format!(
                    "keep: \"{}\" is not a duration such as 30d",
                    c.requests.keep
                ),
            ));
        }
        if c.max_age().is_none() {
            errors.push(idx.diag(
                Severity::Error,
                path,
                "max_command_age",
                format!(
                    "\"{}\" is not a duration such as 2m or 90s",
                    c.max_command_age
                ),
            ));
        }
        if let Some(u) = c.user_id.as_deref()
            && !crate::ids::is_user_id(u)
        {
            errors.push(idx.diag(
                Severity::Error,
                path,
                "user_id",
                format!("\"{u}\" is not {}", crate::ids::Kind::User.describe()),
            ));
        }
        if c.prefix.is_empty() || c.prefix.chars().any(char::is_whitespace) {
            errors.push(idx.diag(
                Severity::Error,
                path,
                "prefix",
                "must be non-empty, without spaces",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        c.apply_env();
        Ok(c)
    }

    /// `airlock.yaml` in the current directory when it exists, else defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, Vec<Diagnostic>> {
        match path {
            Some(p) => Config::load(p),
            None if Path::new("airlock.yaml").is_file() => Config::load(Path::new("airlock.yaml")),
            None => {
                let mut c = Config::default();
                c.apply_env();
                Ok(c)
            }
        }
    }

    fn apply_env(&mut self) {
        if let Ok(v) = std::env::var("AIRLOCK_HOMESERVER") {
            self.homeserver = Some(v);
        }
        if let Ok(v) = std::env::var("AIRLOCK_USER") {
            self.user_id = Some(v);
        }
        if let Ok(v) = std::env::var("AIRLOCK_DATA_DIR") {
            self.data_dir = v.into();
        }
    }

    /// `max_command_age` as a duration, if it parses.
    pub fn max_age(&self) -> Option<Duration> {
        crate::clock::parse_duration(&self.max_command_age)
    }

    /// The engine's settings from this configuration.
    pub fn settings(&self) -> Settings {
        let mut names = self.names.clone();
        if names.is_empty() {
            names.push("airlock".into());
        }
        if let Some(localpart) = self
            .user_id
            .as_deref()
            .and_then(|u| u.strip_prefix('@'))
            .and_then(|u| u.split(':').next())
            && !names.iter().any(|n| n == localpart)
        {
            names.push(localpart.to_string());
        }
        Settings {
            prefix: self.prefix.clone(),
            names,
            bot_user: self.user_id.clone(),
            max_age: self.max_age().unwrap_or(Duration::from_secs(120)),
            reaction_approvals: self.reaction_approvals,
            audit_room: self.audit_room.clone(),
            checkpoint_entries: self.audit_checkpoints.entries,
            checkpoint_interval: clock::parse_duration(&self.audit_checkpoints.every)
                .unwrap_or(Duration::from_secs(3600)),
            seal: crate::audit::SealPolicy {
                entries: self.audit.seal_entries,
                after: clock::parse_duration(&self.audit.seal_after)
                    .unwrap_or(Duration::from_secs(7 * 86400)),
                retention: self
                    .audit
                    .retention
                    .as_deref()
                    .and_then(clock::parse_duration),
            },
            keep_requests: clock::parse_duration(&self.requests.keep)
                .unwrap_or(Duration::from_secs(30 * 86400)),
            reserve: (self.disk_reserve_mb > 0)
                .then(|| (self.data_dir.clone(), self.disk_reserve_mb * 1_000_000)),
        }
    }

    /// Where sealed segments of the audit log live: `audit/` under
    /// `data_dir`.
    pub fn archive_dir(&self) -> PathBuf {
        self.data_dir.join("audit")
    }

    /// The web view's sign-in, when `http.web` is on: a sign-in link
    /// lasts 5 minutes, a session 8 hours.
    fn web(&self, db: &crate::kv::Db) -> Result<Option<crate::engine::Web>, StartError> {
        if !self.http.web {
            return Ok(None);
        }
        let url = self.http.public_url.as_deref().unwrap_or_default();
        let parsed = reqwest::Url::parse(url).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none()
        });
        if parsed.is_none() {
            return Err(StartError::Web(format!(
                "http.web needs http.public_url, the https:// (or http://) address users reach the listener at; got {url:?}"
            )));
        }
        let access = crate::store::web::WebAccess::open(db)
            .map_err(|e| StartError::Database(self.store_path(), e.to_string()))?;
        Ok(Some(crate::engine::Web {
            access,
            public_url: url.trim_end_matches('/').to_string(),
            link_for: std::time::Duration::from_secs(300),
            session_for: std::time::Duration::from_secs(8 * 3600),
        }))
    }

    /// What the Matrix transport needs of it.
    pub fn matrix_settings(&self) -> crate::matrix::Settings {
        crate::matrix::Settings {
            homeserver: self.homeserver.clone(),
            user_id: self.user_id.clone(),
            device_name: self.device_name.clone(),
            store_dir: self.data_dir.join("matrix"),
            http: self.http.clone(),
            st2: self.st2.clone(),
            audit_room: self.audit_room.clone(),
        }
    }

    /// Where the database lives: `airlock.sled` under `data_dir`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("airlock.sled")
    }

    /// The composition root: open the database under `data_dir`, the packs
    /// directory, the alias and policy files, and build the engine over
    /// them (`now` stamps what the recovery of the last run records).
    pub fn open(&self, now: u64) -> Result<Opened, StartError> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| StartError::Database(self.data_dir.clone(), e.to_string()))?;
        let db_path = self.store_path();
        let db = open_store(&db_path)
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        self.open_with(db, Arc::new(crate::wall::now_ms), now)
    }

    /// [`Config::open`] over a database already open (the bot's on disk,
    /// or one in memory, [`crate::kv::Db::memory`], as the engine's tests
    /// run) and a clock (the wall clock, or a test's). Sealed audit
    /// segments still go to `data_dir/audit`.
    pub fn open_with(
        &self,
        db: crate::kv::Db,
        clock: crate::engine::Clock,
        now: u64,
    ) -> Result<Opened, StartError> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| StartError::Database(self.data_dir.clone(), e.to_string()))?;
        let db_path = self.store_path();
        let audit = AuditLog::open_at(&db, Some(&self.archive_dir()))
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        let requests = Requests::open(&db)
            .map_err(|e| StartError::Database(db_path.clone(), e.to_string()))?;
        let packs = PackManager::new(&self.packs, &db, self.git.clone())
            .map_err(|e| StartError::Packs(e.to_string()))?;
        #[cfg(feature = "temporal")]
        let temporal = self
            .temporal
            .clone()
            .map(crate::action::temporal::TemporalClient::new);
        #[cfg(not(feature = "temporal"))]
        if self.temporal.is_some() {
            return Err(StartError::Packs(
                "temporal: in the configuration, but this airlock was built without the temporal feature (cargo build --features temporal)".into(),
            ));
        }
        let mut runners = self
            .runner_config()
            .map_err(|e| StartError::Database(self.data_dir.join("secret.key"), e.to_string()))?;
        if runners.sandbox == Sandbox::Bwrap {
            crate::action::runners::sandbox::check().map_err(StartError::Packs)?;
        }
        // The StackStorm API key is airlock's secret too: no local action
        // sees it.
        if let Some(st2) = &self.st2 {
            runners.secret_env.push(st2.api_key_env.clone());
        }
        let catalog = Arc::new(Files {
            aliases: self.aliases.clone(),
            policies: self.policies.clone(),
            packs: packs.clone(),
            runners: Arc::new(runners),
            st2: self.st2.clone().map(Arc::new),
            #[cfg(feature = "temporal")]
            temporal,
        });
        let notifier: Option<Arc<dyn crate::engine::Notify>> = match &self.notify {
            Some(n) => Some(Arc::new(
                crate::notify::Notifier::start(n).map_err(StartError::Notify)?,
            )),
            None => None,
        };
        let web = self.web(&db)?;
        let engine = Engine::builder(self.settings(), audit, requests, clock)
            .web(web)
            .notifier(notifier)
            .actions(Actions::standard(packs.clone()))
            .catalog(catalog)
            .build(now)?;
        // Every request the last run left open is settled now; what the
        // packs kept to recover them is no longer needed.
        packs.forget_switches(None);
        Ok(Opened { engine, packs })
    }
}

impl Config {
    /// Runner settings as actions get them: the key of the audit's proofs
    /// (`data_dir/secret.key`), and what the sandbox hides.
    fn runner_config(&self) -> std::io::Result<RunnerConfig> {
        let mut runners = self.runners.clone();
        runners.hash_key = secret_key(&self.data_dir)?;
        runners.hidden = vec![self.data_dir.clone(), runners.configs.clone()];
        Ok(runners)
    }
}

#[cfg(feature = "temporal")]
impl Config {
    /// What `airlock worker --task-queue <queue>` runs with: the Temporal
    /// server, runner settings (with this machine's `secret.key` for the
    /// audit's proofs), the pack directories of `aliases:`, and a packs
    /// directory of its own (`data_dir/worker-packs`) that versions are
    /// fetched into by commit. It shares no database with a bot.
    pub fn worker_setup(
        &self,
        queue: &str,
    ) -> Result<crate::action::temporal::worker::WorkerSetup, String> {
        let temporal = self
            .temporal
            .clone()
            .ok_or("the configuration has no temporal: section")?;
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("{}: {e}", self.data_dir.display()))?;
        let runners = self
            .runner_config()
            .map_err(|e| format!("{}: {e}", self.data_dir.join("secret.key").display()))?;
        if runners.sandbox == Sandbox::Bwrap {
            crate::action::runners::sandbox::check()?;
        }
        // Its packs directory needs no records: nothing is switched there.
        let db = crate::store::kv::Db::memory();
        let packs = PackManager::new(&self.data_dir.join("worker-packs"), &db, self.git.clone())
            .map_err(|e| e.to_string())?;
        Ok(crate::action::temporal::worker::WorkerSetup {
            temporal,
            queue: queue.to_string(),
            runners,
            dirs: metadata::pack_dirs(&self.aliases),
            packs,
        })
    }
}

/// What [`Config::open`] builds.
pub struct Opened {
    /// The engine, ready for events.
    pub engine: Engine,
    /// The packs directory it installs into.
    pub packs: Arc<PackManager>,
}

/// The key of the hashes the audit keeps of secret values: 32 random
/// bytes in `data_dir/secret.key` (owner-only), made on first start.
fn secret_key(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let path = data_dir.join("secret.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {
            return Err(std::io::Error::other(
                "shorter than 32 bytes; remove it to have a new one made",
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    crate::store::write_private(&path, &key)?;
    Ok(key)
}

/// Aliases, actions and policy from files: the configured alias
/// directories plus the installed packs whose aliases are registered, the
/// actions of every pack among them and installed, and the policy files.
struct Files {
    aliases: Vec<PathBuf>,
    policies: Vec<PathBuf>,
    packs: Arc<PackManager>,
    runners: Arc<RunnerConfig>,
    st2: Option<Arc<St2Config>>,
    #[cfg(feature = "temporal")]
    temporal: Option<Arc<crate::action::temporal::TemporalClient>>,
}

impl Files {
    /// Every pack directory whose actions are offered, with its name.
    fn pack_dirs(&self) -> Vec<(PathBuf, String)> {
        let mut out = metadata::pack_dirs(&self.aliases);
        for r in self.packs.records() {
            out.push((self.packs.dir().join(&r.name), r.name.clone()));
        }
        out
    }
}

impl Catalog for Files {
    fn aliases(&self) -> alias::load::Loaded {
        let mut dirs = self.aliases.clone();
        dirs.extend(self.packs.alias_dirs());
        crate::catalog::load_aliases(&dirs)
    }

    fn policy(&self) -> policy::LoadedPolicy {
        crate::catalog::load_policy(&self.policies)
    }

    fn actions(&self) -> (Vec<Arc<dyn Action>>, Vec<Diagnostic>) {
        let mut found: Vec<Arc<dyn Action>> = metadata::core_actions()
            .into_iter()
            .map(|m| Arc::new(PackAction::new(m, None, self.runners.clone())) as Arc<dyn Action>)
            .collect();
        let mut diags = Vec::new();
        for (dir, name) in self.pack_dirs() {
            let routed = |r: &str| self.st2.as_ref().is_some_and(|s| s.routes(r));
            let (metas, mut d) = metadata::load_pack(&dir, &name, &routed);
            diags.append(&mut d);
            found.extend(metas.into_iter().map(|m| {
                Arc::new(PackAction::new(m, Some(dir.clone()), self.runners.clone()))
                    as Arc<dyn Action>
            }));
        }
        // What the st2 configuration routes runs there, whatever a local
        // pack says: every alias's action it names.
        if let Some(st2) = &self.st2 {
            found.retain(|a| !st2.routes(&a.spec().reference));
            let mut routed: Vec<String> = self
                .aliases()
                .aliases
                .into_iter()
                .map(|a| a.action_ref)
                .filter(|r| st2.routes(r))
                .collect();
            routed.sort();
            routed.dedup();
            found.extend(
                routed
                    .iter()
                    .map(|r| Arc::new(St2Action::new(r, st2.clone())) as Arc<dyn Action>),
            );
        }
        // What the Temporal configuration routes runs on its workers,
        // prepared here as it would be locally.
        #[cfg(feature = "temporal")]
        if let Some(t) = &self.temporal {
            for a in found.iter_mut() {
                let reference = &a.spec().reference;
                if self.st2.as_ref().is_some_and(|s| s.routes(reference)) {
                    continue;
                }
                if let Some(queue) = t.config().queue_of(reference) {
                    *a = Arc::new(crate::action::temporal::TemporalAction::new(
                        a.clone(),
                        queue,
                        t.clone(),
                        self.packs.clone(),
                    ));
                }
            }
        }
        (found, diags)
    }
}
