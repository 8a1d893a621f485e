//! What a finished run leaves: how it ended, its reaction, the
//! `execution` st2's result templates see, and its audit entry's detail.

use serde_json::{Value, json};

use super::{FAILED, SUCCEEDED};
use crate::action::Outcome;
use crate::clock;
use crate::requests::{Request, State};

/// How a run came to its end.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// On its own.
    Ran,
    /// Stopped by shutdown.
    Interrupted,
    /// Stopped by `!cancel`.
    CancelledBy(String),
}

/// The status reaction for a request that ended in `state`.
pub(super) fn end_reaction(state: State) -> &'static str {
    if state == State::Succeeded {
        SUCCEEDED
    } else {
        FAILED
    }
}

/// st2's `execution` as result templates see it (`page`: the request's
/// web page, if the web view is on).
pub(super) fn execution_view(
    req: &Request,
    outcome: &Outcome,
    status: &str,
    (started, finished): (u64, u64),
    page: Option<&str>,
) -> Value {
    // Run by StackStorm: its execution id and the parameters it ran, as
    // st2's own execution object would give them to the templates.
    let remote = outcome.remote.as_ref().map(|r| &r.view);
    json!({
        "id": remote.and_then(|r| r.get("id")).cloned().unwrap_or_else(|| json!(req.id)),
        "request_id": req.id,
        "status": remote.and_then(|r| r.get("status")).cloned().unwrap_or_else(|| json!(status)),
        "action": {"ref": req.action},
        "parameters": remote
            .and_then(|r| r.get("parameters"))
            .cloned()
            .unwrap_or_else(|| json!(req.params)),
        "result": outcome.result,
        "context": {
            "user": req.requester, "api_user": req.requester, "source_channel": req.room,
            "approvers": req.approvals.iter().map(|a| &a.user).collect::<Vec<_>>(),
        },
        "start_timestamp": clock::format_ms(started),
        "end_timestamp": clock::format_ms(finished),
        "elapsed_seconds": finished.saturating_sub(started) as f64 / 1000.0,
        // st2's execution carries its web UI link; airlock's is the
        // request's page, when the web view is on.
        "web_url": page,
    })
}

/// The `finished` / `interrupted` entry's detail: the whole result (a
/// chat message may cut it), how long, who cancelled it, the secrets'
/// proofs, what it deployed and who approved it (who deployed what is
/// answered from this one entry, long after the request itself has left
/// the store), and where it ran when not here.
pub(super) fn outcome_detail(
    req: &Request,
    outcome: &Outcome,
    ending: &Ending,
    elapsed_ms: u64,
    recovered: bool,
) -> Value {
    let mut detail = json!({
        "summary": outcome.summary, "elapsed_ms": elapsed_ms, "result": outcome.result,
    });
    if let Ending::CancelledBy(user) = ending {
        detail["cancelled_by"] = json!(user);
    }
    if !outcome.proofs.is_empty() {
        detail["secrets"] = Value::Object(
            outcome
                .proofs
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        );
    }
    if let Some(first) = outcome.deployed.first() {
        detail["commit"] = json!(first.commit);
        detail["deployed"] = json!(outcome.deployed);
    }
    if !req.approvals.is_empty() {
        detail["approved_by"] = json!(req.approvals.iter().map(|a| &a.user).collect::<Vec<_>>());
    }
    if recovered {
        detail["recovered"] = json!(true);
    }
    if let Some(remote) = &outcome.remote {
        detail[remote.audit_key] = remote.view.clone();
    }
    detail
}
