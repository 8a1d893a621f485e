//! The commands that read alias and policy files without the bot: match,
//! help, check, policy explain.

use crate::*;

/// Load aliases for a command that only needs what loaded: problems go to
/// stderr, they do not stop it.
pub(crate) fn load_aliases(dirs: &[PathBuf]) -> AliasSet {
    let loaded = airlock::catalog::load_aliases(dirs);
    print_diagnostics(&loaded.diagnostics);
    AliasSet::new(loaded.aliases)
}

pub(crate) fn cmd_match(dirs: &[PathBuf], command: &str) -> ExitCode {
    let set = load_aliases(dirs);
    match set.match_command(&alias::normalize_command(command)) {
        Ok(m) => {
            let parameters = if m.match_multiple {
                serde_json::Value::Array(
                    m.parameters
                        .into_iter()
                        .map(serde_json::Value::Object)
                        .collect(),
                )
            } else {
                serde_json::Value::Object(m.parameters.into_iter().next().unwrap_or_default())
            };
            let out = serde_json::json!({
                "alias": m.alias.reference(),
                "representation": m.representation,
                "parameters": parameters,
            });
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

pub(crate) fn cmd_help(dirs: &[PathBuf], filter: Option<&str>) -> ExitCode {
    let set = load_aliases(dirs);
    let entries = set.help(filter);
    if entries.is_empty() {
        println!("No commands found.");
    }
    for e in entries {
        match &e.description {
            Some(d) if !d.trim().is_empty() => {
                println!("{} - {}  [{}]", e.display, d.trim(), e.reference)
            }
            _ => println!("{}  [{}]", e.display, e.reference),
        }
    }
    ExitCode::SUCCESS
}

pub(crate) fn cmd_check(
    dirs: &[PathBuf],
    policies: &[PathBuf],
    routed: &dyn Fn(&str) -> bool,
) -> ExitCode {
    let loaded = airlock::catalog::load_aliases(dirs);
    let mut diags = loaded.diagnostics;
    // The packs' actions, checked like aliases.
    let mut metas = action::metadata::core_actions();
    for (dir, name) in action::metadata::pack_dirs(dirs) {
        let (found, d) = action::metadata::load_pack(&dir, &name, routed);
        metas.extend(found);
        diags.extend(d);
    }
    let policy = if policies.is_empty() {
        None
    } else {
        let p = airlock::catalog::load_policy(policies);
        diags.extend(p.diagnostics);
        Some(p.policy)
    };
    // Rules naming aliases or actions that do not exist can never match.
    if let Some(p) = &policy {
        let set = AliasSet::new(loaded.aliases.clone());
        let mut specs = action::standard_specs();
        specs.extend(metas.iter().map(|m| m.spec.clone()));
        // A value a cmd template writes unquoted must be constrained by
        // every rule that lets someone run the action.
        for m in &metas {
            for name in action::metadata::unquoted_cmd_params(m) {
                // Every way a rule reaches it counts: by action, alias or pack.
                let unconstrained = p.rules.iter().any(|r| {
                    r.effect == policy::Effect::Allow
                        && set
                            .aliases()
                            .iter()
                            .filter(|a| a.action_ref == m.spec.reference)
                            .any(|a| {
                                r.targets(&policy::Target::Alias {
                                    reference: &a.reference(),
                                    pack: &a.pack,
                                    action_ref: &a.action_ref,
                                })
                            })
                        && !r.params.contains_key(&name)
                });
                if unconstrained {
                    let text = std::fs::read_to_string(&m.file).unwrap_or_default();
                    diags.push(airlock::diag::YamlIndex::parse(&text).diag(
                        airlock::diag::Severity::Warning,
                        &m.file,
                        "parameters.cmd.default",
                        format!(
                            "{{{{ {name} | safe }}}} writes {name} into the shell unquoted, and a rule allowing {} does not constrain {name} by values or regex",
                            m.spec.reference
                        ),
                    ));
                }
            }
        }
        for r in &p.rules {
            for g in &r.aliases {
                if !set.aliases().iter().any(|a| g.matches(&a.reference())) {
                    diags.push(warn_rule(
                        r,
                        format!("aliases: no loaded alias matches \"{}\"", g.text),
                    ));
                }
            }
            for g in &r.actions {
                let routed_match = set
                    .aliases()
                    .iter()
                    .any(|a| routed(&a.action_ref) && g.matches(&a.action_ref));
                if !routed_match && !specs.iter().any(|s| g.matches(&s.reference)) {
                    diags.push(warn_rule(
                        r,
                        format!("actions: airlock has no action matching \"{}\"", g.text),
                    ));
                }
            }
        }
        let refs: Vec<String> = set.aliases().iter().map(|a| a.reference()).collect();
        let targets: Vec<policy::Target> = set
            .aliases()
            .iter()
            .zip(&refs)
            .map(|(a, reference)| policy::Target::Alias {
                reference,
                pack: &a.pack,
                action_ref: &a.action_ref,
            })
            .collect();
        for (r, why) in p.unconstrained_paths(&targets) {
            diags.push(warn_rule(r, why));
        }
    }
    for d in &diags {
        println!("{d}");
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    println!(
        "{} aliases{} loaded, {errors} error(s), {} warning(s)",
        loaded.aliases.len(),
        policy
            .map(|p| format!(" and {} policy rules", p.rules.len()))
            .unwrap_or_default(),
        diags.len() - errors
    );
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(crate) fn warn_rule(r: &policy::Rule, message: String) -> Diagnostic {
    Diagnostic {
        severity: airlock::diag::Severity::Warning,
        file: r.file.clone(),
        line: r.line,
        column: 3,
        field: format!("rule {}", r.id),
        message,
    }
}

pub(crate) fn cmd_explain(
    arg: ConfigArg,
    user: &str,
    room: &str,
    power: Option<i64>,
    at: Option<&str>,
    command: &str,
) -> Outcome {
    check_ids(user, room)?;
    let now = airlock::wall::now_ms();
    let at = match at {
        None => now,
        Some(s) => clock::parse_since(s, now).ok_or_else(|| {
            eprintln!("--at {s}: expected a time such as 2026-12-04T16:30:00+01:00");
            ExitCode::from(2)
        })?,
    };
    let cfg = config(&arg)?;
    let loaded = airlock::catalog::load_policy(&cfg.policies);
    if loaded.has_errors() {
        print_diagnostics(&loaded.diagnostics);
        return Err(ExitCode::from(2));
    }
    let set = load_aliases(&cfg.aliases);
    let who = Subject {
        user,
        room,
        power_level: power,
        at,
    };
    let command = command.strip_prefix(cfg.prefix.as_str()).unwrap_or(command);
    let eval = match engine::evaluate(
        &set,
        &loaded.policy,
        &action::standard_specs(),
        &who,
        command,
    ) {
        Ok(e) => e,
        Err(e) => {
            println!("{e}");
            println!("decision: nothing to decide (no alias matched)");
            return Ok(ExitCode::from(1));
        }
    };
    let explained = engine::explain(&eval, &loaded.policy, &who, cfg.st2.as_ref());
    print!("{}", explained.text);
    let allowed_all = explained.allowed;
    Ok(if allowed_all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
