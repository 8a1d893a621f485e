//! The requests' store in sled: each record under its id, the open ones
//! indexed oldest first, the prompts that answer for them; and, once a
//! closed request is older than `requests.keep`, its removal (the audit
//! log keeps its history).

mod request;

pub use request::*;

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
    requests: sled::Tree,
    prompts: sled::Tree,
    /// The open requests' keys, oldest first ([`open_key`]), written in the
    /// same transaction as the record. The bot asks for open requests on
    /// every tick; scanning every request ever made grew its time and
    /// memory with the store's age (each scan pulled the whole tree into
    /// sled's cache).
    open: sled::Tree,
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

/// Where the id starts in an [`open_key`].
const OPEN_ID_AT: usize = 1 + 8;

/// Present once the `open` tree covers every stored request: a store
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
    /// The store in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let store = Requests {
            requests: db.open_tree("requests")?,
            prompts: db.open_tree("prompts")?,
            open: db.open_tree("open_requests")?,
        };
        if store.open.get(OPEN_INDEXED)?.is_none() {
            let mut batch = sled::Batch::default();
            for item in store.requests.iter() {
                let (id, bytes) = item?;
                let req = parse(&String::from_utf8_lossy(&id), &bytes)?;
                if req.state.is_open() {
                    batch.insert(open_key(&req), &[]);
                }
            }
            batch.insert(OPEN_INDEXED, &[]);
            store.open.apply_batch(batch)?;
        }
        Ok(store)
    }

    /// Store a new request under a fresh short id.
    pub fn create(&self, mut req: Request) -> Result<Request, StoreError> {
        use sled::Transactional;
        loop {
            req.id = short_id();
            let bytes = serde_json::to_vec(&req).expect("request serializes");
            let created = settled(
                (&self.requests, &self.open).transaction(|(requests, open)| {
                    if requests.get(req.id.as_bytes())?.is_some() {
                        return Ok(false);
                    }
                    requests.insert(req.id.as_bytes(), bytes.as_slice())?;
                    if req.state.is_open() {
                        open.insert(open_key(&req), &[])?;
                    }
                    Ok(true)
                }),
            )?;
            if created {
                return Ok(req);
            }
        }
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
        use sled::Transactional;
        use sled::transaction::abort;
        // sled's transactions take `Fn`; a retry calls `f` again.
        let f = std::cell::RefCell::new(f);
        settled(
            (&self.requests, &self.open).transaction(|(requests, open)| {
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
                        let was = old.state.is_open().then(|| open_key(&old));
                        let is = new.state.is_open().then(|| open_key(&new));
                        if was != is {
                            if let Some(key) = was {
                                open.remove(key)?;
                            }
                            if let Some(key) = is {
                                open.insert(key, &[])?;
                            }
                        }
                        Ok(Update::Done(new, out))
                    }
                }
            }),
        )
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
        for key in self.open.scan_prefix(b"o").keys() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Prepared;
    use crate::alias::Params;
    use request::tests::request;

    fn store() -> (tempfile::TempDir, sled::Db, Requests) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let requests = Requests::open(&db).unwrap();
        (dir, db, requests)
    }

    fn stored(requests: &Requests, created_ms: u64) -> Request {
        requests
            .create(Request {
                created_ms,
                ..request(1)
            })
            .unwrap()
    }

    fn ids(v: &[Request]) -> Vec<&str> {
        v.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn open_requests_are_the_open_ones_oldest_first_however_many_closed() {
        let (_dir, _db, requests) = store();
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
        assert_eq!(requests.open.scan_prefix(b"o").count(), 2);
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

    #[test]
    fn a_store_from_before_the_open_index_is_indexed_once_on_open() {
        let (_dir, db, requests) = store();
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
