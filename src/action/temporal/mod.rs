//! The Temporal executor: approved requests run on `airlock worker`
//! processes on other machines, through a Temporal server.
//!
//! An approved request becomes one workflow whose ID is the request ID,
//! started with the reject-duplicate policy on the task queue its action is
//! routed to (`temporal.queues`), so a request can never run twice, even if
//! the bot starts it again after a crash or Temporal finished it long ago.
//! The workflow runs one activity: the action on airlock's own runners
//! (shell, script, http), on a worker of that queue, with the pack at the
//! commit the request was approved for. The bot is a client: it follows
//! the workflow to its end, cancels it on `!cancel`, and after a restart
//! re-attaches by ID. sled stays the record of what was dispatched
//! (Temporal forgets finished workflows after its retention period).
//!
//! The configuration is always read (so a `temporal:` section is never
//! silently ignored); the executor itself is behind the `temporal` cargo
//! feature.

#[cfg(feature = "temporal")]
mod client;
#[cfg(feature = "temporal")]
pub mod worker;

#[cfg(feature = "temporal")]
pub use client::{TemporalAction, TemporalClient};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(feature = "temporal")]
use std::time::Duration;

#[cfg(feature = "temporal")]
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};

use crate::alias::Params;
use crate::policy::Glob;

/// `temporal:` in `airlock.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemporalConfig {
    /// The server's gRPC address (`http://temporal.internal:7233`).
    pub url: String,
    /// The namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Task queues (one per environment), each with the action refs
    /// (globs: `deploy.*`) that run on its workers. The first queue (in
    /// name order) that names an action takes it.
    #[serde(default)]
    pub queues: BTreeMap<String, Vec<String>>,
    /// Action refs (globs) safe to run again: their activity is retried
    /// (3 attempts) when a worker is lost. Every other action runs at most
    /// once: a lost worker fails the request.
    #[serde(default)]
    pub idempotent: Vec<String>,
    /// How long a worker may go silent before its run counts as lost.
    /// Longer than a Temporal server restart should take: heartbeats stop
    /// during an outage.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
    /// How long a request may wait for a worker to pick it up; None: until
    /// one does.
    #[serde(default)]
    pub pickup_seconds: Option<u64>,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_heartbeat() -> u64 {
    30
}

impl TemporalConfig {
    /// The task queue action `reference` runs on, if it runs on Temporal.
    pub fn queue_of(&self, reference: &str) -> Option<&str> {
        self.queues
            .iter()
            .find(|(_, globs)| globs.iter().any(|g| Glob::new(g).matches(reference)))
            .map(|(q, _)| q.as_str())
    }

    /// Whether action `reference` may be retried when its worker is lost.
    pub fn idempotent(&self, reference: &str) -> bool {
        self.idempotent
            .iter()
            .any(|g| Glob::new(g).matches(reference))
    }
}

/// A pack at the version a request was approved for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackAt {
    /// The pack's name.
    pub name: String,
    /// The commit approved; None for a pack read from a directory (no
    /// versions), which the worker reads from its own copy.
    pub commit: Option<String>,
    /// The repository it was installed from, for a worker that lacks the
    /// commit to fetch it.
    pub url: Option<String>,
}

/// What the workflow gets: an approved request, exactly as it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatch {
    /// The request's id (also the workflow's).
    pub request_id: String,
    /// The action's ref.
    pub action: String,
    /// The parameters the prompt showed.
    pub params: Params,
    /// What `prepare` planned (the pack directory in it is the bot's; the
    /// worker puts its own copy of the same version there).
    pub plan: Value,
    /// The pack and commit, if the action comes from a pack.
    pub pack: Option<PackAt>,
    /// Who asked.
    pub requester: String,
    /// Who approved.
    pub approvers: Vec<String>,
    /// Activity attempts: 1 unless the action is declared idempotent.
    pub attempts: u32,
    /// Longest run, seconds (the action's own timeout plus its grace).
    pub run_seconds: u64,
    /// See [`TemporalConfig::heartbeat_seconds`].
    pub heartbeat_seconds: u64,
    /// See [`TemporalConfig::pickup_seconds`].
    pub pickup_seconds: Option<u64>,
}

/// What the workflow returns: how the run ended, and where it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ran {
    /// `succeeded` or `failed`.
    pub status: String,
    /// st2's result object.
    pub result: Value,
    /// One line for the audit and default messages.
    pub summary: String,
    /// Keyed hashes of the secret values it ran with.
    pub proofs: Vec<(String, String)>,
    /// The worker that ran it (`pid@host`).
    pub worker: String,
    /// Its task queue.
    pub queue: String,
    /// Which attempt this was.
    pub attempt: u32,
}

/// The workflow type's name, as Temporal's UI and `temporal workflow list`
/// show it.
pub const WORKFLOW_TYPE: &str = "AirlockRequest";

/// A connection to Temporal for `airlock worker` or the bot.
#[cfg(feature = "temporal")]
pub(crate) async fn connect(cfg: &TemporalConfig) -> Result<Client, String> {
    let url = Url::parse(&cfg.url).map_err(|e| format!("temporal.url {:?}: {e}", cfg.url))?;
    let options = ConnectionOptions::new(url)
        .identity(format!("airlock-bot-{}", std::process::id()))
        .connect_timeout(Duration::from_secs(5))
        .build();
    let conn = Connection::connect(options)
        .await
        .map_err(|e| e.to_string())?;
    Client::new(conn, ClientOptions::new(cfg.namespace.clone()).build()).map_err(|e| e.to_string())
}
