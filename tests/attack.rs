//! What the outside attack of issue 33 found, each as a user meets it:
//! a quoted `cmd` template, chat `key=value` pairs reaching runner
//! parameters and options, and `airlock check` over `packs:` rules.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A pack `atk` with the templates an st2 author writes, in `dir/packs`.
fn atk_pack(dir: &Path, extra_actions: &[(&str, &str)]) -> PathBuf {
    let pack = dir.join("packs/atk");
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::fs::create_dir_all(pack.join("aliases")).unwrap();
    std::fs::write(pack.join("pack.yaml"), "name: atk\nversion: 1.0.0\n").unwrap();
    let mut actions: Vec<(&str, String)> = vec![
        // The author quoted the value, as st2 packs often do.
        ("says", r#"printf '[%s]\n' '{{ text }}'"#.into()),
        ("dsays", r#"printf '[%s]\n' "{{ text }}""#.into()),
        ("word", r#"printf '[%s]\n' --name={{ text }}x"#.into()),
        ("doc", "cat <<EOF\n{{ text }}\nEOF".into()),
        ("show", r#"printf '[%s]\n' {{ ref }}"#.into()),
    ];
    actions.extend(extra_actions.iter().map(|(n, c)| (*n, c.to_string())));
    for (name, cmd) in &actions {
        let param = if *name == "show" { "ref" } else { "text" };
        std::fs::write(
            pack.join(format!("actions/{name}.yaml")),
            format!(
                "name: {name}\nrunner_type: local-shell-cmd\nparameters:\n  {param}:\n    type: string\n    default: HEAD\n  note:\n    type: string\n  cmd:\n    default: {}\n    immutable: true\n",
                serde_json::to_string(cmd).unwrap()
            ),
        )
        .unwrap();
        let format = if *name == "show" {
            "show {{ ref }}".to_string()
        } else {
            format!("{name} {{{{ text }}}}")
        };
        std::fs::write(
            pack.join(format!("aliases/{name}.yaml")),
            format!(
                "name: {name}\npack: atk\naction_ref: atk.{name}\nformats:\n  - \"{format}\"\n  - \"{name}\"\nresult:\n  format: \"out: {{{{ execution.result.stdout }}}}\"\n"
            ),
        )
        .unwrap();
    }
    dir.join("packs")
}

const POLICY: &str = r#"
rules:
  - id: ops-use-atk
    effect: allow
    users: ["@alice:example.org"]
    packs: [atk]
  - id: builtins
    effect: allow
    users: ["*"]
    builtins: ["*"]
"#;

/// `airlock check` over `packs` and [`POLICY`]: whether it passed, and
/// what it printed.
fn check(dir: &Path, packs: &Path) -> (bool, String) {
    let pol = dir.join("policy.yaml");
    std::fs::write(&pol, POLICY).unwrap();
    let o = airlock(
        &[
            "check",
            "--aliases",
            packs.to_str().unwrap(),
            "--policies",
            pol.to_str().unwrap(),
        ],
        dir,
    );
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn atk_bot(dir: &Path, policy: &str) -> Bot {
    let pol = dir.join("policy.yaml");
    std::fs::write(&pol, policy).unwrap();
    let mut s = settings(dir, &pol, None);
    s.aliases = vec![atk_pack(dir, &[])];
    Bot::open(s)
}

#[test]
fn a_quoted_template_reads_back_every_value_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = atk_bot(tmp.path(), POLICY);
    let pwned = tmp.path().join("pwned");
    let m = pwned.display();
    for payload in [
        format!("x; touch {m}"),
        format!("x'; touch {m}; echo 'y"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("a\" ; touch {m}; echo \"b"),
        "it's \\ a $HOME test".to_string(),
    ] {
        for (alias, want) in [
            ("says", format!("[{payload}]")),
            ("dsays", format!("[{payload}]")),
            ("word", format!("[--name={payload}x]")),
            ("doc", payload.clone()),
        ] {
            let r = bodies(&bot.say(ALICE, OPS, &format!("!{alias} {payload}")));
            assert!(
                r.contains(&format!("out: {want}")),
                "{alias} {payload}: {r}"
            );
            assert!(!pwned.exists(), "{alias} {payload} ran code");
        }
    }
    // A value that would end the here-document early is refused, naming why.
    let r = bodies(&bot.say(ALICE, OPS, &format!("!doc a\nEOF\ntouch {m}")));
    assert!(r.contains("here-document"), "{r}");
    assert!(!pwned.exists());
}

#[test]
fn check_refuses_a_placeholder_where_no_value_can_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let packs = atk_pack(
        tmp.path(),
        &[
            ("bq", "echo ok\necho `echo {{ text }}`"),
            ("cm", "true # {{ text }}"),
        ],
    );
    let (ok, out) = check(tmp.path(), &packs);
    assert!(!ok, "{out}");
    assert!(
        out.contains("bq.yaml")
            && out.contains("{{ text }} (line 2 of the template) stands inside backquotes"),
        "{out}"
    );
    assert!(
        out.contains("cm.yaml") && out.contains("in a comment"),
        "{out}"
    );
}

#[test]
fn chat_pairs_reach_only_what_the_format_or_the_rule_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = atk_bot(tmp.path(), POLICY);
    let out = tmp.path().join("written");
    // A pair the format does not capture, under a rule without params.
    let r = bodies(&bot.say(ALICE, OPS, &format!("!show ref=--output={}", out.display())));
    assert!(
        r.contains("parameter ref=--output=") && r.contains("starts with -"),
        "{r}"
    );
    let r = bodies(&bot.say(ALICE, OPS, "!says hi note=x"));
    assert!(
        r.contains("parameter note cannot be set from chat under rule ops-use-atk"),
        "{r}"
    );
    // A runner parameter: never from chat unless a rule names it.
    let r = bodies(&bot.say(ALICE, OPS, r#"!says hi env={"BASH_ENV":"/tmp/x"}"#));
    assert!(r.contains("parameter env"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, "!says hi timeout=100000"));
    assert!(r.contains("parameter timeout"), "{r}");
    // A captured value that is an option where it lands.
    let r = bodies(&bot.say(ALICE, OPS, &format!("!show -o{}", out.display())));
    assert!(
        r.contains("parameter ref=-o") && r.contains("starts with -") && r.contains("ops-use-atk"),
        "{r}"
    );
    // Inside quotes a leading - is no option for printf's format, but the
    // rule holds wherever the value becomes an argument.
    assert!(!out.exists());
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());

    // `extra_params: true` opens pairs, not runner parameters; a rule that
    // names a parameter with a regex opens it within that regex.
    let tmp = tempfile::tempdir().unwrap();
    let bot = atk_bot(
        tmp.path(),
        r#"
rules:
  - id: open
    effect: allow
    users: ["@alice:example.org"]
    packs: [atk]
    extra_params: true
    params:
      ref: {regex: "--oneline|HEAD|v[0-9.]+"}
"#,
    );
    let r = bodies(&bot.say(ALICE, OPS, "!says hi cwd=/"));
    assert!(
        r.contains("parameter cwd changes how the action runs"),
        "{r}"
    );
    let r = bodies(&bot.say(ALICE, OPS, "!show --oneline"));
    assert!(r.contains("out: [--oneline]"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, "!show ref=v1.2"));
    assert!(r.contains("out: [v1.2]"), "{r}");
}

#[test]
fn policy_explain_names_the_rule_and_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let packs = atk_pack(tmp.path(), &[]);
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(&pol, POLICY).unwrap();
    let cfg = tmp.path().join("airlock.yaml");
    std::fs::write(
        &cfg,
        format!(
            "aliases: [{}]\npolicies: [{}]\n",
            packs.display(),
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
            OPS,
            "says hi sudo=true",
        ],
        tmp.path(),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("parameter sudo cannot be set from chat under rule ops-use-atk"),
        "{out}"
    );
}

#[test]
fn check_flags_an_unquoted_placeholder_reached_through_a_packs_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let packs = atk_pack(tmp.path(), &[("raw", "echo {{ text | safe }}")]);
    let (_, out) = check(tmp.path(), &packs);
    assert!(
        out.contains("{{ text | safe }} writes text into the shell unquoted"),
        "{out}"
    );
}

const SECRET: &str = "S3CRET-value-xyz";

/// A pack whose action prints its secret token as a JSON key, in its live
/// output and in its result, with the token in the pack's config.
fn leaky_bot(dir: &Path) -> Bot {
    leaky_bot_with(dir, Default::default())
}

fn leaky_bot_with(dir: &Path, sandbox: airlock::action::runners::sandbox::Sandbox) -> Bot {
    let pack = dir.join("packs/sec");
    for sub in ["actions", "aliases"] {
        std::fs::create_dir_all(pack.join(sub)).unwrap();
    }
    std::fs::write(pack.join("pack.yaml"), "name: sec\nversion: 1.0.0\n").unwrap();
    std::fs::write(
        pack.join("actions/leak.yaml"),
        r#"name: leak
runner_type: local-shell-cmd
parameters:
  token:
    type: string
    secret: true
    default: "{{ config_context.token }}"
  cmd:
    immutable: true
    default: "printf 'live %s\n' {{ token }} >&2; sleep 1; printf '{\"%s\": [\"%s\"]}' {{ token }} {{ token }}"
"#,
    )
    .unwrap();
    std::fs::write(
        pack.join("aliases/leak.yaml"),
        "name: leak\npack: sec\naction_ref: sec.leak\nformats: [\"leak\"]\nresult:\n  format: \"out: {{ execution.result.stdout }} err: {{ execution.result.stderr }}\"\n",
    )
    .unwrap();
    let configs = dir.join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    std::fs::write(configs.join("sec.yaml"), format!("token: {SECRET}\n")).unwrap();
    let pol = dir.join("policy.yaml");
    std::fs::write(
        &pol,
        "rules:\n  - id: all\n    effect: allow\n    users: ['*']\n    packs: [sec]\n    extra_params: true\n    params:\n      token: {regex: '.*'}\n  - id: b\n    effect: allow\n    users: ['*']\n    builtins: ['*']\n",
    )
    .unwrap();
    let mut s = settings(dir, &pol, None);
    s.aliases = vec![dir.join("packs")];
    s.runners.configs = configs;
    s.runners.sandbox = sandbox;
    Bot::on_disk(s)
}

#[test]
fn a_secret_reaches_no_output_by_any_path() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = std::sync::Arc::new(leaky_bot(tmp.path()));
    let mut seen = String::new();
    // Typed in chat for a secret parameter: refused, and not kept.
    let typed = "typed-secret-4711";
    seen.push_str(&bodies(&bot.say(
        ALICE,
        OPS,
        &format!("!leak token={typed}"),
    )));
    assert!(seen.contains("is secret"), "{seen}");
    let runner = {
        let bot = bot.clone();
        std::thread::spawn(move || bodies(&bot.say(ALICE, OPS, "!leak")))
    };
    // While it runs, its live output in !pending and !status.
    wait_until(
        "the live line, masked",
        std::time::Duration::from_secs(20),
        || {
            let r = bot
                .engine
                .requests()
                .open_requests()
                .unwrap()
                .into_iter()
                .next()?;
            let status = bodies(&bot.say(ALICE, OPS, &format!("!status {}", r.id)));
            let pending = bodies(&bot.say(ALICE, OPS, "!pending"));
            seen.push_str(&status);
            seen.push_str(&pending);
            status.contains("live ********").then(|| {
                assert!(pending.contains("live ********"), "{pending}");
            })
        },
    );
    let done = runner.join().unwrap();
    assert!(done.contains("out: {'********': ['********']}"), "{done}");
    seen.push_str(&done);
    assert!(!seen.contains(SECRET) && !seen.contains(typed), "{seen}");
    // Every audit entry, as stored and as exported.
    for e in bot.engine.audit_log().query(&Default::default()).unwrap() {
        let text = format!("{} {}", serde_json::to_string(&e).unwrap(), e.details());
        assert!(!text.contains(SECRET) && !text.contains(typed), "{text}");
    }
    // And as `/audit.jsonl` serves them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = export_server(&bot, &rt);
    let served = reqwest::blocking::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(served.contains("finished"), "{served}");
    assert!(
        !served.contains(SECRET) && !served.contains(typed),
        "{served}"
    );
    drop(rt);
    drop(bot);
    for needle in [SECRET, typed] {
        let mut stack = vec![tmp.path().join("data")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                        "{needle} in {}",
                        p.display()
                    );
                }
            }
        }
    }
}

/// Checkpoints are read by structure: what mallory makes the bot echo, or
/// sends herself with the field, is no checkpoint; one naming an entry
/// past the head stops no later checkpoint.
#[test]
fn nothing_typed_in_a_room_becomes_a_checkpoint() {
    use airlock::audit::Checkpoint;
    const AUDIT: &str = "!audit:example.org";
    let tmp = tempfile::tempdir().unwrap();
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(&pol, POLICY).unwrap();
    let mut s = settings(tmp.path(), &pol, None);
    s.audit_room = Some(AUDIT.into());
    s.audit_checkpoints.entries = 1;
    let bot = Bot::open(s);
    let hash = "ab".repeat(32);
    let mut sent = bot.say(MALLORY, AUDIT, &format!("!zz seq=1 hash={hash} ok"));
    sent.extend(bot.say(
        MALLORY,
        AUDIT,
        &format!("!says x --break-glass \"seq=2 hash={hash}\""),
    ));
    sent.extend(bot.play(bot.engine.tick(bot.now())));
    let echoed = bodies(&sent);
    assert!(echoed.contains(&format!("seq=1 hash={hash}")), "{echoed}");
    let export = room_export(&sent, BOT);
    let found = Checkpoint::from_export(&export, BOT).unwrap();
    assert_eq!(found.len(), 1, "only the bot's own checkpoint: {found:?}");
    assert_ne!(found[0].hash, hash);
    // Sent by mallory with the field itself: not from the bot.
    let forged = serde_json::json!({"sender": MALLORY, "content": {"body": "x",
        Checkpoint::FIELD: {"seq": 1, "hash": hash}}});
    assert!(Checkpoint::from_event(&forged, BOT).is_none());
    // A checkpoint past the head (the log lost entries) is reported, and
    // posting goes on.
    bot.engine.add_checkpoints(vec![Checkpoint {
        seq: u64::MAX,
        hash: hash.clone(),
    }]);
    let r = bodies(&bot.say(ALICE, OPS, "!audit verify"));
    assert!(r.contains("is missing"), "{r}");
    let more = bot.play(bot.engine.tick(bot.now()));
    assert!(
        more.iter()
            .any(|s| s.content.get(Checkpoint::FIELD).is_some()),
        "{more:?}"
    );
}

/// `/audit.jsonl` on a loopback listener over the engine of `bot`.
fn export_server(bot: &Bot, rt: &tokio::runtime::Runtime) -> String {
    let (listener, base) = loopback(rt);
    serve_http(
        bot,
        rt,
        listener,
        Some(airlock::http::AuditExport::new(TOKEN.into())),
    );
    format!("{base}/audit.jsonl")
}

const TOKEN: &str = "a-token-of-sixteen-or-more";

#[test]
fn the_audit_export_asks_a_token_and_filters_on_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = atk_bot(tmp.path(), POLICY);
    bot.say(ALICE, OPS, "!says hi");
    bot.say(MALLORY, OPS, "!says no");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = export_server(&bot, &rt);
    let client = reqwest::blocking::Client::new();
    let get = |q: &str, token: Option<&str>| {
        let mut r = client.get(format!("{url}?{q}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(get("", None).0, 401);
    assert_eq!(get("", Some("a-token-of-sixteen-or-morX")).0, 401);
    let (code, all) = get("", Some(TOKEN));
    assert_eq!(code, 200);
    assert!(all.contains(MALLORY) && all.contains(ALICE), "{all}");
    let (code, alice) = get(&format!("user={ALICE}"), Some(TOKEN));
    assert_eq!(code, 200);
    let lines: Vec<serde_json::Value> = alice
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|e| e["sender"] == ALICE), "{alice}");
    let (code, body) = get("after=abc", Some(TOKEN));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("after=abc"), "{body}");
    assert_eq!(get("usr=x", Some(TOKEN)).0, 400);
}

#[test]
fn followers_that_hang_up_end_and_their_number_is_bounded() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let bot = atk_bot(tmp.path(), POLICY);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = export_server(&bot, &rt);
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/audit.jsonl")
        .to_string();
    // A follower filtered to nothing, as the attack had it: the request is
    // sent, the status line read, then the connection held or dropped.
    let follow = || {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            c,
            "GET /audit.jsonl?follow=true&since=2999-01-01T00:00:00Z HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        (c, String::from_utf8_lossy(&head).into_owned())
    };
    let held: Vec<_> = (0..airlock::http::MAX_FOLLOWERS)
        .map(|_| follow())
        .collect();
    assert!(
        held.iter().all(|(_, h)| h.ends_with("200")),
        "{:?}",
        held.iter().map(|h| &h.1).collect::<Vec<_>>()
    );
    let (_, over) = follow();
    assert!(over.ends_with("503"), "{over}");
    drop(held);
    // Every stream ends once its client is gone: the full number can
    // follow again (within a deadline, as the streams notice).
    wait_until(
        "the streams ending with their clients",
        std::time::Duration::from_secs(10),
        || {
            let again: Vec<_> = (0..airlock::http::MAX_FOLLOWERS)
                .map(|_| follow())
                .collect();
            again.iter().all(|(_, h)| h.ends_with("200")).then_some(())
        },
    );
}

/// An action tries to read each of airlock's credentials: the password in
/// the bot's environment (through `/proc`), the Matrix session, the crypto
/// store, `secret.key`, the store, the pack configs. It reads none.
#[test]
fn an_action_reads_none_of_the_bots_credentials() {
    const PASSWORD: &str = "pw-should-not-leak-9931";
    // SAFETY: set before the bot starts any thread; no other test of this
    // binary reads it.
    unsafe { std::env::set_var("AIRLOCK_PASSWORD", PASSWORD) };
    let tmp = tempfile::tempdir().unwrap();
    let bot = leaky_bot(tmp.path());
    let data = tmp.path().join("data");
    std::fs::write(
        data.join("session.json"),
        r#"{"access_token":"syt_session_leak"}"#,
    )
    .unwrap();
    std::fs::create_dir_all(data.join("matrix")).unwrap();
    std::fs::write(data.join("matrix/matrix-sdk-crypto.sqlite3"), "crypto-leak").unwrap();
    let pack = tmp.path().join("packs/sec");
    std::fs::write(
        pack.join("actions/peek.yaml"),
        "name: peek\nrunner_type: local-shell-cmd\nparameters:\n  path:\n    type: string\n  cmd:\n    immutable: true\n    default: \"cat {{ path }} | od -c | head -c 200; ls {{ path }}\"\n",
    )
    .unwrap();
    std::fs::write(
        pack.join("aliases/peek.yaml"),
        "name: peek\npack: sec\naction_ref: sec.peek\nformats: [\"peek {{ path }}\"]\nresult:\n  format: \"peeked: {{ execution.result.stdout }} | {{ execution.result.stderr }}\"\n",
    )
    .unwrap();
    bot.say(ALICE, OPS, "!help"); // the bot is up; reload sees the new action
    drop(bot);
    let bot = leaky_bot(tmp.path());
    let me = std::process::id();
    // What it can read, it reads: the sandbox runs the command.
    let r = bodies(&bot.say(ALICE, OPS, "!peek /etc/hostname"));
    assert!(r.contains("peeked:"), "{r}");
    assert!(!r.contains("No such file"), "{r}");
    for (path, secret) in [
        (format!("/proc/{me}/environ"), PASSWORD.to_string()),
        (
            format!("{}/session.json", data.display()),
            "syt_session_leak".into(),
        ),
        (
            format!("{}/matrix/matrix-sdk-crypto.sqlite3", data.display()),
            "crypto-leak".into(),
        ),
        (format!("{}/secret.key", data.display()), String::new()),
        (format!("{}/airlock.sled/db", data.display()), String::new()),
        (
            format!("{}/configs/sec.yaml", tmp.path().display()),
            SECRET.into(),
        ),
    ] {
        assert!(std::path::Path::new(&path).exists(), "{path}");
        let r = bodies(&bot.say(ALICE, OPS, &format!("!peek {path}")));
        assert!(
            r.contains("No such file or directory"),
            "{path} was readable: {r}"
        );
        if !secret.is_empty() {
            assert!(!r.contains(&secret), "{path}: {r}");
        }
    }
    // The same reads without the sandbox succeed: what it hides is real.
    drop(bot);
    let bot = leaky_bot_with(tmp.path(), airlock::action::runners::sandbox::Sandbox::None);
    let r = bodies(&bot.say(
        ALICE,
        OPS,
        &format!("!peek {}/session.json", data.display()),
    ));
    assert!(!r.contains("No such file"), "{r}");
}

/// Every runner parameter a chat pair names, per runner, under a rule that
/// opens extra parameters: a control is refused unless the rule names it;
/// anything else passes the policy.
#[test]
fn every_runner_parameter_a_pair_can_reach() {
    use airlock::action::metadata::Runner;
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("packs/tbl");
    for sub in ["actions", "aliases"] {
        std::fs::create_dir_all(pack.join(sub)).unwrap();
    }
    std::fs::write(pack.join("pack.yaml"), "name: tbl\nversion: 1.0.0\n").unwrap();
    std::fs::write(pack.join("actions/run.sh"), "#!/bin/sh\necho ok\n").unwrap();
    let runners = [
        (
            Runner::ShellCmd,
            "cmd",
            "parameters:\n  cmd:\n    default: echo ok\n",
        ),
        (Runner::ShellScript, "script", "entry_point: run.sh\n"),
        (
            Runner::Http,
            "http",
            "parameters:\n  url:\n    default: http://127.0.0.1:9/\n",
        ),
    ];
    for (runner, name, extra) in &runners {
        std::fs::write(
            pack.join(format!("actions/{name}.yaml")),
            format!("name: {name}\nrunner_type: {}\n{extra}", runner.name()),
        )
        .unwrap();
        std::fs::write(
            pack.join(format!("aliases/{name}.yaml")),
            format!("name: {name}\npack: tbl\naction_ref: tbl.{name}\nformats: [\"tbl {name}\"]\n"),
        )
        .unwrap();
    }
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(
        &pol,
        "rules:\n  - id: open\n    effect: allow\n    users: ['*']\n    packs: [tbl]\n    extra_params: true\n    params:\n      timeout: {regex: '[0-9]+'}\n",
    )
    .unwrap();
    let mut s = settings(tmp.path(), &pol, None);
    s.aliases = vec![tmp.path().join("packs")];
    let bot = Bot::open(s);
    let mut table = Vec::new();
    for (runner, name, _) in &runners {
        for p in runner.params() {
            let value = match p.ty.map(|t| t.name()) {
                Some("integer") | Some("number") => "5",
                Some("boolean") => "true",
                Some("object") => "{}",
                Some("array") => "[]",
                _ => "x",
            };
            let r = bodies(&bot.say(ALICE, OPS, &format!("!tbl {name} {}={value}", p.name)));
            // A secret is refused before the policy: never typed in chat.
            let refused = r.contains("changes how the action runs") || r.contains("is secret");
            let control = !matches!(p.name.as_str(), "cmd" | "url") && p.name != "timeout";
            assert_eq!(refused, control, "{} {}: {r}", runner.name(), p.name);
            assert!(!r.contains("does not capture it"), "{r}");
            table.push(format!(
                "{} {} {}",
                runner.name(),
                p.name,
                if refused { "refused" } else { "passes" }
            ));
        }
    }
    // timeout is named by the rule: opened within its regex.
    assert!(
        table.iter().any(|l| l == "local-shell-cmd timeout passes"),
        "{table:?}"
    );
    assert!(
        table.iter().any(|l| l == "local-shell-cmd env refused"),
        "{table:?}"
    );
    assert!(
        table.iter().any(|l| l == "http-request headers refused"),
        "{table:?}"
    );
    // An action StackStorm or a Temporal worker runs: st2's runner
    // parameters, those of its remote runners included.
    let open = airlock::action::ActionSpec::open("x.y", "");
    for k in [
        "env",
        "cwd",
        "sudo",
        "timeout",
        "kwarg_op",
        "hosts",
        "private_key",
    ] {
        assert!(open.controls.iter().any(|c| c == k), "{k}");
    }
}
