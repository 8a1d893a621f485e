//! The packs directory on disk: checked-out versions, their validation,
//! and the `packs/<name>` link switched with one `rename`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Repository};

use super::records::PackRecord;
use super::{PackError, PackManager};

/// Write `tree` to `dest`: files, executables, and symlinks that stay
/// inside the pack. Submodules are skipped.
pub(super) fn write_tree(
    repo: &Repository,
    tree: &git2::Tree,
    dest: &Path,
) -> Result<(), PackError> {
    std::fs::create_dir_all(dest)
        .map_err(|e| PackError::Disk(format!("cannot create {}: {e}", dest.display())))?;
    for entry in tree.iter() {
        let name = entry.name().ok_or(PackError::Disk(
            "a file name in the repository is not UTF-8".into(),
        ))?;
        if name == ".." || name == "." || name.contains('/') || name == ".git" {
            return Err(PackError::Disk(format!(
                "refusing repository entry {name:?}"
            )));
        }
        let path = dest.join(name);
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let sub = entry
                    .to_object(repo)
                    .and_then(|o| o.peel_to_tree())
                    .map_err(|e| PackError::Disk(e.to_string()))?;
                write_tree(repo, &sub, &path)?;
            }
            Some(ObjectType::Blob) => {
                let blob = entry
                    .to_object(repo)
                    .and_then(|o| o.peel_to_blob())
                    .map_err(|e| PackError::Disk(e.to_string()))?;
                if entry.filemode() == 0o120000 {
                    let target = String::from_utf8_lossy(blob.content()).into_owned();
                    if target.starts_with('/')
                        || Path::new(&target)
                            .components()
                            .any(|c| c.as_os_str() == "..")
                    {
                        return Err(PackError::Disk(format!(
                            "symlink {name} -> {target} points outside the pack"
                        )));
                    }
                    std::os::unix::fs::symlink(&target, &path)
                        .map_err(|e| PackError::Disk(e.to_string()))?;
                } else {
                    std::fs::write(&path, blob.content())
                        .map_err(|e| PackError::Disk(format!("{}: {e}", path.display())))?;
                    if entry.filemode() == 0o100755 {
                        use std::os::unix::fs::PermissionsExt;
                        let _ =
                            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
                    }
                }
            }
            _ => {} // submodule commits: not fetched
        }
    }
    Ok(())
}

/// A staged pack is installable: pack.yaml names it, its aliases load.
/// Returns the pack's version.
pub(super) fn validate_pack(dir: &Path, name: &str) -> Result<Option<String>, PackError> {
    let meta_path = dir.join("pack.yaml");
    let text = std::fs::read_to_string(&meta_path)
        .map_err(|_| PackError::NotAPack("the repository has no pack.yaml".into()))?;
    let meta: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| PackError::NotAPack(format!("pack.yaml is not valid YAML: {e}")))?;
    let declared = meta
        .get("ref")
        .or_else(|| meta.get("name"))
        .and_then(|v| v.as_str())
        .ok_or(PackError::NotAPack("pack.yaml has no name".into()))?;
    if declared != name {
        return Err(PackError::NotAPack(format!(
            "pack.yaml names the pack \"{declared}\", not \"{name}\""
        )));
    }
    if dir.join("aliases").is_dir() {
        let loaded = crate::catalog::load_pack_aliases(dir, name);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                let rel = d.file.strip_prefix(dir).unwrap_or(&d.file);
                format!(
                    "{}:{}:{}: {}{}",
                    rel.display(),
                    d.line,
                    d.column,
                    if d.field.is_empty() {
                        String::new()
                    } else {
                        format!("{}: ", d.field)
                    },
                    d.message
                )
            })
            .collect();
        if !errors.is_empty() {
            return Err(PackError::NotAPack(format!(
                "invalid aliases: {}",
                errors.join("; ")
            )));
        }
    }
    Ok(meta.get("version").and_then(|v| match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }))
}

/// Point `packs/<name>` at `target` with one rename over the old link.
pub(super) fn swap_symlink(dir: &Path, name: &str, target: &Path) -> Result<(), PackError> {
    let rel = target
        .strip_prefix(dir)
        .map_err(|_| PackError::Disk("version outside packs dir".into()))?;
    let tmp = dir.join(format!(".airlock/link-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(rel, &tmp)
        .map_err(|e| PackError::Disk(format!("cannot create link: {e}")))?;
    // The temp link lives one level down; its target is relative to packs/.
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        PackError::Disk(format!("cannot switch {name}: {e}"))
    })
}

impl PackManager {
    pub(super) fn clean_staging(&self) {
        let staging = self.dir.join(".airlock/staging");
        if let Ok(rd) = std::fs::read_dir(&staging) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The commit `packs/<name>` points at now, if it is a link.
    pub(super) fn live_commit(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.dir.join(name)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    pub(super) fn version_dir(&self, name: &str, commit: &str) -> PathBuf {
        self.dir.join(".airlock/versions").join(name).join(commit)
    }

    pub(super) fn move_link(&self, name: &str, target: Option<&str>) -> Result<(), PackError> {
        match target {
            Some(commit) => swap_symlink(&self.dir, name, &self.version_dir(name, commit)),
            None => {
                let link = self.dir.join(name);
                if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
                    std::fs::remove_file(&link).map_err(|e| {
                        PackError::Disk(format!("cannot remove {}: {e}", link.display()))
                    })?;
                }
                Ok(())
            }
        }
    }

    pub(super) fn prune_versions(&self, rec: &PackRecord) {
        let keep: HashSet<&str> = std::iter::once(rec.current.commit.as_str())
            .chain(rec.previous.iter().map(|v| v.commit.as_str()))
            .collect();
        let dir = self.dir.join(".airlock/versions").join(&rec.name);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(name.as_str()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}
