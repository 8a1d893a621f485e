//! What a policy rule does besides deciding: the lock its runs hold
//! (`lock`, `queue_timeout`, `break_glass_passes_lock`) and the plan that
//! runs before its prompt (`plan`), read and checked.

use std::time::Duration;

use serde::Deserialize;

use super::load::Report;
use super::{Effect, LockRule, PlanRule, valid_lock_name};
use crate::clock;
use crate::diag::Severity;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    #[serde(default)]
    pub(super) action: Option<String>,
    #[serde(default)]
    pub(super) parameters: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
}

/// A rule's `plan`: another action of a pack (`pack.name`) and/or
/// parameters, and a time bound.
pub(super) fn plan(
    p: Option<&RawPlan>,
    effect: Effect,
    base: &str,
    e: &mut Report,
) -> Option<PlanRule> {
    let p = p?;
    let field = format!("{base}.plan");
    if effect == Effect::Deny {
        e(
            &field,
            Severity::Error,
            "a deny rule runs nothing, so it has no plan".into(),
        );
    }
    if let Some(a) = &p.action
        && !a
            .split_once('.')
            .is_some_and(|(pack, name)| !pack.is_empty() && !name.is_empty())
    {
        e(
            &format!("{field}.action"),
            Severity::Error,
            format!("\"{a}\" is not an action reference (pack.name)"),
        );
    }
    if p.action.is_none() && p.parameters.is_empty() {
        e(
            &field,
            Severity::Error,
            "names neither an action nor parameters: it would run the request itself".into(),
        );
    }
    let timeout = match p.timeout.as_deref().map(clock::parse_duration) {
        None => Duration::from_secs(120),
        Some(Some(d)) if !d.is_zero() => d,
        Some(_) => {
            e(
                &format!("{field}.timeout"),
                Severity::Error,
                "expected a duration such as 30s or 2m".into(),
            );
            Duration::from_secs(120)
        }
    };
    Some(PlanRule {
        action: p.action.clone(),
        parameters: p.parameters.clone(),
        timeout,
    })
}

/// A rule's `lock`, `queue_timeout` and `break_glass_passes_lock`.
pub(super) fn lock(
    (name, queue_timeout, passes): (Option<&str>, Option<&str>, bool),
    effect: Effect,
    base: &str,
    e: &mut Report,
) -> Option<LockRule> {
    let Some(name) = name else {
        for (set, field) in [
            (queue_timeout.is_some(), "queue_timeout"),
            (passes, "break_glass_passes_lock"),
        ] {
            if set {
                e(
                    &format!("{base}.{field}"),
                    Severity::Error,
                    "applies to a rule's lock, and the rule names none (`lock:`)".into(),
                );
            }
        }
        return None;
    };
    let field = format!("{base}.lock");
    if effect == Effect::Deny {
        e(
            &field,
            Severity::Error,
            "a deny rule runs nothing, so it holds no lock".into(),
        );
    }
    if name.contains("{{") || name.contains("{%") {
        if let Err(msg) = crate::render::check_template(name) {
            e(&field, Severity::Error, msg);
        }
    } else if !valid_lock_name(name) {
        e(
            &field,
            Severity::Error,
            format!("\"{name}\" is not a lock name (1 to 100 letters, digits and . _ - / : @)"),
        );
    }
    let queue_timeout = match queue_timeout.map(clock::parse_duration) {
        None => None,
        Some(Some(d)) if !d.is_zero() => Some(d),
        Some(_) => {
            e(
                &format!("{base}.queue_timeout"),
                Severity::Error,
                "expected a duration such as 90s, 10m, 2h".into(),
            );
            None
        }
    };
    Some(LockRule {
        name: name.to_string(),
        queue_timeout,
        break_glass_passes: passes,
    })
}
