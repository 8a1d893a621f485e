//! `airlock policy explain`'s text: what a command would do, decided but
//! not done, in the words an operator reads (the CLI prints it).

use std::fmt::Write;

use super::request::Evaluation;
use crate::action::st2::St2Config;
use crate::alias::Params;
use crate::clock;
use crate::policy::{self, ConfirmPolicy, Decision, Explanation, Policy, Subject};

/// The explanation, and whether every execution would be allowed.
pub struct Explained {
    /// Line by line: the alias, each execution's parameters, the rules
    /// that matched, windows, the decision and its confirmation.
    pub text: String,
    /// No execution denied or rejected.
    pub allowed: bool,
}

/// Explain `eval` for `who` under `policy`; `st2` is the StackStorm API,
/// when configured.
pub fn explain(
    eval: &Evaluation,
    policy: &Policy,
    who: &Subject,
    st2: Option<&St2Config>,
) -> Explained {
    let mut out = format!(
        "command matches alias {} ({}) → action {}\n",
        eval.alias.reference(),
        eval.representation,
        eval.alias.action_ref
    );
    let mut allowed = true;
    for (i, ex) in eval.executions.iter().enumerate() {
        if eval.executions.len() > 1 {
            let _ = writeln!(out, "execution {}:", i + 1);
        }
        match ex {
            Ok((params, explanation)) => {
                allowed &= execution(&mut out, eval, policy, who, st2, params, explanation);
            }
            Err(e) => {
                let _ = writeln!(out, "parameters rejected: {e}");
                allowed = false;
            }
        }
    }
    Explained { text: out, allowed }
}

/// One execution: its parameters, the rules, windows and the decision;
/// whether it is allowed.
fn execution(
    out: &mut String,
    eval: &Evaluation,
    policy: &Policy,
    who: &Subject,
    st2: Option<&St2Config>,
    params: &Params,
    explanation: &Explanation,
) -> bool {
    let (user, room) = (who.user, who.room);
    let _ = write!(out, "parameters:\n{}", super::params_text(params));
    let matched = if explanation.matched.is_empty() {
        "none".to_string()
    } else {
        explanation.matched.join(", ")
    };
    let _ = writeln!(out, "rules matching {user} in {room}: {matched}");
    let reference = eval.alias.reference();
    let target = policy::Target::Alias {
        reference: &reference,
        pack: &eval.alias.pack,
        action_ref: &eval.alias.action_ref,
    };
    for (rule, window, state) in policy.windows(who, &target) {
        let _ = writeln!(out, "window of rule {rule}: {window}; {state}");
    }
    let (rule, confirm, break_glass) = match &explanation.decision {
        Decision::Deny { rule, reason } => {
            let rule = rule
                .as_ref()
                .map(|r| format!(" [rule {r}]"))
                .unwrap_or_default();
            let _ = writeln!(out, "decision: DENY ({reason}){rule}");
            return false;
        }
        Decision::Allow {
            rule,
            confirm,
            break_glass,
        } => (rule, confirm, *break_glass),
    };
    let _ = writeln!(out, "decision: ALLOW by rule {rule}");
    let twofactor = confirm.is_none() && eval.alias.twofactor();
    if twofactor {
        out.push_str("the alias sets extra.security.twofactor: a second person confirms\n");
    }
    if break_glass {
        let _ = writeln!(
            out,
            "break-glass: {user} may run it at once with --break-glass \"reason\" (announced, flagged until someone else reviews it)"
        );
    }
    let confirm = confirm
        .clone()
        .or_else(|| twofactor.then(ConfirmPolicy::second_person));
    out.push_str(&confirmation(confirm.as_ref()));
    match st2.filter(|s| s.routes(&eval.alias.action_ref)) {
        Some(s) => {
            let _ = writeln!(
                out,
                "runs on StackStorm at {} (st2 checks its parameters when the request is made)",
                s.url
            );
        }
        None if !eval.action_available => {
            let _ = writeln!(
                out,
                "note: action {} is not available in airlock; it would be refused",
                eval.alias.action_ref
            );
        }
        None => {}
    }
    true
}

/// Who must confirm, in words (one line).
fn confirmation(confirm: Option<&ConfirmPolicy>) -> String {
    let Some(c) = confirm else {
        return "confirmation: none, runs at once\n".into();
    };
    format!(
        "confirmation: {}{}{}; expires after {}\n",
        c.describe(),
        if c.self_approve {
            ", the requester may approve"
        } else {
            ", not the requester"
        },
        if c.verified_devices {
            ", from cross-signed devices only"
        } else {
            ""
        },
        clock::human(c.expires)
    )
}
