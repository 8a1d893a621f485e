//! What `airlock check` finds across the alias, action and policy files,
//! beyond each file's own problems (the CLI prints it).

use crate::action::metadata::ActionMeta;
use crate::alias::AliasSet;
use crate::diag::Diagnostic;
use crate::policy::{self, Policy};

/// What `airlock check` finds across the files, beyond each file's own
/// problems: a value a cmd template writes unquoted that a rule allowing
/// the action leaves unconstrained; rules naming aliases or actions that
/// do not exist (they can never match); paths the policy leaves open
/// without constraints.
pub fn cross_check(
    set: &AliasSet,
    metas: &[ActionMeta],
    p: &Policy,
    routed: &dyn Fn(&str) -> bool,
) -> Vec<Diagnostic> {
    let mut diags = unquoted_unconstrained(set, metas, p);
    let mut specs = crate::action::standard_specs();
    specs.extend(metas.iter().map(|m| m.spec.clone()));
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
    diags
}

/// A value a cmd template writes unquoted must be constrained by every
/// rule that lets someone run the action (by action, alias or pack).
fn unquoted_unconstrained(set: &AliasSet, metas: &[ActionMeta], p: &Policy) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for m in metas {
        for name in crate::action::metadata::unquoted_cmd_params(m) {
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
                diags.push(crate::diag::YamlIndex::parse(&text).diag(
                    crate::diag::Severity::Warning,
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
    diags
}

/// A warning about rule `r`, at its line.
fn warn_rule(r: &policy::Rule, message: String) -> Diagnostic {
    Diagnostic {
        severity: crate::diag::Severity::Warning,
        file: r.file.clone(),
        line: r.line,
        column: 3,
        field: format!("rule {}", r.id),
        message,
    }
}
