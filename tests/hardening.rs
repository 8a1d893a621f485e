//! The findings of the attacker's review (issue 9), each as a user meets
//! it: room version 12 IDs, text that once panicked, answers to the right
//! message, no leak of other rooms' requests, chat `key=value` pairs past a
//! rule's constraints, looser rules reaching pinned aliases, and the
//! global `--config` flag.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

/// A room of room version 12: no server part.
const V12: &str = "!e4_-U62puWxh0xAHKLfXe4uO7XcTuwkfltgSmxR3iho";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The shipped policy with the ops room renamed to a v12 room ID.
fn v12_policy() -> String {
    std::fs::read_to_string(repo_root().join("policies/ops.yaml"))
        .unwrap()
        .replace("!ops:example.org", V12)
}

#[test]
fn a_room_of_version_12_can_be_named_by_its_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), &v12_policy());
    // The deploy is allowed there, and nowhere else.
    let sent = bot.say(ALICE, V12, "!flow deploy main");
    let p = prompt(&sent).clone();
    let r = bodies(&bot.reply(BOB, V12, &p.event_id, "yes"));
    assert!(r.contains("Successfully deployed flow"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy main"));
    assert!(r.contains("deny by default"), "{r}");

    // `airlock check` and `policy explain` take the same IDs.
    let pol = tmp.path().join("policy.yaml");
    let root = repo_root();
    let o = airlock(
        &[
            "check",
            "--aliases",
            root.join("aliases").to_str().unwrap(),
            "--policies",
            pol.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("0 error(s)"), "{}", stdout(&o));
    let cfg = tmp.path().join("airlock.yaml");
    std::fs::write(
        &cfg,
        format!(
            "aliases: [{}]\npolicies: [{}]\n",
            root.join("aliases").display(),
            pol.display()
        ),
    )
    .unwrap();
    let o = airlock(
        &[
            "policy",
            "explain",
            "--config",
            cfg.to_str().unwrap(),
            "--user",
            ALICE,
            "--room",
            V12,
            "flow deploy main",
        ],
        tmp.path(),
    );
    assert!(
        stdout(&o).contains("decision: ALLOW by rule ops-deploy-flow"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    // Malformed IDs are still refused, with the form expected.
    let o = airlock(
        &[
            "policy",
            "explain",
            "--config",
            cfg.to_str().unwrap(),
            "--user",
            ALICE,
            "--room",
            "ops",
            "flow deploy main",
        ],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--room: \"ops\" is not a room ID"),
        "{}",
        stderr(&o)
    );
    let bad = v12_policy().replace(V12, "!e4 x");
    std::fs::write(&pol, bad).unwrap();
    let o = airlock(
        &[
            "check",
            "--aliases",
            root.join("aliases").to_str().unwrap(),
            "--policies",
            pol.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("rooms[0]: \"!e4 x\" is not a room ID"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn text_whose_lowercase_is_shorter_or_longer_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    // U+212A KELVIN SIGN lowercases to a one-byte 'k'; U+0130 grows.
    let r = bodies(&bot.say(ALICE, OPS, "airlocK: help"));
    assert!(r.contains("flow deploy"), "{r}");
    for body in [
        "airloc\u{212a}",
        "\u{130}\u{130}\u{130}: help",
        "AİRLOCK: x",
    ] {
        let _ = bot.say(ALICE, OPS, body);
    }
}

#[test]
fn answers_by_id_go_to_the_message_that_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let sent = bot.say(ALICE, OPS, "!flow deploy main");
    let id = prompt(&sent).prompt_for.clone().unwrap();
    // A denial by id answers the denier's message.
    let (ask, sent) = bot.say_with_id(BOB, OPS, &format!("!deny {id}"));
    let answer = sent
        .iter()
        .find(|s| s.body.contains("was denied by"))
        .unwrap();
    assert_eq!(answer.reply_to.as_deref(), Some(ask.as_str()));

    // An approval by id is confirmed to the approver; the ack still
    // answers the command, as st2's does.
    let sent = bot.say(ALICE, OPS, "!flow deploy main");
    let p = prompt(&sent).clone();
    let id = p.prompt_for.clone().unwrap();
    let (ask, sent) = bot.say_with_id(BOB, OPS, &format!("!approve {id}"));
    let direct = sent
        .iter()
        .find(|s| s.body.contains("approved by @bob:example.org"))
        .unwrap_or_else(|| panic!("{sent:#?}"));
    assert_eq!(direct.reply_to.as_deref(), Some(ask.as_str()));
    assert!(bodies(&sent).contains("Successfully deployed flow"));

    // Cancel by id, by the requester, answers the requester's message.
    let sent = bot.say(ALICE, OPS, "!flow deploy main");
    let id = prompt(&sent).prompt_for.clone().unwrap();
    let (ask, sent) = bot.say_with_id(ALICE, OPS, &format!("!cancel {id}"));
    let answer = sent
        .iter()
        .find(|s| s.body.contains("was cancelled by"))
        .unwrap();
    assert_eq!(answer.reply_to.as_deref(), Some(ask.as_str()));
}

#[test]
fn other_rooms_requests_are_unknown_to_those_without_rights_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let sent = bot.say(ALICE, OPS, "!flow deploy main");
    let id = prompt(&sent).prompt_for.clone().unwrap();
    let elsewhere = "!elsewhere:example.org";
    let unknown = bodies(&bot.say(MALLORY, elsewhere, "!approve nosuchid"));
    let probe = bodies(&bot.say(MALLORY, elsewhere, &format!("!approve {id}")));
    assert_eq!(
        probe.replace(&id, "ID"),
        unknown.replace("nosuchid", "ID"),
        "mallory can tell a real id from a made-up one"
    );
    assert!(!probe.contains("another room"), "{probe}");
    // Bob may answer it, so he is told where it lives.
    let r = bodies(&bot.say(BOB, elsewhere, &format!("!approve {id}")));
    assert!(r.contains("belongs to another room"), "{r}");
}

#[test]
fn chat_pairs_cannot_set_what_the_rule_does_not_constrain() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    for (pair, key) in [
        ("subtree=true", "subtree"),
        ("force=true", "force"),
        ("timeout=1", "timeout"),
    ] {
        let r = bodies(&bot.say(ALICE, OPS, &format!("!flow deploy main {pair}")));
        assert!(
            r.contains(&format!(
                "parameter {key} cannot be set from chat under rule ops-deploy-flow"
            )),
            "{pair}: {r}"
        );
    }
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());
    // A constrained parameter may still be set by a pair.
    let sent = bot.say(ALICE, OPS, "!flow deploy main branch=main");
    assert!(prompt(&sent).body.contains("branch: main"));

    // A rule that says so accepts extra parameters.
    let tmp = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(repo_root().join("policies/ops.yaml"))
        .unwrap()
        .replace(
            "    aliases: [st2-flow.flow_deploy]\n",
            "    aliases: [st2-flow.flow_deploy]\n    extra_params: true\n",
        );
    let (bot, _repo) = with_policy(tmp.path(), &yaml);
    let sent = bot.say(ALICE, OPS, "!flow deploy main force=true");
    assert!(prompt(&sent).body.contains("force: true"));
}

#[test]
fn check_warns_when_a_looser_rule_reaches_a_pinned_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let root = repo_root();
    let check = |yaml: &str| {
        let pol = tmp.path().join("policy.yaml");
        std::fs::write(&pol, yaml).unwrap();
        stdout(&airlock(
            &[
                "check",
                "--aliases",
                root.join("aliases").to_str().unwrap(),
                "--policies",
                pol.to_str().unwrap(),
            ],
            tmp.path(),
        ))
    };
    let shipped = std::fs::read_to_string(root.join("policies/ops.yaml")).unwrap();
    // As shipped, the pack-wide rule is covered by the pinned one.
    let out = check(&shipped);
    assert!(!out.contains("without the parameter constraints"), "{out}");
    // Extended to another room, it reaches the deploy unconstrained there.
    let widened = shipped.replace(
        "    rooms: [\"!ops:example.org\"]\n    packs: [st2-flow]",
        "    rooms: [\"!ops:example.org\", \"!staging:example.org\"]\n    packs: [st2-flow]",
    );
    assert_ne!(widened, shipped);
    let out = check(&widened);
    assert!(
        out.contains("rule ops-use-flow: reaches st2-flow.flow_deploy (packs.install) without the parameter constraints of rule ops-deploy-flow")
            && out.contains("!staging:example.org"),
        "{out}"
    );
}

#[test]
fn global_flags_work_before_and_after_the_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("airlock.yaml");
    std::fs::write(&cfg, "data_dir: data\n").unwrap();
    // Make a database to verify.
    let (bot, _repo) = shipped_on_disk(tmp.path());
    bot.say(ALICE, OPS, "!help");
    drop(bot);
    let c = cfg.to_str().unwrap();
    for args in [
        vec!["--config", c, "audit", "verify"],
        vec!["audit", "--config", c, "verify"],
        vec!["audit", "verify", "--config", c],
    ] {
        let o = airlock(&args, Path::new("/"));
        assert!(
            o.status.success() && stdout(&o).contains("audit log intact"),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
}

#[test]
fn the_configuration_checks_the_bot_user_id_by_the_same_grammar() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("airlock.yaml");
    std::fs::write(&cfg, "data_dir: data\nuser_id: \"airlock\"\n").unwrap();
    let o = airlock(&["pending", "--config", cfg.to_str().unwrap()], tmp.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("airlock.yaml:2:")
            && stderr(&o).contains("user_id")
            && stderr(&o).contains("\"airlock\" is not a Matrix user ID"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_wall_clock_that_steps_back_during_a_run_is_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let aliases = tmp.path().join("aliases");
    std::fs::create_dir_all(&aliases).unwrap();
    std::fs::write(
        aliases.join("say.yaml"),
        "name: say\npack: demo\naction_ref: core.echo\nformats:\n  - \"say {{ message }}\"\n",
    )
    .unwrap();
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(
        &pol,
        "rules:\n  - id: say\n    effect: allow\n    users: ['@*:example.org']\n    aliases: [demo.say]\n",
    )
    .unwrap();
    let mut config = settings(tmp.path(), &pol, None);
    config.aliases = vec![aliases];
    let bot = Bot::open(config);
    let fx = bot
        .engine
        .handle(&bot.message(ALICE, OPS, "!say hello"), bot.now());
    let id = fx
        .iter()
        .find_map(|e| match e {
            airlock::engine::Effect::Execute(id) => Some(id.clone()),
            _ => None,
        })
        .expect("runs at once");
    // The run starts at t and ends, by the wall clock, ten seconds earlier.
    let t = bot.now();
    let reads = std::sync::atomic::AtomicU64::new(0);
    let clock = || {
        if reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            t
        } else {
            t - 10_000
        }
    };
    let sent = bot.play(bot.engine.execute(&id, clock));
    assert!(bodies(&sent).contains("hello"), "{}", bodies(&sent));
    let finished = bot
        .engine
        .audit_log()
        .query(&airlock::audit::Query {
            request: Some(id),
            event: Some("finished".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(finished[0].details()["elapsed_ms"], 0);
}
