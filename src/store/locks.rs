//! Locks and their queues: which run holds a lock, who holds one by hand
//! (`!lock`), and the requests waiting for each, in the order they were
//! approved. Kept in sled so a restart finds them as they were.
//!
//! Tree `locks`:
//! - `h` + name → the run holding it (`Held`);
//! - `m` + name → the hand holding it (`Manual`);
//! - `q` + name + 0 + ticket (8 bytes) → a waiting request's id;
//! - `r` + request id → its place (`Place`);
//! - `#ticket` → the last ticket given.
//!
//! Names are checked (`valid_name`) before they reach a key: no 0 byte can
//! cut one short. Every change is one sled batch (atomic); `turn` makes
//! each read-then-write one step (one process owns the database).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use crate::policy::valid_lock_name as valid_name;

/// The run holding a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The request running.
    pub request: String,
    /// Since when (ms).
    pub since_ms: u64,
}

/// A lock held by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manual {
    /// Who locked it (a Matrix user ID).
    pub by: String,
    /// Why, as they said.
    pub reason: String,
    /// Since when (ms).
    pub since_ms: u64,
}

/// Where a waiting request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The lock it waits for.
    pub lock: String,
    /// Its ticket: the queue's order.
    pub ticket: u64,
    /// Since when it waits (ms).
    pub since_ms: u64,
}

/// What holds a request back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// Another run holds the lock.
    Run(Held),
    /// Someone holds it by hand.
    Hand(Manual),
    /// Requests approved earlier wait ahead of it (the first named).
    Queue(String),
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The request holds the lock now (or held it already).
    Holds,
    /// It waits: number `position` (1 = next) behind `blocker`; `new` the
    /// first time it is told so.
    Waits {
        /// 1 for the next to go.
        position: usize,
        /// What it waits for.
        blocker: Blocker,
        /// Whether it joined the queue with this claim.
        new: bool,
        /// Since when it waits (ms).
        since_ms: u64,
    },
}

/// What a request that ended let go of ([`Locks::leave`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Left {
    /// The lock it held.
    pub held: Option<String>,
    /// The lock whose queue it was in.
    pub waited: Option<String>,
}

/// One lock as `!locks` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockView {
    /// Its name.
    pub name: String,
    /// The run holding it.
    pub held: Option<Held>,
    /// The hand holding it.
    pub manual: Option<Manual>,
    /// The requests waiting, next first.
    pub queue: Vec<String>,
}

/// A lock store failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// sled failed.
    #[error("lock storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record does not parse.
    #[error("lock record {0} is unreadable: {1}")]
    Corrupt(String, String),
    /// The name is not a lock name.
    #[error("\"{0}\" is not a lock name (1 to 100 letters, digits and . _ - / : @)")]
    BadName(String),
}

/// The locks and their queues.
pub struct Locks {
    tree: crate::store::kv::Tree,
    turn: Mutex<()>,
}

const TICKET: &[u8] = b"#ticket";

fn key(tag: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 2);
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k
}

fn queue_prefix(name: &str) -> Vec<u8> {
    let mut k = key(b'q', name);
    k.push(0);
    k
}

fn queue_key(name: &str, ticket: u64) -> Vec<u8> {
    let mut k = queue_prefix(name);
    k.extend_from_slice(&ticket.to_be_bytes());
    k
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("lock records serialize")
}

impl Locks {
    /// The store in `db`.
    pub fn open(db: &crate::store::kv::Db) -> crate::store::kv::Result<Self> {
        Ok(Locks {
            tree: db.open_tree("locks")?,
            turn: Mutex::new(()),
        })
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, k: &[u8]) -> Result<Option<T>, LockError> {
        self.tree
            .get(k)?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    LockError::Corrupt(String::from_utf8_lossy(k).into_owned(), e.to_string())
                })
            })
            .transpose()
    }

    fn queue(&self, name: &str) -> Result<Vec<String>, LockError> {
        self.tree
            .scan_prefix(queue_prefix(name))
            .values()
            .map(|v| Ok(String::from_utf8_lossy(&v?).into_owned()))
            .collect()
    }

    /// Let `request` take lock `name` at `now`, or queue it: it takes the
    /// lock when no run holds it, no hand holds it (or `pass_hand`: a
    /// rule lets break-glass pass), and nothing approved before it waits.
    pub fn claim(
        &self,
        name: &str,
        request: &str,
        now: u64,
        pass_hand: bool,
    ) -> Result<Claim, LockError> {
        if !valid_name(name) {
            return Err(LockError::BadName(name.into()));
        }
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let held: Option<Held> = self.read(&key(b'h', name))?;
        if held.as_ref().is_some_and(|h| h.request == request) {
            return Ok(Claim::Holds);
        }
        let manual: Option<Manual> = self.read(&key(b'm', name))?;
        let queue = self.queue(name)?;
        let blocker = match (held, manual) {
            (Some(h), _) => Some(Blocker::Run(h)),
            (None, Some(m)) if !pass_hand => Some(Blocker::Hand(m)),
            _ => queue
                .first()
                .filter(|first| *first != request)
                .map(|first| Blocker::Queue(first.clone())),
        };
        let place: Option<Place> = self.read(&key(b'r', request))?;
        let Some(blocker) = blocker else {
            let mut b = crate::store::kv::Batch::default();
            if let Some(p) = place {
                b.remove(queue_key(&p.lock, p.ticket));
                b.remove(key(b'r', request));
            }
            b.insert(
                key(b'h', name),
                json(&Held {
                    request: request.into(),
                    since_ms: now,
                }),
            );
            self.tree.apply_batch(b)?;
            crate::crash::point("lock_acquired");
            return Ok(Claim::Holds);
        };
        if let Some(p) = place.filter(|p| p.lock == name) {
            let position = queue
                .iter()
                .position(|r| r == request)
                .unwrap_or(queue.len())
                + 1;
            return Ok(Claim::Waits {
                position,
                blocker,
                new: false,
                since_ms: p.since_ms,
            });
        }
        let ticket = self
            .tree
            .get(TICKET)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
            + 1;
        let mut b = crate::store::kv::Batch::default();
        b.insert(TICKET, &ticket.to_be_bytes());
        b.insert(queue_key(name, ticket), request.as_bytes());
        b.insert(
            key(b'r', request),
            json(&Place {
                lock: name.into(),
                ticket,
                since_ms: now,
            }),
        );
        self.tree.apply_batch(b)?;
        Ok(Claim::Waits {
            position: queue.len() + 1,
            blocker,
            new: true,
            since_ms: now,
        })
    }

    /// `request` has ended: the lock it held is released and its place in
    /// a queue given up. Says which, if any (nothing is written if
    /// neither).
    pub fn leave(&self, request: &str) -> Result<Left, LockError> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = crate::store::kv::Batch::default();
        let mut left = Left::default();
        for kv in self.tree.scan_prefix(b"h") {
            let (k, v) = kv?;
            if serde_json::from_slice::<Held>(&v).is_ok_and(|h| h.request == request) {
                left.held = Some(String::from_utf8_lossy(&k[1..]).into_owned());
                b.remove(k);
            }
        }
        if let Some(p) = self.read::<Place>(&key(b'r', request))? {
            b.remove(queue_key(&p.lock, p.ticket));
            b.remove(key(b'r', request));
            left.waited = Some(p.lock);
        }
        if left.held.is_some() || left.waited.is_some() {
            self.tree.apply_batch(b)?;
            crate::crash::point("lock_released");
        }
        Ok(left)
    }

    /// Hold lock `name` by hand; the hand already holding it if any.
    pub fn hold(
        &self,
        name: &str,
        by: &str,
        reason: &str,
        now: u64,
    ) -> Result<Result<(), Manual>, LockError> {
        if !valid_name(name) {
            return Err(LockError::BadName(name.into()));
        }
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = self.read::<Manual>(&key(b'm', name))? {
            return Ok(Err(m));
        }
        let m = Manual {
            by: by.into(),
            reason: reason.into(),
            since_ms: now,
        };
        self.tree.insert(key(b'm', name), json(&m))?;
        Ok(Ok(()))
    }

    /// Release lock `name` held by hand; what held it, if anything did.
    pub fn unhold(&self, name: &str) -> Result<Option<Manual>, LockError> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let m = self.read::<Manual>(&key(b'm', name))?;
        if m.is_some() {
            self.tree.remove(key(b'm', name))?;
        }
        Ok(m)
    }

    /// Where `request` waits, if it does: its place and position (1 =
    /// next).
    pub fn waiting(&self, request: &str) -> Result<Option<(Place, usize)>, LockError> {
        let Some(p) = self.read::<Place>(&key(b'r', request))? else {
            return Ok(None);
        };
        let position = self
            .queue(&p.lock)?
            .iter()
            .position(|r| r == request)
            .map_or(1, |i| i + 1);
        Ok(Some((p, position)))
    }

    /// Every waiting request with its place.
    pub fn all_waiting(&self) -> Result<Vec<(String, Place)>, LockError> {
        self.tree
            .scan_prefix(b"r")
            .map(|kv| {
                let (k, v) = kv?;
                let id = String::from_utf8_lossy(&k[1..]).into_owned();
                let p = serde_json::from_slice(&v)
                    .map_err(|e| LockError::Corrupt(id.clone(), e.to_string()))?;
                Ok((id, p))
            })
            .collect()
    }

    /// The next request of each queue whose lock no run holds: what may
    /// be tried now (a hand may still hold it; the claim decides).
    pub fn ready(&self) -> Result<Vec<String>, LockError> {
        let mut out = Vec::new();
        for v in self.all()? {
            if v.held.is_none()
                && let Some(first) = v.queue.into_iter().next()
            {
                out.push(first);
            }
        }
        Ok(out)
    }

    /// Every lock that is held or has a queue, by name.
    pub fn all(&self) -> Result<Vec<LockView>, LockError> {
        let mut names = std::collections::BTreeSet::new();
        for k in self.tree.iter().keys() {
            let k = k?;
            let name = match k.first() {
                Some(b'h' | b'm') => &k[1..],
                Some(b'q') => k[1..].split(|b| *b == 0).next().unwrap_or_default(),
                _ => continue,
            };
            names.insert(String::from_utf8_lossy(name).into_owned());
        }
        names.into_iter().map(|name| self.view(&name)).collect()
    }

    /// Lock `name`: who holds it and what waits for it.
    pub fn view(&self, name: &str) -> Result<LockView, LockError> {
        Ok(LockView {
            held: self.read(&key(b'h', name))?,
            manual: self.read(&key(b'm', name))?,
            queue: self.queue(name)?,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The locks on each backend: every case below is the contract both keep.
    fn stores() -> Vec<(Option<tempfile::TempDir>, Locks)> {
        crate::store::kv::tests::backends()
            .into_iter()
            .map(|(dir, db)| (dir, Locks::open(&db).unwrap()))
            .collect()
    }

    fn waits(c: Claim) -> (usize, Blocker, bool) {
        match c {
            Claim::Waits {
                position,
                blocker,
                new,
                ..
            } => (position, blocker, new),
            Claim::Holds => panic!("expected to wait"),
        }
    }

    #[test]
    fn one_run_at_a_time_and_the_rest_in_the_order_they_came() {
        for (_d, l) in stores() {
            assert_eq!(l.claim("deploy/prod", "a", 1, false).unwrap(), Claim::Holds);
            let (pos, blocker, new) = waits(l.claim("deploy/prod", "b", 2, false).unwrap());
            assert_eq!((pos, new), (1, true));
            assert!(matches!(blocker, Blocker::Run(h) if h.request == "a"));
            let (pos, _, new) = waits(l.claim("deploy/prod", "c", 3, false).unwrap());
            assert_eq!((pos, new), (2, true));
            // Asking again does not queue twice.
            assert!(!waits(l.claim("deploy/prod", "c", 4, false).unwrap()).2);
            // Another lock is free.
            assert_eq!(
                l.claim("deploy/staging", "d", 5, false).unwrap(),
                Claim::Holds
            );
            // a ends: b is next; c cannot jump ahead of it.
            assert_eq!(l.leave("a").unwrap().held.as_deref(), Some("deploy/prod"));
            assert_eq!(l.ready().unwrap(), vec!["b".to_string()]);
            let (_, blocker, _) = waits(l.claim("deploy/prod", "c", 6, false).unwrap());
            assert_eq!(blocker, Blocker::Queue("b".into()));
            assert_eq!(l.claim("deploy/prod", "b", 7, false).unwrap(), Claim::Holds);
            assert_eq!(l.waiting("c").unwrap().unwrap().1, 1);
            assert!(l.waiting("b").unwrap().is_none());
        }
    }

    #[test]
    fn a_hand_holds_runs_back_until_released_and_break_glass_passes_only_if_allowed() {
        for (_d, l) in stores() {
            assert!(
                l.hold("deploy/prod", "@ops:x", "freeze", 1)
                    .unwrap()
                    .is_ok()
            );
            let again = l.hold("deploy/prod", "@bob:x", "mine", 2).unwrap();
            assert_eq!(again.unwrap_err().by, "@ops:x");
            let (_, blocker, _) = waits(l.claim("deploy/prod", "a", 3, false).unwrap());
            assert!(matches!(blocker, Blocker::Hand(m) if m.reason == "freeze"));
            // A break-glass run its rule lets pass, once a is not ahead of it.
            assert!(matches!(
                l.claim("deploy/prod", "g", 4, true).unwrap(),
                Claim::Waits { .. }
            ));
            assert_eq!(l.leave("a").unwrap().waited.as_deref(), Some("deploy/prod"));
            assert_eq!(l.claim("deploy/prod", "g", 5, true).unwrap(), Claim::Holds);
            assert_eq!(l.unhold("deploy/prod").unwrap().unwrap().by, "@ops:x");
            assert!(l.unhold("deploy/prod").unwrap().is_none());
        }
    }

    #[test]
    fn names_that_are_not_lock_names_are_refused() {
        for (_d, l) in stores() {
            for bad in ["", "a b", "x\0y", "<b>", &"x".repeat(101)] {
                assert!(matches!(
                    l.claim(bad, "a", 1, false),
                    Err(LockError::BadName(_))
                ));
            }
            assert!(valid_name("deploy/prod-eu_1:api@v2"));
        }
    }
}
