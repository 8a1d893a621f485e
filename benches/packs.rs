//! packs.install against `git clone`, on a pack repository with 10,000
//! commits served by `git daemon` on loopback and as `file://`: a first
//! install, and a re-install after one new commit. Prints figures; asserts
//! none.
//!
//! `cargo bench --bench packs` (AIRLOCK_BENCH_COMMITS to change 10,000).

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock::config::Config;
use airlock::engine::{Effect, Engine, Incoming};

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "git {args:?}");
}

/// A pack repository with `n` commits, made with git fast-import.
fn make_repo(path: &Path, n: usize) {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "-q", "-b", "main"]);
    let mut fi = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = std::io::BufWriter::new(fi.stdin.take().unwrap());
    let blob = |w: &mut dyn Write, text: &str| {
        writeln!(w, "data {}\n{text}", text.len()).unwrap();
    };
    for i in 0..n {
        writeln!(
            w,
            "commit refs/heads/main\ncommitter bench <b@example.org> {} +0000",
            1_700_000_000 + i
        )
        .unwrap();
        blob(&mut w, &format!("change {i}"));
        // Later commits continue the branch (fast-import keeps its tip).
        if i == 0 {
            writeln!(w, "M 100644 inline pack.yaml").unwrap();
            blob(&mut w, "---\nname: bigpack\nversion: 1.0.0\n");
            writeln!(w, "M 100644 inline aliases/status.yaml").unwrap();
            blob(
                &mut w,
                "name: status\npack: bigpack\naction_ref: core.noop\nformats: ['bigpack status']\n",
            );
        }
        writeln!(w, "M 100644 inline actions/a{}.yaml", i % 200).unwrap();
        blob(
            &mut w,
            &format!(
                "name: a{}\nrunner_type: local-shell-cmd\nrevision: {i}\n",
                i % 200
            ),
        );
    }
    drop(w);
    assert!(fi.wait().unwrap().success());
    git(path, &["checkout", "-q", "main"]);
}

fn add_commit(path: &Path) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let i = N.fetch_add(1, Ordering::Relaxed);
    std::fs::write(
        path.join("actions/a0.yaml"),
        format!("name: a0\nrevision: extra-{i}\n"),
    )
    .unwrap();
    git(
        path,
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@example.org",
            "commit",
            "-qam",
            "one more",
        ],
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn clone(url: &str, dest: &Path) -> Duration {
    let t = Instant::now();
    let ok = Command::new("git")
        .args(["clone", "-q", url])
        .arg(dest)
        .status()
        .unwrap();
    assert!(ok.success());
    t.elapsed()
}

struct Bot {
    engine: Engine,
    n: u64,
}

impl Bot {
    fn open(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("aliases")).unwrap();
        std::fs::write(
            dir.join("aliases/deploy.yaml"),
            "name: deploy\npack: bench\naction_ref: packs.install\nformats: ['deploy {{ packs }} now']\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("policy.yaml"),
            "rules:\n  - id: all\n    effect: allow\n    users: ['@bench:example.org']\n    packs: ['*']\n    confirm: false\n",
        )
        .unwrap();
        let config = Config {
            aliases: vec![dir.join("aliases")],
            policies: vec![dir.join("policy.yaml")],
            packs: dir.join("packs"),
            data_dir: dir.join("data"),
            ..Config::default()
        };
        Bot {
            engine: config.open(airlock::wall::now_ms()).unwrap().engine,
            n: 0,
        }
    }

    /// The whole command: resolve, install, register. Returns its time.
    fn install(&mut self, url: &str) -> Duration {
        self.n += 1;
        let m = Incoming::message(
            "@bench:example.org",
            "!b:example.org",
            &format!("$b{}", self.n),
            &format!("!deploy {url} now"),
            airlock::wall::now_ms(),
        );
        let t = Instant::now();
        let mut fx = self.engine.handle(&m, airlock::wall::now_ms());
        let mut succeeded = false;
        while let Some(e) = fx.pop() {
            match e {
                Effect::Prepare(id) => fx.extend(self.engine.prepare(&id, airlock::wall::now_ms)),
                Effect::Execute(id) => fx.extend(self.engine.execute(&id, airlock::wall::now_ms)),
                Effect::React { key: "✅", .. } => succeeded = true,
                _ => {}
            }
        }
        assert!(succeeded, "install failed");
        t.elapsed()
    }
}

fn main() {
    let commits: usize = std::env::var("AIRLOCK_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("repos");
    let repo = base.join("bigpack");
    let t = Instant::now();
    make_repo(&repo, commits);
    println!(
        "made a pack repository with {commits} commits in {:?}",
        t.elapsed()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = Command::new(git_daemon())
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(&base)
        // The readiness probe below hangs up on it; that is not news.
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // git daemon writes pkt-line headers and payloads separately, so on
    // loopback each negotiation round trip waits ~40 ms for a delayed ACK;
    // file:// shows the same work without the network.
    compare(
        "git daemon",
        &format!("git://127.0.0.1:{port}/bigpack"),
        &repo,
        &tmp.path().join("daemon"),
    );
    compare(
        "file://",
        &format!("file://{}", repo.display()),
        &repo,
        &tmp.path().join("file"),
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// First install vs `git clone`, then re-installs after one new commit vs a
/// fresh clone, all from `url` (which serves `repo`).
fn compare(label: &str, url: &str, repo: &Path, work: &Path) {
    let rounds = 9;
    let clones: Vec<Duration> = (0..rounds)
        .map(|i| clone(url, &work.join(format!("clone{i}"))))
        .collect();
    let installs: Vec<Duration> = (0..rounds)
        .map(|i| Bot::open(&work.join(format!("fresh{i}"))).install(url))
        .collect();
    let (c, a) = (median(clones), median(installs));
    println!(
        "{label}: first install: git clone median {c:?}, airlock install median {a:?} ({:.2}x)",
        a.as_secs_f64() / c.as_secs_f64()
    );

    let mut bot = Bot::open(&work.join("again"));
    bot.install(url);
    let mut reinstalls = Vec::new();
    for _ in 0..rounds {
        add_commit(repo);
        reinstalls.push(bot.install(url));
    }
    let clones_after: Vec<Duration> = (0..rounds)
        .map(|i| clone(url, &work.join(format!("later{i}"))))
        .collect();
    let (r, c2) = (median(reinstalls), median(clones_after));
    println!(
        "{label}: re-install after one new commit: median {r:?}; a fresh git clone then takes {c2:?} ({:.1}x faster)",
        c2.as_secs_f64() / r.as_secs_f64()
    );
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
