//! Rooms: answering invites by policy, resolving the policy's room
//! aliases, reloading on SIGHUP.

use std::collections::HashMap;
use std::sync::Arc;

use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::membership::leave_room;
use matrix_sdk::ruma::{OwnedRoomAliasId, OwnedUserId, RoomAliasId};

use super::Bot;

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

    pub(super) async fn reload(self: &Arc<Self>) {
        let engine = self.engine.clone();
        let r = tokio::task::spawn_blocking(move || engine.reload(crate::clock::now_ms())).await;
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
