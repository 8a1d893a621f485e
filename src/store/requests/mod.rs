//! The requests' store in sled: each record under its id, the open ones
//! indexed oldest first, the prompts that answer for them; and, once a
//! closed request is older than `requests.keep`, its removal (the audit
//! log keeps its history).

mod ids;

use serde::{Deserialize, Serialize};

use crate::store::kv::{self, Batch, Db, Tree};

pub use crate::core::request::*;
pub use crate::store::kv::Watch;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("request storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored request does not parse.
    #[error("request {0} is unreadable: {1}")]
    Corrupt(String, String),
    /// No such request.
    #[error("no request {0}")]
    NotFound(String),
    /// Every id has been given (2³⁰ requests).
    #[error("every request id has been given")]
    NoIds,
}

/// The outcome of a transition attempt.
pub enum Update<T> {
    /// The closure accepted; the record now holds the new value.
    Done(Request, T),
    /// The closure refused; nothing was written.
    Refused(Request, Refusal),
}

/// Writes are not flushed here: every transition is followed by its audit
/// entry, whose flush makes both durable (one fsync, not two).
#[derive(Clone)]
pub struct Requests {
    requests: Tree,
    prompts: Tree,
    /// Tree `open_requests`, written in the same transaction as the
    /// records: the open requests' keys, oldest first ([`open_key`]);
    /// the closed ones' by when they closed ([`closed_key`]); the id
    /// counter ([`IDS`]); and the format marks. The bot asks for open
    /// requests on every tick, and for those closed long enough to go:
    /// scanning every request ever made grew its time and memory with the
    /// store's age (each scan pulled the whole tree into sled's cache).
    index: Tree,
    /// Ids given before ids were numbered, of requests still in or since
    /// gone from the store: never given again (fixed at the upgrade).
    retired: Tree,
    /// The locks runs hold and the requests waiting for them.
    locks: std::sync::Arc<crate::locks::Locks>,
}

/// The id counter in the index tree.
const IDS: &[u8] = b"ids";

/// The next id's number, and the key that turns numbers into ids.
#[derive(Serialize, Deserialize)]
struct Ids {
    key: u64,
    next: u64,
}

/// `c` + when it closed (big-endian) + id.
fn closed_key(req: &Request) -> Vec<u8> {
    let mut k = Vec::with_capacity(OPEN_ID_AT + req.id.len());
    k.push(b'c');
    k.extend_from_slice(&req.finished_ms.unwrap_or(req.created_ms).to_be_bytes());
    k.extend_from_slice(req.id.as_bytes());
    k
}

/// Its key in the index: open or closed.
fn index_key(req: &Request) -> Vec<u8> {
    if req.state.is_open() {
        open_key(req)
    } else {
        closed_key(req)
    }
}

fn prompt_key(room: &str, event_id: &str) -> Vec<u8> {
    let mut k = room.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

/// `o` + creation time (big-endian, so keys sort oldest first) + id.
fn open_key(req: &Request) -> Vec<u8> {
    let mut k = Vec::with_capacity(OPEN_ID_AT + req.id.len());
    k.push(b'o');
    k.extend_from_slice(&req.created_ms.to_be_bytes());
    k.extend_from_slice(req.id.as_bytes());
    k
}

/// Where the id starts in an [`open_key`] or a [`closed_key`].
const OPEN_ID_AT: usize = 1 + 8;

/// Present once the index covers every stored open request: a store
/// written before it existed is indexed once, on open.
const OPEN_INDEXED: &[u8] = b"format";

fn parse(id: &str, bytes: &[u8]) -> Result<Request, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))
}

/// A transaction's outcome as the store's error.
fn settled<A>(r: sled::transaction::TransactionResult<A, StoreError>) -> Result<A, StoreError> {
    r.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => StoreError::Storage(e),
    })
}

impl Requests {
    /// Wakes its holder when request `id` is written (sled's
    /// subscription): what waits for an answer waits for a write, not a
    /// timer.
    pub fn watch(&self, id: &str) -> Watch {
        // Ids are all six characters: the prefix is the key.
        self.requests.watch_prefix(id.as_bytes())
    }

    /// Write request `id` again, unchanged: wakes whoever [watches](Self::watch) it.
    pub fn touch(&self, id: &str) -> Result<(), StoreError> {
        if let Some(bytes) = self.requests.get(id.as_bytes())? {
            self.requests.insert(id.as_bytes(), bytes)?;
        }
        Ok(())
    }

    /// The locks runs hold and the requests waiting for them, kept
    /// beside the requests.
    pub fn locks(&self) -> &crate::locks::Locks {
        &self.locks
    }

    /// The store in `db`.
    pub fn open(db: &Db) -> Result<Self, StoreError> {
        let store = Requests {
            requests: db.open_tree("requests")?,
            prompts: db.open_tree("prompts")?,
            index: db.open_tree("open_requests")?,
            retired: db.open_tree("retired_ids")?,
            locks: std::sync::Arc::new(crate::locks::Locks::open(db)?),
        };
        // A store from before numbered ids (or before the open index): its
        // requests are indexed open or closed, and their ids retired, in
        // one pass, once.
        if store.index.get(IDS)?.is_none() {
            let mut batch = Batch::default();
            let mut retired = Batch::default();
            for item in store.requests.iter() {
                let (id, bytes) = item?;
                let req = parse(&String::from_utf8_lossy(&id), &bytes)?;
                batch.insert(index_key(&req), &[]);
                retired.insert(id, &[]);
            }
            store.retired.apply_batch(retired)?;
            store.retired.flush()?;
            let ids = Ids {
                key: ids::new_key(crate::wall::now_ms()),
                next: 0,
            };
            batch.insert(OPEN_INDEXED, &[]);
            batch.insert(IDS, serde_json::to_vec(&ids).expect("ids serialize"));
            store.index.apply_batch(batch)?;
        }
        Ok(store)
    }

    /// Store a new request under the next id.
    pub fn create(&self, mut req: Request) -> Result<Request, StoreError> {
        use sled::transaction::abort;
        loop {
            // `retired` joins the transaction only to be read: sled blocks
            // a plain read of any tree while a transaction runs.
            let created = settled(kv::transaction(
                &[&self.requests, &self.index, &self.retired],
                |t| {
                    let (requests, index, retired) = (&t[0], &t[1], &t[2]);
                    let Some(Ok(mut ids)) =
                        index.get(IDS)?.map(|b| serde_json::from_slice::<Ids>(&b))
                    else {
                        return abort(StoreError::Corrupt(
                            "(id counter)".into(),
                            "unreadable".into(),
                        ));
                    };
                    let Some(id) = ids::nth(ids.next, ids.key) else {
                        return abort(StoreError::NoIds);
                    };
                    ids.next += 1;
                    index.insert(IDS, serde_json::to_vec(&ids).expect("ids serialize"))?;
                    // Taken before ids were numbered: skipped for good.
                    if retired.get(id.as_bytes())?.is_some()
                        || requests.get(id.as_bytes())?.is_some()
                    {
                        return Ok(None);
                    }
                    let mut req = req.clone();
                    req.id = id;
                    let bytes = serde_json::to_vec(&req).expect("request serializes");
                    requests.insert(req.id.as_bytes(), bytes)?;
                    index.insert(index_key(&req), &[])?;
                    Ok(Some(req))
                },
            ))?;
            if let Some(created) = created {
                req = created;
                return Ok(req);
            }
        }
    }

    /// Remove the requests closed before `before` (ms), with their
    /// prompts, but a break-glass run nobody has reviewed yet; returns
    /// their ids. The audit log keeps their whole history, and answers
    /// for them from then on (`!status`, `airlock audit --request`).
    pub fn prune(&self, before: u64) -> Result<Vec<String>, StoreError> {
        let mut end = vec![b'c'];
        end.extend_from_slice(&before.to_be_bytes());
        let mut gone = Vec::new();
        for key in self.index.range(b"c".to_vec()..end).keys() {
            let key = key?;
            let id = String::from_utf8_lossy(&key[OPEN_ID_AT.min(key.len())..]).into_owned();
            let removed = settled(kv::transaction(
                &[&self.requests, &self.index, &self.prompts],
                |t| {
                    let (requests, index, prompts) = (&t[0], &t[1], &t[2]);
                    let Some(bytes) = requests.get(id.as_bytes())? else {
                        index.remove(&key)?;
                        return Ok(false);
                    };
                    // An unreadable record stays for someone to look at.
                    let Ok(req) = parse(&id, &bytes) else {
                        return Ok(false);
                    };
                    let unreviewed = req
                        .break_glass
                        .as_ref()
                        .is_some_and(|b| b.reviewed_by.is_none());
                    if unreviewed || index_key(&req) != key.as_ref() {
                        return Ok(false);
                    }
                    requests.remove(id.as_bytes())?;
                    index.remove(&key)?;
                    if let Some(p) = &req.prompt_event {
                        prompts.remove(prompt_key(&req.room, p))?;
                    }
                    Ok(true)
                },
            ))?;
            if removed {
                gone.push(id);
            }
        }
        Ok(gone)
    }

    /// Make every change so far durable (most ride on the audit log's
    /// flush instead).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.requests.flush()?;
        Ok(())
    }

    /// Request `id`.
    pub fn get(&self, id: &str) -> Result<Option<Request>, StoreError> {
        match self.requests.get(id.as_bytes())? {
            None => Ok(None),
            Some(b) => parse(id, &b).map(Some),
        }
    }

    /// Apply `f` to the stored request atomically: sled re-runs the
    /// transaction when another writer got there first, so `f` always sees
    /// the latest state. A request leaving the open states leaves the open
    /// index in the same write.
    pub fn update<T>(
        &self,
        id: &str,
        f: impl FnMut(&mut Request) -> Result<T, Refusal>,
    ) -> Result<Update<T>, StoreError> {
        use sled::transaction::abort;
        // sled's transactions take `Fn`; a retry calls `f` again.
        let f = std::cell::RefCell::new(f);
        settled(kv::transaction(&[&self.requests, &self.index], |t| {
            let (requests, index) = (&t[0], &t[1]);
            let Some(old_bytes) = requests.get(id.as_bytes())? else {
                return abort(StoreError::NotFound(id.to_string()));
            };
            let old = match parse(id, &old_bytes) {
                Ok(old) => old,
                Err(e) => return abort(e),
            };
            let mut new = old.clone();
            match (f.borrow_mut())(&mut new) {
                Err(reason) => Ok(Update::Refused(old, reason)),
                Ok(out) => {
                    let bytes = serde_json::to_vec(&new).expect("request serializes");
                    requests.insert(id.as_bytes(), bytes)?;
                    // The index entry follows from the record (`prepared`
                    // restarts `created_ms`): rewrite it only if it changed.
                    let (was, is) = (index_key(&old), index_key(&new));
                    if was != is {
                        index.remove(was)?;
                        index.insert(is, &[])?;
                    }
                    Ok(Update::Done(new, out))
                }
            }
        }))
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

    /// The request whose prompt is `event_id` in `room`.
    pub fn by_prompt(&self, room: &str, event_id: &str) -> Result<Option<Request>, StoreError> {
        match self.prompts.get(prompt_key(room, event_id))? {
            None => Ok(None),
            Some(id) => self.get(&String::from_utf8_lossy(&id)),
        }
    }

    /// Requests still open (preparing, pending, approved, running), oldest
    /// first. Reads only the open ones, however many closed ones the store
    /// holds.
    pub fn open_requests(&self) -> Result<Vec<Request>, StoreError> {
        let mut v = Vec::new();
        for key in self.index.scan_prefix(b"o").keys() {
            let key = key?;
            let id = String::from_utf8_lossy(&key[OPEN_ID_AT..]);
            // The index and the records are written in one transaction;
            // an entry whose request is gone or closed (a store edited
            // behind our back) only names nothing to do.
            if let Some(r) = self.get(&id)?.filter(|r| r.state.is_open()) {
                v.push(r);
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alias::Params;
    use crate::core::request::Prepared;
    use crate::core::request::tests::request;

    /// The store on each backend: every case below is the contract both keep.
    fn stores() -> Vec<(Option<tempfile::TempDir>, Db, Requests)> {
        kv::tests::backends()
            .into_iter()
            .map(|(dir, db)| {
                let requests = Requests::open(&db).unwrap();
                (dir, db, requests)
            })
            .collect()
    }

    fn stored(requests: &Requests, created_ms: u64) -> Request {
        requests
            .create({
                let mut r = request(1);
                r.created_ms = created_ms;
                r
            })
            .unwrap()
    }

    fn ids(v: &[Request]) -> Vec<&str> {
        v.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn open_requests_are_the_open_ones_oldest_first_however_many_closed() {
        for (_dir, _db, requests) in stores() {
            let late = stored(&requests, 3_000);
            let early = stored(&requests, 1_000);
            let closed: Vec<Request> = (0..50).map(|i| stored(&requests, 2_000 + i)).collect();
            for r in &closed {
                let Update::Done(r, ()) = requests
                    .update(&r.id, |r| r.unprepared("no such commit", 4_000))
                    .unwrap()
                else {
                    panic!("a preparing request fails");
                };
                assert_eq!(r.state, State::Failed);
            }
            // Closing takes a request out of the index, not just out of the
            // answer: the ticks read two entries, not fifty-two.
            assert_eq!(requests.index.scan_prefix(b"o").count(), 2);
            assert_eq!(
                ids(&requests.open_requests().unwrap()),
                [early.id.as_str(), late.id.as_str()]
            );
            // Open to open keeps it listed, with its new state; a refused
            // transition changes nothing.
            requests
                .update(&late.id, |r| {
                    r.prepared(Prepared::plain(Params::new()), 5_000)
                })
                .unwrap();
            assert!(matches!(
                requests.update(&late.id, |r| r.start(5_001)).unwrap(),
                Update::Refused(_, Refusal::State(State::Pending))
            ));
            let open = requests.open_requests().unwrap();
            assert_eq!(ids(&open), [early.id.as_str(), late.id.as_str()]);
            assert_eq!(open[1].state, State::Pending);
            requests.update(&late.id, |r| r.expire(700_000)).unwrap();
            assert_eq!(ids(&requests.open_requests().unwrap()), [early.id.as_str()]);
        }
    }

    #[test]
    fn a_store_from_before_the_open_index_is_indexed_once_on_open() {
        for (_dir, db, requests) in stores() {
            let open = stored(&requests, 2_000);
            let closed = stored(&requests, 1_000);
            requests
                .update(&closed.id, |r| r.unprepared("gone", 3_000))
                .unwrap();
            // As an older airlock left it: records only, no index.
            drop(requests);
            db.drop_tree("open_requests").unwrap();
            let requests = Requests::open(&db).unwrap();
            assert_eq!(ids(&requests.open_requests().unwrap()), [open.id.as_str()]);
            assert_eq!(
                requests.get(&closed.id).unwrap().unwrap().state,
                State::Failed
            );
        }
    }

    fn closed_at(requests: &Requests, created_ms: u64, closed_ms: u64) -> Request {
        let r = stored(requests, created_ms);
        match requests
            .update(&r.id, |r| r.unprepared("no such commit", closed_ms))
            .unwrap()
        {
            Update::Done(r, ()) => r,
            Update::Refused(..) => panic!("a preparing request fails"),
        }
    }

    #[test]
    fn closed_requests_leave_after_their_time_but_an_unreviewed_break_glass() {
        for (_dir, _db, requests) in stores() {
            let old = closed_at(&requests, 1_000, 2_000);
            requests.bind_prompt(&old.id, "!ops", "$prompt").unwrap();
            let recent = closed_at(&requests, 1_000, 9_000);
            let open = stored(&requests, 1_000);
            let glass = stored(&requests, 1_000);
            requests
                .update(&glass.id, |r| {
                    r.break_glass = Some(BreakGlass {
                        reason: "prod down".into(),
                        reviewed_by: None,
                        reviewed_ms: None,
                    });
                    r.unprepared("failed", 3_000)
                })
                .unwrap();
            assert_eq!(requests.prune(5_000).unwrap(), vec![old.id.clone()]);
            assert_eq!(requests.get(&old.id).unwrap(), None);
            assert_eq!(requests.by_prompt("!ops", "$prompt").unwrap(), None);
            for kept in [&recent, &open, &glass] {
                assert!(requests.get(&kept.id).unwrap().is_some(), "{}", kept.id);
            }
            // Reviewed, the break-glass run goes too; nothing else is due.
            requests
                .update(&glass.id, |r| r.review("@bob:x", 6_000))
                .unwrap();
            assert_eq!(requests.prune(5_000).unwrap(), vec![glass.id.clone()]);
            assert!(requests.prune(5_000).unwrap().is_empty());
            assert_eq!(ids(&requests.open_requests().unwrap()), [open.id.as_str()]);
            assert_eq!(requests.prune(10_000).unwrap(), vec![recent.id.clone()]);
        }
    }

    #[test]
    fn an_id_is_never_given_twice_even_after_its_request_left() {
        for (_dir, db, requests) in stores() {
            let mut seen = std::collections::HashSet::new();
            for round in 0..3 {
                for i in 0..200 {
                    let r = closed_at(&requests, round * 1_000 + i, round * 1_000 + i + 1);
                    assert!(seen.insert(r.id.clone()), "{} given twice", r.id);
                }
                requests.prune(u64::MAX).unwrap();
            }
            // Ids given before ids were numbered are retired at the upgrade,
            // and skipped when the counter reaches them.
            let key: Ids =
                serde_json::from_slice(&requests.index.get(IDS).unwrap().unwrap()).unwrap();
            let next = ids::nth(key.next, key.key).unwrap();
            requests.retired.insert(next.as_bytes(), &[]).unwrap();
            assert_ne!(stored(&requests, 9).id, next);
            drop(requests);
            let mut legacy = request(1);
            legacy.id = "legacy".into();
            db.open_tree("requests")
                .unwrap()
                .insert("legacy", serde_json::to_vec(&legacy).unwrap())
                .unwrap();
            db.open_tree("open_requests").unwrap().remove(IDS).unwrap();
            let requests = Requests::open(&db).unwrap();
            assert!(requests.retired.contains_key("legacy").unwrap());
            assert_eq!(ids(&requests.open_requests().unwrap()).len(), 2);
        }
    }
}
