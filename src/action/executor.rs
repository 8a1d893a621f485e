//! The executor seam: how an approved request's action is run. The engine
//! submits a [`Job`], follows it to its end, may cancel it, and after a
//! restart re-attaches to what the last process submitted; it never knows
//! where the action runs. [`Embedded`] runs actions in this process (st2's
//! runners, `packs.*`, `core.*`); executors that hand actions to other
//! machines implement the same trait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use super::{Action, Outcome, OutputTail, RunContext};
use crate::alias::Params;

/// An approved request, as an executor receives it.
#[derive(Clone)]
pub struct Job {
    /// The request's id: the handle the engine uses for it everywhere.
    pub request_id: String,
    /// Who asked for it.
    pub requester: String,
    /// Who approved it.
    pub approvers: Vec<String>,
    /// What runs.
    pub action: Arc<dyn Action>,
    /// Exactly the parameters the prompt showed.
    pub params: Params,
    /// What `prepare` planned.
    pub plan: Value,
    /// When it started (ms since the epoch, the engine's clock).
    pub started: u64,
    /// Re-attach to a run that went on while airlock was down
    /// ([`Action::resume`]) instead of starting one.
    pub resume: bool,
    /// How it asks the request's approvers a question mid-run.
    pub ask: Arc<super::Ask>,
}

/// How a followed job ended.
pub struct Followed {
    /// Its outcome.
    pub outcome: Outcome,
    /// Who stopped it with `!cancel`, if someone did.
    pub cancelled_by: Option<String>,
}

/// Where a running job stands, for `!status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// When it started.
    pub started: u64,
    /// The last lines it printed.
    pub lines: Vec<String>,
}

/// Why an executor did not take a job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The request is running here already: it runs once.
    #[error("request {0} is already running")]
    AlreadyRunning(String),
    /// Where it would run cannot take it now (a remote executor down).
    #[error("{0}")]
    Unavailable(String),
}

/// Runs approved requests' actions.
pub trait Executor: Send + Sync {
    /// A name for the audit log (`embedded`, `st2`, `temporal`).
    fn name(&self) -> &str;

    /// Hand `job` over; it runs once (a second submit of the same request
    /// is refused).
    fn submit(&self, job: Job) -> Result<(), SubmitError>;

    /// Wait for the job submitted as `request_id` to end (blocking).
    fn follow(&self, request_id: &str) -> Followed;

    /// Ask the job to stop on behalf of `user`; false if it is not running
    /// here.
    fn cancel(&self, request_id: &str, user: &str) -> bool;

    /// Where a running job stands.
    fn progress(&self, request_id: &str) -> Option<Progress>;

    /// After a restart: the outcome of a job the last process submitted
    /// and did not report, if what it made durable shows one. None: it is
    /// reported interrupted.
    fn reattach(&self, job: &Job) -> Option<Outcome>;

    /// Shutdown: every running job is asked to stop at its next safe point.
    fn shutdown(&self);
}

/// A job running in this process.
struct Slot {
    job: Job,
    cancel: Arc<AtomicBool>,
    output: Arc<OutputTail>,
    cancelled_by: Option<String>,
}

/// The in-process executor: the action runs on the thread that follows it.
#[derive(Default)]
pub struct Embedded {
    running: Mutex<HashMap<String, Slot>>,
    stopping: AtomicBool,
}

impl Embedded {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Executor for Embedded {
    fn name(&self) -> &str {
        "embedded"
    }

    fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let mut running = self.lock();
        if running.contains_key(&job.request_id) {
            return Err(SubmitError::AlreadyRunning(job.request_id));
        }
        running.insert(
            job.request_id.clone(),
            Slot {
                job,
                cancel: Arc::new(AtomicBool::new(self.stopping.load(Ordering::Relaxed))),
                output: Arc::default(),
                cancelled_by: None,
            },
        );
        Ok(())
    }

    fn follow(&self, request_id: &str) -> Followed {
        let Some((job, cancel, output)) = self
            .lock()
            .get(request_id)
            .map(|s| (s.job.clone(), s.cancel.clone(), s.output.clone()))
        else {
            return Followed {
                outcome: Outcome::failed(format!("request {request_id} was not submitted")),
                cancelled_by: None,
            };
        };
        let ctx = RunContext {
            request_id,
            requester: &job.requester,
            approvers: &job.approvers,
            plan: &job.plan,
            cancel: &cancel,
            stopping: &self.stopping,
            output: &output,
            ask: &*job.ask,
        };
        // An action that panics is a failed run, not a dead bot.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if job.resume {
                job.action.resume(&ctx, &job.params)
            } else {
                job.action.run(&ctx, &job.params)
            }
        }))
        .unwrap_or_else(|_| Outcome::failed("the action crashed"));
        let cancelled_by = self.lock().remove(request_id).and_then(|s| s.cancelled_by);
        Followed {
            outcome,
            cancelled_by,
        }
    }

    fn cancel(&self, request_id: &str, user: &str) -> bool {
        match self.lock().get_mut(request_id) {
            Some(s) => {
                s.cancelled_by.get_or_insert_with(|| user.to_string());
                s.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn progress(&self, request_id: &str) -> Option<Progress> {
        self.lock().get(request_id).map(|s| Progress {
            started: s.job.started,
            lines: s.output.lines(),
        })
    }

    fn reattach(&self, job: &Job) -> Option<Outcome> {
        let ctx = RunContext {
            request_id: &job.request_id,
            requester: &job.requester,
            approvers: &job.approvers,
            plan: &job.plan,
            cancel: &AtomicBool::new(false),
            stopping: &AtomicBool::new(false),
            output: &Arc::default(),
            ask: &super::nobody,
        };
        job.action.recover(&ctx, &job.params)
    }

    fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for s in self.lock().values() {
            s.cancel.store(true, Ordering::Relaxed);
        }
    }
}
