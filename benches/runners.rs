//! The engine's overhead per run of a pack action: `core.local cmd=true`
//! through the whole pipeline (match, policy, request, audit, executor,
//! runner, result) beside the bare process spawn it wraps. Prints figures;
//! asserts none.
//!
//! `cargo bench --bench runners` (AIRLOCK_BENCH_RUNS to change the 300).

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use airlock::action::runners::local::{self, Spawn};
use airlock::config::Config;
use airlock::engine::{Effect, Incoming};

fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, v: &[Duration]) -> Duration {
    let p50 = percentile(v.to_vec(), 0.5);
    println!(
        "{what:<52} p50 {:7.3} ms   p90 {:7.3} ms   p99 {:7.3} ms",
        ms(p50),
        ms(percentile(v.to_vec(), 0.9)),
        ms(percentile(v.to_vec(), 0.99))
    );
    p50
}

fn main() {
    let runs: usize = std::env::var("AIRLOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The floor: spawning `/bin/sh -c true` and waiting for it.
    let mut bare = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        std::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()
            .unwrap();
        bare.push(t.elapsed());
    }

    // The runner alone: process group, pipes, output readers, result shape.
    let spawn = Spawn {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "true".into()],
        env: Vec::new(),
        withheld: Vec::new(),
        cwd: None,
        timeout: Duration::from_secs(60),
        grace: Duration::from_secs(5),
        output_cap: 1 << 20,
    };
    let mut runner = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let ran = local::run(&spawn, &AtomicBool::new(false), &Default::default()).unwrap();
        std::hint::black_box(local::result(&ran.ended, &60.into(), false));
        runner.push(t.elapsed());
    }

    // The whole pipeline: `!run true` matched, allowed without
    // confirmation, recorded, run through the executor, answered.
    std::fs::create_dir_all(dir.join("aliases")).unwrap();
    std::fs::write(
        dir.join("aliases/run.yaml"),
        "name: run\npack: bench\naction_ref: core.local\nformats: ['run {{ cmd }}']\nresult:\n  format: '{{ execution.result.return_code }}'\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        "rules:\n  - id: run\n    effect: allow\n    users: ['@alice:example.org']\n    aliases: [bench.run]\n",
    )
    .unwrap();
    let config = Config {
        aliases: vec![dir.join("aliases")],
        policies: vec![dir.join("policy.yaml")],
        packs: dir.join("packs"),
        data_dir: dir.join("data"),
        ..Config::default()
    };
    let now = airlock::wall::now_ms();
    let engine = config.open(now).unwrap().engine;
    let mut full = Vec::new();
    let (mut handling, mut executing) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let m = Incoming::message(
            "@alice:example.org",
            "!ops:example.org",
            &format!("$e{i}"),
            "!run true",
            now,
        );
        let mut answered = false;
        let fx = engine.handle(&m, now);
        handling.push(t.elapsed());
        for fx in fx {
            if let Effect::Execute(id) = fx {
                let e = Instant::now();
                for more in engine.execute(&id, || now) {
                    answered |= matches!(more, Effect::Send(_));
                }
                executing.push(e.elapsed());
            }
        }
        assert!(answered, "no answer to run {i}");
        full.push(t.elapsed());
    }
    // One durable audit write, as each step makes.
    let mut flushes = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        engine
            .audit_log()
            .record(airlock::audit::Entry::new(
                airlock::audit::Event::Help,
                now + i as u64,
            ))
            .unwrap();
        flushes.push(t.elapsed());
    }

    println!("{runs} runs of `true` each:");
    let b = report("bare spawn (/bin/sh -c true, wait)", &bare);
    let r = report("local runner (group, pipes, result)", &runner);
    let f = report("engine: !run true → core.local → answer", &full);
    report(
        "  of which handle (match, policy, request, audit)",
        &handling,
    );
    report(
        "  of which execute (audit, executor, runner, result)",
        &executing,
    );
    report("one audit entry written and flushed", &flushes);
    println!(
        "overhead at p50: runner {:+.3} ms, whole engine {:+.3} ms over the bare spawn (the engine's includes its durable audit and request writes)",
        ms(r.saturating_sub(b)),
        ms(f.saturating_sub(b))
    );
}
