//! Effects out: messages and reactions to rooms (retried through
//! outages), preparations and executions on blocking threads. The
//! translation of an [`Outgoing`] into Matrix content is the pure
//! [`to_content`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use matrix_sdk::HttpError;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::events::MessageLikeEventContent;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, InReplyTo, Reply, Thread};
use matrix_sdk::ruma::events::room::message::{Relation, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, RoomId, TransactionId};

use tokio::sync::mpsc;

use super::Bot;
use crate::engine::{Effect, Engine, Outgoing};
use crate::metrics::Metrics;

/// How long a message is retried while the homeserver cannot be reached
/// (matrix-sdk itself retries only rate limits and server errors).
const SEND_RETRY_FOR: Duration = Duration::from_secs(600);

/// Send `content` to `room`. While the homeserver cannot be reached, retry
/// with backoff under one transaction ID, so the room gets it once: a
/// result finished during an outage is delivered when the server is back.
async fn send_retrying<C>(
    room: &Room,
    content: C,
    metrics: &Metrics,
) -> Result<OwnedEventId, matrix_sdk::Error>
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

/// Status reactions (👀 ⏳ ✅ ❌), sent on their own lane once the bot is
/// quiet. The homeserver orders a room's events one by one, and every
/// client wakes for each: a reaction sent while the next command is being
/// answered would be ordered ahead of that answer and delay it. Reactions
/// decorate; answers are what people wait for.
pub(super) struct Reactions {
    tx: Mutex<Option<mpsc::UnboundedSender<(Room, ReactionEventContent)>>>,
    /// Commands being handled now.
    handling: AtomicUsize,
    /// When a command last arrived or was last answered.
    last_busy: Mutex<tokio::time::Instant>,
    /// Shutting down: what is queued goes out without waiting.
    draining: AtomicBool,
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
    /// A lane, and what its sender task reads.
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<(Room, ReactionEventContent)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Reactions {
            tx: Mutex::new(Some(tx)),
            handling: AtomicUsize::new(0),
            last_busy: Mutex::new(tokio::time::Instant::now()),
            draining: AtomicBool::new(false),
        };
        (lane, rx)
    }

    /// A command arrived and is being handled until the guard drops.
    pub(super) fn busy(&self) -> Busy<'_> {
        self.touch();
        self.handling.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    fn touch(&self) {
        *self.last_busy.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    }

    /// Queue a reaction; once the lane is closed it comes back, to be
    /// sent directly.
    fn push(
        &self,
        room: Room,
        content: ReactionEventContent,
    ) -> Option<(Room, ReactionEventContent)> {
        match &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send((room, content)).err().map(|e| e.0),
            None => Some((room, content)),
        }
    }

    /// Stop queueing; what is queued goes out without waiting.
    pub(super) fn close(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Wait until no command is being handled and none has arrived or
    /// been answered for [`REACTION_QUIET`] (at once if that is so now).
    async fn quiet(&self) {
        while !self.draining.load(Ordering::Relaxed) {
            if self.handling.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let last = *self.last_busy.lock().unwrap_or_else(|e| e.into_inner());
            let quiet_at = last + REACTION_QUIET;
            if tokio::time::Instant::now() >= quiet_at {
                return;
            }
            tokio::time::sleep_until(quiet_at).await;
        }
    }
}

/// A notice for `o`: plain, or plain with escaped HTML; a reply, in its
/// thread when it has one (a thread reply keeps the reply fallback for
/// clients without threads).
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

/// A reaction `key` on `event_id`, if that is an event ID.
pub fn to_reaction(event_id: &str, key: &str) -> Option<ReactionEventContent> {
    let event_id = OwnedEventId::try_from(event_id).ok()?;
    Some(ReactionEventContent::new(Annotation::new(
        event_id,
        key.to_string(),
    )))
}

impl Bot {
    /// The reaction lane's sender: one reaction at a time, each once the
    /// bot is quiet; ends when the lane is closed and emptied.
    pub(super) async fn send_reactions(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(Room, ReactionEventContent)>,
    ) {
        while let Some((room, content)) = rx.recv().await {
            self.reactions.quiet().await;
            if let Err(e) = send_retrying(&room, content, self.engine.metrics()).await {
                tracing::warn!("reaction in {}: {e}", room.room_id());
            }
        }
    }

    /// Carry out effects: messages and reactions now, executions on
    /// blocking threads (they never hold up the sync loop).
    pub(super) fn apply(self: Arc<Self>, effects: Vec<Effect>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            for fx in effects {
                match fx {
                    Effect::Send(o) => self.send(o).await,
                    Effect::React {
                        room,
                        event_id,
                        key,
                    } => {
                        if let (Some(room), Some(content)) =
                            (self.room(&room), to_reaction(&event_id, key))
                            && let Some((room, content)) = self.reactions.push(room, content)
                            && let Err(e) =
                                send_retrying(&room, content, self.engine.metrics()).await
                        {
                            tracing::warn!("reaction in {}: {e}", room.room_id());
                        }
                    }
                    Effect::Prepare(id) => self
                        .clone()
                        .background(move |e| e.prepare(&id, crate::clock::now_ms)),
                    Effect::Execute(id) => self
                        .clone()
                        .background(move |e| e.execute(&id, crate::clock::now_ms)),
                    Effect::Resume(id) => self
                        .clone()
                        .background(move |e| e.resume(&id, crate::clock::now_ms)),
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

    async fn send(&self, o: Outgoing) {
        let Some(room) = self.room(&o.room) else {
            tracing::warn!("not in room {}; dropped a message", o.room);
            return;
        };
        let content = to_content(&o);
        let room_id = room.room_id().to_owned();
        if o.prompt_for.is_some() {
            *self
                .prompts_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(room_id.clone())
                .or_insert(0) += 1;
        }
        let sent = send_retrying(&room, content, self.engine.metrics()).await;
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

    #[test]
    fn reactions_need_an_event_id() {
        assert!(to_reaction("$abc", "✅").is_some());
        assert!(to_reaction("not an event", "✅").is_none());
    }
}
