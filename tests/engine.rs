//! The safe core, driven the way a transport drives it: policy, the
//! confirmation gate, the audit log, restarts. Real sled on disk, real git
//! repositories for the seed's deploy.

mod common;

use std::sync::{Arc, Barrier};

use airlock::engine::{Effect, Kind};
use common::*;

const ECHO_ALIAS: &str =
    "---\nname: say\npack: demo\naction_ref: core.echo\nformats:\n  - \"say {{ message }}\"\n";

#[test]
fn seed_deploy_needs_another_ops_member_then_installs_the_shown_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = shipped(tmp.path());
    let sent = bot.say(ALICE, OPS, "!flow deploy main");
    let p = prompt(&sent);
    let id = p.prompt_for.clone().unwrap();
    // The prompt says who asked, what runs, who approves, and the commit.
    for needle in [
        ALICE,
        "st2-flow.flow_deploy",
        "packs.install",
        "branch: main",
        "group ops",
        &repo.head(),
        &id,
        "Expires in 10m",
    ] {
        assert!(
            p.body.contains(needle),
            "prompt lacks {needle:?}:\n{}",
            p.body
        );
    }
    // Alice cannot approve her own request.
    let own = bot.reply(ALICE, OPS, &p.event_id, "yes");
    assert!(
        bodies(&own).contains("someone else must approve"),
        "{}",
        bodies(&own)
    );
    // Bob can; the pack is installed at the shown commit.
    let done = bot.reply(BOB, OPS, &p.event_id, "yes");
    let all = bodies(&done);
    let req = bot.engine.requests().get(&id).unwrap().unwrap();
    assert_eq!(
        req.state,
        airlock::requests::State::Succeeded,
        "{:?}",
        req.summary
    );
    assert!(all.contains("Deploying flow ... standby ..."), "{all}");
    assert!(all.contains("Successfully deployed flow"), "{all}");
    let rec = bot.packs.record("st2-flow").expect("installed");
    assert_eq!(rec.current.commit, repo.head());
    // The pack's own alias answers at once.
    let status = bot.say(ALICE, OPS, "!st2-flow status");
    assert!(
        bodies(&status).contains("st2-flow v1 is live"),
        "{}",
        bodies(&status)
    );
    let events = bot.audit_events();
    for e in [
        "received",
        "matched",
        "allowed",
        "confirmation_requested",
        "approval_refused",
        "approval",
        "started",
        "finished",
    ] {
        assert!(events.iter().any(|x| x == e), "audit lacks {e}: {events:?}");
    }
}

#[test]
fn mallory_may_only_ask_for_help() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let help = bodies(&bot.say(MALLORY, OPS, "!help"));
    assert!(help.contains("no commands you may run"), "{help}");
    assert!(!help.contains("flow deploy"), "{help}");
    let r = bodies(&bot.say(MALLORY, OPS, "!flow deploy main"));
    assert!(
        r.contains("Refused") && r.contains("deny by default"),
        "{r}"
    );
    let r = bodies(&bot.say(MALLORY, OPS, "!pending"));
    assert!(r.contains("Refused"), "{r}");
    // Alice's help lists what she may run here, and only here.
    let help = bodies(&bot.say(ALICE, OPS, "!help"));
    assert!(
        help.contains("!flow deploy {{ branch }}") && help.contains("!pending"),
        "{help}"
    );
    let elsewhere = bodies(&bot.say(ALICE, "!random:example.org", "!help"));
    assert!(!elsewhere.contains("flow deploy"), "{elsewhere}");
}

#[test]
fn overriding_a_pinned_default_is_refused_naming_the_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let r = bodies(&bot.say(
        ALICE,
        OPS,
        "!flow deploy main repo_url=git@evil.example:x/y",
    ));
    assert!(
        r.contains("Refused") && r.contains("repo_url=git@evil.example:x/y"),
        "{r}"
    );
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy main packs=other"));
    assert!(r.contains("packs=other"), "{r}");
    // The policy's pattern lets dots and slashes through; git's ref rules
    // still stop a traversal before anything is fetched.
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy ../../etc"));
    assert!(r.contains("\"../../etc\" is not a valid git branch"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy $(rm -rf ~)"));
    assert!(r.contains("Refused") && r.contains("branch"), "{r}");
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());
}

#[test]
fn deny_by_default_and_deny_beats_allow() {
    let tmp = tempfile::tempdir().unwrap();
    let aliases = tmp.path().join("aliases");
    std::fs::create_dir_all(&aliases).unwrap();
    std::fs::write(aliases.join("say.yaml"), ECHO_ALIAS).unwrap();
    let (mut_bot, _r) = (
        {
            let pol = tmp.path().join("p.yaml");
            std::fs::write(
                &pol,
                "rules:\n  - id: everyone-says\n    effect: allow\n    users: ['@*:example.org']\n    aliases: [demo.say]\n  - id: not-bob\n    effect: deny\n    users: ['@bob:example.org']\n    aliases: ['demo.*']\n",
            )
            .unwrap();
            let mut s = settings(tmp.path(), &pol, None);
            s.aliases = vec![aliases.clone()];
            Bot::open(s)
        },
        (),
    );
    let bot = mut_bot;
    let r = bodies(&bot.say(ALICE, OPS, "!say hi"));
    assert!(
        r.contains("Action core.echo succeeded") && r.contains("stdout: hi"),
        "{r}"
    );
    let r = bodies(&bot.say(BOB, OPS, "!say hi"));
    assert!(r.contains("denied by rule not-bob"), "{r}");
    // Glob anchoring: a longer server name is not the same server.
    let r = bodies(&bot.say("@alice:example.org.evil", OPS, "!say hi"));
    assert!(r.contains("deny by default"), "{r}");
    let r = bodies(&bot.say("@eve:evil.org", OPS, "!say hi"));
    assert!(r.contains("deny by default"), "{r}");
}

const TWO_APPROVALS: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org", "@carol:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm:
      approvers: {groups: [ops]}
      approvals: 2
      expires: 2s
  - id: tools
    effect: allow
    groups: [ops]
    builtins: ["*"]
"#;

#[test]
fn n_distinct_approvals_the_same_approver_counts_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), TWO_APPROVALS);
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(p.body.contains("Needs 2 approvals"), "{}", p.body);
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("Approval 1 of 2"), "{r}");
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "approve"));
    assert!(r.contains("already approved"), "{r}");
    assert!(bot.packs.record("st2-flow").is_none());
    let r = bodies(&bot.reply(CAROL, OPS, &p.event_id, "yes"));
    assert!(r.contains("Successfully deployed flow"), "{r}");
}

#[test]
fn expiry_is_announced_and_late_approvals_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), TWO_APPROVALS);
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let id = p.prompt_for.clone().unwrap();
    // Nothing expires early.
    assert!(bot.engine.tick(bot.now()).is_empty());
    let fx = bot.engine.tick(bot.now() + 3_000);
    let sent = bot.play(fx);
    assert!(
        bodies(&sent).contains(&format!("Request {id}")) && bodies(&sent).contains("expired"),
        "{}",
        bodies(&sent)
    );
    assert_eq!(
        sent[0].reply_to.as_deref(),
        Some(p.event_id.as_str()),
        "announced on the prompt"
    );
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("already expired"), "{r}");
    assert!(bot.audit_events().contains(&"expired".to_string()));
}

#[test]
fn expiry_is_checked_at_approval_time_too() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), TWO_APPROVALS);
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    bot.advance(2_100);
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("expired before it was approved"), "{r}");
}

const ONE_APPROVAL: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org", "@carol:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm:
      approvers: {groups: [ops]}
"#;

#[test]
fn concurrent_approvals_run_the_action_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), ONE_APPROVAL);
    let bot = Arc::new(bot);
    for round in 0..8 {
        let p = prompt(&bot.say(
            ALICE,
            OPS,
            &format!("!flow deploy main{}", if round % 2 == 0 { "" } else { " " }),
        ))
        .clone();
        let id = p.prompt_for.clone().unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [BOB, CAROL]
            .into_iter()
            .map(|who| {
                let bot = bot.clone();
                let barrier = barrier.clone();
                let parent = p.event_id.clone();
                std::thread::spawn(move || {
                    let mut m = bot.message(who, OPS, "yes");
                    m.reply_to = Some(parent);
                    barrier.wait();
                    bot.engine.handle(&m, bot.now())
                })
            })
            .collect();
        let effects: Vec<Effect> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let executes: Vec<&Effect> = effects
            .iter()
            .filter(|e| matches!(e, Effect::Execute(_)))
            .collect();
        assert_eq!(executes.len(), 1, "round {round}: {effects:#?}");
        // Even if a transport asked twice at once, it runs once.
        let b1 = bot.clone();
        let b2 = bot.clone();
        let (i1, i2) = (id.clone(), id.clone());
        let t1 = std::thread::spawn(move || b1.engine.execute(&i1, || b1.now()));
        let t2 = std::thread::spawn(move || b2.engine.execute(&i2, || b2.now()));
        let ran = [t1.join().unwrap(), t2.join().unwrap()]
            .iter()
            .filter(|fx| !fx.is_empty())
            .count();
        assert_eq!(ran, 1, "round {round}");
        let started = bot
            .engine
            .audit_log()
            .query(&airlock::audit::Query {
                request: Some(id.clone()),
                event: Some("started".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(started.len(), 1);
    }
}

const SELF_APPROVE: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: deploy-anyone-in-ops
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    rooms: ["!ops:example.org"]
"#;

#[test]
fn without_named_approvers_the_requester_may_confirm() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = with_policy(tmp.path(), SELF_APPROVE);
    // packs.install needs confirmation although the rule says nothing.
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(p.body.contains("including the requester"), "{}", p.body);
    // Mallory is not allowed to run it, so cannot approve it.
    let r = bodies(&bot.reply(MALLORY, OPS, &p.event_id, "yes"));
    assert!(r.contains("cannot approve"), "{r}");
    let r = bodies(&bot.reply(ALICE, OPS, &p.event_id, "yes"));
    assert!(r.contains("Successfully deployed flow"), "{r}");
    assert_eq!(
        bot.packs.record("st2-flow").unwrap().current.commit,
        repo.head()
    );
}

#[test]
fn quoted_yes_in_a_reply_elsewhere_approves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let other = bot.say(ALICE, OPS, "!pending");
    // A reply to another message whose text quotes "yes".
    let r = bot.reply(
        BOB,
        OPS,
        &other[0].event_id,
        "> <@alice:example.org> yes\n\nyes",
    );
    assert!(r.is_empty(), "{r:?}");
    // The same words as a plain message do nothing either.
    assert!(bot.say(BOB, OPS, "yes").is_empty());
    // An approval from another room is refused even with the id.
    let r = bodies(&bot.say(
        BOB,
        "!other:example.org",
        &format!("!approve {}", p.prompt_for.as_ref().unwrap()),
    ));
    assert!(r.contains("another room"), "{r}");
    assert_eq!(
        bot.engine.requests().open_requests().unwrap()[0].state,
        airlock::requests::State::Pending
    );
}

#[test]
fn edits_never_run_and_say_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let orig = bot.event_id();
    let edit = |body: &str| {
        let mut m = bot.message(ALICE, OPS, body);
        m.kind = Kind::Edit;
        m.relates_to = Some(orig.clone());
        bot.deliver(m)
    };
    let first = edit("!flow deploy main");
    assert!(
        bodies(&first).contains("Edited messages never run"),
        "{}",
        bodies(&first)
    );
    assert!(edit("!flow deploy other").is_empty());
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());
    // Editing a reply into "yes" approves nothing.
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let mut m = bot.message(BOB, OPS, "yes");
    m.kind = Kind::Edit;
    m.reply_to = Some(p.event_id.clone());
    m.relates_to = Some("$earlier".into());
    bot.deliver(m);
    assert_eq!(
        bot.engine.requests().open_requests().unwrap()[0].state,
        airlock::requests::State::Pending
    );
}

#[test]
fn stale_commands_are_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let mut m = bot.message(ALICE, OPS, "!flow deploy main");
    m.ts_ms -= 10 * 60 * 1000;
    let r = bodies(&bot.deliver(m));
    assert!(r.contains("Not acting on your command from 10m ago"), "{r}");
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());
}

#[test]
fn cancel_by_requester_only_and_pending_lists_open_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let id = p.prompt_for.clone().unwrap();
    let r = bodies(&bot.say(BOB, OPS, "!pending"));
    assert!(
        r.contains(&id) && r.contains("0/1 approvals") && r.contains("branch=main"),
        "{r}"
    );
    // A command sent as a reply to the prompt is still a command.
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "!pending"));
    assert!(r.contains("Open requests"), "{r}");
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "hmm, which branch?"));
    assert!(r.contains("Reply \"yes\" to approve"), "{r}");
    let r = bodies(&bot.say(BOB, OPS, &format!("!cancel {id}")));
    assert!(r.contains("only the requester"), "{r}");
    let r = bodies(&bot.reply(ALICE, OPS, &p.event_id, "cancel"));
    assert!(r.contains("was cancelled by @alice:example.org"), "{r}");
    assert!(bodies(&bot.say(BOB, OPS, "!pending")).contains("No open requests"));
}

#[test]
fn an_alias_for_an_action_airlock_lacks_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = with_aliases(
        tmp.path(),
        &[(
            "remote.yaml",
            "name: remote_shell_cmd\npack: examples\naction_ref: core.remote\nformats:\n  - \"run {{cmd}} on {{hosts}}\"\n",
        )],
        "rules:\n  - id: all\n    effect: allow\n    users: ['*']\n    packs: ['*']\n",
    );
    let r = bodies(&bot.say(ALICE, OPS, "!run date on localhost"));
    assert!(
        r.contains("action core.remote is not available in airlock"),
        "{r}"
    );
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());
}

#[test]
fn restart_keeps_pending_requests_and_interrupts_running_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    repo.branch("other");
    let s = settings(tmp.path(), &repo_root().join("policies"), Some(&repo.path));
    let (pending_prompt, running_id, expires) = {
        let bot = Bot::open(s.clone());
        let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
        let id = p.prompt_for.clone().unwrap();
        let expires = bot
            .engine
            .requests()
            .get(&id)
            .unwrap()
            .unwrap()
            .confirmation
            .unwrap()
            .expires_ms;
        // A second request, approved and started when the process "dies".
        let p2 = prompt(&bot.say(ALICE, OPS, "!flow deploy other")).clone();
        let fx = bot.engine.handle(
            &{
                let mut m = bot.message(BOB, OPS, "yes");
                m.reply_to = Some(p2.event_id.clone());
                m
            },
            bot.now(),
        );
        let run_id = fx
            .iter()
            .find_map(|e| {
                if let Effect::Execute(id) = e {
                    Some(id.clone())
                } else {
                    None
                }
            })
            .unwrap();
        bot.engine
            .requests()
            .update(&run_id, |r| {
                r.state = airlock::requests::State::Running;
                Ok(())
            })
            .unwrap();
        (p, run_id, expires)
    };
    let bot = Bot::open(s);
    let running = bot.engine.requests().get(&running_id).unwrap().unwrap();
    assert_eq!(running.state, airlock::requests::State::Interrupted);
    let notices = bot.play(bot.engine.take_startup_effects());
    assert!(
        bodies(&notices).contains("was not re-run"),
        "{}",
        bodies(&notices)
    );
    // Interrupted requests cannot be started again.
    assert!(bot.engine.execute(&running_id, || bot.now()).is_empty());
    let pending = bot
        .engine
        .requests()
        .get(pending_prompt.prompt_for.as_ref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(pending.state, airlock::requests::State::Pending);
    assert_eq!(
        pending.confirmation.unwrap().expires_ms,
        expires,
        "keeps its expiry"
    );
    // The prompt still works after the restart, and runs once.
    let r = bodies(&bot.reply(BOB, OPS, &pending_prompt.event_id, "yes"));
    assert!(r.contains("Successfully deployed flow"), "{r}");
    let again = bot.reply(BOB, OPS, &pending_prompt.event_id, "yes");
    assert!(
        bodies(&again).contains("already succeeded"),
        "{}",
        bodies(&again)
    );
    assert!(bot.audit_events().contains(&"interrupted".to_string()));
}

#[test]
fn audit_chain_detects_altered_and_removed_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let s = {
        let (bot, _repo) = shipped_on_disk(tmp.path());
        bot.say(ALICE, OPS, "!help");
        bot.say(MALLORY, OPS, "!flow deploy main");
        bot.say(ALICE, OPS, "!pending");
        let v = bot.engine.audit_log().verify().unwrap();
        assert!(v.ok(), "{:?}", v.problems);
        assert!(v.entries >= 6);
        tmp.path().join("data/airlock.sled")
    };
    let db = open_db(&s);
    let log = airlock::audit::AuditLog::open(&db).unwrap();
    use airlock::audit::edit_stored;
    // Alter: mallory becomes alice in entry 4.
    let mut old = None;
    edit_stored(&db, 4, |b| {
        old = b.map(<[u8]>::to_vec);
        let text = String::from_utf8(old.clone().unwrap()).unwrap();
        Some(text.replace("mallory", "alice").into_bytes())
    })
    .unwrap();
    let v = log.verify().unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("entry 4") && p.contains("altered")),
        "{:?}",
        v.problems
    );
    edit_stored(&db, 4, |_| old).unwrap();
    assert!(log.verify().unwrap().ok());
    // Remove: a gap in the middle, then the last entry.
    edit_stored(&db, 2, |_| None).unwrap();
    let v = log.verify().unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("missing")),
        "{:?}",
        v.problems
    );
    let last = v.entries + 1;
    edit_stored(&db, last, |_| None).unwrap();
    let v = log.verify().unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("head record")),
        "{:?}",
        v.problems
    );
}

#[test]
fn audit_queries_by_user_and_alias_use_the_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    bot.reply(BOB, OPS, &p.event_id, "yes");
    bot.say(MALLORY, OPS, "!flow deploy main");
    let log = bot.engine.audit_log();
    let q = |q: airlock::audit::Query| log.query(&q).unwrap();
    let mallory = q(airlock::audit::Query {
        user: Some(MALLORY.into()),
        ..Default::default()
    });
    assert!(!mallory.is_empty() && mallory.iter().all(|e| e.sender.as_deref() == Some(MALLORY)));
    let denied = q(airlock::audit::Query {
        status: Some("denied".into()),
        ..Default::default()
    });
    assert_eq!(denied.len(), 1);
    let deploys = q(airlock::audit::Query {
        alias: Some("st2-flow.flow_deploy".into()),
        event: Some("finished".into()),
        ..Default::default()
    });
    assert_eq!(deploys.len(), 1);
    assert!(deploys[0].details()["commit"].as_str().unwrap().len() == 40);
    let r = bodies(&bot.say(ALICE, OPS, "!audit who deployed st2-flow"));
    assert!(
        r.contains("deployed st2-flow by @alice:example.org (approved by @bob:example.org)"),
        "{r}"
    );
    let r = bodies(&bot.say(ALICE, OPS, "!audit 5"));
    assert!(r.contains("Last 5 audit entries"), "{r}");
    let r = bodies(&bot.say(MALLORY, OPS, "!audit"));
    assert!(r.contains("Refused"), "{r}");
}

/// st2's `extra.security.twofactor: true` on an alias asks for a second
/// person even where the rule asks for no confirmation.
#[test]
fn an_st2_twofactor_alias_asks_a_second_person() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = with_aliases(
        tmp.path(),
        &[
            (
                "restart.yaml",
                "name: restart\npack: ops\naction_ref: core.echo\nformats:\n  - \"restart {{ message }}\"\nextra:\n  security:\n    twofactor: true\n",
            ),
            (
                "status.yaml",
                "name: status\npack: ops\naction_ref: core.echo\nformats:\n  - \"status {{ message }}\"\n",
            ),
        ],
        "groups:\n  ops: ['@alice:example.org', '@bob:example.org']\nrules:\n  - id: ops\n    effect: allow\n    groups: [ops]\n    packs: [ops]\n",
    );
    // Without the flag, the rule's "no confirmation" stands.
    let r = bodies(&bot.say(ALICE, OPS, "!status web"));
    assert!(!r.contains("Confirmation needed"), "{r}");
    let p = prompt(&bot.say(ALICE, OPS, "!restart web")).clone();
    assert!(p.body.contains("Needs 1 approval"), "{}", p.body);
    let r = bodies(&bot.reply(ALICE, OPS, &p.event_id, "yes"));
    assert!(r.contains("someone else must approve it"), "{r}");
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("web"), "{r}");
    assert!(bot.audit_events().contains(&"finished".to_string()));
}

/// A quorum across groups: one from ops and one from security, each person
/// counting once, for one part only; the prompt and answers say where it
/// stands.
#[test]
fn a_quorum_needs_one_approval_from_each_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = with_policy(
        tmp.path(),
        r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org", "@mallory:example.org"]
  security: ["@carol:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm:
      quorum:
        - {groups: [ops], approvals: 1}
        - {groups: [security], approvals: 1}
  - id: tools
    effect: allow
    groups: [ops]
    builtins: [pending]
"#,
    );
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(
        p.body
            .contains("Needs 1 from group ops and 1 from group security — not the requester"),
        "{}",
        p.body
    );
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(
        r.contains("Approval 1 of 2")
            && r.contains("(group ops)")
            && r.contains("Still needed: 1 from group security"),
        "{r}"
    );
    let r = bodies(&bot.say(ALICE, OPS, "!pending"));
    assert!(
        r.contains("1/2 approvals so far: @bob:example.org (group ops); still needed: 1 from group security"),
        "{r}"
    );
    // A second ops member adds nothing.
    let r = bodies(&bot.reply(MALLORY, OPS, &p.event_id, "yes"));
    assert!(
        r.contains("your part of the quorum is complete; still needed: 1 from group security"),
        "{r}"
    );
    assert!(bot.packs.record("st2-flow").is_none());
    bodies(&bot.reply(CAROL, OPS, &p.event_id, "yes"));
    assert_eq!(
        bot.packs.record("st2-flow").unwrap().current.commit,
        repo.head()
    );
}

const FREEZE_POLICY: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: no-friday-deploys
    effect: deny
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    when:
      timezone: Europe/Berlin
      days: [fri]
      hours: "16:00-24:00"
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm:
      approvers: {groups: [ops]}
      self_approve: false
      expires: 2h
  - id: tools
    effect: allow
    groups: [ops]
    builtins: [pending]
"#;

/// A Friday freeze: refused inside it with the window and when it lifts,
/// allowed outside it.
#[test]
fn a_friday_freeze_refuses_and_says_when_it_lifts() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), FREEZE_POLICY);
    // 2026-12-04 is a Friday; 15:30 UTC is 16:30 in Berlin.
    bot.set_time("2026-12-04T15:30:00Z");
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy main"));
    assert!(
        r.contains(
            "Refused: denied by rule no-friday-deploys (in force Fri 16:00–24:00 Europe/Berlin, \
             until Sat 2026-12-05 00:00 Europe/Berlin)"
        ),
        "{r}"
    );
    // Thursday afternoon it asks for approval as usual.
    bot.set_time("2026-12-03T14:00:00Z");
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(p.body.contains("Confirmation needed"), "{}", p.body);
}

/// Approved inside the window, but it would start outside it: it does not
/// start, and the room is told why.
#[test]
fn an_approval_given_before_a_freeze_does_not_start_a_run_inside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), FREEZE_POLICY);
    bot.set_time("2026-12-04T14:50:00Z"); // Friday 15:50 in Berlin
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    bot.advance(20 * 60 * 1000); // 16:10: the freeze has begun
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(
        r.contains("will not start: denied by rule no-friday-deploys (in force Fri 16:00–24:00"),
        "{r}"
    );
    assert!(bot.packs.record("st2-flow").is_none(), "nothing installed");
    let events = bot.audit_events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("denied"),
        "{events:?}"
    );
    assert!(!events.contains(&"started".to_string()), "{events:?}");
    let id = request_id(&p.body);
    let r = bodies(&bot.say(ALICE, OPS, &format!("!status {id}")));
    assert!(r.contains("refused"), "{r}");
}

/// An allow rule with business hours: outside them the refusal names the
/// rule, its hours and when they open.
#[test]
fn business_hours_say_when_they_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(
        tmp.path(),
        r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: office-hours
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    when: {days: [mon-fri], hours: "09:00-17:00", timezone: UTC}
    confirm: {approvers: {groups: [ops]}}
"#,
    );
    bot.set_time("2026-12-05T10:00:00Z"); // Saturday
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy main"));
    assert!(
        r.contains(
            "rule office-hours allows st2-flow.flow_deploy (packs.install) only Mon–Fri \
             09:00–17:00 UTC; it opens Mon 2026-12-07 09:00 UTC"
        ),
        "{r}"
    );
    bot.set_time("2026-12-07T09:00:00Z");
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(p.body.contains("Confirmation needed"), "{}", p.body);
}

const AUDIT_ROOM: &str = "!audit:example.org";

/// Break-glass: only whom the rule names, only with a reason; it runs at
/// once, is announced in its room and the audit room, and stays flagged
/// until someone else reviews it.
#[test]
fn break_glass_runs_at_once_and_stays_flagged_until_someone_else_reviews_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(
        &pol,
        r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
  oncall: ["@alice:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm: {approvers: {groups: [ops]}, self_approve: false}
    break_glass: {groups: [oncall]}
  - id: tools
    effect: allow
    groups: [ops]
    builtins: [pending, audit, review]
"#,
    )
    .unwrap();
    let mut s = settings(tmp.path(), &pol, Some(&repo.path));
    s.audit_room = Some(AUDIT_ROOM.into());
    let bot = Bot::open(s);

    // Bob is in ops but not on call: the rule does not let him.
    let r = bodies(&bot.say(BOB, OPS, "!flow deploy main --break-glass \"prod is down\""));
    assert!(
        r.contains("rule deploy does not let @bob:example.org break glass"),
        "{r}"
    );
    // A reason is required.
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy main --break-glass"));
    assert!(r.contains("Break-glass needs a reason"), "{r}");
    assert!(bot.packs.record("st2-flow").is_none());

    let sent = bot.say(
        ALICE,
        OPS,
        "!flow deploy main --break-glass \"prod is down\"",
    );
    let r = bodies(&sent);
    assert!(!r.contains("Confirmation needed"), "{r}");
    assert!(
        r.contains("🚨 Break-glass: @alice:example.org runs st2-flow.flow_deploy (packs.install) without approval under rule deploy. Reason: “prod is down”."),
        "{r}"
    );
    assert!(
        sent.iter().any(|m| m.room == AUDIT_ROOM
            && m.body.contains("Break-glass")
            && m.body.contains(OPS)),
        "announced in the audit room: {sent:?}"
    );
    assert_eq!(
        bot.packs.record("st2-flow").unwrap().current.commit,
        repo.head(),
        "it ran at once"
    );
    let events = bot.audit_events();
    assert!(events.contains(&"break_glass".to_string()), "{events:?}");
    let id = request_id(&r);

    let r = bodies(&bot.say(BOB, OPS, "!audit unreviewed"));
    assert!(r.contains(&id) && r.contains("“prod is down”"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, &format!("!review {id}")));
    assert!(r.contains("you ran it; someone else must review it"), "{r}");
    let r = bodies(&bot.say(BOB, AUDIT_ROOM, &format!("!review {id} checked the diff")));
    assert!(r.contains("reviewed by @bob:example.org"), "{r}");
    let r = bodies(&bot.say(BOB, OPS, &format!("!review {id}")));
    assert!(r.contains("@bob:example.org reviewed it already"), "{r}");
    let r = bodies(&bot.say(BOB, OPS, "!audit unreviewed"));
    assert!(r.contains("No unreviewed break-glass runs"), "{r}");
    assert_eq!(bot.audit_events().last().map(String::as_str), Some("audit"),);
    assert!(bot.audit_events().contains(&"reviewed".to_string()));
}

const REAPPROVAL_POLICY: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org", "@carol:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm: {approvers: {groups: [ops]}, approvals: 2, self_approve: false}
"#;

/// The policy changes under a pending request: the approvals given no
/// longer count, the room is told and asked again; when the rule is gone,
/// the request ends refused.
#[test]
fn a_policy_reload_voids_the_approvals_of_pending_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = with_policy(tmp.path(), REAPPROVAL_POLICY);
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("Approval 1 of 2"), "{r}");

    // Reloading the same policy changes nothing.
    let fx = bot.engine.reload(bot.now()).expect("policy loads");
    assert!(bot.play(fx).is_empty());

    // Now security must approve too.
    std::fs::write(
        tmp.path().join("policy.yaml"),
        REAPPROVAL_POLICY.replace(
            "confirm: {approvers: {groups: [ops]}, approvals: 2, self_approve: false}",
            "confirm: {quorum: [{groups: [ops]}, {users: [\"@mallory:example.org\"]}]}",
        ),
    )
    .unwrap();
    let sent = bot.play(bot.engine.reload(bot.now()).expect("policy loads"));
    let again = prompt(&sent).clone();
    assert!(
        again
            .body
            .starts_with("♻️ rule deploy changed since request"),
        "{}",
        again.body
    );
    assert!(
        again
            .body
            .contains("so the approvals given (@bob:example.org) no longer count")
            && again
                .body
                .contains("Needs 1 from group ops and 1 from @mallory:example.org"),
        "{}",
        again.body
    );
    // Bob's earlier approval is gone: his new one counts as the first.
    let r = bodies(&bot.reply(BOB, OPS, &again.event_id, "yes"));
    assert!(r.contains("Approval 1 of 2"), "{r}");
    assert!(bot.packs.record("st2-flow").is_none());

    // The rule disappears: the request can no longer run.
    std::fs::write(
        tmp.path().join("policy.yaml"),
        REAPPROVAL_POLICY.replace("id: deploy", "id: deploy-v2"),
    )
    .unwrap();
    let r = bodies(&bot.play(bot.engine.reload(bot.now()).expect("policy loads")));
    assert!(
        r.contains("will not run: rule deploy changed and rule deploy is gone from the policy"),
        "{r}"
    );
    let r = bodies(&bot.reply(MALLORY, OPS, &again.event_id, "yes"));
    assert!(r.contains("it is already refused"), "{r}");
    assert!(bot.packs.record("st2-flow").is_none());
}

/// `verified_devices`: an approval counts only from a device its owner
/// has cross-signed; from any other device, or unencrypted, it is refused
/// and says why. (The Synapse test drives this with real devices.)
#[test]
fn verified_devices_count_only_cross_signed_approvals() {
    use airlock::engine::Device;
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = with_policy(
        tmp.path(),
        r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm: {approvers: {groups: [ops]}, self_approve: false, verified_devices: true}
"#,
    );
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(
        p.body
            .contains("not the requester, from cross-signed devices only"),
        "{}",
        p.body
    );
    let answer = |device: Device| {
        let mut m = bot.message(BOB, OPS, "yes");
        m.reply_to = Some(p.event_id.clone());
        m.device = device;
        bodies(&bot.deliver(m))
    };
    let r = answer(Device::NotCrossSigned("STOLENTOKEN".into()));
    assert!(
        r.contains(
            "your answer came from device STOLENTOKEN, which @bob:example.org has not cross-signed"
        ),
        "{r}"
    );
    let r = answer(Device::Unknown);
    assert!(r.contains("this answer was not encrypted"), "{r}");
    assert!(bot.packs.record("st2-flow").is_none());
    let events = bot.audit_events();
    assert_eq!(
        events.iter().filter(|e| *e == "approval_refused").count(),
        2,
        "{events:?}"
    );
    let r = answer(Device::CrossSigned("BOBSLAPTOP".into()));
    assert!(r.contains("Successfully deployed flow"), "{r}");
    assert_eq!(
        bot.packs.record("st2-flow").unwrap().current.commit,
        repo.head()
    );
}

/// The alias of a pending request changes (what it fixes, not its
/// messages): the approvals given no longer count. A change to its result
/// message alone changes nothing.
#[test]
fn an_alias_change_voids_approvals_but_a_message_change_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let restart = |target: &str, result: &str| {
        format!(
            "name: restart\npack: ops\naction_ref: core.echo\nformats:\n  - \"restart\"\nimmutable_parameters:\n  message: \"{target}\"\nresult:\n  format: \"{result}\"\n"
        )
    };
    let bot = with_aliases(
        tmp.path(),
        &[("restart.yaml", &restart("web", "done"))],
        "groups:\n  ops: ['@alice:example.org', '@bob:example.org', '@carol:example.org']\nrules:\n  - id: ops\n    effect: allow\n    groups: [ops]\n    packs: [ops]\n    confirm: {approvers: {groups: [ops]}, approvals: 2, self_approve: false}\n",
    );
    let write =
        |text: String| std::fs::write(tmp.path().join("aliases/restart.yaml"), text).unwrap();
    let p = prompt(&bot.say(ALICE, OPS, "!restart")).clone();
    bot.reply(BOB, OPS, &p.event_id, "yes");
    write(restart("web", "restarted {{ execution.result.stdout }}"));
    assert!(bot.play(bot.engine.reload(bot.now()).unwrap()).is_empty());
    write(restart("db", "done"));
    let again = prompt(&bot.play(bot.engine.reload(bot.now()).unwrap())).clone();
    assert!(
        again
            .body
            .starts_with("♻️ alias ops.restart changed since request")
            && again.body.contains("(@bob:example.org) no longer count"),
        "{}",
        again.body
    );
}

/// Status reactions: 👀 only when nothing answers at once (an ack already
/// says the command was seen, and a reaction first would hold it up); ⏳
/// on a prompt; ✅ when it ran.
#[test]
fn seen_is_said_once_and_only_when_nothing_answers_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = "rules:\n  - id: all\n    effect: allow\n    users: [\"@alice:example.org\"]\n    packs: [t]\n";
    let bot = with_aliases(
        tmp.path(),
        &[
            (
                "acked.yaml",
                "name: acked\npack: t\naction_ref: core.noop\nformats: ['acked']\nack:\n  format: on it\nresult:\n  enabled: false\n",
            ),
            (
                "quiet.yaml",
                "name: quiet\npack: t\naction_ref: core.noop\nformats: ['quiet']\nack:\n  enabled: false\nresult:\n  enabled: false\n",
            ),
        ],
        policy,
    );
    let keys = |event: &str| -> Vec<&'static str> {
        bot.reactions
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, k)| *k)
            .collect()
    };
    let (acked, sent) = bot.say_with_id(ALICE, OPS, "!acked");
    assert!(bodies(&sent).contains("on it"), "{}", bodies(&sent));
    assert_eq!(keys(&acked), ["✅"]);
    let (quiet, sent) = bot.say_with_id(ALICE, OPS, "!quiet");
    assert!(bodies(&sent).is_empty(), "{}", bodies(&sent));
    assert_eq!(keys(&quiet), ["👀", "✅"]);
}

/// A closed request leaves the store `requests.keep` (30 days) after it
/// closed; `!status`, `!audit who deployed` and `airlock audit --request`
/// answer for it from the audit log, and its prompt no longer approves.
#[test]
fn a_request_gone_from_the_store_is_still_answered_from_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = shipped(tmp.path());
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let id = p.prompt_for.clone().unwrap();
    bot.reply(BOB, OPS, &p.event_id, "yes");
    let before = bodies(&bot.say(ALICE, OPS, &format!("!status {id}")));
    assert!(before.contains("succeeded"), "{before}");
    bot.advance(29 * 86_400_000);
    bot.engine.tick(bot.now());
    assert!(bot.engine.requests().get(&id).unwrap().is_some());
    bot.advance(2 * 86_400_000);
    bot.engine.tick(bot.now());
    assert_eq!(bot.engine.requests().get(&id).unwrap(), None);
    let after = bodies(&bot.say(ALICE, OPS, &format!("!status {id}")));
    for needle in [
        id.as_str(),
        "succeeded",
        "st2-flow.flow_deploy",
        ALICE,
        "no longer kept",
    ] {
        assert!(after.contains(needle), "lacks {needle}: {after}");
    }
    // Only in the room it was asked in.
    let elsewhere = bodies(&bot.say(ALICE, "!elsewhere:example.org", &format!("!status {id}")));
    assert!(!elsewhere.contains("succeeded"), "{elsewhere}");
    let who = bodies(&bot.say(ALICE, OPS, "!audit who deployed st2-flow"));
    assert!(
        who.contains(&format!(
            "by {ALICE} (approved by {BOB}) at {}",
            repo.head()
        )),
        "{who}"
    );
    // Its prompt answers nothing now.
    let late = bodies(&bot.reply(CAROL, OPS, &p.event_id, "yes"));
    assert!(!late.contains("approv"), "{late}");
}
