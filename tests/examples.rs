//! Every code example in the documentation is run or checked here, so
//! none goes stale: the README's console session is played through
//! `scripts/demo`; YAML is loaded as what it shows (a configuration, a
//! policy or its rules, an alias file); JSON parses; the Python receiver
//! check accepts a signature made as airlock makes it; each `airlock`
//! command line parses as the CLI takes it, and each script it names
//! exists. `text` blocks are output, not code.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::repo_root;

/// One fenced block: where, its info string, its lines.
struct Block {
    at: String,
    lang: String,
    body: String,
}

fn docs() -> Vec<PathBuf> {
    let root = repo_root();
    let mut v = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    more.sort();
    v.extend(more);
    v
}

fn blocks(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim_start().starts_with("```") {
            end += 1;
        }
        out.push(Block {
            at: format!("{}:{}", path.display(), i + 1),
            lang: info.trim().to_string(),
            body: dedent(&lines[start..end]),
        });
        i = end + 1;
    }
    out
}

/// `lines` without the indentation they all share (a block inside a list
/// item is indented with it).
fn dedent(lines: &[&str]) -> String {
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| format!("{}\n", l.get(common..).unwrap_or("")))
        .collect()
}

/// The groups a rule fragment may name.
const GROUPS: &str = "groups:\n  ops: [\"@alice:example.org\"]\n  security: [\"@carol:example.org\"]\n  oncall: [\"@dave:example.org\"]\n";

/// Load a YAML example as what it shows; the problems found.
fn check_yaml(b: &Block) -> Result<(), String> {
    let body = &b.body;
    let has_key = |k: &str| body.lines().any(|l| l.starts_with(&format!("{k}:")));
    let policy = |text: String| {
        let loaded = airlock::policy::parse_texts(&[(PathBuf::from(&b.at), text)]);
        if loaded.has_errors() {
            Err(loaded
                .diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        } else {
            Ok(())
        }
    };
    let indent = |text: &str, by: &str| -> String {
        text.lines()
            .map(|l| format!("{by}{l}\n"))
            .collect::<String>()
    };
    if has_key("action_ref") || body.contains("\naction_ref:") {
        airlock::alias::load::parse_alias(Path::new(&b.at), body, None, "docs")
            .map(drop)
            .map_err(|d| format!("{d:?}"))
    } else if has_key("rules") || has_key("groups") {
        policy(body.clone())
    } else if body.trim_start().starts_with("- id:") {
        policy(format!("{GROUPS}rules:\n{}", indent(body, "  ")))
    } else if has_key("confirm") || has_key("lock") || has_key("plan") {
        policy(format!(
            "{GROUPS}rules:\n  - id: doc\n    effect: allow\n    groups: [ops]\n    aliases: [st2-flow.flow_deploy]\n{}",
            indent(body, "    ")
        ))
    } else {
        // A piece of airlock.yaml: every key and value as the loader takes them.
        serde_yaml::from_str::<airlock::config::Config>(body)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The receiver check in Python accepts airlock's signature of a body
/// and refuses another.
fn check_python(b: &Block) -> Result<(), String> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"k").unwrap();
    mac.update(b"{\"event\":\"failed\"}");
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sig = format!("sha256={hex}");
    let program = format!(
        "{}\nprint(genuine(b'k', b'{{\"event\":\"failed\"}}', '{sig}'), genuine(b'k', b'other', '{sig}'))\n",
        b.body
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .output()
        .map_err(|e| e.to_string())?;
    let said = String::from_utf8_lossy(&out.stdout);
    if said.trim() == "True False" {
        Ok(())
    } else {
        Err(format!("{said}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The `airlock` command on a shell line (after `sudo -u …`, before a
/// pipe or a redirection), as arguments.
fn airlock_args(line: &str) -> Option<Vec<String>> {
    let line = line.split('#').next()?.split(['|', '>']).next()?;
    let words = shell_words(line);
    // Past `VAR=value` assignments and `sudo -u <user>`.
    let mut at = words.iter().take_while(|w| w.contains('=')).count();
    if words.get(at).map(String::as_str) == Some("sudo") {
        at += 1;
        while words.get(at).is_some_and(|w| w.starts_with('-')) {
            at += 2;
        }
    }
    (words.get(at)? == "airlock").then(|| words[at + 1..].to_vec())
}

/// Words as a shell splits them (single and double quotes only).
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => word.push(c),
        }
    }
    if started || !word.is_empty() {
        out.push(word);
    }
    out
}

/// Each `airlock` command parses as the CLI takes it (a usage error is
/// clap's exit code 2; running it against an empty directory may fail
/// otherwise, which is not the example's fault); each script named
/// exists and is executable.
fn check_sh(b: &Block, dir: &Path) -> Result<(), String> {
    let root = repo_root();
    let mut problems = Vec::new();
    for line in b.body.lines() {
        for word in shell_words(line.split('#').next().unwrap_or("")) {
            if let Some(script) = word.strip_prefix("./").or(Some(&word))
                && script.starts_with("scripts/")
            {
                let path = root.join(script);
                let executable = std::fs::metadata(&path)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false);
                if !executable && !script.ends_with(".py") {
                    problems.push(format!("{script} is not an executable script"));
                }
                if script.ends_with(".py") && !path.exists() {
                    problems.push(format!("{script} does not exist"));
                }
            }
        }
        let Some(mut args) = airlock_args(line) else {
            continue;
        };
        // `run` would connect to a homeserver: its usage is what is checked.
        if args.first().map(String::as_str) == Some("run")
            || args.get(2).map(String::as_str) == Some("run")
        {
            args.push("--help".into());
        }
        let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(&args)
            .current_dir(dir)
            .env_remove("AIRLOCK_HOMESERVER")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains("Usage:") {
            problems.push(format!(
                "airlock {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn every_code_example_in_the_documentation_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("airlock.yaml"), "data_dir: data\n").unwrap();
    let mut failed = Vec::new();
    let mut checked = 0;
    for doc in docs() {
        for b in blocks(&doc) {
            let result = match b.lang.as_str() {
                "yaml" => check_yaml(&b),
                "json" => serde_json::from_str::<serde_json::Value>(&b.body)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                "python" => check_python(&b),
                "sh" => check_sh(&b, dir.path()),
                "text" => continue,
                other => Err(format!(
                    "a block of `{other}`: say what it is (yaml, json, python, sh, or text for output)"
                )),
            };
            checked += 1;
            if let Err(e) = result {
                failed.push(format!("{}:\n{e}", b.at));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    assert!(
        checked > 25,
        "only {checked} examples: is the reader right?"
    );
}

/// The README's console session, played through `scripts/demo`: what it
/// shows the bot saying is what the bot says (ids and elided parts
/// aside).
#[test]
fn the_readme_session_runs_as_shown() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let session = blocks(&repo_root().join("README.md"))
        .into_iter()
        .find(|b| b.lang == "text" && b.body.contains("> !flow deploy main"))
        .expect("the README shows a console session");
    drop(readme);
    let mut input = String::new();
    let mut said = Vec::new();
    for line in session.body.lines() {
        if let Some((_, typed)) = line.split_once("> ")
            && !line.starts_with(' ')
        {
            input.push_str(typed);
            input.push('\n');
            continue;
        }
        said.push(line.trim().to_string());
    }
    let demo = tempfile::tempdir().unwrap();
    let mut child = Command::new(repo_root().join("scripts/demo"))
        .env("AIRLOCK_DEMO_DIR", demo.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: String = shown
        .split_whitespace()
        .filter(|w| !is_request_id(w))
        .collect::<Vec<_>>()
        .join(" ");
    let mut missing = Vec::new();
    for line in &said {
        // What the README elides (…), and the request id, which differs
        // each run: each piece between them must be there.
        for piece in line.split('…') {
            let piece: String = piece
                .split_whitespace()
                .filter(|w| !is_request_id(w))
                .collect::<Vec<_>>()
                .join(" ");
            let piece = piece.trim_matches(|c: char| c == '/' || c == '(' || c == ')' || c == '.');
            if piece.len() > 3 && !shown.contains(&squeeze(piece)) {
                missing.push(piece.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the README shows what the demo does not say:\n{}\n--- the demo said:\n{shown}",
        missing.join("\n")
    );
}

/// What may be a request id (six lower-case letters or digits, with or
/// without a digit) or the README's short commit: dropped from both sides
/// alike, so a six-letter word costs the comparison nothing.
fn is_request_id(w: &str) -> bool {
    let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    w.len() == 6
        && w.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Text with its whitespace runs made one space.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
