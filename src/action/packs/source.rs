//! What to install, from what a request asks: pack names, repository
//! URLs and git refs, validated before anything reaches git or a path.
//! Pure: nothing here touches the network or the disk.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::PackError;
use crate::alias::Params;

const EXCHANGE: &str = "https://github.com/StackStorm-Exchange/stackstorm-";

/// Git settings from the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {
    /// Private key for ssh:// and git@host: URLs (ssh-agent is tried first).
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// `url.<base>.insteadOf`: fetch `to` whenever a URL starts with `from`
    /// (mirrors, or a local copy in tests). The request still shows the URL
    /// it was given; the fetch URL is shown beside it.
    #[serde(default)]
    pub instead_of: Vec<InsteadOf>,
}

/// One `url.<to>.insteadOf = <from>` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsteadOf {
    /// The prefix to replace.
    pub from: String,
    /// What to put in its place.
    pub to: String,
}

/// One pack to install, as resolved at request time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// The pack's name.
    pub pack: String,
    /// The URL as requested (what policies constrain).
    pub url: String,
    /// Where it is actually fetched from, after `instead_of`.
    pub fetch_url: String,
    /// Branch, tag or commit asked for; None: the remote's default branch.
    pub reference: Option<String>,
    /// The commit the ref resolved to: what gets installed.
    pub commit: String,
    /// The pack lives in `packs/<pack>` of the repository (st2 1.x `subtree`).
    pub subtree: bool,
}

/// st2's pack names: lowercase letters, digits, `_` and `-`, at most 64; never a path.
pub fn valid_pack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// git's check-ref-format rules for a branch or tag, or a full commit id.
pub fn valid_ref(r: &str) -> bool {
    if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    !r.is_empty()
        && r.len() <= 200
        && !r.starts_with('-')
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.ends_with('.')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && r != "@"
        && !r.split('/').any(|c| c.starts_with('.'))
        && r.bytes()
            .all(|b| b > 0x20 && b != 0x7f && !b"~^:?*[\\".contains(&b))
}

/// Accepted repository URLs: https/http, ssh, git, file, scp-like, or an
/// absolute local path. Never an option, never another transport.
pub fn valid_url(u: &str) -> bool {
    if u.is_empty() || u.starts_with('-') || u.chars().any(|c| c.is_control() || c == ' ') {
        return false;
    }
    let schemes = ["https://", "http://", "ssh://", "git://", "file://"];
    if schemes.iter().any(|s| u.starts_with(s)) {
        // No host that could pass for an option (`ssh://-oProxyCommand=...`).
        return u
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('-'));
    }
    if u.starts_with('/') {
        return true;
    }
    // scp-like: user@host:path
    u.split_once(':').is_some_and(|(host, path)| {
        host.contains('@') && !host.contains('/') && !host.starts_with('-') && !path.is_empty()
    })
}

/// The pack name a URL implies: its last path segment without `.git` and
/// without the Exchange's `stackstorm-` prefix.
fn name_from_url(url: &str) -> String {
    let last = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let last = last.strip_suffix(".git").unwrap_or(last);
    last.strip_prefix("stackstorm-").unwrap_or(last).to_string()
}

fn looks_like_url(s: &str) -> bool {
    s.contains("://") || s.starts_with('/') || (s.contains('@') && s.contains(':'))
}

/// The directory of a repository on this machine (`file://` or a path).
pub(super) fn local_repository(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// One pack a request names, before its ref is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The pack's name.
    pub pack: String,
    /// The repository, as requested.
    pub url: String,
    /// Branch, tag or commit; None: the default branch.
    pub reference: Option<String>,
}

/// The packs `params` ask for, in both of st2's parameter sets (1.x
/// `packs` + `repo_url` + `branch`; 3.x `packs` as names or URLs, each
/// optionally `=<ref>`), each validated; and whether they live in
/// `packs/<name>` of their repository (`subtree`).
pub fn wanted(params: &Params) -> Result<(Vec<Wanted>, bool), PackError> {
    let invalid = |m: String| Err(PackError::Invalid(m));
    let packs: Vec<&str> = params
        .get("packs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if packs.is_empty() {
        return invalid("packs.install needs at least one pack".into());
    }
    let repo_url = params.get("repo_url").and_then(Value::as_str);
    let branch = params.get("branch").and_then(Value::as_str);
    let subtree = params
        .get("subtree")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in packs {
        let entry = entry.trim();
        let (what, reference) = match entry.rsplit_once('=') {
            Some((w, r)) if !r.is_empty() => (w, Some(r.to_string())),
            _ => (entry, None),
        };
        let (name, url) = if looks_like_url(what) {
            if repo_url.is_some() {
                return invalid(format!(
                    "give the repository either in packs ({what}) or as repo_url, not both"
                ));
            }
            (name_from_url(what), what.to_string())
        } else if let Some(u) = repo_url {
            (what.to_string(), u.to_string())
        } else {
            (what.to_string(), format!("{EXCHANGE}{what}.git"))
        };
        let reference = reference.or_else(|| branch.map(str::to_string));
        if !valid_url(&url) {
            return invalid(format!("\"{url}\" is not a repository URL airlock accepts"));
        }
        if !valid_pack_name(&name) {
            return invalid(format!(
                "\"{name}\" is not a valid pack name (lowercase letters, digits, _ and -, at most 64)"
            ));
        }
        if let Some(r) = &reference
            && !valid_ref(r)
        {
            return invalid(format!("\"{r}\" is not a valid git branch, tag or commit"));
        }
        if !seen.insert(name.clone()) {
            return invalid(format!("pack {name} is named twice"));
        }
        out.push(Wanted {
            pack: name,
            url,
            reference,
        });
    }
    Ok((out, subtree))
}

/// Where `url` is fetched from, after `instead_of` (git's `insteadOf`).
pub fn fetch_url(git: &GitConfig, url: &str) -> String {
    for rule in &git.instead_of {
        if let Some(rest) = url.strip_prefix(&rule.from) {
            return format!("{}{rest}", rule.to);
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Params {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn pack_names() {
        assert!(valid_pack_name("st2-flow"));
        assert!(valid_pack_name("a_b9"));
        for bad in ["", "St2", "a/b", "..", "a.b", "a b", &"x".repeat(65)] {
            assert!(!valid_pack_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn refs_follow_git_rules() {
        for good in [
            "main",
            "release/1.2",
            "v1.2.3",
            "feature-x",
            &"a".repeat(40),
        ] {
            assert!(valid_ref(good), "{good:?}");
        }
        for bad in [
            "", "-x", "/main", "main/", "a..b", "a//b", "a@{1}", "@", ".hidden", "a/.b", "x.lock",
            "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "a.",
        ] {
            assert!(!valid_ref(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls_that_could_be_options_or_other_transports_are_refused() {
        for good in [
            "https://github.com/x/y.git",
            "git@github.com:websages/st2-flow",
            "ssh://git@host/x",
            "file:///srv/git/x",
            "/srv/git/x",
            "git://host/x",
        ] {
            assert!(valid_url(good), "{good:?}");
        }
        for bad in [
            "",
            "-uhttps://x",
            "ssh://-oProxyCommand=sh",
            "ext::sh -c evil",
            "fd::0",
            "https://",
            "host:path",
            "x y",
            "relative/path",
            "https://a\nb",
        ] {
            assert!(!valid_url(bad), "{bad:?}");
        }
    }

    #[test]
    fn both_parameter_sets_and_traversal() {
        let (w, subtree) = wanted(&params(json!({
            "packs": ["st2-flow"], "repo_url": "git@github.com:websages/st2-flow",
            "branch": "main", "subtree": true,
        })))
        .unwrap();
        assert!(subtree);
        assert_eq!(
            w,
            vec![Wanted {
                pack: "st2-flow".into(),
                url: "git@github.com:websages/st2-flow".into(),
                reference: Some("main".into()),
            }]
        );
        let (w, _) = wanted(&params(json!({
            "packs": ["https://github.com/StackStorm-Exchange/stackstorm-aws.git=v1.2", "slack"],
        })))
        .unwrap();
        assert_eq!(
            (w[0].pack.as_str(), w[0].reference.as_deref()),
            ("aws", Some("v1.2"))
        );
        assert_eq!(
            w[1].url,
            "https://github.com/StackStorm-Exchange/stackstorm-slack.git"
        );
        for bad in [
            json!({"packs": []}),
            json!({"packs": ["../etc"]}),
            json!({"packs": ["x"], "repo_url": "ext::sh -c id"}),
            json!({"packs": ["x=../../HEAD"]}),
            json!({"packs": ["x", "x"]}),
            json!({"packs": ["https://h/a.git"], "repo_url": "https://h/b.git"}),
            json!({"packs": ["st2-flow/../../x"]}),
        ] {
            assert!(
                matches!(wanted(&params(bad.clone())), Err(PackError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn instead_of_rewrites_the_fetch_url_only() {
        let git = GitConfig {
            ssh_key: None,
            instead_of: vec![InsteadOf {
                from: "git@github.com:websages/".into(),
                to: "file:///mirror/".into(),
            }],
        };
        assert_eq!(
            fetch_url(&git, "git@github.com:websages/st2-flow"),
            "file:///mirror/st2-flow"
        );
        assert_eq!(fetch_url(&git, "https://x/y"), "https://x/y");
    }
}
