//! The sled database file: how the bot, the CLI and the benches open it,
//! and `airlock compact`, which rewrites it with only what it holds.

use std::path::{Path, PathBuf};

/// sled's page cache (its default is 1 GiB): the bot reads little beyond
/// recent entries, and a long-running process should not grow toward that.
/// Measured over 12,500 commands: with 16 MiB the bot's RSS grew 21 MB,
/// with 4 MiB 9 MB. With 1 MiB (about 4 MB real: sled counts less than it
/// holds) the bot on Synapse held 2.7 MB less after 2,500 commands, and
/// all 10,000 of one user's entries among 1,000,000 still read in 22 ms:
/// they are filed together (audit.rs).
const SLED_CACHE_BYTES: u64 = 1024 * 1024;

/// The database at `path`, as the bot, the CLI and the benches open it.
///
/// Without sled's background flusher: every write that must survive a
/// crash is flushed by its caller (the audit append, a prompt, a pack
/// intent), so the flusher's fsync every 500 ms adds nothing. Its other
/// job, cleaning the log, reclaimed no disk here (20,000 commands: 677 MB
/// with it, 679 without), and the pages it read back to move them stayed
/// in sled's cache: 3.4 of the 10 MB the bot on Synapse allocated after
/// 2,600 commands and still held at 6,000.
pub fn open_store(path: &Path) -> sled::Result<super::kv::Db> {
    open_sled(path).map(super::kv::Db::Sled)
}

fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    let (moved, copy) = compaction_paths(path);
    if !path.exists() && moved.exists() {
        // A compaction stopped between its two renames: the database is
        // whole at `moved`; put it back.
        std::fs::rename(&moved, path)?;
        tracing::warn!(
            "{}: a compaction was cut short; the database is as it was before it",
            path.display()
        );
    }
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(SLED_CACHE_BYTES)
        .flush_every_ms(None)
        .open()?;
    // Ours now (sled holds a lock on it): what a cut-short compaction
    // left beside it goes. Failing that costs only disk, not the start.
    for leftover in [moved, copy] {
        if leftover.exists()
            && let Err(e) = std::fs::remove_dir_all(&leftover)
        {
            tracing::warn!("cannot remove {}: {e}", leftover.display());
        }
    }
    Ok(db)
}

/// Whether there is a database at `path`, or one a compaction cut short
/// moved aside (`open_store` puts it back).
pub fn store_exists(path: &Path) -> bool {
    path.exists() || compaction_paths(path).0.exists()
}

/// Where a compaction of the database at `path` moves it aside, and where
/// it writes the fresh copy: names of its own, since `open_store` removes
/// what it finds there (an operator's `airlock.sled.old` backup is safe).
fn compaction_paths(path: &Path) -> (PathBuf, PathBuf) {
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    (beside(".compact-old"), beside(".compact-new"))
}

/// What a compaction did: the database's size on disk before and after,
/// and its keys.
#[derive(Debug, Clone, Copy)]
pub struct Compacted {
    /// Bytes on disk before.
    pub before: u64,
    /// Bytes on disk after.
    pub after: u64,
    /// Keys copied, in every tree.
    pub keys: u64,
}

/// Rewrite the database at `path` into a fresh one holding only what it
/// holds now, and put that in its place. sled's log keeps every old
/// version of every page it rewrote (about 34 KB a command, of which 4 KB
/// is live), and nothing reclaims it; a copy holds only the live part.
/// The database must not be open anywhere (the bot stopped). The copy is
/// checked against the original (sled's checksum of every key and value)
/// before it replaces it; a crash at any point leaves one whole database,
/// the old or the new (`open_store` finishes the job).
pub fn compact_store(path: &Path) -> Result<Compacted, String> {
    let old = open_sled(path).map_err(|e| {
        format!(
            "cannot open {}: {e} (is the bot running? stop it first)",
            path.display()
        )
    })?;
    let (moved, copy) = compaction_paths(path);
    let failed = |e: &dyn std::fmt::Display| format!("compacting {}: {e}", path.display());
    let before = old.size_on_disk().map_err(|e| failed(&e))?;
    let new = open_sled(&copy).map_err(|e| failed(&e))?;
    let copied = copy_store(&old, &new);
    drop((old, new));
    let (keys, after) = match copied {
        Ok(Some(done)) => done,
        // A copy that failed or differs goes now: a full disk wants its
        // space back.
        Ok(None) => {
            let _ = std::fs::remove_dir_all(&copy);
            return Err(failed(
                &"the copy does not match the database; nothing was changed",
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&copy);
            return Err(failed(&format!("{e}; nothing was changed")));
        }
    };
    crate::crash::point("compact_copied");
    std::fs::rename(path, &moved).map_err(|e| failed(&e))?;
    crate::crash::point("compact_moved");
    std::fs::rename(&copy, path).map_err(|e| failed(&e))?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| failed(&e))?;
    }
    std::fs::remove_dir_all(&moved).map_err(|e| failed(&e))?;
    Ok(Compacted {
        before,
        after,
        keys,
    })
}

/// Every tree of `from` into `to`, flushed: the keys copied and `to`'s
/// size on disk, or None if the two do not hold the same (sled's checksum
/// of every key and value).
fn copy_store(from: &sled::Db, to: &sled::Db) -> sled::Result<Option<(u64, u64)>> {
    let mut keys = 0u64;
    for name in from.tree_names() {
        let (source, dest) = (from.open_tree(&name)?, to.open_tree(&name)?);
        let mut batch = sled::Batch::default();
        for (n, kv) in source.iter().enumerate() {
            let (k, v) = kv?;
            batch.insert(k, v);
            keys += 1;
            if n % 1000 == 999 {
                dest.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        dest.apply_batch(batch)?;
    }
    to.flush()?;
    Ok((from.checksum()? == to.checksum()?).then_some((keys, to.size_on_disk()?)))
}
