//! What an audit entry records (`event`) and how it ended (`status`):
//! names stored in the log and used in queries, fixed for good.

use serde::{Deserialize, Serialize};

/// Declares a snake_case enum whose serde names and `name()` agree.
macro_rules! names {
    ($(#[$m:meta])* $ty:ident { $($(#[$vm:meta])* $v:ident = $n:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $ty {
            $($(#[$vm])* #[serde(rename = $n)] $v,)*
        }

        impl $ty {
            /// The name stored in the log and used in queries.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$v => $n,)*
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }
    };
}

names!(
    /// What an audit entry records.
    Event {
        /// A command, or an answer to a prompt, came in.
        Received = "received",
        /// A command older than `max_command_age` was not acted on.
        IgnoredStale = "ignored_stale",
        /// An edit, which never runs or approves anything.
        IgnoredEdit = "ignored_edit",
        /// A message the bot could not decrypt.
        Undecryptable = "undecryptable",
        /// No alias matched the command.
        NoMatch = "no_match",
        /// An alias matched.
        Matched = "matched",
        /// The policy allowed it; a request was made.
        Allowed = "allowed",
        /// The policy refused it.
        Denied = "denied",
        /// It could not be run (bad parameters, unknown action…).
        Error = "error",
        /// A confirmation prompt was sent.
        ConfirmationRequested = "confirmation_requested",
        /// An approval was counted.
        Approval = "approval",
        /// An answer to a prompt was refused (not an approver…).
        ApprovalRefused = "approval_refused",
        /// An approver said no.
        Rejected = "rejected",
        /// The requester withdrew it.
        Cancelled = "cancelled",
        /// Not approved in time.
        Expired = "expired",
        /// Its action started.
        Started = "started",
        /// Its action ended.
        Finished = "finished",
        /// airlock stopped while it was open.
        Interrupted = "interrupted",
        /// `!help` was answered.
        Help = "help",
        /// `!pending` was answered.
        Pending = "pending",
        /// `!audit` was answered.
        Audit = "audit",
        /// It runs without its confirmation, on a reason.
        BreakGlass = "break_glass",
        /// Someone else reviewed a break-glass run.
        Reviewed = "reviewed",
        /// StackStorm posted a message to a room (`chatops.post_message`).
        Announced = "announced",
        /// A rule's plan ran before the prompt (`plan:`).
        Planned = "planned",
        /// A run took a lock, or someone held one by hand (`!lock`).
        Locked = "locked",
        /// An approved request waits for a lock.
        Queued = "queued",
        /// A lock was released: its run ended, or `!unlock`.
        Unlocked = "unlocked",
        /// Sealed segments older than `audit.retention` were deleted
        /// (their manifests are kept).
        Pruned = "pruned",
        /// A web sign-in link was sent to its user (`!web`).
        WebLink = "web_link",
        /// A user ended their web sessions (`!web logout`).
        WebLogout = "web_logout",
    }
);

names!(
    /// How the thing an entry records stands.
    Status {
        /// A built-in answered.
        Ok = "ok",
        /// It failed before running.
        Error = "error",
        /// Refused by the policy or an approver.
        Denied = "denied",
        /// Being prepared.
        Preparing = "preparing",
        /// Waiting for approvals.
        Pending = "pending",
        /// Approved.
        Approved = "approved",
        /// Running.
        Running = "running",
        /// Ran and succeeded.
        Succeeded = "succeeded",
        /// Ran and failed, or could not be prepared.
        Failed = "failed",
        /// Withdrawn.
        Cancelled = "cancelled",
        /// Not approved in time.
        Expired = "expired",
        /// airlock stopped while it was open.
        Interrupted = "interrupted",
    }
);
