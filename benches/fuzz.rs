//! The property targets of `tests/props`, run long: at least 1,000,000
//! generated inputs in total (`AIRLOCK_FUZZ_CASES` sets the total), with
//! the count and rate per target printed.

#[path = "../tests/props/mod.rs"]
mod props;

use std::time::Instant;

fn main() {
    let total: u64 = std::env::var("AIRLOCK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Cheap targets take four times the cases of heavy ones.
    let weight = |heavy: bool| if heavy { 1 } else { 4 };
    let units: u64 = props::TARGETS.iter().map(|t| weight(t.heavy)).sum();
    // A fresh seed each run unless one is given, so runs explore; printed
    // so a failure can be replayed with AIRLOCK_FUZZ_SEED.
    let seed = std::env::var("AIRLOCK_FUZZ_SEED").unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        t.to_string()
    });
    // SAFETY: set before any other thread exists.
    unsafe { std::env::set_var("AIRLOCK_FUZZ_SEED", &seed) };
    println!("seed {seed}");
    let mut done = 0u64;
    let started = Instant::now();
    for t in props::TARGETS {
        let cases = (total * weight(t.heavy)).div_ceil(units);
        let t0 = Instant::now();
        (t.run)(cases as u32);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{:<44} {:>9} cases  {:>7.1} s  {:>9.0} cases/s",
            t.name,
            cases,
            secs,
            cases as f64 / secs
        );
        done += cases;
    }
    println!(
        "fuzz: {done} cases in {:.1} s, no panic, every invariant held",
        started.elapsed().as_secs_f64()
    );
}
