//! Does a dead notification target slow a command? 300 break-glass runs
//! of `core.noop` through the engine (each one a notice to every target),
//! three times: with no `notify:`, with a receiver on loopback that
//! answers at once, and with one that accepts connections and never
//! answers (every delivery waits for the client's 10 s timeout, then is
//! tried again). Prints the time from command to answer; asserts none.
//!
//! `cargo bench --bench notify` (AIRLOCK_BENCH_RUNS to change the 300).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use airlock::config::Config;
use airlock::engine::{Effect, Incoming};

fn percentile(mut v: Vec<Duration>, q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
}

/// A receiver on loopback: answering 202 at once, or never (`mute`).
fn receiver(mute: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in l.incoming().flatten() {
            if mute {
                held.push(s); // open, and silent
                continue;
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    port
}

fn run(label: &str, runs: usize, notify_port: Option<u16>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("aliases")).unwrap();
    std::fs::write(
        dir.join("aliases/ping.yaml"),
        "name: ping\npack: bench\naction_ref: core.noop\nformats: ['ping']\nresult:\n  format: pong\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        "rules:\n  - id: ping\n    effect: allow\n    users: ['@alice:example.org']\n    packs: [bench]\n    confirm:\n      approvers: {users: ['@bob:example.org']}\n    break_glass: {users: ['@alice:example.org']}\n",
    )
    .unwrap();
    let notify = notify_port.map(|p| {
        serde_yaml::from_str(&format!(
            "targets:\n  - name: hook\n    webhook: http://127.0.0.1:{p}/hook\n    secret_env: AIRLOCK_BENCH_HOOK_SECRET\nroutes:\n  - events: [break_glass]\n    targets: [hook]\n"
        ))
        .unwrap()
    });
    let config = Config {
        aliases: vec![dir.join("aliases")],
        policies: vec![dir.join("policy.yaml")],
        packs: dir.join("packs"),
        data_dir: dir.join("data"),
        notify,
        ..Config::default()
    };
    let now = airlock::wall::now_ms();
    let engine = config.open(now).unwrap().engine;
    let mut times = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let m = Incoming::message(
            "@alice:example.org",
            "!ops:example.org",
            &format!("$e{i}"),
            "!ping --break-glass \"bench\"",
            now,
        );
        let mut answered = false;
        for fx in engine.handle(&m, now) {
            if let Effect::Execute(id) = fx {
                for more in engine.execute(&id, || now) {
                    answered |= matches!(&more, Effect::Send(o) if o.message.body.contains("pong"));
                }
            }
        }
        assert!(answered, "no answer to run {i}");
        times.push(t.elapsed());
    }
    println!(
        "{label:<58} p50 {:7.3} ms   p90 {:7.3} ms   p99 {:7.3} ms",
        percentile(times.clone(), 0.5),
        percentile(times.clone(), 0.9),
        percentile(times, 0.99)
    );
}

fn main() {
    let runs: usize = std::env::var("AIRLOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // SAFETY: set before any other thread of this process starts.
    unsafe { std::env::set_var("AIRLOCK_BENCH_HOOK_SECRET", "bench-secret") };
    let (live, mute) = (receiver(false), receiver(true));
    println!("{runs} break-glass runs of core.noop, command to answer:");
    run("no notify:", runs, None);
    run("a webhook that answers at once", runs, Some(live));
    run(
        "a webhook that never answers (10 s timeouts, retried)",
        runs,
        Some(mute),
    );
}
