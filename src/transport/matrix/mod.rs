//! The Matrix transport: matrix-sdk events in, engine effects out.
//!
//! This layer only translates. A room message becomes an
//! [`Incoming`](crate::engine::Incoming) (sender ID, room ID, event ID, plain
//! body with the reply fallback removed, the event it replies to, thread,
//! server timestamp, power level); each [`Effect`](crate::engine::Effect) becomes a notice, a
//! reaction, or an execution on a blocking thread. Policy, confirmation
//! and audit all live in the engine; the one judgement made here is
//! Matrix's own: events from before the bot joined a room (the history the
//! first sync after a join carries) never reach the engine.
//!
//! The sync loop is our own `sync_once` loop: `Client::sync` waits a second
//! between syncs, which would be the bot's reaction time.
//!
//! Files: this one starts the bot and runs the loop; `session` logs in and
//! keeps one device; `inbound` turns events into the engine's input (the
//! pure `message_to_incoming`, `reaction_to_incoming`); `outbound` carries
//! effects out (the pure `to_content`); `rooms` answers invites and
//! resolves room aliases.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::{OwnedRoomId, UserId};
use tokio::sync::{Notify, mpsc};

use crate::engine::Engine;
use crate::metrics::Liveness;

mod inbound;
mod outbound;
mod rooms;
mod session;

pub use inbound::{message_to_incoming, reaction_to_incoming, strip_reply_fallback};
pub use outbound::{event_content, to_content};
use session::{login, retry_after, sync_with_retry};

/// How long a shutdown waits for running actions before marking them
/// interrupted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Seconds between whole checks of the audit chain (the first comes five
/// seconds after the start).
const CHAIN_CHECK_EVERY: u64 = 600;

/// Why the bot stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is incomplete.
    #[error("configuration: {0}")]
    Config(String),
    /// matrix-sdk failed.
    #[error("matrix: {0}")]
    Matrix(#[from] matrix_sdk::Error),
    /// The client could not be built.
    #[error("matrix client: {0}")]
    Client(#[from] matrix_sdk::ClientBuildError),
    /// The engine could not start.
    #[error("{0}")]
    Engine(#[from] crate::engine::StartError),
    /// The saved session is unusable.
    #[error("session file {0}: {1}")]
    Session(PathBuf, String),
}

struct Bot {
    client: Client,
    engine: Arc<Engine>,
    me: matrix_sdk::ruma::OwnedUserId,
    /// Prompts being sent, per room: a reply to a prompt can reach us
    /// before the prompt's own send has returned its event ID.
    prompts_in_flight: std::sync::Mutex<HashMap<OwnedRoomId, usize>>,
    prompt_sent: Notify,
    /// Each running execution holds a clone of this sender; shutdown drops
    /// the original and waits until `finished` reports every clone gone
    /// (no counter to read and no wake-up to miss).
    running: std::sync::Mutex<Option<mpsc::Sender<()>>>,
    finished: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// When a sync last succeeded, for `/healthz`.
    liveness: Arc<Liveness>,
    /// Status reactions, sent once the bot is quiet.
    reactions: outbound::Reactions,
}

/// What the transport needs of `airlock.yaml` (`Config::matrix_settings`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The homeserver's URL.
    pub homeserver: Option<String>,
    /// The bot's Matrix user ID.
    pub user_id: Option<String>,
    /// The device name a first login gets.
    pub device_name: String,
    /// Where matrix-sdk keeps its store and the session (`data_dir/matrix`).
    pub store_dir: PathBuf,
    /// The HTTP listener.
    pub http: crate::http::HttpConfig,
    /// StackStorm, whose announcements are followed (`announce_as`).
    pub st2: Option<crate::action::st2::St2Config>,
    /// The room audit checkpoints are posted to and read from.
    pub audit_room: Option<String>,
}

/// Log in (or restore the saved session) and serve `engine` (opened by
/// the caller, as the console's is) until SIGTERM or SIGINT.
pub async fn run(config: Settings, engine: Arc<Engine>) -> Result<(), Error> {
    let (client, me, homeserver) = connect(&config).await?;
    let (running, finished) = mpsc::channel(1);
    let bot = Arc::new(Bot {
        client: client.clone(),
        engine,
        me,
        prompts_in_flight: std::sync::Mutex::new(HashMap::new()),
        prompt_sent: Notify::new(),
        running: std::sync::Mutex::new(Some(running)),
        finished: tokio::sync::Mutex::new(finished),
        liveness: Arc::new(Liveness::default()),
        reactions: outbound::Reactions::new(),
    });
    let lane = tokio::spawn(bot.clone().send_reactions());
    let http = serve_http(&config, &bot).await?;
    bot.resolve_room_aliases().await;
    let sync = SyncSettings::default().timeout(Duration::from_secs(30));
    bot.clone().catch_up(sync.clone()).await;
    follow_announcements(&config, &bot);
    if let Some(room) = &config.audit_room {
        bot.load_checkpoints(room).await;
    }
    let ticker = tokio::spawn(bot.clone().tick_every_second());
    tracing::info!("airlock is running as {} on {homeserver}", bot.me);
    let served = bot.clone().sync_until_stopped(sync).await;
    ticker.abort();
    if let Some(http) = http {
        http.abort();
    }
    bot.shutdown().await;
    // The head as it stands at the end, so the homeserver holds it.
    let last = bot.engine.checkpoint(crate::wall::now_ms(), true);
    bot.clone().apply(last).await;
    bot.reactions.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), lane).await;
    served
}

/// The client, logged in as the configured user with its store under
/// `data_dir/matrix`; the user and the homeserver.
async fn connect(
    config: &Settings,
) -> Result<(Client, matrix_sdk::ruma::OwnedUserId, String), Error> {
    let homeserver = config.homeserver.clone().ok_or_else(|| {
        Error::Config("no homeserver (config `homeserver` or AIRLOCK_HOMESERVER)".into())
    })?;
    let user = config
        .user_id
        .clone()
        .ok_or_else(|| Error::Config("no bot user (config `user_id` or AIRLOCK_USER)".into()))?;
    let user_id =
        UserId::parse(&user).map_err(|e| Error::Config(format!("user_id {user}: {e}")))?;
    let store = config.store_dir.clone();
    std::fs::create_dir_all(&store).map_err(|e| Error::Session(store.clone(), e.to_string()))?;
    let passphrase = std::env::var("AIRLOCK_STORE_PASSPHRASE").ok();
    let client = Client::builder()
        .homeserver_url(&homeserver)
        // The configured URL stays authoritative: a login response's
        // well-known would switch to the public URL on the first start only.
        .respect_login_well_known(false)
        // A bot syncs a handful of rooms: the default store keeps eight
        // connections with 2 MiB of page cache each, per database.
        .sqlite_store_with_config_and_cache_path(
            matrix_sdk::SqliteStoreConfig::with_low_memory_config(&store)
                .passphrase(passphrase.as_deref()),
            None::<PathBuf>,
        )
        .build()
        .await?;
    login(
        &client,
        &homeserver,
        &user_id,
        &config.device_name,
        &store.join("session.json"),
    )
    .await?;
    Ok((client, user_id, homeserver))
}

/// The HTTP listener (`/healthz`, `/metrics`, the audit export), if
/// `http.listen` is set.
async fn serve_http(
    config: &Settings,
    bot: &Arc<Bot>,
) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
    let Some(addr) = &config.http.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("http.listen {addr}: {e}")))?;
    tracing::info!("serving /healthz and /metrics on {addr}");
    let export = if config.http.audit_export {
        let token = std::env::var(crate::http::AUDIT_TOKEN_ENV)
            .ok()
            .filter(|t| t.len() >= 16)
            .ok_or_else(|| {
                Error::Config(format!(
                    "http.audit_export serves every room's audit entries: set {} (16 characters or more) in the bot's environment; clients send it as a bearer token",
                    crate::http::AUDIT_TOKEN_ENV
                ))
            })?;
        Some(crate::http::AuditExport::new(token))
    } else {
        None
    };
    Ok(Some(tokio::spawn(crate::http::serve(
        listener,
        bot.engine.clone(),
        bot.liveness.clone(),
        export,
    ))))
}

/// StackStorm's announcements, posted where the policy allows (when
/// `st2.announce_as` is set).
fn follow_announcements(config: &Settings, bot: &Arc<Bot>) {
    let Some((st2, as_user)) = config
        .st2
        .clone()
        .and_then(|c| c.announce_as.clone().map(|u| (c, u)))
    else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine = bot.engine.clone();
    std::thread::spawn(move || {
        crate::action::st2::listen_announcements(&st2, |event| {
            tx.send(engine.announce(&as_user, &event, crate::wall::now_ms()))
                .is_ok()
        })
    });
    let bot = bot.clone();
    tokio::spawn(async move {
        while let Some(fx) = rx.recv().await {
            bot.clone().apply(fx).await;
        }
    });
}

impl Bot {
    /// Before serving: a first start syncs once without handlers (it must
    /// not act on the room history; later starts resume from the stored
    /// sync token, so nothing that arrived while the bot was down is lost,
    /// and the engine still refuses commands older than
    /// `max_command_age`); then the handlers, pending invites, and what
    /// the engine's start left to send.
    async fn catch_up(self: Arc<Self>, sync: SyncSettings) {
        let token = self
            .client
            .state_store()
            .get_kv_data(matrix_sdk::store::StateStoreDataKey::SyncToken)
            .await
            .ok()
            .flatten();
        if token.is_none() {
            sync_with_retry(&self.client, sync).await;
            self.liveness.synced(crate::wall::now_ms());
        }
        self.register_handlers();
        for room in self.client.invited_rooms() {
            if let Some(inviter) = room.invite_details().await.ok().and_then(|d| d.inviter) {
                self.clone()
                    .answer_invite(room, inviter.user_id().to_owned())
                    .await;
            }
        }
        self.clone().apply(self.engine.take_startup_effects()).await;
    }

    /// The checkpoints and seals already posted in the audit room.
    async fn load_checkpoints(&self, room: &str) {
        let (found, seals) = self.read_checkpoints(room).await;
        tracing::info!(
            "{} audit checkpoint(s) and {} seal(s) found in {room}",
            found.len(),
            seals.len()
        );
        self.engine.add_checkpoints(found);
        self.engine.add_seals(seals);
    }

    /// The engine's tick, every second, for as long as the bot runs; and
    /// every [`CHAIN_CHECK_EVERY`] seconds a whole check of the audit chain.
    async fn tick_every_second(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        for n in 0u64.. {
            every.tick().await;
            // What the allocator holds free goes back to the system now
            // and then, so a burst of commands leaves no lasting growth;
            // the first time soon after start, when the memory the first
            // sync and the stores' setup used has been freed.
            #[cfg(target_env = "gnu")]
            if n % 30 == 2 {
                // SAFETY: malloc_trim only returns free memory.
                let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
            }
            // The whole chain, checked off the tick (it reads every live
            // entry and hashes every segment): what the web view's
            // overview says of the log.
            if n % CHAIN_CHECK_EVERY == 5 {
                let engine = self.engine.clone();
                tokio::task::spawn_blocking(move || {
                    match engine.check_chain(crate::wall::now_ms()) {
                        Ok(c) if c.problems.is_empty() => {
                            tracing::debug!(entries = c.entries, "audit chain intact");
                        }
                        Ok(c) => tracing::error!(
                            problems = c.problems.len(),
                            "the audit log does NOT verify: {}",
                            c.problems[0]
                        ),
                        Err(e) => tracing::warn!("cannot check the audit chain: {e}"),
                    }
                });
            }
            let engine = self.engine.clone();
            if let Ok(fx) =
                tokio::task::spawn_blocking(move || engine.tick(crate::wall::now_ms())).await
            {
                self.clone().apply(fx).await;
            }
        }
    }

    /// Sync (backing off on failures) until SIGTERM or SIGINT; SIGHUP
    /// reloads aliases and policy.
    async fn sync_until_stopped(self: Arc<Self>, sync: SyncSettings) -> Result<(), Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Config(e.to_string()))?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::Config(e.to_string()))?;
        let mut backoff = Duration::from_millis(500);
        loop {
            tokio::select! {
                r = self.client.sync_once(sync.clone()) => match r {
                    Ok(response) => {
                        backoff = Duration::from_millis(500);
                        let now = crate::wall::now_ms();
                        self.liveness.synced(now);
                        self.engine.metrics().sync(true, newest_event_age(&response, now));
                    }
                    Err(e) => {
                        self.engine.metrics().sync(false, None);
                        let wait = retry_after(&e).unwrap_or(backoff);
                        tracing::warn!("sync failed ({e}); retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                },
                _ = hup.recv() => self.reload().await,
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}

/// How old the newest room event in a sync response is (ms): the sync lag.
fn newest_event_age(response: &matrix_sdk::sync::SyncResponse, now_ms: u64) -> Option<u64> {
    response
        .rooms
        .joined
        .values()
        .flat_map(|r| r.timeline.events.iter())
        .filter_map(|e| e.raw().get_field::<u64>("origin_server_ts").ok().flatten())
        .max()
        .map(|ts| now_ms.saturating_sub(ts))
}

impl Bot {
    /// Stop: ask running actions to finish, wait for them a while, and mark
    /// whatever still runs as interrupted in the audit log.
    async fn shutdown(&self) {
        tracing::info!("shutting down");
        self.engine.begin_shutdown();
        drop(
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let mut finished = self.finished.lock().await;
        // `recv` gives None once every execution has dropped its sender.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, finished.recv()).await;
        let engine = self.engine.clone();
        let _ =
            tokio::task::spawn_blocking(move || engine.interrupt_running(crate::wall::now_ms()))
                .await;
    }
}
