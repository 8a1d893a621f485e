//! Who must approve a request and what they gave: the confirmation
//! frozen when it was made (its quorum parts), break-glass, what
//! approvals are given against, and the approvals themselves.

use serde::{Deserialize, Serialize};

/// Who may approve, frozen when the request is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Confirmation {
    /// User globs (groups already expanded). Empty: anyone the policy
    /// lets run the same command in the room.
    pub approvers: Vec<String>,
    /// How the rule named them, for prompts ("group ops").
    pub approvers_text: String,
    /// How many distinct approvals it needs.
    pub approvals: u32,
    /// Whether the requester's approval counts.
    pub self_approve: bool,
    /// When the prompt expires (ms since the epoch).
    pub expires_ms: u64,
    /// A quorum across groups: every part needs its approvals, one person
    /// counting once, for one part only. Empty: `approvers` and
    /// `approvals` alone (then the union and the sum of the parts).
    #[serde(default)]
    pub quorum: Vec<QuorumPart>,
    /// Approvals count only from devices their owners have cross-signed.
    #[serde(default)]
    pub verified_devices: bool,
}

/// One part of a quorum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuorumPart {
    /// User globs, groups expanded.
    pub approvers: Vec<String>,
    /// How the rule named them ("group security").
    pub text: String,
    /// How many approvals from them.
    pub approvals: u32,
}

impl Confirmation {
    /// Which part each of `users` counts for (None: for none), such that
    /// as many approvals count as possible (a matching of approvers to the
    /// parts' places; one person counts once, for one part only).
    pub fn assign(&self, users: &[&str]) -> Vec<Option<usize>> {
        let slots: Vec<usize> = self
            .quorum
            .iter()
            .enumerate()
            .flat_map(|(i, p)| std::iter::repeat_n(i, p.approvals as usize))
            .collect();
        let fits = |u: &str, part: usize| {
            self.quorum[part]
                .approvers
                .iter()
                .any(|g| crate::policy::Glob::new(g).matches(u))
        };
        let mut slot_of: Vec<Option<usize>> = vec![None; users.len()];
        let mut user_of: Vec<Option<usize>> = vec![None; slots.len()];
        fn augment(
            u: usize,
            seen: &mut [bool],
            slots: &[usize],
            fits: &dyn Fn(usize, usize) -> bool,
            slot_of: &mut [Option<usize>],
            user_of: &mut [Option<usize>],
        ) -> bool {
            for s in 0..slots.len() {
                if seen[s] || !fits(u, slots[s]) {
                    continue;
                }
                seen[s] = true;
                let free = match user_of[s] {
                    None => true,
                    Some(other) => augment(other, seen, slots, fits, slot_of, user_of),
                };
                if free {
                    user_of[s] = Some(u);
                    slot_of[u] = Some(s);
                    return true;
                }
            }
            false
        }
        let fits_idx = |u: usize, part: usize| fits(users[u], part);
        for u in 0..users.len() {
            let mut seen = vec![false; slots.len()];
            augment(u, &mut seen, &slots, &fits_idx, &mut slot_of, &mut user_of);
        }
        slot_of.into_iter().map(|s| s.map(|s| slots[s])).collect()
    }

    /// What the quorum still needs, given who approved ("1 from group
    /// security"); empty when it is complete or there is no quorum.
    pub fn missing(&self, users: &[&str]) -> Vec<String> {
        let assigned = self.assign(users);
        self.quorum
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let have = assigned.iter().filter(|a| **a == Some(i)).count() as u32;
                (have < p.approvals).then(|| format!("{} from {}", p.approvals - have, p.text))
            })
            .collect()
    }
}

/// A run without its confirmation, on a reason, flagged until someone
/// else reviews it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BreakGlass {
    /// Why, in the requester's words.
    pub reason: String,
    /// Who reviewed it.
    #[serde(default)]
    pub reviewed_by: Option<String>,
    /// When.
    #[serde(default)]
    pub reviewed_ms: Option<u64>,
}

/// What a pending request's approvals were given against: digests of the
/// rule that allowed it, of its alias (what decides what runs), and the
/// version of its action. When one changes, the approvals no longer count.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Basis {
    /// The rule's digest.
    pub rule: String,
    /// The alias's digest.
    pub alias: String,
    /// The action's version (a pack commit), or empty.
    pub action: String,
}

/// One approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    /// Who.
    pub user: String,
    /// When.
    pub ts: u64,
    /// The device it came from, when the transport knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether its owner had cross-signed that device (None: unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_signed: Option<bool>,
}
