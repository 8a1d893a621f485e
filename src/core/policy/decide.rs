//! The decision: a policy judges a subject (who, where, with what power,
//! when) against a target (an alias and its action, or a built-in), and
//! explains itself. The model it judges with is in `mod.rs`.

use super::*;

impl Policy {
    /// Room aliases named by rules, for the transport to resolve.
    pub fn room_aliases(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.rooms.iter())
            .filter(|g| g.text.starts_with('#'))
            .map(|g| g.text.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Room aliases the transport resolved to IDs.
    pub fn resolved_room_aliases(&self) -> &HashMap<String, String> {
        &self.room_aliases
    }

    /// Set the resolved room aliases.
    pub fn set_room_aliases(&mut self, resolved: HashMap<String, String>) {
        self.room_aliases = resolved;
    }

    /// Every room where an allow rule could grant `user` one of
    /// `builtins`, when they can be listed: each such rule names its rooms
    /// literally (IDs, or aliases, with what they resolved to). None when
    /// one names no room or a pattern, so any room may be granted. A
    /// superset (power levels and windows aside): the decision is still
    /// what grants. Lets a reader of the audit skip other rooms' entries.
    pub fn literal_rooms_for(&self, user: &str, builtins: &[&str]) -> Option<Vec<String>> {
        let mut rooms = Vec::new();
        for rule in &self.rules {
            if !matches!(rule.effect, Effect::Allow)
                || !rule.subjects.contains(user)
                || !builtins.iter().any(|b| rule.targets(&Target::Builtin(b)))
            {
                continue;
            }
            if rule.rooms.is_empty() {
                return None;
            }
            for g in &rule.rooms {
                if g.text.contains(['*', '?']) {
                    return None;
                }
                if let Some(id) = self.room_aliases.get(&g.text) {
                    rooms.push(id.clone());
                }
                // Unresolved, an alias is matched as an ID (the console).
                rooms.push(g.text.clone());
            }
        }
        rooms.sort();
        rooms.dedup();
        Some(rooms)
    }

    fn room_matches(&self, rule: &Rule, room: &str) -> bool {
        rule.rooms.is_empty()
            || rule.rooms.iter().any(|g| {
                if g.text.starts_with('#') {
                    self.room_aliases.get(&g.text).is_some_and(|id| id == room)
                        // A transport without aliases (the console) uses them as IDs.
                        || g.matches(room)
                } else {
                    g.matches(room)
                }
            })
    }

    fn rule_applies(&self, rule: &Rule, who: &Subject, target: &Target) -> bool {
        self.rule_applies_at_any_time(rule, who, target)
            && rule.when.as_ref().is_none_or(|w| w.contains(who.at))
    }

    /// [`Self::rule_applies`], its change window aside.
    fn rule_applies_at_any_time(&self, rule: &Rule, who: &Subject, target: &Target) -> bool {
        if !rule.subjects.contains(who.user) || !self.room_matches(rule, who.room) {
            return false;
        }
        if let Some(min) = rule.min_power_level
            && who.power_level.is_none_or(|pl| pl < min)
        {
            return false;
        }
        rule.targets(target)
    }

    /// Allow rules that reach an alias some other rule constrains, without
    /// those constraints, somewhere the constraining rule does not govern
    /// first: `(looser rule, why)`, for `airlock check`. A rule is taken as
    /// covered only when it comes after the constraining rule and its
    /// rooms, users and power level are plainly within that rule's.
    pub fn unconstrained_paths<'r>(&'r self, aliases: &[Target]) -> Vec<(&'r Rule, String)> {
        let allows: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.effect == Effect::Allow)
            .collect();
        let mut out: Vec<(&Rule, String)> = Vec::new();
        for target in aliases {
            let reaching: Vec<(usize, &Rule)> = allows
                .iter()
                .enumerate()
                .filter(|(_, r)| r.targets(target))
                .map(|(i, r)| (i, *r))
                .collect();
            for &(_, c) in reaching.iter().filter(|(_, r)| !r.params.is_empty()) {
                for &(li, l) in &reaching {
                    let loose = c.params.keys().any(|k| !l.params.contains_key(k));
                    // Covered: some earlier rule with (at least) these
                    // constraints governs everywhere `l` applies.
                    let covered = reaching.iter().any(|&(gi, g)| {
                        gi < li && within(l, g) && c.params.keys().all(|k| g.params.contains_key(k))
                    });
                    if !loose || covered || out.iter().any(|(r, _)| r.id == l.id) {
                        continue;
                    }
                    let rooms = |r: &Rule| {
                        if r.rooms.is_empty() {
                            "any room".to_string()
                        } else {
                            r.rooms
                                .iter()
                                .map(|g| g.text.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    };
                    out.push((
                        l,
                        format!(
                            "reaches {} without the parameter constraints of rule {} ({}) in {}; \
                             rule {} constrains it only in {}",
                            target.describe(),
                            c.id,
                            c.params.keys().cloned().collect::<Vec<_>>().join(", "),
                            rooms(l),
                            c.id,
                            rooms(c),
                        ),
                    ));
                }
            }
        }
        out
    }

    /// The first parameter that breaks `rule`'s constraints, or that chat
    /// may not set under it (deny by default holds for parameters too):
    /// a `key=value` pair the alias's format does not capture needs the
    /// rule to name it or say `extra_params: true`; a parameter that
    /// changes how the action runs (its runner's `env`, `cwd`, `sudo`,
    /// `timeout`…) or a value starting with `-` where the command would
    /// read it as an option needs the rule to name it, with `values` or
    /// `regex` that allow it.
    fn violation(
        rule: &Rule,
        params: &serde_json::Map<String, Value>,
        chat: &FromChat,
    ) -> Option<String> {
        if !rule.extra_params
            && let Some(k) = chat.pairs.iter().find(|k| !rule.params.contains_key(*k))
        {
            return Some(format!(
                "parameter {k} cannot be set from chat under rule {} (the alias's format does not capture it; \
                 add {k} to the rule's params, or set extra_params: true)",
                rule.id
            ));
        }
        let typed = || chat.typed.iter().chain(&chat.pairs);
        if let Some(k) =
            typed().find(|k| chat.controls.contains(k) && !rule.params.contains_key(*k))
        {
            return Some(format!(
                "parameter {k} changes how the action runs, and cannot be set from chat unless the rule names it; \
                 rule {} does not (add {k} to its params with values or regex)",
                rule.id
            ));
        }
        for k in typed().filter(|k| chat.arguments.contains(k) && !rule.params.contains_key(*k)) {
            let values: Vec<String> = match params.get(k) {
                Some(Value::Array(items)) => items.iter().map(value_text).collect(),
                Some(v @ Value::String(_)) => vec![value_text(v)],
                _ => continue,
            };
            if let Some(v) = values.iter().find(|v| v.starts_with('-')) {
                return Some(format!(
                    "parameter {k}={v} starts with -, which the command would read as an option; \
                     rule {} does not allow that (add {k} to its params with values or regex that allow it)",
                    rule.id
                ));
            }
        }
        for (name, c) in &rule.params {
            let values: Vec<String> = match params.get(name) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => items.iter().map(value_text).collect(),
                Some(v) => vec![value_text(v)],
            };
            if let Some(bad) = values.iter().find(|v| !c.allows(v)) {
                return Some(format!(
                    "parameter {name}={bad} is not allowed by rule {} (must be {})",
                    rule.id,
                    c.describe()
                ));
            }
        }
        None
    }

    /// Decide, and list every rule that matched on the way.
    pub fn explain(
        &self,
        who: &Subject,
        target: &Target,
        params: &serde_json::Map<String, Value>,
        chat: &FromChat,
    ) -> Explanation {
        let applicable: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| self.rule_applies(r, who, target))
            .collect();
        let matched = applicable.iter().map(|r| r.id.clone()).collect();
        if let Some(deny) = applicable.iter().find(|r| r.effect == Effect::Deny) {
            return Explanation {
                decision: Decision::Deny {
                    rule: Some(deny.id.clone()),
                    reason: deny_reason(deny, who.at),
                },
                matched,
            };
        }
        // The first allow rule that matches governs: its constraints and
        // its confirmation. A later, looser rule never rescues a command
        // that broke the constraints of a more specific one.
        let decision = match applicable.iter().find(|r| r.effect == Effect::Allow) {
            Some(r) => match Self::violation(r, params, chat) {
                Some(reason) => Decision::Deny {
                    rule: Some(r.id.clone()),
                    reason,
                },
                None => Decision::Allow {
                    rule: r.id.clone(),
                    confirm: r.confirm_for(target),
                    break_glass: r.break_glass.as_ref().is_some_and(|b| b.contains(who.user)),
                },
            },
            None => match self.closed_allow(who, target) {
                Some((rule, reason)) => Decision::Deny {
                    rule: Some(rule),
                    reason,
                },
                None => Decision::Deny {
                    rule: None,
                    reason: format!(
                        "no rule allows {} for {} in {} (deny by default)",
                        target.describe(),
                        who.user,
                        who.room
                    ),
                },
            },
        };
        Explanation { decision, matched }
    }

    /// Rules for this target, user and room that have a change window:
    /// `(rule, window, its state at who.at)`, for `policy explain`. Kept
    /// out of [`Self::explain`]: finding when a window next changes scans
    /// ahead, which no decision needs.
    pub fn windows(&self, who: &Subject, target: &Target) -> Vec<(String, String, String)> {
        self.rules
            .iter()
            .filter(|r| self.rule_applies_at_any_time(r, who, target))
            .filter_map(|r| {
                let w = r.when.as_ref()?;
                Some((r.id.clone(), w.describe(), w.state(who.at)))
            })
            .collect()
    }

    /// The first allow rule that would let `who` run `target` but for its
    /// change window, with the refusal that says when it opens.
    fn closed_allow(&self, who: &Subject, target: &Target) -> Option<(String, String)> {
        let r = self.rules.iter().find(|r| {
            r.effect == Effect::Allow
                && r.when.is_some()
                && self.rule_applies_at_any_time(r, who, target)
        })?;
        Some((r.id.clone(), closed_reason(r, target, who.at)))
    }

    /// For a pending request allowed earlier by rule `rule`, after the
    /// policy was reloaded: the confirmation that rule now asks, or why it
    /// may no longer run (the rule is gone or no longer covers the
    /// requester there, or a deny rule without a window now applies;
    /// windows are checked when it is to start, by [`Self::gate`]).
    pub fn recheck(
        &self,
        who: &Subject,
        target: &Target,
        rule: &str,
    ) -> Result<Option<ConfirmPolicy>, String> {
        if let Some(deny) = self.rules.iter().find(|r| {
            r.effect == Effect::Deny && r.when.is_none() && self.rule_applies(r, who, target)
        }) {
            return Err(deny_reason(deny, who.at));
        }
        match self.rules.iter().find(|r| r.id == rule) {
            Some(r)
                if r.effect == Effect::Allow && self.rule_applies_at_any_time(r, who, target) =>
            {
                Ok(r.confirm_for(target))
            }
            Some(_) => Err(format!(
                "rule {rule} no longer allows it for {} here",
                who.user
            )),
            None => Err(format!("rule {rule} is gone from the policy")),
        }
    }

    /// The lock a run of `params` under rule `rule` must hold: its name
    /// rendered over the parameters and checked. None: the rule names no
    /// lock (or is gone). An error says why no lock name came out.
    pub fn lock_for(
        &self,
        rule: &str,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<LockSpec>, String> {
        let Some(l) = self.rule(rule).and_then(|r| r.lock.as_ref()) else {
            return Ok(None);
        };
        let ctx = serde_json::Value::Object(params.clone());
        let name =
            match crate::render::render_value(&serde_json::Value::String(l.name.clone()), &ctx)? {
                serde_json::Value::String(s) => s.trim().to_string(),
                other => other.to_string(),
            };
        if !valid_lock_name(&name) {
            return Err(format!(
                "rule {rule}'s lock came out as \"{}\", which is not a lock name (1 to 100 letters, digits and . _ - / : @)",
                name.chars().take(120).collect::<String>()
            ));
        }
        Ok(Some(LockSpec {
            name,
            queue_timeout: l.queue_timeout,
            break_glass_passes: l.break_glass_passes,
        }))
    }

    /// The rule with this id.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Whether a request allowed earlier by rule `rule` may start at
    /// `who.at`: no deny rule is in force now, and `rule`'s own change
    /// window (if any) is open. An approval given inside a window does
    /// not carry a run outside it.
    pub fn gate(&self, who: &Subject, target: &Target, rule: &str) -> Result<(), String> {
        if let Some(deny) = self
            .rules
            .iter()
            .find(|r| r.effect == Effect::Deny && self.rule_applies(r, who, target))
        {
            return Err(deny_reason(deny, who.at));
        }
        match self.rules.iter().find(|r| r.id == rule) {
            Some(r) if r.when.as_ref().is_some_and(|w| !w.contains(who.at)) => {
                Err(closed_reason(r, target, who.at))
            }
            _ => Ok(()),
        }
    }

    /// The decision alone.
    pub fn decide(
        &self,
        who: &Subject,
        target: &Target,
        params: &serde_json::Map<String, Value>,
        chat: &FromChat,
    ) -> Decision {
        self.explain(who, target, params, chat).decision
    }

    /// Whether some allow rule could let `who` run `target` (parameters
    /// aside): what `!help` lists.
    pub fn may_use(&self, who: &Subject, target: &Target) -> bool {
        let applicable: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| self.rule_applies(r, who, target))
            .collect();
        !applicable.iter().any(|r| r.effect == Effect::Deny)
            && applicable.iter().any(|r| r.effect == Effect::Allow)
    }

    /// Whether to accept an invite: some allow rule must let the inviter
    /// run an alias, action or pack's command in that room (built-ins
    /// alone, such as help for everyone, do not count).
    pub fn may_join(&self, inviter: &str, room: &str) -> bool {
        self.rules.iter().any(|r| {
            r.effect == Effect::Allow
                && r.subjects.contains(inviter)
                && self.room_matches(r, room)
                && !(r.aliases.is_empty() && r.actions.is_empty() && r.packs.is_empty())
        })
    }
}

/// "denied by rule no-friday-deploys (in force Fri 16:00–24:00
/// Europe/Berlin, until Sat 2026-12-05 00:00 Europe/Berlin)".
fn deny_reason(rule: &Rule, at: u64) -> String {
    match &rule.when {
        None => format!("denied by rule {}", rule.id),
        Some(w) => format!(
            "denied by rule {} (in force {}{})",
            rule.id,
            w.describe(),
            w.next_change(at)
                .map(|t| format!(", until {}", w.show(t)))
                .unwrap_or_default()
        ),
    }
}

/// "rule ops-deploy allows … only Mon–Fri 09:00–17:00 UTC; it opens
/// Mon 2026-12-07 09:00 UTC".
fn closed_reason(rule: &Rule, target: &Target, at: u64) -> String {
    let Some(w) = &rule.when else {
        return format!("rule {} does not apply now", rule.id);
    };
    format!(
        "rule {} allows {} only {}; {}",
        rule.id,
        target.describe(),
        w.describe(),
        match w.next_change(at) {
            Some(t) => format!("it opens {}", w.show(t)),
            None => "it does not open within a year".to_string(),
        }
    )
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> Policy {
        let text = format!(
            "groups:\n  ops: [\"@alice:example.org\", \"@bob:example.org\"]\nrules:\n{rules}"
        );
        let loaded = super::super::load::parse_texts(&[("p.yaml".into(), text)]);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        loaded.policy
    }

    /// The rooms a viewer's rules name, when they name them all literally:
    /// none for whom no rule grants; unknown (None) once a granting rule
    /// names a pattern or no room; an alias with what it resolved to.
    #[test]
    fn literal_rooms_are_listed_only_when_every_granting_rule_names_them() {
        let mut p = policy(
            "  - id: help\n    effect: allow\n    users: [\"*\"]\n    builtins: [help]\n  - id: ops\n    effect: allow\n    groups: [ops]\n    rooms: [\"!ops:example.org\", \"#prod:example.org\"]\n    builtins: [pending, audit]\n  - id: bob-teams\n    effect: allow\n    users: [\"@bob:example.org\"]\n    rooms: [\"!team-*:example.org\"]\n    builtins: [audit]\n  - id: no-audit\n    effect: deny\n    users: [\"@alice:example.org\"]\n    builtins: [pending]\n",
        );
        p.set_room_aliases(
            [(
                "#prod:example.org".to_string(),
                "!prod:example.org".to_string(),
            )]
            .into(),
        );
        let rooms = |u: &str| p.literal_rooms_for(u, &["pending", "audit"]);
        assert_eq!(
            rooms("@alice:example.org"),
            Some(vec![
                "!ops:example.org".to_string(),
                "!prod:example.org".into(),
                "#prod:example.org".into()
            ])
        );
        assert_eq!(rooms("@bob:example.org"), None, "a pattern");
        assert_eq!(rooms("@mallory:example.org"), Some(vec![]));
        let p = policy(
            "  - id: anywhere\n    effect: allow\n    groups: [ops]\n    builtins: [pending]\n",
        );
        assert_eq!(
            p.literal_rooms_for("@alice:example.org", &["pending"]),
            None,
            "no room named"
        );
    }
}
