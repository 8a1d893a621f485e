//! On-call notifications against a real HTTP receiver on loopback: a
//! break-glass run reaches a signed webhook (the signature checked with
//! the documented scheme) and PagerDuty's Events API v2 (the event checked
//! against its published contract), its review resolves the incident, and
//! a dead target neither holds the command back nor goes unreported.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock::notify::{NotifyConfig, SIGNATURE_HEADER, signature};
use common::*;
use serde_json::Value;

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const PROD: &str = "!prod:example.org";

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP/1.1 receiver on loopback answering 202 to every POST.
fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            seen.lock().unwrap().push(Received {
                path,
                headers,
                body,
            });
            let mut s = stream;
            let _ = s.write_all(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, got)
}

/// An event as PagerDuty's published Events API v2 schema has it
/// (PagerDuty/api-schema, reference/events-v2/openapiv3.json): the body
/// requires `routing_key` and `event_action` (trigger, acknowledge or
/// resolve), and knows no other fields than those below; a payload
/// requires `summary`, `severity` (critical, warning, error or info) and
/// `source`, all strings; `timestamp` is a date-time, `component`,
/// `group`, `class` and `client` strings, `custom_details` an object.
/// PagerDuty's docs bound `dedup_key` at 255 characters and `summary` at
/// 1,024.
fn events_v2(e: &Value) {
    let string = |v: &Value, what: &str| {
        assert!(v.is_string(), "{what} must be a string: {e}");
    };
    string(&e["routing_key"], "routing_key");
    let action = e["event_action"].as_str().unwrap_or("");
    assert!(
        ["trigger", "acknowledge", "resolve"].contains(&action),
        "{e}"
    );
    if action != "trigger" {
        string(&e["dedup_key"], "dedup_key (required unless triggering)");
    }
    if let Some(k) = e["dedup_key"].as_str() {
        assert!(!k.is_empty() && k.len() <= 255, "{e}");
    }
    if let Some(c) = e.get("client") {
        string(c, "client");
    }
    let known = [
        "routing_key",
        "event_action",
        "dedup_key",
        "payload",
        "client",
        "client_url",
        "links",
        "images",
    ];
    for k in e.as_object().unwrap().keys() {
        assert!(known.contains(&k.as_str()), "{k} is not in the schema: {e}");
    }
    let Some(p) = e.get("payload") else {
        assert_ne!(action, "trigger", "a trigger carries a payload: {e}");
        return;
    };
    for required in ["summary", "severity", "source"] {
        string(&p[required], required);
    }
    let summary = p["summary"].as_str().unwrap();
    assert!(
        !summary.is_empty() && summary.chars().count() <= 1024,
        "{e}"
    );
    let severity = p["severity"].as_str().unwrap();
    assert!(
        ["critical", "warning", "error", "info"].contains(&severity),
        "{e}"
    );
    for optional in ["component", "group", "class"] {
        if let Some(v) = p.get(optional) {
            string(v, optional);
        }
    }
    if let Some(ts) = p.get("timestamp") {
        airlock::clock::parse_since(ts.as_str().unwrap(), 0).expect("a date-time");
    }
    if let Some(d) = p.get("custom_details") {
        assert!(d.is_object(), "custom_details must be an object: {e}");
    }
}

fn config(port: u16, dead_port: u16) -> NotifyConfig {
    serde_yaml::from_str(&format!(
        r#"
targets:
  - name: ops-hook
    webhook: http://127.0.0.1:{port}/hook
    secret_env: AIRLOCK_TEST_HOOK_SECRET
  - name: pagerduty
    pagerduty:
      routing_key_env: AIRLOCK_TEST_PD_KEY
      url: http://127.0.0.1:{port}/v2/enqueue
  - name: gone
    webhook: http://127.0.0.1:{dead_port}/nobody
    secret_env: AIRLOCK_TEST_HOOK_SECRET
routes:
  - events: [break_glass, failed]
    targets: [ops-hook, pagerduty, gone]
retry_after: 50ms
"#
    ))
    .unwrap()
}

#[test]
fn break_glass_reaches_a_signed_webhook_and_pagerduty_and_its_review_resolves_it() {
    const SECRET: &str = "hook-secret-0123456789";
    const KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";
    // SAFETY: set before any thread of this test binary reads them; no
    // other test here touches the environment.
    unsafe {
        std::env::set_var("AIRLOCK_TEST_HOOK_SECRET", SECRET);
        std::env::set_var("AIRLOCK_TEST_PD_KEY", KEY);
    }
    let (port, got) = receiver();
    // A port nothing listens on: every delivery to it fails at once.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let mut cfg = settings(tmp.path(), &repo_root().join("policies"), Some(&repo.path));
    cfg.notify = Some(config(port, dead_port));
    let bot = Bot::open(cfg);

    let ran = bodies(&bot.say(
        ALICE,
        PROD,
        "!flow deploy main --break-glass \"login outage\"",
    ));
    assert!(
        ran.contains("Successfully deployed flow"),
        "the command is not held back: {ran}"
    );
    let id = request_id(&ran[ran.find("Request ").unwrap()..]);
    let both = wait_until("the webhook and PagerDuty", Duration::from_secs(10), || {
        let g = got.lock().unwrap();
        (g.len() >= 2).then(|| g.clone())
    });
    let hook = both.iter().find(|r| r.path == "/hook").unwrap();
    // The documented scheme: HMAC-SHA256 of the raw body under the shared
    // secret, hex, after `sha256=`.
    assert_eq!(
        hook.header(SIGNATURE_HEADER),
        Some(signature(SECRET.as_bytes(), &hook.body).as_str())
    );
    assert_eq!(hook.header("X-Airlock-Event"), Some("break_glass"));
    let body = hook.json();
    assert_eq!(body["action"], "trigger");
    assert_eq!(body["request"], id.as_str());
    assert!(
        body["summary"].as_str().unwrap().contains("login outage"),
        "{body}"
    );
    assert!(!String::from_utf8_lossy(&hook.body).contains(SECRET));

    // PagerDuty's Events API v2, as its published schema has it.
    let pd = both
        .iter()
        .find(|r| r.path == "/v2/enqueue")
        .unwrap()
        .json();
    events_v2(&pd);
    assert_eq!(pd["routing_key"], KEY);
    assert_eq!(pd["event_action"], "trigger");
    let dedup = pd["dedup_key"].as_str().unwrap().to_string();
    assert!(dedup.contains(&id));
    assert_eq!(pd["payload"]["source"], "airlock");
    assert!(
        pd["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("login outage")
    );

    // Reviewed by someone else: the incident is resolved under its key.
    let reviewed = bodies(&bot.say(BOB, PROD, &format!("!review {id} checked")));
    assert!(reviewed.contains("reviewed by"), "{reviewed}");
    let resolve = wait_until("PagerDuty's resolve", Duration::from_secs(10), || {
        got.lock()
            .unwrap()
            .iter()
            .map(|r| r.json())
            .find(|j| j["event_action"] == "resolve")
    });
    events_v2(&resolve);
    assert_eq!(resolve["dedup_key"], dedup.as_str());
    assert_eq!(resolve["routing_key"], KEY);

    // The dead target is reported once its tries are spent, without its
    // URL's secrets or the key.
    let problems = wait_until("the dead target reported", Duration::from_secs(20), || {
        let p = bot.engine.notify_problems();
        (!p.is_empty()).then_some(p)
    });
    assert!(
        problems[0].contains("notify target gone fails"),
        "{problems:?}"
    );
    assert!(!problems[0].contains(SECRET), "{problems:?}");
}

#[test]
fn a_target_without_its_secret_stops_the_start_naming_it() {
    let cfg: NotifyConfig = serde_yaml::from_str(
        "targets:\n  - name: pd\n    pagerduty:\n      routing_key_env: AIRLOCK_TEST_UNSET_KEY\n  - name: hook\n    webhook: https://example.org/h\n",
    )
    .unwrap();
    let err = airlock::notify::Notifier::start(&cfg).err().unwrap();
    assert!(
        err.contains("notify target pd") && err.contains("AIRLOCK_TEST_UNSET_KEY is not set"),
        "{err}"
    );
    let unsigned: NotifyConfig =
        serde_yaml::from_str("targets:\n  - name: hook\n    webhook: https://example.org/h\n")
            .unwrap();
    let err = airlock::notify::Notifier::start(&unsigned).err().unwrap();
    assert!(err.contains("needs secret_env"), "{err}");
}

#[test]
fn a_request_stuck_behind_a_lock_and_a_lock_held_too_long_are_told_once_and_resolved() {
    const SECRET: &str = "hook-secret-stuck";
    // SAFETY: as above; a variable of this test alone.
    unsafe {
        std::env::set_var("AIRLOCK_TEST_HOOK_SECRET_2", SECRET);
    }
    let (port, got) = receiver();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("aliases")).unwrap();
    std::fs::write(
        dir.join("aliases/deploy.yaml"),
        "name: deploy\npack: svc\naction_ref: core.echo\nformats: ['deploy {{ message }}']\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!("rules:\n  - id: d\n    effect: allow\n    users: ['{ALICE}', '{BOB}']\n    packs: [svc]\n    confirm: false\n    lock: deploy/prod\n  - id: t\n    effect: allow\n    users: ['{ALICE}', '{BOB}']\n    builtins: [lock]\n"),
    )
    .unwrap();
    let mut cfg = settings(dir, &dir.join("p.yaml"), None);
    cfg.aliases = vec![dir.join("aliases")];
    cfg.notify = Some(
        serde_yaml::from_str(&format!(
            "targets:\n  - name: hook\n    webhook: http://127.0.0.1:{port}/hook\n    secret_env: AIRLOCK_TEST_HOOK_SECRET_2\nroutes:\n  - events: [stuck, lock_held]\n    targets: [hook]\nstuck_after: 10m\nlock_held_after: 1h\n"
        ))
        .unwrap(),
    );
    let bot = Bot::open(cfg);
    const OPS: &str = "!ops:example.org";
    bot.say(BOB, OPS, "!lock deploy/prod maintenance");
    let waits = bodies(&bot.say(ALICE, OPS, "!deploy prod"));
    let id = waiting_id(&waits);
    let events = || -> Vec<(String, String)> {
        got.lock()
            .unwrap()
            .iter()
            .map(|r| {
                let j = r.json();
                (
                    j["event"].as_str().unwrap().to_string(),
                    j["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let until = |n: usize| {
        wait_until(&format!("{n} notices"), Duration::from_secs(10), || {
            (events().len() >= n).then(events)
        })
    };
    bot.advance(11 * 60_000);
    bot.play(bot.engine.tick(bot.now()));
    assert_eq!(until(1), [("stuck".into(), "trigger".into())]);
    let stuck = got.lock().unwrap()[0].json();
    assert!(
        stuck["summary"]
            .as_str()
            .unwrap()
            .contains(&format!("Request {id}"))
            && stuck["summary"]
                .as_str()
                .unwrap()
                .contains("waiting for lock deploy/prod"),
        "{stuck}"
    );
    bot.advance(50 * 60_000);
    bot.play(bot.engine.tick(bot.now()));
    bot.play(bot.engine.tick(bot.now()));
    let told = until(2);
    assert_eq!(told[1], ("lock_held".into(), "trigger".into()));
    // Released: the run starts, and both matters are resolved, once each.
    let ran = bodies(&bot.say(BOB, OPS, "!unlock deploy/prod"));
    assert!(ran.contains("released"), "{ran}");
    let all = until(4);
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(
        all[2..].contains(&("stuck".into(), "resolve".into())),
        "{all:?}"
    );
    assert!(
        all[2..].contains(&("lock_held".into(), "resolve".into())),
        "{all:?}"
    );
}
