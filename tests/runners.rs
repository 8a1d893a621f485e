//! Packs' own actions, run by airlock's runners through the whole
//! pipeline: the example pack in `tests/packs/deploy_example` (a
//! `local-shell-script` deploy with positional, named and secret
//! parameters and JSON output; a `local-shell-cmd` with a `cmd` template;
//! a long command for cancel) and `core.http` against a loopback server.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;

const SECRET: &str = "s3cr3t-t0ken-value";

const POLICY: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: deploys
    effect: allow
    groups: [ops]
    aliases: [deploy_example.deploy]
    # The format does not capture environment: a chat pair sets it.
    extra_params: true
    confirm:
      approvers: {groups: [ops]}
      approvals: 1
      expires: 10m
  - id: tools
    effect: allow
    groups: [ops]
    aliases: [deploy_example.say, deploy_example.sleep, examples.notify]
  - id: builtins
    effect: allow
    groups: [ops]
    builtins: ["*"]
"#;

fn example_packs() -> PathBuf {
    repo_root().join("tests/packs")
}

/// A bot over the example pack, its config holding the secret token.
fn bot(dir: &Path, extra_aliases: Option<PathBuf>) -> Bot {
    let pol = dir.join("policy.yaml");
    std::fs::write(&pol, POLICY).unwrap();
    let configs = dir.join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    std::fs::write(
        configs.join("deploy_example.yaml"),
        format!("api_token: {SECRET}\n"),
    )
    .unwrap();
    let mut s = settings(dir, &pol, None);
    s.aliases = vec![example_packs()];
    s.aliases.extend(extra_aliases);
    s.runners.configs = configs;
    Bot::open(s)
}

/// Every file under `dir`, searched for `needle` as bytes.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(p);
            }
        }
    }
    hits
}

#[test]
fn a_script_deploy_runs_after_approval_and_its_json_reaches_the_result_template() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = bot(tmp.path(), None);
    let p = prompt(&bot.say(ALICE, OPS, "!deploy web v1.2.3 environment=prod")).clone();
    assert!(p.body.contains("service: web"), "{}", p.body);
    assert!(p.body.contains("environment: prod"), "{}", p.body);
    // The secret is masked in the prompt, never shown.
    assert!(p.body.contains("token: ********"), "{}", p.body);
    assert!(!p.body.contains(SECRET));
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("Deployed web v1.2.3 to prod"), "{r}");
    // The default comes from the pack's config schema when none is named.
    let p = prompt(&bot.say(ALICE, OPS, "!deploy api 2.0")).clone();
    assert!(p.body.contains("environment: staging"), "{}", p.body);
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("Deployed api 2.0 to staging"), "{r}");
    // An enum refuses what it does not list, before anything is asked.
    let r = bodies(&bot.say(ALICE, OPS, "!deploy web 1 environment=moon"));
    assert!(r.contains("must be one of"), "{r}");

    // What the script received: named before positional, as st2 builds it,
    // and the secret (which it printed) masked in what the room sees and
    // in what is stored.
    let req = bot
        .engine
        .requests()
        .get(&p.prompt_for.clone().unwrap())
        .unwrap()
        .unwrap();
    let result = req.result.unwrap();
    let stdout = &result["stdout"];
    assert_eq!(
        stdout["argv"],
        serde_json::json!([
            "--version=2.0",
            "--environment=staging",
            "--token=********",
            "api"
        ]),
        "{result}"
    );
    assert_eq!(stdout["token_length"], SECRET.len());
    assert_eq!(result["stderr"], "authenticating with ********");
    let finished = bot
        .engine
        .audit_log()
        .query(&Default::default())
        .unwrap()
        .into_iter()
        .rfind(|e| e.event == "finished")
        .unwrap();
    assert!(
        finished.details()["secrets"]["token"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:"),
        "{}",
        finished.details()
    );
    // The full result is in the audit entry.
    assert_eq!(finished.details()["result"]["stdout"]["service"], "api");
    drop(bot);
    assert_eq!(
        files_containing(&tmp.path().join("data"), SECRET),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn chat_values_are_data_never_code_nor_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pwned");
    let m = marker.display();
    let bot = bot(tmp.path(), None);
    for payload in [
        format!("hi; touch {m}"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("a' ; touch {m}; echo 'b"),
        format!("a\" ; touch {m}; echo \"b"),
        format!("a\ntouch {m}"),
        "{{ config_context }}".to_string(),
        "{% for x in [1,2] %}{{ x }}{% endfor %}".to_string(),
    ] {
        let r = bodies(&bot.say(ALICE, OPS, &format!("!say {payload}")));
        assert!(r.contains(&format!("said: {payload}")), "{payload}: {r}");
        assert!(!marker.exists(), "{payload} ran something");
    }
    // A value the command would read as an option needs the rule's say-so.
    let r = bodies(&bot.say(ALICE, OPS, "!say --help"));
    assert!(r.contains("parameter text=--help starts with -"), "{r}");
    // Through the script runner too: one argument each, as given.
    for payload in [
        format!("x;touch {m}"),
        "{{ config_context.api_token }}".into(),
    ] {
        let p = prompt(&bot.say(ALICE, OPS, &format!("!deploy {payload} 1"))).clone();
        let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
        assert!(r.contains(&format!("Deployed {payload} 1")), "{r}");
        assert!(!marker.exists());
        assert!(!r.contains(SECRET));
    }
    // A secret parameter cannot be given in chat at all.
    let r = bodies(&bot.say(ALICE, OPS, "!deploy web 1 token=abc"));
    assert!(r.contains("token"), "{r}");
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());
}

#[test]
fn the_child_never_sees_airlocks_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: set before the bot starts any thread that reads it; this
    // test binary's other tests do not read these variables.
    unsafe {
        std::env::set_var("AIRLOCK_ACCESS_TOKEN", "syt_should_not_leak");
        std::env::set_var("AIRLOCK_STORE_PASSPHRASE", "pass_should_not_leak");
    }
    let bot = bot(tmp.path(), None);
    let r = bodies(&bot.say(ALICE, OPS, "!say $AIRLOCK_ACCESS_TOKEN"));
    // Quoted: the shell does not expand it…
    assert!(r.contains("said: $AIRLOCK_ACCESS_TOKEN"), "{r}");
    let aliases = tmp.path().join("aliases");
    std::fs::create_dir_all(&aliases).unwrap();
    std::fs::write(
        aliases.join("env.yaml"),
        "name: env\npack: examples\naction_ref: core.local\nformats:\n  - \"show env\"\nimmutable_parameters:\n  cmd: env\nresult:\n  format: \"{{ execution.result.stdout }}\"\n",
    )
    .unwrap();
    drop(bot);
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(&pol, format!("{POLICY}  - id: env\n    effect: allow\n    groups: [ops]\n    aliases: [examples.env]\n")).unwrap();
    let bot = bot_with_policy(tmp.path(), Some(aliases));
    // …and the environment has neither variable.
    let r = bodies(&bot.say(ALICE, OPS, "!show env"));
    assert!(r.contains("ST2_ACTION_PACK_NAME=core"), "{r}");
    assert!(!r.contains("should_not_leak"), "{r}");
}

/// Like [`bot`], keeping the policy already written in `dir`.
fn bot_with_policy(dir: &Path, extra: Option<PathBuf>) -> Bot {
    let mut s = settings(dir, &dir.join("policy.yaml"), None);
    s.aliases = vec![example_packs()];
    s.aliases.extend(extra);
    s.runners.configs = dir.join("configs");
    Bot::open(s)
}

#[test]
fn sudo_is_refused_unless_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let aliases = tmp.path().join("aliases");
    std::fs::create_dir_all(&aliases).unwrap();
    std::fs::write(
        aliases.join("root.yaml"),
        "name: root\npack: examples\naction_ref: core.local_sudo\nformats:\n  - \"as root {{ cmd }}\"\n",
    )
    .unwrap();
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(&pol, format!("{POLICY}  - id: root\n    effect: allow\n    groups: [ops]\n    aliases: [examples.root]\n")).unwrap();
    let bot = bot_with_policy(tmp.path(), Some(aliases));
    let r = bodies(&bot.say(ALICE, OPS, "!as root id -u"));
    assert!(r.contains("runners.allow_sudo"), "{r}");
    assert!(bot.engine.requests().open_requests().unwrap().is_empty());
}

#[test]
fn cancel_stops_a_running_command_and_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let bot = Arc::new(bot(tmp.path(), None));
    let runner = {
        let bot = bot.clone();
        std::thread::spawn(move || bodies(&bot.say(ALICE, OPS, "!sleep 317")))
    };
    // Wait until the command runs and has printed its first line.
    let id = loop {
        let open = bot.engine.requests().open_requests().unwrap();
        if let Some(r) = open.first() {
            let status = bodies(&bot.say(ALICE, OPS, &format!("!status {}", r.id)));
            if status.contains("│ started") {
                assert!(status.contains("running for"), "{status}");
                break r.id.clone();
            }
        }
        std::thread::yield_now();
    };
    let r = bodies(&bot.say(BOB, OPS, &format!("!cancel {id}")));
    assert!(r.contains("Stopping request"), "{r}");
    let done = runner.join().unwrap();
    assert!(done.contains("deploy_example.sleep canceled"), "{done}");
    let req = bot.engine.requests().get(&id).unwrap().unwrap();
    assert_eq!(req.state.name(), "cancelled");
    assert!(
        req.summary.as_deref().unwrap().contains(BOB),
        "{:?}",
        req.summary
    );
    // No `sleep 317` is left behind.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.trim() == "sleep 317")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A loopback HTTP server answering one request with JSON; returns its
/// port and what it received.
fn one_shot_server() -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let answer = r#"{"ok": true, "id": 42}"#;
        write!(
            conn,
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        head + String::from_utf8_lossy(&body).as_ref()
    });
    (port, h)
}

#[test]
fn core_http_posts_to_a_loopback_server_and_renders_its_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, server) = one_shot_server();
    let aliases = tmp.path().join("aliases");
    std::fs::create_dir_all(&aliases).unwrap();
    std::fs::write(
        aliases.join("notify.yaml"),
        format!(
            "name: notify\npack: examples\naction_ref: core.http\nformats:\n  - \"notify {{{{ body }}}}\"\nimmutable_parameters:\n  url: \"http://127.0.0.1:{port}/hooks/deploy\"\n  method: POST\n  headers:\n    Content-Type: application/json\nresult:\n  format: \"HTTP {{{{ execution.result.status_code }}}}: created {{{{ execution.result.body.id }}}}\"\n"
        ),
    )
    .unwrap();
    let bot = bot(tmp.path(), Some(aliases));
    let r = bodies(&bot.say(
        ALICE,
        OPS,
        r#"!notify {"service": "web", "note": "{{ config_context }}"}"#,
    ));
    assert!(r.contains("HTTP 201: created 42"), "{r}");
    let seen = server.join().unwrap();
    assert!(seen.starts_with("POST /hooks/deploy HTTP/1.1"), "{seen}");
    assert!(
        seen.to_ascii_lowercase().contains("x-stanley-action: http"),
        "{seen}"
    );
    // The body arrived as data, re-encoded compactly as st2 does.
    assert!(
        seen.ends_with(r#"{"service":"web","note":"{{ config_context }}"}"#),
        "{seen}"
    );
}

/// The Matrix transport runs actions with `spawn_blocking`: the http
/// runner's blocking client must work (and be dropped) there.
#[test]
fn the_http_runner_works_off_a_tokio_runtimes_blocking_pool() {
    let (port, server) = one_shot_server();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, result) = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                let mut p = serde_json::Map::new();
                p.insert("url".into(), format!("http://127.0.0.1:{port}/x").into());
                airlock::action::runners::http::Request::from_params(&p, "core.http")
                    .unwrap()
                    .send()
                    .unwrap()
            })
            .await
        })
        .unwrap();
    assert_eq!(status, "succeeded");
    assert_eq!(result["body"]["id"], 42);
    server.join().unwrap();
}
