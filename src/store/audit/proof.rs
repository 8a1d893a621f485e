//! One sealed entry with its RFC 6962 inclusion proof: what `airlock
//! audit prove` prints and `check-proof` (or `scripts/check-proof.py`)
//! checks without the rest of the log.

use serde::{Deserialize, Serialize};

use super::Entry;
use crate::store::merkle::{self, Hash};

/// One entry shown to be in its segment: what `airlock audit prove`
/// prints and `check-proof` checks, with nothing else of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Proof {
    /// The entry, its stored JSON exactly.
    pub entry: String,
    /// The segment.
    pub segment: String,
    /// Its position in the segment (from 0).
    pub index: u64,
    /// The segment's entry count.
    pub size: u64,
    /// The audit path, leaf side first (hex).
    pub path: Vec<String>,
    /// The segment's Merkle root (hex), as sealed and posted.
    pub root: String,
}

impl Proof {
    /// Check it: the entry's own hash (recomputed from its content), its
    /// leaf, and the path up to the root. Says what does not hold.
    pub fn check(&self) -> Result<(), String> {
        let e: Entry = serde_json::from_str(&self.entry)
            .map_err(|e| format!("the entry does not parse: {e}"))?;
        if e.compute_hash() != e.hash {
            return Err("the entry's content does not match its hash".into());
        }
        let leaf = merkle::leaf_hash(
            &merkle::from_hex(&e.hash).ok_or("the entry's hash is not 64 hex digits")?,
        );
        let path: Option<Vec<Hash>> = self.path.iter().map(|h| merkle::from_hex(h)).collect();
        let path = path.ok_or("the path holds something other than 64 hex digits")?;
        let root = merkle::from_hex(&self.root).ok_or("the root is not 64 hex digits")?;
        if merkle::verify_inclusion(self.index, self.size, &leaf, &path, &root) {
            Ok(())
        } else {
            Err("the path does not lead from the entry to the root".into())
        }
    }
}
