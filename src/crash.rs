//! Named crash points at each durable step of a request and an install,
//! for the crash tests (`tests/crash.rs`): built with the `crash-points`
//! feature, `AIRLOCK_CRASH_AT=<point>` (or `<point>@<n>`, its n-th visit)
//! makes the process stop there and wait to be killed (SIGKILL, as a
//! power cut would). Without the feature, [`point`] is empty.
//!
//! The points, in the order a deploy passes them: `request_stored`,
//! `approval_recorded`, `action_started`, `pack_fetching`, `pack_staged`,
//! `pack_intent_written`, `pack_switched`, `pack_recorded`,
//! `outcome_recorded` (the finished entry is flushed, the request's final
//! state not yet written), and on every audit append `audit_before_flush`
//! / `audit_after_flush`. `airlock compact` has `compact_copied` (the
//! fresh copy written and checked) and `compact_moved` (the database moved
//! aside, the copy not yet in its place).

/// Stop here if the crash tests asked for this point.
#[cfg(feature = "crash-points")]
pub fn point(name: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static VISITS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

    let Ok(want) = std::env::var("AIRLOCK_CRASH_AT") else {
        return;
    };
    let (want, nth) = match want.split_once('@') {
        Some((w, n)) => (w.to_string(), n.parse().unwrap_or(1)),
        None => (want, 1),
    };
    if want != name {
        return;
    }
    let visit = {
        let mut v = VISITS.lock().unwrap_or_else(|e| e.into_inner());
        let n = v.get_or_insert_with(HashMap::new).entry(want).or_insert(0);
        *n += 1;
        *n
    };
    if visit == nth {
        eprintln!("airlock: crash point {name} reached");
        // Wait for the test's SIGKILL; nothing after this point happens.
        loop {
            std::thread::park();
        }
    }
}

/// Stop here if the crash tests asked for this point (compiled out).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &str) {}
