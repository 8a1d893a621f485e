//! Who may run what, where, and who must confirm it.
//!
//! Policies are YAML files (`policies/*.yaml`, read in name order) holding
//! named `groups` of Matrix user IDs and an ordered list of `rules`. A rule
//! names subjects (users, groups), where (rooms, a minimum power level) and
//! targets (aliases, actions, packs, built-in commands). Evaluation:
//!
//! 1. any matching `deny` rule refuses (deny beats allow);
//! 2. otherwise the first matching `allow` rule (in file order) governs:
//!    its parameter constraints must hold, and its confirmation applies;
//! 3. nothing matched: refused (deny by default).
//!
//! Identities are Matrix user IDs, never display names. Globs are anchored:
//! `*` is any run of characters, `?` one character, nothing else is special.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diag::Diagnostic;

mod decide;
mod load;
mod options;
mod window;

pub use load::parse_texts;
pub use window::Window;

/// Commands the bot answers itself, which rules can grant.
pub const BUILTINS: [&str; 9] = [
    "help", "audit", "pending", "cancel", "review", "announce", "lock", "locks", "web",
];

/// How long a confirmation stays open unless a rule says otherwise.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);

/// Actions that need confirmation unless a rule explicitly says otherwise.
pub fn risky_by_default(action_ref: &str) -> bool {
    matches!(
        action_ref,
        "packs.install" | "packs.uninstall" | "packs.rollback"
    )
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let it run (with the rule's constraints and confirmation).
    Allow,
    /// Refuse it, whatever else allows it.
    Deny,
}

// ---------------------------------------------------------------- model

/// An anchored glob over user IDs, room IDs or refs.
#[derive(Debug, Clone)]
pub struct Glob {
    /// The glob as written.
    pub text: String,
    re: Regex,
}

impl Glob {
    /// A glob: `*` any run of characters, `?` one, the rest literal.
    pub fn new(text: &str) -> Self {
        let mut re = String::from("^");
        for c in text.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        Glob {
            text: text.to_string(),
            re: Regex::new(&re).expect("escaped glob"),
        }
    }

    /// Whether all of `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
}

/// Users, by glob or by group (groups expanded when the policy loads).
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    /// User ID globs, as written.
    pub users: Vec<Glob>,
    /// Group names, as written.
    pub groups: Vec<String>,
    expanded: Vec<Glob>,
}

impl Subjects {
    /// Whether `user` is one of them.
    pub fn contains(&self, user: &str) -> bool {
        self.users
            .iter()
            .chain(&self.expanded)
            .any(|g| g.matches(user))
    }

    /// Whether it names nobody.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// For prompts: "@bob:example.org, group ops".
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.users.iter().map(|g| g.text.clone()).collect();
        parts.extend(self.groups.iter().map(|g| format!("group {g}")));
        parts.join(", ")
    }

    /// The user globs, groups expanded: what a stored request keeps.
    pub fn user_globs(&self) -> Vec<String> {
        self.users
            .iter()
            .chain(&self.expanded)
            .map(|g| g.text.clone())
            .collect()
    }
}

/// What a parameter may be.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// One of these values.
    Values(Vec<String>),
    /// A match of this (anchored) regex.
    Regex(Regex),
}

impl Constraint {
    fn allows(&self, v: &str) -> bool {
        match self {
            Constraint::Values(vs) => vs.iter().any(|x| x == v),
            Constraint::Regex(re) => re.is_match(v),
        }
    }

    fn describe(&self) -> String {
        match self {
            Constraint::Values(vs) => format!("one of {}", vs.join(", ")),
            Constraint::Regex(re) => format!("matching {}", re.as_str()),
        }
    }
}

/// What a confirmation needs, as a rule states it.
#[derive(Debug, Clone)]
pub struct ConfirmPolicy {
    /// Empty: anyone the policy lets run the same command in the room.
    pub approvers: Subjects,
    /// How many distinct approvals.
    pub approvals: u32,
    /// Whether the requester's own approval counts.
    pub self_approve: bool,
    /// How long the prompt stays open.
    pub expires: Duration,
    /// A quorum across groups (`approvers` and `approvals` are then the
    /// union and the sum of its parts).
    pub quorum: Vec<(Subjects, u32)>,
    /// Approvals count only from devices their owners have cross-signed
    /// (so a stolen access token cannot approve).
    pub verified_devices: bool,
}

impl ConfirmPolicy {
    /// Who approves, as a prompt says it: "2 approvals from group ops", or
    /// "1 from group ops and 1 from group security".
    pub fn describe(&self) -> String {
        if self.quorum.is_empty() {
            return format!(
                "{} approval{} from {}",
                self.approvals,
                if self.approvals == 1 { "" } else { "s" },
                if self.approvers.is_empty() {
                    "anyone allowed to run it here".to_string()
                } else {
                    self.approvers.describe()
                }
            );
        }
        self.quorum
            .iter()
            .map(|(who, n)| format!("{n} from {}", who.describe()))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// One approval by someone else allowed to run the same command here:
    /// what an st2 alias marked `extra.security.twofactor` asks for.
    pub fn second_person() -> Self {
        ConfirmPolicy {
            self_approve: false,
            ..ConfirmPolicy::anyone_allowed()
        }
    }

    /// One approval by anyone allowed to run the command here, the
    /// requester too: `confirm: true`, and a risky action's default.
    pub fn anyone_allowed() -> Self {
        ConfirmPolicy {
            approvers: Subjects::default(),
            approvals: 1,
            self_approve: true,
            expires: DEFAULT_EXPIRY,
            quorum: Vec::new(),
            verified_devices: false,
        }
    }
}

/// What a rule says about confirmation.
#[derive(Debug, Clone)]
pub enum Confirm {
    /// Nothing: a risky action (`packs.install` and the like) needs one
    /// approval by anyone allowed, anything else none.
    Default,
    /// `confirm: false`: none, even for a risky action.
    Never,
    /// `confirm: true` (one approval, anyone allowed, the requester
    /// too) or the confirmation spelled out.
    By(ConfirmPolicy),
}

/// One rule of the policy.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its unique name.
    pub id: String,
    /// Allow or deny.
    pub effect: Effect,
    /// What it is for.
    pub description: Option<String>,
    /// Who it applies to.
    pub subjects: Subjects,
    /// Room IDs or aliases (`#ops:example.org`); empty = any room.
    pub rooms: Vec<Glob>,
    /// The least power level in the room.
    pub min_power_level: Option<i64>,
    /// Alias refs it covers.
    pub aliases: Vec<Glob>,
    /// Action refs it covers.
    pub actions: Vec<Glob>,
    /// Packs whose aliases it covers.
    pub packs: Vec<Glob>,
    /// Built-in commands it covers.
    pub builtins: Vec<Glob>,
    /// Parameter constraints (allow rules only).
    pub params: BTreeMap<String, Constraint>,
    /// Whether chat `key=value` pairs may set parameters `params` does not
    /// constrain (only matters when `params` is not empty).
    pub extra_params: bool,
    /// Who must confirm what it allows.
    pub confirm: Confirm,
    /// When it applies (`when:`); None: always.
    pub when: Option<Window>,
    /// Who may run it without its confirmation by giving a reason
    /// (`--break-glass "why"`); None: nobody.
    pub break_glass: Option<Subjects>,
    /// The lock its runs hold (`lock:`); None: none.
    pub lock: Option<LockRule>,
    /// Whether a failed run under it pages the on-call (`notify:`).
    pub page_on_failure: bool,
    /// What runs before its prompt to show approvers what will change
    /// (`plan:`); None: nothing.
    pub plan: Option<PlanRule>,
    /// The file it came from.
    pub file: PathBuf,
    /// Its line there.
    pub line: usize,
}

/// A rule's `lock`: runs holding the same lock run one at a time, in the
/// order they were approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRule {
    /// The lock's name, a template over the request's parameters
    /// (`deploy/{{ environment }}`) or a fixed name.
    pub name: String,
    /// How long a request may wait for it before it expires; None: as
    /// long as it takes.
    pub queue_timeout: Option<Duration>,
    /// Whether a break-glass run passes a lock held by hand
    /// (`break_glass_passes_lock: true`); it never passes another run.
    pub break_glass_passes: bool,
}

/// A rule's `plan`: the same action with some parameters overridden
/// (`{parameters: {dry_run: true}}`), or another action of the pack
/// (`{action: mypack.diff}`), run before the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRule {
    /// Another action of the pack; None: the request's own.
    pub action: Option<String>,
    /// Parameters set over the request's.
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// How long it may run (2 minutes unless the rule says).
    pub timeout: Duration,
}

/// The lock a request's run must hold, its name rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSpec {
    /// The name.
    pub name: String,
    /// How long it may wait.
    pub queue_timeout: Option<Duration>,
    /// Whether break-glass passes a hand's lock.
    pub break_glass_passes: bool,
}

/// The longest lock name.
pub const MAX_LOCK_NAME: usize = 100;

/// Whether `name` may name a lock: 1 to 100 of letters, digits and
/// `. _ - / : @`. A name rendered from a chat value is checked here before
/// it is stored or shown.
pub fn valid_lock_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LOCK_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
}

/// Which parameters chat set, and how the action uses them: what the
/// parameter rules of [`Policy::decide`] look at.
#[derive(Debug, Clone, Default)]
pub struct FromChat {
    /// Set by trailing `key=value` pairs, except those the alias's format
    /// captures.
    pub pairs: Vec<String>,
    /// Captured by the alias's format from the command.
    pub typed: Vec<String>,
    /// The action's parameters that change how it runs (a runner's `env`,
    /// `cwd`, `sudo`, `timeout`…).
    pub controls: Vec<String>,
    /// The action's parameters that become a command's arguments (in a
    /// `cmd` template, or positional), where a leading `-` is an option.
    pub arguments: Vec<String>,
}

impl FromChat {
    /// Only the pairs (a stored request's, checked again at approval).
    pub fn pairs(pairs: &[String]) -> Self {
        FromChat {
            pairs: pairs.to_vec(),
            ..FromChat::default()
        }
    }
}

/// Who is asking, and where.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// A Matrix user ID.
    pub user: &'a str,
    /// A room ID.
    pub room: &'a str,
    /// Their power level there, when known.
    pub power_level: Option<i64>,
    /// When they ask (ms since the Unix epoch), for change windows.
    pub at: u64,
}

/// What is asked for.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    /// An alias (its action and pack with it).
    Alias {
        /// `pack.name`.
        reference: &'a str,
        /// The alias's pack.
        pack: &'a str,
        /// The action it runs.
        action_ref: &'a str,
    },
    /// A built-in command.
    Builtin(&'a str),
}

impl Target<'_> {
    /// For messages: `pack.alias (action)` or `!builtin`.
    pub fn describe(&self) -> String {
        match self {
            Target::Alias {
                reference,
                action_ref,
                ..
            } => format!("{reference} ({action_ref})"),
            Target::Builtin(b) => format!("!{b}"),
        }
    }
}

/// What the policy says.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Allowed by `rule`.
    Allow {
        /// The rule that allowed it.
        rule: String,
        /// None: runs without confirmation.
        confirm: Option<ConfirmPolicy>,
        /// Whether the rule lets this user break glass (run without the
        /// confirmation, giving a reason, flagged for review).
        break_glass: bool,
    },
    /// Refused.
    Deny {
        /// The deny rule, or the allow rule whose constraint failed; None
        /// when nothing allowed (deny by default).
        rule: Option<String>,
        /// Why, for the person who asked.
        reason: String,
    },
}

impl Decision {
    /// Whether it may run.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow { rule, .. } => Some(rule),
            Decision::Deny { rule, .. } => rule.as_deref(),
        }
    }
}

/// A decision with the rules that were considered, for `policy explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The decision.
    pub decision: Decision,
    /// Every rule that matched, in order.
    pub matched: Vec<String>,
}

/// The whole policy: groups and rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Named groups of user globs.
    pub groups: BTreeMap<String, Vec<Glob>>,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// Room aliases resolved to room IDs by the transport.
    room_aliases: HashMap<String, String>,
}

/// A policy with the problems found loading it.
#[derive(Debug, Default)]
pub struct LoadedPolicy {
    /// The policy (no rules at all if there was an error).
    pub policy: Policy,
    /// Every problem, with file, line and field.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadedPolicy {
    /// Whether any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

// ---------------------------------------------------------------- decisions

impl Rule {
    /// The confirmation the rule asks for `target`: its own, or for risky
    /// actions without one, one approval by anyone allowed.
    fn confirm_for(&self, target: &Target) -> Option<ConfirmPolicy> {
        let risky =
            matches!(target, Target::Alias { action_ref, .. } if risky_by_default(action_ref));
        match &self.confirm {
            Confirm::By(c) => Some(c.clone()),
            Confirm::Never => None,
            Confirm::Default if risky => Some(ConfirmPolicy::anyone_allowed()),
            Confirm::Default => None,
        }
    }

    /// What the rule says, without where it is written: equal for two
    /// loads of the same rule, different when anything in it changed
    /// (groups it names included, as expanded).
    pub fn fingerprint(&self) -> String {
        let mut r = self.clone();
        r.file = PathBuf::new();
        r.line = 0;
        format!("{r:?}")
    }

    /// Whether the rule names `target` (who and where aside).
    /// Whether it covers `target` (by alias, action, pack or built-in).
    pub fn targets(&self, target: &Target) -> bool {
        match target {
            Target::Builtin(b) => self.builtins.iter().any(|g| g.matches(b)),
            Target::Alias {
                reference,
                pack,
                action_ref,
            } => {
                self.aliases.iter().any(|g| g.matches(reference))
                    || self.actions.iter().any(|g| g.matches(action_ref))
                    || self.packs.iter().any(|g| g.matches(pack))
            }
        }
    }
}

/// Whether `inner` plainly applies only where `outer` does: its rooms and
/// users are among `outer`'s (by their text, or `outer` takes any), and it
/// asks at least `outer`'s power level.
fn within(inner: &Rule, outer: &Rule) -> bool {
    let any = |v: &[Glob]| v.is_empty() || v.iter().any(|g| g.text == "*");
    let rooms = any(&outer.rooms)
        || (!inner.rooms.is_empty()
            && inner
                .rooms
                .iter()
                .all(|g| outer.rooms.iter().any(|o| o.text == g.text)));
    let outer_users = outer.subjects.user_globs();
    let users = outer_users.iter().any(|u| u == "*")
        || inner
            .subjects
            .user_globs()
            .iter()
            .all(|u| outer_users.contains(u));
    let power = outer
        .min_power_level
        .is_none_or(|o| inner.min_power_level.is_some_and(|i| i >= o));
    rooms && users && power
}
