//! `airlock.yaml`: where things live and how to reach the homeserver.
//! Secrets never go in the file: `AIRLOCK_PASSWORD` or
//! `AIRLOCK_ACCESS_TOKEN` come from the environment, and
//! `AIRLOCK_HOMESERVER`, `AIRLOCK_USER`, `AIRLOCK_DATA_DIR` override it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::action::packs::GitConfig;
use crate::action::runners::RunnerConfig;
use crate::action::st2::St2Config;
use crate::action::temporal::TemporalConfig;
use crate::diag::{self, Diagnostic, Severity, YamlIndex};
use crate::engine::Settings;
use crate::{clock, ids};

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
}

mod open;
pub use open::Opened;
