//! The st2 actions over the pack manager: `packs.install`,
//! `packs.uninstall`, `packs.rollback` and `packs.list`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::git::Fetched;
use super::records::PackRecord;
use super::source::{Source, valid_pack_name};
use super::{PackError, PackManager};
use crate::action::{
    Action, ActionSpec, Deployed, Outcome, ParamSpec, PrepareError, Prepared, RunContext, Status,
};
use crate::alias::Params;
use crate::alias::cast::ParamType;
use crate::clock;

/// The `packs.*` actions over `mgr`.
pub fn actions(mgr: Arc<PackManager>) -> Vec<Arc<dyn Action>> {
    vec![
        Arc::new(Install {
            spec: install_spec(),
            mgr: mgr.clone(),
        }),
        Arc::new(Uninstall {
            spec: uninstall_spec(),
            mgr: mgr.clone(),
        }),
        Arc::new(Rollback {
            spec: rollback_spec(),
            mgr: mgr.clone(),
        }),
        Arc::new(List {
            spec: list_spec(),
            mgr,
        }),
    ]
}

struct Install {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

/// `packs.install`, with both of st2's parameter sets.
pub fn install_spec() -> ActionSpec {
    use ParamType::*;
    ActionSpec::new(
        "packs.install",
        "Install packs from git",
        vec![
            ParamSpec::new(
                "packs",
                Array,
                "pack names or git URLs, each optionally =<ref>",
            )
            .required(),
            ParamSpec::new(
                "repo_url",
                String,
                "repository holding the packs (StackStorm 1.x)",
            ),
            ParamSpec::new("branch", String, "branch, tag or commit (StackStorm 1.x)"),
            ParamSpec::new(
                "subtree",
                Boolean,
                "packs live in packs/<name> of the repository",
            ),
            ParamSpec::new(
                "register",
                String,
                "what to register: all, aliases, or other st2 kinds",
            )
            .default(json!("all")),
            ParamSpec::new("force", Boolean, "accepted for compatibility").default(json!(false)),
            ParamSpec::new("skip_dependencies", Boolean, "accepted for compatibility")
                .default(json!(false)),
            ParamSpec::new("timeout", Integer, "seconds the fetch may take").default(json!(600)),
            ParamSpec::new(
                "env",
                Object,
                "accepted for compatibility; airlock runs no virtualenv",
            ),
            ParamSpec::new(
                "python3",
                Boolean,
                "accepted for compatibility (st2 2.7–3.3)",
            ),
        ],
    )
}

/// `packs.uninstall`.
pub fn uninstall_spec() -> ActionSpec {
    ActionSpec::new(
        "packs.uninstall",
        "Remove installed packs",
        vec![ParamSpec::new("packs", ParamType::Array, "pack names").required()],
    )
}

/// `packs.rollback`.
pub fn rollback_spec() -> ActionSpec {
    ActionSpec::new(
        "packs.rollback",
        "Restore a pack's previous installed version",
        vec![ParamSpec::new("pack", ParamType::String, "pack name").required()],
    )
}

/// `packs.list`.
pub fn list_spec() -> ActionSpec {
    ActionSpec::new("packs.list", "List installed packs", vec![])
}

const REGISTER_KINDS: [&str; 11] = [
    "all",
    "sensors",
    "actions",
    "rules",
    "aliases",
    "runners",
    "triggers",
    "rule_types",
    "policy_types",
    "policies",
    "configs",
];

impl Action for Install {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn settled(&self, request: &str) {
        self.mgr.forget_switches(Some(request));
    }

    /// Resolving the ref asks the remote (`git ls-remote`).
    fn prepares_slowly(&self) -> bool {
        true
    }

    /// Pin every ref to a commit: the prompt shows the commits, and they,
    /// not the branches, are what the run installs.
    fn prepare(&self, params: Params) -> Result<Prepared, PrepareError> {
        let register = params
            .get("register")
            .and_then(Value::as_str)
            .unwrap_or("all");
        for kind in register.split(',').map(str::trim) {
            if !REGISTER_KINDS.contains(&kind) {
                return Err(PrepareError::Invalid(format!(
                    "register: unknown kind \"{kind}\" (one of {})",
                    REGISTER_KINDS.join(", ")
                )));
            }
        }
        if let Some(t) = params.get("timeout").and_then(Value::as_i64)
            && t <= 0
        {
            return Err(PrepareError::Invalid(
                "timeout must be a positive number of seconds".into(),
            ));
        }
        let sources = self.mgr.resolve(&params)?;
        let mut shown = Vec::new();
        let mut changes = Vec::new();
        for src in &sources {
            shown.push(format!(
                "{} at commit {} ({}) from {}{}",
                src.pack,
                src.commit,
                src.reference.as_deref().unwrap_or("default branch"),
                src.url,
                if src.fetch_url != src.url {
                    format!(" (fetched from {})", src.fetch_url)
                } else {
                    String::new()
                }
            ));
            // What moving the live version there means: approvers see the
            // range they approve, and the audit keeps it.
            match self.mgr.change_from_live(src) {
                Some(Ok(change)) => {
                    shown.extend(change.lines(&src.pack));
                    changes.push(change);
                }
                Some(Err(why)) => shown.push(format!(
                    "{}: what changes from the live version is unknown: {why}",
                    src.pack
                )),
                None => shown.push(format!("{}: not installed yet", src.pack)),
            }
        }
        let mut plan = serde_json::to_value(sources).expect("sources serialize");
        if !changes.is_empty() {
            plan = json!({"sources": plan, "changes": changes});
        }
        Ok(Prepared {
            params,
            shown,
            plan,
        })
    }

    /// Each ref pinned to the commit the earlier request installed: 1.x's
    /// `branch` (one commit for every pack), or 3.x's `packs` entries
    /// (`name=<commit>`).
    fn pinned(&self, params: &Params, plan: &Value) -> Params {
        let plan = plan.get("sources").unwrap_or(plan);
        let Ok(sources) = serde_json::from_value::<Vec<Source>>(plan.clone()) else {
            return Params::new();
        };
        let mut out = Params::new();
        let one_commit = sources
            .first()
            .filter(|first| sources.iter().all(|s| s.commit == first.commit));
        if params.contains_key("repo_url")
            && let Some(first) = one_commit
        {
            out.insert("branch".into(), json!(first.commit));
        } else if let Some(packs) = params.get("packs").and_then(Value::as_array) {
            let pinned: Vec<Value> = packs
                .iter()
                .filter_map(Value::as_str)
                .zip(&sources)
                .map(|(entry, src)| {
                    let what = entry.rsplit_once('=').map_or(entry, |(w, _)| w);
                    json!(format!("{what}={}", src.commit))
                })
                .collect();
            out.insert("packs".into(), json!(pinned));
        }
        out
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let Some(sources) = planned_sources(ctx, params) else {
            return Outcome::failed("the request carries no resolved commits");
        };
        let timeout =
            Duration::from_secs(params.get("timeout").and_then(Value::as_u64).unwrap_or(600));
        let register = params
            .get("register")
            .and_then(Value::as_str)
            .unwrap_or("all");
        let aliases = register
            .split(',')
            .any(|k| matches!(k.trim(), "all" | "aliases"));
        let mut installed = Vec::new();
        let mut changed = false;
        for src in &sources {
            match self.mgr.install(src, ctx, timeout, aliases) {
                Ok((rec, c, stats)) => {
                    changed |= c;
                    installed.push((rec, stats));
                }
                Err(e) => {
                    let mut out = Outcome::failed(format!("pack {}: {e}", src.pack));
                    out.packs_changed = changed;
                    out.result = json!({
                        "error": out.summary,
                        "installed": installed.iter().map(|(r, _)| &r.name).collect::<Vec<_>>(),
                    });
                    return out;
                }
            }
        }
        installed_outcome(&installed, aliases || changed)
    }

    fn recover(&self, ctx: &RunContext, params: &Params) -> Option<Outcome> {
        let switched = self.mgr.switched_by(ctx.request_id);
        if switched.is_empty() {
            return None;
        }
        let sources = planned_sources(ctx, params).unwrap_or_default();
        let (done, missing): (Vec<&Source>, Vec<&Source>) = sources
            .iter()
            .partition(|s| switched.iter().any(|w| w.pack == s.pack));
        let installed: Vec<(PackRecord, Fetched)> = done
            .iter()
            .filter_map(|s| self.mgr.record(&s.pack))
            .map(|r| (r, Fetched::default()))
            .collect();
        let mut out = installed_outcome(&installed, true);
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.pack.as_str()).collect();
            out.status = Status::Failed;
            out.summary = format!("{}; not installed: {}", out.summary, names.join(", "));
            out.result["error"] = json!(out.summary);
        }
        Some(out)
    }
}

/// The commits `prepare` pinned. Requests stored before the plan existed
/// carried them in a `resolved` parameter.
fn planned_sources(ctx: &RunContext, params: &Params) -> Option<Vec<Source>> {
    let plan = if ctx.plan.is_null() {
        params.get("resolved")?
    } else {
        ctx.plan
    };
    // With what the install changes worked out, the sources sit beside it.
    let plan = plan.get("sources").unwrap_or(plan);
    serde_json::from_value(plan.clone()).ok()
}

/// The outcome of installing `installed` (records as now written).
fn installed_outcome(installed: &[(PackRecord, Fetched)], packs_changed: bool) -> Outcome {
    let summary = installed
        .iter()
        .map(|(r, _)| {
            format!(
                "{}{} at {}",
                r.name,
                r.current
                    .version
                    .as_ref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                &r.current.commit[..12]
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Outcome {
        status: Status::Succeeded,
        result: json!({
            "packs": installed.iter().map(|(r, fetched)| json!({
                "name": r.name, "version": r.current.version, "commit": r.current.commit,
                "url": r.current.url, "ref": r.current.reference,
                "previous": r.previous.first().map(|p| &p.commit),
                "fetched": fetched,
            })).collect::<Vec<_>>(),
            "message": format!("Successfully installed {summary}"),
        }),
        summary: format!("installed {summary}"),
        deployed: installed
            .iter()
            .map(|(r, _)| Deployed {
                pack: r.name.clone(),
                commit: r.current.commit.clone(),
            })
            .collect(),
        packs_changed,
        proofs: Vec::new(),
        remote: None,
    }
}

struct Uninstall {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

impl Action for Uninstall {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn settled(&self, request: &str) {
        self.mgr.forget_switches(Some(request));
    }

    fn prepare(&self, params: Params) -> Result<Prepared, PrepareError> {
        for p in params
            .get("packs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = p.as_str().unwrap_or_default();
            if !valid_pack_name(name) {
                return Err(
                    PackError::Invalid(format!("\"{name}\" is not a valid pack name")).into(),
                );
            }
            if self.mgr.record(name).is_none() {
                return Err(PackError::NotInstalled(name.to_string()).into());
            }
        }
        Ok(Prepared::plain(params))
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let mut removed = Vec::new();
        for p in params
            .get("packs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = p.as_str().unwrap_or_default();
            match self.mgr.uninstall(name, ctx) {
                Ok(rec) => removed.push(json!({"name": rec.name, "commit": rec.current.commit})),
                Err(e) => {
                    let mut out = Outcome::failed(e.to_string());
                    out.packs_changed = !removed.is_empty();
                    return out;
                }
            }
        }
        let names: Vec<&str> = removed.iter().filter_map(|r| r["name"].as_str()).collect();
        let mut out = Outcome::ok(
            format!("uninstalled {}", names.join(", ")),
            json!({"removed": removed}),
        );
        out.packs_changed = true;
        out
    }

    fn recover(&self, ctx: &RunContext, params: &Params) -> Option<Outcome> {
        let switched = self.mgr.switched_by(ctx.request_id);
        if switched.is_empty() {
            return None;
        }
        let names: Vec<&str> = switched.iter().map(|w| w.pack.as_str()).collect();
        let wanted = params
            .get("packs")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let mut out = Outcome::ok(
            format!("uninstalled {}", names.join(", ")),
            json!({"removed": names}),
        );
        if names.len() < wanted {
            out = Outcome::failed(format!(
                "uninstalled only {} before airlock stopped",
                names.join(", ")
            ));
        }
        out.packs_changed = true;
        Some(out)
    }
}

struct Rollback {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

impl Action for Rollback {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn settled(&self, request: &str) {
        self.mgr.forget_switches(Some(request));
    }

    /// Working out what it changes may read the pack's repository.
    fn prepares_slowly(&self) -> bool {
        true
    }

    /// Pin the version to restore, so the prompt shows it and approval
    /// restores exactly that one, and what going back there changes.
    fn prepare(&self, mut params: Params) -> Result<Prepared, PrepareError> {
        let name = params
            .get("pack")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !valid_pack_name(&name) {
            return Err(PackError::Invalid(format!("\"{name}\" is not a valid pack name")).into());
        }
        let rec = self
            .mgr
            .record(&name)
            .ok_or_else(|| PackError::NotInstalled(name.clone()))?;
        let target = rec
            .previous
            .first()
            .ok_or_else(|| PackError::NoEarlierVersion(name.clone()))?;
        params.insert("from_commit".into(), json!(rec.current.commit));
        params.insert("to_commit".into(), json!(target.commit));
        let back = Source {
            pack: name.clone(),
            url: target.url.clone(),
            fetch_url: super::source::fetch_url(&self.mgr.git, &target.url),
            reference: target.reference.clone(),
            commit: target.commit.clone(),
            subtree: false,
        };
        let shown = match self.mgr.change_from_live(&back) {
            Some(Ok(change)) => change.lines(&name),
            Some(Err(why)) => vec![format!(
                "{name}: what changes from the live version is unknown: {why}"
            )],
            None => Vec::new(),
        };
        Ok(Prepared {
            params,
            shown,
            plan: Value::Null,
        })
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let name = params
            .get("pack")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let want = params
            .get("to_commit")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self
            .mgr
            .record(name)
            .and_then(|r| r.previous.first().map(|p| p.commit.clone()))
            .as_deref()
            != Some(want)
        {
            return Outcome::failed(format!(
                "pack {name} changed since the request was made; its previous version is no longer {}",
                &want[..want.len().min(12)]
            ));
        }
        match self.mgr.rollback(name, ctx) {
            Ok((from, to)) => Outcome {
                status: Status::Succeeded,
                result: json!({"pack": name, "from": from.commit, "to": to.commit, "version": to.version}),
                summary: format!(
                    "rolled {name} back from {} to {}",
                    &from.commit[..12],
                    &to.commit[..12]
                ),
                deployed: vec![Deployed {
                    pack: name.to_string(),
                    commit: to.commit,
                }],
                packs_changed: true,
                proofs: Vec::new(),
                remote: None,
            },
            Err(e) => Outcome::failed(e.to_string()),
        }
    }

    fn recover(&self, ctx: &RunContext, params: &Params) -> Option<Outcome> {
        let switched = self.mgr.switched_by(ctx.request_id).into_iter().next()?;
        let from = params
            .get("from_commit")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let to = switched.commit.unwrap_or_default();
        Some(Outcome {
            status: Status::Succeeded,
            result: json!({"pack": switched.pack, "from": from, "to": to}),
            summary: format!(
                "rolled {} back from {} to {}",
                switched.pack,
                &from[..from.len().min(12)],
                &to[..to.len().min(12)]
            ),
            deployed: vec![Deployed {
                pack: switched.pack,
                commit: to,
            }],
            packs_changed: true,
            proofs: Vec::new(),
            remote: None,
        })
    }
}

struct List {
    spec: ActionSpec,
    mgr: Arc<PackManager>,
}

impl Action for List {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn run(&self, _: &RunContext, _: &Params) -> Outcome {
        let mut recs = self.mgr.records();
        recs.sort_by(|a, b| a.name.cmp(&b.name));
        let lines: Vec<String> = recs
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} ({}) installed {} by {}",
                    r.name,
                    r.current.version.as_deref().unwrap_or("-"),
                    &r.current.commit[..12],
                    r.current.reference.as_deref().unwrap_or("default branch"),
                    clock::format_ms(r.current.installed_ms),
                    r.current.installed_by
                )
            })
            .collect();
        let summary = if recs.is_empty() {
            "no packs installed".to_string()
        } else {
            format!("{} pack(s) installed", recs.len())
        };
        Outcome::ok(
            summary,
            json!({
                "packs": recs.iter().map(|r| json!({
                    "name": r.name, "version": r.current.version, "commit": r.current.commit,
                    "ref": r.current.reference, "url": r.current.url,
                    "installed_at": clock::format_ms(r.current.installed_ms),
                    "installed_by": r.current.installed_by,
                    "request": r.current.request,
                    "previous": r.previous.iter().map(|p| &p.commit).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "stdout": lines.join("\n"),
            }),
        )
    }
}
