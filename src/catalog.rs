//! Aliases and policies from disk: which files (a directory's YAML, a
//! pack's `aliases/`), read, and handed to `core`'s parsers as text. The
//! core parses; this walks and reads.

use std::path::{Path, PathBuf};

use crate::alias::{
    self,
    load::{AliasFile, Loaded},
};
use crate::diag::Diagnostic;
use crate::policy::{self, LoadedPolicy};

/// Load one alias file. `pack_dir` is the pack the file sits in, when it
/// sits in one: the alias's `pack` must then agree with it (st2's
/// registrar refuses otherwise). `default_pack` fills a missing `pack`.
pub fn load_alias_file(
    path: &Path,
    pack_dir: Option<&str>,
    default_pack: &str,
) -> Result<alias::Alias, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::file(path, format!("cannot read: {e}"))])?;
    alias::load::parse_alias(path, &text, pack_dir, default_pack)
}

fn is_yaml(p: &Path) -> bool {
    p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn base_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The alias files of the pack in `dir` (`dir/aliases/*.yaml`), as `pack`.
fn pack_files(dir: &Path, pack: &str) -> impl Iterator<Item = AliasFile> {
    let pack = pack.to_string();
    sorted_entries(&dir.join("aliases"))
        .into_iter()
        .filter(|p| is_yaml(p))
        .map(move |path| AliasFile {
            path,
            pack_dir: Some(pack.clone()),
            default_pack: pack.clone(),
        })
}

/// Every alias file under `dirs`.
fn alias_files(dirs: &[PathBuf]) -> (Vec<AliasFile>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            diags.push(Diagnostic::file(dir, "not a directory"));
            continue;
        }
        // A pack directory itself.
        if dir.join("aliases").is_dir() {
            files.extend(pack_files(dir, &base_name(dir)));
            continue;
        }
        // An `aliases/` folder inside a pack: its pack is the parent.
        let default_pack = match dir.parent() {
            Some(parent) if base_name(dir) == "aliases" && parent.join("pack.yaml").is_file() => {
                base_name(parent)
            }
            _ => base_name(dir),
        };
        for entry in sorted_entries(dir) {
            if is_yaml(&entry) {
                files.push(AliasFile {
                    path: entry,
                    pack_dir: None,
                    default_pack: default_pack.clone(),
                });
            } else if entry.join("aliases").is_dir() && !base_name(&entry).starts_with('.') {
                files.extend(pack_files(&entry, &base_name(&entry)));
            }
        }
    }
    (files, diags)
}

/// Load the aliases of the pack in `dir`, as pack `name` whatever the
/// directory is called (a staging checkout, say).
pub fn load_pack_aliases(dir: &Path, name: &str) -> Loaded {
    read_alias_files(pack_files(dir, name).collect(), Vec::new())
}

/// Load every alias under `dirs`. A ref defined twice keeps the later file
/// (as st2's registration does) and both files are named in a warning.
pub fn load_aliases(dirs: &[PathBuf]) -> Loaded {
    let (files, diagnostics) = alias_files(dirs);
    read_alias_files(files, diagnostics)
}

/// Read each of `files` (a file that cannot be read is a problem named
/// with it) and parse them together.
fn read_alias_files(files: Vec<AliasFile>, mut diagnostics: Vec<Diagnostic>) -> Loaded {
    let mut texts = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f.path) {
            Ok(t) => texts.push((f, t)),
            Err(e) => diagnostics.push(Diagnostic::file(&f.path, format!("cannot read: {e}"))),
        }
    }
    alias::load::parse_files(texts, diagnostics)
}

/// Load every `*.yaml`/`*.yml` in `dirs` (or the files given), reporting
/// every problem. Nothing from a file with errors is kept: a half-read
/// policy could allow what the whole one forbids.
pub fn load_policy(paths: &[PathBuf]) -> LoadedPolicy {
    let mut files = Vec::new();
    let mut out = LoadedPolicy::default();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            v.retain(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")));
            v.sort();
            files.extend(v);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            out.diagnostics
                .push(Diagnostic::file(p, "no such file or directory"));
        }
    }
    let mut texts = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(t) => texts.push((f, t)),
            Err(e) => out
                .diagnostics
                .push(Diagnostic::file(&f, format!("cannot read: {e}"))),
        }
    }
    let parsed = policy::parse_texts(&texts);
    out.diagnostics.extend(parsed.diagnostics);
    out.policy = parsed.policy;
    if out.has_errors() {
        // Never run with part of a policy.
        out.policy.rules.clear();
    }
    out
}
