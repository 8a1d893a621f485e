//! Rooms: answering invites by policy, resolving the policy's room
//! aliases, reloading on SIGHUP.

use std::collections::HashMap;
use std::sync::Arc;

use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::membership::leave_room;
use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedUserId, RoomAliasId};

use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::RoomId;

use super::Bot;
use crate::audit::{Checkpoint, Seal};

impl Bot {
    pub(super) async fn answer_invite(self: Arc<Self>, room: Room, inviter: OwnedUserId) {
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

    pub(super) async fn resolve_room_aliases(&self) {
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

    /// The audit checkpoints this bot posted in the audit room, read back
    /// from the homeserver (its copy, which this machine cannot rewrite),
    /// newest pages first, up to 100 pages of history.
    pub(super) async fn read_checkpoints(&self, room: &str) -> (Vec<Checkpoint>, Vec<Seal>) {
        let Some(room) = RoomId::parse(room)
            .ok()
            .and_then(|id| self.client.get_room(&id))
        else {
            tracing::warn!("audit room {room} is not joined: no checkpoints to read");
            return (Vec::new(), Vec::new());
        };
        let mut found = Vec::new();
        let mut seals = Vec::new();
        let mut from: Option<String> = None;
        for _ in 0..100 {
            let page = match room
                .messages(MessagesOptions::backward().from(from.as_deref()))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("reading the audit room: {e}");
                    break;
                }
            };
            for ev in &page.chunk {
                // By structure only: the field in the content of an event
                // this bot sent. What a body says (an echo of what someone
                // typed) is never a checkpoint.
                if let Ok(v) = ev.raw().deserialize_as::<serde_json::Value>() {
                    found.extend(Checkpoint::from_event(&v, self.me.as_str()));
                    seals.extend(Seal::from_event(&v, self.me.as_str()));
                }
            }
            match page.end {
                Some(end) if !page.chunk.is_empty() => from = Some(end),
                _ => break,
            }
        }
        (found, seals)
    }

    pub(super) async fn reload(self: &Arc<Self>) {
        let engine = self.engine.clone();
        let r = tokio::task::spawn_blocking(move || engine.reload(crate::wall::now_ms())).await;
        match r {
            Ok(Ok(fx)) => {
                tracing::info!("aliases and policy reloaded");
                self.clone().apply(fx).await;
            }
            Ok(Err(diags)) => {
                for d in diags {
                    tracing::error!("policy not reloaded: {d}");
                }
            }
            Err(e) => tracing::error!("reload failed: {e}"),
        }
        self.resolve_room_aliases().await;
    }
}
