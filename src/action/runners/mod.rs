//! StackStorm's runners, natively: what a pack's own actions run on.
//!
//! This is the first part of that work: the local runners' argument
//! building, process execution and result shaping ([`local`]), checked
//! against st2's own answers (`tests/runner_vectors.rs`). Loading
//! `actions/*.yaml` and offering the runners as actions comes next.

pub mod local;
pub mod python;
