//! The safe core's costs: audit appends with durable flushes, audit queries
//! over a million entries, the open requests among many closed ones, policy
//! decisions. Prints figures; asserts none.
//!
//! `cargo bench --bench core` (AIRLOCK_BENCH_ENTRIES to change the million).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock::audit::{AuditLog, Entry, Event, Query, Status};
use airlock::policy::{Subject, Target};
use airlock::requests::{Ask, Origin, Request, Requests};
use serde_json::json;

fn entry(i: u64, users: u64) -> Entry {
    // One run in 1,000 deploys one of five packs (200 deploys each in a
    // million entries): what `who-deployed` looks for.
    if i % 1000 == 500 {
        return Entry::new(Event::Finished, 1_700_000_000_000 + i)
            .room(&format!("!room{}:example.org", i % 20))
            .sender(&format!("@user{}:example.org", i % users))
            .request(&format!("r{:06}", i / 4))
            .action("packs.install")
            .status(Status::Succeeded)
            .detail(json!({
                "summary": "installed",
                "deployed": [{"pack": format!("deploy{}", (i / 1000) % 5), "commit": format!("{i:040x}")}],
                "approved_by": ["@approver:example.org"],
            }));
    }
    Entry::new(
        if i.is_multiple_of(7) {
            Event::Finished
        } else {
            Event::Received
        },
        1_700_000_000_000 + i,
    )
    .room(&format!("!room{}:example.org", i % 20))
    .sender(&format!("@user{}:example.org", i % users))
    .request(&format!("r{:06}", i / 4))
    .alias(Some(&format!("pack{}.alias{}", i % 30, i % 300)))
    .action("packs.install")
    .status(if i.is_multiple_of(7) {
        Status::Succeeded
    } else {
        Status::Pending
    })
    .detail(json!({"command": format!("flow deploy branch-{i}")}))
}

fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn audit(dir: &std::path::Path) {
    // With the bot's cache: the query figures are what `!audit` costs.
    let db = airlock::config::open_store(&dir.join("audit.sled")).unwrap();
    let archive = dir.join("audit");
    let log = AuditLog::open_at(&db, Some(&archive)).unwrap();

    // One entry per append, flushed each time: a command's worst case.
    let n = 2_000;
    let t = Instant::now();
    for i in 0..n {
        log.record(entry(i, 100)).unwrap();
    }
    let single = n as f64 / t.elapsed().as_secs_f64();
    println!("audit append, 1 entry per durable flush: {single:.0} entries/s");

    // Batches of 1,000 per transaction and flush.
    let total: u64 = std::env::var("AIRLOCK_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let mut i = n;
    while i < total {
        let batch: Vec<Entry> = (i..(i + 1000).min(total)).map(|k| entry(k, 100)).collect();
        i += batch.len() as u64;
        log.append(batch).unwrap();
    }
    let batched = (total - n) as f64 / t.elapsed().as_secs_f64();
    println!(
        "audit append, batches of 1,000 per durable flush: {batched:.0} entries/s ({total} entries)"
    );

    audit_queries(&db, &log, total, "unsealed");
    println!(
        "audit database size: {:.1} MiB",
        db.size_on_disk().unwrap() as f64 / 1048576.0
    );

    // The same history sealed into segments (the default 16,000 each):
    // the queries again, with more than 95% of it archived.
    let t = Instant::now();
    let sealed = log
        .seal_due(u64::MAX / 2, &airlock::audit::SealPolicy::default())
        .unwrap();
    println!(
        "audit seal of {total} entries into {} segments: {:?}",
        sealed.len(),
        t.elapsed()
    );
    let bytes: u64 = std::fs::read_dir(&archive)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    println!(
        "audit archive: {:.1} MiB, {:.0} bytes per entry",
        bytes as f64 / 1048576.0,
        bytes as f64 / total as f64
    );
    let n = 2_000;
    for i in 0..n {
        log.record(entry(total + i, 100)).unwrap();
    }
    drop(log);
    let t = Instant::now();
    let log = AuditLog::open_at(&db, Some(&archive)).unwrap();
    println!("audit open of the sealed store: {:?}", t.elapsed());
    audit_queries(&db, &log, total + n, "95%+ sealed");
    let t = Instant::now();
    let v = log.verify_full(true).unwrap();
    println!(
        "audit verify --full of {} entries: {:?} ({} problems)",
        v.entries,
        t.elapsed(),
        v.problems.len()
    );
    db.flush().unwrap();
    println!(
        "audit database size after sealing: {:.1} MiB",
        db.size_on_disk().unwrap() as f64 / 1048576.0
    );
    // Whether sled reuses what the dropped trees freed: as many entries
    // again, sealed as they come, at the defaults.
    let mut i = total + n;
    while i < 2 * total {
        let batch: Vec<Entry> = (i..(i + 1000).min(2 * total))
            .map(|k| entry(k, 100))
            .collect();
        i += batch.len() as u64;
        log.append(batch).unwrap();
        log.seal_due(0, &airlock::audit::SealPolicy::default())
            .unwrap();
    }
    db.flush().unwrap();
    println!(
        "audit database size after {} more entries, sealed as they came: {:.1} MiB",
        total - n,
        db.size_on_disk().unwrap() as f64 / 1048576.0
    );
}

/// The query figures over `log` (`total` entries), labelled `what`.
fn audit_queries(db: &airlock::kv::Db, log: &AuditLog, total: u64, what: &str) {
    let time = |q: &Query| {
        let runs: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                let found = black_box(log.query(q).unwrap());
                let took = t.elapsed();
                // Freeing the results is the caller's cost, not the query's.
                drop(found);
                took
            })
            .collect();
        (percentile(runs.clone(), 0.5), percentile(runs, 1.0))
    };
    let user = Query {
        user: Some("@user42:example.org".into()),
        ..Default::default()
    };
    let hits = log.query(&user).unwrap().len();
    let (p50, max) = time(&user);
    println!(
        "audit query by user ({what}), all {hits} of their entries in {total}: median {p50:?}, max {max:?}"
    );
    let recent = Query {
        user: Some("@user42:example.org".into()),
        limit: Some(100),
        ..Default::default()
    };
    let (p50, max) = time(&recent);
    println!(
        "audit query by user ({what}), newest 100 (the CLI default): median {p50:?}, max {max:?}"
    );
    let newest = Query {
        limit: Some(100),
        ..Default::default()
    };
    let (p50, max) = time(&newest);
    println!("audit query ({what}), the newest 100: median {p50:?}, max {max:?}");
    let alias = Query {
        alias: Some("pack7.alias7".into()),
        status: Some("succeeded".into()),
        ..Default::default()
    };
    let hits = log.query(&alias).unwrap().len();
    let (p50, max) = time(&alias);
    println!("audit query by alias and status ({what}, {hits} hits): median {p50:?}, max {max:?}");
    let requests = Requests::open(db).unwrap();
    let runs: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            black_box(airlock::engine::who_deployed(
                log, &requests, "deploy3", None,
            ));
            t.elapsed()
        })
        .collect();
    let lines = airlock::engine::who_deployed(log, &requests, "deploy3", None)
        .lines()
        .count()
        - 1;
    println!(
        "audit who-deployed ({what}, {lines} deploys of one pack): median {:?}, max {:?}",
        percentile(runs.clone(), 0.5),
        percentile(runs, 1.0)
    );
    let t = Instant::now();
    let v = log.verify().unwrap();
    println!(
        "audit verify ({what}) of {} entries: {:?} ({} problems)",
        v.entries,
        t.elapsed(),
        v.problems.len()
    );
}

fn policy_decisions() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shipped = airlock::catalog::load_policy(&[root.join("policies")]).policy;
    let tmp = tempfile::tempdir().unwrap();
    let mut big =
        String::from("groups:\n  ops: ['@alice:example.org', '@bob:example.org']\nrules:\n");
    for i in 0..500 {
        big.push_str(&format!(
            "  - id: r{i}\n    effect: allow\n    users: ['@team{i}-*:example.org']\n    rooms: ['!room{i}:example.org']\n    aliases: ['pack{i}.*']\n    params:\n      branch: {{regex: '[a-z0-9-]{{1,40}}'}}\n"
        ));
    }
    big.push_str(
        "  - id: last\n    effect: allow\n    groups: [ops]\n    aliases: ['st2-flow.*']\n",
    );
    std::fs::write(tmp.path().join("big.yaml"), big).unwrap();
    let big = airlock::catalog::load_policy(&[tmp.path().join("big.yaml")]).policy;
    let params = json!({"packs": ["st2-flow"], "repo_url": "git@github.com:websages/st2-flow", "branch": "main"});
    let params = params.as_object().unwrap();
    let target = Target::Alias {
        reference: "st2-flow.flow_deploy",
        pack: "st2-flow",
        action_ref: "packs.install",
    };
    for (name, p, user) in [
        ("shipped policy, allowed", &shipped, "@alice:example.org"),
        (
            "shipped policy, denied by default",
            &shipped,
            "@mallory:example.org",
        ),
        ("501 rules, allowed by the last", &big, "@alice:example.org"),
        ("501 rules, denied by default", &big, "@mallory:example.org"),
    ] {
        let who = Subject {
            user,
            room: "!ops:example.org",
            power_level: None,
            at: 0,
        };
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            black_box(p.decide(black_box(&who), &target, params, &Default::default()));
        }
        println!(
            "policy decision, {name}: {:?} per decision",
            t.elapsed() / n
        );
    }
}

/// A command's request, as the engine makes one.
fn request(requester: &str, command: &str, now: u64) -> Request {
    Request::asked(
        Origin {
            requester: requester.into(),
            room: "!ops:example.org".into(),
            event_id: format!("${now}"),
            thread: None,
            power_level: None,
        },
        Ask {
            command: command.into(),
            alias: None,
            action: "core.noop".into(),
            asked: Default::default(),
            params: Default::default(),
            set_in_chat: Vec::new(),
            rule: "bench".into(),
        },
        None,
        None,
        now,
    )
}

/// What the bot asks on every tick: the open requests, here 5 among
/// 100,000 closed ones, with the bot's cache; and what keeping them
/// indexed costs a request's life (create, then close, one transaction
/// each).
fn open_requests(dir: &std::path::Path) {
    let db = airlock::config::open_store(&dir.join("requests.sled")).unwrap();
    let requests = Requests::open(&db).unwrap();
    let closed = 100_000u64;
    let t = Instant::now();
    for i in 0..closed {
        let r = requests
            .create(request(
                &format!("@user{}:example.org", i % 100),
                &format!("flow deploy branch-{i}"),
                1_700_000_000_000 + i,
            ))
            .unwrap();
        requests
            .update(&r.id, |r| r.unprepared("bench", 1_700_000_000_000 + i))
            .unwrap();
    }
    println!(
        "request created and closed: {:?} each",
        t.elapsed() / closed as u32
    );
    for i in 0..5 {
        requests
            .create(request(
                "@alice:example.org",
                "flow status",
                1_800_000_000_000 + i,
            ))
            .unwrap();
    }
    requests.flush().unwrap();
    let lat: Vec<Duration> = (0..1_000)
        .map(|_| {
            let t = Instant::now();
            black_box(requests.open_requests().unwrap());
            t.elapsed()
        })
        .collect();
    let max = *lat.iter().max().unwrap();
    println!(
        "open requests, 5 among {closed} closed: median {:?}, max {max:?}",
        percentile(lat, 0.5)
    );
}

fn main() {
    // cargo bench passes --bench; this harness has no options of its own.
    let dir = tempfile::tempdir().unwrap();
    policy_decisions();
    open_requests(dir.path());
    audit(dir.path());
}
