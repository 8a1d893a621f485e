//! Requests and their confirmation state machine, persisted in sled.
//!
//! ```text
//! pending ──approve×N──▶ approved ──▶ running ──▶ succeeded | failed
//!    │ deny / cancel / expiry                        (interrupted on restart)
//!    ▼
//! denied | cancelled | expired
//! ```
//!
//! Every transition is a compare-and-swap on the stored record, so two
//! approvals racing each other cannot both move a request to `approved`,
//! and only one caller ever moves `approved` to `running`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alias::Params;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Running,
    Succeeded,
    Failed,
    Denied,
    Cancelled,
    Expired,
    Interrupted,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Denied => "denied",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
            State::Interrupted => "interrupted",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Approved | State::Running)
    }
}

/// Who may approve, frozen when the request is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Confirmation {
    /// User globs (groups already expanded). Empty: anyone the policy
    /// lets run the same command in the room.
    pub approvers: Vec<String>,
    /// How the rule named them, for prompts ("group ops").
    pub approvers_text: String,
    pub approvals: u32,
    pub self_approve: bool,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approval {
    pub user: String,
    pub ts: u64,
}

/// One command on its way to execution: exactly what will run, who asked,
/// and who approved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub id: String,
    pub state: State,
    pub requester: String,
    pub room: String,
    /// The command's event, for replies and status reactions.
    pub event_id: String,
    pub thread: Option<String>,
    pub command: String,
    pub alias: Option<String>,
    pub action: String,
    pub params: Params,
    /// Parameters the chat command set as trailing `key=value` pairs.
    #[serde(default)]
    pub set_in_chat: Vec<String>,
    /// The rule that allowed it.
    pub rule: String,
    pub created_ms: u64,
    pub confirmation: Option<Confirmation>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default)]
    pub prompt_event: Option<String>,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
}

impl Request {
    pub fn approvals_needed(&self) -> u32 {
        self.confirmation.as_ref().map_or(0, |c| c.approvals)
    }

    pub fn expires_in(&self, now_ms: u64) -> Option<Duration> {
        self.confirmation
            .as_ref()
            .map(|c| Duration::from_millis(c.expires_ms.saturating_sub(now_ms)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("request storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("request {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error("no request {0}")]
    NotFound(String),
}

/// The outcome of a transition attempt.
pub enum Update<T> {
    /// The closure accepted; the record now holds the new value.
    Done(Request, T),
    /// The closure refused with a reason; nothing was written.
    Refused(Request, String),
}

/// Writes are not flushed here: every transition is followed by its audit
/// entry, whose flush makes both durable (one fsync, not two).
#[derive(Clone)]
pub struct Requests {
    requests: sled::Tree,
    prompts: sled::Tree,
}

fn prompt_key(room: &str, event_id: &str) -> Vec<u8> {
    let mut k = room.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

impl Requests {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Requests {
            requests: db.open_tree("requests")?,
            prompts: db.open_tree("prompts")?,
        })
    }

    /// Store a new request under a fresh short id.
    pub fn create(&self, mut req: Request) -> Result<Request, StoreError> {
        loop {
            req.id = short_id();
            let bytes = serde_json::to_vec(&req).expect("request serializes");
            if self
                .requests
                .compare_and_swap(req.id.as_bytes(), None as Option<&[u8]>, Some(bytes))?
                .is_ok()
            {
                return Ok(req);
            }
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        match self.requests.get(id.as_bytes())? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string())),
        }
    }

    /// Apply `f` to the stored request atomically: re-read and retry when
    /// another writer got there first, so `f` always sees the latest state.
    pub fn update<T>(
        &self,
        id: &str,
        mut f: impl FnMut(&mut Request) -> Result<T, String>,
    ) -> Result<Update<T>, StoreError> {
        loop {
            let Some(old_bytes) = self.requests.get(id.as_bytes())? else {
                return Err(StoreError::NotFound(id.to_string()));
            };
            let old: Request = serde_json::from_slice(&old_bytes)
                .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))?;
            let mut new = old.clone();
            match f(&mut new) {
                Err(reason) => return Ok(Update::Refused(old, reason)),
                Ok(out) => {
                    let bytes = serde_json::to_vec(&new).expect("request serializes");
                    if self
                        .requests
                        .compare_and_swap(id.as_bytes(), Some(old_bytes), Some(bytes))?
                        .is_ok()
                    {
                        return Ok(Update::Done(new, out));
                    }
                }
            }
        }
    }

    /// Remember which message is a request's prompt, so a reply to it finds
    /// the request. Scoped by room: a reply from elsewhere finds nothing.
    pub fn bind_prompt(&self, id: &str, room: &str, event_id: &str) -> Result<(), StoreError> {
        self.prompts
            .insert(prompt_key(room, event_id), id.as_bytes())?;
        self.update(id, |r| {
            r.prompt_event = Some(event_id.to_string());
            Ok(())
        })?;
        self.prompts.flush()?;
        Ok(())
    }

    pub fn by_prompt(&self, room: &str, event_id: &str) -> Result<Option<Request>, StoreError> {
        match self.prompts.get(prompt_key(room, event_id))? {
            None => Ok(None),
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
        }
    }

    /// Requests still open (pending, approved, running), oldest first.
    pub fn open_requests(&self) -> Result<Vec<Request>, StoreError> {
        let mut v = Vec::new();
        for item in self.requests.iter().values() {
            let b = item?;
            match serde_json::from_slice::<Request>(&b) {
                Ok(r) if r.state.is_open() => v.push(r),
                Ok(_) => {}
                Err(e) => return Err(StoreError::Corrupt("?".into(), e.to_string())),
            }
        }
        v.sort_by_key(|r| r.created_ms);
        Ok(v)
    }
}

/// Six characters a person can read out: no 0/o, 1/l.
fn short_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let seed = format!(
        "{}:{}:{}",
        crate::clock::now_ms(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes());
    let mut x = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (0..6)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}
