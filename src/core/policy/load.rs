//! Reading policy files: every problem reported with file, line and
//! field, and nothing kept from a policy with errors.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use regex::Regex;
use serde::Deserialize;

use super::{
    BUILTINS, Confirm, ConfirmPolicy, Constraint, DEFAULT_EXPIRY, Effect, Glob, LoadedPolicy, Rule,
    Subjects, Window, options,
};
use crate::diag::{self, Diagnostic, Severity, YamlIndex};
use crate::{clock, ids};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    effect: Effect,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    min_power_level: Option<i64>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    packs: Vec<String>,
    #[serde(default)]
    builtins: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, RawConstraint>,
    #[serde(default)]
    extra_params: bool,
    #[serde(default)]
    confirm: Option<RawConfirm>,
    #[serde(default)]
    when: Option<RawWhen>,
    #[serde(default)]
    break_glass: Option<RawSubjects>,
    #[serde(default)]
    lock: Option<String>,
    #[serde(default)]
    queue_timeout: Option<String>,
    #[serde(default)]
    break_glass_passes_lock: bool,
    #[serde(default)]
    page_on_failure: bool,
    #[serde(default)]
    plan: Option<options::RawPlan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    days: Vec<String>,
    #[serde(default)]
    hours: Option<String>,
    #[serde(default)]
    dates: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConstraint {
    #[serde(default)]
    values: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawConfirm {
    Flag(bool),
    Spec(RawConfirmSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfirmSpec {
    #[serde(default)]
    approvers: Option<RawSubjects>,
    #[serde(default)]
    approvals: Option<u32>,
    #[serde(default)]
    self_approve: Option<bool>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    quorum: Option<Vec<RawQuorumPart>>,
    #[serde(default)]
    verified_devices: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuorumPart {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    approvals: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubjects {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

/// Reports one problem at a field of the file being read.
pub(super) type Report<'a> = dyn FnMut(&str, Severity, String) + 'a;

fn user_glob_ok(g: &str) -> bool {
    ids::is_user_glob(g)
}

fn room_glob_ok(g: &str) -> bool {
    ids::is_room_glob(g)
}

/// The policy in `files` (path, text), in order; reading them is
/// `catalog::load_policy`'s.
pub fn parse_texts(files: &[(PathBuf, String)]) -> LoadedPolicy {
    let mut out = LoadedPolicy::default();
    let mut parsed = Vec::new();
    for (f, text) in files {
        match serde_yaml::from_str::<Option<RawFile>>(text) {
            Ok(raw) => parsed.push((f.clone(), YamlIndex::parse(text), raw.unwrap_or_default())),
            Err(e) => out.diagnostics.push(diag::from_serde_yaml(f, &e)),
        }
    }
    load_groups(&parsed, &mut out);
    let mut ids: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for (f, idx, raw) in parsed {
        for (i, r) in raw.rules.into_iter().enumerate() {
            let base = format!("rules[{i}]");
            let mut errs = Vec::new();
            let mut e =
                |path: &str, sev: Severity, msg: String| errs.push(idx.diag(sev, &f, path, msg));
            if let Some((pf, line)) = ids.get(&r.id) {
                e(
                    &format!("{base}.id"),
                    Severity::Error,
                    format!(
                        "rule id \"{}\" is already used at {}:{line}",
                        r.id,
                        pf.display()
                    ),
                );
            }
            let line = idx.locate(&base).0;
            ids.insert(r.id.clone(), (f.clone(), line));
            let rule = load_rule(r, &out.policy.groups, &base, &mut e);
            let failed = errs.iter().any(Diagnostic::is_error);
            out.diagnostics.extend(errs);
            if let Some(rule) = rule.filter(|_| !failed) {
                out.policy.rules.push(Rule {
                    file: f.clone(),
                    line,
                    ..rule
                });
            }
        }
    }
    if out.has_errors() {
        // Never run with part of a policy.
        out.policy.rules.clear();
    }
    out
}

/// Groups first: rules in any file may name groups from any file.
fn load_groups(parsed: &[(PathBuf, YamlIndex, RawFile)], out: &mut LoadedPolicy) {
    let mut group_src: HashMap<String, PathBuf> = HashMap::new();
    for (f, idx, raw) in parsed {
        for (name, members) in &raw.groups {
            let field = format!("groups.{name}");
            if let Some(prev) = group_src.get(name) {
                out.diagnostics.push(idx.diag(
                    Severity::Error,
                    f,
                    &field,
                    format!("group {name} is already defined in {}", prev.display()),
                ));
                continue;
            }
            group_src.insert(name.clone(), f.clone());
            for (i, m) in members.iter().enumerate() {
                if !user_glob_ok(m) {
                    out.diagnostics.push(idx.diag(
                        Severity::Error,
                        f,
                        &format!("{field}[{i}]"),
                        format!("\"{m}\" is not a Matrix user ID or glob (@user:server)"),
                    ));
                }
            }
            if members.is_empty() {
                out.diagnostics.push(idx.diag(
                    Severity::Warning,
                    f,
                    &field,
                    "group has no members",
                ));
            }
            out.policy
                .groups
                .insert(name.clone(), members.iter().map(|m| Glob::new(m)).collect());
        }
    }
}

/// One rule, every problem reported through `e`. The file and line are
/// filled in by the caller.
fn load_rule(
    r: RawRule,
    groups: &BTreeMap<String, Vec<Glob>>,
    base: &str,
    e: &mut Report,
) -> Option<Rule> {
    let who = subjects(groups, &r.users, &r.groups, base, e);
    if r.users.is_empty() && r.groups.is_empty() {
        e(
            base,
            Severity::Error,
            "rule names no users or groups, so it can never match".into(),
        );
    }
    check_targets(&r, base, e);
    let params = load_params(&r, base, e);
    let lock = options::lock(
        (
            r.lock.as_deref(),
            r.queue_timeout.as_deref(),
            r.break_glass_passes_lock,
        ),
        r.effect,
        base,
        e,
    );
    let plan = options::plan(r.plan.as_ref(), r.effect, base, e);
    let confirm = load_confirm(r.confirm, r.effect, groups, base, e);
    let when = r.when.and_then(|w| {
        Window::parse(w.timezone.as_deref(), &w.days, w.hours.as_deref(), &w.dates)
            .map_err(|(field, msg)| e(&format!("{base}.when.{field}"), Severity::Error, msg))
            .ok()
    });
    let break_glass = r
        .break_glass
        .map(|b| load_break_glass(b, r.effect, &confirm, groups, base, e));
    let globs = |v: &[String]| v.iter().map(|s| Glob::new(s)).collect::<Vec<_>>();
    Some(Rule {
        id: r.id,
        effect: r.effect,
        description: r.description,
        subjects: who,
        rooms: globs(&r.rooms),
        min_power_level: r.min_power_level,
        aliases: globs(&r.aliases),
        actions: globs(&r.actions),
        packs: globs(&r.packs),
        builtins: globs(&r.builtins),
        params,
        extra_params: r.extra_params,
        confirm,
        when,
        break_glass,
        lock,
        page_on_failure: r.page_on_failure,
        plan,
        file: PathBuf::new(),
        line: 0,
    })
}

/// Where and what a rule covers: rooms that are room IDs, aliases or
/// globs; something to match; known built-ins; a sane power level.
fn check_targets(r: &RawRule, base: &str, e: &mut Report) {
    for (j, room) in r.rooms.iter().enumerate() {
        if !room_glob_ok(room) {
            e(
                &format!("{base}.rooms[{j}]"),
                Severity::Error,
                format!(
                    "\"{room}\" is not a room ID (!id, or !id:server before room version 12), room alias (#alias:server) or glob"
                ),
            );
        }
    }
    if r.aliases.is_empty() && r.actions.is_empty() && r.packs.is_empty() && r.builtins.is_empty() {
        e(
            base,
            Severity::Error,
            "rule names no aliases, actions, packs or builtins, so it can never match".into(),
        );
    }
    for (j, b) in r.builtins.iter().enumerate() {
        if b != "*" && !BUILTINS.contains(&b.as_str()) {
            e(
                &format!("{base}.builtins[{j}]"),
                Severity::Error,
                format!(
                    "unknown built-in command \"{b}\" (known: {})",
                    BUILTINS.join(", ")
                ),
            );
        }
    }
    if let Some(pl) = r.min_power_level
        && !(-1_000_000..=1_000_000).contains(&pl)
    {
        e(
            &format!("{base}.min_power_level"),
            Severity::Warning,
            format!("power level {pl} is unusual"),
        );
    }
}

/// Who may break the rule's glass: never a deny rule's, and only where
/// there is a confirmation to skip.
fn load_break_glass(
    b: RawSubjects,
    effect: Effect,
    confirm: &Confirm,
    groups: &BTreeMap<String, Vec<Glob>>,
    base: &str,
    e: &mut Report,
) -> Subjects {
    let field = format!("{base}.break_glass");
    if effect == Effect::Deny {
        e(
            &field,
            Severity::Error,
            "deny rules cannot be broken: break-glass skips a confirmation, never a deny rule"
                .into(),
        );
    }
    if b.users.is_empty() && b.groups.is_empty() {
        e(&field, Severity::Error, "names no users or groups".into());
    }
    if matches!(confirm, Confirm::Never) {
        e(
            &field,
            Severity::Warning,
            "the rule asks for no confirmation, so there is nothing to break".into(),
        );
    }
    subjects(groups, &b.users, &b.groups, &field, e)
}

/// A rule's parameter constraints: `values` or an anchored `regex` each.
fn load_params(r: &RawRule, base: &str, e: &mut Report) -> BTreeMap<String, Constraint> {
    let mut params = BTreeMap::new();
    for (name, c) in &r.params {
        let field = format!("{base}.params.{name}");
        if r.effect == Effect::Deny {
            e(
                &field,
                Severity::Error,
                "deny rules cannot constrain parameters".into(),
            );
        }
        match (&c.values, &c.regex) {
            (Some(vs), None) => {
                if vs.is_empty() {
                    e(
                        &field,
                        Severity::Warning,
                        "no values are allowed: the rule allows nothing that sets this parameter"
                            .into(),
                    );
                }
                let vs = vs.iter().map(yaml_scalar_text).collect();
                params.insert(name.clone(), Constraint::Values(vs));
            }
            (None, Some(re)) => match Regex::new(&format!("^(?:{re})$")) {
                Ok(re) => {
                    params.insert(name.clone(), Constraint::Regex(re));
                }
                Err(err) => e(
                    &format!("{field}.regex"),
                    Severity::Error,
                    format!(
                        "invalid regex: {}",
                        err.to_string()
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim_start_matches("error: ")
                    ),
                ),
            },
            _ => e(
                &field,
                Severity::Error,
                "give exactly one of `values` or `regex`".into(),
            ),
        }
    }
    if !r.params.is_empty() && r.aliases.is_empty() && r.actions.is_empty() && r.packs.is_empty() {
        e(
            &format!("{base}.params"),
            Severity::Error,
            "parameter constraints on a rule for built-ins can never apply".into(),
        );
    }
    params
}

/// A rule's `confirm`.
fn load_confirm(
    confirm: Option<RawConfirm>,
    effect: Effect,
    groups: &BTreeMap<String, Vec<Glob>>,
    base: &str,
    e: &mut Report,
) -> Confirm {
    match confirm {
        None => Confirm::Default,
        Some(_) if effect == Effect::Deny => {
            e(
                &format!("{base}.confirm"),
                Severity::Error,
                "deny rules cannot ask for confirmation".into(),
            );
            Confirm::Default
        }
        Some(RawConfirm::Flag(false)) => Confirm::Never,
        Some(RawConfirm::Flag(true)) => Confirm::By(ConfirmPolicy::anyone_allowed()),
        Some(RawConfirm::Spec(c)) => Confirm::By(confirm_spec(c, groups, base, e)),
    }
}

/// A confirmation spelled out: approvers and approvals, or a quorum of
/// parts (each its approvers and approvals); when it expires.
fn confirm_spec(
    c: RawConfirmSpec,
    groups: &BTreeMap<String, Vec<Glob>>,
    base: &str,
    e: &mut Report,
) -> ConfirmPolicy {
    let raw_approvers = c.approvers.unwrap_or_default();
    let (mut users, mut group_names) = (raw_approvers.users, raw_approvers.groups);
    let mut approvals = c.approvals.unwrap_or(1);
    let mut quorum = Vec::new();
    if let Some(parts) = &c.quorum {
        if !users.is_empty() || !group_names.is_empty() || c.approvals.is_some() {
            e(
                &format!("{base}.confirm.quorum"),
                Severity::Error,
                "a quorum names its approvers and approvals per part; drop approvers and approvals"
                    .into(),
            );
        }
        if parts.is_empty() {
            e(
                &format!("{base}.confirm.quorum"),
                Severity::Error,
                "needs at least one part".into(),
            );
        }
        approvals = 0;
        for (i, part) in parts.iter().enumerate() {
            let field = format!("{base}.confirm.quorum[{i}]");
            if part.users.is_empty() && part.groups.is_empty() {
                e(&field, Severity::Error, "names no users or groups".into());
            }
            let n = part.approvals.unwrap_or(1);
            if n == 0 {
                e(
                    &format!("{field}.approvals"),
                    Severity::Error,
                    "must be at least 1".into(),
                );
            }
            quorum.push((subjects(groups, &part.users, &part.groups, &field, e), n));
            users.extend(part.users.iter().cloned());
            group_names.extend(part.groups.iter().cloned());
            approvals += n;
        }
    }
    let approvers = if quorum.is_empty() {
        subjects(
            groups,
            &users,
            &group_names,
            &format!("{base}.confirm.approvers"),
            e,
        )
    } else {
        // The union; each part was checked above.
        subjects(groups, &users, &group_names, "", &mut |_, _, _| {})
    };
    if approvals == 0 {
        e(
            &format!("{base}.confirm.approvals"),
            Severity::Error,
            "must be at least 1 (use `confirm: false` for none)".into(),
        );
    }
    let expires = match c.expires.as_deref().map(clock::parse_duration) {
        None => DEFAULT_EXPIRY,
        Some(Some(d)) if !d.is_zero() => d,
        Some(_) => {
            e(
                &format!("{base}.confirm.expires"),
                Severity::Error,
                "expected a duration such as 90s, 10m, 2h".into(),
            );
            DEFAULT_EXPIRY
        }
    };
    let self_approve = c.self_approve.unwrap_or(approvers.is_empty());
    ConfirmPolicy {
        approvers,
        approvals,
        self_approve,
        expires,
        quorum,
        verified_devices: c.verified_devices,
    }
}

fn yaml_scalar_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn subjects(
    groups: &BTreeMap<String, Vec<Glob>>,
    users: &[String],
    group_names: &[String],
    base: &str,
    e: &mut Report,
) -> Subjects {
    let mut expanded = Vec::new();
    for (j, u) in users.iter().enumerate() {
        if !user_glob_ok(u) {
            e(
                &format!("{base}.users[{j}]"),
                Severity::Error,
                format!(
                    "\"{u}\" is not a Matrix user ID or glob (@user:server); display names are never used"
                ),
            );
        }
    }
    for (j, g) in group_names.iter().enumerate() {
        match groups.get(g) {
            Some(members) => expanded.extend(members.iter().cloned()),
            None => e(
                &format!("{base}.groups[{j}]"),
                Severity::Error,
                format!("unknown group \"{g}\""),
            ),
        }
    }
    Subjects {
        users: users.iter().map(|u| Glob::new(u)).collect(),
        groups: group_names.to_vec(),
        expanded,
    }
}
