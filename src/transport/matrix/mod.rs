//! The Matrix transport: matrix-sdk events in, engine effects out.
//!
//! This layer only translates. A room message becomes an
//! [`Incoming`] (sender ID, room ID, event ID, plain
//! body with the reply fallback removed, the event it replies to, thread,
//! server timestamp, power level); each [`Effect`] becomes a notice, a
//! reaction, or an execution on a blocking thread. Policy, confirmation
//! and audit all live in the engine; the one judgement made here is
//! Matrix's own: events from before the bot joined a room (the history the
//! first sync after a join carries) never reach the engine.
//!
//! The sync loop is our own `sync_once` loop: `Client::sync` waits a second
//! between syncs, which would be the bot's reaction time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::event_handler::RawEvent;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::membership::leave_room;
use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};
use matrix_sdk::ruma::events::reaction::{OriginalSyncReactionEvent, ReactionEventContent};
use matrix_sdk::ruma::events::relation::{Annotation, InReplyTo, Reply, Thread};
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::member::{
    MembershipChange, MembershipState, StrippedRoomMemberEvent,
};
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
};
use matrix_sdk::ruma::events::room::power_levels::UserPowerLevel;
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncTimelineEvent, MessageLikeEventContent, SyncMessageLikeEvent,
    SyncStateEvent,
};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId,
    TransactionId, UserId,
};
use matrix_sdk::{Client, HttpError, RoomState};
use tokio::sync::{Notify, mpsc};

use crate::config::Config;
use crate::engine::{Effect, Engine, Incoming, Kind};

/// How long a shutdown waits for running actions before marking them
/// interrupted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("matrix: {0}")]
    Matrix(#[from] matrix_sdk::Error),
    #[error("matrix client: {0}")]
    Client(#[from] matrix_sdk::ClientBuildError),
    #[error("{0}")]
    Engine(#[from] crate::engine::StartError),
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
}

/// Log in (or restore the saved session), sync, and serve until SIGTERM or
/// SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let homeserver = config.homeserver.clone().ok_or_else(|| {
        Error::Config("no homeserver (config `homeserver` or AIRLOCK_HOMESERVER)".into())
    })?;
    let user = config
        .user_id
        .clone()
        .ok_or_else(|| Error::Config("no bot user (config `user_id` or AIRLOCK_USER)".into()))?;
    let user_id =
        UserId::parse(&user).map_err(|e| Error::Config(format!("user_id {user}: {e}")))?;

    let opened = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || config.open(crate::clock::now_ms()))
            .await
            .map_err(|e| Error::Config(e.to_string()))??
    };
    let engine = Arc::new(opened.engine);

    let store = config.data_dir.join("matrix");
    std::fs::create_dir_all(&store).map_err(|e| Error::Session(store.clone(), e.to_string()))?;
    let passphrase = std::env::var("AIRLOCK_STORE_PASSPHRASE").ok();
    let client = Client::builder()
        .homeserver_url(&homeserver)
        // The configured URL stays authoritative: a login response's
        // well-known would switch to the public URL on the first start only.
        .respect_login_well_known(false)
        .sqlite_store(&store, passphrase.as_deref())
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

    let (running, finished) = mpsc::channel(1);
    let bot = Arc::new(Bot {
        client: client.clone(),
        engine,
        me: user_id,
        prompts_in_flight: std::sync::Mutex::new(HashMap::new()),
        prompt_sent: Notify::new(),
        running: std::sync::Mutex::new(Some(running)),
        finished: tokio::sync::Mutex::new(finished),
    });
    bot.resolve_room_aliases().await;

    let sync = SyncSettings::default().timeout(Duration::from_secs(30));
    // A first start must not act on the room history: sync once before any
    // handler exists. Later starts resume from the stored sync token, so
    // nothing that arrived while the bot was down is lost (the engine
    // still refuses commands older than `max_command_age`).
    let token = client
        .state_store()
        .get_kv_data(matrix_sdk::store::StateStoreDataKey::SyncToken)
        .await
        .ok()
        .flatten();
    if token.is_none() {
        sync_with_retry(&client, sync.clone()).await;
    }
    bot.register_handlers();
    for room in client.invited_rooms() {
        if let Some(inviter) = room.invite_details().await.ok().and_then(|d| d.inviter) {
            bot.clone()
                .answer_invite(room, inviter.user_id().to_owned())
                .await;
        }
    }
    bot.clone().apply(bot.engine.take_startup_effects()).await;

    let ticker = {
        let bot = bot.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let engine = bot.engine.clone();
                if let Ok(fx) =
                    tokio::task::spawn_blocking(move || engine.tick(crate::clock::now_ms())).await
                {
                    bot.clone().apply(fx).await;
                }
            }
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::Config(e.to_string()))?;
    tracing::info!("airlock is running as {} on {homeserver}", bot.me);
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            r = client.sync_once(sync.clone()) => match r {
                Ok(_) => backoff = Duration::from_millis(500),
                Err(e) => {
                    let wait = retry_after(&e).unwrap_or(backoff);
                    tracing::warn!("sync failed ({e}); retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            },
            _ = hup.recv() => bot.reload().await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    ticker.abort();
    bot.shutdown().await;
    Ok(())
}

/// The homeserver's own wait for a 429, when that is the error.
fn retry_after(e: &matrix_sdk::Error) -> Option<Duration> {
    match e.client_api_error_kind() {
        Some(ErrorKind::LimitExceeded(data)) => match data.retry_after {
            Some(RetryAfter::Delay(d)) => Some(d),
            _ => Some(Duration::from_secs(5)),
        },
        _ => None,
    }
}

async fn sync_with_retry(client: &Client, settings: SyncSettings) {
    let mut backoff = Duration::from_millis(500);
    while let Err(e) = client.sync_once(settings.clone()).await {
        let wait = retry_after(&e).unwrap_or(backoff);
        tracing::warn!("initial sync failed ({e}); retrying in {wait:?}");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// Restore the saved session, or log in once and save it: one device for
/// the bot across restarts.
async fn login(
    client: &Client,
    homeserver: &str,
    user_id: &UserId,
    device_name: &str,
    session_file: &Path,
) -> Result<(), Error> {
    if let Ok(text) = std::fs::read_to_string(session_file) {
        let session: MatrixSession = serde_json::from_str(&text)
            .map_err(|e| Error::Session(session_file.into(), e.to_string()))?;
        if session.meta.user_id != *user_id {
            return Err(Error::Session(
                session_file.into(),
                format!("belongs to {}, not {user_id}", session.meta.user_id),
            ));
        }
        client
            .matrix_auth()
            .restore_session(session, Default::default())
            .await?;
        return Ok(());
    }
    let session = if let Ok(token) = std::env::var("AIRLOCK_ACCESS_TOKEN") {
        // A token alone does not say which device it is: ask, on a client
        // with no store, so no crypto state is made for a wrong device.
        let probe = Client::builder().homeserver_url(homeserver).build().await?;
        probe
            .matrix_auth()
            .restore_session(
                MatrixSession {
                    meta: matrix_sdk::SessionMeta {
                        user_id: user_id.to_owned(),
                        device_id: "AIRLOCKPROBE".into(),
                    },
                    tokens: matrix_sdk::SessionTokens {
                        access_token: token.clone(),
                        refresh_token: None,
                    },
                },
                Default::default(),
            )
            .await?;
        let who = probe.whoami().await.map_err(matrix_sdk::Error::from)?;
        let device_id = who
            .device_id
            .ok_or_else(|| Error::Config("the access token has no device".into()))?;
        let session = MatrixSession {
            meta: matrix_sdk::SessionMeta {
                user_id: who.user_id,
                device_id,
            },
            tokens: matrix_sdk::SessionTokens {
                access_token: token,
                refresh_token: None,
            },
        };
        client
            .matrix_auth()
            .restore_session(session.clone(), Default::default())
            .await?;
        session
    } else if let Ok(password) = std::env::var("AIRLOCK_PASSWORD") {
        client
            .matrix_auth()
            .login_username(user_id, &password)
            .initial_device_display_name(device_name)
            .send()
            .await?;
        client
            .matrix_auth()
            .session()
            .ok_or_else(|| Error::Config("login returned no session".into()))?
    } else {
        return Err(Error::Config(
            "no saved session and neither AIRLOCK_PASSWORD nor AIRLOCK_ACCESS_TOKEN is set".into(),
        ));
    };
    let json = serde_json::to_string(&session)
        .map_err(|e| Error::Session(session_file.into(), e.to_string()))?;
    write_private(session_file, &json)
        .map_err(|e| Error::Session(session_file.into(), e.to_string()))?;
    Ok(())
}

/// Write a secret file readable only by us, atomically.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// How long a message is retried while the homeserver cannot be reached
/// (matrix-sdk itself retries only rate limits and server errors).
const SEND_RETRY_FOR: Duration = Duration::from_secs(600);

/// Send `content` to `room`. While the homeserver cannot be reached, retry
/// with backoff under one transaction ID, so the room gets it once: a
/// result finished during an outage is delivered when the server is back.
async fn send_retrying<C>(room: &Room, content: C) -> Result<OwnedEventId, matrix_sdk::Error>
where
    C: MessageLikeEventContent + Clone,
{
    let txn = TransactionId::new();
    let deadline = tokio::time::Instant::now() + SEND_RETRY_FOR;
    let mut backoff = Duration::from_millis(500);
    loop {
        match room
            .send(content.clone())
            .with_transaction_id(txn.clone())
            .await
        {
            Ok(r) => return Ok(r.response.event_id),
            Err(matrix_sdk::Error::Http(e))
                if matches!(*e, HttpError::Reqwest(_))
                    && tokio::time::Instant::now() + backoff < deadline =>
            {
                tracing::warn!(
                    "sending to {} failed ({e}); retrying in {backoff:?}",
                    room.room_id()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The plain body without a reply fallback (`> <@user> ...` lines and the
/// blank line after them): quoted text must never read as a command.
pub fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> ") && body != ">" {
        return body;
    }
    let mut rest = body;
    while let Some(line_end) = rest.find('\n') {
        let line = &rest[..line_end];
        if line.starts_with('>') {
            rest = &rest[line_end + 1..];
        } else {
            break;
        }
    }
    if rest.starts_with('>') {
        return "";
    }
    rest.strip_prefix('\n').unwrap_or(rest)
}

impl Bot {
    fn register_handlers(self: &Arc<Self>) {
        let bot = self.clone();
        self.client
            .add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
                let bot = bot.clone();
                async move {
                    tokio::spawn(bot.on_message(ev, room));
                }
            });
        let bot = self.clone();
        self.client.add_event_handler(
            move |ev: OriginalSyncRoomEncryptedEvent, room: Room, raw: RawEvent| {
                let bot = bot.clone();
                async move {
                    tokio::spawn(bot.on_undecrypted(ev, room, raw));
                }
            },
        );
        let bot = self.clone();
        self.client
            .add_event_handler(move |ev: OriginalSyncReactionEvent, room: Room| {
                let bot = bot.clone();
                async move {
                    if ev.sender == bot.me {
                        return;
                    }
                    let Some(mut m) = bot
                        .incoming(
                            &room,
                            &ev.sender,
                            ev.event_id.as_str(),
                            "",
                            ev.origin_server_ts,
                        )
                        .await
                    else {
                        return;
                    };
                    m.kind = Kind::Reaction(ev.content.relates_to.key.clone());
                    m.relates_to = Some(ev.content.relates_to.event_id.to_string());
                    tokio::spawn(bot.handle(m));
                }
            });
        let bot = self.clone();
        self.client
            .add_event_handler(move |ev: StrippedRoomMemberEvent, room: Room| {
                let bot = bot.clone();
                async move {
                    if ev.state_key == bot.me && ev.content.membership == MembershipState::Invite {
                        tokio::spawn(bot.answer_invite(room, ev.sender));
                    }
                }
            });
    }

    /// The engine's view of an event, or None for history: events from
    /// before the bot joined the room, which the first sync after a join
    /// carries and which must never run.
    async fn incoming(
        &self,
        room: &Room,
        sender: &UserId,
        event_id: &str,
        body: &str,
        ts: MilliSecondsSinceUnixEpoch,
    ) -> Option<Incoming> {
        if self.before_join(room, ts).await {
            tracing::debug!("{event_id} predates our joining {}", room.room_id());
            return None;
        }
        let power_level = match room.get_member_no_sync(sender).await {
            Ok(Some(m)) => Some(match m.power_level() {
                UserPowerLevel::Infinite => i64::MAX,
                UserPowerLevel::Int(i) => i.into(),
                _ => 0,
            }),
            _ => None,
        };
        let mut m = Incoming::message(
            sender.as_str(),
            room.room_id().as_str(),
            event_id,
            body,
            u64::from(ts.get()),
        );
        m.power_level = power_level;
        Some(m)
    }

    /// Whether `ts` is before the bot's own join event in `room` (the
    /// state store holds it before any handler runs).
    async fn before_join(&self, room: &Room, ts: MilliSecondsSinceUnixEpoch) -> bool {
        let Ok(Some(me)) = room.get_member_no_sync(&self.me).await else {
            return false;
        };
        let Some(SyncStateEvent::Original(join)) = me.event().as_sync() else {
            return false;
        };
        matches!(
            join.membership_change(),
            MembershipChange::Joined
                | MembershipChange::InvitationAccepted
                | MembershipChange::KnockAccepted
        ) && ts < join.origin_server_ts
    }

    async fn on_message(self: Arc<Self>, ev: OriginalSyncRoomMessageEvent, room: Room) {
        if ev.sender == self.me || room.state() != RoomState::Joined {
            return;
        }
        // Notices are other bots talking; only text is a command.
        let MessageType::Text(text) = &ev.content.msgtype else {
            return;
        };
        let body = strip_reply_fallback(&text.body).to_string();
        let Some(mut m) = self
            .incoming(
                &room,
                &ev.sender,
                ev.event_id.as_str(),
                &body,
                ev.origin_server_ts,
            )
            .await
        else {
            return;
        };
        m.addressed = ev
            .content
            .mentions
            .as_ref()
            .is_some_and(|mn| mn.user_ids.contains(&self.me));
        match &ev.content.relates_to {
            Some(Relation::Replacement(r)) => {
                m.kind = Kind::Edit;
                m.relates_to = Some(r.event_id.to_string());
                if let MessageType::Text(t) = &r.new_content.msgtype {
                    m.body = t.body.clone();
                }
            }
            Some(Relation::Reply(r)) => m.reply_to = Some(r.in_reply_to.event_id.to_string()),
            Some(Relation::Thread(t)) => {
                m.thread = Some(t.event_id.to_string());
                if !t.is_falling_back {
                    m.reply_to = t.in_reply_to.as_ref().map(|r| r.event_id.to_string());
                }
            }
            _ => {}
        }
        if m.reply_to.is_some() {
            self.wait_for_prompts(room.room_id()).await;
        }
        self.handle(m).await;
    }

    /// An event we could not decrypt: the room key may still be on its way,
    /// so try again for a few seconds before warning the sender.
    async fn on_undecrypted(
        self: Arc<Self>,
        ev: OriginalSyncRoomEncryptedEvent,
        room: Room,
        raw: RawEvent,
    ) {
        if ev.sender == self.me {
            return;
        }
        tracing::debug!("cannot decrypt {} from {} yet", ev.event_id, ev.sender);
        let raw: Raw<OriginalSyncRoomEncryptedEvent> = Raw::from_json(raw.0);
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let attempt =
                tokio::time::timeout(Duration::from_secs(1), room.decrypt_event(&raw, None)).await;
            let Ok(Ok(event)) = attempt else { continue };
            match event.raw().deserialize() {
                // Still undecryptable: decrypt_event hands back the original.
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomEncrypted(
                    _,
                ))) => continue,
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    SyncMessageLikeEvent::Original(original),
                ))) => return self.on_message(original, room).await,
                _ => return,
            }
        }
        tracing::warn!("could not decrypt {} from {}", ev.event_id, ev.sender);
        let Some(mut m) = self
            .incoming(
                &room,
                &ev.sender,
                ev.event_id.as_str(),
                "",
                ev.origin_server_ts,
            )
            .await
        else {
            return;
        };
        m.kind = Kind::Undecryptable;
        self.handle(m).await;
    }

    async fn wait_for_prompts(&self, room: &RoomId) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.prompt_sent.notified();
            let n = self
                .prompts_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(room)
                .copied()
                .unwrap_or(0);
            if n == 0 || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    async fn handle(self: Arc<Self>, m: Incoming) {
        let engine = self.engine.clone();
        // Latency breakdown for the log: homeserver to us, engine, sending.
        let (event, seen_ms) = (
            m.event_id.clone(),
            crate::clock::now_ms().saturating_sub(m.ts_ms),
        );
        let t = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || engine.handle(&m, crate::clock::now_ms())).await {
            Ok(fx) => {
                let handled = t.elapsed();
                self.apply(fx).await;
                tracing::debug!(
                    "{event}: seen {seen_ms} ms after it was sent, engine {handled:?}, answered after {:?}",
                    t.elapsed()
                );
            }
            Err(e) => tracing::error!("engine task failed: {e}"),
        }
    }

    async fn answer_invite(self: Arc<Self>, room: Room, inviter: matrix_sdk::ruma::OwnedUserId) {
        self.resolve_room_aliases().await;
        let ok = self
            .engine
            .policy()
            .may_join(inviter.as_str(), room.room_id().as_str());
        let result = if ok {
            room.join().await
        } else {
            // The plain API call, not `Room::leave`: that also forgets an
            // invited room at once, and the next sync's "left" entry for
            // it then makes matrix-sdk log an error for a normal decline.
            let request = leave_room::v3::Request::new(room.room_id().to_owned());
            self.client
                .send(request)
                .await
                .map(|_| ())
                .map_err(Into::into)
        };
        match result {
            Ok(()) => tracing::info!(
                "{} the invite from {inviter} to {}",
                if ok { "accepted" } else { "declined" },
                room.room_id()
            ),
            Err(e) => tracing::warn!("answering the invite to {}: {e}", room.room_id()),
        }
    }

    async fn resolve_room_aliases(&self) {
        let mut resolved = HashMap::new();
        for alias in self.engine.policy().room_aliases() {
            let Ok(id) = RoomAliasId::parse(&alias) else {
                continue;
            };
            let id: OwnedRoomAliasId = id;
            match self.client.resolve_room_alias(&id).await {
                Ok(r) => {
                    resolved.insert(alias, r.room_id.to_string());
                }
                Err(e) => tracing::warn!("cannot resolve room alias {alias}: {e}"),
            }
        }
        self.engine.set_room_aliases(resolved);
    }

    async fn reload(&self) {
        let engine = self.engine.clone();
        let r = tokio::task::spawn_blocking(move || {
            engine.reload_aliases();
            engine.reload_policy()
        })
        .await;
        match r {
            Ok(Ok(())) => tracing::info!("aliases and policy reloaded"),
            Ok(Err(diags)) => {
                for d in diags {
                    tracing::error!("policy not reloaded: {d}");
                }
            }
            Err(e) => tracing::error!("reload failed: {e}"),
        }
        self.resolve_room_aliases().await;
    }

    /// Carry out effects: messages and reactions now, executions on
    /// blocking threads (they never hold up the sync loop).
    fn apply(self: Arc<Self>, effects: Vec<Effect>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Status reactions go out after this batch's messages: sent first,
            // they would queue ahead of the reply in the homeserver's per-room
            // event order and wake every client's sync once more before it.
            let mut reactions = Vec::new();
            for fx in effects {
                match fx {
                    Effect::Send(o) => self.send(o).await,
                    Effect::React {
                        room,
                        event_id,
                        key,
                    } => {
                        if let (Some(room), Ok(event_id)) =
                            (self.room(&room), OwnedEventId::try_from(event_id))
                        {
                            reactions.push((
                                room,
                                ReactionEventContent::new(Annotation::new(
                                    event_id,
                                    key.to_string(),
                                )),
                            ));
                        }
                    }
                    Effect::Prepare(id) => self
                        .clone()
                        .background(move |e| e.prepare(&id, crate::clock::now_ms)),
                    Effect::Execute(id) => self
                        .clone()
                        .background(move |e| e.execute(&id, crate::clock::now_ms)),
                }
            }
            for (room, content) in reactions {
                if let Err(e) = send_retrying(&room, content).await {
                    tracing::warn!("reaction in {}: {e}", room.room_id());
                }
            }
        })
    }

    /// Run `job` (a preparation or an execution) on a blocking thread and
    /// carry out its effects; the sync loop never waits for it. Shutdown
    /// waits for it (it holds a clone of `running`); once shutdown has
    /// begun nothing new starts, and the next start reports the request.
    fn background(self: Arc<Self>, job: impl FnOnce(&Engine) -> Vec<Effect> + Send + 'static) {
        let Some(running) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        tokio::spawn(async move {
            let engine = self.engine.clone();
            if let Ok(fx) = tokio::task::spawn_blocking(move || job(&engine)).await {
                self.clone().apply(fx).await;
            }
            drop(running);
        });
    }

    fn room(&self, id: &str) -> Option<Room> {
        RoomId::parse(id)
            .ok()
            .and_then(|id| self.client.get_room(&id))
    }

    async fn send(&self, o: crate::engine::Outgoing) {
        let Some(room) = self.room(&o.room) else {
            tracing::warn!("not in room {}; dropped a message", o.room);
            return;
        };
        let mut content = match &o.message.html {
            Some(html) => RoomMessageEventContent::notice_html(&o.message.body, html),
            None => RoomMessageEventContent::notice_plain(&o.message.body),
        };
        let reply = o
            .reply_to
            .as_deref()
            .and_then(|e| OwnedEventId::try_from(e).ok());
        let thread = o
            .thread
            .as_deref()
            .and_then(|e| OwnedEventId::try_from(e).ok());
        content.relates_to = match (thread, reply) {
            (Some(root), Some(r)) => Some(Relation::Thread(Thread::reply(root, r))),
            (Some(root), None) => Some(Relation::Thread(Thread::without_fallback(root))),
            (None, Some(r)) => Some(Relation::Reply(Reply::new(InReplyTo::new(r)))),
            (None, None) => None,
        };
        let room_id = room.room_id().to_owned();
        if o.prompt_for.is_some() {
            *self
                .prompts_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(room_id.clone())
                .or_insert(0) += 1;
        }
        let sent = send_retrying(&room, content).await;
        if let Some(req) = &o.prompt_for {
            if let Ok(event) = &sent {
                let (engine, req, room, event) = (
                    self.engine.clone(),
                    req.clone(),
                    room_id.to_string(),
                    event.to_string(),
                );
                let _ =
                    tokio::task::spawn_blocking(move || engine.bind_prompt(&req, &room, &event))
                        .await;
            }
            if let Some(n) = self
                .prompts_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&room_id)
            {
                *n = n.saturating_sub(1);
            }
            self.prompt_sent.notify_waiters();
        }
        if let Err(e) = sent {
            tracing::error!("sending to {room_id}: {e}");
        }
    }

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
            tokio::task::spawn_blocking(move || engine.interrupt_running(crate::clock::now_ms()))
                .await;
    }
}

#[cfg(test)]
mod tests {
    use super::strip_reply_fallback;

    #[test]
    fn reply_fallbacks_are_removed() {
        assert_eq!(
            strip_reply_fallback("> <@a:b> !flow deploy\n> more\n\nyes"),
            "yes"
        );
        assert_eq!(strip_reply_fallback("!help"), "!help");
        assert_eq!(strip_reply_fallback("> only a quote"), "");
        assert_eq!(strip_reply_fallback(">quoted\nno"), ">quoted\nno");
    }
}
