//! The `airlock` binary as a user runs it: match, help, check, policy
//! explain, the console, pending and audit.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn match_answers_the_seed_like_st2() {
    let root = repo_root();
    let o = airlock(&["match", "flow deploy"], &root);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["alias"], "st2-flow.flow_deploy");
    assert_eq!(
        v["parameters"],
        serde_json::json!({"register": "all", "packs": "st2-flow", "repo_url": "git@github.com:websages/st2-flow", "branch": "master"})
    );
    let o = airlock(&["match", "flow deploy feature-x"], &root);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parameters"]["branch"], "feature-x");
    // Smart quotes from chat clients are plain quotes to the matcher.
    let o = airlock(&["match", "flow deploy \u{201c}feature y\u{201d}"], &root);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parameters"]["branch"], "feature y");
    let o = airlock(&["match", "deploy the flow"], &root);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o).1.trim(),
        "Command 'deploy the flow' matched no patterns"
    );
}

#[test]
fn help_lists_displays_with_filter() {
    let o = airlock(&["help", "rollback"], &repo_root());
    let (out, _) = text(&o);
    assert!(
        out.contains("pack rollback {{ pack }}") && !out.contains("flow deploy"),
        "{out}"
    );
}

#[test]
fn check_reports_every_error_with_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("aliases");
    let p = tmp.path().join("policies");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        a.join("ok.yaml"),
        "name: ok\npack: t\naction_ref: core.echo\nformats: ['say {{ message }}']\n",
    )
    .unwrap();
    std::fs::write(
        a.join("bad.yaml"),
        "name: bad\npack: t\naction_ref: core.echo\nformats:\n  - \"fine {{ x }}\"\n  - display: d\n    representation:\n      - \"{{ ip-address }}\"\n  - 42\nack:\n  format: \"{% if %}\"\n",
    )
    .unwrap();
    std::fs::write(
        a.join("typo.yaml"),
        "name: t\npack: t\naction_ref: core.echo\nformat: ['x']\n",
    )
    .unwrap();
    std::fs::write(
        p.join("p.yaml"),
        "groups:\n  ops: ['@alice:example.org', 'bob']\nrules:\n  - id: r1\n    effect: allow\n    groups: [opz]\n    aliases: [t.ok]\n  - id: r2\n    effect: allow\n    users: ['@alice:example.org']\n    rooms: ['ops']\n    aliases: [t.nothing]\n    params:\n      x: {regex: '('}\n  - id: r3\n    effect: allow\n    users: ['*']\n",
    )
    .unwrap();
    let o = airlock(
        &["check", "--aliases", "aliases", "--policies", "policies"],
        tmp.path(),
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    for needle in [
        "aliases/bad.yaml:8:9: error: formats[1].representation[0]: format is not a valid regular expression",
        "aliases/bad.yaml:9:5: error: formats[2]: alias_format '42' is neither a dictionary or string type.",
        "aliases/bad.yaml:11:3: error: ack.format: invalid template",
        "aliases/typo.yaml:4:1: error: unknown field `format`",
        "policies/p.yaml:2:31: error: groups.ops[1]: \"bob\" is not a Matrix user ID",
        "policies/p.yaml:6:14: error: rules[0].groups[0]: unknown group \"opz\"",
        "policies/p.yaml:11:13: error: rules[1].rooms[0]: \"ops\" is not a room ID",
        "policies/p.yaml:14:11: error: rules[1].params.x.regex: invalid regex: unclosed group",
        "rules[2]: rule names no aliases, actions, packs or builtins, so it can never match",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(out.contains("error(s)"));
}

#[test]
fn check_validates_pack_actions_and_flags_unquoted_cmd_values() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("packs/shop");
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::fs::create_dir_all(pack.join("aliases")).unwrap();
    std::fs::write(pack.join("pack.yaml"), "name: shop\n").unwrap();
    std::fs::write(
        pack.join("actions/bad.yaml"),
        "name: bad\nrunner_type: local-shell-script\nentry_point: ../../x.sh\nparameters:\n  n:\n    type: integer\n    default: many\n  k:\n    default: \"{{ st2kv.system.k }}\"\n",
    )
    .unwrap();
    std::fs::write(
        pack.join("actions/grep.yaml"),
        "name: grep\nrunner_type: local-shell-cmd\nparameters:\n  pattern:\n    type: string\n  cmd:\n    default: \"grep {{ pattern | safe }} /var/log/app.log\"\n    immutable: true\n",
    )
    .unwrap();
    std::fs::write(
        pack.join("actions/py.yaml"),
        "name: py\nrunner_type: python-script\nentry_point: py.py\n",
    )
    .unwrap();
    std::fs::write(
        pack.join("aliases/grep.yaml"),
        "name: grep\npack: shop\naction_ref: shop.grep\nformats: ['grep {{ pattern }}']\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("p.yaml"),
        "rules:\n  - id: grep\n    effect: allow\n    users: ['@alice:example.org']\n    aliases: [shop.grep]\n",
    )
    .unwrap();
    let o = airlock(
        &["check", "--aliases", "packs", "--policies", "p.yaml"],
        tmp.path(),
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    for needle in [
        "actions/bad.yaml:3:1: error: entry_point: \"../../x.sh\" leaves the pack's actions directory",
        "actions/bad.yaml:7:5: error: parameters.n.default: parameter n must be of type integer",
        "actions/bad.yaml:9:5: error: parameters.k.default: reads st2's datastore (st2kv)",
        "actions/grep.yaml:7:5: warning: parameters.cmd.default: {{ pattern | safe }} writes pattern into the shell unquoted",
        "actions/py.yaml:2:1: warning: runner_type: shop.py runs on python-script",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn check_does_not_warn_about_an_action_the_configuration_routes_to_st2() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("packs/shop");
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::fs::write(pack.join("pack.yaml"), "name: shop\n").unwrap();
    for name in ["py", "flow"] {
        std::fs::write(
            pack.join(format!("actions/{name}.yaml")),
            format!("name: {name}\nrunner_type: python-script\nentry_point: {name}.py\n"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(pack.join("aliases")).unwrap();
    std::fs::write(
        pack.join("aliases/flow.yaml"),
        "name: flow\npack: shop\naction_ref: shop.flow\nformats: ['flow {{ branch }}']\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("p.yaml"),
        "rules:\n  - id: flow\n    effect: allow\n    users: ['@alice:example.org']\n    actions: [shop.flow]\n",
    )
    .unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--aliases", "packs", "--policies", "p.yaml"];
        args.extend_from_slice(extra);
        let o = airlock(&args, tmp.path());
        text(&o).0
    };
    let out = check(&[]);
    assert!(
        out.contains("actions: airlock has no action matching \"shop.flow\""),
        "{out}"
    );
    for name in ["py", "flow"] {
        assert!(
            out.contains(&format!(
                "warning: runner_type: shop.{name} runs on python-script"
            )),
            "{out}"
        );
    }
    std::fs::write(
        tmp.path().join("airlock.yaml"),
        "st2:\n  url: https://st2.example.org\n  actions: [\"shop.flow\"]\n",
    )
    .unwrap();
    let out = check(&["--config", "airlock.yaml"]);
    assert!(out.contains("shop.py runs on python-script"), "{out}");
    assert!(!out.contains("shop.flow"), "{out}");
}

#[test]
fn policy_explain_shows_decision_rules_and_confirmation() {
    let root = repo_root();
    let o = airlock(
        &[
            "policy",
            "explain",
            "--user",
            ALICE,
            "--room",
            OPS,
            "!flow deploy main",
        ],
        &root,
    );
    let (out, _) = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("decision: ALLOW by rule ops-deploy-flow"),
        "{out}"
    );
    assert!(
        out.contains(
            "confirmation: 1 approval from group ops, not the requester; expires after 10m"
        ),
        "{out}"
    );
    let o = airlock(
        &[
            "policy",
            "explain",
            "--user",
            ALICE,
            "--room",
            OPS,
            "flow deploy main repo_url=git@evil:x",
        ],
        &root,
    );
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out.contains("DENY (parameter repo_url=git@evil:x is not allowed by rule ops-deploy-flow"),
        "{out}"
    );
    let o = airlock(
        &[
            "policy",
            "explain",
            "--user",
            MALLORY,
            "--room",
            OPS,
            "flow deploy main",
        ],
        &root,
    );
    let (out, _) = text(&o);
    assert!(out.contains("deny by default"), "{out}");
    let o = airlock(
        &[
            "policy",
            "explain",
            "--user",
            "@alice:example.org.evil",
            "--room",
            OPS,
            "flow deploy main",
        ],
        &root,
    );
    assert!(
        text(&o)
            .0
            .contains("rules matching @alice:example.org.evil in !ops:example.org: none")
    );
}

/// The shipped policy's production rules: a quorum across ops and
/// security, and a Friday freeze whose state `--at` shows.
#[test]
fn policy_explain_shows_the_quorum_and_the_freeze_window() {
    let root = repo_root();
    let explain = |at: &str| {
        let o = airlock(
            &[
                "policy",
                "explain",
                "--user",
                ALICE,
                "--room",
                "!prod:example.org",
                "--at",
                at,
                "flow deploy main",
            ],
            &root,
        );
        (o.status.code(), text(&o).0)
    };
    let (code, out) = explain("2026-12-03T10:00:00Z");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("confirmation: 1 from group ops and 1 from group security, not the requester"),
        "{out}"
    );
    assert!(
        out.contains("window of rule prod-friday-freeze: Fri 16:00–24:00 Europe/Berlin; closed now, opens Fri 2026-12-04 16:00 Europe/Berlin"),
        "{out}"
    );
    let (code, out) = explain("2026-12-04T16:30:00+01:00");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("decision: DENY (denied by rule prod-friday-freeze (in force Fri 16:00–24:00 Europe/Berlin, until Sat 2026-12-05 00:00 Europe/Berlin))"),
        "{out}"
    );
    let (_, out) = explain("2026-12-24T12:00:00Z");
    assert!(out.contains("denied by rule prod-year-end-freeze (in force 2026-12-21 to 2027-01-03 Europe/Berlin, until Mon 2027-01-04 00:00 Europe/Berlin)"), "{out}");
}

/// The console as a person uses it: lines in, lines out.
struct Console {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Console {
    fn start(cfg: &Path) -> Self {
        Self::spawn(cfg, Stdio::inherit(), "info")
    }

    /// With every log line, at `level`, written to `log`.
    fn logging(cfg: &Path, log: &Path, level: &str) -> Self {
        Self::spawn(cfg, std::fs::File::create(log).unwrap().into(), level)
    }

    fn spawn(cfg: &Path, stderr: Stdio, level: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["console", "--config"])
            .arg(cfg)
            .env("AIRLOCK_LOG", level)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Console {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    /// The first new line containing `needle`.
    fn expect(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(std::time::Duration::from_secs(20)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The reference of the bot message on `line` (`[m3] airlock ...` → m3).
    fn reference(line: &str) -> String {
        line.trim_start_matches('[')
            .split(']')
            .next()
            .unwrap()
            .to_string()
    }
}

/// The README's first command: the console, from a fresh checkout: deploy
/// with a colleague's confirmation, use the new commands, deploy again,
/// roll back, read the audit log.
#[test]
fn console_session_deploy_confirm_rollback_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let v1 = repo.head();
    let cfg = write_config(tmp.path(), &repo);
    let mut c = Console::start(&cfg);
    let deploy = |c: &mut Console| {
        c.send("/user @alice:example.org");
        c.send("!flow deploy main");
        let prompt = c.expect("Confirmation needed");
        c.send("/user @bob:example.org");
        let r = Console::reference(&prompt);
        c.send(&format!("/reply {r} yes"));
        // A reply is shown with the reference of what it answers.
        c.expect(&format!("@bob:example.org ↪ [{r}]: yes"));
        c.expect("Successfully deployed flow");
    };
    deploy(&mut c);
    c.send("!st2-flow status");
    c.expect("st2-flow v1 is live");
    repo.write(
        "aliases/st2-flow_status.yaml",
        "name: st2_flow_status\npack: st2-flow\naction_ref: core.echo\nformats: ['st2-flow status']\nimmutable_parameters:\n  message: st2-flow v2 is live\nresult:\n  format: '{{ execution.result.stdout }}'\n",
    );
    let v2 = repo.commit("v2");
    deploy(&mut c);
    c.send("!st2-flow status");
    c.expect("st2-flow v2 is live");
    c.send("/user @alice:example.org");
    c.send("!pack rollback st2-flow");
    let prompt = c.expect("Confirmation needed");
    c.send("/user @bob:example.org");
    c.send(&format!("/reply {} yes", Console::reference(&prompt)));
    c.expect(&format!("Rolled st2-flow back to {}", &v1[..12]));
    c.send("!st2-flow status");
    c.expect("st2-flow v1 is live");
    c.send("!audit 50");
    c.expect("audit entries for this room");
    c.send("/quit");
    assert!(c.child.wait().unwrap().success());
    c.seen.extend(c.lines.iter());
    let out = c.seen.join("\n");
    for needle in [
        "confirmation_requested",
        "approval by=@bob:example.org",
        &format!("commit={v1}"),
        &format!("commit={v2}"),
        "action=packs.rollback status=succeeded",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    // Afterwards, from the CLI: the chain verifies and the audit answers.
    let o = airlock(
        &["audit", "--config", cfg.to_str().unwrap(), "verify"],
        tmp.path(),
    );
    assert!(text(&o).0.contains("audit log intact"), "{:?}", text(&o));
    let o = airlock(
        &[
            "audit",
            "--config",
            cfg.to_str().unwrap(),
            "--user",
            BOB,
            "--jsonl",
        ],
        tmp.path(),
    );
    let lines: Vec<serde_json::Value> = text(&o)
        .0
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty() && lines.iter().all(|e| e["sender"] == BOB));
    // The next page: two entries below the newest of bob's.
    let newest = lines.last().unwrap()["seq"].as_u64().unwrap();
    let o = airlock(
        &[
            "audit",
            "--config",
            cfg.to_str().unwrap(),
            "--user",
            BOB,
            "--before",
            &newest.to_string(),
            "-n",
            "2",
            "--jsonl",
        ],
        tmp.path(),
    );
    let page = jsonl_seqs(&text(&o).0);
    let want: Vec<u64> = lines[lines.len() - 3..lines.len() - 1]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page, want);
    let o = airlock(
        &[
            "audit",
            "--config",
            cfg.to_str().unwrap(),
            "--alias",
            "st2-flow.flow_deploy",
            "--status",
            "succeeded",
            "--json",
        ],
        tmp.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "two deploys finished");
    let o = airlock(
        &[
            "audit",
            "--config",
            cfg.to_str().unwrap(),
            "who-deployed",
            "st2-flow",
        ],
        tmp.path(),
    );
    let (who, _) = text(&o);
    for line in [
        format!("rolled back st2-flow by {ALICE} (approved by {BOB}) at {v1}"),
        format!("deployed st2-flow by {ALICE} (approved by {BOB}) at {v2}"),
        format!("deployed st2-flow by {ALICE} (approved by {BOB}) at {v1}"),
    ] {
        assert!(who.contains(&line), "missing {line:?} in\n{who}");
    }
    let o = airlock(&["pending", "--config", cfg.to_str().unwrap()], tmp.path());
    assert!(text(&o).0.contains("No open requests"));
}

/// The example pack's deploy in the console, logging at trace: its secret
/// (from the pack's config) is in no output line, no log line and no file
/// the bot wrote, yet the script got it.
#[test]
fn console_deploys_the_example_pack_and_its_secret_is_found_nowhere() {
    const SECRET: &str = "s3cr3t-t0ken-value";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("configs")).unwrap();
    std::fs::write(
        dir.join("configs/deploy_example.yaml"),
        format!("api_token: {SECRET}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        "groups:\n  ops: ['@alice:example.org', '@bob:example.org']\nrules:\n  - id: deploys\n    effect: allow\n    groups: [ops]\n    aliases: [deploy_example.deploy]\n    extra_params: true\n    confirm:\n      approvers: {groups: [ops]}\n      approvals: 1\n  - id: tools\n    effect: allow\n    groups: [ops]\n    builtins: ['*']\n",
    )
    .unwrap();
    let cfg = dir.join("airlock.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: data\naliases: [{}]\npolicies: [policy.yaml]\nlog_format: json\nrunners:\n  configs: configs\n",
            repo_root().join("tests/packs").display()
        ),
    )
    .unwrap();
    let log = dir.join("airlock.log");
    let mut c = Console::logging(&cfg, &log, "trace");
    c.send("!deploy web v1.2.3 environment=prod");
    let prompt = c.expect("Confirmation needed");
    let id = prompt.rsplit(' ').next().unwrap().to_string();
    c.expect("token: ********");
    c.send("/user @bob:example.org");
    c.send("!pending");
    c.expect(&format!("{id} pending"));
    c.send(&format!("!approve {id}"));
    c.expect("Deployed web v1.2.3 to prod");
    c.send(&format!("!status {id}"));
    c.expect(&format!("{id} succeeded"));
    drop(c.stdin);
    c.child.wait().unwrap();
    let mut hits: Vec<String> = c
        .seen
        .iter()
        .filter(|l| l.contains(SECRET))
        .cloned()
        .collect();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.is_empty(), "trace logging wrote nothing");
    // `log_format: json`: every line is one JSON object, and the lines
    // about this request say which request, room and sender.
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about = |l: &&serde_json::Value| l["span"]["request"] == id.as_str();
    assert!(
        lines
            .iter()
            .filter(about)
            .any(|l| l["span"]["room"] == "!ops:example.org"
                && l["span"]["sender"] == "@alice:example.org"),
        "no line names request {id}, its room and sender"
    );
    hits.extend(
        logged
            .lines()
            .filter(|l| l.contains(SECRET))
            .map(str::to_string),
    );
    let mut stack = vec![dir.join("data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(SECRET.len())
                .any(|w| w == SECRET.as_bytes())
            {
                hits.push(p.display().to_string());
            }
        }
    }
    assert!(hits.is_empty(), "the secret was found in: {hits:?}");
    // The audit proves which value ran without holding it.
    let o = airlock(
        &[
            "--config",
            "airlock.yaml",
            "audit",
            "--request",
            &id,
            "--jsonl",
        ],
        dir,
    );
    let (out, _) = text(&o);
    assert!(out.contains("hmac-sha256:"), "{out}");
}

/// `policy explain` says where an action routed to StackStorm runs.
#[test]
fn policy_explain_names_stackstorm_for_routed_actions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("al")).unwrap();
    std::fs::write(
        dir.join("al/e.yaml"),
        "name: echo\npack: st2ops\naction_ref: tests.echo\nformats: [\"st2 echo {{ message }}\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        "rules:\n  - id: a\n    effect: allow\n    users: [\"*\"]\n    packs: [st2ops]\n",
    )
    .unwrap();
    let cfg = dir.join("airlock.yaml");
    std::fs::write(
        &cfg,
        "aliases: [al]\npolicies: [p.yaml]\nst2:\n  url: https://st2.example.org\n  actions: [\"tests.*\"]\n",
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
            OPS,
            "st2 echo hi",
        ],
        dir,
    );
    let (out, _) = text(&o);
    assert!(
        out.contains("runs on StackStorm at https://st2.example.org")
            && !out.contains("not available in airlock"),
        "{out}"
    );
}
