//! The `airlock` command line, by what each command reads.

pub(crate) mod lint;
#[cfg(target_env = "gnu")]
pub(crate) mod malloc;
pub(crate) mod store;
