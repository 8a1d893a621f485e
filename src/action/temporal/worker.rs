//! `airlock worker`: the workflow and the runner activity, on any machine
//! that reaches Temporal.
//!
//! The workflow is one activity and no logic, so it never needs
//! versioning: everything that can change lives in the activity. The
//! activity runs the action on airlock's own runners with the pack at the
//! approved commit (fetched into the worker's own packs directory if it is
//! not there yet), heartbeats while it runs, and turns a cancel into the
//! runner's cancel flag. The command's process group dies with the worker
//! ([`crate::action::runners::local`]'s guard), so a killed worker never
//! leaves a command running while another attempt starts.

// The Temporal macros add an undocumented constant per method; every item
// written here is documented.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, WorkflowContext,
    WorkflowResult, WorkflowTermination,
};

use super::{Dispatch, Ran};
use crate::action::metadata::{self, ActionMeta};
use crate::action::packs::PackManager;
use crate::action::runners::{PackAction, RunnerConfig};
use crate::action::{Action, OutputTail, RunContext, Status};

/// One approved request: one activity on the workflow's own task queue.
#[workflow]
#[derive(Default)]
pub struct AirlockRequest;

#[workflow_methods]
impl AirlockRequest {
    /// Run the request's action once (or as often as it is declared safe
    /// to) and return how it ended.
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, job: Dispatch) -> WorkflowResult<Ran> {
        let mut opts =
            ActivityOptions::with_start_to_close_timeout(Duration::from_secs(job.run_seconds))
                .heartbeat_timeout(Duration::from_secs(job.heartbeat_seconds))
                // The bot hears of a cancel only once the command is dead.
                .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
                .retry_policy(
                    temporalio_client::RetryPolicy::builder()
                        .maximum_attempts(job.attempts)
                        .build(),
                )
                .build();
        opts.schedule_to_start_timeout = job.pickup_seconds.map(Duration::from_secs);
        match ctx.execute_activity(Runners::run_action, job, opts).await {
            Ok(ran) => Ok(ran),
            // Otherwise a cancelled activity would end the workflow Failed.
            Err(ActivityExecutionError::Cancelled(_)) => Err(WorkflowTermination::cancelled()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a worker runs actions with.
pub struct Runners {
    /// Its task queue.
    queue: String,
    /// `pid@host`.
    identity: String,
    /// Runner settings (its own configuration's).
    runners: Arc<RunnerConfig>,
    /// Packs fetched at approved commits.
    packs: Arc<PackManager>,
    /// Packs it reads from directories, by name.
    dirs: HashMap<String, PathBuf>,
    /// Fetches of one pack wait for each other.
    fetching: Mutex<()>,
}

#[activities]
impl Runners {
    /// Run `job`'s action; heartbeat while it runs; a cancel from Temporal
    /// stops the command (SIGTERM to its group, SIGKILL after the grace).
    #[activity]
    pub async fn run_action(
        self: Arc<Self>,
        ctx: ActivityContext,
        job: Dispatch,
    ) -> Result<Ran, ActivityError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let attempt = ctx.info().attempt;
        let task = {
            let (me, cancel) = (self.clone(), cancel.clone());
            tokio::task::spawn_blocking(move || me.run_blocking(&job, &cancel, attempt))
        };
        tokio::pin!(task);
        let beat = ctx
            .info()
            .heartbeat_timeout
            .map_or(Duration::from_secs(10), |t| t / 3)
            .max(Duration::from_millis(200));
        let mut tick = tokio::time::interval(beat);
        loop {
            tokio::select! {
                ran = &mut task => {
                    return ran.map_err(|e| ActivityError::from(std::io::Error::other(e.to_string())));
                }
                _ = ctx.cancelled(), if !cancel.load(Ordering::Relaxed) => {
                    cancel.store(true, Ordering::Relaxed);
                }
                _ = tick.tick() => {
                    let _ = ctx.record_heartbeat(()).await;
                }
            }
        }
    }
}

impl Runners {
    /// Run `job` here (blocking).
    fn run_blocking(&self, job: &Dispatch, cancel: &AtomicBool, attempt: u32) -> Ran {
        let ran = |status: Status, result: Value, summary: String, proofs| Ran {
            status: status.name().to_string(),
            result,
            summary,
            proofs,
            worker: self.identity.clone(),
            queue: self.queue.clone(),
            attempt,
        };
        let failed =
            |why: String| ran(Status::Failed, json!({ "error": why }), why.clone(), vec![]);
        let (action, dir) = match self.action(job) {
            Ok(found) => found,
            Err(why) => return failed(why),
        };
        let mut plan = job.plan.clone();
        if let Some(dir) = &dir {
            plan["pack_dir"] = json!(dir);
        }
        let output = Arc::new(OutputTail::default());
        let ctx = RunContext {
            request_id: &job.request_id,
            requester: &job.requester,
            approvers: &job.approvers,
            plan: &plan,
            cancel,
            stopping: &AtomicBool::new(false),
            output: &output,
            ask: &crate::action::nobody,
        };
        tracing::info!(request = %job.request_id, action = %job.action, attempt, "running");
        let outcome = action.run(&ctx, &job.params);
        ran(
            outcome.status,
            outcome.result,
            outcome.summary,
            outcome.proofs,
        )
    }

    /// The action `job` names, from the pack version it was approved for,
    /// and that version's directory here.
    fn action(&self, job: &Dispatch) -> Result<(PackAction, Option<PathBuf>), String> {
        let Some(pack) = &job.pack else {
            let meta = metadata::core_actions()
                .into_iter()
                .find(|m| m.spec.reference == job.action)
                .ok_or_else(|| format!("this worker has no action {}", job.action))?;
            return Ok((PackAction::new(meta, None, self.runners.clone()), None));
        };
        let dir = match (&pack.commit, &pack.url) {
            (Some(commit), Some(url)) => {
                let _one = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
                self.packs
                    .materialize(&pack.name, url, commit)
                    .map_err(|e| {
                        format!(
                            "worker on queue {} cannot get pack {} at commit {commit}: {e}",
                            self.queue, pack.name
                        )
                    })?
            }
            _ => self
                .dirs
                .get(&pack.name)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "worker on queue {} has no pack {} (add its directory to aliases: in the worker's configuration)",
                        self.queue, pack.name
                    )
                })?,
        };
        let meta = find_meta(&dir, &pack.name, &job.action)?;
        Ok((
            PackAction::new(meta, Some(dir.clone()), self.runners.clone()),
            Some(dir),
        ))
    }
}

/// Action `reference`'s metadata in the pack at `dir`.
fn find_meta(dir: &Path, pack: &str, reference: &str) -> Result<ActionMeta, String> {
    let (metas, _) = metadata::load_pack(dir, pack, &|_| false);
    metas
        .into_iter()
        .find(|m| m.spec.reference == reference)
        .ok_or_else(|| {
            format!(
                "pack {pack} at {} has no action {reference} this worker can run",
                dir.display()
            )
        })
}

/// What `airlock worker` needs from the configuration.
pub struct WorkerSetup {
    /// The Temporal server.
    pub temporal: super::TemporalConfig,
    /// The task queue to poll.
    pub queue: String,
    /// Runner settings.
    pub runners: RunnerConfig,
    /// Packs read from directories (`aliases:`).
    pub dirs: Vec<(PathBuf, String)>,
    /// The worker's own packs directory (versions fetched by commit).
    pub packs: Arc<PackManager>,
}

/// Run a worker until SIGINT or SIGTERM; a graceful stop lets running
/// commands finish (up to their own timeout).
pub async fn run(setup: WorkerSetup) -> Result<(), String> {
    let identity = format!(
        "{}@{}",
        std::process::id(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    );
    let client = super::connect(&setup.temporal)
        .await
        .map_err(|e| format!("Temporal at {}: {e}", setup.temporal.url))?;
    let runtime = temporalio_sdk::Runtime::from_current_tokio(Default::default())
        .map_err(|e| e.to_string())?;
    let activities = Runners {
        queue: setup.queue.clone(),
        identity: identity.clone(),
        runners: Arc::new(setup.runners),
        packs: setup.packs,
        dirs: setup.dirs.into_iter().map(|(d, n)| (n, d)).collect(),
        fetching: Mutex::new(()),
    };
    let options = temporalio_sdk::WorkerOptions::new(setup.queue.clone())
        .register_workflow::<AirlockRequest>()
        .map_err(|e| e.to_string())?
        .register_activities(activities)
        .client_identity_override(identity.clone())
        // A lost worker's workflow task moves to another worker quickly.
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(2))
        .build();
    let mut worker =
        temporalio_sdk::Worker::new(&runtime, client, options).map_err(|e| e.to_string())?;
    let stop = worker.shutdown_handle();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping: running commands finish first");
        stop();
    });
    tracing::info!(queue = %setup.queue, worker = %identity, url = %setup.temporal.url, "worker ready");
    println!("airlock worker {identity} on task queue {}", setup.queue);
    worker.run().await.map_err(|e| e.to_string())
}
