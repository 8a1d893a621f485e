//! airlock: a Matrix ChatOps bot that runs StackStorm action aliases behind
//! a policy, a confirmation gate and an audit log.
//!
//! The tree follows the pipeline a chat message takes, in dependency
//! order (each layer uses only the ones above it):
//!
//! 1. `core`, pure logic with no sled, git2, tokio, file or clock:
//!    [`alias`] (StackStorm alias files, and matching a command to one),
//!    [`policy`] (who may run what, where, with whose confirmation),
//!    [`render`] (ack/result templates and the messages sent), [`ids`]
//!    (Matrix identifiers), [`diag`] (file:line:field diagnostics),
//!    [`clock`] (timestamps, durations), [`request`] (a request's state
//!    machine, from asked to done), `pyre` (Python regex syntax); and
//!    [`catalog`], which reads alias and policy files for core's parsers;
//! 2. `store`, the durable records over [`kv`] (sled, or memory):
//!    [`requests`] (requests by id, the open ones indexed, their prompts),
//!    [`locks`], the pack records and [`audit`] (the hash-chained log);
//!    [`metrics`] counts what the audit entries record;
//! 3. [`action`]: what an approved request runs (`core.*`, `packs.*`, st2's
//!    runners, StackStorm, Temporal);
//! 4. [`engine`]: messages in, effects out: match → policy → confirm →
//!    run → render, every step recorded in the audit log. It takes time as
//!    an argument (or its injected clock) and its stores, actions and
//!    notice sink from its builder;
//! 5. `transport`: [`console`] (stdin), [`matrix`] (matrix-sdk), [`http`]
//!    (`/healthz`, `/metrics`, the audit export) and [`notify`] (webhooks,
//!    PagerDuty), which own the clock, the threads and the sockets;
//! 6. [`config`] (`airlock.yaml`, and `Config::open`, the composition
//!    root), [`lint`] (`airlock check` across files) and the `airlock`
//!    binary.
//!
//! Beside the layers, used from any but `core` and `engine`: [`wall`] (the
//! one reading of the wall clock) and [`crash`] (named crash points, which
//! `engine` marks too).

// A function a reader cannot hold in mind at once is split (no function
// in the crate is over 100 lines; tests and benches may be).
#![warn(clippy::too_many_lines)]
#![warn(missing_docs)]

mod core;
mod store;
mod transport;

pub mod action;
pub mod catalog;
pub mod config;
pub mod crash;
pub mod engine;
pub mod lint;
pub mod metrics;
pub mod wall;

pub use crate::core::{alias, clock, diag, ids, policy, render, request};
pub use store::{audit, free_bytes, kv, locks, merkle, requests, segment};
pub use transport::{console, http, matrix, notify, web};
