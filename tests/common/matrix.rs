//! Matrix test helpers: users registered on the test Synapse by shared
//! secret, matrix-sdk clients that record what they see, and the `airlock
//! run` binary as a child process. Shared with benches/matrix.rs, which
//! uses parts the tests do not.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::events::reaction::OriginalSyncReactionEvent;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use tokio::sync::Notify;

/// Wait until `f` yields something, polling every 100 ms; fail, naming
/// `what`, past `within`. The async `wait_until`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The test homeserver: started by scripts/test (scripts/synapse).
pub struct Homeserver {
    pub url: String,
    secret: String,
}

impl Homeserver {
    /// None (and a loud note) when no test Synapse is running.
    pub fn from_env() -> Option<Self> {
        let (Ok(url), Ok(dir)) = (
            std::env::var("AIRLOCK_TEST_HOMESERVER"),
            std::env::var("AIRLOCK_TEST_SYNAPSE_DIR"),
        ) else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no test homeserver (AIRLOCK_TEST_HOMESERVER); scripts/test starts one ***\n"
            );
            return None;
        };
        let secret =
            std::fs::read_to_string(Path::new(&dir).join("shared_secret")).expect("shared_secret");
        Some(Homeserver { url, secret })
    }

    /// Register `name` with the admin API (shared-secret HMAC), which,
    /// unlike register_new_matrix_user, tolerates re-runs via unique names.
    pub async fn register(&self, name: &str, password: &str) -> OwnedUserId {
        let http = reqwest::Client::new();
        let endpoint = format!("{}/_synapse/admin/v1/register", self.url);
        let nonce = json(http.get(&endpoint)).await;
        let nonce = nonce["nonce"].as_str().unwrap().to_string();
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.secret.as_bytes()).unwrap();
        mac.update(format!("{nonce}\0{name}\0{password}\0notadmin").as_bytes());
        let digest: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let r = http
            .post(&endpoint)
            .json(&serde_json::json!({"nonce": nonce, "username": name, "password": password, "admin": false, "mac": digest}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "register {name}: {}",
            r.text().await.unwrap()
        );
        OwnedUserId::try_from(format!("@{name}:example.org")).unwrap()
    }
}

impl Homeserver {
    /// The rooms `user` has joined, by the client-server API from a login
    /// of its own (logged out again after): what the account sees,
    /// whatever a client of it believes.
    pub async fn joined_rooms(&self, user: &OwnedUserId, password: &str) -> Vec<String> {
        let http = reqwest::Client::new();
        let login = json(
            http.post(format!("{}/_matrix/client/v3/login", self.url))
                .json(&serde_json::json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user.as_str()},
                    "password": password,
                })),
        )
        .await;
        let token = login["access_token"].as_str().expect("a login").to_string();
        let joined = json(
            http.get(format!("{}/_matrix/client/v3/joined_rooms", self.url))
                .bearer_auth(&token),
        )
        .await;
        http.post(format!("{}/_matrix/client/v3/logout", self.url))
            .bearer_auth(&token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        joined["joined_rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    }
}

/// The JSON a request answers with (the tests' requests must succeed).
pub async fn json(r: reqwest::RequestBuilder) -> serde_json::Value {
    r.send().await.unwrap().json().await.unwrap()
}

/// `u` says `body` in `room`; the event's ID.
pub async fn say(u: &User, room: &OwnedRoomId, body: &str) -> OwnedEventId {
    u.room(room)
        .await
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .unwrap()
        .response
        .event_id
}

/// `u` says `body` in `room` in reply to `to`.
pub async fn reply(u: &User, room: &OwnedRoomId, to: &OwnedEventId, body: &str) -> OwnedEventId {
    use matrix_sdk::ruma::events::relation::{InReplyTo, Reply};
    let mut c = RoomMessageEventContent::text_plain(body);
    c.relates_to = Some(matrix_sdk::ruma::events::room::message::Relation::Reply(
        Reply::new(InReplyTo::new(to.clone())),
    ));
    u.room(room).await.send(c).await.unwrap().response.event_id
}

/// A room `owner` makes, under `alias` if given (`#name:server`),
/// inviting `invite`; end-to-end encrypted if `encrypted`.
pub async fn create_room(
    owner: &User,
    alias: Option<&str>,
    invite: Vec<OwnedUserId>,
    encrypted: bool,
) -> OwnedRoomId {
    use matrix_sdk::ruma::events::InitialStateEvent;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    let mut req = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
    req.room_alias_name = alias.and_then(|a| {
        a.trim_start_matches('#')
            .split(':')
            .next()
            .map(String::from)
    });
    req.invite = invite;
    if encrypted {
        req.initial_state = vec![
            InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            )
            .to_raw_any(),
        ];
    }
    owner
        .client
        .create_room(req)
        .await
        .unwrap()
        .room_id()
        .to_owned()
}

/// A unique suffix for names in this run.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}x{}",
        airlock::wall::now_ms() % 100_000_000,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Something a test user saw in a room.
#[derive(Debug, Clone)]
pub struct Seen {
    pub room: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub sender: OwnedUserId,
    pub body: String,
    pub html: Option<String>,
    /// For reactions: the key and the event reacted to.
    pub reaction: Option<(String, OwnedEventId)>,
    pub reply_to: Option<OwnedEventId>,
    /// The thread root, for messages in a thread.
    pub thread: Option<OwnedEventId>,
}

/// A logged-in user whose own sync loop records every message and reaction.
pub struct User {
    pub client: Client,
    pub id: OwnedUserId,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for User {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl User {
    pub async fn login(hs: &Homeserver, id: &OwnedUserId, password: &str, store: &Path) -> Self {
        let client = Client::builder()
            .homeserver_url(&hs.url)
            .sqlite_store(store, None)
            .build()
            .await
            .unwrap();
        client
            .matrix_auth()
            .login_username(id, password)
            .send()
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        client.sync_once(SyncSettings::default()).await.unwrap();
        let (s, n) = (seen.clone(), notify.clone());
        client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
            let (s, n) = (s.clone(), n.clone());
            async move {
                let (body, html) = match &ev.content.msgtype {
                    MessageType::Text(t) => {
                        (t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone()))
                    }
                    MessageType::Notice(t) => {
                        (t.body.clone(), t.formatted.as_ref().map(|f| f.body.clone()))
                    }
                    _ => return,
                };
                let (reply_to, thread) = match &ev.content.relates_to {
                    Some(matrix_sdk::ruma::events::room::message::Relation::Reply(r)) => {
                        (Some(r.in_reply_to.event_id.clone()), None)
                    }
                    Some(matrix_sdk::ruma::events::room::message::Relation::Thread(t)) => (
                        t.in_reply_to.as_ref().map(|r| r.event_id.clone()),
                        Some(t.event_id.clone()),
                    ),
                    _ => (None, None),
                };
                s.lock().unwrap().push(Seen {
                    room: room.room_id().to_owned(),
                    event_id: ev.event_id.clone(),
                    sender: ev.sender.clone(),
                    body,
                    html,
                    reaction: None,
                    reply_to,
                    thread,
                });
                n.notify_waiters();
            }
        });
        let (s, n) = (seen.clone(), notify.clone());
        client.add_event_handler(move |ev: OriginalSyncReactionEvent, room: Room| {
            let (s, n) = (s.clone(), n.clone());
            async move {
                s.lock().unwrap().push(Seen {
                    room: room.room_id().to_owned(),
                    event_id: ev.event_id.clone(),
                    sender: ev.sender.clone(),
                    body: String::new(),
                    html: None,
                    reaction: Some((
                        ev.content.relates_to.key.clone(),
                        ev.content.relates_to.event_id.clone(),
                    )),
                    reply_to: None,
                    thread: None,
                });
                n.notify_waiters();
            }
        });
        let c = client.clone();
        let task = tokio::spawn(async move {
            let settings = SyncSettings::default().timeout(Duration::from_secs(10));
            loop {
                if c.sync_once(settings.clone()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        User {
            client,
            id: id.clone(),
            seen,
            notify,
            task,
        }
    }

    /// Wait until something seen satisfies `f`; return it.
    pub async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if let Some(s) = self.seen.lock().unwrap().iter().find(|s| f(s)).cloned() {
                return s;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let seen = self.seen.lock().unwrap().clone();
                let bodies: Vec<String> = seen
                    .iter()
                    .map(|s| format!("{}: {}", s.sender, s.body))
                    .collect();
                panic!("{} never saw {what}; saw:\n{}", self.id, bodies.join("\n"));
            }
        }
    }

    pub async fn room(&self, id: &OwnedRoomId) -> Room {
        let what = format!("{} in {id}", self.id);
        eventually(&what, Duration::from_secs(10), || async {
            self.client.get_room(id)
        })
        .await
    }

    /// Assert that nothing seen satisfies `f` for `window` (what a test
    /// checks when the thing to see is that the bot does not answer).
    pub async fn never_sees(&self, what: &str, window: Duration, f: impl Fn(&Seen) -> bool) {
        let end = tokio::time::Instant::now() + window;
        loop {
            let notified = self.notify.notified();
            if let Some(s) = self.seen.lock().unwrap().iter().find(|s| f(s)) {
                panic!("{} saw {what}: {}", self.id, s.body);
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return;
            }
        }
    }

    /// Wait until this user's client knows a device of `user` (so what it
    /// sends in an encrypted room is encrypted for that device too).
    pub async fn knows_devices_of(&self, user: &OwnedUserId) {
        let what = format!("{} knowing {user}'s devices", self.id);
        eventually(&what, Duration::from_secs(30), || async {
            let devices = self.client.encryption().get_user_devices(user).await.ok()?;
            (devices.devices().count() > 0).then_some(())
        })
        .await
    }

    pub async fn join(&self, id: &OwnedRoomId) -> Room {
        self.client.join_room_by_id(id).await.unwrap()
    }
}

/// `airlock run` as a child process, with its own data directory.
pub struct Airlock {
    child: Child,
    pub log: PathBuf,
}

/// The bearer token of the bot's `/audit.jsonl`.
pub const AUDIT_TOKEN: &str = "test-audit-token-0123456789";

impl Airlock {
    pub fn start(config: &Path, password: &str) -> Self {
        let log = config.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["run", "--config"])
            .arg(config)
            .env("AIRLOCK_PASSWORD", password)
            .env("AIRLOCK_AUDIT_TOKEN", AUDIT_TOKEN)
            // The st2 stand-in's key (common::st2::KEY), for a scene that
            // routes actions there.
            .env("AIRLOCK_TEST_ST2_API_KEY", "st2-test-api-key")
            .env(
                "AIRLOCK_LOG",
                "warn,airlock=debug,matrix_sdk::http_client=off,matrix_sdk_crypto::backups=error",
            )
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Airlock { child, log }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        self.child.wait().unwrap()
    }

    /// SIGKILL: no shutdown, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Airlock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- airlock's log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
