//! The st2 API stand-in (tests/st2/stand_in.py) on a loopback port, and
//! StackStorm's client pointed at it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::repo_root;

pub const KEY: &str = "st2-test-api-key";
pub const DB_PASSWORD: &str = "hunter2-from-the-datastore";

pub fn venv() -> Option<PathBuf> {
    match std::env::var_os("AIRLOCK_TEST_ST2_VENV") {
        Some(v) => Some(PathBuf::from(v)),
        None => {
            eprintln!("SKIPPED: AIRLOCK_TEST_ST2_VENV is not set (scripts/test sets it)");
            None
        }
    }
}

/// The stand-in on a loopback port, and a home for the client.
pub struct StandIn {
    child: Child,
    pub url: String,
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
    pub fn start(venv: &Path) -> Self {
        let home = tempfile::tempdir().unwrap();
        let ds = home.path().join("datastore.json");
        std::fs::write(&ds, format!("{{\"db_password\": \"{DB_PASSWORD}\"}}")).unwrap();
        let url_file = home.path().join("url");
        let child = Command::new(venv.join("bin/python"))
            .arg(repo_root().join("tests/st2/stand_in.py"))
            .args(["--port", "0", "--api-key", KEY, "--datastore"])
            .arg(&ds)
            .arg("--url-file")
            .arg(&url_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let url = super::wait_until("the stand-in starting", Duration::from_secs(20), || {
            std::fs::read_to_string(&url_file).ok()
        });
        StandIn {
            child,
            url,
            venv: venv.to_path_buf(),
            home,
        }
    }

    /// POST to one of the stand-in's test controls (`/_test/fail?…`).
    pub fn control(&self, path: &str) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "{answer}"
        );
    }

    /// `st2 <args>` against the stand-in with API key `key`.
    pub fn st2_with(&self, key: &str, args: &[&str]) -> (Option<i32>, String) {
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

    pub fn st2(&self, args: &[&str]) -> (Option<i32>, String) {
        self.st2_with(KEY, args)
    }

    /// `st2 execution get <id> -j`, parsed.
    pub fn execution(&self, id: &str) -> serde_json::Value {
        let (code, out) = self.st2(&["execution", "get", id, "-j"]);
        assert_eq!(code, Some(0), "{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `st2 run -a …`: the new execution's id.
    pub fn run_async(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-a"];
        all.extend(args);
        let (code, out) = self.st2(&all);
        assert_eq!(code, Some(0), "{out}");
        out.split_whitespace()
            .find(|w| w.len() == 24 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("no execution id in {out}"))
            .to_string()
    }

    pub fn wait_status(&self, id: &str, want: &str) -> serde_json::Value {
        super::wait_until(
            &format!("{id} reaching {want}"),
            Duration::from_secs(20),
            || Some(self.execution(id)).filter(|e| e["status"] == want),
        )
    }
}
