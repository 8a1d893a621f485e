//! The Temporal executor's latency: `core.local cmd='date +%s%N'` run on an
//! `airlock worker` through a Temporal dev server on loopback, split into
//! submit → command start (the start call, Temporal's dispatch, the
//! worker's pickup) and command start → result in the bot; beside the same
//! action run in-process. Prints figures; asserts none.
//!
//! `AIRLOCK_TEST_TEMPORAL=$(scripts/temporal) cargo bench --features
//! temporal --bench temporal` (AIRLOCK_BENCH_RUNS to change the 100).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use airlock::action::packs::{GitConfig, PackManager};
use airlock::action::runners::PackAction;
use airlock::action::temporal::{TemporalAction, TemporalClient, TemporalConfig};
use airlock::action::{Action, Outcome, RunContext, metadata};

fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn report(what: &str, v: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<44} p50 {:8.2} ms   p90 {:8.2} ms   p99 {:8.2} ms",
        ms(percentile(v.to_vec(), 0.5)),
        ms(percentile(v.to_vec(), 0.9)),
        ms(percentile(v.to_vec(), 0.99))
    );
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when this goes, panics included.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Run `action` as request `id`; returns the outcome.
fn run(action: &dyn Action, id: &str) -> Outcome {
    let params = serde_json::json!({ "cmd": "date +%s%N" });
    let prepared = action.prepare(params.as_object().unwrap().clone()).unwrap();
    let (cancel, stopping) = (AtomicBool::new(false), AtomicBool::new(false));
    let ctx = RunContext {
        request_id: id,
        requester: "@alice:example.org",
        approvers: &[],
        plan: &prepared.plan,
        cancel: &cancel,
        stopping: &stopping,
        output: &Arc::default(),
        ask: &airlock::action::nobody,
    };
    action.run(&ctx, &prepared.params)
}

fn main() {
    let Some(bin) = std::env::var_os("AIRLOCK_TEST_TEMPORAL") else {
        println!("SKIPPED: AIRLOCK_TEST_TEMPORAL is not set (scripts/temporal prints it)");
        return;
    };
    let runs: usize = std::env::var("AIRLOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let grpc = port();
    let url = format!("http://127.0.0.1:{grpc}");
    let _server = Killed(
        Command::new(&bin)
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
            .args([
                "--port",
                &grpc.to_string(),
                "--http-port",
                &port().to_string(),
            ])
            .args([
                "--metrics-port",
                &port().to_string(),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cfg_text = format!("url: {url}\nqueues:\n  bench: [\"core.local\"]\n");
    let config = tmp.path().join("worker.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\ntemporal:\n  url: {url}\n",
            tmp.path().join("w").display()
        ),
    )
    .unwrap();
    // The worker retries its connection until the server serves.
    let _worker = loop {
        let mut w = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .arg("--config")
            .arg(&config)
            .args(["worker", "--task-queue", "bench"])
            .env("AIRLOCK_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(w.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.contains("on task queue") {
            break Killed(w);
        }
        let _ = w.wait();
        std::thread::sleep(Duration::from_millis(200));
    };

    let meta = metadata::core_actions()
        .into_iter()
        .find(|m| m.spec.reference == "core.local")
        .unwrap();
    let local: Arc<dyn Action> = Arc::new(PackAction::new(meta, None, Arc::default()));
    let db = airlock::kv::Db::memory();
    let packs = PackManager::new(&tmp.path().join("packs"), &db, GitConfig::default()).unwrap();
    let cfg: TemporalConfig = serde_yaml::from_str(&cfg_text).unwrap();
    let remote = TemporalAction::new(local.clone(), "bench", TemporalClient::new(cfg), packs);

    // Warm up: the connection, the worker's caches.
    for i in 0..5 {
        run(&remote, &format!("warm-{i}"));
    }
    let (mut in_process, mut total, mut to_start, mut to_result) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        run(local.as_ref(), &format!("local-{i}"));
        in_process.push(t.elapsed());

        let (t, t_ns) = (Instant::now(), now_ns());
        let o = run(&remote, &format!("bench-{i}"));
        let end_ns = now_ns();
        total.push(t.elapsed());
        // st2 reads stdout as JSON when it is: the number itself.
        let out = &o.result["stdout"];
        let started: u128 = out
            .as_u64()
            .map(u128::from)
            .or_else(|| out.as_str().and_then(|s| s.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no start time: {}", o.summary));
        to_start.push(Duration::from_nanos((started.saturating_sub(t_ns)) as u64));
        to_result.push(Duration::from_nanos(
            (end_ns.saturating_sub(started)) as u64,
        ));
    }
    println!("{runs} runs of core.local `date +%s%N` each:");
    report("in-process (embedded runner)", &in_process);
    report("on a Temporal worker, submit → result", &total);
    report("  submit → command starts on the worker", &to_start);
    report("  command starts → result in the bot", &to_result);
}
