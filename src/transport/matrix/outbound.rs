//! Effects out: messages and reactions to rooms (retried through
//! outages), preparations and executions on blocking threads. The
//! translation of an [`Outgoing`] into Matrix content is the pure
//! [`to_content`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use matrix_sdk::HttpError;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, InReplyTo, Reply, Thread};
use matrix_sdk::ruma::events::room::message::{Relation, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId, TransactionId};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Bot;
use crate::engine::{Effect, Engine, Outgoing};
use crate::metrics::Metrics;

/// How long a message is retried while the homeserver cannot be reached
/// (matrix-sdk itself retries only rate limits and server errors).
const SEND_RETRY_FOR: Duration = Duration::from_secs(600);

/// Send `content` to `room`. While the homeserver cannot be reached, retry
/// with backoff under one transaction ID, so the room gets it once: a
/// result finished during an outage is delivered when the server is back.
async fn send_retrying(
    room: &Room,
    event_type: &str,
    content: serde_json::Value,
    metrics: &Metrics,
) -> Result<OwnedEventId, matrix_sdk::Error> {
    let txn = TransactionId::new();
    let deadline = tokio::time::Instant::now() + SEND_RETRY_FOR;
    let mut backoff = Duration::from_millis(500);
    loop {
        match room
            .send_raw(event_type, content.clone())
            .with_transaction_id(&txn)
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
                metrics.send_retry();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long the bot must have been quiet (no command being handled, none
/// newly arrived) before a status reaction goes out.
const REACTION_QUIET: Duration = Duration::from_millis(250);

/// A reaction waits for a quiet moment at most this long: under a steady
/// stream of commands, reactions then go out between the answers instead
/// of piling up until the stream stops.
const REACTION_MAX_DELAY: Duration = Duration::from_secs(60);

/// At most this many reactions wait; past it the oldest is dropped (and
/// counted): a storm of commands must not grow the bot's memory, and each
/// command's answer already says what its reaction would.
const REACTION_BACKLOG: usize = 1000;

/// A status reaction waiting for its turn.
#[derive(Debug, PartialEq)]
struct Queued {
    room: OwnedRoomId,
    event: OwnedEventId,
    key: &'static str,
    since: Instant,
}

/// The reactions waiting, oldest first; time is passed in.
#[derive(Default)]
struct Backlog(VecDeque<Queued>);

impl Backlog {
    /// Queue `r`; how many were dropped to make room. A status for the same
    /// event not yet sent is replaced where it waits: the newer one (✅
    /// after 👀) says more, and the older would go out only to be outdated.
    fn push(&mut self, r: Queued) -> usize {
        if let Some(q) = self
            .0
            .iter_mut()
            .find(|q| q.event == r.event && q.room == r.room)
        {
            q.key = r.key;
            return 0;
        }
        self.0.push_back(r);
        let over = self.0.len().saturating_sub(REACTION_BACKLOG);
        self.0.drain(..over);
        over
    }

    /// The oldest reaction, if it may go out now: the bot is quiet, or it
    /// has waited [`REACTION_MAX_DELAY`].
    fn pop(&mut self, quiet: bool, now: Instant) -> Option<Queued> {
        let due = self.0.front()?.since + REACTION_MAX_DELAY <= now;
        if quiet || due {
            self.0.pop_front()
        } else {
            None
        }
    }

    /// When the oldest may go out however busy the bot is.
    fn due_at(&self) -> Option<Instant> {
        self.0.front().map(|q| q.since + REACTION_MAX_DELAY)
    }
}

/// Status reactions (👀 ⏳ ✅ ❌), sent on their own lane once the bot is
/// quiet. The homeserver orders a room's events one by one, and every
/// client wakes for each: a reaction sent while the next command is being
/// answered would be ordered ahead of that answer and delay it. Reactions
/// decorate; answers are what people wait for.
pub(super) struct Reactions {
    backlog: Mutex<Backlog>,
    /// Woken when a reaction is queued or the lane closes.
    queued: Notify,
    /// Commands being handled now.
    handling: AtomicUsize,
    /// When a command last arrived or was last answered.
    last_busy: Mutex<Instant>,
    /// Shutting down: nothing more is queued, and what is queued goes out
    /// without waiting.
    closed: AtomicBool,
}

/// A command being handled, for [`Reactions`]; dropped when its answers
/// are sent.
pub(super) struct Busy<'a>(&'a Reactions);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Reactions {
    pub(super) fn new() -> Self {
        Reactions {
            backlog: Mutex::new(Backlog::default()),
            queued: Notify::new(),
            handling: AtomicUsize::new(0),
            last_busy: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
        }
    }

    /// A command arrived and is being handled until the guard drops.
    pub(super) fn busy(&self) -> Busy<'_> {
        self.touch();
        self.handling.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    fn touch(&self) {
        *self.last_busy.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Queue a reaction; how many older ones were dropped for it. Once the
    /// lane is closed it comes back, to be sent directly.
    fn push(&self, r: Queued) -> Result<usize, Queued> {
        // `closed` is read and set under the backlog's lock: a reaction
        // queued as the lane closes would otherwise never go out.
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Relaxed) {
            return Err(r);
        }
        let dropped = backlog.push(r);
        self.queued.notify_one();
        Ok(dropped)
    }

    /// Stop queueing; what is queued goes out without waiting.
    pub(super) fn close(&self) {
        let _backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Relaxed);
        self.queued.notify_one();
    }

    /// The next reaction to send, once the bot is quiet (no command being
    /// handled, none arrived or answered for [`REACTION_QUIET`]) or it is
    /// overdue; `None` when the lane is closed and empty.
    async fn next(&self) -> Option<Queued> {
        loop {
            let now = Instant::now();
            // While a command is handled, look again shortly.
            let quiet_at = if self.handling.load(Ordering::Relaxed) > 0 {
                now + Duration::from_millis(20)
            } else {
                *self.last_busy.lock().unwrap_or_else(|e| e.into_inner()) + REACTION_QUIET
            };
            let wake = {
                let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
                let closed = self.closed.load(Ordering::Relaxed);
                if let Some(q) = backlog.pop(closed || quiet_at <= now, now) {
                    return Some(q);
                }
                if closed {
                    return None;
                }
                backlog.due_at().map(|due| due.min(quiet_at))
            };
            match wake {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.queued.notified()).await;
                }
                None => self.queued.notified().await,
            }
        }
    }
}

/// A notice for `o`: plain, or plain with escaped HTML; a reply, in its
/// thread when it has one (a thread reply keeps the reply fallback for
/// clients without threads).
/// The content of the event that carries `o`: [`to_content`], with the
/// message's own fields (a checkpoint's) beside it.
pub fn event_content(o: &Outgoing) -> serde_json::Value {
    let mut content = serde_json::to_value(to_content(o)).unwrap_or_default();
    if let Some(m) = content.as_object_mut() {
        for (k, v) in &o.message.fields {
            m.insert(k.clone(), v.clone());
        }
    }
    content
}

/// The `m.room.message` content for `o`: a notice, in reply or in thread.
pub fn to_content(o: &Outgoing) -> RoomMessageEventContent {
    let mut content = match &o.message.html {
        Some(html) => RoomMessageEventContent::notice_html(&o.message.body, html),
        None => RoomMessageEventContent::notice_plain(&o.message.body),
    };
    let event = |e: &Option<String>| e.as_deref().and_then(|e| OwnedEventId::try_from(e).ok());
    content.relates_to = match (event(&o.thread), event(&o.reply_to)) {
        (Some(root), Some(r)) => Some(Relation::Thread(Thread::reply(root, r))),
        (Some(root), None) => Some(Relation::Thread(Thread::without_fallback(root))),
        (None, Some(r)) => Some(Relation::Reply(Reply::new(InReplyTo::new(r)))),
        (None, None) => None,
    };
    content
}

impl Bot {
    /// The reaction lane's sender: one reaction at a time, each once the
    /// bot is quiet or it is overdue; ends when the lane is closed and
    /// emptied.
    pub(super) async fn send_reactions(self: Arc<Self>) {
        while let Some(q) = self.reactions.next().await {
            self.react(q).await;
        }
    }

    async fn react(&self, q: Queued) {
        let Some(room) = self.client.get_room(&q.room) else {
            return;
        };
        let content = ReactionEventContent::new(Annotation::new(q.event, q.key.to_string()));
        let content = serde_json::to_value(content).unwrap_or_default();
        if let Err(e) = send_retrying(&room, "m.reaction", content, self.engine.metrics()).await {
            tracing::warn!("reaction in {}: {e}", q.room);
        }
    }

    /// Carry out effects: messages and reactions now, executions on
    /// blocking threads (they never hold up the sync loop).
    pub(super) fn apply(self: Arc<Self>, effects: Vec<Effect>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            for fx in effects {
                match fx {
                    Effect::Send(o) => self.send(o).await,
                    Effect::Direct { user, message } => self.direct(&user, message).await,
                    Effect::React {
                        room,
                        event_id,
                        key,
                    } => {
                        let (Ok(room), Ok(event)) = (
                            OwnedRoomId::try_from(room),
                            OwnedEventId::try_from(event_id),
                        ) else {
                            continue;
                        };
                        let since = Instant::now();
                        match self.reactions.push(Queued {
                            room,
                            event,
                            key,
                            since,
                        }) {
                            Ok(0) => {}
                            Ok(dropped) => {
                                tracing::warn!(
                                    "{dropped} status reaction(s) dropped: \
                                     more than {REACTION_BACKLOG} waiting"
                                );
                                self.engine.metrics().reactions_dropped(dropped);
                            }
                            Err(q) => self.react(q).await,
                        }
                    }
                    Effect::Prepare(id) => self
                        .clone()
                        .background(move |e| e.prepare(&id, crate::wall::now_ms)),
                    Effect::Execute(id) => self
                        .clone()
                        .background(move |e| e.execute(&id, crate::wall::now_ms)),
                    Effect::Resume(id) => self
                        .clone()
                        .background(move |e| e.resume(&id, crate::wall::now_ms)),
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

    /// A direct room the bot shares with `user` that they are still in
    /// (or invited to): one they left would swallow the message. The bot
    /// leaves those they left, so years of sign-ins gather no empty rooms.
    async fn dm_room(&self, user: &matrix_sdk::ruma::UserId) -> Option<Room> {
        use matrix_sdk::ruma::events::room::member::MembershipState;
        let mut found = None;
        for room in self.client.get_dm_rooms(user) {
            let Ok(Some(m)) = room.get_member_no_sync(user).await else {
                continue;
            };
            match m.membership() {
                MembershipState::Join | MembershipState::Invite => {
                    found.get_or_insert(room);
                }
                MembershipState::Leave | MembershipState::Ban => match room.leave().await {
                    Ok(()) => tracing::info!("left {}: {user} had left it", room.room_id()),
                    Err(e) => tracing::warn!("cannot leave {}: {e}", room.room_id()),
                },
                _ => {}
            }
        }
        found
    }

    /// Send `message` to `user` in a direct room with them: one they are
    /// still in, or a new one (encrypted, `is_direct`).
    async fn direct(&self, user: &str, message: crate::render::Message) {
        let Ok(user) = matrix_sdk::ruma::UserId::parse(user) else {
            return;
        };
        let room = match self.dm_room(&user).await {
            Some(r) => r,
            None => match self.client.create_dm(&user).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("cannot open a direct room with {user}: {e}");
                    return;
                }
            },
        };
        self.send(Outgoing {
            room: room.room_id().to_string(),
            reply_to: None,
            thread: None,
            message,
            prompt_for: None,
        })
        .await
    }

    async fn send(&self, o: Outgoing) {
        let Some(room) = self.room(&o.room) else {
            tracing::warn!("not in room {}; dropped a message", o.room);
            return;
        };
        let content = event_content(&o);
        let room_id = room.room_id().to_owned();
        if o.prompt_for.is_some() {
            *self
                .prompts_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(room_id.clone())
                .or_insert(0) += 1;
        }
        let sent = send_retrying(&room, "m.room.message", content, self.engine.metrics()).await;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Message;

    fn outgoing(reply_to: Option<&str>, thread: Option<&str>, html: bool) -> Outgoing {
        Outgoing {
            room: "!e4_-U62puWxh0xAHKLfXe4uO7XcTuwkfltgSmxR3iho".into(),
            reply_to: reply_to.map(str::to_string),
            thread: thread.map(str::to_string),
            message: if html {
                Message::from_template_output("done{~}<b>x</b>")
            } else {
                Message::plain("hello")
            },
            prompt_for: None,
        }
    }

    fn json(c: &RoomMessageEventContent) -> serde_json::Value {
        serde_json::to_value(c).unwrap()
    }

    #[test]
    fn a_reply_is_a_notice_in_reply() {
        let c = json(&to_content(&outgoing(Some("$cmd"), None, false)));
        assert_eq!(c["msgtype"], "m.notice");
        assert_eq!(c["body"], "hello");
        assert_eq!(c["m.relates_to"]["m.in_reply_to"]["event_id"], "$cmd");
        assert!(c.get("format").is_none());
    }

    #[test]
    fn in_a_thread_with_and_without_a_reply() {
        let c = json(&to_content(&outgoing(Some("$cmd"), Some("$root"), false)));
        assert_eq!(c["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(c["m.relates_to"]["event_id"], "$root");
        assert_eq!(c["m.relates_to"]["m.in_reply_to"]["event_id"], "$cmd");
        assert_ne!(c["m.relates_to"]["is_falling_back"], true);
        // In the thread, answering nothing in particular.
        let c = json(&to_content(&outgoing(None, Some("$root"), false)));
        assert_eq!(c["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(c["m.relates_to"]["event_id"], "$root");
        assert!(c["m.relates_to"].get("m.in_reply_to").is_none());
    }

    #[test]
    fn formatted_messages_carry_escaped_html() {
        let c = json(&to_content(&outgoing(None, None, true)));
        assert_eq!(c["format"], "org.matrix.custom.html");
        let html = c["formatted_body"].as_str().unwrap();
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"), "{html}");
        assert!(c.get("m.relates_to").is_none());
    }

    fn queued(event: &str, key: &'static str, since: Instant) -> Queued {
        Queued {
            room: OwnedRoomId::try_from("!e4_-U62puWxh0xAHKLfXe4uO7XcTuwkfltgSmxR3iho").unwrap(),
            event: OwnedEventId::try_from(event).unwrap(),
            key,
            since,
        }
    }

    fn keys(b: &Backlog) -> Vec<(&str, &str)> {
        b.0.iter().map(|q| (q.event.as_str(), q.key)).collect()
    }

    #[test]
    fn a_newer_status_replaces_one_not_yet_sent_in_its_place() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        b.push(queued("$a", "👀", t0));
        b.push(queued("$b", "👀", t0));
        b.push(queued("$a", "✅", t0 + Duration::from_secs(1)));
        assert_eq!(keys(&b), [("$a", "✅"), ("$b", "👀")]);
        // It keeps the age of the one it replaced.
        assert_eq!(b.due_at(), Some(t0 + REACTION_MAX_DELAY));
    }

    #[test]
    fn reactions_wait_for_quiet_until_overdue() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        b.push(queued("$a", "✅", t0));
        b.push(queued("$b", "✅", t0 + Duration::from_secs(1)));
        assert_eq!(b.pop(false, t0 + Duration::from_secs(59)), None);
        let first = b.pop(false, t0 + REACTION_MAX_DELAY).unwrap();
        assert_eq!(first.event.as_str(), "$a");
        // The next is not overdue yet, but the bot is quiet.
        assert_eq!(b.pop(false, t0 + REACTION_MAX_DELAY), None);
        assert_eq!(
            b.pop(true, t0 + REACTION_MAX_DELAY).unwrap().event.as_str(),
            "$b"
        );
        assert_eq!(b.pop(true, t0 + REACTION_MAX_DELAY), None);
    }

    #[test]
    fn past_the_backlog_the_oldest_are_dropped() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        let dropped: usize = (0..REACTION_BACKLOG + 3)
            .map(|i| b.push(queued(&format!("$e{i}"), "✅", t0)))
            .sum();
        assert_eq!(dropped, 3);
        assert_eq!(b.0.len(), REACTION_BACKLOG);
        assert_eq!(b.0.front().unwrap().event.as_str(), "$e3");
    }
}
