//! airlock: a Matrix ChatOps bot that runs StackStorm action aliases behind
//! a policy, a confirmation gate and an audit log.
//!
//! The crate is layered so the core never touches the network:
//!
//! * [`alias`]: StackStorm alias files and st2's matching semantics;
//! * [`render`]: ack/result templates and the messages sent to rooms;
//! * [`diag`]: file/line/field diagnostics for configuration files.

pub mod action;
pub mod alias;
pub mod audit;
pub mod clock;
pub mod config;
pub mod confirm;
pub mod console;
pub mod crash;
pub mod diag;
pub mod engine;
pub mod ids;
pub mod matrix;
pub mod policy;
pub mod render;
