//! The audit log: append-only, hash-chained, in sled.
//!
//! Each entry carries a sequence number, a timestamp, the room, sender and
//! request it concerns, and the SHA-256 of the previous entry; its own hash
//! covers all of that. `verify` walks the chain: an altered entry breaks its
//! hash, a removed one leaves a gap or a broken link, a truncated tail no
//! longer matches the head record. Secondary indexes (by alias, action,
//! room, request, status) and a copy of each entry filed by its sender
//! keep queries from scanning the log.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::clock;
use crate::requests::State;

// Tree `audit`: the entries in chunks of about ENTRY_CHUNK_BYTES, `c` +
// first seq → for each entry its seq, its length (4 bytes) and its bytes;
// and `h` → head; written in one atomic batch. (An older airlock stored
// `e` + seq → entry, a key each; `open` moves those into chunks.)
// Tree `audit_index`: posting lists in chunks of up to 128 seqs
// (CHUNK_BYTES): tag + value + 0 + first seq → the seqs, 8 bytes each;
// copies of entries filed by sender, chunked as the log is: `U` + sender
// + 0 + first seq → the entries; the watermark, the last seq indexed; and
// the index's format. The index is derived: if the process dies between
// the two writes, `open` indexes what the watermark lacks, and an index
// of another format is rebuilt.
//
// Why copies for senders: "everything @alice did" is the query people
// ask, and her entries lie spread across the whole log. Read through a
// posting list, each is a page sled's small cache (config.rs) has not
// got: 10,000 of 1,000,000 took 150 ms. Filed together they are a few
// hundred pages read in order: 16 ms. The cost is the log stored twice.
const HEAD: &[u8] = b"h";
const WATERMARK: &[u8] = b"#watermark";
const FORMAT: &[u8] = b"#format";
const INDEX_FORMAT: &[u8] = b"3";
const BY_SENDER: u8 = b'U';
/// Entries indexed per batch when an index is rebuilt.
const REBUILD_BATCH: u64 = 10_000;

/// The key of the chunk of entries that starts at `seq`.
fn chunk_key(seq: u64) -> [u8; 9] {
    let mut k = [CHUNK[0]; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of the log's chunks of entries.
const CHUNK: &[u8] = b"c";

/// An older airlock's entries, a key each: `e` + seq.
const OLD_ENTRY: &[u8] = b"e";

/// Declares a snake_case enum whose serde names and `name()` agree.
macro_rules! names {
    ($(#[$m:meta])* $ty:ident { $($(#[$vm:meta])* $v:ident = $n:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $ty {
            $($(#[$vm])* #[serde(rename = $n)] $v,)*
        }

        impl $ty {
            /// The name stored in the log and used in queries.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$v => $n,)*
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }
    };
}

names!(
    /// What an audit entry records.
    Event {
        /// A command, or an answer to a prompt, came in.
        Received = "received",
        /// A command older than `max_command_age` was not acted on.
        IgnoredStale = "ignored_stale",
        /// An edit, which never runs or approves anything.
        IgnoredEdit = "ignored_edit",
        /// A message the bot could not decrypt.
        Undecryptable = "undecryptable",
        /// No alias matched the command.
        NoMatch = "no_match",
        /// An alias matched.
        Matched = "matched",
        /// The policy allowed it; a request was made.
        Allowed = "allowed",
        /// The policy refused it.
        Denied = "denied",
        /// It could not be run (bad parameters, unknown action…).
        Error = "error",
        /// A confirmation prompt was sent.
        ConfirmationRequested = "confirmation_requested",
        /// An approval was counted.
        Approval = "approval",
        /// An answer to a prompt was refused (not an approver…).
        ApprovalRefused = "approval_refused",
        /// An approver said no.
        Rejected = "rejected",
        /// The requester withdrew it.
        Cancelled = "cancelled",
        /// Not approved in time.
        Expired = "expired",
        /// Its action started.
        Started = "started",
        /// Its action ended.
        Finished = "finished",
        /// airlock stopped while it was open.
        Interrupted = "interrupted",
        /// `!help` was answered.
        Help = "help",
        /// `!pending` was answered.
        Pending = "pending",
        /// `!audit` was answered.
        Audit = "audit",
        /// It runs without its confirmation, on a reason.
        BreakGlass = "break_glass",
        /// Someone else reviewed a break-glass run.
        Reviewed = "reviewed",
        /// StackStorm posted a message to a room (`chatops.post_message`).
        Announced = "announced",
    }
);

names!(
    /// How the thing an entry records stands.
    Status {
        /// A built-in answered.
        Ok = "ok",
        /// It failed before running.
        Error = "error",
        /// Refused by the policy or an approver.
        Denied = "denied",
        /// Being prepared.
        Preparing = "preparing",
        /// Waiting for approvals.
        Pending = "pending",
        /// Approved.
        Approved = "approved",
        /// Running.
        Running = "running",
        /// Ran and succeeded.
        Succeeded = "succeeded",
        /// Ran and failed, or could not be prepared.
        Failed = "failed",
        /// Withdrawn.
        Cancelled = "cancelled",
        /// Not approved in time.
        Expired = "expired",
        /// airlock stopped while it was open.
        Interrupted = "interrupted",
    }
);

impl From<State> for Status {
    fn from(s: State) -> Status {
        match s {
            State::Preparing => Status::Preparing,
            State::Pending => Status::Pending,
            State::Approved => Status::Approved,
            State::Running => Status::Running,
            State::Succeeded => Status::Succeeded,
            State::Failed => Status::Failed,
            State::Denied => Status::Denied,
            State::Cancelled => Status::Cancelled,
            State::Expired => Status::Expired,
            State::Interrupted => Status::Interrupted,
            State::Refused => Status::Denied,
        }
    }
}

/// One step, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// What happened.
    pub event: Event,
    /// The room it happened in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Who did it (a Matrix user ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The request it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The alias (`pack.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The action (`pack.action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The policy rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// How it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Event-specific details (parameters, reasons, commits…), as stored;
    /// [`Entry::details`] reads them.
    #[serde(default, skip_serializing_if = "Detail::is_none")]
    pub detail: Detail,
    /// The hash of the previous entry.
    #[serde(default)]
    pub prev: String,
    /// SHA-256 of this entry with `hash` blank.
    #[serde(default)]
    pub hash: String,
}

impl Entry {
    /// An entry for `event` at `now` (ms since the epoch).
    pub fn new(event: Event, now: u64) -> Self {
        Entry {
            seq: 0,
            ts: now,
            event,
            room: None,
            sender: None,
            request: None,
            alias: None,
            action: None,
            rule: None,
            status: None,
            detail: Detail::default(),
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// In room `v`.
    pub fn room(mut self, v: &str) -> Self {
        self.room = Some(v.to_string());
        self
    }
    /// Done by `v`.
    pub fn sender(mut self, v: &str) -> Self {
        self.sender = Some(v.to_string());
        self
    }
    /// About request `v`.
    pub fn request(mut self, v: &str) -> Self {
        self.request = Some(v.to_string());
        self
    }
    /// About alias `v`.
    pub fn alias(mut self, v: Option<&str>) -> Self {
        self.alias = v.map(str::to_string);
        self
    }
    /// About action `v`.
    pub fn action(mut self, v: &str) -> Self {
        self.action = Some(v.to_string());
        self
    }
    /// Decided by rule `v`.
    pub fn rule(mut self, v: Option<&str>) -> Self {
        self.rule = v.map(str::to_string);
        self
    }
    /// Standing `v`.
    pub fn status(mut self, v: impl Into<Status>) -> Self {
        self.status = Some(v.into());
        self
    }
    /// With details `v`.
    pub fn detail(mut self, v: Value) -> Self {
        self.detail = Detail::new(&v);
        self
    }

    /// The details, parsed (`Value::Null` when there are none).
    pub fn details(&self) -> Value {
        self.detail
            .0
            .as_ref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or(Value::Null)
    }

    /// The detail `key` as a `T`, if there is one of that shape. Only that
    /// value is built: a `finished` entry's details hold the whole result,
    /// and the metrics read just its `elapsed_ms`.
    pub fn detail_field<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let raw = self.detail.0.as_ref()?;
        let fields: std::collections::HashMap<String, &RawValue> =
            serde_json::from_str(raw.get()).ok()?;
        serde_json::from_str(fields.get(key)?.get()).ok()
    }

    /// SHA-256 over the entry with its own hash blank (public so anyone
    /// can check an exported entry).
    pub fn compute_hash(&self) -> String {
        let mut copy = self.clone();
        copy.hash.clear();
        let bytes = serde_json::to_vec(&copy).expect("entry serializes");
        hex(&Sha256::digest(&bytes))
    }

    /// Set the hash and return the stored bytes, serializing once: `hash`
    /// is the last field, so the digest of the bytes with `"hash":""` is
    /// spliced in between those quotes.
    pub(crate) fn seal(&mut self) -> Vec<u8> {
        self.hash.clear();
        let mut bytes = serde_json::to_vec(self).expect("entry serializes");
        self.hash = hex(&Sha256::digest(&bytes));
        debug_assert!(bytes.ends_with(b"\"hash\":\"\"}"));
        let at = bytes.len() - 2;
        bytes.splice(at..at, self.hash.bytes());
        bytes
    }

    /// One line for chat and the CLI.
    pub fn summary_line(&self) -> String {
        let mut s = format!("#{} {} {}", self.seq, clock::format_ms(self.ts), self.event);
        for (label, v) in [
            ("by", &self.sender),
            ("req", &self.request),
            ("alias", &self.alias),
            ("action", &self.action),
            ("status", &self.status.map(|s| s.name().to_string())),
            ("rule", &self.rule),
        ] {
            if let Some(v) = v {
                s.push_str(&format!(" {label}={v}"));
            }
        }
        // The short details; parameters and the like stay in --json output.
        const SHOWN: [&str; 12] = [
            "command",
            "reply",
            "reason",
            "error",
            "summary",
            "commit",
            "approvals",
            "needed",
            "expires",
            "was",
            "builtin",
            "query",
        ];
        if let Value::Object(obj) = self.details() {
            for (k, v) in obj.iter().filter(|(k, _)| SHOWN.contains(&k.as_str())) {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                s.push_str(&format!(" {k}={v}"));
            }
        }
        s
    }
}

/// An entry's details as the JSON text they are stored as. A query hands
/// back thousands of entries and few callers look inside their details;
/// keeping the text (one allocation) instead of a map (several, each key
/// hashed) made parsing an entry about a third cheaper (measured on the
/// core bench's entries). The text is compact JSON, exactly what a
/// `Value` would serialize to, so hashes are the same either way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Detail(Option<Box<RawValue>>);

impl Detail {
    /// The details `v` (none for `null`).
    pub fn new(v: &Value) -> Self {
        if v.is_null() {
            return Detail(None);
        }
        Detail(serde_json::value::to_raw_value(v).ok())
    }

    /// Whether there are none.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

impl PartialEq for Detail {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref().map(|r| r.get()) == other.0.as_ref().map(|r| r.get())
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which entries to return. All filters must hold.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Entries by this user.
    pub user: Option<String>,
    /// In this room.
    pub room: Option<String>,
    /// About this alias.
    pub alias: Option<String>,
    /// About this action.
    pub action: Option<String>,
    /// About this request.
    pub request: Option<String>,
    /// Matches the entry's status or its event name.
    pub status: Option<String>,
    /// Of this event.
    pub event: Option<String>,
    /// Lower bound on the timestamp, in ms.
    pub since: Option<u64>,
    /// Newest `limit` entries.
    pub limit: Option<usize>,
}

impl Query {
    /// Whether `e` matches (the time bound and limit aside).
    pub fn accepts(&self, e: &Entry) -> bool {
        let eq = |f: &Option<String>, v: &Option<String>| {
            f.as_ref().is_none_or(|f| v.as_ref() == Some(f))
        };
        eq(&self.user, &e.sender)
            && eq(&self.room, &e.room)
            && eq(&self.alias, &e.alias)
            && eq(&self.action, &e.action)
            && eq(&self.request, &e.request)
            && self.event.as_ref().is_none_or(|v| e.event.name() == v)
            && self.status.as_ref().is_none_or(|s| {
                e.status.map(Status::name) == Some(s.as_str()) || e.event.name() == s
            })
            && self.since.is_none_or(|t| e.ts >= t)
    }

    /// The most selective index this query can use: (tag, value).
    fn index(&self) -> Option<(u8, &str)> {
        [
            (b'q', &self.request),
            (b'a', &self.alias),
            (BY_SENDER, &self.user),
            (b'r', &self.room),
            (b'x', &self.action),
        ]
        .into_iter()
        .find_map(|(t, v)| v.as_deref().map(|v| (t, v)))
    }
}

/// The fields of an entry with posting lists: (tag, value).
fn indexed(e: &Entry) -> impl Iterator<Item = (u8, &str)> {
    [
        (b'q', &e.request),
        (b'a', &e.alias),
        (b'r', &e.room),
        (b'x', &e.action),
    ]
    .into_iter()
    .filter_map(|(t, v)| v.as_deref().map(|v| (t, v)))
    .chain(e.status.map(|s| (b's', s.name())))
}

fn index_prefix(tag: u8, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 10);
    k.push(tag);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

/// What names entry `seq`'s copy filed under `sender` (its chunk's prefix
/// and its seq): a copy moved to another sender no longer matches.
fn copy_key(sender: &str, seq: u64) -> Vec<u8> {
    let mut k = index_prefix(BY_SENDER, sender);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The seq in the last 8 bytes of a key (an entry's, a copy's) or of
/// a stored seq (the watermark, a posting).
fn key_seq(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A posting chunk grows to this many bytes (128 seqs) before the next
/// starts. sled keeps a record of every page for the life of the process
/// (and rebuilds it at every start), a page holding at most 16 keys: a
/// chunk per (field, value) per append was three quarters of the keys a
/// command wrote, and the bot's memory grew with them.
const CHUNK_BYTES: usize = 1024;

/// A chunk of entries (the log's, a sender's copies) grows to about this
/// many bytes, a few entries, before the next starts, for the same
/// reason: a key per entry and per copy were ten keys a command. Each
/// append rewrites the newest chunk, and sled rewrites whole pages, so a
/// bigger chunk costs disk: measured over 30,000 commands, 2 KiB chunks
/// took 1,030 MB on disk and 11 MiB at the next start, 4 KiB 1,185 MB and
/// 10 MiB, a key each 704 MB and 31 MiB.
const ENTRY_CHUNK_BYTES: usize = 2048;

/// An entry as a chunk holds it: seq, length, its stored bytes.
fn framed(seq: u64, bytes: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(12 + bytes.len());
    r.extend_from_slice(&seq.to_be_bytes());
    r.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    r.extend_from_slice(bytes);
    r
}

/// The entries in `chunk`: (seq, where its bytes lie), oldest first; None
/// if the chunk does not parse (cut or altered).
fn framed_in(chunk: &[u8]) -> Option<Vec<(u64, std::ops::Range<usize>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        let head = chunk.get(at..at + 12)?;
        let seq = u64::from_be_bytes(head[..8].try_into().ok()?);
        let len = u32::from_be_bytes(head[8..].try_into().ok()?) as usize;
        let body = at + 12..at + 12 + len;
        chunk.get(body.clone())?;
        out.push((seq, body.clone()));
        at = body.end;
    }
    Some(out)
}

/// Add `records` (seq, bytes; in seq order) to the chunks under `prefix`:
/// to the newest while it is under `cap` bytes, then to new ones keyed by
/// their first seq.
fn add_to_chunks(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
    prefix: &[u8],
    records: &[(u64, Vec<u8>)],
    cap: usize,
) -> sled::Result<()> {
    let newest = tree.scan_prefix(prefix).next_back().transpose()?;
    let mut open = newest
        .filter(|(_, old)| old.len() < cap)
        .map(|(key, old)| (key.to_vec(), old.to_vec()));
    for (seq, record) in records {
        let chunk = match open.as_mut() {
            Some((_, bytes)) if bytes.len() < cap => bytes,
            _ => {
                if let Some((key, bytes)) = open.take() {
                    batch.insert(key, bytes);
                }
                let mut key = prefix.to_vec();
                key.extend_from_slice(&seq.to_be_bytes());
                &mut open.insert((key, Vec::new())).1
            }
        };
        chunk.extend_from_slice(record);
    }
    if let Some((key, bytes)) = open {
        batch.insert(key, bytes);
    }
    Ok(())
}

/// Index writes for `entries` (in seq order), stored as `stored`: each
/// field value's seqs and each sender's copies added to their newest
/// chunks in `index`.
fn index_batch(
    index: &sled::Tree,
    entries: &[Entry],
    stored: &[sled::IVec],
) -> sled::Result<sled::Batch> {
    type Records = Vec<(u64, Vec<u8>)>;
    let mut postings: std::collections::BTreeMap<Vec<u8>, Records> = Default::default();
    let mut copies: std::collections::BTreeMap<Vec<u8>, Records> = Default::default();
    for (e, bytes) in entries.iter().zip(stored) {
        for (tag, value) in indexed(e) {
            postings
                .entry(index_prefix(tag, value))
                .or_default()
                .push((e.seq, e.seq.to_be_bytes().to_vec()));
        }
        if let Some(sender) = &e.sender {
            copies
                .entry(index_prefix(BY_SENDER, sender))
                .or_default()
                .push((e.seq, framed(e.seq, bytes)));
        }
    }
    let mut batch = sled::Batch::default();
    for (prefix, records) in postings {
        add_to_chunks(index, &mut batch, &prefix, &records, CHUNK_BYTES)?;
    }
    for (prefix, records) in copies {
        add_to_chunks(index, &mut batch, &prefix, &records, ENTRY_CHUNK_BYTES)?;
    }
    if let Some(last) = entries.last() {
        batch.insert(WATERMARK, &last.seq.to_be_bytes());
    }
    Ok(batch)
}

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// sled failed.
    #[error("audit storage: {0}")]
    Storage(#[from] sled::Error),
    /// Entry `seq` does not parse.
    #[error("audit entry {0} is unreadable: {1}")]
    Corrupt(u64, String),
}

/// Head of the chain: last sequence number and its hash.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Head {
    seq: u64,
    hash: String,
}

/// The head of the chain at some point, as posted to the audit room: a
/// copy the local machine cannot rewrite. A history rewritten with every
/// hash recomputed still chains, but no longer matches its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The entry.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

impl Checkpoint {
    /// The field of a checkpoint message's content that carries it: the
    /// text beside it is for people, and is never read back.
    pub const FIELD: &'static str = "org.airlock.checkpoint";

    /// The text of the message that carries it.
    pub fn text(&self) -> String {
        format!(
            "🔏 audit checkpoint seq={} hash={} — the audit log's head; `!audit verify` checks the log against these",
            self.seq, self.hash
        )
    }

    /// Its field's value (under [`Checkpoint::FIELD`]).
    pub fn field(&self) -> Value {
        json!({"seq": self.seq, "hash": self.hash})
    }

    /// The checkpoint an event carries, if `bot` sent it with the field:
    /// an event as the homeserver serves it (`sender`, `content`). What a
    /// body says, and what anyone else sent, is never one.
    pub fn from_event(event: &Value, bot: &str) -> Option<Checkpoint> {
        if event.get("sender").and_then(Value::as_str) != Some(bot) {
            return None;
        }
        let f = event.get("content")?.get(Self::FIELD)?;
        let seq = f.get("seq")?.as_u64()?;
        let hash = f.get("hash")?.as_str()?;
        (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Checkpoint {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }

    /// Every checkpoint `bot` sent among the events of an export of the
    /// audit room: JSON (a client's room export, a `/messages` answer, or
    /// any document holding the events) or JSON lines, one event each.
    pub fn from_export(text: &str, bot: &str) -> Result<Vec<Checkpoint>, String> {
        let docs: Vec<Value> = match serde_json::from_str::<Value>(text) {
            Ok(v) => vec![v],
            Err(whole) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| {
                    serde_json::from_str(l).map_err(|e| {
                        format!(
                            "neither one JSON document ({whole}) nor JSON lines (line {}: {e})",
                            i + 1
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        fn walk(v: &Value, bot: &str, out: &mut Vec<Checkpoint>) {
            if let Some(c) = Checkpoint::from_event(v, bot) {
                out.push(c);
                return;
            }
            match v {
                Value::Array(items) => items.iter().for_each(|i| walk(i, bot, out)),
                Value::Object(m) => m.values().for_each(|i| walk(i, bot, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        docs.iter().for_each(|d| walk(d, bot, &mut out));
        Ok(out)
    }
}

/// The log, in sled trees `audit` and `audit_index`.
#[derive(Clone)]
pub struct AuditLog {
    db: sled::Db,
    tree: sled::Tree,
    index: sled::Tree,
    /// Appends take turns: each reads the head it extends.
    append_lock: Arc<Mutex<()>>,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// The last entry's hash.
    pub head_hash: String,
    /// Every break found.
    pub problems: Vec<String>,
}

impl Verification {
    /// Whether the chain is intact.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl AuditLog {
    /// Open the log in `db`, indexing what a crash left unindexed.
    pub fn open(db: &sled::Db) -> Result<Self, AuditError> {
        let log = AuditLog {
            db: db.clone(),
            tree: db.open_tree("audit")?,
            index: db.open_tree("audit_index")?,
            append_lock: Arc::new(Mutex::new(())),
        };
        log.migrate()?;
        log.catch_up_index()?;
        Ok(log)
    }

    /// Move the entries an older airlock stored a key each into chunks,
    /// oldest first, a batch at a time: each batch writes its chunks and
    /// removes its keys atomically, so a move cut short goes on at the
    /// next open. The bytes stay as they were: hashes and copies match.
    fn migrate(&self) -> Result<(), AuditError> {
        let mut moved = 0u64;
        loop {
            let old = self
                .tree
                .scan_prefix(OLD_ENTRY)
                .take(REBUILD_BATCH as usize)
                .collect::<Result<Vec<_>, _>>()?;
            if old.is_empty() {
                break;
            }
            if moved == 0 {
                tracing::info!(
                    "storing the audit log's entries in chunks (log from another version)"
                );
            }
            let records: Vec<(u64, Vec<u8>)> = old
                .iter()
                .map(|(k, b)| (key_seq(k), framed(key_seq(k), b)))
                .collect();
            let mut batch = sled::Batch::default();
            add_to_chunks(&self.tree, &mut batch, CHUNK, &records, ENTRY_CHUNK_BYTES)?;
            for (k, _) in &old {
                batch.remove(k);
            }
            self.tree.apply_batch(batch)?;
            moved += old.len() as u64;
        }
        if moved > 0 {
            self.db.flush()?;
        }
        Ok(())
    }

    /// The chunks of entries from the one holding `first` on.
    fn chunks_from(
        &self,
        first: u64,
    ) -> Result<impl DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>>, AuditError>
    {
        let start = holder(&self.tree, first)?.map_or(0, |(k, _)| key_seq(&k));
        Ok(self.tree.range(chunk_key(start)..=chunk_key(u64::MAX)))
    }

    /// The stored entries from `first` on, oldest first.
    fn stored_from(
        &self,
        first: u64,
    ) -> Result<impl Iterator<Item = Result<Stored, AuditError>>, AuditError> {
        Ok(self
            .chunks_from(first)?
            .flat_map(|kv| {
                match kv
                    .map_err(AuditError::from)
                    .and_then(|kv| unchunk(kv, ENTRIES))
                {
                    Ok(v) => v.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                }
            })
            .filter(move |r| r.as_ref().map_or(true, |(seq, _, _)| *seq >= first)))
    }

    /// Index the entries an interrupted append left unindexed, or all of
    /// them if the index is of another format (an older airlock's). The
    /// format is written last: a rebuild cut short starts over.
    fn catch_up_index(&self) -> Result<(), AuditError> {
        let current = self.index.get(FORMAT)?.is_some_and(|f| f == INDEX_FORMAT);
        if !current {
            self.index.clear()?;
        }
        let mut indexed = self.index.get(WATERMARK)?.map(|b| key_seq(&b)).unwrap_or(0);
        let head = self.head().seq;
        if head > indexed && !current {
            tracing::info!("indexing the audit log's {head} entries (index from another version)");
        }
        while indexed < head {
            let last = head.min(indexed + REBUILD_BATCH);
            let (mut entries, mut stored) = (Vec::new(), Vec::new());
            for item in self.stored_from(indexed + 1)? {
                let (seq, chunk, at) = item?;
                if seq > last {
                    break;
                }
                entries.push(parse(seq, &chunk[at.clone()])?);
                stored.push(sled::IVec::from(&chunk[at]));
            }
            self.index
                .apply_batch(index_batch(&self.index, &entries, &stored)?)?;
            indexed = last;
        }
        if !current {
            self.index.insert(FORMAT, INDEX_FORMAT)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Append entries atomically (all or none), chained, then flush to disk.
    pub fn append(&self, mut batch: Vec<Entry>) -> Result<Vec<Entry>, AuditError> {
        if batch.is_empty() {
            return Ok(batch);
        }
        let _turn = self.append_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut head = self.head();
        let mut writes = sled::Batch::default();
        let mut stored = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        for e in batch.iter_mut() {
            e.seq = head.seq + 1;
            e.prev = std::mem::take(&mut head.hash);
            let bytes = sled::IVec::from(e.seal());
            records.push((e.seq, framed(e.seq, &bytes)));
            stored.push(bytes);
            head = Head {
                seq: e.seq,
                hash: e.hash.clone(),
            };
        }
        add_to_chunks(&self.tree, &mut writes, CHUNK, &records, ENTRY_CHUNK_BYTES)?;
        writes.insert(HEAD, serde_json::to_vec(&head).expect("head serializes"));
        self.tree.apply_batch(writes)?;
        self.index
            .apply_batch(index_batch(&self.index, &batch, &stored)?)?;
        crate::crash::point("audit_before_flush");
        self.db.flush()?;
        crate::crash::point("audit_after_flush");
        Ok(batch)
    }

    /// Append one entry.
    pub fn record(&self, e: Entry) -> Result<Entry, AuditError> {
        Ok(self.append(vec![e])?.remove(0))
    }

    fn read(&self, seq: u64) -> Result<Option<Entry>, AuditError> {
        let Some(kv) = holder(&self.tree, seq)? else {
            return Ok(None);
        };
        match unchunk(kv, ENTRIES)?
            .into_iter()
            .find(|(s, _, _)| *s == seq)
        {
            None => Ok(None),
            Some((_, chunk, at)) => parse(seq, &chunk[at]).map(Some),
        }
    }

    /// How many entries.
    pub fn len(&self) -> u64 {
        self.head().seq
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn head(&self) -> Head {
        self.tree
            .get(HEAD)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Entries matching `q`, oldest first (the newest `q.limit` of them).
    pub fn query(&self, q: &Query) -> Result<Vec<Entry>, AuditError> {
        let limit = q.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut take = |e: Entry| -> bool {
            // Entries come newest first; stop once past `since`.
            if q.since.is_some_and(|t| e.ts < t) {
                return false;
            }
            if q.accepts(&e) {
                out.push(e);
            }
            out.len() < limit
        };
        match q.index() {
            Some((BY_SENDER, user)) => {
                let mut copies = self
                    .index
                    .scan_prefix(index_prefix(BY_SENDER, user))
                    .rev()
                    .flat_map(|kv| {
                        match kv
                            .map_err(AuditError::from)
                            .and_then(|kv| unchunk(kv, COPIES))
                        {
                            Ok(v) => v.into_iter().rev().map(Ok).collect(),
                            Err(e) => vec![Err(e)],
                        }
                    });
                in_batches(
                    &mut copies,
                    |(seq, chunk, at)| parse(*seq, &chunk[at.clone()]).map(Some),
                    &mut take,
                )?;
            }
            Some((tag, value)) => {
                let mut seqs = self
                    .index
                    .scan_prefix(index_prefix(tag, value))
                    .values()
                    .rev()
                    .flat_map(|chunk| match chunk {
                        Ok(c) => c.chunks_exact(8).rev().map(|s| Ok(key_seq(s))).collect(),
                        Err(e) => vec![Err(AuditError::from(e))],
                    });
                in_batches(&mut seqs, |s| self.read(*s), &mut take)?;
            }
            None => {
                'chunks: for kv in self.chunks_from(0)?.rev() {
                    for (seq, chunk, at) in unchunk(kv?, ENTRIES)?.into_iter().rev() {
                        if !take(parse(seq, &chunk[at])?) {
                            break 'chunks;
                        }
                    }
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` entries after entry `seq`, oldest first: how a
    /// follower reads what is new.
    pub fn after(&self, seq: u64, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let mut out = Vec::new();
        for item in self.stored_from(seq.saturating_add(1))?.take(limit) {
            let (seq, chunk, at) = item?;
            out.push(parse(seq, &chunk[at])?);
        }
        Ok(out)
    }

    /// The head now, as a checkpoint (None while the log is empty).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let h = self.head();
        (h.seq > 0).then_some(Checkpoint {
            seq: h.seq,
            hash: h.hash,
        })
    }

    /// Check the log against `checkpoints` (any order, duplicates fine):
    /// every entry a checkpoint names must exist with that hash. Returns
    /// the problems, the first mismatch first, with the range it must lie
    /// in: after the newest checkpoint that still matches, at or before
    /// the first that does not.
    pub fn verify_against(&self, checkpoints: &[Checkpoint]) -> Result<Vec<String>, AuditError> {
        let mut cps = checkpoints.to_vec();
        cps.sort_by_key(|c| c.seq);
        cps.dedup();
        let mut problems = Vec::new();
        let mut last_good = 0;
        for c in &cps {
            match self.read(c.seq)? {
                Some(e) if e.hash == c.hash => {
                    if problems.is_empty() {
                        last_good = c.seq;
                    }
                }
                Some(_) if !problems.is_empty() => problems.push(format!(
                    "entry {} no longer matches its checkpoint either (hash {}…)",
                    c.seq,
                    &c.hash[..12]
                )),
                Some(_) => problems.push(format!(
                    "entry {} no longer matches its checkpoint (hash {}…): the history was rewritten {}",
                    c.seq,
                    &c.hash[..12],
                    if last_good == 0 {
                        format!("at or before entry {}", c.seq)
                    } else {
                        format!("between entries {} and {}", last_good + 1, c.seq)
                    }
                )),
                None => problems.push(format!(
                    "entry {}, which a checkpoint vouches for, is missing",
                    c.seq
                )),
            }
        }
        Ok(problems)
    }

    /// Walk the whole chain and report every inconsistency.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        let mut v = Verification::default();
        let mut expected_seq = 1u64;
        let mut prev_hash = String::new();
        // What each entry's copy under its sender must be, to check the
        // copies against after the walk: they are what queries by user
        // show, and must not say other than the chain.
        let mut copies: Vec<(u64, u128)> = Vec::new();
        let mut resync = false;
        for item in self.stored_from(0)? {
            let (seq, chunk, at) = match item {
                Ok(stored) => stored,
                Err(err) => {
                    // The entries it held are that problem, not a gap.
                    v.problems.push(err.to_string());
                    resync = true;
                    prev_hash.clear();
                    continue;
                }
            };
            let b = &chunk[at];
            let e = match parse(seq, b) {
                Ok(e) => e,
                Err(err) => {
                    v.problems.push(err.to_string());
                    expected_seq = seq + 1;
                    prev_hash.clear();
                    continue;
                }
            };
            let after_unreadable = std::mem::take(&mut resync);
            if seq != expected_seq && !after_unreadable {
                v.problems.push(format!(
                    "entries {expected_seq}..{} are missing",
                    seq.saturating_sub(1)
                ));
            }
            if e.seq != seq {
                v.problems
                    .push(format!("entry stored at {seq} says it is {}", e.seq));
            }
            if e.prev != prev_hash {
                v.problems.push(format!(
                    "entry {seq}: does not chain to the entry before it"
                ));
            }
            if e.compute_hash() != e.hash {
                v.problems.push(format!(
                    "entry {seq}: content does not match its hash (altered)"
                ));
            }
            if let Some(sender) = &e.sender {
                copies.push((seq, copy_digest(&copy_key(sender, seq), b)));
            }
            prev_hash = e.hash.clone();
            expected_seq = seq + 1;
            v.entries += 1;
        }
        self.verify_copies(&copies, &mut v.problems)?;
        let head = self.head();
        if head.seq != expected_seq - 1 || head.hash != prev_hash {
            v.problems.push(format!(
                "the log ends at entry {} but its head record says {} (entries removed from the end?)",
                expected_seq - 1,
                head.seq
            ));
        }
        v.head_hash = head.hash;
        Ok(v)
    }

    /// Check the copies filed by sender against `expected` (seq, digest
    /// of key and bytes; in seq order): each must be there, under its
    /// entry's sender, byte for byte the entry.
    fn verify_copies(
        &self,
        expected: &[(u64, u128)],
        problems: &mut Vec<String>,
    ) -> Result<(), AuditError> {
        const SHOWN: usize = 10;
        let mut seen = vec![false; expected.len()];
        let mut wrong = 0usize;
        for item in self.index.scan_prefix([BY_SENDER]) {
            let (k, chunk) = item?;
            let prefix = k[..k.len().saturating_sub(8)].to_vec();
            let copies = match unchunk((k, chunk), COPIES) {
                Ok(copies) => copies,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            for (seq, chunk, at) in copies {
                let mut key = prefix.clone();
                key.extend_from_slice(&seq.to_be_bytes());
                let found = expected.binary_search_by_key(&seq, |(s, _)| *s).ok();
                if let Some(i) = found {
                    seen[i] = true;
                    if expected[i].1 == copy_digest(&key, &chunk[at]) {
                        continue;
                    }
                }
                wrong += 1;
                if wrong <= SHOWN {
                    problems.push(format!(
                        "the copy of entry {seq} that queries by user read differs from the log (altered or misfiled)"
                    ));
                }
            }
        }
        if wrong > SHOWN {
            problems.push(format!("{} more copies differ from the log", wrong - SHOWN));
        }
        match seen.iter().filter(|s| !**s).count() {
            0 => {}
            1 => {
                problems.push("1 entry has no copy for queries by user (it would not show)".into())
            }
            n => problems.push(format!(
                "{n} entries have no copy for queries by user (they would not show)"
            )),
        }
        Ok(())
    }
}

/// An entry as stored: its seq, the chunk that holds it, where its bytes
/// lie in the chunk.
type Stored = (u64, sled::IVec, std::ops::Range<usize>);

/// What a chunk of the log holds, as its errors name it.
const ENTRIES: &str = "entries";
/// What a chunk filed under a sender holds.
const COPIES: &str = "copies for queries by user";

/// The entries in chunk `(key, chunk)` (of the log, or of copies: `what`),
/// oldest first.
fn unchunk((key, chunk): (sled::IVec, sled::IVec), what: &str) -> Result<Vec<Stored>, AuditError> {
    let framed = framed_in(&chunk).ok_or_else(|| {
        AuditError::Corrupt(
            key_seq(&key),
            format!("the chunk of {what} starting here is cut or altered"),
        )
    })?;
    Ok(framed
        .into_iter()
        .map(|(seq, at)| (seq, chunk.clone(), at))
        .collect())
}

/// The chunk of the log that holds entry `seq`, if any: the last to start
/// at or before it.
fn holder(tree: &sled::Tree, seq: u64) -> sled::Result<Option<(sled::IVec, sled::IVec)>> {
    tree.range(chunk_key(0)..=chunk_key(seq))
        .next_back()
        .transpose()
}

/// Entry `seq`'s stored bytes replaced, in place, by what `edit` makes of
/// them (None: removed): what someone with write access to the store
/// could do, and what `verify` and the checkpoints are tested against.
#[doc(hidden)]
pub fn edit_stored(
    db: &sled::Db,
    seq: u64,
    edit: impl FnOnce(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Result<(), AuditError> {
    let tree = db.open_tree("audit")?;
    let (key, entries) = match holder(&tree, seq)? {
        Some(kv) => (kv.0.clone(), unchunk(kv, ENTRIES)?),
        None => (sled::IVec::default(), Vec::new()),
    };
    let Some((_, chunk, at)) = entries.iter().find(|(s, _, _)| *s == seq) else {
        // Not stored: filed in a chunk of its own.
        if let Some(bytes) = edit(None) {
            tree.insert(chunk_key(seq), framed(seq, &bytes))?;
        }
        return Ok(());
    };
    let new = edit(Some(&chunk[at.clone()]));
    let mut rest = Vec::new();
    for (s, chunk, at) in &entries {
        match (*s == seq, &new) {
            (false, _) => rest.extend(framed(*s, &chunk[at.clone()])),
            (true, Some(bytes)) => rest.extend(framed(seq, bytes)),
            (true, None) => {}
        }
    }
    if rest.is_empty() {
        tree.remove(key)?;
    } else {
        tree.insert(key, rest)?;
    }
    Ok(())
}

/// Entry `seq` from its stored bytes.
fn parse(seq: u64, bytes: &[u8]) -> Result<Entry, AuditError> {
    serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt(seq, e.to_string()))
}

/// A copy's key and bytes, digested (128 bits of SHA-256 tell copies
/// apart as well as all 256 would, at half the memory for a large log).
fn copy_digest(key: &[u8], bytes: &[u8]) -> u128 {
    let d = Sha256::new()
        .chain_update((key.len() as u64).to_be_bytes())
        .chain_update(key)
        .chain_update(bytes)
        .finalize();
    u128::from_be_bytes(d[..16].try_into().expect("16 of 32 bytes"))
}

/// Hand `take` the entries `items` lead to (newest first) until it says
/// stop. They are read in batches, each twice the last: a `-n 100` query
/// reads little, and a query for everything reads big batches on two
/// threads (reading and parsing entries is the whole cost).
fn in_batches<T: Sync>(
    items: &mut impl Iterator<Item = Result<T, AuditError>>,
    read: impl Fn(&T) -> Result<Option<Entry>, AuditError> + Sync,
    mut take: impl FnMut(Entry) -> bool,
) -> Result<(), AuditError> {
    let mut size = 128;
    loop {
        let batch = items.by_ref().take(size).collect::<Result<Vec<T>, _>>()?;
        if batch.is_empty() {
            return Ok(());
        }
        for e in on_two_threads(&batch, &read)?.into_iter().flatten() {
            if !take(e) {
                return Ok(());
            }
        }
        size = (size * 2).min(16_384);
    }
}

/// `f` of each of `items`, in order. A long list is done on two threads,
/// each taking the next chunk of 256 until none is left (measured on
/// 10,000 of 1,000,000 entries: 20–25% faster than one thread reading
/// while another parses).
fn on_two_threads<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, AuditError> + Sync,
) -> Result<Vec<R>, AuditError> {
    if items.len() < 512 {
        return items.iter().map(&f).collect();
    }
    let chunks: Vec<&[T]> = items.chunks(256).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Done<R> = Vec<(usize, Result<Vec<R>, AuditError>)>;
    let work = || -> Done<R> {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(chunk) = chunks.get(i) else {
                return done;
            };
            done.push((i, chunk.iter().map(&f).collect()));
        }
    };
    let mut done = std::thread::scope(|s| {
        let helper = s.spawn(work);
        let mut mine = work();
        let theirs = helper
            .join()
            .map_err(|_| AuditError::Corrupt(0, "a reading thread panicked".into()))?;
        mine.extend(theirs);
        Ok::<_, AuditError>(mine)
    })?;
    done.sort_unstable_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(items.len());
    for (_, chunk) in done {
        out.extend(chunk?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty log in a store of its own (the directory lives as long as
    /// the first value).
    fn fresh() -> (tempfile::TempDir, sled::Db, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        (dir, db, log)
    }

    fn entry(i: u64) -> Entry {
        Entry::new(Event::Received, 1_700_000_000_000 + i)
            .sender(&format!("@u{}:example.org", i % 3))
            .room("!r:example.org")
    }

    /// Details are kept as text, but an entry serializes (and so hashes)
    /// byte for byte as it did when they were a `Value`, and reads back
    /// equal, key order kept.
    #[test]
    fn details_are_stored_as_a_value_would_be() {
        let (_dir, _db, log) = fresh();
        let detail = serde_json::json!({"z": 1, "a": {"y": [1, "two", null], "b": "ü \" {{"}});
        let stored = log.record(entry(1).detail(detail.clone())).unwrap();
        let mut as_value = serde_json::to_value(&stored).unwrap();
        as_value["detail"] = detail.clone();
        assert_eq!(
            serde_json::to_vec(&as_value).unwrap(),
            serde_json::to_vec(&stored).unwrap()
        );
        let read = log.query(&Query::default()).unwrap().remove(0);
        assert_eq!(read, stored);
        assert_eq!(read.details(), detail);
        assert_eq!(read.details()["a"]["b"], "ü \" {{");
        assert_eq!(read.detail_field::<u64>("z"), Some(1));
        assert_eq!(read.detail_field::<String>("z"), None);
        assert_eq!(read.detail_field::<Value>("a"), Some(detail["a"].clone()));
        assert!(log.verify().unwrap().ok());
        let none = log.record(entry(2)).unwrap();
        assert!(!serde_json::to_string(&none).unwrap().contains("detail"));
        assert_eq!(none.details(), serde_json::Value::Null);
    }

    #[test]
    fn index_is_rebuilt_when_an_append_was_cut_short() {
        let (_dir, db, log) = fresh();
        log.append((0..10).map(entry).collect()).unwrap();
        // As if the process died after the log write, before the index's.
        let index = db.open_tree("audit_index").unwrap();
        index.clear().unwrap();
        let log = AuditLog::open(&db).unwrap();
        let q = Query {
            user: Some("@u1:example.org".into()),
            ..Default::default()
        };
        let seqs: Vec<u64> = log.query(&q).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 5, 8]);
        assert!(log.verify().unwrap().ok());
    }

    /// Appends one at a time (as the bot makes them) add to a value's
    /// newest posting chunk until it is full: 300 appends in one room are
    /// three keys, not 300, and a query still finds every entry in order.
    #[test]
    fn appends_fill_a_posting_chunk_before_starting_the_next() {
        let (_dir, db, log) = fresh();
        for i in 0..299 {
            log.record(entry(i)).unwrap();
        }
        // One append crossing a chunk's end fills it and starts the next.
        log.append(vec![entry(299), entry(300)]).unwrap();
        let index = db.open_tree("audit_index").unwrap();
        let chunks: Vec<(u64, usize)> = index
            .scan_prefix(index_prefix(b'r', "!r:example.org"))
            .map(|kv| kv.unwrap())
            .map(|(k, v)| (key_seq(&k), v.len() / 8))
            .collect();
        assert_eq!(chunks, [(1, 128), (129, 128), (257, 45)]);
        let q = Query {
            room: Some("!r:example.org".into()),
            limit: Some(1_000),
            ..Default::default()
        };
        let seqs: Vec<u64> = log.query(&q).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=301).collect::<Vec<u64>>());
    }

    /// An index written by an older airlock (posting lists for senders,
    /// no copies, no format) is rebuilt at open: queries by user find
    /// every entry, and nothing of the old index is left.
    #[test]
    fn an_index_of_an_older_format_is_rebuilt() {
        let (_dir, db, log) = fresh();
        log.append((0..25).map(entry).collect()).unwrap();
        let index = db.open_tree("audit_index").unwrap();
        for k in index.scan_prefix([BY_SENDER]).keys() {
            index.remove(k.unwrap()).unwrap();
        }
        index.remove(FORMAT).unwrap();
        let old = index_prefix(b'u', "@u1:example.org");
        index.insert(&old, &2u64.to_be_bytes()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        let q = Query {
            user: Some("@u1:example.org".into()),
            ..Default::default()
        };
        let seqs: Vec<u64> = log.query(&q).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 5, 8, 11, 14, 17, 20, 23]);
        assert!(index.get(&old).unwrap().is_none());
        assert!(log.verify().unwrap().ok());
    }

    /// The bot's appends, one or a few entries each, fill the log's
    /// chunks: every entry reads back by seq, in order, from any point,
    /// newest first, and the chain verifies.
    #[test]
    fn entries_are_read_back_across_chunks() {
        let (_dir, db, log) = fresh();
        for i in 0..40 {
            log.record(entry(i)).unwrap();
        }
        log.append((40..47).map(entry).collect()).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let chunks = tree.scan_prefix(CHUNK).count();
        assert!((2..=10).contains(&chunks), "{chunks} chunks");
        for seq in [1, 8, 9, 20, 47] {
            assert_eq!(log.read(seq).unwrap().unwrap().seq, seq);
        }
        assert!(log.read(48).unwrap().is_none());
        let seqs = |v: Vec<Entry>| v.iter().map(|e| e.seq).collect::<Vec<u64>>();
        assert_eq!(
            seqs(log.after(0, 100).unwrap()),
            (1..=47).collect::<Vec<_>>()
        );
        assert_eq!(seqs(log.after(19, 3).unwrap()), [20, 21, 22]);
        let newest = log
            .query(&Query {
                limit: Some(10),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(seqs(newest), (38..=47).collect::<Vec<_>>());
        let v = log.verify().unwrap();
        assert!(v.ok() && v.entries == 47, "{:?}", v.problems);
    }

    /// A log an older airlock wrote, a key per entry, is moved into
    /// chunks at open, byte for byte: it still verifies, and appends go on
    /// from its head.
    #[test]
    fn entries_stored_a_key_each_are_moved_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let mut head = Head::default();
        for i in 0..30 {
            let mut e = entry(i);
            e.seq = head.seq + 1;
            e.prev = std::mem::take(&mut head.hash);
            let mut key = OLD_ENTRY.to_vec();
            key.extend_from_slice(&e.seq.to_be_bytes());
            tree.insert(key, e.seal()).unwrap();
            head = Head {
                seq: e.seq,
                hash: e.hash,
            };
        }
        tree.insert(HEAD, serde_json::to_vec(&head).unwrap())
            .unwrap();
        let log = AuditLog::open(&db).unwrap();
        assert_eq!(tree.scan_prefix(OLD_ENTRY).count(), 0);
        let v = log.verify().unwrap();
        assert!(v.ok() && v.entries == 30, "{:?}", v.problems);
        assert_eq!(log.record(entry(30)).unwrap().seq, 31);
        let mine = log
            .query(&Query {
                user: Some("@u1:example.org".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(mine.len(), 10);
        assert!(log.verify().unwrap().ok());
    }

    /// A chunk of the log cut short is reported by `verify`, which goes
    /// on with the chunks after it.
    #[test]
    fn verify_reports_a_chunk_cut_short_and_goes_on() {
        let (_dir, db, log) = fresh();
        for i in 0..40 {
            log.record(entry(i)).unwrap();
        }
        let tree = db.open_tree("audit").unwrap();
        let (k, chunk) = tree.scan_prefix(CHUNK).next().unwrap().unwrap();
        tree.insert(k, &chunk[..chunk.len() - 1]).unwrap();
        let v = log.verify().unwrap();
        assert!(
            v.problems[0].starts_with("audit entry 1 is unreadable: the chunk of entries"),
            "{:?}",
            v.problems
        );
        assert!(
            v.problems[1].contains("does not chain to the entry before it"),
            "{:?}",
            v.problems
        );
        assert!(v.entries > 20, "{}", v.entries);
    }

    /// Take entry `seq`'s copy out of `sender`'s chunks, as someone
    /// editing the store would: its stored bytes, the chunk rewritten
    /// without it.
    fn take_copy(index: &sled::Tree, sender: &str, seq: u64) -> Vec<u8> {
        for kv in index.scan_prefix(index_prefix(BY_SENDER, sender)) {
            let (k, chunk) = kv.unwrap();
            let copies = framed_in(&chunk).unwrap();
            if let Some(i) = copies.iter().position(|(s, _)| *s == seq) {
                let mut rest = Vec::new();
                for (s, at) in copies.iter().filter(|(s, _)| *s != seq) {
                    rest.extend(framed(*s, &chunk[at.clone()]));
                }
                index.insert(k, rest).unwrap();
                return chunk[copies[i].1.clone()].to_vec();
            }
        }
        panic!("no copy of {seq} under {sender}")
    }

    /// File `bytes` as entry `seq`'s copy under `sender`, in a chunk of
    /// its own.
    fn put_copy(index: &sled::Tree, sender: &str, seq: u64, bytes: &[u8]) {
        index
            .insert(copy_key(sender, seq), framed(seq, bytes))
            .unwrap();
    }

    /// A bot's appends, one entry each, fill a sender's chunk of copies
    /// before starting the next: a few keys, not one per entry.
    #[test]
    fn copies_fill_a_chunk_before_starting_the_next() {
        let (_dir, db, log) = fresh();
        for i in 0..60 {
            log.record(entry(i * 3)).unwrap();
        }
        let index = db.open_tree("audit_index").unwrap();
        let chunks: Vec<(usize, usize, usize)> = index
            .scan_prefix(index_prefix(BY_SENDER, "@u0:example.org"))
            .map(|kv| {
                let chunk = kv.unwrap().1;
                let copies = framed_in(&chunk).unwrap();
                let last = copies.last().unwrap().1.len() + 12;
                (copies.len(), chunk.len(), last)
            })
            .collect();
        assert_eq!(chunks.iter().map(|c| c.0).sum::<usize>(), 60);
        // Filled, not overfilled: each but the newest reached the size
        // with its last copy.
        for &(_, len, last) in &chunks[..chunks.len() - 1] {
            assert!(
                len >= ENTRY_CHUNK_BYTES && len - last < ENTRY_CHUNK_BYTES,
                "{chunks:?}"
            );
        }
        let total: usize = chunks.iter().map(|c| c.1).sum();
        assert!(chunks.len() <= total / ENTRY_CHUNK_BYTES + 1, "{chunks:?}");
        assert!(log.verify().unwrap().ok());
    }

    /// Queries by user read the copies, so `verify` checks them too: a
    /// copy rewritten with a consistent hash, one filed under another
    /// user, one removed and a chunk cut short are each reported.
    #[test]
    fn verify_catches_a_copy_that_differs_from_the_log() {
        let (_dir, db, log) = fresh();
        log.append((0..9).map(entry).collect()).unwrap();
        assert!(log.verify().unwrap().ok());
        let index = db.open_tree("audit_index").unwrap();

        let mut e = parse(5, &take_copy(&index, "@u1:example.org", 5)).unwrap();
        e.detail = Detail::new(&serde_json::json!({"command": "something else"}));
        put_copy(&index, "@u1:example.org", 5, &e.seal());
        let seen = log
            .query(&Query {
                user: Some("@u1:example.org".into()),
                ..Default::default()
            })
            .unwrap();
        let altered = seen.iter().find(|e| e.seq == 5).unwrap();
        assert_eq!(altered.details()["command"], "something else");
        let v = log.verify().unwrap();
        assert_eq!(
            v.problems,
            vec![
                "the copy of entry 5 that queries by user read differs from the log (altered or misfiled)",
            ]
        );

        take_copy(&index, "@u1:example.org", 5);
        let moved = take_copy(&index, "@u2:example.org", 6);
        put_copy(&index, "@u0:example.org", 6, &moved);
        let v = log.verify().unwrap();
        assert_eq!(
            v.problems,
            vec![
                "the copy of entry 6 that queries by user read differs from the log (altered or misfiled)",
                "1 entry has no copy for queries by user (it would not show)",
            ]
        );

        let (k, chunk) = index
            .scan_prefix(index_prefix(BY_SENDER, "@u2:example.org"))
            .next()
            .unwrap()
            .unwrap();
        index.insert(k, &chunk[..chunk.len() - 1]).unwrap();
        let q = Query {
            user: Some("@u2:example.org".into()),
            ..Default::default()
        };
        let err = log.query(&q).unwrap_err().to_string();
        assert!(err.contains("is cut or altered"), "{err}");
        let v = log.verify().unwrap();
        assert!(
            v.problems.iter().any(|p| p.contains("is cut or altered")),
            "{:?}",
            v.problems
        );
    }

    /// Past a few thousand matches entries are read in a pipeline on two
    /// threads: every match comes back once, in order, and limits and
    /// `since` still cut at the newest.
    #[test]
    fn large_queries_read_on_two_threads_miss_and_reorder_nothing() {
        let (_dir, _db, log) = fresh();
        for start in (0..30_000).step_by(1000) {
            log.append((start..start + 1000).map(entry).collect())
                .unwrap();
        }
        let q = Query {
            user: Some("@u1:example.org".into()),
            ..Default::default()
        };
        let seqs: Vec<u64> = log.query(&q).unwrap().iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (0..30_000).filter(|i| i % 3 == 1).map(|i| i + 1).collect();
        assert_eq!(seqs, want);
        let newest = log
            .query(&Query {
                limit: Some(5_000),
                ..q.clone()
            })
            .unwrap();
        assert_eq!(newest.len(), 5_000);
        assert_eq!(newest.first().unwrap().seq, want[want.len() - 5_000]);
        assert_eq!(newest.last().unwrap().seq, 30_000 - 1);
        let since = log
            .query(&Query {
                since: Some(1_700_000_000_000 + 25_000),
                ..q
            })
            .unwrap();
        assert!(since.iter().all(|e| e.ts >= 1_700_000_000_000 + 25_000));
        assert_eq!(since.len(), want.iter().filter(|s| **s > 25_000).count());
    }

    #[test]
    fn queries_return_the_newest_matches_oldest_first() {
        let (_dir, _db, log) = fresh();
        for i in 0..30 {
            log.record(entry(i)).unwrap();
        }
        log.append((30..60).map(entry).collect()).unwrap();
        let q = Query {
            user: Some("@u0:example.org".into()),
            limit: Some(4),
            ..Default::default()
        };
        let seqs: Vec<u64> = log.query(&q).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![49, 52, 55, 58]);
        assert_eq!(log.len(), 60);
    }
}
