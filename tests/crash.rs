//! Crash points: the bot (the real `airlock console` process) is killed
//! with SIGKILL at each durable step of a deploy, restarted, and the
//! invariants are checked:
//!
//! * `airlock audit verify` holds;
//! * the live version (`packs/<name>`), the pack record and the last
//!   `finished` entry name the same commit;
//! * no request was started twice;
//! * every request is pending or in a terminal state;
//! * the room was told about every request the restart settled.
//!
//! Needs the `crash-points` feature (`scripts/test` builds with it).
#![cfg(feature = "crash-points")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use airlock::audit::{AuditLog, Query};
use airlock::requests::State;
use common::*;

/// A deploy asked by alice and approved by bob, in one console run.
const DEPLOY: &str = "!flow deploy main\n/user @bob:example.org\n/reply m1 yes\n/wait\n";

struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cfg: PathBuf,
    repo: PackRepo,
}

impl Site {
    fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let repo = PackRepo::new(&dir.join("st2-flow"), "st2-flow");
        let cfg = write_config(&dir, &repo);
        Site {
            _tmp: tmp,
            dir,
            cfg,
            repo,
        }
    }

    fn console(&self, crash_at: Option<&str>) -> Child {
        self.command(&["console"], crash_at)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Run the console on `script` to the end; its output.
    fn run(&self, script: &str) -> String {
        let mut child = self.console(None);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `script` until the process reaches `point`, then SIGKILL it.
    fn run_and_kill_at(&self, script: &str, point: &str) {
        let mut child = self.console(Some(point));
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(script.as_bytes()).unwrap();
        kill_at(child, point);
        drop(stdin);
    }

    /// `airlock <args> --config …`, crashing at `crash_at` if given.
    fn command(&self, args: &[&str], crash_at: Option<&str>) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
        c.args(args).arg("--config").arg(&self.cfg);
        c.env_remove("AIRLOCK_CRASH_AT");
        if let Some(p) = crash_at {
            c.env("AIRLOCK_CRASH_AT", p);
        }
        c
    }

    /// The whole audit log as `airlock audit --jsonl --all` prints it.
    fn export(&self) -> String {
        let out = self
            .command(&["audit", "--jsonl", "--all"], None)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn db(&self) -> airlock::kv::Db {
        airlock::kv::Db::Sled(sled::open(self.dir.join("data/airlock.sled")).unwrap())
    }

    fn live(&self) -> Option<String> {
        std::fs::read_link(self.dir.join("packs/st2-flow"))
            .ok()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
    }
}

/// Wait until `child` reaches crash point `point`, then SIGKILL it.
fn kill_at(mut child: Child, point: &str) {
    let stderr = child.stderr.take().unwrap();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink())
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let reached = line.contains("crash point");
            let _ = tx.send(line);
            if reached {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("crash point") => break,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("{point} was never reached; stderr:\n{}", seen.join("\n"));
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The invariants after a restart; returns the deploy request's final
/// state and the live commit.
fn check_invariants(
    site: &Site,
    restart_output: Option<&str>,
    point: &str,
) -> (Option<State>, String) {
    let verify = site.command(&["audit", "verify"], None).output().unwrap();
    assert!(
        verify.status.success(),
        "{point}: audit verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let db = site.db();
    let audit = AuditLog::open(&db).unwrap();

    let live = site.live().expect("st2-flow stays installed");
    let record: serde_json::Value = serde_json::from_slice(
        &db.open_tree("packs")
            .unwrap()
            .get("st2-flow")
            .unwrap()
            .expect("pack record"),
    )
    .unwrap();
    let finished = audit
        .query(&Query {
            action: Some("packs.install".into()),
            event: Some("finished".into()),
            limit: None,
            ..Default::default()
        })
        .unwrap();
    let last = finished.iter().max_by_key(|e| e.seq).unwrap();
    assert_eq!(
        record["current"]["commit"].as_str(),
        Some(live.as_str()),
        "{point}: pack record vs live link"
    );
    assert_eq!(
        last.details()["commit"].as_str(),
        Some(live.as_str()),
        "{point}: last finished entry vs live link"
    );

    let started = audit
        .query(&Query {
            event: Some("started".into()),
            limit: None,
            ..Default::default()
        })
        .unwrap();
    let mut ids: Vec<&str> = started
        .iter()
        .filter_map(|e| e.request.as_deref())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "{point}: a request started twice");

    let all: Vec<_> = db
        .open_tree("requests")
        .unwrap()
        .iter()
        .values()
        .filter_map(|v| serde_json::from_slice::<airlock::requests::Request>(&v.ok()?).ok())
        .collect();
    assert!(!all.is_empty() || point == "request_stored");
    for r in &all {
        assert!(
            matches!(r.state, State::Pending) || !r.state.is_open(),
            "{point}: request {} left {}",
            r.id,
            r.state.name()
        );
    }
    // Every request this restart settled, or whose prompt it re-sent, was
    // announced in its room.
    let settled = audit
        .query(&Query {
            limit: None,
            ..Default::default()
        })
        .unwrap();
    for r in all.iter().filter(|_| restart_output.is_some()) {
        let restart_output = restart_output.unwrap_or_default();
        let recovered = settled.iter().any(|e| {
            e.request.as_deref() == Some(&r.id)
                && (e.event == "interrupted" || e.details().get("recovered").is_some())
        });
        let reprompted =
            r.state == State::Pending && restart_output.contains("Confirmation needed");
        if recovered || reprompted {
            assert!(
                restart_output.contains(&r.id),
                "{point}: the room was not told about {}:\n{restart_output}",
                r.id
            );
        }
    }
    let deploy = all.iter().max_by_key(|r| r.created_ms).map(|r| r.state);
    (deploy, live)
}

/// Each point, and the commit that must be live after the restart: v1 if
/// the switch had not happened, v2 if it had.
#[test]
fn sigkill_at_every_durable_step_leaves_one_truth() {
    // Audit flushes of a deploy: 1 received+matched, 2 allowed+prompt
    // (after the ref is resolved), 3 the approval, 4 its lock taken, 5
    // started, 6 finished, 7 its lock released.
    let points: [(&str, bool); 18] = [
        ("request_stored", false),
        ("audit_before_flush@1", false),
        ("audit_after_flush@1", false),
        ("audit_after_flush@2", false),
        ("approval_recorded", false),
        ("audit_after_flush@3", false),
        ("lock_acquired", false),
        ("audit_after_flush@4", false),
        ("action_started", false),
        ("pack_fetching", false),
        ("pack_staged", false),
        ("pack_intent_written", false),
        ("pack_switched", true),
        ("pack_recorded", true),
        ("audit_before_flush@6", true),
        ("audit_after_flush@6", true),
        ("outcome_recorded", true),
        ("lock_released", true),
    ];
    for (point, switched) in points {
        let site = Site::new();
        let v1 = site.repo.head();
        let out = site.run(DEPLOY);
        assert!(out.contains("Successfully deployed flow"), "{out}");
        site.repo.write("README.md", "v2\n");
        let v2 = site.repo.commit("v2");

        site.run_and_kill_at(DEPLOY, point);
        let restart = site.run("/wait\n");
        let (state, live) = check_invariants(&site, Some(&restart), point);
        let want = if switched { &v2 } else { &v1 };
        assert_eq!(&live, want, "{point}: live version");
        if switched {
            assert_eq!(state, Some(State::Succeeded), "{point}");
            // Before the audit flush, sled may or may not have written the
            // entry on its own; either way the outcome is the same.
            if point.starts_with("pack_") {
                assert!(
                    restart.contains("after its change had taken effect"),
                    "{point}: {restart}"
                );
            }
            // The recovered deploy's aliases answer, and `!pack list` agrees.
            let list = site.run("!pack list\n/wait\n");
            assert!(list.contains(&v2[..12]), "{point}: {list}");
        }
        // The bot keeps working: a deploy after the crash goes through.
        let again = site.run(DEPLOY);
        assert!(
            again.contains("Successfully deployed flow"),
            "{point}: {again}"
        );
        let (_, live) = check_invariants(&site, None, point);
        assert_eq!(live, v2, "{point}: a fresh deploy after the restart");
    }
}

/// `airlock compact` killed after the copy, and between its two renames:
/// the next command finds the whole database, the old one, with nothing
/// left beside it; a compaction run to its end keeps every entry and
/// gives disk back; and it refuses a database the bot holds open.
#[test]
fn compaction_killed_at_each_step_leaves_the_whole_database() {
    let site = Site::new();
    for _ in 0..3 {
        let out = site.run(DEPLOY);
        assert!(out.contains("Successfully deployed flow"), "{out}");
    }
    let log = site.export();
    assert!(log.lines().count() > 20, "{log}");
    let data = site.dir.join("data");
    let beside = || {
        let mut names: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("airlock.sled"))
            .collect();
        names.sort();
        names
    };
    // An operator's own backup beside it is not the compaction's to touch.
    let backup = data.join("airlock.sled.old");
    std::fs::create_dir(&backup).unwrap();
    std::fs::write(backup.join("mine"), "keep").unwrap();
    for point in ["compact_copied", "compact_moved"] {
        let child = site
            .command(&["compact"], Some(point))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        kill_at(child, point);
        assert!(!beside().is_empty(), "{point}: {:?}", beside());
        assert!(
            site.export() == log,
            "{point}: the log changed in the crash"
        );
        assert_eq!(
            beside(),
            ["airlock.sled", "airlock.sled.old"],
            "{point}: left beside it"
        );
    }

    // While the bot runs, the database is its own.
    let mut bot = site.console(None);
    let mut stdin = bot.stdin.take().unwrap();
    stdin.write_all(b"!pack list\n").unwrap();
    let mut stdout = BufReader::new(bot.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap(); // the bot is up: the lock is held
    let refused = site.command(&["compact"], None).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("is the bot running"), "{why}");
    drop(stdin);
    bot.wait().unwrap();
    let log = site.export(); // with the bot's `!pack list`

    let done = site.command(&["compact"], None).output().unwrap();
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let mb: Vec<f64> = said
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(mb.len() >= 2 && mb[1] < mb[0], "smaller on disk: {said}");
    assert!(
        site.export() == log,
        "compacted: not every entry, byte for byte"
    );
    assert_eq!(beside(), ["airlock.sled", "airlock.sled.old"]);
    assert_eq!(
        std::fs::read_to_string(backup.join("mine")).unwrap(),
        "keep"
    );
    let (_, live) = check_invariants(&site, None, "compacted");
    assert_eq!(live, site.repo.head());
    let again = site.run(DEPLOY);
    assert!(again.contains("Successfully deployed flow"), "{again}");
}

/// Sealing killed at each of its steps: after a restart the log verifies
/// in full, every entry is found exactly once, in order, by the export,
/// and no segment file is left that no manifest names.
#[test]
fn sealing_killed_at_each_step_loses_and_repeats_nothing() {
    let helps: String = (0..30).map(|_| "!help\n").collect();
    for point in [
        "seal_epoch_started",
        "seal_file_synced",
        "seal_segments_written",
        "seal_manifest_stored",
        "seal_trees_dropped",
    ] {
        let site = Site::new();
        append(&site.cfg, "audit:\n  seal_entries: 10\n");
        // stdin stays open: the console's ticker seals while it waits.
        site.run_and_kill_at(&helps, point);
        site.run("!help\n");
        let verify = site
            .command(&["audit", "verify", "--full"], None)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        // The kill comes at the first sealing, which needs a full epoch
        // of 10 entries; how many of the 30 commands ran before the
        // ticker's first sealing depends on the machine's load (once 30
        // entries, under CI's).
        let seqs = jsonl_seqs(&site.export());
        assert!(seqs.len() > 10, "{point}: {} entries", seqs.len());
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{point}");
        let db = site.db();
        let archive = site.dir.join("data/audit");
        let log = AuditLog::open_at(&db, Some(&archive)).unwrap();
        let named: Vec<String> = log
            .manifests()
            .unwrap()
            .into_iter()
            .map(|m| m.segment)
            .collect();
        assert!(!named.is_empty(), "{point}: nothing sealed");
        let mut files: Vec<String> = std::fs::read_dir(&archive)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, named, "{point}: files without manifests");
    }
}
