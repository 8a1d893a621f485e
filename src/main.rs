//! The `airlock` command line.

// A function a reader cannot hold in mind at once is split (no function
// in the crate is over 100 lines; tests and benches may be).
#![warn(clippy::too_many_lines)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use airlock::alias::{self, AliasSet};
use airlock::audit::{AuditLog, Checkpoint, Query};
use airlock::config::{Config, LogFormat};
use airlock::diag::Diagnostic;
use airlock::engine::{self, Engine};
use airlock::policy::Subject;
use airlock::requests::Requests;
use airlock::{action, clock, ids};

mod cli;

use cli::lint::*;
#[cfg(target_env = "gnu")]
use cli::malloc;
use cli::store::*;

#[derive(Parser)]
#[command(name = "airlock", version, disable_help_subcommand = true)]
#[command(
    about = "A Matrix ChatOps bot for StackStorm action aliases, with policy, confirmation and audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Configuration file (default: ./airlock.yaml if present). Accepted
    /// before or after the subcommand.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct AliasDirs {
    /// Alias directory: alias files, or packs (<dir>/<pack>/aliases/*.yaml). Repeatable.
    #[arg(long = "aliases", value_name = "DIR", default_value = "aliases")]
    aliases: Vec<PathBuf>,
}

/// The global `--config`, handed to the commands that read it.
#[derive(Clone)]
struct ConfigArg {
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Match a command against the aliases, like `st2 action-alias match`.
    Match {
        #[command(flatten)]
        dirs: AliasDirs,
        /// The chat command, without the bot prefix.
        command: String,
    },
    /// List the commands the aliases offer, as chat `!help` shows them.
    Help {
        #[command(flatten)]
        dirs: AliasDirs,
        /// Case-insensitive regex on the display string.
        filter: Option<String>,
    },
    /// Load aliases and policies and report every problem found.
    Check {
        #[command(flatten)]
        dirs: AliasDirs,
        /// Policy directory or file. Repeatable.
        #[arg(long = "policies", value_name = "DIR")]
        policies: Vec<PathBuf>,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Run the bot on a Matrix homeserver.
    Run,
    /// Run the bot in this terminal: stdin is the room (no homeserver).
    Console {
        /// Who you are at first.
        #[arg(long, default_value = "@alice:example.org")]
        user: String,
        /// Where you are at first.
        #[arg(long, default_value = "!ops:example.org")]
        room: String,
    },
    /// List open requests (pending, approved, running).
    Pending,
    /// Rewrite the database into a fresh copy of what it holds now, giving
    /// back the disk sled's log keeps for old versions (stop the bot first).
    Compact,
    /// Run approved requests' actions on this machine, for a bot whose
    /// configuration routes them to Temporal (`temporal.queues`).
    #[cfg(feature = "temporal")]
    Worker {
        /// The task queue to take requests from (one per environment).
        #[arg(long)]
        task_queue: String,
    },
    /// Query the audit log, or verify its hash chain.
    Audit {
        #[command(subcommand)]
        command: Option<AuditCmd>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        request: Option<String>,
        /// Runs that put this pack in place.
        #[arg(long)]
        deployed: Option<String>,
        /// RFC 3339 time, or a span back from now such as 2h or 7d.
        #[arg(long)]
        since: Option<String>,
        /// An entry status (succeeded, failed, denied...) or event name.
        #[arg(long)]
        status: Option<String>,
        /// Only entries numbered below SEQ: the next page after the oldest
        /// entry a search printed.
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
        /// The newest N matching entries (default 100).
        #[arg(long, short = 'n', conflicts_with = "all")]
        limit: Option<usize>,
        /// Every matching entry.
        #[arg(long)]
        all: bool,
        /// One JSON array.
        #[arg(long, conflicts_with = "jsonl")]
        json: bool,
        /// One JSON object per line.
        #[arg(long)]
        jsonl: bool,
        /// Keep streaming new entries as JSON lines (from the running bot:
        /// needs `http.listen` and `http.audit_export`).
        #[arg(long, conflicts_with = "json")]
        follow: bool,
    },
}

impl Cmd {
    /// The processes that run until stopped (the bot, a Temporal worker),
    /// for whom glibc's per-thread caches are memory held for good.
    fn long_running(&self) -> bool {
        match self {
            Cmd::Run => true,
            #[cfg(feature = "temporal")]
            Cmd::Worker { .. } => true,
            _ => false,
        }
    }
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// The decision for a command, the rules behind it, and the confirmation it would need.
    Explain {
        #[arg(long)]
        user: String,
        #[arg(long)]
        room: String,
        /// The user's power level in the room.
        #[arg(long)]
        power: Option<i64>,
        /// Decide as of this moment (RFC 3339) instead of now: for change windows.
        #[arg(long)]
        at: Option<String>,
        /// The chat command, without the prefix.
        command: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain: any altered or removed entry is reported.
    Verify {
        /// Also check it against checkpoints: an export of the audit room
        /// (JSON, or JSON lines of events); only events the bot's user_id
        /// sent with an `org.airlock.checkpoint` field count. A history
        /// rewritten with recomputed hashes is caught here.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
        /// Also re-hash every sealed entry and check its link, besides
        /// the segments' manifests, file hashes and footers.
        #[arg(long)]
        full: bool,
    },
    /// Who deployed a pack, when, at which commit, approved by whom.
    WhoDeployed { pack: String },
    /// Print a sealed entry with its RFC 6962 inclusion proof against its
    /// segment's Merkle root (as the audit room's seal checkpoint holds
    /// it), as JSON: what an auditor checks with `check-proof`.
    Prove { seq: u64 },
    /// Check a proof printed by `prove` (a file, or - for standard input)
    /// without the rest of the log; `--root` names the root the audit room
    /// holds for its segment.
    CheckProof {
        file: PathBuf,
        #[arg(long)]
        root: Option<String>,
    },
}

/// Log filter unless AIRLOCK_LOG says otherwise. matrix-sdk reports
/// expected 404s (absent account data) and missing key backups loudly.
const DEFAULT_LOG: &str =
    "warn,airlock=info,matrix_sdk::http_client=off,matrix_sdk_crypto::backups=error";

fn main() -> ExitCode {
    // SAFETY: the first thing the process does; no thread exists yet.
    unsafe { action::packs::set_git_timeouts() };
    #[cfg(target_env = "gnu")]
    malloc::tune();
    let cli = Cli::parse();
    #[cfg(target_env = "gnu")]
    if cli.command.long_running() {
        malloc::without_thread_caches();
    }
    let config = ConfigArg { config: cli.config };
    // The bot's own commands log as its configuration says; a config with
    // errors is reported by the command itself.
    let json = matches!(cli.command, Cmd::Run | Cmd::Console { .. })
        && Config::load_or_default(config.config.as_deref())
            .is_ok_and(|c| c.log_format == LogFormat::Json);
    init_logging(json);
    let outcome = match cli.command {
        Cmd::Match { dirs, command } => Ok(cmd_match(&dirs.aliases, &command)),
        Cmd::Help { dirs, filter } => Ok(cmd_help(&dirs.aliases, filter.as_deref())),
        Cmd::Check { dirs, policies } => {
            // What the configuration routes to StackStorm runs there, on
            // runners airlock lacks: no warning for those.
            let st2 = Config::load_or_default(config.config.as_deref())
                .ok()
                .and_then(|c| c.st2);
            let routed = |r: &str| st2.as_ref().is_some_and(|s| s.routes(r));
            Ok(cmd_check(&dirs.aliases, &policies, &routed))
        }
        Cmd::Policy {
            command:
                PolicyCmd::Explain {
                    user,
                    room,
                    power,
                    at,
                    command,
                },
        } => cmd_explain(config, &user, &room, power, at.as_deref(), &command),
        Cmd::Run => cmd_run(config),
        Cmd::Console { user, room } => cmd_console(config, &user, &room),
        Cmd::Pending => cmd_pending(config),
        Cmd::Compact => cmd_compact(config),
        #[cfg(feature = "temporal")]
        Cmd::Worker { task_queue } => cmd_worker(config, &task_queue),
        Cmd::Audit {
            command,
            user,
            room,
            alias,
            action,
            request,
            deployed,
            since,
            status,
            before,
            limit,
            all,
            json,
            jsonl,
            follow,
        } => match command {
            Some(AuditCmd::Verify { against, full }) => {
                cmd_verify(config, against.as_deref(), full)
            }
            Some(AuditCmd::Prove { seq }) => cmd_prove(config, seq),
            Some(AuditCmd::CheckProof { file, root }) => cmd_check_proof(&file, root.as_deref()),
            Some(AuditCmd::WhoDeployed { pack }) => cmd_who_deployed(config, &pack),
            None => since_arg(since.as_deref()).and_then(|since| {
                let q = Query {
                    user,
                    room,
                    alias,
                    action,
                    request,
                    status,
                    since,
                    limit: if all {
                        None
                    } else {
                        Some(limit.unwrap_or(100))
                    },
                    event: None,
                    deployed,
                    before,
                    rooms: None,
                };
                if follow {
                    cmd_follow(config, &q, since)
                } else {
                    cmd_audit(config, &q, json, jsonl)
                }
            }),
        },
    };
    outcome.unwrap_or_else(|code| code)
}

/// `airlock audit --since`: a time or a span back from now.
fn since_arg(since: Option<&str>) -> Result<Option<u64>, ExitCode> {
    since
        .map(|s| {
            clock::parse_since(s, airlock::wall::now_ms()).ok_or_else(|| {
                fail("--since: expected RFC 3339 (2026-11-24T18:00:00Z) or a span such as 2h")
            })
        })
        .transpose()
}

/// What a command returns: its exit code, or (as Err) the code of a
/// failure it has already reported.
type Outcome = Result<ExitCode, ExitCode>;

/// Report a failure and give its exit code.
fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("airlock: {msg}");
    ExitCode::from(2)
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        fmt.init();
    }
}

fn config(arg: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load_or_default(arg.config.as_deref()).map_err(|d| {
        print_diagnostics(&d);
        ExitCode::from(2)
    })
}

/// `--user` and `--room` by the Matrix grammar (any room version).
fn check_ids(user: &str, room: &str) -> Result<(), ExitCode> {
    if !ids::is_user_id(user) {
        return Err(fail(format!(
            "--user: \"{user}\" is not {}",
            ids::Kind::User.describe()
        )));
    }
    if !ids::is_room(room) {
        return Err(fail(format!(
            "--room: \"{room}\" is not {} or {}",
            ids::Kind::Room.describe(),
            ids::Kind::RoomAlias.describe()
        )));
    }
    Ok(())
}

fn open_engine(cfg: &Config) -> Result<Arc<Engine>, ExitCode> {
    cfg.open(airlock::wall::now_ms())
        .map(|o| Arc::new(o.engine))
        .map_err(fail)
}

fn cmd_run(arg: ConfigArg) -> Outcome {
    let cfg = config(&arg)?;
    let engine = open_engine(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    rt.block_on(airlock::matrix::run(cfg.matrix_settings(), engine))
        .map_err(fail)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "temporal")]
fn cmd_worker(arg: ConfigArg, queue: &str) -> Outcome {
    let setup = config(&arg)?.worker_setup(queue).map_err(fail)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    rt.block_on(airlock::action::temporal::worker::run(setup))
        .map_err(fail)?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_console(arg: ConfigArg, user: &str, room: &str) -> Outcome {
    check_ids(user, room)?;
    let engine = open_engine(&config(&arg)?)?;
    airlock::console::Console::new(engine, user, room).run(std::io::stdin().lock());
    Ok(ExitCode::SUCCESS)
}
