//! Actions routed to StackStorm (`st2:` in the config), run by the engine
//! against the st2 API stand-in (`tests/st2/stand_in.py`, itself checked
//! with st2client in `tests/st2client.rs`). Needs AIRLOCK_TEST_ST2_VENV
//! (scripts/test sets it); SKIPPED without.

mod common;

use airlock::action::st2::St2Config;
use common::st2::{DB_PASSWORD, KEY, StandIn, venv};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The environment variable a bot would read the API key from: the
/// tests hand the key in instead (`St2Config::api_key`), so none sets it.
const KEY_ENV: &str = "AIRLOCK_TEST_ST2_API_KEY_UNSET";

const POLICY: &str = r#"
groups:
  ops: ["@alice:example.org", "@bob:example.org"]
rules:
  - id: st2-ops
    effect: allow
    groups: [ops]
    packs: [st2ops]
    # Pairs reach StackStorm, which refuses what its action does not take.
    extra_params: true
    confirm: {approvers: {groups: [ops]}, self_approve: false}
  - id: st2-planned
    effect: allow
    groups: [ops]
    packs: [st2plan]
    confirm: {approvers: {groups: [ops]}, self_approve: false}
    # A plan on StackStorm: the same action, its message overridden.
    plan: {parameters: {message: "plan of the deploy"}}
  - id: st2-failing-plan
    effect: allow
    groups: [ops]
    packs: [st2failplan]
    confirm: {approvers: {groups: [ops]}, self_approve: false}
    # Another action of StackStorm's, which fails: the request is refused.
    plan: {action: tests.fail}
  - id: tools
    effect: allow
    groups: [ops]
    builtins: ["*"]
  - id: st2-announces
    effect: allow
    users: ["@st2:example.org"]
    rooms: ["!ops:example.org"]
    builtins: [announce]
"#;

fn alias(name: &str, action: &str, format: &str) -> String {
    format!(
        "name: {name}\npack: st2ops\naction_ref: {action}\nformats:\n  - \"{format}\"\nresult:\n  format: \"st2 {{{{ execution.id }}}} {{{{ execution.status }}}}: {{{{ execution.result.stdout }}}}\"\n"
    )
}

fn bot(dir: &std::path::Path, url: &str) -> Bot {
    write_aliases(dir);
    reopen(dir, url)
}

/// The bot over what `bot` wrote in `dir`, as a restart finds it.
fn reopen(dir: &std::path::Path, url: &str) -> Bot {
    with_key(dir, url, KEY)
}

/// The bot with StackStorm API key `key`.
fn with_key(dir: &std::path::Path, url: &str, key: &str) -> Bot {
    let mut s = settings(dir, &dir.join("p.yaml"), None);
    s.aliases = vec![dir.join("aliases")];
    let mut st2 = serde_yaml::from_str::<St2Config>(&format!(
        "url: {url}\napi_key_env: {KEY_ENV}\nactions: [\"tests.*\"]\n"
    ))
    .unwrap();
    st2.api_key = Some(airlock::action::st2::ApiKey(key.into()));
    s.st2 = Some(st2);
    Bot::open(s)
}

/// A stand-in, and a bot in a directory of its own using it.
fn setup() -> Option<(StandIn, tempfile::TempDir, Arc<Bot>)> {
    let venv = venv()?;
    let st2 = StandIn::start(&venv);
    let tmp = tempfile::tempdir().unwrap();
    let bot = Arc::new(bot(tmp.path(), &st2.url));
    Some((st2, tmp, bot))
}

fn write_aliases(dir: &std::path::Path) {
    let aliases = [
        (
            "echo.yaml",
            alias("echo", "tests.echo", "st2 echo {{ message }}"),
        ),
        ("fail.yaml", alias("fail", "tests.fail", "st2 fail")),
        (
            "slow.yaml",
            alias("slow", "tests.slow", "st2 slow {{ seconds }}"),
        ),
        ("nope.yaml", alias("nope", "tests.nope", "st2 nope")),
        (
            "ask.yaml",
            alias("ask", "tests.ask", "st2 ask {{ question }}"),
        ),
        (
            "timeout.yaml",
            alias("timeout", "tests.timeout", "st2 timeout"),
        ),
        (
            "queued.yaml",
            alias("queued", "tests.queued", "st2 queued {{ message }}"),
        ),
        (
            "abandon.yaml",
            alias("abandon", "tests.abandon", "st2 abandon"),
        ),
        (
            "local.yaml",
            alias("local", "core.echo", "local echo {{ message }}"),
        ),
    ];
    let alias_dir = dir.join("aliases");
    std::fs::create_dir_all(&alias_dir).unwrap();
    for (f, t) in &aliases {
        std::fs::write(alias_dir.join(f), t).unwrap();
    }
    std::fs::write(
        alias_dir.join("planned.yaml"),
        alias("planned", "tests.echo", "st2 planned {{ message }}")
            .replace("pack: st2ops", "pack: st2plan"),
    )
    .unwrap();
    std::fs::write(
        alias_dir.join("failplanned.yaml"),
        alias("failplanned", "tests.echo", "st2 failplanned {{ message }}")
            .replace("pack: st2ops", "pack: st2failplan"),
    )
    .unwrap();
    std::fs::write(dir.join("p.yaml"), POLICY).unwrap();
}

/// `cmd` from alice, approved by bob on another thread (the run blocks
/// it), once its output shows in `!status`: the request id and the thread
/// that ends with the bot's answers.
fn running(bot: &Arc<Bot>, cmd: &str) -> (String, std::thread::JoinHandle<String>) {
    let p = prompt(&bot.say(ALICE, OPS, cmd)).clone();
    let request = request_id(&p.body);
    let runner = {
        let (bot, event) = (bot.clone(), p.event_id.clone());
        std::thread::spawn(move || bodies(&bot.reply(BOB, OPS, &event, "yes")))
    };
    wait_until(
        "the run's first output line",
        Duration::from_secs(60),
        || {
            bodies(&bot.say(ALICE, OPS, &format!("!status {request}")))
                .contains("│ tick")
                .then_some(())
        },
    );
    (request, runner)
}

/// airlock stops while `runner` waits on a run (`what` names it): nothing
/// is reported at shutdown. The bot as the next start finds it.
fn restart(
    bot: Arc<Bot>,
    runner: std::thread::JoinHandle<String>,
    what: &str,
    dir: &std::path::Path,
    url: &str,
) -> Arc<Bot> {
    bot.engine.begin_shutdown();
    let said = runner.join().unwrap();
    assert!(!said.contains(what), "nothing reported at shutdown: {said}");
    bot.engine.interrupt_running(bot.now());
    drop(bot);
    Arc::new(reopen(dir, url))
}

/// `st2 execution list -j --action <action>` with `more` arguments.
fn executions(st2: &StandIn, action: &str, more: &[&str]) -> String {
    let args = [&["execution", "list", "-j", "--action", action], more].concat();
    st2.st2(&args).1
}

fn approved(bot: &Bot, cmd: &str) -> String {
    let p = prompt(&bot.say(ALICE, OPS, cmd)).clone();
    bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"))
}

#[test]
fn a_run_on_stackstorm_reports_its_execution_and_audits_it() {
    let Some((st2, _tmp, bot)) = setup() else {
        return;
    };
    // The prompt says where it runs; the approved run reports st2's
    // execution and its result through the alias's template.
    let p = prompt(&bot.say(ALICE, OPS, "!st2 echo hello")).clone();
    assert!(
        p.body.contains("runs on StackStorm at http://127.0.0.1:"),
        "{}",
        p.body
    );
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    let id = r
        .split_whitespace()
        .find(|w| w.len() == 24 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no st2 execution id in {r}"));
    assert!(r.contains(&format!("st2 {id} succeeded: hello")), "{r}");
    let ex = st2.execution(id);
    assert_eq!(ex["parameters"]["message"], "hello");
    let (_, ctx) = st2.st2(&["execution", "get", id, "-j", "--attr", "context"]);
    let ctx: serde_json::Value =
        serde_json::from_str(&ctx).unwrap_or_else(|e| panic!("{e}: {ctx}"));
    assert_eq!(ctx["context"]["airlock"]["requester"], ALICE, "{ctx}");
    assert_eq!(ctx["context"]["api_user"], ALICE, "{ctx}");
    assert_eq!(
        ctx["context"]["airlock"]["approvers"],
        serde_json::json!([BOB]),
        "{ctx}"
    );
    // The audit holds st2's execution id and the parameters st2 ran.
    let finished = bot
        .engine
        .audit_log()
        .query(&airlock::audit::Query {
            event: Some("finished".into()),
            ..Default::default()
        })
        .unwrap();
    let last = finished.last().unwrap();
    assert_eq!(
        last.details()["st2_execution"]["id"],
        id,
        "{:?}",
        last.details()
    );
    assert_eq!(
        last.details()["st2_execution"]["parameters"]["message"],
        "hello"
    );
}

#[test]
fn a_chat_value_holding_jinja_reaches_stackstorm_as_data() {
    let Some((_st2, _tmp, bot)) = setup() else {
        return;
    };
    // A chat value holding Jinja reaches st2 as data: st2 renders it back
    // to the text typed, and the datastore stays out of the result.
    let r = approved(&bot, "!st2 echo {{ st2kv.system.db_password }}");
    assert!(
        r.contains("succeeded: {{ st2kv.system.db_password }}"),
        "{r}"
    );
    assert!(!r.contains(DB_PASSWORD), "{r}");
}

#[test]
fn stackstorm_endings_and_refusals_reach_the_room() {
    let Some((_st2, _tmp, bot)) = setup() else {
        return;
    };
    // Slow scheduling: st2 holds it `scheduled` for a while; it is
    // followed until it runs and ends.
    let r = approved(&bot, "!st2 queued eventually");
    assert!(r.contains("succeeded: eventually"), "{r}");
    // st2 itself refuses a value (400): its faultstring reaches the room.
    let r = approved(&bot, "!st2 slow soon");
    assert!(
        r.contains("StackStorm said: 'soon' is not of type 'integer' (HTTP 400"),
        "{r}"
    );

    // st2's other endings: timeout, abandoned.
    let r = approved(&bot, "!st2 timeout");
    assert!(r.contains(" timeout:"), "{r}");
    let r = approved(&bot, "!st2 abandon");
    assert!(r.contains(" abandoned:"), "{r}");

    // Failures say so; an action st2 lacks, or parameters it does not
    // take, are refused before anyone is asked to approve.
    let r = approved(&bot, "!st2 fail");
    assert!(r.contains("failed"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, "!st2 nope"));
    assert!(r.contains("cannot run") && r.contains("tests.nope"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, "!st2 echo hi colour=blue"));
    assert!(r.contains("takes no parameter colour"), "{r}");
    // Actions not routed still run here.
    let r = approved(&bot, "!local echo here");
    assert!(!r.contains("StackStorm"), "{r}");
}

#[test]
fn a_cut_stream_is_polled_and_cancel_stops_the_execution_there() {
    let Some((st2, _tmp, bot)) = setup() else {
        return;
    };
    // The stream is cut mid-run: airlock polls, and the result still
    // arrives, once.
    let (_, runner) = running(&bot, "!st2 slow 2");
    st2.control("/_test/cut_streams");
    let done = runner.join().unwrap();
    assert_eq!(done.matches("succeeded: done").count(), 1, "{done}");

    // `!cancel` on a running st2 execution cancels it there; its output
    // shows in `!status` while it runs.
    let (request, runner) = running(&bot, "!st2 slow 30");
    let r = bodies(&bot.say(BOB, OPS, &format!("!cancel {request}")));
    assert!(r.contains("Stopping request"), "{r}");
    let done = runner.join().unwrap();
    assert!(done.contains("canceled"), "{done}");
    let cancelled = executions(&st2, "tests.slow", &["-n", "1"]);
    assert!(cancelled.contains("\"canceled\""), "{cancelled}");
}

#[test]
fn a_restart_reattaches_to_a_running_execution_and_never_resubmits() {
    let Some((st2, tmp, bot)) = setup() else {
        return;
    };
    // airlock stops while an execution runs on st2: it is not cancelled
    // there, and the next start re-attaches by the request id in its
    // context and reports it once, never submitting it again.
    let (request, runner) = running(&bot, "!st2 slow 3");
    let bot = restart(bot, runner, "slow", tmp.path(), &st2.url);
    assert_eq!(
        bot.engine
            .requests()
            .get(&request)
            .unwrap()
            .unwrap()
            .state
            .name(),
        "running",
        "left running for the next start"
    );
    let r = bodies(&bot.play(bot.engine.take_startup_effects()));
    assert!(
        r.contains(&format!("♻️ airlock restarted while request {request}"))
            && r.contains("re-attached, not run again")
            && r.contains("succeeded: done"),
        "{r}"
    );
    let list = executions(&st2, "tests.slow", &["--attr", "context", "id"]);
    assert_eq!(list.matches(&request).count(), 1, "submitted once: {list}");
    assert_eq!(
        bot.engine
            .requests()
            .get(&request)
            .unwrap()
            .unwrap()
            .state
            .name(),
        "succeeded"
    );
}

#[test]
fn a_submission_answered_503_is_asked_after_and_runs_once() {
    let Some((st2, _tmp, bot)) = setup() else {
        return;
    };
    // st2 answers 503 twice as the request is submitted: airlock asks
    // whether it arrived, tries again, and the run succeeds once.
    let p = prompt(&bot.say(ALICE, OPS, "!st2 echo after an outage")).clone();
    st2.control("/_test/fail?status=503&count=2");
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("succeeded: after an outage"), "{r}");
    let list = executions(&st2, "tests.echo", &["--attr", "parameters"]);
    assert_eq!(
        list.matches("after an outage").count(),
        1,
        "submitted once: {list}"
    );
}

#[test]
fn a_workflow_question_is_a_prompt_answered_under_the_approver_rules() {
    let Some((st2, _tmp, bot)) = setup() else {
        return;
    };
    // A workflow stops to ask (core.ask): its question becomes a prompt
    // in the room, answered under the same approver rules (not by the
    // requester), and the answer goes back to st2, which goes on.
    let p = prompt(&bot.say(ALICE, OPS, "!st2 ask Deploy to prod now?")).clone();
    let runner = {
        let (bot, event) = (bot.clone(), p.event_id.clone());
        std::thread::spawn(move || bodies(&bot.reply(BOB, OPS, &event, "yes")))
    };
    let question = wait_until("StackStorm's question", Duration::from_secs(60), || {
        let sent = bot.play(bot.engine.tick(bot.now()));
        sent.into_iter()
            .find(|m| m.body.starts_with("❓ StackStorm asks"))
    });
    assert!(
        question.body.contains("Deploy to prod now?")
            && question.body.contains("not the requester"),
        "{}",
        question.body
    );
    let r = bodies(&bot.reply(ALICE, OPS, &question.event_id, "yes"));
    assert!(r.contains("someone else must approve it"), "{r}");
    let r = bodies(&bot.reply(BOB, OPS, &question.event_id, "yes"));
    assert!(r.contains("answered yes to StackStorm's question"), "{r}");
    let done = runner.join().unwrap();
    assert!(done.contains("succeeded"), "{done}");
    let asked = executions(&st2, "tests.ask", &["--attr", "result"]);
    assert!(asked.contains("\"approved\": true"), "{asked}");
}

#[test]
fn a_question_open_across_a_restart_is_not_asked_again() {
    let Some((st2, tmp, bot)) = setup() else {
        return;
    };
    // airlock stops while the question waits: the next start follows the
    // same workflow and waits on the prompt already in the room; it does
    // not ask again, and the answer to that prompt is the one st2 gets.
    let p = prompt(&bot.say(ALICE, OPS, "!st2 ask Roll back now?")).clone();
    let request = request_id(&p.body);
    let runner = {
        let (bot, event) = (bot.clone(), p.event_id.clone());
        std::thread::spawn(move || bodies(&bot.reply(BOB, OPS, &event, "yes")))
    };
    let question = wait_until("the rollback question", Duration::from_secs(60), || {
        let sent = bot.play(bot.engine.tick(bot.now()));
        sent.into_iter().find(|m| m.body.contains("Roll back now?"))
    });
    let bot = restart(bot, runner, "Roll back", tmp.path(), &st2.url);
    let (done_tx, done) = std::sync::mpsc::channel();
    {
        let bot = bot.clone();
        std::thread::spawn(move || {
            let fx = bot.engine.take_startup_effects();
            let _ = done_tx.send(bodies(&bot.play(fx)));
        });
    }
    // The re-attached run reached the question once its output says so.
    wait_until(
        "the re-attached run at the question",
        Duration::from_secs(60),
        || {
            bodies(&bot.say(ALICE, OPS, &format!("!status {request}")))
                .contains("│ StackStorm asks: Roll back now?")
                .then_some(())
        },
    );
    let r = bodies(&bot.reply(BOB, OPS, &question.event_id, "yes"));
    assert!(r.contains("answered yes to StackStorm's question"), "{r}");
    let mut again = Vec::new();
    let resumed = wait_until(
        "the answer reaching the re-attached run",
        Duration::from_secs(60),
        || {
            again.extend(bot.play(bot.engine.tick(bot.now())));
            match done.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => Some(r),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(e) => panic!("the resumed run ended without an answer: {e}"),
            }
        },
    );
    assert!(
        resumed.contains(&format!("♻️ airlock restarted while request {request}"))
            && resumed.contains("succeeded"),
        "{resumed}"
    );
    assert!(
        !again.iter().any(|m| m.body.contains("❓")),
        "asked again: {again:?}"
    );
    let asked = executions(&st2, "tests.ask", &["-n", "1", "--attr", "result"]);
    assert!(asked.contains("\"approved\": true"), "{asked}");
}

#[test]
fn plans_run_on_stackstorm_before_the_prompt() {
    let Some((st2, _tmp, bot)) = setup() else {
        return;
    };
    // A plan runs on StackStorm before the prompt, as its own execution;
    // approvers see its output, then the request itself runs.
    let p = prompt(&bot.say(ALICE, OPS, "!st2 planned the deploy")).clone();
    assert!(
        p.body.contains("📋 Its plan (tests.echo) shows")
            && p.body.contains("  plan of the deploy"),
        "{}",
        p.body
    );
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(r.contains("succeeded: the deploy"), "{r}");
    let runs = executions(&st2, "tests.echo", &["-n", "2", "--attr", "parameters"]);
    assert!(
        runs.contains("plan of the deploy") && runs.contains("\"the deploy\""),
        "{runs}"
    );

    // A plan that runs and fails on StackStorm refuses the request, with
    // its output; nothing is asked and nothing runs.
    let r = bodies(&bot.say(ALICE, OPS, "!st2 failplanned the deploy"));
    assert!(
        r.contains("cannot run: its plan (tests.fail) failed:")
            && !r.contains("Confirmation needed"),
        "{r}"
    );
}

#[test]
fn announcements_reach_only_the_rooms_the_policy_allows() {
    let Some((_st2, _tmp, bot)) = setup() else {
        return;
    };
    // st2's announcements reach the rooms the policy lets it post to, and
    // only those.
    let sent = bot.play(bot.engine.announce(
        "@st2:example.org",
        &serde_json::json!({"channel": OPS, "message": "v2 is live"}),
        bot.now(),
    ));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].room, OPS);
    assert_eq!(sent[0].body, "📣 StackStorm: v2 is live");
    let sent = bot.play(bot.engine.announce(
        "@st2:example.org",
        &serde_json::json!({"channel": "!elsewhere:example.org", "message": "psst"}),
        bot.now(),
    ));
    assert!(sent.is_empty(), "{sent:?}");
    let events = bot.audit_events();
    assert!(
        events.ends_with(&["announced".to_string(), "announced".to_string()]),
        "{events:?}"
    );
}

/// A wrong key: a message naming the problem, nothing run.
#[test]
fn a_wrong_api_key_is_named_and_nothing_runs() {
    let Some(venv) = venv() else { return };
    let st2 = StandIn::start(&venv);
    let tmp = tempfile::tempdir().unwrap();
    write_aliases(tmp.path());
    let bot = with_key(tmp.path(), &st2.url, "wrong-key");
    let r = bodies(&bot.say(ALICE, OPS, "!st2 echo hi"));
    assert!(r.contains("refused the API key"), "{r}");
}
