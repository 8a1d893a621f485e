//! A rule's plan: before the prompt, the request's action with some
//! parameters overridden (`dry_run: true`), or another action of the
//! pack, runs on the executor the action would use, within a time bound.
//! Its output is what approvers see (the first lines in the prompt, the
//! whole in `!status` and the audit), and its digest is what they approve;
//! a failed plan refuses the request. When what it ran against changes
//! before approval (a pack switch, the policy), it runs again.

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Engine, request_entry};
use crate::action::Prepared;
use crate::action::executor::{Followed, Job};
use crate::audit::{Event, Status};
use crate::requests::{PlanRun, Request};

/// A plan's output kept (and shown whole in `!status`).
const KEPT: usize = 64 * 1024;
/// Lines of it in the prompt.
pub(super) const PROMPT_LINES: usize = 10;

/// What an outcome printed: stdout (and stderr) when it has them, else
/// its result as JSON, else its summary.
fn output_of(outcome: &crate::action::Outcome) -> String {
    let r = &outcome.result;
    // A runner's stdout is text, or the JSON it printed, parsed.
    let stream = |k: &str| match r.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    };
    let mut text = stream("stdout");
    text.push_str(&stream("stderr"));
    if text.trim().is_empty() && !r.is_null() && r.get("stdout").is_none() {
        text = serde_json::to_string_pretty(r).unwrap_or_default();
    }
    if text.trim().is_empty() {
        text = outcome.summary.clone();
    }
    text
}

impl Engine {
    /// Whether `req`'s rule has a plan.
    pub(super) fn has_plan(&self, req: &Request) -> bool {
        self.policy()
            .rule(&req.rule)
            .is_some_and(|r| r.plan.is_some())
    }

    /// Run `req`'s plan against what `prepared` will run (blocking, up to
    /// the plan's time bound), record it, and keep it on the request.
    /// None: its rule has no plan. Err: the plan failed, with its output.
    pub(super) fn run_plan(
        &self,
        req: &Request,
        prepared: &Prepared,
        now: impl Fn() -> u64,
    ) -> Option<Result<PlanRun, String>> {
        let plan = self.policy().rule(&req.rule)?.plan.clone()?;
        let name = plan.action.clone().unwrap_or_else(|| req.action.clone());
        let Some(action) = self.action(&name) else {
            return Some(Err(format!("its plan's action {name} is not available")));
        };
        let same = name == req.action;
        let params = match plan_params(req, &action, same, &plan.parameters) {
            Ok(p) => p,
            Err(e) => return Some(Err(format!("its plan ({name}) cannot run: {e}"))),
        };
        let job = Job {
            request_id: format!("{}-plan", req.id),
            requester: req.requester.clone(),
            approvers: Vec::new(),
            action,
            params: params.clone(),
            plan: if same {
                prepared.plan.clone()
            } else {
                Value::Null
            },
            started: now(),
            resume: false,
            // A plan asks nobody anything.
            ask: Arc::new(crate::action::nobody),
        };
        let (followed, stopped) = self.follow_within(job, plan.timeout);
        let mut output = output_of(&followed.outcome);
        if stopped {
            output.push_str(&format!(
                "\n(stopped after {}: the plan's time bound)",
                crate::clock::human(plan.timeout)
            ));
        }
        let run = PlanRun::of(
            name.clone(),
            followed.outcome.status == crate::action::Status::Succeeded,
            output,
        );
        self.record(vec![
            request_entry(Event::Planned, req, now())
                .status(if run.ok {
                    Status::Succeeded
                } else {
                    Status::Failed
                })
                .detail(json!({
                    "action": name, "parameters": action_masked(self, &name, &params),
                    "digest": run.digest, "output": run.output, "truncated": run.truncated,
                })),
        ]);
        let _ = self.requests.update(&req.id, |r| {
            r.plan_run = Some(run.clone());
            Ok(())
        });
        Some(if run.ok {
            Ok(run)
        } else {
            Err(format!(
                "its plan ({name}) failed:\n{}",
                first_lines(&run.output, PROMPT_LINES)
            ))
        })
    }

    /// Submit `job` and follow it to its end, stopping it past `bound`;
    /// whether it was stopped.
    fn follow_within(&self, job: Job, bound: std::time::Duration) -> (Followed, bool) {
        let id = job.request_id.clone();
        if let Err(e) = self.executor.submit(job) {
            let failed = Followed {
                outcome: crate::action::Outcome::failed(e.to_string()),
                cancelled_by: None,
            };
            return (failed, false);
        }
        let (done, wait) = channel::<()>();
        let (executor, watched) = (self.executor.clone(), id.clone());
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(bound) {
                executor.cancel(&watched, "airlock (the plan's time bound)");
            }
        });
        let followed = self.executor.follow(&id);
        let _ = done.send(());
        let stopped = followed.cancelled_by.is_some();
        (followed, stopped)
    }
}

/// The parameters a plan runs with: the request's as asked (only those
/// another action knows), the plan's over them, checked by the schema as
/// any request's are (an immutable one, such as a secret from the pack's
/// config, cannot be set by a plan either).
fn plan_params(
    req: &Request,
    action: &Arc<dyn crate::action::Action>,
    same: bool,
    over: &crate::alias::Params,
) -> Result<crate::alias::Params, String> {
    let known: Vec<String> = action
        .spec()
        .params
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let mut params: crate::alias::Params = req
        .asked
        .iter()
        .filter(|(k, _)| same || known.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    params.extend(over.clone());
    super::request::validated(Some(action.spec()), params)
}

impl PlanRun {
    /// A plan's run from its whole output: digested whole, kept up to
    /// `KEPT` bytes.
    fn of(action: String, ok: bool, mut output: String) -> PlanRun {
        let digest = crate::audit::hex(&Sha256::digest(output.as_bytes()));
        let truncated = output.len() > KEPT;
        if truncated {
            let mut cut = KEPT;
            while !output.is_char_boundary(cut) {
                cut -= 1;
            }
            output.truncate(cut);
        }
        PlanRun {
            action,
            ok,
            output,
            truncated,
            digest,
        }
    }
}

/// The parameters as the audit may hold them (secrets masked).
fn action_masked(engine: &Engine, name: &str, params: &crate::alias::Params) -> Value {
    match engine.action(name) {
        Some(a) => Value::Object(a.spec().masked(params)),
        None => Value::Null,
    }
}

/// The first `n` lines of `text`, and how many more there are.
pub(super) fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines
        .iter()
        .take(n)
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    if lines.len() > n {
        out.push_str(&format!("\n  … {} more lines", lines.len() - n));
    }
    out
}
