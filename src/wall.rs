//! The wall clock: the one function in the crate that reads it. The
//! composition root, the transports, the CLI and the actions that stamp
//! what they did call it; `core/` and `engine/` are handed time instead
//! (an argument, or the engine's injected [`crate::engine::Clock`]).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
