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
    if let Some(p) = &policy {
        let set = AliasSet::new(loaded.aliases.clone());
        diags.extend(airlock::lint::cross_check(&set, &metas, p, routed));
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
