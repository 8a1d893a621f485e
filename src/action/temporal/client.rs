//! The bot's side: start a request's workflow, follow it, cancel it, and
//! re-attach to it after a restart.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;
use temporalio_client::errors::{WorkflowGetResultError, WorkflowStartError};
use temporalio_client::tonic::Code;
use temporalio_client::{
    Client, WorkflowCancelOptions, WorkflowDescribeOptions, WorkflowExecutionStatus,
    WorkflowGetResultOptions, WorkflowIdReusePolicy, WorkflowStartOptions,
    WorkflowTerminateOptions,
};

use super::worker::AirlockRequest;
use super::{Dispatch, PackAt, Ran, TemporalConfig, connect};
use crate::action::packs::PackManager;
use crate::action::{
    Action, ActionSpec, Handover, Outcome, Prepared, Remote, RunContext, Status, hand_over,
};
use crate::alias::Params;

/// The runtime the bot's Temporal calls run on: actions run on plain
/// threads, and the client is async. Made once, never dropped.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("temporal-client")
            .enable_all()
            .build()
            .expect("a runtime for the Temporal client")
    })
}

/// Run `fut` on the client runtime and wait for it, from any thread.
fn block<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

/// One Temporal server, shared by every action routed to it; connects on
/// first use and again after a failed connect.
pub struct TemporalClient {
    cfg: TemporalConfig,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl TemporalClient {
    /// A client of the server `cfg` names (nothing is sent yet).
    pub fn new(cfg: TemporalConfig) -> Arc<Self> {
        Arc::new(TemporalClient {
            cfg,
            client: tokio::sync::Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TemporalConfig {
        &self.cfg
    }

    async fn get(&self) -> Result<Client, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = connect(&self.cfg)
            .await
            .map_err(|e| format!("Temporal at {} cannot be reached ({e})", self.cfg.url))?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// An action that runs on a Temporal worker: prepared here as it would be
/// locally (the prompt shows the same thing, plus where it runs), run
/// there.
pub struct TemporalAction {
    inner: Arc<dyn Action>,
    queue: String,
    client: Arc<TemporalClient>,
    packs: Arc<PackManager>,
}

impl TemporalAction {
    /// `inner`, run by workers of `queue`.
    pub fn new(
        inner: Arc<dyn Action>,
        queue: &str,
        client: Arc<TemporalClient>,
        packs: Arc<PackManager>,
    ) -> Self {
        TemporalAction {
            inner,
            queue: queue.to_string(),
            client,
            packs,
        }
    }

    /// The workflow's input for this request.
    fn dispatch(&self, ctx: &RunContext, params: &Params) -> Dispatch {
        let cfg = self.client.config();
        let reference = &self.inner.spec().reference;
        let pack = ctx.plan["pack_dir"]
            .as_str()
            .map(|d| self.pack_at(Path::new(d), reference));
        // The runner's own timeout and kill grace, and a margin: Temporal's
        // limit only catches a worker that stopped answering.
        let timeout = params.get("timeout").and_then(|v| v.as_u64()).unwrap_or(60);
        Dispatch {
            request_id: ctx.request_id.to_string(),
            action: reference.clone(),
            params: params.clone(),
            plan: ctx.plan.clone(),
            pack,
            requester: ctx.requester.to_string(),
            approvers: ctx.approvers.to_vec(),
            attempts: if cfg.idempotent(reference) { 3 } else { 1 },
            run_seconds: timeout + 60,
            heartbeat_seconds: cfg.heartbeat_seconds.max(1),
            pickup_seconds: cfg.pickup_seconds,
        }
    }

    /// The pack version at `dir` (`.airlock/versions/<pack>/<commit>` for
    /// an installed pack), with where it came from.
    fn pack_at(&self, dir: &Path, reference: &str) -> PackAt {
        let name = reference
            .split_once('.')
            .map_or(reference, |(p, _)| p)
            .to_string();
        let commit = (dir.parent().and_then(Path::file_name) == Some(name.as_ref())
            && dir
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                == Some("versions".as_ref()))
        .then(|| dir.file_name().map(|c| c.to_string_lossy().into_owned()))
        .flatten();
        let url = commit.as_ref().and_then(|c| {
            let rec = self.packs.record(&name)?;
            std::iter::once(&rec.current)
                .chain(&rec.previous)
                .find(|v| &v.commit == c)
                .map(|v| v.url.clone())
        });
        PackAt { name, commit, url }
    }

    /// Start the workflow (or find it started) and follow it to its end.
    /// While Temporal cannot be reached the start is retried with backoff;
    /// `!status` shows the retries. Starting is safe to repeat: the
    /// workflow ID is the request ID and a second start is refused.
    fn start_and_follow(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let job = self.dispatch(ctx, params);
        let started = hand_over(ctx, || {
            let client = self.client.clone();
            let (job, queue) = (job.clone(), self.queue.clone());
            block(async move { start(&client, job, &queue).await })
                .unwrap_or_else(|| Err(Handover::Refused("the Temporal client stopped".into())))
        });
        match started {
            Ok(()) => {
                ctx.output.push(
                    format!(
                        "on Temporal as workflow {}, task queue {}\n",
                        ctx.request_id, self.queue
                    )
                    .as_bytes(),
                );
                self.follow(ctx)
            }
            Err(e) => Outcome::failed(e),
        }
    }

    /// Follow workflow `ctx.request_id` to its end; `!cancel` cancels it
    /// once (the worker stops the command); a shutdown stops following
    /// only (the next start re-attaches).
    fn follow(&self, ctx: &RunContext) -> Outcome {
        let id = ctx.request_id.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let follower = {
            let (client, id) = (self.client.clone(), id.clone());
            runtime().spawn(async move {
                let _ = tx.send(result(&client, &id).await);
            })
        };
        // The workflow runs on its action's task queue: when the only
        // worker there is lost, nothing on the server ends the run (the
        // heartbeat timeout needs a worker of that queue to fail the
        // workflow). So the bot watches the run itself.
        let (lost_tx, lost_rx) = std::sync::mpsc::channel();
        let watcher = {
            let (client, id) = (self.client.clone(), id.clone());
            let hb = Duration::from_secs(self.client.config().heartbeat_seconds.max(1));
            runtime().spawn(async move {
                loop {
                    tokio::time::sleep(WATCH_EVERY).await;
                    if let Some(why) = worker_lost(&client, &id, hb).await {
                        let _ = lost_tx.send(why);
                        return;
                    }
                }
            })
        };
        let _stop_watching = AbortOnDrop(watcher);
        let mut cancelled = false;
        loop {
            if ctx.stopping.load(Ordering::Relaxed) {
                follower.abort();
                return Outcome::failed(format!("no longer followed: Temporal workflow {id}"));
            }
            if let Ok(why) = lost_rx.try_recv() {
                follower.abort();
                // Ended for good, so it can never run later, when a worker
                // of the queue comes back.
                let (client, id2, reason) = (self.client.clone(), id.clone(), why.clone());
                let ended = block(async move {
                    let c = client.get().await?;
                    c.get_workflow_handle::<AirlockRequest>(id2)
                        .terminate(WorkflowTerminateOptions::builder().reason(reason).build())
                        .await
                        .map_err(|e| e.to_string())
                });
                if let Some(Err(e)) = ended {
                    tracing::warn!("ending Temporal workflow {id}: {e}");
                }
                let mut o = Outcome::failed(format!(
                    "the worker running it was lost ({why}); its command died with it and was not run again"
                ));
                o.remote = Some(self.remote(&id, None));
                return o;
            }
            if ctx.cancel.load(Ordering::Relaxed) && !cancelled {
                cancelled = true;
                let (client, id2) = (self.client.clone(), id.clone());
                let sent = block(async move {
                    let c = client.get().await?;
                    c.get_workflow_handle::<AirlockRequest>(id2)
                        .cancel(WorkflowCancelOptions::default())
                        .await
                        .map_err(|e| e.to_string())
                });
                if let Some(Err(e)) = sent {
                    tracing::warn!("cancelling Temporal workflow {id}: {e}");
                }
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => return self.outcome(&id, r),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Outcome::failed(format!("lost track of Temporal workflow {id}"));
                }
            }
        }
    }

    /// Where workflow `id` ran, for the audit and `!status`. No `status`
    /// in the view: the engine's (succeeded, failed, canceled) holds.
    fn remote(&self, id: &str, ran: Option<&Ran>) -> Remote {
        Remote {
            audit_key: "temporal",
            place: match ran {
                Some(r) => format!(
                    "Temporal worker {} (task queue {}) as workflow {id}",
                    r.worker, r.queue
                ),
                None => format!("Temporal (task queue {}) as workflow {id}", self.queue),
            },
            view: json!({
                "id": id,
                "task_queue": ran.map_or(&self.queue, |r| &r.queue),
                "worker": ran.map(|r| &r.worker),
                "attempt": ran.map(|r| r.attempt),
            }),
        }
    }

    /// The request's outcome from how its workflow ended.
    fn outcome(&self, id: &str, r: Result<Ran, WorkflowGetResultError>) -> Outcome {
        let (mut outcome, ran) = match r {
            Ok(ran) => {
                let mut o = Outcome::ok(ran.summary.clone(), ran.result.clone());
                if ran.status != Status::Succeeded.name() {
                    o.status = Status::Failed;
                }
                o.proofs = ran.proofs.clone();
                (o, Some(ran))
            }
            Err(WorkflowGetResultError::Cancelled { .. }) => {
                (Outcome::failed("cancelled while running on Temporal"), None)
            }
            Err(WorkflowGetResultError::Failed(e)) => {
                let why = e.to_string();
                let lost = why.to_lowercase().contains("heartbeat")
                    || why.to_lowercase().contains("timed out");
                let text = if lost {
                    format!(
                        "the worker running it was lost ({why}); its command died with it and was not run again"
                    )
                } else {
                    format!("failed on Temporal: {why}")
                };
                (Outcome::failed(text), None)
            }
            Err(e) => (
                Outcome::failed(format!("Temporal workflow {id}: {e}")),
                None,
            ),
        };
        outcome.remote = Some(self.remote(id, ran.as_ref()));
        outcome
    }
}

/// How often a followed workflow is looked at for a lost worker.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How long past its limit a silence counts as a lost worker: the server
/// acts on the heartbeat timeout first when it can.
const LOST_MARGIN: Duration = Duration::from_secs(5);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why workflow `id`'s worker counts as lost, if it does: its activity
/// sent no heartbeat for longer than `hb` (and a margin); or a lost
/// attempt's retry was taken by no worker in that time; or the activity
/// ended without a result and no worker of the queue took the workflow
/// task that would end the workflow. A workflow still waiting for its
/// first worker is not lost (`pickup_seconds` bounds that).
async fn worker_lost(client: &TemporalClient, id: &str, hb: Duration) -> Option<String> {
    use temporalio_common::protos::temporal::api::enums::v1::PendingActivityState as S;
    use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes as A;
    let now = std::time::SystemTime::now();
    macro_rules! age {
        ($t:expr) => {
            $t.as_ref().and_then(|t| {
                let at = std::time::UNIX_EPOCH
                    + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
                now.duration_since(at).ok()
            })
        };
    }
    let c = client.get().await.ok()?;
    let handle = c.get_workflow_handle::<AirlockRequest>(id.to_string());
    let d = handle
        .describe(WorkflowDescribeOptions::default())
        .await
        .ok()?;
    if d.status() != WorkflowExecutionStatus::Running {
        return None;
    }
    let limit = hb + LOST_MARGIN;
    let raw = &d.raw_description;
    for a in &raw.pending_activities {
        let worker = if a.last_worker_identity.is_empty() {
            "its worker".to_string()
        } else {
            format!("worker {}", a.last_worker_identity)
        };
        match a.state() {
            S::Started | S::CancelRequested => {
                let silent = age!(a.last_heartbeat_time).or(age!(a.last_started_time))?;
                if silent > limit {
                    return Some(format!(
                        "{worker} sent no heartbeat for {} s; the limit is {} s",
                        silent.as_secs(),
                        hb.as_secs()
                    ));
                }
            }
            S::Scheduled if a.attempt > 1 => {
                let waiting = age!(a.last_attempt_complete_time).or(age!(a.scheduled_time))?;
                if waiting > limit {
                    return Some(format!(
                        "{worker} stopped answering, and no other worker of its queue took the run again within {} s",
                        waiting.as_secs()
                    ));
                }
            }
            _ => {}
        }
    }
    let task_waits = raw
        .pending_workflow_task
        .as_ref()
        .and_then(|t| age!(t.scheduled_time))
        .is_some_and(|a| a > LOST_MARGIN);
    if !raw.pending_activities.is_empty() || !task_waits || d.history_length() <= 3 {
        return None;
    }
    // The activity ended: lost (timed out), or finished with a result
    // that a worker of the queue will still record.
    let events = handle
        .fetch_history(Default::default())
        .into_events()
        .await
        .ok()?;
    let timed_out = events.iter().rev().find_map(|e| match &e.attributes {
        Some(A::ActivityTaskTimedOutEventAttributes(_)) => Some(true),
        Some(
            A::ActivityTaskCompletedEventAttributes(_)
            | A::ActivityTaskFailedEventAttributes(_)
            | A::ActivityTaskCanceledEventAttributes(_),
        ) => Some(false),
        _ => None,
    })?;
    timed_out.then(|| {
        format!(
            "its worker sent no heartbeat within {} s, and no worker of its queue is left to end the run",
            hb.as_secs()
        )
    })
}

/// Start `job`'s workflow on `queue`; an existing one with its ID counts
/// as started (a retry, or a restart).
async fn start(client: &TemporalClient, job: Dispatch, queue: &str) -> Result<(), Handover> {
    let c = client.get().await.map_err(Handover::Unreachable)?;
    let options = WorkflowStartOptions::new(queue.to_string(), job.request_id.clone())
        // Never a second run of a request, even after the first finished.
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .build();
    match c.start_workflow(AirlockRequest::run, job, options).await {
        Ok(_) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
        Err(WorkflowStartError::Rpc(s))
            if matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
            ) =>
        {
            Err(Handover::Unreachable(format!(
                "Temporal at {} cannot be reached ({})",
                client.cfg.url,
                s.message()
            )))
        }
        Err(e) => Err(Handover::Refused(format!(
            "Temporal refused the request: {e}"
        ))),
    }
}

/// How workflow `id` ended, asking again while the server is unreachable.
async fn result(client: &TemporalClient, id: &str) -> Result<Ran, WorkflowGetResultError> {
    loop {
        let c = match client.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("following Temporal workflow {id}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let r = c
            .get_workflow_handle::<AirlockRequest>(id.to_string())
            .get_result(WorkflowGetResultOptions::default())
            .await;
        match r {
            Err(e)
                if !e.is_workflow_outcome()
                    && !matches!(e, WorkflowGetResultError::NotFound(_)) =>
            {
                tracing::warn!("following Temporal workflow {id}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

impl Action for TemporalAction {
    fn spec(&self) -> &ActionSpec {
        self.inner.spec()
    }

    fn prepare(&self, params: Params) -> Result<Prepared, crate::action::PrepareError> {
        let mut p = self.inner.prepare(params)?;
        p.shown
            .push(format!("runs on Temporal, task queue {}", self.queue));
        Ok(p)
    }

    fn prepares_slowly(&self) -> bool {
        self.inner.prepares_slowly()
    }

    fn version(&self) -> Option<String> {
        self.inner.version()
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        self.start_and_follow(ctx, params)
    }

    fn continues_elsewhere(&self) -> bool {
        true
    }

    /// After a restart: the same start, which finds the workflow if it
    /// reached Temporal and follows it; only if it never did is it
    /// started now.
    fn resume(&self, ctx: &RunContext, params: &Params) -> Outcome {
        self.start_and_follow(ctx, params)
    }
}
