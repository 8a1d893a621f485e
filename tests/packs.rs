//! packs.install and friends against real git repositories, served over
//! file:// and by `git daemon` on loopback.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock::engine::Effect;
use common::*;

/// `git daemon` serving every repository under `base` on a free port.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> Self {
        let port = free_port();
        let child = Command::new(git_daemon())
            .args([
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon (the git CLI) must be installed");
        wait_until("git daemon listening", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        });
        GitDaemon { child, port }
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OPEN_POLICY: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: ops-everything
    effect: allow
    groups: [ops]
    packs: ["*"]
    builtins: ["*"]
    confirm: false
"#;

const TEST_ALIASES: &[(&str, &str)] = &[(
    "deploy_any.yaml",
    "name: deploy_any\npack: tests\naction_ref: packs.install\nformats:\n  - \"deploy {{ packs }} now\"\n  - \"deploy {{ packs }} registering {{ register }}\"\n  - \"deploy {{ packs }} within {{ timeout }}\"\n",
)];

/// A bot with the permissive policy, the repo's aliases plus test ones.
fn open_bot(dir: &Path, seed: Option<&Path>, policy: &str) -> Bot {
    let aliases = dir.join("test-aliases");
    std::fs::create_dir_all(&aliases).unwrap();
    for (name, text) in TEST_ALIASES {
        std::fs::write(aliases.join(name), text).unwrap();
    }
    let pol = dir.join("policy.yaml");
    std::fs::write(&pol, policy).unwrap();
    let mut s = settings(dir, &pol, seed);
    s.aliases.push(aliases);
    Bot::open(s)
}

fn record(bot: &Bot, pack: &str) -> airlock::action::packs::PackRecord {
    bot.packs
        .record(pack)
        .unwrap_or_else(|| panic!("{pack} not installed"))
}

/// The second version of the test pack: its alias says v2.
fn make_v2(repo: &PackRepo) -> String {
    repo.write(
        "aliases/st2-flow_status.yaml",
        "---\nname: \"st2_flow_status\"\npack: \"st2-flow\"\naction_ref: \"core.echo\"\nformats:\n  - \"st2-flow status\"\nimmutable_parameters:\n  message: \"st2-flow v2 is live\"\nresult:\n  format: \"{{ execution.result.stdout }}\"\n",
    );
    repo.write("pack.yaml", "---\nname: st2-flow\nversion: 0.2.0\n");
    repo.commit("v2")
}

#[test]
fn installs_over_git_daemon_with_the_3x_parameter_set() {
    let tmp = tempfile::tempdir().unwrap();
    let repos = tmp.path().join("repos");
    let repo = PackRepo::new(&repos.join("st2-flow"), "st2-flow");
    let v1 = repo.head();
    repo.repo
        .tag_lightweight(
            "v1",
            &repo
                .repo
                .find_object(repo.repo.head().unwrap().target().unwrap(), None)
                .unwrap(),
            false,
        )
        .unwrap();
    make_v2(&repo);
    let daemon = GitDaemon::start(&repos);
    let bot = open_bot(tmp.path(), None, OPEN_POLICY);
    // `<url>=<ref>` in packs: the 3.x form, pinned to a tag.
    let r = bodies(&bot.say(
        ALICE,
        OPS,
        &format!("!deploy {}=v1 now", daemon.url("st2-flow")),
    ));
    assert!(r.contains("succeeded"), "{r}");
    let rec = record(&bot, "st2-flow");
    assert_eq!(rec.current.commit, v1);
    assert_eq!(rec.current.url, daemon.url("st2-flow"));
    assert_eq!(rec.current.reference.as_deref(), Some("v1"));
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("v1 is live"));
    // Unknown parameters are errors naming them.
    let r = bodies(&bot.say(
        ALICE,
        OPS,
        &format!("!deploy {} now colour=blue", daemon.url("st2-flow")),
    ));
    assert!(
        r.contains("unknown parameter for packs.install: colour"),
        "{r}"
    );
    // A pack list shows version, commit, who and when.
    let r = bodies(&bot.say(ALICE, OPS, "!pack list"));
    assert!(
        r.contains("st2-flow 0.1.0") && r.contains(&v1[..12]) && r.contains(ALICE),
        "{r}"
    );
}

#[test]
fn a_moved_branch_after_approval_still_installs_the_shown_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let repos = tmp.path().join("repos");
    let repo = PackRepo::new(&repos.join("st2-flow"), "st2-flow");
    let shown = repo.head();
    let daemon = GitDaemon::start(&repos);
    // The seed's URL, fetched from git daemon (git's insteadOf).
    let mut s = settings(tmp.path(), &repo_root().join("policies"), None);
    s.git.instead_of.push(airlock::action::packs::InsteadOf {
        from: SEED_URL.into(),
        to: daemon.url("st2-flow"),
    });
    let bot = Bot::open(s);
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(p.body.contains(&shown), "{}", p.body);
    let moved = make_v2(&repo);
    assert_ne!(moved, shown);
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("Successfully deployed flow"), "{r}");
    assert_eq!(record(&bot, "st2-flow").current.commit, shown);
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("v1 is live"));
}

#[test]
fn a_broken_alias_file_fails_the_install_and_keeps_the_previous_version() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let v1 = repo.head();
    let bot = open_bot(tmp.path(), None, OPEN_POLICY);
    let url = repo.url();
    assert!(bodies(&bot.say(ALICE, OPS, &format!("!deploy {url} now"))).contains("succeeded"));
    repo.write("aliases/broken.yaml", "name: broken\npack: st2-flow\naction_ref: core.echo\nformats:\n  - \"bad (unclosed {{ x }}\"\n");
    repo.commit("broken alias");
    let r = bodies(&bot.say(ALICE, OPS, &format!("!deploy {url} now")));
    assert!(
        r.contains("failed") && r.contains("aliases/broken.yaml:5:5") && r.contains("formats[0]"),
        "{r}"
    );
    assert_eq!(record(&bot, "st2-flow").current.commit, v1);
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("v1 is live"));
    assert!(
        std::fs::read_dir(tmp.path().join("packs/.airlock/staging"))
            .unwrap()
            .next()
            .is_none(),
        "staging cleaned"
    );
}

#[test]
fn a_repository_with_the_wrong_pack_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "other-pack");
    let bot = open_bot(tmp.path(), None, OPEN_POLICY);
    let r = bodies(&bot.say(ALICE, OPS, &format!("!deploy {} now", repo.url())));
    assert!(
        r.contains("pack.yaml names the pack \"other-pack\", not \"st2-flow\""),
        "{r}"
    );
    assert!(bot.packs.record("st2-flow").is_none());
    assert!(!tmp.path().join("packs/st2-flow").exists());
    repo.remove("pack.yaml");
    repo.commit("no pack.yaml");
    let r = bodies(&bot.say(ALICE, OPS, &format!("!deploy {} now", repo.url())));
    assert!(r.contains("no pack.yaml"), "{r}");
}

#[test]
fn traversal_attempts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let bot = open_bot(tmp.path(), None, OPEN_POLICY);
    for (cmd, why) in [
        ("!deploy ../../etc now".to_string(), "not a valid pack name"),
        (
            "!deploy file:///tmp/.. now".to_string(),
            "not a valid pack name",
        ),
        (
            format!("!deploy {}=../../x now", repo.url()),
            "not a valid git branch",
        ),
        (
            format!("!deploy {}=-upload-pack=x now", repo.url()),
            "not a valid",
        ),
        (
            format!("!deploy {}=--upload-pack now", repo.url()),
            "not a valid git branch",
        ),
        (
            "!deploy ssh://-oProxyCommand=id now".to_string(),
            "not a repository URL",
        ),
        (
            "!deploy ext::sh -c id now".to_string(),
            "not a repository URL",
        ),
        (
            "!pack uninstall ../packs".to_string(),
            "not a valid pack name",
        ),
    ] {
        let r = bodies(&bot.say(ALICE, OPS, &cmd));
        assert!(r.contains(why), "{cmd}: {r}");
    }
    // A symlink leaving the pack is refused at install time.
    std::os::unix::fs::symlink("/etc/passwd", repo.path.join("aliases/leak.yaml")).unwrap();
    repo.commit("symlink out");
    let r = bodies(&bot.say(ALICE, OPS, &format!("!deploy {} now", repo.url())));
    assert!(r.contains("points outside the pack"), "{r}");
    // A directory airlock did not create is never replaced.
    std::fs::create_dir_all(tmp.path().join("packs/st2-flow")).unwrap();
    std::fs::remove_file(repo.path.join("aliases/leak.yaml")).unwrap();
    repo.commit("no symlink");
    let r = bodies(&bot.say(ALICE, OPS, &format!("!deploy {} now", repo.url())));
    assert!(r.contains("not managed by airlock"), "{r}");
}

#[test]
fn a_stalled_fetch_times_out_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repos = tmp.path().join("repos");
    let repo = PackRepo::new(&repos.join("st2-flow"), "st2-flow");
    let daemon = GitDaemon::start(&repos);
    let proxy = Proxy::start(daemon.port);
    let url = format!("git://127.0.0.1:{}/st2-flow", proxy.port);
    let policy = OPEN_POLICY.replace("confirm: false", "confirm: {approvers: {groups: [ops]}}");
    let bot = open_bot(tmp.path(), None, &policy);
    // Resolved while the server answers...
    let p = prompt(&bot.say(ALICE, OPS, &format!("!deploy {url} within 2"))).clone();
    assert!(p.body.contains(&repo.head()));
    // ...fetched when it has hung.
    proxy.stall();
    let started = Instant::now();
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    let took = started.elapsed();
    assert!(r.contains("timed out after 2s"), "{r}");
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    assert!(bot.packs.record("st2-flow").is_none());
    assert!(!tmp.path().join("packs/st2-flow").exists());
}

#[test]
fn rollback_restores_the_previous_commit_and_its_aliases() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let s = settings(tmp.path(), &repo_root().join("policies"), Some(&repo.path));
    let bot = Bot::open(s);
    let deploy = |bot: &Bot| {
        let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
        let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
        assert!(r.contains("Successfully deployed flow"), "{r}");
    };
    let v1 = repo.head();
    deploy(&bot);
    let v2 = make_v2(&repo);
    deploy(&bot);
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("v2 is live"));
    // Rolling back needs another member of ops, and names both commits.
    let p = prompt(&bot.say(ALICE, OPS, "!pack rollback st2-flow")).clone();
    assert!(p.body.contains(&v1) && p.body.contains(&v2), "{}", p.body);
    // What going back means, as an install's prompt says it.
    assert!(
        p.body.contains(&format!(
            "⚠️ st2-flow: goes back 1 commit from the live {} (a rewind)",
            &v2[..12]
        )),
        "{}",
        p.body
    );
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(
        r.contains(&format!("Rolled st2-flow back to {}", &v1[..12])),
        "{r}"
    );
    assert_eq!(record(&bot, "st2-flow").current.commit, v1);
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("v1 is live"));
    // The audit log has every step, with the commits.
    let who = bodies(&bot.say(ALICE, OPS, "!audit who deployed st2-flow"));
    assert!(
        who.contains(&format!(
            "rolled back st2-flow by {ALICE} (approved by {BOB}) at {v1}"
        )),
        "{who}"
    );
    assert!(
        who.contains(&format!(
            "deployed st2-flow by {ALICE} (approved by {BOB}) at {v2}"
        )),
        "{who}"
    );
    assert!(who.contains(&format!("at {v1}")), "{who}");
    // Nothing earlier to go back to now.
    let r = bodies(&bot.say(ALICE, OPS, "!pack rollback st2-flow"));
    assert!(r.contains("no earlier version"), "{r}");
}

#[test]
fn reinstall_fetches_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let repos = tmp.path().join("repos");
    let repo = PackRepo::new(&repos.join("st2-flow"), "st2-flow");
    for i in 0..30 {
        repo.write(
            &format!("actions/a{i}.yaml"),
            &format!("name: a{i}\nrunner_type: local-shell-cmd\n"),
        );
        repo.commit(&format!("action {i}"));
    }
    let daemon = GitDaemon::start(&repos);
    let bot = open_bot(tmp.path(), None, OPEN_POLICY);
    let url = daemon.url("st2-flow");
    let fetched = |bot: &Bot| -> u64 {
        let out = bot.say(ALICE, OPS, &format!("!deploy {url} now"));
        assert!(bodies(&out).contains("succeeded"), "{}", bodies(&out));
        let id = bot
            .engine
            .audit_log()
            .query(&airlock::audit::Query {
                event: Some("finished".into()),
                limit: Some(1),
                ..Default::default()
            })
            .unwrap()[0]
            .request
            .clone()
            .unwrap();
        let req = bot.engine.requests().get(&id).unwrap().unwrap();
        // Fetched to work out what the install changes (once a version
        // is live), then by the install.
        let before = req.plan["changes"][0]["fetched_objects"]
            .as_u64()
            .unwrap_or(0);
        before
            + req.result.unwrap()["packs"][0]["fetched"]["objects"]
                .as_u64()
                .unwrap()
    };
    let first = fetched(&bot);
    assert!(first > 60, "first install fetched {first} objects");
    let cache = tmp.path().join("packs/.airlock/git/st2-flow.git");
    std::fs::write(cache.join("marker"), "kept").unwrap();
    repo.write("actions/a0.yaml", "name: a0\nrunner_type: python-script\n");
    repo.commit("one change");
    let second = fetched(&bot);
    assert!(
        second > 0 && second <= 5,
        "re-install fetched {second} objects (first: {first})"
    );
    assert!(
        cache.join("marker").exists(),
        "the cache was reused, not re-cloned"
    );
    assert_eq!(record(&bot, "st2-flow").current.commit, repo.head());
    // The same commit again fetches nothing.
    assert_eq!(fetched(&bot), 0);
}

#[test]
fn concurrent_installs_of_one_pack_are_serialized() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let v1 = repo.head();
    repo.branch("one");
    let v2 = make_v2(&repo);
    repo.branch("two");
    let other = PackRepo::new(&tmp.path().join("other"), "other");
    let bot = Arc::new(open_bot(
        tmp.path(),
        None,
        &OPEN_POLICY.replace("confirm: false", "confirm: {approvers: {groups: [ops]}}"),
    ));
    for round in 0..4 {
        let mut ids = Vec::new();
        for cmd in [
            format!("!deploy {}=one now", repo.url()),
            format!("!deploy {}=two now", repo.url()),
            format!("!deploy {} now", other.url()),
        ] {
            let p = prompt(&bot.say(ALICE, OPS, &cmd)).clone();
            let fx = bot.engine.handle(
                &{
                    let mut m = bot.message(BOB, OPS, "yes");
                    m.reply_to = Some(p.event_id.clone());
                    m
                },
                bot.now(),
            );
            ids.extend(fx.into_iter().filter_map(|e| {
                if let Effect::Execute(id) = e {
                    Some(id)
                } else {
                    None
                }
            }));
        }
        let threads: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let bot = bot.clone();
                std::thread::spawn(move || bot.engine.execute(&id, || bot.now()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let rec = record(&bot, "st2-flow");
        let now = rec.current.commit.clone();
        assert!(now == v1 || now == v2, "round {round}");
        let link = std::fs::read_link(tmp.path().join("packs/st2-flow")).unwrap();
        assert!(
            link.ends_with(&now),
            "round {round}: link {link:?} vs record {now}"
        );
        assert!(tmp.path().join("packs/st2-flow/pack.yaml").is_file());
        assert!(tmp.path().join("packs/other/pack.yaml").is_file());
    }
}

#[test]
fn a_repository_on_this_machine_is_read_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("work/st2-flow"), "st2-flow");
    // A bare repository named by its plain path, the third URL form.
    let bare = tmp.path().join("mirror/st2-flow.git");
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&repo.url(), &bare)
        .unwrap();
    let bot = open_bot(tmp.path(), None, OPEN_POLICY);
    let r = bodies(&bot.say(ALICE, OPS, &format!("!deploy {} now", bare.display())));
    assert!(r.contains("succeeded"), "{r}");
    assert_eq!(record(&bot, "st2-flow").current.commit, repo.head());
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("v1 is live"));
    // Nothing was copied into a cache of fetched objects.
    assert!(!tmp.path().join("packs/.airlock/git/st2-flow.git").exists());
}

#[test]
fn uninstall_and_register_control_which_commands_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let bot = open_bot(tmp.path(), None, OPEN_POLICY);
    let r = bodies(&bot.say(
        ALICE,
        OPS,
        &format!("!deploy {} registering actions", repo.url()),
    ));
    assert!(r.contains("succeeded"), "{r}");
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("matched no patterns"));
    assert!(
        bodies(&bot.say(ALICE, OPS, &format!("!deploy {} now", repo.url()))).contains("succeeded")
    );
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("v1 is live"));
    let r = bodies(&bot.say(ALICE, OPS, "!pack uninstall st2-flow"));
    assert!(r.contains("succeeded"), "{r}");
    assert!(bodies(&bot.say(ALICE, OPS, "!st2-flow status")).contains("matched no patterns"));
    assert!(!tmp.path().join("packs/st2-flow").exists());
    let r = bodies(&bot.say(ALICE, OPS, "!pack uninstall st2-flow"));
    assert!(r.contains("is not installed"), "{r}");
}

/// The daemon itself, not the `git` wrapper: killing the wrapper would
/// leave the daemon running.
fn git_daemon() -> std::path::PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon")
}

/// A pending request for a pack's own action, and the pack moves to a new
/// commit before it is approved: the approvals (none yet, here one) no
/// longer count, and the room is asked again with the version named.
#[test]
fn a_new_pack_version_voids_the_approvals_of_its_pending_actions() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let hello = |text: &str| {
        repo.write(
            "actions/hello.yaml",
            &format!(
                "---\nname: hello\nrunner_type: local-shell-cmd\nentry_point: ''\nparameters:\n  cmd:\n    default: \"echo {text}\"\n    immutable: true\n"
            ),
        );
    };
    hello("v1");
    repo.write(
        "aliases/hello.yaml",
        "---\nname: hello\npack: st2-flow\naction_ref: st2-flow.hello\nformats:\n  - \"st2-flow hello\"\nresult:\n  format: \"{{ execution.result.stdout }}\"\n",
    );
    repo.commit("an action");
    let bot = open_bot(
        tmp.path(),
        Some(&repo.path),
        r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org", "@carol:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm: false
  - id: hello
    effect: allow
    groups: [ops]
    aliases: [st2-flow.hello]
    confirm: {approvers: {groups: [ops]}, approvals: 2, self_approve: false}
"#,
    );
    let r = bodies(&bot.say(ALICE, OPS, "!flow deploy main"));
    assert!(r.contains("Successfully deployed flow"), "{r}");
    let p = prompt(&bot.say(ALICE, OPS, "!st2-flow hello")).clone();
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("Approval 1 of 2"), "{r}");

    hello("v2");
    let v2 = repo.commit("v2");
    let sent = bot.say(ALICE, OPS, "!flow deploy main");
    let again = prompt(&sent).clone();
    assert!(
        again.body.contains(&format!(
            "♻️ the version of st2-flow.hello (now {}) changed since request",
            &v2[..12]
        )) && again
            .body
            .contains("the approvals given (@bob:example.org) no longer count"),
        "{}",
        again.body
    );
    assert!(
        again
            .body
            .contains(&format!("st2-flow at commit {}", &v2[..12])),
        "the prompt shows the new version: {}",
        again.body
    );
    // Bob approves again, with Carol: it runs the version they approved.
    bot.reply(BOB, OPS, &again.event_id, "yes");
    let r = bodies(&bot.reply(CAROL, OPS, &again.event_id, "yes"));
    assert!(r.contains("v2"), "{r}");
}

/// A rule's plan is another action of the pack: a switch of the pack
/// between the plan and the approval runs the plan again, from the new
/// version, and the prompt shows what it shows now.
#[test]
fn a_pack_switch_between_plan_and_approval_plans_again() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let actions = |v: &str| {
        for (name, text) in [
            ("hello", format!("hello {v}")),
            ("diff", format!("would change to {v}")),
        ] {
            repo.write(
                &format!("actions/{name}.yaml"),
                &format!(
                    "---\nname: {name}\nrunner_type: local-shell-cmd\nentry_point: ''\nparameters:\n  cmd:\n    default: \"echo {text}\"\n    immutable: true\n"
                ),
            );
        }
    };
    actions("v1");
    repo.write(
        "aliases/hello.yaml",
        "---\nname: hello\npack: st2-flow\naction_ref: st2-flow.hello\nformats:\n  - \"st2-flow hello\"\nresult:\n  format: \"{{ execution.result.stdout }}\"\n",
    );
    repo.commit("actions");
    let bot = open_bot(
        tmp.path(),
        Some(&repo.path),
        r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: deploy
    effect: allow
    groups: [ops]
    aliases: [st2-flow.flow_deploy]
    confirm: false
  - id: hello
    effect: allow
    groups: [ops]
    aliases: [st2-flow.hello]
    confirm: {approvers: {groups: [ops]}, self_approve: false}
    plan: {action: st2-flow.diff}
"#,
    );
    assert!(
        bodies(&bot.say(ALICE, OPS, "!flow deploy main")).contains("Successfully deployed flow")
    );
    let p = prompt(&bot.say(ALICE, OPS, "!st2-flow hello")).clone();
    assert!(
        p.body.contains("📋 Its plan (st2-flow.diff) shows")
            && p.body.contains("would change to v1"),
        "{}",
        p.body
    );
    actions("v2");
    repo.commit("v2");
    let again = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    assert!(
        again.body.contains("would change to v2") && !again.body.contains("would change to v1"),
        "the plan ran again from the new version: {}",
        again.body
    );
    let planned = bot
        .engine
        .audit_log()
        .query(&airlock::audit::Query {
            request: p.prompt_for.clone(),
            event: Some("planned".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(planned.len(), 2, "planned twice");
    assert_ne!(
        planned[0].details()["digest"],
        planned[1].details()["digest"]
    );
    let r = bodies(&bot.reply(BOB, OPS, &again.event_id, "yes"));
    assert!(r.contains("hello v2"), "{r}");
}

/// A contributor calling an action's `prepare` can tell a bad command
/// from a missing pack from a remote that did not answer, and each still
/// reads as the reason the requester is given.
#[test]
fn prepare_errors_say_what_kind_of_fix_they_want() {
    use airlock::action::{Actions, PrepareError};
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    let actions = Actions::standard(bot.packs.clone());
    let params = |v: serde_json::Value| v.as_object().unwrap().clone();
    let rollback = actions.get("packs.rollback").unwrap();
    assert_eq!(
        rollback.prepare(params(serde_json::json!({"pack": "../etc"}))),
        Err(PrepareError::Invalid(
            "\"../etc\" is not a valid pack name".into()
        ))
    );
    assert_eq!(
        rollback.prepare(params(serde_json::json!({"pack": "st2-flow"}))),
        Err(PrepareError::NotFound(
            "pack st2-flow is not installed".into()
        ))
    );
    let install = actions.get("packs.install").unwrap();
    // Nothing listens on port 9 of loopback.
    let err = install
        .prepare(params(
            serde_json::json!({"packs": ["http://127.0.0.1:9/nothing.git"]}),
        ))
        .unwrap_err();
    assert!(matches!(err, PrepareError::Unavailable(_)), "{err:?}");
}
