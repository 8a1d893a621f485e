//! The `airlock` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use airlock::alias::{self, AliasSet};
use airlock::audit::{AuditLog, Checkpoint, Query};
use airlock::config::{Config, LogFormat};
use airlock::diag::Diagnostic;
use airlock::engine::{self, Engine};
use airlock::policy::{self, Decision, Subject};
use airlock::requests::Requests;
use airlock::{action, clock, ids};

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
            None => since
                .as_deref()
                .map(|s| {
                    clock::parse_since(s, clock::now_ms()).ok_or_else(|| {
                        fail("--since: expected RFC 3339 (2026-11-24T18:00:00Z) or a span such as 2h")
                    })
                })
                .transpose()
                .and_then(|since| {
                    let q = Query {
                        user,
                        room,
                        alias,
                        action,
                        request,
                        status,
                        since,
                        limit: if all { None } else { Some(limit.unwrap_or(100)) },
                        event: None,
                        deployed,
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

/// Load aliases for a command that only needs what loaded: problems go to
/// stderr, they do not stop it.
fn load_aliases(dirs: &[PathBuf]) -> AliasSet {
    let loaded = alias::load_dirs(dirs);
    print_diagnostics(&loaded.diagnostics);
    AliasSet::new(loaded.aliases)
}

fn cmd_match(dirs: &[PathBuf], command: &str) -> ExitCode {
    let set = load_aliases(dirs);
    match set.match_command(&alias::normalize_command(command)) {
        Ok(m) => {
            let parameters = if m.match_multiple {
                serde_json::Value::Array(
                    m.parameters
                        .into_iter()
                        .map(serde_json::Value::Object)
                        .collect(),
                )
            } else {
                serde_json::Value::Object(m.parameters.into_iter().next().unwrap_or_default())
            };
            let out = serde_json::json!({
                "alias": m.alias.reference(),
                "representation": m.representation,
                "parameters": parameters,
            });
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn cmd_help(dirs: &[PathBuf], filter: Option<&str>) -> ExitCode {
    let set = load_aliases(dirs);
    let entries = set.help(filter);
    if entries.is_empty() {
        println!("No commands found.");
    }
    for e in entries {
        match &e.description {
            Some(d) if !d.trim().is_empty() => {
                println!("{} - {}  [{}]", e.display, d.trim(), e.reference)
            }
            _ => println!("{}  [{}]", e.display, e.reference),
        }
    }
    ExitCode::SUCCESS
}

fn cmd_check(dirs: &[PathBuf], policies: &[PathBuf], routed: &dyn Fn(&str) -> bool) -> ExitCode {
    let loaded = alias::load_dirs(dirs);
    let mut diags = loaded.diagnostics;
    // The packs' actions, checked like aliases.
    let mut metas = action::metadata::core_actions();
    for (dir, name) in action::metadata::pack_dirs(dirs) {
        let (found, d) = action::metadata::load_pack(&dir, &name, routed);
        metas.extend(found);
        diags.extend(d);
    }
    let policy = if policies.is_empty() {
        None
    } else {
        let p = policy::load(policies);
        diags.extend(p.diagnostics);
        Some(p.policy)
    };
    // Rules naming aliases or actions that do not exist can never match.
    if let Some(p) = &policy {
        let set = AliasSet::new(loaded.aliases.clone());
        let mut specs = action::standard_specs();
        specs.extend(metas.iter().map(|m| m.spec.clone()));
        // A value a cmd template writes unquoted must be constrained by
        // every rule that lets someone run the action.
        for m in &metas {
            for name in action::metadata::unquoted_cmd_params(m) {
                // Every way a rule reaches it counts: by action, alias or pack.
                let unconstrained = p.rules.iter().any(|r| {
                    r.effect == policy::Effect::Allow
                        && set
                            .aliases()
                            .iter()
                            .filter(|a| a.action_ref == m.spec.reference)
                            .any(|a| {
                                r.targets(&policy::Target::Alias {
                                    reference: &a.reference(),
                                    pack: &a.pack,
                                    action_ref: &a.action_ref,
                                })
                            })
                        && !r.params.contains_key(&name)
                });
                if unconstrained {
                    let text = std::fs::read_to_string(&m.file).unwrap_or_default();
                    diags.push(airlock::diag::YamlIndex::parse(&text).diag(
                        airlock::diag::Severity::Warning,
                        &m.file,
                        "parameters.cmd.default",
                        format!(
                            "{{{{ {name} | safe }}}} writes {name} into the shell unquoted, and a rule allowing {} does not constrain {name} by values or regex",
                            m.spec.reference
                        ),
                    ));
                }
            }
        }
        for r in &p.rules {
            for g in &r.aliases {
                if !set.aliases().iter().any(|a| g.matches(&a.reference())) {
                    diags.push(warn_rule(
                        r,
                        format!("aliases: no loaded alias matches \"{}\"", g.text),
                    ));
                }
            }
            for g in &r.actions {
                let routed_match = set
                    .aliases()
                    .iter()
                    .any(|a| routed(&a.action_ref) && g.matches(&a.action_ref));
                if !routed_match && !specs.iter().any(|s| g.matches(&s.reference)) {
                    diags.push(warn_rule(
                        r,
                        format!("actions: airlock has no action matching \"{}\"", g.text),
                    ));
                }
            }
        }
        let refs: Vec<String> = set.aliases().iter().map(|a| a.reference()).collect();
        let targets: Vec<policy::Target> = set
            .aliases()
            .iter()
            .zip(&refs)
            .map(|(a, reference)| policy::Target::Alias {
                reference,
                pack: &a.pack,
                action_ref: &a.action_ref,
            })
            .collect();
        for (r, why) in p.unconstrained_paths(&targets) {
            diags.push(warn_rule(r, why));
        }
    }
    for d in &diags {
        println!("{d}");
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    println!(
        "{} aliases{} loaded, {errors} error(s), {} warning(s)",
        loaded.aliases.len(),
        policy
            .map(|p| format!(" and {} policy rules", p.rules.len()))
            .unwrap_or_default(),
        diags.len() - errors
    );
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn warn_rule(r: &policy::Rule, message: String) -> Diagnostic {
    Diagnostic {
        severity: airlock::diag::Severity::Warning,
        file: r.file.clone(),
        line: r.line,
        column: 3,
        field: format!("rule {}", r.id),
        message,
    }
}

fn cmd_explain(
    arg: ConfigArg,
    user: &str,
    room: &str,
    power: Option<i64>,
    at: Option<&str>,
    command: &str,
) -> Outcome {
    check_ids(user, room)?;
    let now = clock::now_ms();
    let at = match at {
        None => now,
        Some(s) => clock::parse_since(s, now).ok_or_else(|| {
            eprintln!("--at {s}: expected a time such as 2026-12-04T16:30:00+01:00");
            ExitCode::from(2)
        })?,
    };
    let cfg = config(&arg)?;
    let loaded = policy::load(&cfg.policies);
    if loaded.has_errors() {
        print_diagnostics(&loaded.diagnostics);
        return Err(ExitCode::from(2));
    }
    let set = load_aliases(&cfg.aliases);
    let who = Subject {
        user,
        room,
        power_level: power,
        at,
    };
    let command = command.strip_prefix(cfg.prefix.as_str()).unwrap_or(command);
    let eval = match engine::evaluate(
        &set,
        &loaded.policy,
        &action::standard_specs(),
        &who,
        command,
    ) {
        Ok(e) => e,
        Err(e) => {
            println!("{e}");
            println!("decision: nothing to decide (no alias matched)");
            return Ok(ExitCode::from(1));
        }
    };
    println!(
        "command matches alias {} ({}) → action {}",
        eval.alias.reference(),
        eval.representation,
        eval.alias.action_ref
    );
    let mut allowed_all = true;
    for (i, ex) in eval.executions.iter().enumerate() {
        if eval.executions.len() > 1 {
            println!("execution {}:", i + 1);
        }
        let (params, explanation) = match ex {
            Ok(x) => x,
            Err(e) => {
                println!("parameters rejected: {e}");
                allowed_all = false;
                continue;
            }
        };
        print!("parameters:\n{}", engine::params_text(params));
        println!(
            "rules matching {user} in {room}: {}",
            if explanation.matched.is_empty() {
                "none".to_string()
            } else {
                explanation.matched.join(", ")
            }
        );
        let reference = eval.alias.reference();
        let target = policy::Target::Alias {
            reference: &reference,
            pack: &eval.alias.pack,
            action_ref: &eval.alias.action_ref,
        };
        for (rule, window, state) in loaded.policy.windows(&who, &target) {
            println!("window of rule {rule}: {window}; {state}");
        }
        match &explanation.decision {
            Decision::Deny { rule, reason } => {
                allowed_all = false;
                println!(
                    "decision: DENY ({reason}){}",
                    rule.as_ref()
                        .map(|r| format!(" [rule {r}]"))
                        .unwrap_or_default()
                );
            }
            Decision::Allow {
                rule,
                confirm,
                break_glass,
            } => {
                println!("decision: ALLOW by rule {rule}");
                let twofactor = confirm.is_none() && eval.alias.twofactor();
                if twofactor {
                    println!("the alias sets extra.security.twofactor: a second person confirms");
                }
                if *break_glass {
                    println!(
                        "break-glass: {user} may run it at once with --break-glass \"reason\" (announced, flagged until someone else reviews it)"
                    );
                }
                let confirm = confirm
                    .clone()
                    .or_else(|| twofactor.then(policy::ConfirmPolicy::second_person));
                match confirm {
                    None => println!("confirmation: none, runs at once"),
                    Some(c) => println!(
                        "confirmation: {}{}{}; expires after {}",
                        c.describe(),
                        if c.self_approve {
                            ", the requester may approve"
                        } else {
                            ", not the requester"
                        },
                        if c.verified_devices {
                            ", from cross-signed devices only"
                        } else {
                            ""
                        },
                        clock::human(c.expires)
                    ),
                }
                match cfg
                    .st2
                    .as_ref()
                    .filter(|s| s.routes(&eval.alias.action_ref))
                {
                    Some(st2) => println!(
                        "runs on StackStorm at {} (st2 checks its parameters when the request is made)",
                        st2.url
                    ),
                    None if !eval.action_available => println!(
                        "note: action {} is not available in airlock; it would be refused",
                        eval.alias.action_ref
                    ),
                    None => {}
                }
            }
        }
    }
    Ok(if allowed_all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
    cfg.open(clock::now_ms())
        .map(|o| Arc::new(o.engine))
        .map_err(fail)
}

fn cmd_run(arg: ConfigArg) -> Outcome {
    let cfg = config(&arg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    rt.block_on(airlock::matrix::run(cfg)).map_err(fail)?;
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

/// glibc's allocator, set for a process that runs for months: what the bot
/// frees should go back to the system, not stay with the thread or the
/// arena that freed it. Measured with `cargo bench --bench matrix`.
#[cfg(target_env = "gnu")]
mod malloc {
    use std::ffi::OsString;
    use std::os::unix::process::CommandExt;

    /// Set in the re-executed bot to what `GLIBC_TUNABLES` was before, so
    /// that what the bot starts (runner processes) gets the environment
    /// it was given, and so that it re-executes only once.
    const WAS: &str = "AIRLOCK_GLIBC_TUNABLES_WAS";
    const TCACHE: &str = "glibc.malloc.tcache_count";

    /// glibc gives every thread that allocates an arena of its own, up to
    /// eight per core, each keeping what it freed: two hold the bot's load.
    /// And glibc raises its mmap threshold to the size of each large block
    /// freed, up to 32 MiB: once sled has freed one of its write buffers,
    /// every buffer and page image below that size comes from the arenas
    /// instead, and the holes they leave between long-lived objects stay
    /// resident. A fixed threshold (the default's starting value) keeps
    /// large blocks mapped on their own and unmapped when freed.
    pub fn tune() {
        // SAFETY: no thread exists yet; mallopt only sets tunables.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }

    /// Each thread also keeps a cache of the small blocks it freed, up to
    /// about 200 KB, which no trim returns; the bot has some 24 threads
    /// (tokio's workers and blocking pool, sled's). glibc reads the switch
    /// only from the environment, as the process starts: so the bot runs
    /// itself again with it, once. On Synapse this took 3.5 MB off the
    /// bot's memory after 10,000 commands (README, figures). A Temporal
    /// worker, as long-lived, does the same (not measured on its own). An
    /// operator's own `glibc.malloc.tcache_count` is kept.
    pub fn without_thread_caches() {
        if let Some(was) = std::env::var_os(WAS) {
            // SAFETY: no thread exists yet.
            unsafe {
                std::env::remove_var(WAS);
                if was.is_empty() {
                    std::env::remove_var("GLIBC_TUNABLES");
                } else {
                    std::env::set_var("GLIBC_TUNABLES", was);
                }
            }
            return;
        }
        let was = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        if was.to_string_lossy().contains(TCACHE) {
            return;
        }
        let mut tunables = was.clone();
        if !tunables.is_empty() {
            tunables.push(":");
        }
        tunables.push(format!("{TCACHE}=0"));
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| OsString::from("airlock"));
        // Returns only if the exec failed (no /proc, say): the bot then
        // runs as it is, with the caches.
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(WAS, was)
            .exec();
    }
}

/// Where the database is, if there is one (one a compaction cut short
/// moved aside counts: opening it puts it back).
fn store_path(arg: &ConfigArg) -> Result<PathBuf, ExitCode> {
    let path = config(arg)?.store_path();
    if !airlock::config::store_exists(&path) {
        return Err(fail(format!(
            "no database at {} (nothing has run yet?)",
            path.display()
        )));
    }
    Ok(path)
}

/// The database alone, for the read-only commands.
fn open_db(arg: &ConfigArg) -> Result<sled::Db, ExitCode> {
    let path = store_path(arg)?;
    airlock::config::open_store(&path).map_err(|e| {
        fail(format!(
            "cannot open {}: {e}\n(the database is locked while the bot runs; stop it, or ask in chat with !audit / !pending)",
            path.display()
        ))
    })
}

fn cmd_compact(arg: ConfigArg) -> Outcome {
    let path = store_path(&arg)?;
    let done = airlock::config::compact_store(&path).map_err(fail)?;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{}: {:.1} MB → {:.1} MB on disk ({} keys, checked against the original)",
        path.display(),
        mb(done.before),
        mb(done.after),
        done.keys
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_pending(arg: ConfigArg) -> Outcome {
    let open = Requests::open(&open_db(&arg)?)
        .and_then(|r| r.open_requests())
        .map_err(fail)?;
    if open.is_empty() {
        println!("No open requests.");
    }
    let now = clock::now_ms();
    for r in open {
        println!("{}", engine::pending_line(&r, now));
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_log(arg: &ConfigArg) -> Result<AuditLog, ExitCode> {
    let archive = config(arg)?.archive_dir();
    AuditLog::open_at(&open_db(arg)?, Some(&archive)).map_err(fail)
}

fn cmd_audit(arg: ConfigArg, q: &Query, json: bool, jsonl: bool) -> Outcome {
    let entries = audit_log(&arg)?.query(q).map_err(fail)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
    }
    for e in entries.iter().filter(|_| !json) {
        if jsonl {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{}", e.summary_line());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock audit --follow`: stream the running bot's audit log (the store
/// is the bot's while it runs), matching entries as JSON lines.
fn cmd_follow(arg: ConfigArg, q: &Query, since: Option<u64>) -> Outcome {
    use std::io::{BufRead, Write};
    let cfg = config(&arg)?;
    let Some(listen) = cfg.http.listen.as_deref().filter(|_| cfg.http.audit_export) else {
        return Err(fail(
            "--follow reads from the running bot: set http.listen and http.audit_export: true in its configuration",
        ));
    };
    let token = std::env::var(airlock::http::AUDIT_TOKEN_ENV).map_err(|_| {
        fail(format!(
            "--follow needs the bot's {} in the environment",
            airlock::http::AUDIT_TOKEN_ENV
        ))
    })?;
    let mut url = url::Url::parse(&format!("http://{listen}/audit.jsonl"))
        .map_err(|e| fail(format!("http.listen {listen}: {e}")))?;
    {
        // The bot filters: only what was asked for leaves it.
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("follow", "true");
        if let Some(ms) = since {
            pairs.append_pair("since", &clock::format_ms(ms));
        }
        for (k, v) in [
            ("user", &q.user),
            ("room", &q.room),
            ("alias", &q.alias),
            ("action", &q.action),
            ("request", &q.request),
            ("status", &q.status),
            ("event", &q.event),
        ] {
            if let Some(v) = v {
                pairs.append_pair(k, v);
            }
        }
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .map_err(fail)?;
    let response = client
        .get(url.clone())
        .bearer_auth(token)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail(format!("{url}: {e}")))?;
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(response).lines() {
        let line = line.map_err(|e| fail(format!("{url}: {e}")))?;
        let Ok(entry) = serde_json::from_str::<airlock::audit::Entry>(&line) else {
            continue;
        };
        if q.accepts(&entry) && writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break; // stdout closed
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock audit prove <seq>`.
fn cmd_prove(arg: ConfigArg, seq: u64) -> Outcome {
    match audit_log(&arg)?.prove(seq).map_err(fail)? {
        Some(p) => {
            println!("{}", serde_json::to_string_pretty(&p).map_err(fail)?);
            Ok(ExitCode::SUCCESS)
        }
        None => Err(fail(format!(
            "entry {seq} is not sealed (only entries in segments have proofs; they are sealed after audit.seal_entries entries or audit.seal_after)"
        ))),
    }
}

/// `airlock audit check-proof <file>`.
fn cmd_check_proof(file: &Path, root: Option<&str>) -> Outcome {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(fail)?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| fail(format!("{}: {e}", file.display())))?
    };
    let proof: airlock::audit::Proof =
        serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    if let Some(r) = root.filter(|r| !r.eq_ignore_ascii_case(&proof.root)) {
        println!("PROBLEM: the proof is against root {}, not {r}", proof.root);
        return Ok(ExitCode::from(1));
    }
    match proof.check() {
        Ok(()) => {
            println!(
                "entry {} of segment {} is in the tree with root {}",
                proof.index, proof.segment, proof.root
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("PROBLEM: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn cmd_verify(arg: ConfigArg, against: Option<&Path>, full: bool) -> Outcome {
    let log = audit_log(&arg)?;
    let mut v = log.verify_full(full).map_err(fail)?;
    let mut seals = Vec::new();
    let checkpoints = match against {
        None => Vec::new(),
        Some(f) => {
            let bot = config(&arg)?.user_id.ok_or_else(|| {
                fail(
                    "the configuration names no user_id: the bot's Matrix ID tells its checkpoints from what anyone else sent"
                        .to_string(),
                )
            })?;
            let text =
                std::fs::read_to_string(f).map_err(|e| fail(format!("{}: {e}", f.display())))?;
            let found = Checkpoint::from_export(&text, &bot)
                .map_err(|e| fail(format!("{}: {e}", f.display())))?;
            seals = airlock::audit::Seal::from_export(&text, &bot)
                .map_err(|e| fail(format!("{}: {e}", f.display())))?;
            if found.is_empty() {
                return Err(fail(format!(
                    "{}: no checkpoints from {bot} in it (events whose content holds {})",
                    f.display(),
                    Checkpoint::FIELD
                )));
            }
            found
        }
    };
    v.problems
        .extend(log.verify_against(&checkpoints).map_err(fail)?);
    v.problems.extend(log.verify_seals(&seals).map_err(fail)?);
    for p in &v.pruned {
        println!("pruned: {p}");
    }
    if v.ok() {
        println!(
            "audit log intact: {} entries, head {}{}",
            v.entries,
            v.head_hash,
            if checkpoints.is_empty() {
                String::new()
            } else {
                format!("; matches all {} checkpoint(s)", checkpoints.len())
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &v.problems {
        println!("PROBLEM: {p}");
    }
    println!(
        "audit log NOT intact: {} problem(s) in {} entries",
        v.problems.len(),
        v.entries
    );
    Ok(ExitCode::from(1))
}

fn cmd_who_deployed(arg: ConfigArg, pack: &str) -> Outcome {
    let db = open_db(&arg)?;
    let log = AuditLog::open_at(&db, Some(&config(&arg)?.archive_dir())).map_err(fail)?;
    let requests = Requests::open(&db).map_err(fail)?;
    println!("{}", engine::who_deployed(&log, &requests, pack, None));
    Ok(ExitCode::SUCCESS)
}
