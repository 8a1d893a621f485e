//! Locks and their queues, driven as a transport drives the engine: runs
//! whose rule names the same lock run one at a time, in the order they
//! were approved; `!lock` holds one by hand; the queue survives a
//! restart; a request that waits too long expires. Real sled on disk,
//! real threads for a run in progress.

mod common;

use std::sync::Arc;
use std::time::Duration;

use airlock::engine::Effect;
use airlock::requests::State;
use common::*;

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const OPS: &str = "!ops:example.org";

const PAUSE: &str =
    "name: pause\npack: svc\naction_ref: core.pause\nformats: ['pause {{ max_pause }}']\n";
const DEPLOY: &str = "name: deploy\npack: svc\naction_ref: core.echo\nformats: ['deploy {{ message }}']\nresult:\n  format: \"deployed {{ execution.parameters.message }}\"\n";

fn policy(extra: &str) -> String {
    format!(
        r#"
rules:
  - id: deploys
    effect: allow
    users: ["{ALICE}", "{BOB}"]
    packs: [svc]
    confirm: false
{extra}
  - id: locks
    effect: allow
    users: ["{ALICE}", "{BOB}"]
    builtins: [lock, locks, pending, cancel, audit]
"#
    )
}

fn executes(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Execute(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn said(fx: &[Effect]) -> String {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send(o) => Some(o.message.body.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The audit's (event, request) pairs of `events`, in order.
fn timeline(bot: &Bot, events: &[&str]) -> Vec<(String, String)> {
    bot.engine
        .audit_log()
        .query(&Default::default())
        .unwrap()
        .into_iter()
        .filter(|e| events.contains(&e.event.name()))
        .map(|e| (e.event.to_string(), e.request.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn two_runs_with_the_same_lock_run_one_after_the_other_the_second_told_it_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = Arc::new(with_aliases(
        tmp.path(),
        &[("pause.yaml", PAUSE)],
        &policy("    lock: deploy/prod\n"),
    ));
    let first = bot
        .engine
        .handle(&bot.message(ALICE, OPS, "!pause 1"), bot.now());
    let second = bot
        .engine
        .handle(&bot.message(BOB, OPS, "!pause 1"), bot.now());
    let (a, b) = (executes(&first)[0].clone(), executes(&second)[0].clone());
    let runner = {
        let bot = bot.clone();
        let a = a.clone();
        std::thread::spawn(move || bot.engine.execute(&a, || bot.now()))
    };
    wait_until("the first run to start", Duration::from_secs(10), || {
        (bot.engine.requests().get(&a).unwrap().unwrap().state == State::Running).then_some(())
    });
    // The second, approved while the first runs, waits and says behind what.
    let waiting = bot.engine.execute(&b, || bot.now());
    let text = said(&waiting);
    assert!(
        text.contains(&format!(
            "Request {b} waits for lock deploy/prod: request {a} holds it"
        )) && text.contains("number 1 in the queue"),
        "{text}"
    );
    assert_eq!(
        bot.engine.requests().get(&b).unwrap().unwrap().state,
        State::Approved
    );
    let pending = bodies(&bot.say(ALICE, OPS, "!pending"));
    assert!(
        pending.contains(&format!("{b} approved"))
            && pending.contains("waiting for lock deploy/prod, number 1"),
        "{pending}"
    );
    // Asked again while it waits (a tick, a second effect), it neither runs nor repeats itself.
    assert!(bot.engine.execute(&b, || bot.now()).is_empty());
    // The first ends: its lock goes to the second, which the transport starts.
    let ended = runner.join().unwrap();
    assert_eq!(executes(&ended), vec![b.clone()]);
    bot.play(ended);
    assert_eq!(
        bot.engine.requests().get(&b).unwrap().unwrap().state,
        State::Succeeded
    );
    assert_eq!(
        timeline(
            &bot,
            &["locked", "queued", "unlocked", "started", "finished"]
        ),
        [
            ("locked", &a),
            ("started", &a),
            ("queued", &b),
            ("finished", &a),
            ("unlocked", &a),
            ("locked", &b),
            ("started", &b),
            ("finished", &b),
            ("unlocked", &b),
        ]
        .map(|(e, r)| (e.to_string(), r.clone()))
    );
    let metrics = bot.engine.metrics().render(0);
    assert!(
        metrics.contains("airlock_lock_events_total{event=\"queued\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_lock_held_by_hand_holds_runs_in_order_across_a_restart_until_released() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pol = policy("    lock: \"deploy/{{ message }}\"\n");
    let ids = {
        let bot = with_aliases(dir, &[("deploy.yaml", DEPLOY)], &pol);
        let held = bodies(&bot.say(BOB, OPS, "!lock deploy/prod database migration"));
        assert!(
            held.contains("🔒 Lock deploy/prod is held by @bob:example.org"),
            "{held}"
        );
        let again = bodies(&bot.say(ALICE, OPS, "!lock deploy/prod mine"));
        assert!(
            again.contains("already held by @bob:example.org"),
            "{again}"
        );
        let one = bodies(&bot.say(ALICE, OPS, "!deploy prod"));
        assert!(
            one.contains("waits for lock deploy/prod: @bob:example.org locked it")
                && one.contains("database migration")
                && one.contains("number 1 in the queue"),
            "{one}"
        );
        let two = bodies(&bot.say(BOB, OPS, "!deploy prod"));
        assert!(two.contains("number 2 in the queue"), "{two}");
        // Another environment is another lock.
        let staging = bodies(&bot.say(ALICE, OPS, "!deploy staging"));
        assert!(staging.contains("deployed staging"), "{staging}");
        let locks = bodies(&bot.say(ALICE, OPS, "!locks"));
        let (a, b) = (waiting_id(&one), waiting_id(&two));
        assert!(
            locks.contains("deploy/prod: @bob:example.org locked it")
                && locks.contains(&format!("waiting: {a}, {b}")),
            "{locks}"
        );
        (a, b)
    };
    // A restart keeps the queue: nothing queued was interrupted, or run.
    let bot = with_aliases(dir, &[("deploy.yaml", DEPLOY)], &pol);
    let notices = bot.play(bot.engine.take_startup_effects());
    assert!(
        !bodies(&notices).contains("not re-run"),
        "{}",
        bodies(&notices)
    );
    assert!(bot.play(bot.engine.tick(bot.now())).is_empty());
    for id in [&ids.0, &ids.1] {
        assert_eq!(
            bot.engine.requests().get(id).unwrap().unwrap().state,
            State::Approved
        );
    }
    // Released: both run, in the order they were approved, each once.
    let released = bodies(&bot.say(BOB, OPS, "!unlock deploy/prod"));
    assert!(
        released.contains("🔓 Lock deploy/prod is released"),
        "{released}"
    );
    assert!(released.matches("deployed prod").count() == 2, "{released}");
    assert!(
        bot.play(bot.engine.tick(bot.now())).is_empty(),
        "nothing runs twice"
    );
    let started: Vec<String> = timeline(&bot, &["started"])
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r == &ids.0 || r == &ids.1)
        .collect();
    assert_eq!(started, vec![ids.0.clone(), ids.1.clone()]);
    let free = bodies(&bot.say(ALICE, OPS, "!locks"));
    assert!(free.contains("No lock is held"), "{free}");
    // The lock's history: the runs that held it, newest first.
    let history = bodies(&bot.say(ALICE, OPS, "!deploys lock deploy/prod"));
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    assert!(
        lines[1].starts_with(&format!("{} succeeded svc.deploy", ids.1)),
        "{history}"
    );
    assert!(
        lines[2].starts_with(&format!("{} succeeded svc.deploy", ids.0)),
        "{history}"
    );
}

#[test]
fn a_request_that_waits_past_queue_timeout_expires_and_one_can_leave_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = with_aliases(
        tmp.path(),
        &[("deploy.yaml", DEPLOY)],
        &policy("    lock: deploy/prod\n    queue_timeout: 10m\n"),
    );
    bot.say(BOB, OPS, "!lock deploy/prod freeze");
    let one = bodies(&bot.say(ALICE, OPS, "!deploy prod"));
    assert!(
        one.contains("expires if it has not started within 10m"),
        "{one}"
    );
    let a = waiting_id(&one);
    bot.advance(5 * 60_000);
    let b = waiting_id(&bodies(&bot.say(ALICE, OPS, "!deploy prod")));
    // Only its requester may take it out of the queue.
    let refused = bodies(&bot.say(BOB, OPS, &format!("!cancel {b}")));
    assert!(refused.contains("only the requester"), "{refused}");
    let left = bodies(&bot.say(ALICE, OPS, &format!("!cancel {b}")));
    assert!(
        left.contains(&format!("Request {b} left the queue")),
        "{left}"
    );
    assert_eq!(
        bot.engine.requests().get(&b).unwrap().unwrap().state,
        State::Cancelled
    );
    bot.advance(5 * 60_000 + 1);
    let expired = bodies(&bot.play(bot.engine.tick(bot.now())));
    assert!(
        expired.contains(&format!("Request {a} expired: it waited 10m"))
            && expired.contains("queue_timeout 10m"),
        "{expired}"
    );
    assert_eq!(
        bot.engine.requests().get(&a).unwrap().unwrap().state,
        State::Expired
    );
    // Nothing waits any more: unlocking starts nothing.
    let released = bodies(&bot.say(BOB, OPS, "!unlock deploy/prod"));
    assert!(!released.contains("deployed"), "{released}");
}

#[test]
fn a_lock_name_a_chat_value_makes_unusable_refuses_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = with_aliases(
        tmp.path(),
        &[("deploy.yaml", DEPLOY)],
        &policy("    lock: \"deploy/{{ message }}\"\n"),
    );
    let r = bodies(&bot.say(ALICE, OPS, "!deploy \"prod <b>x</b>\""));
    assert!(
        r.contains("will not start: rule deploys's lock came out as \"deploy/prod <b>x</b>\", which is not a lock name"),
        "{r}"
    );
    assert!(!r.contains("deployed"), "{r}");
    let bad = bodies(&bot.say(ALICE, OPS, "!lock a;b why"));
    assert!(bad.contains("is not a lock name"), "{bad}");
}

#[test]
fn the_policy_says_which_lock_settings_are_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let pol = tmp.path().join("p.yaml");
    std::fs::write(
        &pol,
        "rules:\n  - id: a\n    effect: allow\n    users: ['@a:x']\n    packs: [svc]\n    queue_timeout: 5m\n  - id: b\n    effect: allow\n    users: ['@a:x']\n    packs: [svc]\n    lock: \"deploy prod\"\n  - id: c\n    effect: allow\n    users: ['@a:x']\n    packs: [svc]\n    lock: \"deploy/{{ env \"\n    queue_timeout: soon\n",
    )
    .unwrap();
    let loaded = airlock::catalog::load_policy(&[pol]);
    let text: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
    let all = text.join("\n");
    assert!(
        all.contains("rules[0].queue_timeout") && all.contains("names none (`lock:`)"),
        "{all}"
    );
    assert!(
        all.contains("rules[1].lock") && all.contains("not a lock name"),
        "{all}"
    );
    assert!(
        all.contains("rules[2].lock") && all.contains("invalid template"),
        "{all}"
    );
    assert!(all.contains("rules[2].queue_timeout"), "{all}");
}
