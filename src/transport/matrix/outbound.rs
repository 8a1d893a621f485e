//! Effects out: messages and reactions to rooms (retried through
//! outages), preparations and executions on blocking threads. The
//! translation of an [`Outgoing`] into Matrix content is the pure
//! [`to_content`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use matrix_sdk::HttpError;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::events::MessageLikeEventContent;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, InReplyTo, Reply, Thread};
use matrix_sdk::ruma::events::room::message::{Relation, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, RoomId, TransactionId};

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
    /// Carry out effects: messages and reactions now, executions on
    /// blocking threads (they never hold up the sync loop).
    pub(super) fn apply(self: Arc<Self>, effects: Vec<Effect>) -> BoxFuture<'static, ()> {
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
                        if let (Some(room), Some(content)) =
                            (self.room(&room), to_reaction(&event_id, key))
                        {
                            reactions.push((room, content));
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
            for (room, content) in reactions {
                if let Err(e) = send_retrying(&room, content, self.engine.metrics()).await {
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
