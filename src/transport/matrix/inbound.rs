//! Events in: room messages, reactions, undecryptable events and invites.
//! What an event means to the engine is decided by pure functions
//! ([`message_to_incoming`], [`reaction_to_incoming`]); what needs the
//! room's state (the sender's power level, whether the event predates the
//! bot's join) is looked up here, and the result handed to the engine.

use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::RoomState;
use matrix_sdk::event_handler::{Ctx, RawEvent};
use matrix_sdk::room::Room;
use matrix_sdk::ruma::events::reaction::OriginalSyncReactionEvent;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::member::{
    MembershipChange, MembershipState, StrippedRoomMemberEvent,
};
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation,
};
use matrix_sdk::ruma::events::room::power_levels::UserPowerLevel;
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncTimelineEvent, SyncMessageLikeEvent, SyncStateEvent,
};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{MilliSecondsSinceUnixEpoch, RoomId, UserId};

use matrix_sdk::deserialized_responses::{EncryptionInfo, VerificationLevel, VerificationState};

use super::Bot;
use crate::engine::{Device, Effect, Incoming, Kind};

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

/// The engine's view of a room message, or None when it is not for the
/// engine: the bot's own, or not text (notices are other bots talking).
/// The reply fallback is stripped (quoted text never reads as a command);
/// an edit carries its new text and never runs anything; a thread reply
/// without fallback counts as a reply to the event it answers.
pub fn message_to_incoming(
    ev: &OriginalSyncRoomMessageEvent,
    room: &RoomId,
    me: &UserId,
    power_level: Option<i64>,
) -> Option<Incoming> {
    if ev.sender == me {
        return None;
    }
    let MessageType::Text(text) = &ev.content.msgtype else {
        return None;
    };
    let mut m = Incoming::message(
        ev.sender.as_str(),
        room.as_str(),
        ev.event_id.as_str(),
        strip_reply_fallback(&text.body),
        u64::from(ev.origin_server_ts.get()),
    );
    m.power_level = power_level;
    m.addressed = ev
        .content
        .mentions
        .as_ref()
        .is_some_and(|mn| mn.user_ids.contains(me));
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
    Some(m)
}

/// The engine's view of a reaction, or None for the bot's own.
pub fn reaction_to_incoming(
    ev: &OriginalSyncReactionEvent,
    room: &RoomId,
    me: &UserId,
    power_level: Option<i64>,
) -> Option<Incoming> {
    if ev.sender == me {
        return None;
    }
    let mut m = Incoming::message(
        ev.sender.as_str(),
        room.as_str(),
        ev.event_id.as_str(),
        "",
        u64::from(ev.origin_server_ts.get()),
    );
    m.kind = Kind::Reaction(ev.content.relates_to.key.clone());
    m.relates_to = Some(ev.content.relates_to.event_id.to_string());
    m.power_level = power_level;
    Some(m)
}

impl Bot {
    /// The handlers, with the bot as their shared context.
    pub(super) fn register_handlers(self: &Arc<Self>) {
        self.client.add_event_handler_context(self.clone());
        self.client.add_event_handler(
            |ev: OriginalSyncRoomMessageEvent,
             room: Room,
             info: Option<EncryptionInfo>,
             Ctx(bot): Ctx<Arc<Bot>>| async move {
                tokio::spawn(bot.on_message(ev, room, info));
            },
        );
        self.client.add_event_handler(
            |ev: OriginalSyncRoomEncryptedEvent,
             room: Room,
             raw: RawEvent,
             Ctx(bot): Ctx<Arc<Bot>>| async move {
                tokio::spawn(bot.on_undecrypted(ev, room, raw));
            },
        );
        self.client.add_event_handler(
            |ev: OriginalSyncReactionEvent,
             room: Room,
             info: Option<EncryptionInfo>,
             Ctx(bot): Ctx<Arc<Bot>>| async move {
                tokio::spawn(bot.on_reaction(ev, room, info));
            },
        );
        self.client.add_event_handler(
            |ev: StrippedRoomMemberEvent, room: Room, Ctx(bot): Ctx<Arc<Bot>>| async move {
                if ev.state_key == bot.me && ev.content.membership == MembershipState::Invite {
                    tokio::spawn(bot.answer_invite(room, ev.sender));
                }
            },
        );
    }

    /// The sender's power level in `room`, when the state store knows it.
    async fn power_level(&self, room: &Room, sender: &UserId) -> Option<i64> {
        match room.get_member_no_sync(sender).await {
            Ok(Some(m)) => Some(match m.power_level() {
                UserPowerLevel::Infinite => i64::MAX,
                UserPowerLevel::Int(i) => i.into(),
                _ => 0,
            }),
            _ => None,
        }
    }

    /// History (events from before the bot joined the room, which the first
    /// sync after a join carries) must never run.
    async fn is_history(&self, room: &Room, event: &str, ts: MilliSecondsSinceUnixEpoch) -> bool {
        let old = self.before_join(room, ts).await;
        if old {
            tracing::debug!("{event} predates our joining {}", room.room_id());
        }
        old
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

    /// The device an event came from, and whether its owner cross-signed
    /// it. The state computed at decryption can predate the owner's keys
    /// reaching us, so a doubtful answer is checked again against the
    /// crypto store (no network).
    async fn device(&self, info: Option<&EncryptionInfo>) -> Device {
        let Some(info) = info else {
            return Device::Unknown;
        };
        let Some(id) = info.sender_device.as_ref() else {
            return Device::NotCrossSigned("(unknown device)".into());
        };
        if matches!(
            info.verification_state,
            VerificationState::Verified
                | VerificationState::Unverified(VerificationLevel::UnverifiedIdentity)
        ) {
            return Device::CrossSigned(id.to_string());
        }
        match self.client.encryption().get_device(&info.sender, id).await {
            Ok(Some(d)) if d.is_cross_signed_by_owner() => Device::CrossSigned(id.to_string()),
            _ => Device::NotCrossSigned(id.to_string()),
        }
    }

    async fn on_message(
        self: Arc<Self>,
        ev: OriginalSyncRoomMessageEvent,
        room: Room,
        info: Option<EncryptionInfo>,
    ) {
        if room.state() != RoomState::Joined
            || ev.sender == self.me
            || self
                .is_history(&room, ev.event_id.as_str(), ev.origin_server_ts)
                .await
        {
            return;
        }
        let power = self.power_level(&room, &ev.sender).await;
        let Some(mut m) = message_to_incoming(&ev, room.room_id(), &self.me, power) else {
            return;
        };
        m.device = self.device(info.as_ref()).await;
        if m.reply_to.is_some() {
            self.wait_for_prompts(room.room_id()).await;
        }
        self.handle(m).await;
    }

    async fn on_reaction(
        self: Arc<Self>,
        ev: OriginalSyncReactionEvent,
        room: Room,
        info: Option<EncryptionInfo>,
    ) {
        if ev.sender == self.me
            || self
                .is_history(&room, ev.event_id.as_str(), ev.origin_server_ts)
                .await
        {
            return;
        }
        let power = self.power_level(&room, &ev.sender).await;
        if let Some(mut m) = reaction_to_incoming(&ev, room.room_id(), &self.me, power) {
            m.device = self.device(info.as_ref()).await;
            self.handle(m).await;
        }
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
            let info = event.encryption_info().map(|i| (**i).clone());
            match event.raw().deserialize() {
                // Still undecryptable: decrypt_event hands back the original.
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomEncrypted(
                    _,
                ))) => continue,
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    SyncMessageLikeEvent::Original(original),
                ))) => return self.on_message(original, room, info).await,
                _ => return,
            }
        }
        tracing::warn!("could not decrypt {} from {}", ev.event_id, ev.sender);
        if self
            .is_history(&room, ev.event_id.as_str(), ev.origin_server_ts)
            .await
        {
            return;
        }
        let mut m = Incoming::message(
            ev.sender.as_str(),
            room.room_id().as_str(),
            ev.event_id.as_str(),
            "",
            u64::from(ev.origin_server_ts.get()),
        );
        m.kind = Kind::Undecryptable;
        m.power_level = self.power_level(&room, &ev.sender).await;
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
        // Status reactions wait until this command is answered.
        let _busy = self.reactions.busy();
        let engine = self.engine.clone();
        // Latency breakdown for the log: homeserver to us, engine, sending.
        let (event, seen_ms, m_ts) = (
            m.event_id.clone(),
            crate::wall::now_ms().saturating_sub(m.ts_ms),
            m.ts_ms,
        );
        let t = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || engine.handle(&m, crate::wall::now_ms())).await {
            Ok(fx) => {
                let handled = t.elapsed();
                let answers = fx.iter().any(|e| matches!(e, Effect::Send(_)));
                self.clone().apply(fx).await;
                if answers {
                    self.engine
                        .metrics()
                        .replied(crate::wall::now_ms().saturating_sub(m_ts));
                }
                tracing::debug!(
                    "{event}: seen {seen_ms} ms after it was sent, engine {handled:?}, answered after {:?}",
                    t.elapsed()
                );
            }
            Err(e) => tracing::error!("engine task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const ROOM: &str = "!e4_-U62puWxh0xAHKLfXe4uO7XcTuwkfltgSmxR3iho";
    const ME: &str = "@airlock:example.org";

    fn message(content: Value) -> Option<Incoming> {
        message_from("@alice:example.org", content)
    }

    fn message_from(sender: &str, content: Value) -> Option<Incoming> {
        let ev: OriginalSyncRoomMessageEvent = serde_json::from_value(json!({
            "type": "m.room.message", "event_id": "$ev", "sender": sender,
            "origin_server_ts": 1_700_000_000_000u64, "content": content,
        }))
        .unwrap();
        let room = <&RoomId>::try_from(ROOM).unwrap();
        let me = <&UserId>::try_from(ME).unwrap();
        message_to_incoming(&ev, room, me, Some(50))
    }

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

    #[test]
    fn a_command_in_a_v12_room() {
        let m = message(json!({"msgtype": "m.text", "body": "!flow deploy main"})).unwrap();
        assert_eq!(m.kind, Kind::Message);
        assert_eq!(m.room, ROOM);
        assert_eq!(m.sender, "@alice:example.org");
        assert_eq!(
            (m.event_id.as_str(), m.body.as_str()),
            ("$ev", "!flow deploy main")
        );
        assert_eq!((m.ts_ms, m.power_level), (1_700_000_000_000, Some(50)));
        assert!(m.reply_to.is_none() && m.thread.is_none() && !m.addressed);
    }

    #[test]
    fn notices_and_own_messages_are_not_for_the_engine() {
        assert!(message(json!({"msgtype": "m.notice", "body": "!flow deploy"})).is_none());
        assert!(message_from(ME, json!({"msgtype": "m.text", "body": "!help"})).is_none());
    }

    #[test]
    fn a_reply_keeps_its_relation_and_loses_its_quote() {
        let m = message(json!({
            "msgtype": "m.text", "body": "> <@airlock:example.org> Confirmation needed\n\nyes",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$prompt"}},
        }))
        .unwrap();
        assert_eq!(m.reply_to.as_deref(), Some("$prompt"));
        assert_eq!(m.body, "yes");
    }

    #[test]
    fn an_edit_is_an_edit_with_its_new_text() {
        let m = message(json!({
            "msgtype": "m.text", "body": "* !flow deploy prod",
            "m.new_content": {"msgtype": "m.text", "body": "!flow deploy prod"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
        }))
        .unwrap();
        assert_eq!(m.kind, Kind::Edit);
        assert_eq!(m.relates_to.as_deref(), Some("$orig"));
        assert_eq!(m.body, "!flow deploy prod");
    }

    #[test]
    fn threads_with_and_without_fallback() {
        // A reply inside the thread: it answers the event it names.
        let m = message(json!({
            "msgtype": "m.text", "body": "yes",
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$root",
                "is_falling_back": false, "m.in_reply_to": {"event_id": "$prompt"}},
        }))
        .unwrap();
        assert_eq!(m.thread.as_deref(), Some("$root"));
        assert_eq!(m.reply_to.as_deref(), Some("$prompt"));
        // A plain thread message: its in_reply_to is only a fallback.
        let m = message(json!({
            "msgtype": "m.text", "body": "yes",
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$root",
                "is_falling_back": true, "m.in_reply_to": {"event_id": "$latest"}},
        }))
        .unwrap();
        assert_eq!(m.thread.as_deref(), Some("$root"));
        assert!(m.reply_to.is_none());
    }

    #[test]
    fn a_mention_addresses_the_bot_and_a_display_name_does_not() {
        let m = message(json!({
            "msgtype": "m.text", "body": "Airlock Bot: help",
            "m.mentions": {"user_ids": [ME]},
        }))
        .unwrap();
        assert!(m.addressed);
        let m = message(json!({
            "msgtype": "m.text", "body": "Airlock Bot: help",
            "m.mentions": {"user_ids": ["@someone:example.org"]},
        }))
        .unwrap();
        assert!(!m.addressed);
    }

    #[test]
    fn reactions() {
        let ev: OriginalSyncReactionEvent = serde_json::from_value(json!({
            "type": "m.reaction", "event_id": "$r", "sender": "@bob:example.org",
            "origin_server_ts": 1u64,
            "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$prompt", "key": "👍"}},
        }))
        .unwrap();
        let room = <&RoomId>::try_from(ROOM).unwrap();
        let me = <&UserId>::try_from(ME).unwrap();
        let m = reaction_to_incoming(&ev, room, me, None).unwrap();
        assert_eq!(m.kind, Kind::Reaction("👍".into()));
        assert_eq!(m.relates_to.as_deref(), Some("$prompt"));
        let bob = <&UserId>::try_from("@bob:example.org").unwrap();
        assert!(reaction_to_incoming(&ev, room, bob, None).is_none());
    }
}
