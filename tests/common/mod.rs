//! Test helpers: real git repositories for packs, and a small in-process
//! transport that drives the engine the way the console and Matrix do.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock::action::packs::{GitConfig, InsteadOf, PackManager};
use airlock::config::Config;
use airlock::engine::{Effect, Engine, Incoming};

pub mod st2;
#[cfg(feature = "temporal")]
pub mod temporal;

/// Process `pid` (the bot, a worker) ran itself again with glibc's
/// per-thread caches off (they hold memory no trim returns; see `malloc`
/// in main.rs), once: the environment its exec was given says so.
pub fn assert_without_thread_caches(pid: u32) {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|v| v == "GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "{environ}"
    );
}

pub const ALICE: &str = "@alice:example.org";
pub const BOB: &str = "@bob:example.org";
pub const CAROL: &str = "@carol:example.org";
pub const MALLORY: &str = "@mallory:example.org";
pub const OPS: &str = "!ops:example.org";
/// The bot's own Matrix ID.
pub const BOT: &str = "@airlock:example.org";
pub const SEED_URL: &str = "git@github.com:websages/st2-flow";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A git repository holding a StackStorm pack, built with git2.
pub struct PackRepo {
    pub path: PathBuf,
    pub repo: git2::Repository,
}

impl PackRepo {
    /// A repository whose `main` branch holds pack `name` with one alias,
    /// `<name> status` → core.echo.
    pub fn new(path: &Path, name: &str) -> Self {
        let repo = git2::Repository::init(path).expect("git init");
        repo.set_head("refs/heads/main").expect("head");
        let r = PackRepo {
            path: path.to_path_buf(),
            repo,
        };
        r.write(
            "pack.yaml",
            &format!("---\nname: {name}\ndescription: test pack\nversion: 0.1.0\nauthor: tests\n"),
        );
        r.write(
            &format!("aliases/{name}_status.yaml"),
            &format!(
                "---\nname: \"{u}_status\"\npack: \"{name}\"\naction_ref: \"core.echo\"\ndescription: \"Say which version is deployed\"\nformats:\n  - \"{name} status\"\nimmutable_parameters:\n  message: \"{name} v1 is live\"\nresult:\n  format: \"{{{{ execution.result.stdout }}}}\"\n",
                u = name.replace('-', "_")
            ),
        );
        r.commit("initial pack");
        r
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path.join(rel)).unwrap();
    }

    /// Commit everything in the work tree on the current branch.
    pub fn commit(&self, msg: &str) -> String {
        let mut index = self.repo.index().unwrap();
        index
            .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        index.update_all(["*"].iter(), None).unwrap();
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("tests", "tests@example.org").unwrap();
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        self.repo
            .commit(Some("HEAD"), &sig, &sig, msg, &tree, &parents)
            .unwrap()
            .to_string()
    }

    pub fn head(&self) -> String {
        self.repo
            .head()
            .unwrap()
            .peel_to_commit()
            .unwrap()
            .id()
            .to_string()
    }

    /// Point branch `name` at the current HEAD commit.
    pub fn branch(&self, name: &str) {
        let c = self.repo.head().unwrap().peel_to_commit().unwrap();
        self.repo.branch(name, &c, true).unwrap();
    }

    pub fn checkout(&self, branch: &str) {
        self.repo.set_head(&format!("refs/heads/{branch}")).unwrap();
        self.repo
            .checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .unwrap();
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

/// One message the bot sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub event_id: String,
    pub room: String,
    pub reply_to: Option<String>,
    pub body: String,
    pub html: Option<String>,
    pub prompt_for: Option<String>,
    /// The event's content, as the Matrix transport sends it.
    pub content: serde_json::Value,
}

/// `sent` as a client's export of the room has it, sent by `sender`.
pub fn room_export(sent: &[Sent], sender: &str) -> String {
    let events: Vec<serde_json::Value> = sent
        .iter()
        .map(|s| serde_json::json!({"type": "m.room.message", "sender": sender, "event_id": s.event_id, "content": s.content}))
        .collect();
    serde_json::json!({"room_name": "audit", "messages": events}).to_string()
}

/// The engine, a scratch directory, and a transport that runs executions
/// synchronously so tests read effects in order. Time is the bot's own
/// clock ([`Bot::now`]): real time when it starts, moved only by
/// [`Bot::advance`].
pub struct Bot {
    pub engine: Arc<Engine>,
    pub packs: Arc<PackManager>,
    pub dir: PathBuf,
    next: AtomicU64,
    clock: Arc<AtomicU64>,
    pub reactions: Mutex<Vec<(String, &'static str)>>,
}

/// The configuration the tests use: the shipped aliases, `policies`, and
/// the seed's URL fetched from `seed_repo`.
pub fn settings(dir: &Path, policies: &Path, seed_repo: Option<&Path>) -> Config {
    Config {
        aliases: vec![repo_root().join("aliases")],
        policies: vec![policies.to_path_buf()],
        packs: dir.join("packs"),
        data_dir: dir.join("data"),
        git: GitConfig {
            ssh_key: None,
            instead_of: seed_repo
                .map(|p| InsteadOf {
                    from: SEED_URL.into(),
                    to: format!("file://{}", p.display()),
                })
                .into_iter()
                .collect(),
        },
        ..Config::default()
    }
}

/// The in-memory databases of this test process, by data directory ([`memory_db`]): a
/// bot opened again on the same configuration (a restart) finds what the
/// last one stored, as it would on disk.
static MEMORY: Mutex<Vec<(PathBuf, airlock::kv::Db)>> = Mutex::new(Vec::new());

pub fn memory_db(data_dir: &Path) -> airlock::kv::Db {
    let mut dbs = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, db)) = dbs.iter().find(|(d, _)| d == data_dir) {
        return db.clone();
    }
    let db = airlock::kv::Db::memory();
    dbs.push((data_dir.to_path_buf(), db.clone()));
    db
}

impl Bot {
    /// The engine over in-memory stores (sled is not touched; a restart
    /// on the same configuration keeps what was stored).
    pub fn open(config: Config) -> Self {
        let db = memory_db(&config.data_dir);
        Bot::over(&config, db)
    }

    /// The engine over the database on disk, as the bot runs: for what
    /// reads it afterwards (the CLI, a test editing the store, a crash).
    pub fn on_disk(config: Config) -> Self {
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let db = open_db(&config.store_path());
        Bot::over(&config, db)
    }

    /// The engine on `db`, its clock the bot's (starting at the wall
    /// clock's time; tests move it).
    fn over(config: &Config, db: airlock::kv::Db) -> Self {
        let now = airlock::wall::now_ms();
        let clock = Arc::new(AtomicU64::new(now));
        let engine_clock = {
            let clock = clock.clone();
            Arc::new(move || clock.load(Ordering::Relaxed))
        };
        let opened = match config.open_with(db, engine_clock, now) {
            Ok(o) => o,
            Err(e) => panic!("engine: {e}"),
        };
        Bot {
            engine: Arc::new(opened.engine),
            packs: opened.packs,
            dir: config.data_dir.parent().unwrap().to_path_buf(),
            next: AtomicU64::new(1),
            clock,
            reactions: Mutex::new(Vec::new()),
        }
    }

    /// The bot's time (ms since the epoch).
    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Set the bot's clock to an RFC 3339 time ("2026-12-04T15:30:00Z").
    pub fn set_time(&self, rfc3339: &str) {
        let ms = airlock::clock::parse_since(rfc3339, 0).expect("an RFC 3339 time");
        self.clock.store(ms, Ordering::Relaxed);
    }

    /// Let `ms` pass.
    pub fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn event_id(&self) -> String {
        format!("$t{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A message from `user` in `room`, sent now.
    pub fn message(&self, user: &str, room: &str, body: &str) -> Incoming {
        Incoming::message(user, room, &self.event_id(), body, self.now())
    }

    /// Deliver an event; play out every effect (executions included).
    pub fn deliver(&self, m: Incoming) -> Vec<Sent> {
        let fx = self.engine.handle(&m, self.now());
        self.play(fx)
    }

    pub fn play(&self, fx: Vec<Effect>) -> Vec<Sent> {
        let mut sent = Vec::new();
        for e in fx {
            match e {
                Effect::Send(o) => {
                    let id = self.event_id();
                    if let Some(req) = &o.prompt_for {
                        self.engine.bind_prompt(req, &o.room, &id);
                    }
                    let content = airlock::matrix::event_content(&o);
                    sent.push(Sent {
                        content,
                        event_id: id,
                        room: o.room,
                        reply_to: o.reply_to,
                        body: o.message.body,
                        html: o.message.html,
                        prompt_for: o.prompt_for,
                    });
                }
                Effect::Direct { user, message } => {
                    // Shown as sent to a room named for its one reader.
                    let content = serde_json::json!({"msgtype": "m.text", "body": message.body});
                    sent.push(Sent {
                        content,
                        event_id: self.event_id(),
                        room: format!("direct:{user}"),
                        reply_to: None,
                        body: message.body,
                        html: message.html,
                        prompt_for: None,
                    });
                }
                Effect::React { event_id, key, .. } => {
                    self.reactions.lock().unwrap().push((event_id, key));
                }
                Effect::Prepare(id) => {
                    let more = self.engine.prepare(&id, || self.now());
                    sent.extend(self.play(more));
                }
                Effect::Execute(id) => {
                    let more = self.engine.execute(&id, || self.now());
                    sent.extend(self.play(more));
                }
                Effect::Resume(id) => {
                    let more = self.engine.resume(&id, || self.now());
                    sent.extend(self.play(more));
                }
            }
        }
        sent
    }

    /// `user` says `body` in `room`; returns the bot's answers.
    pub fn say(&self, user: &str, room: &str, body: &str) -> Vec<Sent> {
        self.deliver(self.message(user, room, body))
    }

    /// `user` says `body` in `room`; returns the message's event ID with
    /// the bot's answers (to check what answered what).
    pub fn say_with_id(&self, user: &str, room: &str, body: &str) -> (String, Vec<Sent>) {
        let m = self.message(user, room, body);
        (m.event_id.clone(), self.deliver(m))
    }

    /// `user` replies `body` to event `parent`.
    pub fn reply(&self, user: &str, room: &str, parent: &str, body: &str) -> Vec<Sent> {
        let mut m = self.message(user, room, body);
        m.reply_to = Some(parent.to_string());
        self.deliver(m)
    }

    pub fn audit_events(&self) -> Vec<String> {
        self.engine
            .audit_log()
            .query(&Default::default())
            .unwrap()
            .into_iter()
            .map(|e| e.event.to_string())
            .collect()
    }
}

/// The shipped policy and aliases, with the seed's repository served from
/// a local git repository in `dir`.
pub fn shipped(dir: &Path) -> (Bot, PackRepo) {
    let repo = PackRepo::new(&dir.join("st2-flow"), "st2-flow");
    let bot = Bot::open(shipped_settings(dir, &repo));
    (bot, repo)
}

/// Like [`shipped`], on the database on disk (for what reads it after).
pub fn shipped_on_disk(dir: &Path) -> (Bot, PackRepo) {
    let repo = PackRepo::new(&dir.join("st2-flow"), "st2-flow");
    let bot = Bot::on_disk(shipped_settings(dir, &repo));
    (bot, repo)
}

fn shipped_settings(dir: &Path, repo: &PackRepo) -> Config {
    settings(dir, &repo_root().join("policies"), Some(&repo.path))
}

/// Like [`shipped`], under the policy `yaml`.
pub fn with_policy(dir: &Path, yaml: &str) -> (Bot, PackRepo) {
    let repo = PackRepo::new(&dir.join("st2-flow"), "st2-flow");
    let pol = dir.join("policy.yaml");
    std::fs::write(&pol, yaml).unwrap();
    (Bot::open(settings(dir, &pol, Some(&repo.path))), repo)
}

/// A bot with only the alias files `aliases` (name, text) and the policy
/// `policy`, in `dir` (`dir/aliases`, `dir/p.yaml`: rewrite them and call
/// `Engine::reload` to change them).
pub fn with_aliases(dir: &Path, aliases: &[(&str, &str)], policy: &str) -> Bot {
    let alias_dir = dir.join("aliases");
    std::fs::create_dir_all(&alias_dir).unwrap();
    for (name, text) in aliases {
        std::fs::write(alias_dir.join(name), text).unwrap();
    }
    let pol = dir.join("p.yaml");
    std::fs::write(&pol, policy).unwrap();
    let mut s = settings(dir, &pol, None);
    s.aliases = vec![alias_dir];
    Bot::open(s)
}

/// `airlock.yaml` in `dir` for the shipped aliases and policy, the seed's
/// URL fetched from `repo`; returns its path.
pub fn write_config(dir: &Path, repo: &PackRepo) -> PathBuf {
    let root = repo_root();
    let cfg = dir.join("airlock.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: data\npacks: packs\naliases: [{}]\npolicies: [{}]\ngit:\n  instead_of:\n    - from: \"{SEED_URL}\"\n      to: \"{}\"\n",
            root.join("aliases").display(),
            root.join("policies").display(),
            repo.url()
        ),
    )
    .unwrap();
    cfg
}

/// The database at `path`, once the engine that had it open has let go:
/// a thread of its (a fetch's, a run's) may hold it a moment after the
/// engine is dropped.
pub fn open_db(path: &Path) -> airlock::kv::Db {
    wait_until(
        &format!("{} free to open", path.display()),
        Duration::from_secs(10),
        || match airlock::config::open_store(path) {
            Ok(db) => Some(db),
            Err(e) if e.to_string().contains("could not acquire lock") => None,
            Err(e) => panic!("{}: {e}", path.display()),
        },
    )
}

/// Add `text` to the end of the file at `path`.
pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The `airlock` binary with `args`, in `dir`.
pub fn airlock(args: &[&str], dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .current_dir(dir)
        .env_remove("AIRLOCK_DATA_DIR")
        .output()
        .expect("run airlock")
}

/// Poll `f` every 50 ms until it gives a value; fail the test, naming
/// `what`, if none comes within `within` (a regression fails, never
/// hangs CI).
pub fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Assert that `f` stays false for `window`: what a test checks when the
/// thing to see is that something does not happen (polled, failing the
/// moment it does).
pub fn stays_false(what: &str, window: Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + window;
    while std::time::Instant::now() < end {
        assert!(!f(), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!f(), "{what}");
}

/// The prompt among `sent`, with its request id.
pub fn prompt(sent: &[Sent]) -> &Sent {
    sent.iter()
        .find(|s| s.prompt_for.is_some())
        .unwrap_or_else(|| panic!("no prompt in {sent:#?}"))
}

/// The request id a bot message names ("… request k3x9pz …").
pub fn request_id(text: &str) -> String {
    word_after(text, &["request ", "Request "])
}

/// The id of the request a "waits for lock" message names.
pub fn waiting_id(text: &str) -> String {
    word_after(text, &["⏳ Request "])
}

/// The word after the first of `marks` found in `text`.
fn word_after(text: &str, marks: &[&str]) -> String {
    let after = marks
        .iter()
        .find_map(|m| text.split_once(m))
        .unwrap_or_else(|| panic!("none of {marks:?} in {text}"))
        .1;
    after
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn bodies(sent: &[Sent]) -> String {
    sent.iter()
        .map(|s| s.body.as_str())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A free port for a server a test starts, taken below the kernel's
/// ephemeral range (32768 on). A port from that range (bind to 0, then
/// close) can be handed to any new socket before the server binds it: the
/// Temporal dev server binds ephemeral ports of its own, and every
/// outgoing connection takes one as its local port (the bot's http
/// listener once lost its port that way). Below the range only tests
/// choose ports: a counter per process, from a base its pid picks, and a
/// bind to check nobody holds it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A TCP proxy on loopback in front of a server that can be made to fail:
/// `stall` holds new connections open and silent (a hung git server),
/// `cut` drops every connection and every new one until `restore` (a
/// homeserver that went away).
pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

const PASS: u8 = 0;
const STALL: u8 = 1;
const CUT: u8 = 2;

impl Proxy {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (m, o) = (mode.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                match m.load(Ordering::SeqCst) {
                    STALL => {
                        std::thread::spawn(move || {
                            let _keep = client;
                            std::thread::sleep(Duration::from_secs(120));
                        });
                    }
                    CUT => drop(client),
                    _ => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let mut open = o.lock().unwrap();
                        open.push(client.try_clone().unwrap());
                        open.push(server.try_clone().unwrap());
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                        pipe(server, client);
                    }
                }
            }
        });
        Proxy { port, mode, open }
    }

    pub fn stall(&self) {
        self.mode.store(STALL, Ordering::SeqCst);
    }

    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// The shipped aliases and policy, plus `say {{ message }}` and `quiet
/// {{ message }}` (core.echo, free text, confirmed by ops; `quiet` with
/// `result.append_url: false`), and the web view on at `public_url`
/// (`None`: off).
pub fn web_settings(dir: &Path, public_url: Option<&str>) -> (Config, PackRepo) {
    let repo = PackRepo::new(&dir.join("st2-flow"), "st2-flow");
    let extra = dir.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("say.yaml"),
        "name: say\npack: tests\naction_ref: core.echo\nformats: ['say {{ message }}']\n",
    )
    .unwrap();
    std::fs::write(
        extra.join("quiet.yaml"),
        "name: quiet\npack: tests\naction_ref: core.echo\nformats: ['quiet {{ message }}']\nresult:\n  append_url: false\n",
    )
    .unwrap();
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let shipped = std::fs::read_to_string(repo_root().join("policies/ops.yaml")).unwrap();
    std::fs::write(
        policies.join("ops.yaml"),
        format!(
            "{shipped}\n  - id: say\n    effect: allow\n    groups: [ops]\n    rooms: [\"!ops:example.org\"]\n    packs: [tests]\n    confirm:\n      approvers: {{groups: [ops]}}\n"
        ),
    )
    .unwrap();
    let mut s = settings(dir, &policies, Some(&repo.path));
    s.aliases.push(extra);
    s.http.web = public_url.is_some();
    s.http.public_url = public_url.map(String::from);
    (s, repo)
}

/// The HTTP listener over `bot`'s engine, on `listener` (bound by the
/// caller, who may need its address first).
pub fn serve_http(
    bot: &Bot,
    rt: &tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    export: Option<airlock::http::AuditExport>,
) {
    rt.spawn(airlock::http::serve(
        listener,
        bot.engine.clone(),
        std::sync::Arc::new(airlock::metrics::Liveness::default()),
        export,
    ));
}

/// A loopback listener on a free port, and its base URL.
pub fn loopback(rt: &tokio::runtime::Runtime) -> (tokio::net::TcpListener, String) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

/// The entry numbers (`seq`) of audit entries given as JSON lines, in order.
pub fn jsonl_seqs(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}
