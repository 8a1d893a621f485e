//! What a pack install changes, in its prompt before anyone approves:
//! forward with the commits and the diffstat, a rewind called one, a
//! force-push called sideways, and the range kept in the audit log. Real
//! git repositories, the shipped policy and aliases.

mod common;

use common::*;

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const OPS: &str = "!ops:example.org";

/// alice asks for `branch`, bob approves; the prompt's text.
fn deploy(bot: &Bot, branch: &str) -> String {
    let p = prompt(&bot.say(ALICE, OPS, &format!("!flow deploy {branch}"))).clone();
    let done = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(done.contains("Successfully deployed flow"), "{done}");
    p.body
}

#[test]
fn an_install_prompt_shows_the_range_forward_back_and_sideways() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = shipped(tmp.path());
    let first = deploy(&bot, "main");
    assert!(first.contains("st2-flow: not installed yet"), "{first}");
    let v1 = repo.head();
    repo.branch("v1");

    // Forward: two commits, listed newest first, with the diffstat.
    repo.write("actions/a.txt", "one\ntwo\n");
    repo.commit("add a\u{1b}[31m with\tcontrol characters");
    repo.write("actions/a.txt", "one\n");
    repo.write("actions/b.txt", "b\n");
    let v3 = repo.commit("trim a, add b");
    let forward = deploy(&bot, "main");
    let lines: Vec<&str> = forward.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.contains("2 commits forward from the live"))
        .unwrap_or_else(|| panic!("{forward}"));
    assert!(lines[head].contains(&v1[..12]), "{forward}");
    assert!(lines[head].contains("2 files changed, +2 −0"), "{forward}");
    assert!(
        lines[head + 1].contains(&v3[..12]) && lines[head + 1].contains("trim a, add b — tests")
    );
    assert!(
        lines[head + 2].contains("add a [31m with control characters"),
        "{forward}"
    );
    assert!(
        !forward.contains('\u{1b}'),
        "no control character reaches the prompt"
    );

    // Back to v1: a rewind, saying what it undoes.
    let back = deploy(&bot, "v1");
    assert!(
        back.contains(&format!(
            "⚠️ st2-flow: goes back 2 commits from the live {} (a rewind)",
            &v3[..12]
        )),
        "{back}"
    );
    assert!(back.contains("trim a, add b"), "{back}");

    // Sideways: main's two commits live, then a line of work beside them.
    repo.checkout("v1");
    repo.write("actions/c.txt", "c\n");
    repo.commit("another line of work");
    repo.branch("other");
    let side = deploy(&bot, "other");
    assert!(side.contains("1 commit forward from the live"), "{side}");
    deploy(&bot, "main");
    let sideways = {
        let p = prompt(&bot.say(ALICE, OPS, "!flow deploy other")).clone();
        p.body
    };
    assert!(
        sideways.contains(&format!(
            "⚠️ st2-flow: moves sideways from the live {}",
            &v3[..12]
        )) && sideways.contains("1 commit not live, 2 live commits dropped"),
        "{sideways}"
    );
    // The audit keeps what approvers were shown.
    let allowed = bot
        .engine
        .audit_log()
        .query(&airlock::audit::Query {
            event: Some("allowed".into()),
            ..Default::default()
        })
        .unwrap();
    let last = allowed.last().unwrap();
    let shown = last.details()["shown"].to_string();
    assert!(shown.contains("moves sideways"), "{shown}");
}

#[test]
fn redeploy_installs_the_commit_an_earlier_request_installed_after_the_branch_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = shipped(tmp.path());
    let v1 = repo.head();
    let first = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let first_id = first.prompt_for.clone().unwrap();
    bot.reply(BOB, OPS, &first.event_id, "yes");
    repo.write("actions/a.txt", "a\n");
    let v2 = repo.commit("v2");
    deploy(&bot, "main");

    let history = bodies(&bot.say(ALICE, OPS, "!deploys st2-flow"));
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines[1].contains(&format!("succeeded st2-flow.flow_deploy at {}", &v2[..12])),
        "{history}"
    );
    assert!(lines[2].starts_with(&first_id), "{history}");
    assert!(
        lines[2].contains(&format!("at {} by {ALICE}, approved by {BOB}", &v1[..12])),
        "{history}"
    );

    // Asked again: the same commit, though main has moved; the prompt
    // calls it a rewind and the policy asks for an approval as it does now.
    let asked = bot.say(ALICE, OPS, &format!("!redeploy {first_id}"));
    let text = bodies(&asked);
    assert!(
        text.contains(&format!(
            "↩️ Asks again for request {first_id} (st2-flow.flow_deploy, succeeded at"
        )) && text.contains(&format!("pinned to what it ran (branch={v1})")),
        "{text}"
    );
    let p = prompt(&asked).clone();
    assert!(p.body.contains(&format!("branch: {v1}")), "{}", p.body);
    assert!(
        p.body
            .contains(&format!("↩️ Asks again for request {first_id}")),
        "the prompt says what it repeats: {}",
        p.body
    );
    assert!(
        p.body.contains("goes back 1 commit from the live"),
        "{}",
        p.body
    );
    let done = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(done.contains("Successfully deployed flow"), "{done}");
    let list = bodies(&bot.say(ALICE, OPS, "!pack list"));
    assert!(
        list.contains(&v1[..12]) && !list.contains(&v2[..12]),
        "{list}"
    );

    // Another room's request answers as an unknown one does; an open one is refused.
    let elsewhere = bodies(&bot.say(
        ALICE,
        "!elsewhere:example.org",
        &format!("!redeploy {first_id}"),
    ));
    assert!(
        elsewhere.contains(&format!("There is no request \"{first_id}\" kept here")),
        "{elsewhere}"
    );
    let open = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let still = bodies(&bot.say(
        ALICE,
        OPS,
        &format!("!redeploy {}", open.prompt_for.unwrap()),
    ));
    assert!(still.contains("is still pending"), "{still}");
}
