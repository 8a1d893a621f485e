//! StackStorm's local runners (`local-shell-cmd`, `local-shell-script`):
//! how arguments are built, how a process runs, and how its end becomes
//! st2's result and status (`../shared/compat/runners.md` §4–§6, checked by
//! `tests/runner_vectors.rs`).
//!
//! Where st2 is unsafe, this is not (each deviation is listed in the
//! README): a script gets its arguments as an argv, never through
//! `sh -c`; every process runs in its own process group, and a timeout or
//! a cancel sends SIGTERM to the group, then SIGKILL after a grace period;
//! the group dies with the thread that started it, so a killed bot or
//! worker leaves no command running (a guard process, see `guard`);
//! output is capped per stream, and the cut is visible in the result; the
//! child's environment never carries airlock's own secrets.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::python;
use crate::action::OutputTail;

/// The exit code st2 reports for a timed-out command (SIGKILL's `-9`).
pub const TIMEOUT_EXIT_CODE: i64 = -9;

/// Variables the child never sees: airlock's own secrets.
pub const WITHHELD_ENV: [&str; 4] = [
    "AIRLOCK_PASSWORD",
    "AIRLOCK_ACCESS_TOKEN",
    "AIRLOCK_STORE_PASSPHRASE",
    "AIRLOCK_AUDIT_TOKEN",
];

/// st2's status for an exit code (`PROC_EXIT_CODE_TO_LIVEACTION_STATUS_MAP`).
pub fn status_for(exit_code: i64) -> &'static str {
    match exit_code {
        0 => "succeeded",
        TIMEOUT_EXIT_CODE => "timeout",
        -15 => "abandoned",
        _ => "failed",
    }
}

/// st2's `strip_shell_chars`: one trailing `\n`, then one trailing `\r`.
pub fn strip_shell_chars(s: &str) -> &str {
    let s = s.strip_suffix('\n').unwrap_or(s);
    s.strip_suffix('\r').unwrap_or(s)
}

/// An output stream as st2 reports it: its JSON value when the whole
/// (stripped) text is one JSON document, else the text.
pub fn json_or_text(s: &str) -> Value {
    serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// How a local command ended, before it becomes st2's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// The exit code, or minus the signal that killed it.
    pub exit_code: i64,
    /// Its standard output (UTF-8, as far as captured).
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// It was stopped because its time was up.
    pub timed_out: bool,
}

/// st2's result and status for a command that ended as `ended`; `timeout`
/// is the runner parameter as given (it appears in the timeout error), and
/// `sudo_password` whether one was given (a rejected one rewrites the
/// result).
pub fn result(ended: &Ended, timeout: &Value, sudo_password: bool) -> (&'static str, Value) {
    let mut exit_code = ended.exit_code;
    let stderr = strip_shell_chars(&ended.stderr);
    let mut error = None;
    if ended.timed_out {
        exit_code = TIMEOUT_EXIT_CODE;
        error = Some(format!(
            "Action failed to complete in {} seconds",
            python::str_of(timeout)
        ));
    } else if sudo_password && sudo_rejected(stderr) {
        let user = stderr
            .split("[sudo] password for ")
            .nth(1)
            .and_then(|r| r.split_once(':'))
            .map_or("unknown", |(u, _)| u);
        error = Some(format!(
            "Invalid sudo password provided or sudo is not configured for this user ({user})"
        ));
        exit_code = -1;
    }
    let ok = exit_code == 0;
    let mut result = Map::new();
    result.insert("failed".into(), json!(!ok));
    result.insert("succeeded".into(), json!(ok));
    result.insert("return_code".into(), json!(exit_code));
    result.insert(
        "stdout".into(),
        json_or_text(strip_shell_chars(&ended.stdout)),
    );
    result.insert("stderr".into(), json_or_text(stderr));
    if let Some(e) = error {
        result.insert("error".into(), json!(e));
    }
    (status_for(exit_code), Value::Object(result))
}

/// `sudo: <n> incorrect password attempts` in stderr.
fn sudo_rejected(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        l.strip_prefix("sudo: ")
            .and_then(|r| r.split_once(' '))
            .is_some_and(|(n, rest)| {
                !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && rest.starts_with("incorrect password attempt")
            })
    })
}

/// A parameter of a script action, as its metadata declares it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScriptParam {
    /// Its declared `type`, if any.
    pub ty: Option<String>,
    /// Its `position`, for a positional argument.
    pub position: Option<u64>,
}

/// The arguments st2 gives a `local-shell-script` entry point, as an argv
/// (st2 builds a shell string; airlock runs the script with these
/// directly): named parameters first, in parameter order, each
/// `<kwarg_op><name>=<value>` (`true` a bare flag; `false`, null and `""`
/// dropped), then the positional ones sorted by position, each serialised
/// by its declared type.
pub fn script_args(
    params: &Map<String, Value>,
    schema: &[(String, ScriptParam)],
    kwarg_op: &str,
) -> Vec<String> {
    let declared = |name: &str| schema.iter().find(|(n, _)| n == name).map(|(_, p)| p);
    let mut named = Vec::new();
    let mut positional: Vec<(u64, String)> = Vec::new();
    for (name, value) in params {
        match declared(name) {
            Some(ScriptParam {
                ty,
                position: Some(pos),
            }) => positional.push((*pos, positional_arg(ty.as_deref(), value))),
            _ => match value {
                Value::Null | Value::Bool(false) => {}
                Value::String(s) if s.is_empty() => {}
                Value::Bool(true) => named.push(format!("{kwarg_op}{name}")),
                v => named.push(format!("{kwarg_op}{name}={}", python::str_of(v))),
            },
        }
    }
    // Positional parameters the values do not mention still take their
    // place, empty.
    for (name, p) in schema {
        if let Some(pos) = p.position
            && !params.contains_key(name)
        {
            positional.push((pos, String::new()));
        }
    }
    positional.sort_by_key(|(pos, _)| *pos);
    named.extend(positional.into_iter().map(|(_, a)| a));
    named
}

/// st2's `serialize_positional_argument`.
fn positional_arg(ty: Option<&str>, v: &Value) -> String {
    match (ty, v) {
        (_, Value::Null) => String::new(),
        (Some("string" | "number"), v) => python::str_of(v),
        (Some("boolean"), Value::Bool(b)) => if *b { "1" } else { "0" }.into(),
        (Some("array"), Value::Array(items)) => items
            .iter()
            .map(python::str_of)
            .collect::<Vec<_>>()
            .join(","),
        (Some("object"), Value::Object(m)) if m.is_empty() => String::new(),
        (Some("object"), v @ Value::Object(_)) => v.to_string(),
        // integer, untyped, anything else: str(value) if truthy.
        (_, v) if python::truthy(v) => python::str_of(v),
        _ => String::new(),
    }
}

/// A process to run.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to airlock's own environment; later entries win.
    pub env: Vec<(String, String)>,
    /// Variables of airlock's environment the child never sees (besides
    /// [`WITHHELD_ENV`]).
    pub withheld: Vec<String>,
    /// Its working directory; None: airlock's.
    pub cwd: Option<PathBuf>,
    /// How long it may run.
    pub timeout: Duration,
    /// How long it has between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Bytes kept per output stream; the rest is dropped and counted.
    pub output_cap: usize,
}

/// How a process ended, with what it printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Ran {
    /// Exit code and output, as st2's result needs them.
    pub ended: Ended,
    /// The cancel flag stopped it.
    pub cancelled: bool,
    /// Bytes dropped past the cap, per stream (stdout, stderr).
    pub dropped: (usize, usize),
    /// st2 fails a run whose output is not UTF-8, with Python's message.
    pub invalid_utf8: Option<String>,
}

/// Run `spawn` in a process group of its own; on timeout or `cancel`,
/// SIGTERM the group, then SIGKILL it after the grace period. Returns when
/// the process has exited and its output is read.
/// What it prints is also fed to `output`, for `!status`.
pub fn run(spawn: &Spawn, cancel: &AtomicBool, output: &Arc<OutputTail>) -> std::io::Result<Ran> {
    let mut child = command(spawn).spawn()?;
    let pgid = child.id() as i32;
    let cap = spawn.output_cap;
    // The run ends when the process has exited and its output is read (a
    // child it left behind holding the pipes keeps it running, up to the
    // timeout, as st2's does). Each of these threads says when it is done;
    // this one only wakes to check the clock and the cancel flag.
    let (done, finished) = std::sync::mpsc::channel();
    let out = child
        .stdout
        .take()
        .map(|s| reader(s, cap, output.clone(), done.clone()));
    let err = child
        .stderr
        .take()
        .map(|s| reader(s, cap, output.clone(), done.clone()));
    let mut waiting = 1 + usize::from(out.is_some()) + usize::from(err.is_some());
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done.send(());
        status
    });
    let started = Instant::now();
    let mut signalled: Option<(Instant, bool)> = None;
    let mut timed_out = false;
    let mut cancelled = false;
    while waiting > 0 {
        match finished.recv_timeout(Duration::from_millis(20)) {
            Ok(()) => {
                waiting -= 1;
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        match signalled {
            None if cancel.load(Ordering::Relaxed) || now - started >= spawn.timeout => {
                cancelled = cancel.load(Ordering::Relaxed);
                timed_out = !cancelled;
                kill_group(pgid, libc::SIGTERM);
                signalled = Some((now, false));
            }
            Some((at, false)) if now - at >= spawn.grace => {
                kill_group(pgid, libc::SIGKILL);
                signalled = Some((at, true));
            }
            _ => {}
        }
    }
    let status = waiter
        .join()
        .map_err(|_| std::io::Error::other("the waiting thread panicked"))??;
    // The group may outlive its leader: nothing of it stays behind.
    if signalled.is_some() {
        kill_group(pgid, libc::SIGKILL);
    }
    let join = |h: Option<std::thread::JoinHandle<(Vec<u8>, usize)>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, out_dropped) = join(out);
    let (stderr, err_dropped) = join(err);
    let exit_code = match (status.code(), status.signal()) {
        (Some(c), _) => i64::from(c),
        (None, Some(sig)) => -i64::from(sig),
        (None, None) => -1,
    };
    let invalid_utf8 = decode_error(&stdout).or_else(|| decode_error(&stderr));
    Ok(Ran {
        ended: Ended {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            // st2 reports any -9 as a timeout (SIGKILL from anywhere).
            timed_out: timed_out || exit_code == TIMEOUT_EXIT_CODE,
        },
        cancelled,
        dropped: (out_dropped, err_dropped),
        invalid_utf8,
    })
}

/// The command `spawn` describes: in a group of its own, its stdin
/// closed, its output piped, the withheld variables removed, and the
/// guard between fork and exec.
fn command(spawn: &Spawn) -> Command {
    let mut cmd = Command::new(&spawn.program);
    cmd.args(&spawn.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so everything it starts can be stopped with it.
        .process_group(0);
    // SAFETY: `guard` makes only async-signal-safe calls (fork, sigaction,
    // prctl, close, waitpid, kill, _exit), as code between fork and exec
    // must.
    unsafe {
        cmd.pre_exec(guard);
    }
    for k in WITHHELD_ENV
        .iter()
        .copied()
        .chain(spawn.withheld.iter().map(String::as_str))
    {
        cmd.env_remove(k);
    }
    cmd.envs(spawn.env.iter().map(|(k, v)| (k, v)));
    if let Some(d) = &spawn.cwd {
        cmd.current_dir(d);
    }
    cmd
}

/// Runs in the child between fork and exec. It forks once more: the new
/// child goes on to exec the command, and this process stays behind as
/// the group's guard. The guard asks the kernel for SIGUSR1 when the thread
/// that started it dies (`PR_SET_PDEATHSIG`), and then kills the whole
/// group: a parent-death signal on the command alone would reach only the
/// shell, never what the shell started. Until then it waits for the
/// command and ends the way the command ended, so exit codes and signals
/// read as before. It shrugs off the group's SIGTERM (a timeout or
/// cancel), which is the command's to answer.
fn guard() -> std::io::Result<()> {
    extern "C" fn kill_group_now(_: libc::c_int) {
        // SAFETY: kill(2) is async-signal-safe; 0 is this process group.
        unsafe {
            libc::kill(0, libc::SIGKILL);
        }
    }
    extern "C" fn shrug(_: libc::c_int) {}
    // SAFETY: see the call site; nothing here allocates or takes a lock.
    unsafe {
        let starter = libc::getppid();
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            return Ok(()); // the command
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = kill_group_now as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        sa.sa_sigaction = shrug as *const () as usize;
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1);
        if libc::getppid() != starter {
            kill_group_now(0); // the starter died before prctl
        }
        // Its copies of the pipes would hold the readers open, and its copy
        // of std's exec-error pipe would hold `spawn` until the command ends.
        for fd in 1..1024 {
            libc::close(fd);
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}

/// SIGTERM or SIGKILL to process group `pgid`.
fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; it
    // touches no memory of ours.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Read a stream to its end, keeping the first `cap` bytes.
fn reader(
    mut stream: impl Read + Send + 'static,
    cap: usize,
    tail: Arc<OutputTail>,
    done: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<(Vec<u8>, usize)> {
    std::thread::spawn(move || {
        // Whatever happens below, the run learns this stream is done.
        let _done = Defer(done);
        let mut kept = Vec::new();
        let mut dropped = 0;
        let mut buf = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.push(&buf[..n]);
            let room = cap.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
            dropped += n - room;
        }
        (kept, dropped)
    })
}

/// Sends on drop.
struct Defer(std::sync::mpsc::Sender<()>);

impl Drop for Defer {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Python's message for the first line of `bytes` that is not UTF-8
/// (st2 decodes output line by line and fails the run on the first bad
/// byte).
fn decode_error(bytes: &[u8]) -> Option<String> {
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if let Err(e) = std::str::from_utf8(line) {
            let at = e.valid_up_to();
            let byte = line[at];
            let why = match e.error_len() {
                None => "unexpected end of data",
                Some(_) if matches!(byte, 0x80..=0xbf | 0xc0 | 0xc1 | 0xf5..=0xff) => {
                    "invalid start byte"
                }
                Some(_) => "invalid continuation byte",
            };
            return Some(format!(
                "'utf-8' codec can't decode byte 0x{byte:02x} in position {at}: {why}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/bin/sh -c script` with these limits.
    fn sh(script: &str, timeout: Duration, grace: Duration, output_cap: usize) -> Spawn {
        Spawn {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            withheld: Vec::new(),
            cwd: None,
            timeout,
            grace,
            output_cap,
        }
    }

    #[test]
    fn shell_chars() {
        assert_eq!(strip_shell_chars("a\r\n"), "a");
        assert_eq!(strip_shell_chars("a\n\n"), "a\n");
        assert_eq!(strip_shell_chars("a\n\r"), "a\n");
        assert_eq!(strip_shell_chars("a\r"), "a");
    }

    #[test]
    fn a_process_group_is_stopped_whole_on_timeout() {
        // The child sleeps on after its shell is gone unless the group dies.
        let spawn = sh(
            "sleep 30 & echo started; wait",
            Duration::from_millis(300),
            Duration::from_millis(200),
            1024,
        );
        let ran = run(&spawn, &AtomicBool::new(false), &Arc::default()).unwrap();
        assert!(ran.ended.timed_out);
        assert_eq!(ran.ended.stdout, "started\n");
    }

    #[test]
    fn a_child_left_holding_the_output_is_stopped_at_the_timeout() {
        // The shell exits at once; its child keeps stdout open.
        let spawn = sh(
            "sleep 30 & echo started",
            Duration::from_millis(300),
            Duration::from_millis(200),
            1024,
        );
        let ran = run(&spawn, &AtomicBool::new(false), &Arc::default()).unwrap();
        assert!(ran.ended.timed_out);
        assert_eq!(ran.ended.stdout, "started\n");
    }

    #[test]
    fn output_is_capped_and_the_cut_counted() {
        let spawn = sh(
            "head -c 5000 /dev/zero | tr '\\0' x",
            Duration::from_secs(10),
            Duration::from_secs(1),
            1000,
        );
        let ran = run(&spawn, &AtomicBool::new(false), &Arc::default()).unwrap();
        assert_eq!(ran.ended.stdout.len(), 1000);
        assert_eq!(ran.dropped, (4000, 0));
    }
}
