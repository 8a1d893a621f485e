//! The st2 API stand-in (`tests/st2/stand_in.py`) checked with StackStorm's
//! own client, PyPI st2client 3.9.0 (`scripts/st2client` installs it;
//! `scripts/test` exports AIRLOCK_TEST_ST2_VENV): `st2 run`, `st2 execution
//! get -j`, `st2 execution tail`, `st2 execution cancel` and `st2 inquiry
//! respond` work against it, so its paths, headers, SSE framing and fields
//! are the ones real st2 speaks. Without the variable the tests say
//! SKIPPED and pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "st2-test-api-key";
const DB_PASSWORD: &str = "hunter2-from-the-datastore";

fn venv() -> Option<PathBuf> {
    match std::env::var_os("AIRLOCK_TEST_ST2_VENV") {
        Some(v) => Some(PathBuf::from(v)),
        None => {
            eprintln!("SKIPPED: AIRLOCK_TEST_ST2_VENV is not set (scripts/test sets it)");
            None
        }
    }
}

/// The stand-in on a loopback port, and a home for the client.
struct StandIn {
    child: Child,
    url: String,
    venv: PathBuf,
    home: tempfile::TempDir,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StandIn {
    fn start(venv: &Path) -> Self {
        let home = tempfile::tempdir().unwrap();
        let ds = home.path().join("datastore.json");
        std::fs::write(&ds, format!("{{\"db_password\": \"{DB_PASSWORD}\"}}")).unwrap();
        let url_file = home.path().join("url");
        let child = Command::new(venv.join("bin/python"))
            .arg(common::repo_root().join("tests/st2/stand_in.py"))
            .args(["--port", "0", "--api-key", KEY, "--datastore"])
            .arg(&ds)
            .arg("--url-file")
            .arg(&url_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            if let Ok(u) = std::fs::read_to_string(&url_file) {
                break u;
            }
            assert!(Instant::now() < deadline, "the stand-in did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        StandIn {
            child,
            url,
            venv: venv.to_path_buf(),
            home,
        }
    }

    /// `st2 <args>` against the stand-in with API key `key`.
    fn st2_with(&self, key: &str, args: &[&str]) -> (Option<i32>, String) {
        let o: Output = Command::new(self.venv.join("bin/st2"))
            .args(args)
            .env("HOME", self.home.path())
            .env("ST2_BASE_URL", &self.url)
            .env("ST2_API_URL", format!("{}/api/v1", self.url))
            .env("ST2_STREAM_URL", format!("{}/stream/v1", self.url))
            .env("ST2_AUTH_URL", format!("{}/auth/v1", self.url))
            .env("ST2_API_KEY", key)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.code(), text)
    }

    fn st2(&self, args: &[&str]) -> (Option<i32>, String) {
        self.st2_with(KEY, args)
    }

    /// `st2 execution get <id> -j`, parsed.
    fn execution(&self, id: &str) -> serde_json::Value {
        let (code, out) = self.st2(&["execution", "get", id, "-j"]);
        assert_eq!(code, Some(0), "{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `st2 run -a …`: the new execution's id.
    fn run_async(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-a"];
        all.extend(args);
        let (code, out) = self.st2(&all);
        assert_eq!(code, Some(0), "{out}");
        out.split_whitespace()
            .find(|w| w.len() == 24 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("no execution id in {out}"))
            .to_string()
    }

    fn wait_status(&self, id: &str, want: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let e = self.execution(id);
            if e["status"] == want {
                return e;
            }
            assert!(Instant::now() < deadline, "{id} never reached {want}: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

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
    let id = s.run_async(&["tests.slow", "seconds=2"]);
    let (code, out) = s.st2(&["execution", "tail", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("tick 1"),
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
