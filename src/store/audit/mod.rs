//! The audit log: append-only, hash-chained, in sled.
//!
//! Each entry carries a sequence number, a timestamp, the room, sender and
//! request it concerns, and the SHA-256 of the previous entry; its own hash
//! covers all of that. `verify` walks the chain: an altered entry breaks its
//! hash, a removed one leaves a gap or a broken link, a truncated tail no
//! longer matches the head record. Secondary indexes (by alias, action,
//! room, request, status) and a copy of each entry filed by its sender
//! keep queries from scanning the log.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::clock;
use crate::requests::State;

mod archive;
mod chunks;
mod epoch;
mod event;
mod log;
mod parallel;
mod proof;

pub use archive::Manifest;
pub use epoch::edit_stored;
pub use event::{Event, Status};
pub use log::{AuditLog, SealPolicy};
pub use proof::Proof;

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

    /// The details as a `T` naming the fields it needs, read in one pass:
    /// the others (a result with a megabyte of output) are skipped, not
    /// built. None when there are none or they are not of that shape.
    pub fn detail_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.detail.0.as_ref()?.get()).ok()
    }

    /// The packs a run put in place, as its `finished` entry says
    /// (detail `deployed`: `[{pack, commit}]`).
    pub fn deployed_packs(&self) -> Vec<String> {
        #[derive(Deserialize)]
        struct Pack {
            pack: String,
        }
        if self.event != Event::Finished {
            return Vec::new();
        }
        self.detail_field::<Vec<Pack>>("deployed")
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.pack)
            .collect()
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
    /// In any of these rooms (a viewer's).
    pub rooms: Option<Vec<String>>,
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
    /// That put this pack in place (a `finished` entry's `deployed`).
    pub deployed: Option<String>,
    /// Lower bound on the timestamp, in ms.
    pub since: Option<u64>,
    /// Only entries numbered below this one: the next page of a search
    /// (the oldest entry shown so far).
    pub before: Option<u64>,
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
            && self
                .rooms
                .as_ref()
                .is_none_or(|rs| e.room.as_ref().is_some_and(|r| rs.contains(r)))
            && eq(&self.alias, &e.alias)
            && eq(&self.action, &e.action)
            && eq(&self.request, &e.request)
            && self.event.as_ref().is_none_or(|v| e.event.name() == v)
            && self.status.as_ref().is_none_or(|s| {
                e.status.map(Status::name) == Some(s.as_str()) || e.event.name() == s
            })
            && self.since.is_none_or(|t| e.ts >= t)
            && self.before.is_none_or(|b| e.seq < b)
            && self
                .deployed
                .as_ref()
                .is_none_or(|p| e.deployed_packs().contains(p))
    }
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
    /// A sealed segment cannot be read or written.
    #[error("audit archive: {0}")]
    Archive(String),
}

/// Head of the chain: last sequence number and its hash.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
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
        Ok(export_events(text)?
            .iter()
            .filter_map(|e| Checkpoint::from_event(e, bot))
            .collect())
    }
}

/// Every JSON object in an export of a room (one JSON document, or JSON
/// lines), at any depth: the events among them.
fn export_events(text: &str) -> Result<Vec<Value>, String> {
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
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(m) => {
                if m.contains_key("content") && m.contains_key("sender") {
                    out.push(v.clone());
                } else {
                    m.values().for_each(|i| walk(i, out));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    docs.iter().for_each(|d| walk(d, &mut out));
    Ok(out)
}

/// A seal as the audit room holds it: what a segment and its manifest
/// were when sealed. A segment rewritten on this machine together with
/// its manifest still differs from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The segment's file name.
    pub segment: String,
    /// Its first entry.
    pub first: u64,
    /// Its last.
    pub last: u64,
    /// The last entry's hash.
    pub last_hash: String,
    /// Its Merkle root.
    pub root: String,
    /// The file's SHA-256.
    pub file_sha256: String,
    /// The manifest's SHA-256.
    pub manifest: String,
}

impl Seal {
    /// The field of a seal message's content that carries it.
    pub const FIELD: &'static str = "org.airlock.seal";

    /// The seal an event carries, if `bot` sent it with the field.
    pub fn from_event(event: &Value, bot: &str) -> Option<Seal> {
        if event.get("sender").and_then(Value::as_str) != Some(bot) {
            return None;
        }
        serde_json::from_value(event.get("content")?.get(Self::FIELD)?.clone()).ok()
    }

    /// Every seal `bot` sent among the events of an export of the room.
    pub fn from_export(text: &str, bot: &str) -> Result<Vec<Seal>, String> {
        Ok(export_events(text)?
            .iter()
            .filter_map(|e| Seal::from_event(e, bot))
            .collect())
    }
}

/// Where a walk of the chain stands: the entry it expects next and the
/// hash that entry must chain to (across epochs and segments alike).
#[derive(Debug)]
pub(crate) struct Walk {
    expected_seq: u64,
    prev_hash: String,
    /// The last thing read was unreadable: no gap to report after it.
    resync: bool,
}

impl Default for Walk {
    fn default() -> Self {
        Walk {
            expected_seq: 1,
            prev_hash: String::new(),
            resync: false,
        }
    }
}

impl Walk {
    /// Check entry `e`, stored as entry `seq`, and move past it.
    fn step(&mut self, seq: u64, e: &Entry, v: &mut Verification) {
        let after_unreadable = std::mem::take(&mut self.resync);
        if seq != self.expected_seq && !after_unreadable {
            v.problems.push(format!(
                "entries {}..{} are missing",
                self.expected_seq,
                seq.saturating_sub(1)
            ));
        }
        if e.seq != seq {
            v.problems
                .push(format!("entry stored at {seq} says it is {}", e.seq));
        }
        if e.prev != self.prev_hash {
            v.problems.push(format!(
                "entry {seq}: does not chain to the entry before it"
            ));
        }
        if e.compute_hash() != e.hash {
            v.problems.push(format!(
                "entry {seq}: content does not match its hash (altered)"
            ));
        }
        self.prev_hash = e.hash.clone();
        self.expected_seq = seq + 1;
        v.entries += 1;
    }

    /// Go on after entries checked elsewhere (a segment), ending at `last`
    /// with hash `hash`.
    fn skip_to(&mut self, last: u64, hash: &str) {
        self.expected_seq = last + 1;
        self.prev_hash = hash.to_string();
        self.resync = false;
    }
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
    /// Ranges deleted under `audit.retention`, as their `pruned` entries
    /// say (not problems).
    pub pruned: Vec<String>,
}

impl Verification {
    /// Whether the chain is intact.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::chunks::*;
    use super::epoch::*;
    use super::*;

    /// An empty log on each backend (the directory lives as long as the
    /// first value): every case below is the contract both keep.
    fn fresh() -> Vec<(Option<tempfile::TempDir>, crate::store::kv::Db, AuditLog)> {
        crate::store::kv::tests::backends()
            .into_iter()
            .map(|(dir, db)| {
                let log = AuditLog::open(&db).unwrap();
                (dir, db, log)
            })
            .collect()
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
        for (_dir, _db, log) in fresh() {
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
    }

    #[test]
    fn index_is_rebuilt_when_an_append_was_cut_short() {
        for (_dir, db, log) in fresh() {
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
    }

    /// Appends one at a time (as the bot makes them) add to a value's
    /// newest posting chunk until it is full: 300 appends in one room are
    /// three keys, not 300, and a query still finds every entry in order.
    #[test]
    fn appends_fill_a_posting_chunk_before_starting_the_next() {
        for (_dir, db, log) in fresh() {
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
    }

    /// An index written by an older airlock (posting lists for senders,
    /// no copies, no format) is rebuilt at open: queries by user find
    /// every entry, and nothing of the old index is left.
    #[test]
    fn an_index_of_an_older_format_is_rebuilt() {
        for (_dir, db, log) in fresh() {
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
    }

    /// The bot's appends, one or a few entries each, fill the log's
    /// chunks: every entry reads back by seq, in order, from any point,
    /// newest first, and the chain verifies.
    #[test]
    fn entries_are_read_back_across_chunks() {
        for (_dir, db, log) in fresh() {
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
    }

    /// A log an older airlock wrote, a key per entry, is moved into
    /// chunks at open, byte for byte: it still verifies, and appends go on
    /// from its head.
    #[test]
    fn entries_stored_a_key_each_are_moved_into_chunks() {
        for (_dir, db) in crate::store::kv::tests::backends() {
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
    }

    /// A chunk of the log cut short is reported by `verify`, which goes
    /// on with the chunks after it.
    #[test]
    fn verify_reports_a_chunk_cut_short_and_goes_on() {
        for (_dir, db, log) in fresh() {
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
    }

    /// Take entry `seq`'s copy out of `sender`'s chunks, as someone
    /// editing the store would: its stored bytes, the chunk rewritten
    /// without it.
    fn take_copy(index: &crate::store::kv::Tree, sender: &str, seq: u64) -> Vec<u8> {
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
    fn put_copy(index: &crate::store::kv::Tree, sender: &str, seq: u64, bytes: &[u8]) {
        index
            .insert(copy_key(sender, seq), framed(seq, bytes))
            .unwrap();
    }

    /// A bot's appends, one entry each, fill a sender's chunk of copies
    /// before starting the next: a few keys, not one per entry.
    #[test]
    fn copies_fill_a_chunk_before_starting_the_next() {
        for (_dir, db, log) in fresh() {
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
    }

    /// Queries by user read the copies, so `verify` checks them too: a
    /// copy rewritten with a consistent hash, one filed under another
    /// user, one removed and a chunk cut short are each reported.
    #[test]
    fn verify_catches_a_copy_that_differs_from_the_log() {
        for (_dir, db, log) in fresh() {
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
    }

    /// Past a few thousand matches entries are read in a pipeline on two
    /// threads: every match comes back once, in order, and limits and
    /// `since` still cut at the newest.
    #[test]
    fn large_queries_read_on_two_threads_miss_and_reorder_nothing() {
        for (_dir, _db, log) in fresh() {
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
    }

    #[test]
    fn queries_return_the_newest_matches_oldest_first() {
        for (_dir, _db, log) in fresh() {
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
}
