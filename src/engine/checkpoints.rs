//! The audit log's head and its seals, posted to the audit room where this
//! machine cannot rewrite them, and those read back from it: what `!audit
//! verify` checks the local log against.

use super::{Effect, Engine, Outgoing};
use crate::audit::{Checkpoint, Seal};
use crate::render::Message;

/// Audit checkpoints: those in the audit room (read back by the transport
/// or posted here), and the last posted.
#[derive(Default)]
pub(super) struct Checkpoints {
    known: Vec<Checkpoint>,
    /// The seals the audit room holds (read back, or posted here).
    seals: Vec<Seal>,
    posted_seq: u64,
    posted_ms: u64,
    /// The last whole check of the chain.
    checked: Option<ChainCheck>,
}

/// A whole check of the audit chain, and of it against the checkpoints
/// and seals the audit room holds: by `!audit verify`, or the transport's
/// periodic one. What the web view's overview says of the log.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    /// When it ran (ms since the epoch).
    pub at: u64,
    /// The entries that chain.
    pub entries: u64,
    /// The checkpoints it was checked against.
    pub checkpoints: usize,
    /// The newest of them.
    pub newest_checkpoint: u64,
    /// Every break found; none: intact.
    pub problems: Vec<String>,
}

impl Checkpoints {
    /// The last checkpoint posted to the audit room: its entry and when.
    pub(super) fn last_posted(&self) -> Option<(u64, u64)> {
        (self.posted_seq > 0).then_some((self.posted_seq, self.posted_ms))
    }
}

impl Engine {
    /// Check the whole chain, and it against the audit room's checkpoints
    /// and seals, at `now`; the result is kept for the web view. Reads
    /// every live entry and hashes every segment file: the transport runs
    /// it off the event path, every few minutes.
    pub fn check_chain(&self, now: u64) -> Result<ChainCheck, crate::audit::AuditError> {
        let local = self.audit.verify()?;
        let known = self.known_checkpoints();
        let mut problems = local.problems;
        problems.extend(self.audit.verify_against(&known)?);
        problems.extend(self.audit.verify_seals(&self.known_seals())?);
        let check = ChainCheck {
            at: now,
            entries: local.entries,
            checkpoints: known.len(),
            newest_checkpoint: known.iter().map(|c| c.seq).max().unwrap_or(0),
            problems,
        };
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checked = Some(check.clone());
        Ok(check)
    }

    /// The last [`Engine::check_chain`], if one ran.
    pub fn last_chain_check(&self) -> Option<ChainCheck> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checked
            .clone()
    }

    /// `!audit verify`'s answer, checked at `now`.
    pub(super) fn verify_text(&self, now: u64) -> String {
        let c = match self.check_chain(now) {
            Ok(c) => c,
            Err(e) => return format!("⚠️ Cannot read the audit log: {e}"),
        };
        if c.problems.is_empty() {
            let checked = if c.checkpoints == 0 {
                "no checkpoints to check it against yet".to_string()
            } else {
                format!(
                    "it matches all {} checkpoint(s) in the audit room (the newest at entry {})",
                    c.checkpoints, c.newest_checkpoint
                )
            };
            format!(
                "✅ The audit log is intact: {} entries chain correctly, and {checked}.",
                c.entries
            )
        } else {
            format!(
                "❌ The audit log does NOT verify:\n{}",
                c.problems
                    .iter()
                    .map(|p| format!("  {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
    }

    /// Checkpoints the transport read back from the audit room: what
    /// `!audit verify` checks the local log against.
    pub fn add_checkpoints(&self, found: Vec<Checkpoint>) {
        // One naming an entry past the head vouches for entries the log
        // lacks (`verify` says so); posting goes on from the head, so no
        // checkpoint can stop the next ones.
        let head = self.audit.checkpoint().map_or(0, |h| h.seq);
        let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        c.posted_seq = c
            .posted_seq
            .max(found.iter().map(|c| c.seq).max().unwrap_or(0))
            .min(head);
        c.known.extend(found);
    }

    /// Seals the transport read back from the audit room.
    pub fn add_seals(&self, found: Vec<Seal>) {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seals
            .extend(found);
    }

    /// Seals known to be in the audit room.
    pub fn known_seals(&self) -> Vec<Seal> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seals
            .clone()
    }

    /// Checkpoints known to be in the audit room.
    pub fn known_checkpoints(&self) -> Vec<Checkpoint> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .known
            .clone()
    }

    /// Seal what of the audit log is due into segments, and post each
    /// segment's seal to the audit room: its range, last hash, Merkle
    /// root, file hash and manifest hash, so a segment rewritten with its
    /// manifest on this machine still differs from what the room holds.
    /// A failure (a full disk) is logged and tried again at the next tick.
    pub fn seal(&self, now: u64) -> Vec<Effect> {
        let sealed = match self.audit.seal_due(now, &self.settings.seal) {
            Ok(s) => {
                *self.seal_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if !s.is_empty() {
                    give_back_freed_memory();
                }
                s
            }
            Err(e) => {
                tracing::warn!("sealing the audit log: {e} (tried again at the next tick)");
                *self.seal_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                return Vec::new();
            }
        };
        let Some(room) = &self.settings.audit_room else {
            return Vec::new();
        };
        let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        sealed
            .into_iter()
            .map(|m| {
                let cp = Checkpoint {
                    seq: m.last,
                    hash: m.last_hash.clone(),
                };
                c.known.push(cp.clone());
                let manifest = crate::audit::Manifest::hash(
                    &serde_json::to_vec(&m).unwrap_or_default(),
                );
                let seal = Seal {
                    segment: m.segment.clone(),
                    first: m.first,
                    last: m.last,
                    last_hash: m.last_hash.clone(),
                    root: m.root.clone(),
                    file_sha256: m.file_sha256.clone(),
                    manifest: manifest.clone(),
                };
                c.seals.push(seal.clone());
                Effect::Send(Outgoing {
                    room: room.clone(),
                    reply_to: None,
                    thread: None,
                    message: Message::plain(format!(
                        "🔏 audit seal: entries {}..{} in segment {}, Merkle root {}, file SHA-256 {}, manifest {}",
                        m.first, m.last, m.segment, m.root, m.file_sha256, manifest
                    ))
                    .with_field(Checkpoint::FIELD, cp.field())
                    .with_field(
                        Seal::FIELD,
                        serde_json::to_value(&seal).unwrap_or_default(),
                    ),
                    prompt_for: None,
                })
            })
            .collect()
    }

    /// Post the audit log's head to the audit room if entries were written
    /// since the last checkpoint and it is due (`force`: at shutdown).
    pub fn checkpoint(&self, now: u64, force: bool) -> Vec<Effect> {
        let (Some(room), Some(head)) = (&self.settings.audit_room, self.audit.checkpoint()) else {
            return Vec::new();
        };
        let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        let due = force
            || head.seq - c.posted_seq.min(head.seq) >= self.settings.checkpoint_entries
            || now.saturating_sub(c.posted_ms)
                >= self.settings.checkpoint_interval.as_millis() as u64;
        if head.seq <= c.posted_seq || !due {
            return Vec::new();
        }
        c.posted_seq = head.seq;
        c.posted_ms = now;
        c.known.push(head.clone());
        vec![Effect::Send(Outgoing {
            room: room.clone(),
            reply_to: None,
            thread: None,
            message: Message::plain(head.text()).with_field(Checkpoint::FIELD, head.field()),
            prompt_for: None,
        })]
    }
}

/// Sealing holds an epoch's entries and its segment in memory for a
/// moment (some 20 MB at 16,000 entries); glibc keeps what was freed in
/// its heap, where it stays resident. Hand it back.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
