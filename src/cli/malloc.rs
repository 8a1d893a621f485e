//! glibc's allocator, set for a process that runs for months: what the bot
//! frees should go back to the system, not stay with the thread or the
//! arena that freed it. Measured with `cargo bench --bench matrix`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// Set in the re-executed bot to what `GLIBC_TUNABLES` was before, so
/// that what the bot starts (runner processes) gets the environment
/// it was given, and so that it re-executes only once.
const WAS: &str = "AIRLOCK_GLIBC_TUNABLES_WAS";
const TCACHE: &str = "glibc.malloc.tcache_count";

/// glibc gives every thread that allocates an arena of its own, up to
/// eight per core, each keeping what it freed: two hold the bot's load.
/// And glibc raises its mmap threshold to the size of each large block
/// freed, up to 32 MiB: once sled has freed one of its write buffers,
/// every buffer and page image below that size comes from the arenas
/// instead, and the holes they leave between long-lived objects stay
/// resident. A fixed threshold (the default's starting value) keeps
/// large blocks mapped on their own and unmapped when freed.
pub fn tune() {
    // SAFETY: no thread exists yet; mallopt only sets tunables.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Each thread also keeps a cache of the small blocks it freed, up to
/// about 200 KB, which no trim returns; the bot has some 24 threads
/// (tokio's workers and blocking pool, sled's). glibc reads the switch
/// only from the environment, as the process starts: so the bot runs
/// itself again with it, once. On Synapse this took 3.5 MB off the
/// bot's memory after 10,000 commands (README, figures). A Temporal
/// worker, as long-lived, does the same (not measured on its own). An
/// operator's own `glibc.malloc.tcache_count` is kept.
pub fn without_thread_caches() {
    if let Some(was) = std::env::var_os(WAS) {
        // SAFETY: no thread exists yet.
        unsafe {
            std::env::remove_var(WAS);
            if was.is_empty() {
                std::env::remove_var("GLIBC_TUNABLES");
            } else {
                std::env::set_var("GLIBC_TUNABLES", was);
            }
        }
        return;
    }
    let was = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    if was.to_string_lossy().contains(TCACHE) {
        return;
    }
    let mut tunables = was.clone();
    if !tunables.is_empty() {
        tunables.push(":");
    }
    tunables.push(format!("{TCACHE}=0"));
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("airlock"));
    // Returns only if the exec failed (no /proc, say): the bot then
    // runs as it is, with the caches.
    let _ = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(WAS, was)
        .exec();
}
