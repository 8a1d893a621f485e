//! What a transport sees of the engine: the events it hands in
//! ([`Incoming`]), the effects it gets back ([`Effect`], [`Outgoing`]),
//! the status reactions, and the [`Settings`] that shape the answers. A
//! transport author reads this file and `Engine`'s calls (ARCHITECTURE.md,
//! "The engine's driver protocol").

use std::time::Duration;

use crate::render::Message;

/// Status reaction: accepted, running.
pub const SEEN: &str = "👀";
/// Status reaction: waiting for approval.
pub const WAITING: &str = "⏳";
/// Status reaction: succeeded.
pub const SUCCEEDED: &str = "✅";
/// Status reaction: failed or refused.
pub const FAILED: &str = "❌";

/// How the bot answers, as configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Command prefix, `!` by default.
    pub prefix: String,
    /// Names the bot answers to as `name: command` (besides the prefix).
    pub names: Vec<String>,
    /// The bot's own user ID: its messages are never commands.
    pub bot_user: Option<String>,
    /// Commands older than this (by their timestamp) are not run.
    pub max_age: Duration,
    /// Whether 👍/👎 reactions on a prompt approve or deny.
    pub reaction_approvals: bool,
    /// Where break-glass runs are announced besides their own room, and
    /// where the audit log's head is posted as checkpoints.
    pub audit_room: Option<String>,
    /// Post a checkpoint once this many entries were written since the
    /// last…
    pub checkpoint_entries: u64,
    /// …or once this long has passed with any written.
    pub checkpoint_interval: Duration,
    /// When the unsealed audit log is sealed into a segment.
    pub seal: crate::audit::SealPolicy,
    /// How long a closed request stays in the store (`requests.keep`).
    pub keep_requests: Duration,
    /// The directory whose disk must keep this many bytes free before
    /// anything new is written (`disk_reserve_mb`).
    pub reserve: Option<(std::path::PathBuf, u64)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prefix: "!".into(),
            names: vec!["airlock".into()],
            bot_user: None,
            max_age: Duration::from_secs(120),
            reaction_approvals: false,
            audit_room: None,
            checkpoint_entries: 100,
            checkpoint_interval: Duration::from_secs(3600),
            seal: Default::default(),
            keep_requests: Duration::from_secs(30 * 86400),
            reserve: None,
        }
    }
}

/// What kind of room event came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A text message.
    Message,
    /// An `m.replace` edit: never runs or approves anything.
    Edit,
    /// A reaction (its key) on `relates_to`.
    Reaction(String),
    /// An encrypted event the transport could not decrypt.
    Undecryptable,
}

/// One event from a room, as any transport sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// What kind of event.
    pub kind: Kind,
    /// A Matrix user ID; display names never identify anyone.
    pub sender: String,
    /// The room ID.
    pub room: String,
    /// The event ID.
    pub event_id: String,
    /// Plain text, reply fallback already removed.
    pub body: String,
    /// The event this one replies to (`m.in_reply_to`).
    pub reply_to: Option<String>,
    /// The event an edit replaces or a reaction annotates.
    pub relates_to: Option<String>,
    /// Thread root, when the event is in a thread.
    pub thread: Option<String>,
    /// When the homeserver received it (ms since epoch).
    pub ts_ms: u64,
    /// The sender's power level in the room, when known.
    pub power_level: Option<i64>,
    /// The transport saw the bot mentioned (Matrix `m.mentions`).
    pub addressed: bool,
    /// The device it was sent from, as far as the transport can tell.
    pub device: Device,
}

/// What the transport knows of the device an event came from (Matrix:
/// from the event's encryption).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Device {
    /// Nothing: the event was not encrypted, or the transport has no
    /// devices (the console).
    #[default]
    Unknown,
    /// This device, which its owner has cross-signed.
    CrossSigned(String),
    /// This device, which its owner has not cross-signed, or which cannot
    /// be linked to them.
    NotCrossSigned(String),
}

impl Incoming {
    /// A plain message sent at `ts_ms`.
    pub fn message(sender: &str, room: &str, event_id: &str, body: &str, ts_ms: u64) -> Self {
        Incoming {
            kind: Kind::Message,
            sender: sender.into(),
            room: room.into(),
            event_id: event_id.into(),
            body: body.into(),
            reply_to: None,
            relates_to: None,
            thread: None,
            ts_ms,
            power_level: None,
            addressed: false,
            device: Device::Unknown,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The room to send it to.
    pub room: String,
    /// The event it answers.
    pub reply_to: Option<String>,
    /// The thread it belongs in.
    pub thread: Option<String>,
    /// What to say.
    pub message: Message,
    /// This is the confirmation prompt of a request: report its event ID
    /// back with [`Engine::bind_prompt`](super::Engine::bind_prompt).
    pub prompt_for: Option<String>,
}

/// What the transport must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send a message.
    Send(Outgoing),
    /// React to an event.
    React {
        /// The room of the event.
        room: String,
        /// The event to react to.
        event_id: String,
        /// The reaction.
        key: &'static str,
    },
    /// Prepare this request off the event loop with [`Engine::prepare`](super::Engine::prepare)
    /// (its action resolves what exactly will run, over the network).
    Prepare(String),
    /// Run this approved request off the event loop with [`Engine::execute`](super::Engine::execute).
    Execute(String),
    /// Re-attach to this request's run, which went on elsewhere while
    /// airlock was down, off the event loop with [`Engine::resume`](super::Engine::resume).
    Resume(String),
    /// Send `message` to `user` alone, in a direct room with them (the
    /// transport finds or makes it): what only they may read, such as a
    /// sign-in link.
    Direct {
        /// A Matrix user ID.
        user: String,
        /// What to say.
        message: Message,
    },
}
