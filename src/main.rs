//! The `airlock` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use airlock::alias::{self, AliasSet};

#[derive(Parser)]
#[command(name = "airlock", version, disable_help_subcommand = true)]
#[command(about = "A Matrix ChatOps bot for StackStorm action aliases")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct AliasDirs {
    /// Alias directory: alias files, or packs (<dir>/<pack>/aliases/*.yaml). Repeatable.
    #[arg(long = "aliases", value_name = "DIR", default_value = "aliases")]
    aliases: Vec<PathBuf>,
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
    /// Load aliases (and policies) and report every problem found.
    Check {
        #[command(flatten)]
        dirs: AliasDirs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Match { dirs, command } => cmd_match(&dirs.aliases, &command),
        Cmd::Help { dirs, filter } => cmd_help(&dirs.aliases, filter.as_deref()),
        Cmd::Check { dirs } => cmd_check(&dirs.aliases),
    }
}

/// Load aliases for a command that only needs what loaded: problems go to
/// stderr, they do not stop it.
fn load_aliases(dirs: &[PathBuf]) -> AliasSet {
    let loaded = alias::load_dirs(dirs);
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
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
            Some(d) if !d.is_empty() => println!("{} - {}  [{}]", e.display, d.trim(), e.reference),
            _ => println!("{}  [{}]", e.display, e.reference),
        }
    }
    ExitCode::SUCCESS
}

fn cmd_check(dirs: &[PathBuf]) -> ExitCode {
    let loaded = alias::load_dirs(dirs);
    for d in &loaded.diagnostics {
        println!("{d}");
    }
    let errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = loaded.diagnostics.len() - errors;
    println!(
        "{} aliases loaded, {errors} error(s), {warnings} warning(s)",
        loaded.aliases.len()
    );
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
