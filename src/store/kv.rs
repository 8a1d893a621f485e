//! The ordered key-value trees every store is written against: sled's on
//! disk, or maps in memory. The stores (requests, locks, pack records, the
//! unsealed audit log) keep their logic once, above this layer; the
//! in-memory backend lets the engine's tests run without a disk, and the
//! stores' contract tests run the same cases on both backends.
//!
//! The surface is the part of sled's API the stores use, with sled's own
//! value, error and transaction-result types, so a store reads as it did
//! on sled. This is also the one place that would change for another
//! backend (the bounded-store issue's options (a) and (c)).

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use sled::transaction::{
    ConflictableTransactionResult, TransactionError, TransactionResult, Transactional,
    UnabortableTransactionError,
};

/// A stored key or value (sled's reference-counted bytes, on both backends).
pub type Bytes = sled::IVec;
/// A storage failure (the in-memory backend has none).
pub type Error = sled::Error;
/// A storage result.
pub type Result<T> = sled::Result<T>;

/// A database: a set of named trees.
#[derive(Clone)]
pub enum Db {
    /// sled, on disk.
    Sled(sled::Db),
    /// Maps in memory, gone with the last handle.
    Mem(Arc<MemDb>),
}

/// The in-memory database: every tree behind one lock, so a transaction
/// over several trees is one critical section.
#[derive(Default)]
pub struct MemDb {
    trees: Mutex<HashMap<Vec<u8>, BTreeMap<Bytes, Bytes>>>,
    /// Bumped on every write, for [`Watch`].
    written: Condvar,
    generation: Mutex<u64>,
}

impl MemDb {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, BTreeMap<Bytes, Bytes>>> {
        self.trees.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrote(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *g += 1;
        self.written.notify_all();
    }

    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One ordered tree of a [`Db`].
#[derive(Clone)]
pub enum Tree {
    /// A sled tree.
    Sled(sled::Tree),
    /// A tree of a [`MemDb`], by name.
    Mem(Arc<MemDb>, Arc<[u8]>),
}

/// Writes applied together ([`Tree::apply_batch`]).
#[derive(Default)]
pub struct Batch(Vec<(Bytes, Option<Bytes>)>);

impl Batch {
    /// Set `key` to `value`.
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.0.push((key.into(), Some(value.into())));
    }

    /// Remove `key`.
    pub fn remove(&mut self, key: impl Into<Bytes>) {
        self.0.push((key.into(), None));
    }
}

impl Db {
    /// A database in memory.
    pub fn memory() -> Db {
        Db::Mem(Arc::new(MemDb::default()))
    }

    /// The tree `name`, made if new.
    pub fn open_tree(&self, name: impl AsRef<[u8]>) -> Result<Tree> {
        match self {
            Db::Sled(db) => db.open_tree(name).map(Tree::Sled),
            Db::Mem(m) => {
                m.lock().entry(name.as_ref().to_vec()).or_default();
                Ok(Tree::Mem(m.clone(), name.as_ref().into()))
            }
        }
    }

    /// Remove tree `name` and what it holds.
    pub fn drop_tree(&self, name: impl AsRef<[u8]>) -> Result<bool> {
        match self {
            Db::Sled(db) => db.drop_tree(name),
            Db::Mem(m) => Ok(m.lock().remove(name.as_ref()).is_some()),
        }
    }

    /// Every tree's name.
    pub fn tree_names(&self) -> Vec<Bytes> {
        match self {
            Db::Sled(db) => db.tree_names(),
            Db::Mem(m) => m.lock().keys().map(|k| Bytes::from(k.as_slice())).collect(),
        }
    }

    /// Make every write so far durable.
    pub fn flush(&self) -> Result<usize> {
        match self {
            Db::Sled(db) => db.flush(),
            Db::Mem(_) => Ok(0),
        }
    }

    /// Bytes on disk (0 in memory).
    pub fn size_on_disk(&self) -> Result<u64> {
        match self {
            Db::Sled(db) => db.size_on_disk(),
            Db::Mem(_) => Ok(0),
        }
    }
}

/// Items of a tree, in key order, from either end.
// Short-lived on the stack; boxing sled's would add an allocation to
// every scan of the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Iter {
    /// sled's (lazy).
    Sled(sled::Iter),
    /// A copy taken under the lock.
    Mem(std::vec::IntoIter<(Bytes, Bytes)>),
}

impl Iterator for Iter {
    type Item = Result<(Bytes, Bytes)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(i) => i.next(),
            Iter::Mem(i) => i.next().map(Ok),
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(i) => i.next_back(),
            Iter::Mem(i) => i.next_back().map(Ok),
        }
    }
}

impl Iter {
    /// The keys alone.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Result<Bytes>> {
        self.map(|r| r.map(|(k, _)| k))
    }

    /// The values alone.
    pub fn values(self) -> impl DoubleEndedIterator<Item = Result<Bytes>> {
        self.map(|r| r.map(|(_, v)| v))
    }
}

/// Wakes its holder when a key under a prefix is written ([`Tree::watch_prefix`]).
pub enum Watch {
    /// sled's subscription.
    Sled(sled::Subscriber),
    /// Any write to the in-memory database wakes it (the waiter looks
    /// again, so a wake-up too many costs one read).
    Mem(Arc<MemDb>, u64),
}

impl Watch {
    /// Until the next write, or `at_most` has passed.
    pub fn wait(&mut self, at_most: Duration) {
        match self {
            Watch::Sled(s) => {
                let _ = s.next_timeout(at_most);
            }
            Watch::Mem(m, seen) => {
                let g = m.generation.lock().unwrap_or_else(|e| e.into_inner());
                let (g, _) = m
                    .written
                    .wait_timeout_while(g, at_most, |g| *g == *seen)
                    .unwrap_or_else(|e| e.into_inner());
                *seen = *g;
            }
        }
    }
}

fn bound(b: Bound<&[u8]>) -> Bound<Bytes> {
    match b {
        Bound::Included(k) => Bound::Included(Bytes::from(k)),
        Bound::Excluded(k) => Bound::Excluded(Bytes::from(k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Tree {
    /// Run `f` on this in-memory tree's map (made if it was dropped).
    fn mem<T>(m: &MemDb, name: &[u8], f: impl FnOnce(&mut BTreeMap<Bytes, Bytes>) -> T) -> T {
        f(m.lock().entry(name.to_vec()).or_default())
    }

    /// The value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        match self {
            Tree::Sled(t) => t.get(key),
            Tree::Mem(m, n) => Ok(Tree::mem(m, n, |t| t.get(key.as_ref()).cloned())),
        }
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.get(key).map(|v| v.is_some())
    }

    /// Set `key` to `value`; the value it had.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<Bytes>) -> Result<Option<Bytes>> {
        match self {
            Tree::Sled(t) => t.insert(key, value),
            Tree::Mem(m, n) => {
                let old = Tree::mem(m, n, |t| t.insert(Bytes::from(key.as_ref()), value.into()));
                m.wrote();
                Ok(old)
            }
        }
    }

    /// Remove `key`; the value it had.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        match self {
            Tree::Sled(t) => t.remove(key),
            Tree::Mem(m, n) => {
                let old = Tree::mem(m, n, |t| t.remove(key.as_ref()));
                m.wrote();
                Ok(old)
            }
        }
    }

    /// Apply `batch` atomically.
    pub fn apply_batch(&self, batch: Batch) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                let mut b = sled::Batch::default();
                for (k, v) in batch.0 {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
                t.apply_batch(b)
            }
            Tree::Mem(m, n) => {
                Tree::mem(m, n, |t| {
                    for (k, v) in batch.0 {
                        match v {
                            Some(v) => t.insert(k, v),
                            None => t.remove(&k),
                        };
                    }
                });
                m.wrote();
                Ok(())
            }
        }
    }

    /// Remove everything.
    pub fn clear(&self) -> Result<()> {
        match self {
            Tree::Sled(t) => t.clear(),
            Tree::Mem(m, n) => {
                Tree::mem(m, n, BTreeMap::clear);
                m.wrote();
                Ok(())
            }
        }
    }

    /// Make this tree's writes durable.
    pub fn flush(&self) -> Result<usize> {
        match self {
            Tree::Sled(t) => t.flush(),
            Tree::Mem(..) => Ok(0),
        }
    }

    /// How many keys (sled walks the tree to count).
    pub fn len(&self) -> usize {
        match self {
            Tree::Sled(t) => t.len(),
            Tree::Mem(m, n) => Tree::mem(m, n, |t| t.len()),
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        match self {
            Tree::Sled(t) => t.is_empty(),
            Tree::Mem(m, n) => Tree::mem(m, n, |t| t.is_empty()),
        }
    }

    /// The lowest key and its value.
    pub fn first(&self) -> Result<Option<(Bytes, Bytes)>> {
        self.iter().next().transpose()
    }

    /// The highest key and its value.
    pub fn last(&self) -> Result<Option<(Bytes, Bytes)>> {
        self.iter().next_back().transpose()
    }

    /// Everything, in key order.
    pub fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// The keys in `range`, in order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.range(range)),
            Tree::Mem(m, n) => {
                let lo = bound(range.start_bound().map(|k| k.as_ref()));
                let hi = bound(range.end_bound().map(|k| k.as_ref()));
                // BTreeMap::range panics on an inverted range; sled yields
                // nothing.
                let empty = match (&lo, &hi) {
                    (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b)) => a > b,
                    (Bound::Included(a), Bound::Excluded(b)) => a > b,
                    (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
                    _ => false,
                };
                let items: Vec<_> = if empty {
                    Vec::new()
                } else {
                    Tree::mem(m, n, |t| {
                        t.range((lo, hi))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                };
                Iter::Mem(items.into_iter())
            }
        }
    }

    /// The keys that start with `prefix`, in order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.scan_prefix(prefix)),
            Tree::Mem(m, n) => {
                let p = prefix.as_ref();
                let items: Vec<_> = Tree::mem(m, n, |t| {
                    t.range::<[u8], _>((Bound::Included(p), Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(p))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                });
                Iter::Mem(items.into_iter())
            }
        }
    }

    /// A watch on the keys under `prefix`.
    pub fn watch_prefix(&self, prefix: impl AsRef<[u8]>) -> Watch {
        match self {
            Tree::Sled(t) => Watch::Sled(t.watch_prefix(prefix)),
            Tree::Mem(m, _) => Watch::Mem(m.clone(), m.generation()),
        }
    }
}

/// One tree inside a transaction ([`transaction`]).
pub enum TxTree<'a> {
    /// sled's transactional view.
    Sled(&'a sled::transaction::TransactionalTree),
    /// The tree as it was, and the transaction's writes to it so far.
    Mem(
        &'a BTreeMap<Bytes, Bytes>,
        &'a std::cell::RefCell<BTreeMap<Bytes, Option<Bytes>>>,
    ),
}

/// A write or read inside a transaction.
pub type TxResult<T> = std::result::Result<T, UnabortableTransactionError>;

impl TxTree<'_> {
    /// The value of `key`, this transaction's writes included.
    pub fn get(&self, key: impl AsRef<[u8]>) -> TxResult<Option<Bytes>> {
        match self {
            TxTree::Sled(t) => t.get(key),
            TxTree::Mem(base, w) => Ok(match w.borrow().get(key.as_ref()) {
                Some(v) => v.clone(),
                None => base.get(key.as_ref()).cloned(),
            }),
        }
    }

    /// Set `key` to `value`.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<Bytes>) -> TxResult<()> {
        match self {
            TxTree::Sled(t) => t.insert(key.as_ref(), value.into()).map(drop),
            TxTree::Mem(_, w) => {
                w.borrow_mut()
                    .insert(Bytes::from(key.as_ref()), Some(value.into()));
                Ok(())
            }
        }
    }

    /// Remove `key`.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> TxResult<()> {
        match self {
            TxTree::Sled(t) => t.remove(key.as_ref()).map(drop),
            TxTree::Mem(_, w) => {
                w.borrow_mut().insert(Bytes::from(key.as_ref()), None);
                Ok(())
            }
        }
    }
}

/// Run `f` over `trees` as one atomic, isolated step. sled may run `f`
/// again when another writer got there first (so `f` is `Fn`); the
/// in-memory backend runs it once, holding every tree. All trees must
/// come from one database.
pub fn transaction<A, E>(
    trees: &[&Tree],
    f: impl Fn(&[TxTree<'_>]) -> ConflictableTransactionResult<A, E>,
) -> TransactionResult<A, E> {
    let mixed =
        || TransactionError::Storage(unsupported("a transaction over trees of two backends"));
    match trees.first() {
        None => Err(TransactionError::Storage(unsupported(
            "a transaction over no tree",
        ))),
        Some(Tree::Sled(_)) => {
            let sled_trees: Option<Vec<&sled::Tree>> = trees
                .iter()
                .map(|t| match t {
                    Tree::Sled(t) => Some(t),
                    Tree::Mem(..) => None,
                })
                .collect();
            let sled_trees = sled_trees.ok_or_else(mixed)?;
            sled_trees.as_slice().transaction(|view| {
                let txs: Vec<TxTree<'_>> = view.iter().map(TxTree::Sled).collect();
                f(&txs)
            })
        }
        Some(Tree::Mem(m, _)) => {
            let names: Option<Vec<&[u8]>> = trees
                .iter()
                .map(|t| match t {
                    Tree::Mem(o, n) if Arc::ptr_eq(o, m) => Some(&n[..]),
                    _ => None,
                })
                .collect();
            let names = names.ok_or_else(mixed)?;
            let mut all = m.lock();
            for n in &names {
                all.entry(n.to_vec()).or_default();
            }
            let writes: Vec<std::cell::RefCell<BTreeMap<Bytes, Option<Bytes>>>> =
                names.iter().map(|_| Default::default()).collect();
            let out = {
                let txs: Vec<TxTree<'_>> = names
                    .iter()
                    .zip(&writes)
                    .map(|(n, w)| TxTree::Mem(&all[*n], w))
                    .collect();
                f(&txs)
            };
            match out {
                Ok(a) => {
                    for (n, w) in names.iter().zip(writes) {
                        let t = all.get_mut(*n).expect("opened above");
                        for (k, v) in w.into_inner() {
                            match v {
                                Some(v) => t.insert(k, v),
                                None => t.remove(&k),
                            };
                        }
                    }
                    drop(all);
                    m.wrote();
                    Ok(a)
                }
                Err(sled::transaction::ConflictableTransactionError::Abort(e)) => {
                    Err(TransactionError::Abort(e))
                }
                Err(sled::transaction::ConflictableTransactionError::Storage(e)) => {
                    Err(TransactionError::Storage(e))
                }
                // Only sled raises a conflict (and retries it itself).
                Err(_) => Err(TransactionError::Storage(unsupported(
                    "a conflict in memory",
                ))),
            }
        }
    }
}

fn unsupported(what: &str) -> Error {
    Error::Unsupported(what.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One database of each backend: the stores' contract tests run every
    /// case on both (the directory lives as long as the database).
    pub(crate) fn backends() -> Vec<(Option<tempfile::TempDir>, Db)> {
        let dir = tempfile::tempdir().unwrap();
        let sled = sled::Config::new().path(dir.path()).open().unwrap();
        vec![(Some(dir), Db::Sled(sled)), (None, Db::memory())]
    }

    #[test]
    fn both_backends_read_ranges_prefixes_and_transactions_alike() {
        for (_dir, db) in backends() {
            let t = db.open_tree("t").unwrap();
            let u = db.open_tree("u").unwrap();
            for k in ["a1", "a2", "b1", "b2", "c"] {
                t.insert(k, k.as_bytes()).unwrap();
            }
            let keys = |i: Iter| -> Vec<String> {
                i.keys()
                    .map(|k| String::from_utf8(k.unwrap().to_vec()).unwrap())
                    .collect()
            };
            assert_eq!(keys(t.scan_prefix("b")), ["b1", "b2"]);
            assert_eq!(keys(t.range("a2".."c")), ["a2", "b1", "b2"]);
            assert_eq!(keys(t.range("c".."a")), Vec::<String>::new());
            assert_eq!(t.last().unwrap().unwrap().0, Bytes::from("c"));
            assert_eq!(t.first().unwrap().unwrap().0, Bytes::from("a1"));
            assert_eq!(t.len(), 5);
            let mut b = Batch::default();
            b.insert("d", "d");
            b.remove("a1");
            t.apply_batch(b).unwrap();
            assert_eq!(keys(t.iter()), ["a2", "b1", "b2", "c", "d"]);
            // A transaction sees its own writes and applies all or nothing.
            let done: TransactionResult<(), &str> = transaction(&[&t, &u], |x| {
                x[0].remove("a2")?;
                x[1].insert("moved", "a2")?;
                assert_eq!(x[0].get("a2")?, None);
                Ok(())
            });
            done.unwrap();
            let aborted: TransactionResult<(), &str> = transaction(&[&t, &u], |x| {
                x[0].insert("never", "x")?;
                sled::transaction::abort("no")
            });
            assert!(matches!(aborted, Err(TransactionError::Abort("no"))));
            assert_eq!(t.get("never").unwrap(), None);
            assert_eq!(u.get("moved").unwrap(), Some(Bytes::from("a2")));
            assert!(db.tree_names().iter().any(|n| n == b"u"));
            db.drop_tree("u").unwrap();
            assert!(db.open_tree("u").unwrap().is_empty());
        }
    }

    #[test]
    fn a_watch_wakes_on_a_write_and_otherwise_at_its_deadline() {
        for (_dir, db) in backends() {
            let t = db.open_tree("t").unwrap();
            let mut w = t.watch_prefix("k");
            let writer = {
                let t = t.clone();
                std::thread::spawn(move || t.insert("k1", "v").unwrap())
            };
            // Returns on the write, well before the deadline (a minute).
            w.wait(Duration::from_secs(60));
            writer.join().unwrap();
            assert!(t.contains_key("k1").unwrap());
        }
    }
}
