//! The pure core: alias matching, policy decisions, rendering, and the
//! small vocabularies they share. Nothing here touches sled, git2, tokio
//! or the clock.

pub mod alias;
pub mod clock;
pub mod diag;
pub mod ids;
pub mod policy;
pub(crate) mod pyre;
pub mod render;
pub mod request;
