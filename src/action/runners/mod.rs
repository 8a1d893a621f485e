//! StackStorm's runners, natively: what a pack's own actions run on.
//!
//! This is the first part of that work, checked against st2's own answers
//! (`tests/runner_vectors.rs`): the local runners' argument building,
//! process execution and result shaping ([`local`]); the http runner's
//! host lists ([`http`]); secret masking ([`secrets`]). The http request
//! itself, loading `actions/*.yaml` and offering the runners as actions
//! come next.

pub mod http;
pub mod local;
pub mod params;
pub mod python;
pub mod secrets;
