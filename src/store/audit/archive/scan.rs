//! A query over the sealed segments: newest first, each segment skipped
//! by its manifest when it cannot match, in the rest only the frames the
//! postings name, read and parsed on two threads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;

use super::{Archive, manifest_key};
use crate::store::audit::parallel::on_two_threads;
use crate::store::audit::{AuditError, Entry, Query, chunks::key_seq, epoch::parse};
use crate::store::segment::Segment;

/// What a query needs of a manifest to skip its segment, read without
/// building its value sets: each field's set stays raw JSON, searched
/// for the value's JSON string (a value is an element there exactly when
/// its quoted, escaped form occurs).
#[derive(Deserialize)]
struct Glance<'a> {
    segment: String,
    first: u64,
    last: u64,
    max_ts: u64,
    #[serde(borrow)]
    values: BTreeMap<String, &'a serde_json::value::RawValue>,
    #[serde(default)]
    many: Vec<String>,
}

impl Glance<'_> {
    /// Whether a query could match anything in its segment.
    fn may_hold(&self, q: &Query) -> bool {
        let has = |field: &str, v: &Option<String>| {
            v.as_ref().is_none_or(|v| {
                let Ok(quoted) = serde_json::to_string(v) else {
                    return true;
                };
                self.many.iter().any(|m| m == field)
                    || self.values.get(field).is_some_and(|raw| {
                        memchr::memmem::find(raw.get().as_bytes(), quoted.as_bytes()).is_some()
                    })
            })
        };
        q.since.is_none_or(|t| self.max_ts >= t)
            && (has("status", &q.status) || has("event", &q.status))
            && has("sender", &q.user)
            && has("room", &q.room)
            && has("alias", &q.alias)
            && has("action", &q.action)
            && has("request", &q.request)
            && has("event", &q.event)
            && has("deployed", &q.deployed)
            && q.rooms
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| has("room", &Some(r.clone()))))
    }
}

/// Hand `take` the entries of `pending`'s frames (segments newest first,
/// each with the frames wanted) whose lines hold every `filter`'s bytes,
/// newest first; false once it said stop. Frames are decompressed and
/// their lines parsed on two threads (a line without the filters' bytes
/// is not even parsed).
fn read_frames(
    pending: Vec<(Arc<Segment>, Vec<usize>)>,
    filter: &[memchr::memmem::Finder<'static>],
    take: &mut dyn FnMut(Entry) -> bool,
) -> Result<bool, AuditError> {
    let items: Vec<(usize, &Segment, usize)> = pending
        .iter()
        .enumerate()
        .flat_map(|(k, (s, frames))| frames.iter().map(move |f| (k, &**s, *f)))
        .collect();
    let read = on_two_threads(&items, 1, |(k, s, f)| {
        let frame = s
            .frame(*f)
            .map_err(|e| AuditError::Archive(e.to_string()))?;
        let entries = frame
            .into_iter()
            .filter(|(_, b)| filter.iter().all(|p| p.find(b).is_some()))
            .map(|(seq, b)| parse(seq, &b))
            .collect::<Result<Vec<Entry>, _>>()?;
        Ok((*k, entries))
    })?;
    let mut by_segment: Vec<Vec<Entry>> = vec![Vec::new(); pending.len()];
    for (k, entries) in read {
        by_segment[k].extend(entries);
    }
    for mut entries in by_segment {
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        for e in entries {
            if !take(e) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl Archive {
    /// Hand `take` the sealed entries `q` may match, newest first, until
    /// it says stop: segments newest first, skipped by their manifests,
    /// and in each only the frames its postings name.
    pub(in crate::store::audit) fn scan(
        &self,
        q: &Query,
        take: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), AuditError> {
        // The bytes each filtered field's value has in a stored entry.
        let filter: Vec<memchr::memmem::Finder<'static>> = [
            ("sender", &q.user),
            ("room", &q.room),
            ("alias", &q.alias),
            ("action", &q.action),
            ("request", &q.request),
            ("event", &q.event),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            let v = v.as_ref()?;
            let pat = format!("\"{k}\":{}", serde_json::to_string(v).ok()?);
            Some(memchr::memmem::Finder::new(pat.as_bytes()).into_owned())
        })
        .collect();
        // Frames are read in batches across segments, each twice the
        // last: a `-n 100` query reads little, one for a whole history
        // reads on two threads.
        let mut pending: Vec<(Arc<Segment>, Vec<usize>)> = Vec::new();
        let (mut batch_frames, mut batch_target) = (0, 4);
        // Manifests are keyed by their first seq: those of segments
        // starting past a page's bound are not read.
        let last = q.before.map_or(u64::MAX, |b| b.saturating_sub(1));
        for kv in self.meta.range(manifest_key(0)..=manifest_key(last)).rev() {
            let (k, bytes) = kv?;
            let m: Glance = serde_json::from_slice(&bytes)
                .map_err(|e| AuditError::Corrupt(key_seq(&k), format!("its manifest: {e}")))?;
            if q.since.is_some_and(|t| m.max_ts < t) {
                break;
            }
            if !m.may_hold(q) || self.pruned(m.first)?.is_some() {
                continue;
            }
            let s = self.open_segment(&m.segment, m.first, m.last)?;
            let wanted = wanted_frames(&s, q, m.last)?;
            if wanted.is_empty() {
                continue;
            }
            batch_frames += wanted.len();
            pending.push((s, wanted));
            if batch_frames >= batch_target {
                if !read_frames(std::mem::take(&mut pending), &filter, take)? {
                    return Ok(());
                }
                batch_frames = 0;
                batch_target = (batch_target * 2).min(512);
            }
        }
        read_frames(pending, &filter, take)?;
        Ok(())
    }
}

/// The frames of segment `s` that may hold entries for `q`: those its
/// posting lists name for each field `q` filters on (any of its rooms),
/// whose times reach `q.since`, and that hold an entry below `q.before`
/// (the segment ends at entry `last`).
fn wanted_frames(s: &Segment, q: &Query, last: u64) -> Result<Vec<usize>, AuditError> {
    // Each condition holds for a frame that any of its (field, value)
    // postings names; a frame is wanted when every condition holds.
    let mut conditions: Vec<Vec<(&str, &str)>> = [
        (&["request"][..], &q.request),
        (&["deployed"], &q.deployed),
        (&["alias"], &q.alias),
        (&["sender"], &q.user),
        (&["room"], &q.room),
        (&["action"], &q.action),
        (&["event"], &q.event),
        // A status filter matches an entry's status or its event.
        (&["status", "event"], &q.status),
    ]
    .into_iter()
    .filter_map(|(fields, v)| {
        let v = v.as_deref()?;
        Some(fields.iter().map(|f| (*f, v)).collect())
    })
    .collect();
    // Any of a viewer's rooms.
    if let Some(rooms) = &q.rooms {
        conditions.push(rooms.iter().map(|r| ("room", r.as_str())).collect());
    }
    let mut frames: Option<BTreeSet<u32>> = None;
    for any_of in conditions {
        let mut hit = BTreeSet::new();
        for (field, value) in any_of {
            hit.extend(
                s.postings(field, value)
                    .map_err(|e| AuditError::Archive(e.to_string()))?,
            );
        }
        frames = Some(match frames {
            None => hit,
            Some(f) => f.intersection(&hit).copied().collect(),
        });
    }
    // A page's bound inside the segment: frames wholly past it are not
    // read (the segment's order is by sender, so any frame may be).
    let min_seqs = match q.before {
        Some(b) if last >= b => Some(
            s.frame_min_seqs()
                .map_err(|e| AuditError::Archive(e.to_string()))?,
        ),
        _ => None,
    };
    Ok((0..s.frames().len())
        .filter(|i| {
            frames.as_ref().is_none_or(|f| f.contains(&(*i as u32)))
                && q.since.is_none_or(|t| s.frames()[*i].max_ts >= t)
                && min_seqs
                    .as_ref()
                    .zip(q.before)
                    .is_none_or(|(m, b)| m.get(*i).is_none_or(|first| *first < b))
        })
        .collect())
}
