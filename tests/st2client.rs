//! The st2 API stand-in (`tests/st2/stand_in.py`) checked with StackStorm's
//! own client, PyPI st2client 3.9.0 (`scripts/st2client` installs it;
//! `scripts/test` exports AIRLOCK_TEST_ST2_VENV): `st2 run`, `st2 execution
//! get -j`, `st2 execution tail`, `st2 execution cancel` and `st2 inquiry
//! respond` work against it, so its paths, headers, SSE framing and fields
//! are the ones real st2 speaks. Without the variable the tests say
//! SKIPPED and pass.

mod common;

use common::st2::{DB_PASSWORD, StandIn, venv};

#[test]
fn st2_run_and_execution_get_speak_to_the_stand_in() {
    let Some(venv) = venv() else { return };
    let s = StandIn::start(&venv);
    let (code, out) = s.st2(&["run", "tests.echo", "message=hello from st2client", "-j"]);
    assert_eq!(code, Some(0), "{out}");
    let ex: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(ex["status"], "succeeded", "{ex}");
    assert_eq!(ex["result"]["stdout"], "hello from st2client");
    assert_eq!(ex["action"]["ref"], "tests.echo");
    let id = ex["id"].as_str().unwrap();
    let got = s.execution(id);
    assert_eq!(got["parameters"]["message"], "hello from st2client");

    // A failing action, an unknown one, a bad key: st2's answers.
    let (code, out) = s.st2(&["run", "tests.fail"]);
    assert_ne!(code, Some(0));
    assert!(out.contains("failed"), "{out}");
    let (code, out) = s.st2(&["run", "tests.nope"]);
    assert_ne!(code, Some(0));
    assert!(out.contains("tests.nope"), "{out}");
    let (code, out) = s.st2_with("wrong-key", &["run", "tests.echo", "message=x"]);
    assert_ne!(code, Some(0));
    assert!(out.contains("Unauthorized"), "{out}");
}

/// Like st2, the stand-in renders any parameter holding Jinja with the
/// datastore: a chat value that reached it unescaped would read secrets.
/// (airlock's StackStorm executor must send chat values so this cannot
/// happen; this test shows the stand-in can catch it if it does.)
#[test]
fn the_stand_in_renders_parameters_with_the_datastore_as_st2_does() {
    let Some(venv) = venv() else { return };
    let s = StandIn::start(&venv);
    let (code, out) = s.st2(&[
        "run",
        "tests.echo",
        "message={{ st2kv.system.db_password }}",
        "-j",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(DB_PASSWORD), "{out}");
    // Jinja's own escaping leaves it literal, as st2 would.
    let (code, out) = s.st2(&[
        "run",
        "tests.echo",
        "message={{ '{{' }} st2kv.system.db_password }}",
        "-j",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(DB_PASSWORD), "{out}");
    assert!(out.contains("{{ st2kv.system.db_password }}"), "{out}");
}

#[test]
fn st2_execution_tail_and_cancel_follow_the_event_stream() {
    let Some(venv) = venv() else { return };
    let s = StandIn::start(&venv);
    // Long enough that the client (a Python start, slow on a busy
    // machine) is tailing before the last ticks: tail shows only what
    // comes after it starts.
    let id = s.run_async(&["tests.slow", "seconds=8"]);
    let (code, out) = s.st2(&["execution", "tail", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("tick 7"),
        "the output came over the stream: {out}"
    );
    assert!(
        out.contains(&format!("Execution {id} has completed (status=succeeded).")),
        "{out}"
    );
    let slow = s.run_async(&["tests.slow", "seconds=10"]);
    s.wait_status(&slow, "running");
    let (code, out) = s.st2(&["execution", "cancel", &slow]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("action execution with id {slow} canceled.")),
        "{out}"
    );
    s.wait_status(&slow, "canceled");
    let (_, out) = s.st2(&["execution", "cancel", &id]);
    assert!(
        out.contains("Action cannot be canceled. State = succeeded."),
        "{out}"
    );
}

#[test]
fn st2_inquiry_respond_answers_a_paused_workflow() {
    let Some(venv) = venv() else { return };
    let s = StandIn::start(&venv);
    let id = s.run_async(&["tests.ask", "question=Deploy to prod?"]);
    let ex = s.wait_status(&id, "pending");
    let inquiry = ex["result"]["inquiry"].as_str().unwrap().to_string();
    let (code, out) = s.st2(&["inquiry", "get", &inquiry, "-j"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Deploy to prod?"), "{out}");
    let (code, out) = s.st2(&[
        "inquiry",
        "respond",
        &inquiry,
        "-r",
        r#"{"approved": true}"#,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("Response accepted for inquiry {inquiry}.")),
        "{out}"
    );
    let done = s.wait_status(&id, "succeeded");
    assert_eq!(done["result"]["response"]["approved"], true, "{done}");
}

/// Chat values reach st2 as literals (`airlock::action::st2::literal`):
/// st2's renderer (the stand-in uses Jinja2 as st2 does) turns each back
/// into exactly what was typed, and no datastore value leaks.
#[test]
fn chat_values_sent_as_literals_come_back_unrendered() {
    let Some(venv) = venv() else { return };
    let s = StandIn::start(&venv);
    let typed = [
        "{{ st2kv.system.db_password }}",
        "{{st2kv.system.db_password}}{{",
        "{% raw %}{{ st2kv.system.db_password }}{% endraw %}",
        "{%- set x = st2kv.system.db_password %}{{ x }}",
        "{# comment #}{{ '{{' }}",
        "{{{ st2kv.system.db_password }}}",
        "it's \"quoted\" \\ and {{ 7 * 7 }} and {%",
        "déploiement → {{ st2kv.system.db_password | upper }} ✓",
        "}} %} #} {",
    ];
    for t in typed {
        let sent = airlock::action::st2::literal(&serde_json::json!(t));
        let arg = format!("message={}", sent.as_str().unwrap());
        let (code, out) = s.st2(&["run", "tests.echo", &arg, "-j"]);
        assert_eq!(code, Some(0), "{t}: {out}");
        let ex: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(
            ex["result"]["stdout"], t,
            "{t} came back as {}",
            ex["result"]["stdout"]
        );
        assert!(
            !out.contains(DB_PASSWORD),
            "{t} leaked the datastore: {out}"
        );
    }
}
