//! The web view's pages over 1,000,000 audit entries: the server time of
//! each page (routing, the session, the engine's queries, rendering), as
//! the HTTP listener spends it, with the history 95 %+ sealed as the bot
//! keeps it. Two viewers: one who may see 2 of the 20 rooms, and an
//! auditor who sees every room (`audit` in the audit room). Prints
//! figures; asserts none.
//!
//! `cargo bench --bench web` (AIRLOCK_BENCH_ENTRIES to change the million).

use std::hint::black_box;
use std::time::{Duration, Instant};

use airlock::audit::{AuditLog, Entry, Event, SealPolicy, Status};
use airlock::config::Config;
use airlock::engine::{Effect, Engine, Incoming};
use hyper::{HeaderMap, Method, Uri};
use serde_json::json;

const ALICE: &str = "@alice:example.org";
const CAROL: &str = "@carol:example.org";
const AUDIT_ROOM: &str = "!audit:example.org";
const ROOMS: u64 = 20;
/// Entries per run: received, matched, allowed, confirmation_requested,
/// the answer received, approval, started, finished.
const PER_RUN: u64 = 8;
const T0: u64 = 1_700_000_000_000;

fn room(run: u64) -> String {
    format!("!room{}:example.org", run % ROOMS)
}

/// One run in 500 is a report whose output is large: 256 KiB of stdout.
const REPORT_EVERY: u64 = 500;
const REPORT_BYTES: usize = 256 * 1024;

/// The entries of run `run`, as the bot writes them.
fn run_entries(run: u64) -> Vec<Entry> {
    if run % REPORT_EVERY == 7 {
        return report_entries(run);
    }
    let id = format!("r{run:07}");
    let pack = format!("pack{}", run % 30);
    let alias = format!("{pack}.deploy");
    let ts = T0 + run * 60_000;
    let asker = format!("@user{}:example.org", run % 50);
    let approver = format!("@user{}:example.org", (run + 1) % 50);
    let base = |event: Event, sender: &str| {
        Entry::new(event, ts)
            .room(&room(run))
            .sender(sender)
            .request(&id)
            .alias(Some(&alias))
            .action("packs.install")
    };
    let params = json!({"packs": [pack], "repo_url": format!("https://git.example.org/{pack}"), "branch": "main"});
    vec![
        Entry::new(Event::Received, ts)
            .room(&room(run))
            .sender(&asker)
            .detail(json!({"command": format!("{pack} deploy main"), "event": format!("$c{run}")})),
        Entry::new(Event::Matched, ts)
            .room(&room(run))
            .sender(&asker)
            .alias(Some(&alias))
            .detail(json!({"parameters": [params]})),
        base(Event::Allowed, &asker)
            .status(Status::Pending)
            .detail(json!({"command": format!("{pack} deploy main"), "event": format!("$c{run}"), "parameters": params, "shown": [format!("{pack} at commit {run:040x} (main)")]})),
        base(Event::ConfirmationRequested, &asker)
            .status(Status::Pending)
            .detail(json!({"approvers": "group ops", "approvals": 1})),
        Entry::new(Event::Received, ts + 30_000)
            .room(&room(run))
            .sender(&approver)
            .request(&id)
            .detail(json!({"reply": "yes", "event": format!("$a{run}")})),
        base(Event::Approval, &approver)
            .status(Status::Approved)
            .detail(json!({"approvals": 1, "needed": 1, "approvers": [approver], "as": "group ops", "device": "DEVICEID", "cross_signed": true})),
        base(Event::Started, &asker)
            .status(Status::Running)
            .detail(json!({"parameters": params, "executor": "embedded"})),
        base(Event::Finished, &asker)
            .status(if run.is_multiple_of(10) { Status::Failed } else { Status::Succeeded })
            .detail(json!({
                "summary": format!("installed {pack} 1.{run} at {:012x}", run),
                "elapsed_ms": 2300,
                "result": {
                    "packs": [{"name": pack, "version": format!("1.{run}"), "commit": format!("{run:040x}"), "url": format!("https://git.example.org/{pack}"), "ref": "main", "previous": format!("{:040x}", run.saturating_sub(30))}],
                    "stdout": (0..20).map(|l| format!("step {l}: done")).collect::<Vec<_>>().join("\n"),
                },
                "commit": format!("{run:040x}"),
                "deployed": [{"pack": pack, "commit": format!("{run:040x}")}],
                "approved_by": [approver],
            })),
    ]
}

/// A report's run: no approval, and a large output.
fn report_entries(run: u64) -> Vec<Entry> {
    let id = format!("r{run:07}");
    let ts = T0 + run * 60_000;
    let line = "row 0123456789 abcdefghij klmnopqrst uvwxyz ok\n";
    let stdout = line.repeat(REPORT_BYTES / line.len());
    let base = |event: Event| {
        Entry::new(event, ts)
            .room(&room(run))
            .sender("@reporter:example.org")
            .request(&id)
            .alias(Some("reports.nightly"))
            .action("core.local")
    };
    vec![
        base(Event::Allowed)
            .status(Status::Approved)
            .detail(json!({"command": "report nightly", "event": format!("$c{run}"), "parameters": {"cmd": "report"}})),
        base(Event::Started)
            .status(Status::Running)
            .detail(json!({"parameters": {"cmd": "report"}, "executor": "embedded"})),
        base(Event::Finished)
            .status(Status::Succeeded)
            .detail(json!({"summary": "succeeded (exit code 0)", "elapsed_ms": 90_000, "result": {"stdout": stdout, "stderr": "", "return_code": 0}})),
    ]
}

fn config(dir: &std::path::Path) -> Config {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "groups:\n  ops: [\"{ALICE}\"]\n  auditors: [\"{CAROL}\"]\nrules:\n  - id: ops\n    effect: allow\n    groups: [ops]\n    rooms: [\"{}\", \"{}\"]\n    builtins: [pending, audit, web]\n  - id: auditors\n    effect: allow\n    groups: [auditors]\n    rooms: [\"{AUDIT_ROOM}\"]\n    builtins: [audit, web]\n",
            room(0),
            room(1)
        ),
    )
    .unwrap();
    let mut c = Config {
        data_dir: dir.join("data"),
        packs: dir.join("packs"),
        aliases: Vec::new(),
        policies: vec![policy],
        audit_room: Some(AUDIT_ROOM.into()),
        ..Config::default()
    };
    c.http.web = true;
    c.http.public_url = Some("https://airlock.example.org".into());
    c.runners.sandbox = airlock::action::runners::sandbox::Sandbox::None;
    c
}

/// A session for `user`, signed in from the link `!web` in `room` sends.
fn session(engine: &Engine, user: &str, room: &str, now: u64) -> String {
    let m = Incoming::message(user, room, "$web", "!web", now);
    let link = engine
        .handle(&m, now)
        .into_iter()
        .find_map(|e| match e {
            Effect::Direct { message, .. } => Some(message.body),
            _ => None,
        })
        .expect("a sign-in link");
    let at = link.find("token=").expect("a token") + 6;
    engine.web_sign_in(&link[at..at + 64], now).unwrap().1
}

fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let total: u64 = std::env::var("AIRLOCK_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Close enough: a report run writes 3 entries, not 8.
    let runs = total / PER_RUN;
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let db = airlock::config::open_store(&config.store_path()).unwrap();
    let t = Instant::now();
    let written = {
        let log = AuditLog::open_at(&db, Some(&config.archive_dir())).unwrap();
        let mut batch = Vec::new();
        for run in 0..runs {
            batch.extend(run_entries(run));
            if batch.len() >= 1000 {
                log.append(std::mem::take(&mut batch)).unwrap();
            }
        }
        log.append(batch).unwrap();
        log.seal_due(u64::MAX / 2, &SealPolicy::default()).unwrap();
        // The newest runs, unsealed, as after a day of use.
        for run in runs..runs + 250 {
            log.append(run_entries(run)).unwrap();
        }
        log.len()
    };
    let runs = runs + 250;
    println!(
        "web bench: {written} entries ({runs} runs in {ROOMS} rooms, one in {REPORT_EVERY} a report of {} KiB) written and sealed in {:.1?}",
        REPORT_BYTES / 1024,
        t.elapsed()
    );
    let now = T0 + runs * 60_000 + 3_600_000;
    let opened = config
        .open_with(db, std::sync::Arc::new(move || now), now)
        .unwrap();
    let engine = opened.engine;
    let check = Instant::now();
    let c = engine.check_chain(now).unwrap();
    println!(
        "the chain's whole check (every 10 minutes, off the event path): {:.1?}, {} entries, {} problems",
        check.elapsed(),
        c.entries,
        c.problems.len()
    );
    let viewers = [
        ("2 of 20 rooms", session(&engine, ALICE, &room(0), now)),
        ("every room", session(&engine, CAROL, AUDIT_ROOM, now)),
    ];
    // Both in room 0, which either viewer may see.
    let recent = format!("r{:07}", (runs - 20) / ROOMS * ROOMS);
    // The newest report of room 0 (run ≡ 7 mod 500 and ≡ 0 mod 20 never
    // meet; room 7 it is, which only the auditor sees).
    let report = format!("r{:07}", (runs / REPORT_EVERY - 1) * REPORT_EVERY + 7);
    let old = format!("r{:07}", 40);
    let deep = written / 2;
    let r0 = "%21room0%3Aexample.org";
    let pages: Vec<(&str, String)> = vec![
        ("overview", "/web/".into()),
        (
            "a recent request (unsealed)",
            format!("/web/request/{recent}"),
        ),
        ("an old request (sealed)", format!("/web/request/{old}")),
        (
            "an alias's last 100 runs",
            "/web/deploys/pack0.deploy".into(),
        ),
        ("a pack's last 100 deploys", "/web/deploys/pack0".into()),
        (
            "a report's page (256 KiB of output)",
            format!("/web/request/{report}"),
        ),
        (
            "the reports' last 100 runs (256 KiB each)",
            "/web/deploys/reports.nightly".into(),
        ),
        (
            "audit search, a room, newest 100",
            format!("/web/audit?room={r0}"),
        ),
        (
            "audit search, a room and a user",
            format!("/web/audit?room={r0}&user=%40user20%3Aexample.org"),
        ),
        (
            "audit search, a room, a page halfway back",
            format!("/web/audit?room={r0}&before={deep}"),
        ),
        (
            "audit search, a room, since 2h",
            format!("/web/audit?room={r0}&since=2h"),
        ),
        (
            "audit search, every room (403 unless all)",
            "/web/audit?event=finished".into(),
        ),
    ];
    println!("server time per page, median and max of 20 (routing, session, queries, rendering):");
    for (who, token) in &viewers {
        let mut headers = HeaderMap::new();
        headers.insert(
            hyper::header::COOKIE,
            format!("{}={token}", airlock::web::COOKIE).parse().unwrap(),
        );
        for (what, path) in &pages {
            let uri: Uri = path.parse().unwrap();
            let mut bytes = 0;
            let mut status = 0;
            let times: Vec<Duration> = (0..20)
                .map(|_| {
                    let t = Instant::now();
                    let r = black_box(airlock::web::answer(
                        &Method::GET,
                        &uri,
                        &headers,
                        &engine,
                        true,
                        now,
                    ));
                    let took = t.elapsed();
                    status = r.status().as_u16();
                    bytes = http_body_size(r);
                    took
                })
                .collect();
            let (p50, max) = median_max(times);
            println!(
                "  {who:>13} | {what:<42} | {status} | {:>7} bytes | median {p50:>9.2?} | max {max:>9.2?}",
                bytes
            );
        }
    }
    // The download is not a page: up to 100,000 entries as JSON lines.
    let (_, token) = &viewers[0];
    let mut headers = HeaderMap::new();
    headers.insert(
        hyper::header::COOKIE,
        format!("{}={token}", airlock::web::COOKIE).parse().unwrap(),
    );
    let uri: Uri = format!("/web/audit?room={r0}&format=jsonl")
        .parse()
        .unwrap();
    let t = Instant::now();
    let r = airlock::web::answer(&Method::GET, &uri, &headers, &engine, true, now);
    let took = t.elapsed();
    println!(
        "download of a room's entries as JSON lines: {:.1} MiB in {took:.1?}",
        http_body_size(r) as f64 / 1048576.0
    );
}

/// The size of a response's body.
fn http_body_size<B>(r: hyper::Response<B>) -> usize
where
    B: http_body_util::BodyExt,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(r.into_body().collect())
        .map(|b| b.to_bytes().len())
        .unwrap_or(0)
}
