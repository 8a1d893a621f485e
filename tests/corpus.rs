//! The 144 real alias files in ../shared/compat/alias_corpus, and st2's
//! answers for 1,000 commands over them (bench_commands.jsonl).
//!
//! The corpus is not copied into the repository; CI always has it beside
//! the checkout. Without it these tests say so on the terminal and pass.

use std::io::Write;
use std::path::PathBuf;

use airlock::alias::{AliasSet, MatchError};
use serde_json::Value;

fn compat_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/compat");
    if dir.join("alias_corpus").is_dir() {
        return Some(dir);
    }
    // Written past the test harness's capture, so it shows in every run.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {} not found; corpus tests did not run ***\n",
        dir.join("alias_corpus").display()
    );
    None
}

fn corpus_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("alias_corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every file as its own alias, as st2's matcher saw them for the bench
/// answers (pack "corpus" where the file names none).
fn corpus_set(dir: &std::path::Path) -> AliasSet {
    let aliases = corpus_files(dir)
        .iter()
        .map(|f| {
            airlock::catalog::load_alias_file(f, None, "corpus").unwrap_or_else(|e| panic!("{e:?}"))
        })
        .collect();
    AliasSet::new(aliases)
}

#[test]
fn every_corpus_file_loads_on_its_own() {
    let Some(dir) = compat_dir() else { return };
    let files = corpus_files(&dir);
    assert_eq!(files.len(), 144);
    for f in &files {
        if let Err(diags) = airlock::catalog::load_alias_file(f, None, "corpus") {
            panic!("{}: {:?}", f.display(), diags);
        }
    }
}

#[test]
fn duplicate_refs_are_warnings_naming_both_files() {
    let Some(dir) = compat_dir() else { return };
    let loaded = airlock::catalog::load_aliases(&[dir.join("alias_corpus")]);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let dups: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("also defined in"))
        .collect();
    // packs.pack_install is in three files, two other refs in two each.
    assert_eq!(dups.len(), 4, "{dups:#?}");
    let refs: std::collections::BTreeSet<_> = dups
        .iter()
        .map(|d| d.message.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    assert_eq!(refs.len(), 3, "{refs:?}");
    for d in &dups {
        // The later file is the diagnostic's; the earlier one is named.
        assert!(d.file.to_string_lossy().contains("alias_corpus"));
        assert_eq!(d.field, "name");
        assert!(d.line > 1, "points at the name line");
        assert!(
            d.message.contains("alias_corpus/") && d.message.ends_with("replaces it"),
            "{}",
            d.message
        );
    }
    assert_eq!(loaded.aliases.len(), 140);
}

#[test]
fn bench_commands_match_st2_answers() {
    let Some(dir) = compat_dir() else { return };
    let set = corpus_set(&dir);
    let text = std::fs::read_to_string(dir.join("bench_commands.jsonl")).unwrap();
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let command = v["command"].as_str().unwrap();
        let got = set.match_command(command);
        match (v["st2"].as_str().unwrap(), got) {
            ("matched", Ok(m)) => {
                assert_eq!(
                    m.alias.reference(),
                    v["alias"].as_str().unwrap(),
                    "{command}"
                );
                assert_eq!(
                    m.representation,
                    v["representation"].as_str().unwrap(),
                    "{command}"
                );
                let params = if m.match_multiple {
                    Value::Array(m.parameters.into_iter().map(Value::Object).collect())
                } else {
                    Value::Object(m.parameters[0].clone())
                };
                assert_eq!(params, v["parameters"], "{command}");
            }
            ("ambiguous" | "no_match", Err(e)) => {
                assert_eq!(e.to_string(), v["error"].as_str().unwrap(), "{command}");
                if v["st2"] == "no_match" {
                    assert!(matches!(e, MatchError::NoMatch { .. }), "{command}");
                }
            }
            (want, got) => panic!("{command}: st2 said {want}, airlock {got:?}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 1000);
}
