//! A rule's plan, through the example pack's deploy run in-process: a dry
//! run before the prompt, its output shown to approvers and kept whole in
//! `!status` and the audit; a failing plan refuses the request; a plan
//! against another action of the pack; a secret in its output masked.

mod common;

use std::path::Path;

use common::*;

const SECRET: &str = "s3cr3t-t0ken-value";
const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const OPS: &str = "!ops:example.org";

fn open(dir: &Path, plan: &str) -> Bot {
    let pol = dir.join("policy.yaml");
    std::fs::write(
        &pol,
        format!(
            "groups:\n  ops: ['{ALICE}', '{BOB}']\nrules:\n  - id: deploys\n    effect: allow\n    groups: [ops]\n    aliases: [deploy_example.deploy]\n    extra_params: true\n    confirm:\n      approvers: {{groups: [ops]}}\n      approvals: 1\n    plan: {plan}\n  - id: tools\n    effect: allow\n    groups: [ops]\n    builtins: ['*']\n"
        ),
    )
    .unwrap();
    let configs = dir.join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    std::fs::write(
        configs.join("deploy_example.yaml"),
        format!("api_token: {SECRET}\n"),
    )
    .unwrap();
    let mut s = settings(dir, &pol, None);
    s.aliases = vec![repo_root().join("tests/packs")];
    s.runners.configs = configs;
    Bot::open(s)
}

#[test]
fn a_dry_run_plan_is_shown_to_approvers_and_kept_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = open(tmp.path(), "{parameters: {dry_run: true}}");
    let asked = bot.say(ALICE, OPS, "!deploy api 1.4.2 environment=staging");
    let p = prompt(&asked).clone();
    assert!(
        p.body.contains("📋 Its plan (deploy_example.deploy) shows"),
        "{}",
        p.body
    );
    // The dry run's own report: the same service and version, dry_run set.
    assert!(
        p.body.contains("\"dry_run\": \"true\"") || p.body.contains("\"dry_run\": true"),
        "{}",
        p.body
    );
    assert!(p.body.contains("\"service\": \"api\""), "{}", p.body);
    assert!(!p.body.contains(SECRET), "{}", p.body);
    let id = p.prompt_for.clone().unwrap();
    let status = bodies(&bot.say(ALICE, OPS, &format!("!status {id}")));
    assert!(
        status.contains("Its plan (deploy_example.deploy, succeeded, digest"),
        "{status}"
    );
    assert!(status.contains("\"version\": \"1.4.2\""), "{status}");
    // The audit's `planned` entry keeps the output and its digest.
    let planned = bot
        .engine
        .audit_log()
        .query(&airlock::audit::Query {
            request: Some(id.clone()),
            event: Some("planned".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(planned.len(), 1);
    let d = planned[0].details();
    assert_eq!(d["digest"].as_str().unwrap().len(), 64);
    assert!(!planned[0].details().to_string().contains(SECRET));
    // Approved: the real run, without dry_run.
    let done = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(done.contains("Deployed api 1.4.2 to staging"), "{done}");
}

#[test]
fn a_plan_that_fails_refuses_the_request_with_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    // A plan action the pack lacks: refused before any prompt.
    let bot = open(tmp.path(), "{action: deploy_example.nope}");
    let r = bodies(&bot.say(ALICE, OPS, "!deploy api 1.0"));
    assert!(
        r.contains("cannot run: its plan's action deploy_example.nope is not available"),
        "{r}"
    );
    assert!(!r.contains("Confirmation needed"), "{r}");
    let tmp = tempfile::tempdir().unwrap();
    let bot2 = open(tmp.path(), "{parameters: {environment: nowhere}}");
    let r = bodies(&bot2.say(ALICE, OPS, "!deploy api 1.0"));
    assert!(
        r.contains("its plan (deploy_example.deploy) cannot run"),
        "{r}"
    );
    assert!(r.contains("nowhere"), "{r}");
}

#[test]
fn a_plan_can_be_another_action_of_the_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = open(
        tmp.path(),
        "{action: deploy_example.say, parameters: {text: would deploy}}",
    );
    let p = prompt(&bot.say(ALICE, OPS, "!deploy api 2.0")).clone();
    assert!(
        p.body.contains("📋 Its plan (deploy_example.say) shows"),
        "{}",
        p.body
    );
    assert!(p.body.contains("  would deploy"), "{}", p.body);
}

#[test]
fn a_plan_past_its_time_bound_is_stopped_and_the_request_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = open(
        tmp.path(),
        "{action: deploy_example.sleep, parameters: {seconds: 30}, timeout: 1s}",
    );
    let r = bodies(&bot.say(ALICE, OPS, "!deploy api 1.0"));
    assert!(
        r.contains("its plan (deploy_example.sleep) failed")
            && r.contains("stopped after 1s: the plan's time bound"),
        "{r}"
    );
    assert!(!r.contains("Confirmation needed"), "{r}");
}
