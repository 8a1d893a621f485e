//! What a local action can see of the machine: with `runners.sandbox:
//! bwrap` (the default) every command runs under bubblewrap with the
//! bot's own files out of sight. It runs as the same user, so without it
//! an action could read airlock's credentials: the Matrix session and
//! access token, the crypto store, `secret.key` and the store (all in
//! `data_dir`), the pack configs, and `AIRLOCK_PASSWORD` from
//! `/proc/<the bot>/environ`.
//!
//! Protects against: an action (or what it runs) reading those files, or
//! any process of the bot's through `/proc` (a PID namespace with its own
//! `/proc`: the bot is not in it), or writing its own pack's files (bound
//! read-only). Not against: anything outside those paths the user can
//! read or write (the rest of the file system is the user's own view),
//! the network, or an action that runs with `sudo` reading everything as
//! root. For those, run airlock as a user of its own.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How local actions run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sandbox {
    /// Under bubblewrap (`bwrap`, Debian's `bubblewrap`), airlock's files
    /// hidden.
    #[default]
    Bwrap,
    /// With the bot's own view of the machine.
    None,
}

/// The program bubblewrap is run as.
const BWRAP: &str = "bwrap";

/// `program args` run so that none of `hidden` can be seen (each an empty
/// directory), and `pack_dir`, if any, read-only.
pub fn wrap(
    program: PathBuf,
    args: Vec<String>,
    hidden: &[PathBuf],
    pack_dir: Option<&Path>,
) -> (PathBuf, Vec<String>) {
    let mut a: Vec<String> = ["--dev-bind", "/", "/"].map(String::from).to_vec();
    for h in hidden.iter().filter(|h| h.is_dir()) {
        a.extend(["--tmpfs".into(), h.to_string_lossy().into_owned()]);
    }
    if let Some(d) = pack_dir {
        let d = d.to_string_lossy().into_owned();
        a.extend(["--ro-bind".into(), d.clone(), d]);
    }
    a.extend(["--unshare-pid", "--proc", "/proc", "--"].map(String::from));
    a.push(program.to_string_lossy().into_owned());
    a.extend(args);
    (PathBuf::from(BWRAP), a)
}

/// Whether bubblewrap runs here: checked once at start, so a bot that
/// cannot sandbox says so then, not at its first command.
pub fn check() -> Result<(), String> {
    let out = std::process::Command::new(BWRAP)
        .args([
            "--dev-bind",
            "/",
            "/",
            "--unshare-pid",
            "--proc",
            "/proc",
            "--",
            "true",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "runners.sandbox: bwrap cannot run here ({}); allow user namespaces, or set runners.sandbox: none to run actions with the bot's own view of the machine",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "runners.sandbox: bwrap is not installed ({e}): install bubblewrap, or set runners.sandbox: none to run actions with the bot's own view of the machine"
        )),
    }
}
