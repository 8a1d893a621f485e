//! Memory and disk of a bot that runs for months, through the console
//! transport (same engine and store as `airlock run`, no homeserver):
//! 100,000 `!ping`s (AIRLOCK_BENCH_COMMANDS to change), each a request
//! that runs `core.noop`. Prints anonymous RSS every 1,000 commands, the
//! least-squares slope over the readings after the first 10,000, sled's
//! files and the archive. Asserts nothing.
//!
//! Months are pressed into minutes: closed requests leave after
//! `requests.keep: 1m` (30 days by default; AIRLOCK_BENCH_KEEP to
//! change), and the audit log is sealed by count as it would be (16,000
//! entries). Whatever the allocator
//! environment of this process is (`GLIBC_TUNABLES`, `LD_PRELOAD`) the
//! bot inherits: that is how the allocators were compared.
//!
//! `cargo bench --bench console`

#[path = "common/rss.rs"]
mod rss;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rss::{rss, show, slope};

/// Bytes under `dir`, every file.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => du(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let total: u64 = std::env::var("AIRLOCK_BENCH_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("aliases")).unwrap();
    std::fs::write(
        d.join("aliases/bench.yaml"),
        "name: ping\npack: bench\naction_ref: core.noop\nformats: ['ping']\nack:\n  format: pong\nresult:\n  enabled: false\n",
    )
    .unwrap();
    std::fs::write(
        d.join("policy.yaml"),
        "rules:\n  - id: bench\n    effect: allow\n    users: ['@alice:example.org']\n    packs: [bench]\n",
    )
    .unwrap();
    let cfg = d.join("airlock.yaml");
    let keep = std::env::var("AIRLOCK_BENCH_KEEP").unwrap_or_else(|_| "1m".into());
    std::fs::write(
        &cfg,
        format!("data_dir: data\npacks: packs\naliases: [aliases]\npolicies: [policy.yaml]\nrequests:\n  keep: {keep}\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["console", "--config"])
        .arg(&cfg)
        .env("AIRLOCK_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let pongs = Arc::new(AtomicU64::new(0));
    {
        let pongs = pongs.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if l.contains("pong") {
                    pongs.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Wait for `n` answers (deadline: a stuck bot fails the run, it does
    // not hang it).
    let answered = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while pongs.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "no answer to command {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let start = Instant::now();
    let mut points = Vec::new();
    let mut batch = String::new();
    for i in 1..=total {
        batch.push_str("!ping\n");
        if i % 100 == 0 {
            stdin.write_all(batch.as_bytes()).unwrap();
            batch.clear();
            answered(i);
        }
        if i % 1_000 == 0 {
            let now = rss(child.id());
            if i > 10_000 {
                points.push((i as f64, now[1]));
            }
            if i % 10_000 == 0 {
                println!(
                    "after {i} commands ({:.0} s): RSS {}; sled {:.1} MB, archive {:.1} MB",
                    start.elapsed().as_secs_f64(),
                    show(now),
                    du(&d.join("data/airlock.sled")) as f64 / 1e6,
                    du(&d.join("data/audit")) as f64 / 1e6,
                );
            }
        }
    }
    let anon: Vec<f64> = points.iter().map(|p| p.1).collect();
    let peak = anon.iter().cloned().fold(0.0, f64::max);
    println!(
        "console, {total} commands: anonymous RSS slope after the first 10,000: {:.3} MB per 1,000 commands (least squares over {} readings); plateau (highest reading after 10,000) {peak:.1} MiB",
        slope(&points),
        points.len()
    );
    let (sled, archive) = (du(&d.join("data/airlock.sled")), du(&d.join("data/audit")));
    println!(
        "console, {total} commands: sled's files {:.1} MB; archive {:.1} MB, {:.0} bytes per command; {:.0} commands/s",
        sled as f64 / 1e6,
        archive as f64 / 1e6,
        archive as f64 / total as f64,
        total as f64 / start.elapsed().as_secs_f64()
    );
    drop(stdin);
    let _ = child.wait();
}
