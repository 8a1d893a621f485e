//! Reading many entries on two threads, for the queries that read a lot
//! of the log (an epoch's, by index or by a sender's copies).

use super::{AuditError, Entry};

/// Hand `take` the entries `items` lead to (newest first) until it says
/// stop. They are read in batches, each twice the last: a `-n 100` query
/// reads little, and a query for everything reads big batches on two
/// threads (reading and parsing entries is the whole cost).
pub(super) fn in_batches<T: Sync>(
    items: &mut impl Iterator<Item = Result<T, AuditError>>,
    read: impl Fn(&T) -> Result<Option<Entry>, AuditError> + Sync,
    take: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), AuditError> {
    let mut size = 128;
    loop {
        let batch = items.by_ref().take(size).collect::<Result<Vec<T>, _>>()?;
        if batch.is_empty() {
            return Ok(());
        }
        for e in on_two_threads(&batch, 256, &read)?.into_iter().flatten() {
            if !take(e) {
                return Ok(());
            }
        }
        size = (size * 2).min(16_384);
    }
}

/// `f` of each of `items`, in order. A list of two chunks or more is done
/// on two threads, each taking the next chunk of `chunk` items until none
/// is left (measured on 10,000 of 1,000,000 entries: 20–25% faster than
/// one thread reading while another parses). An entry is a chunk of 256;
/// a segment's frame, some hundred entries to decompress and parse, one.
pub(super) fn on_two_threads<T: Sync, R: Send>(
    items: &[T],
    chunk: usize,
    f: impl Fn(&T) -> Result<R, AuditError> + Sync,
) -> Result<Vec<R>, AuditError> {
    if items.len() < 2 * chunk {
        return items.iter().map(&f).collect();
    }
    let chunks: Vec<&[T]> = items.chunks(chunk).collect();
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
