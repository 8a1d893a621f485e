//! StackStorm action aliases: loading them unchanged and matching chat
//! commands against them with st2's semantics.
//!
//! * [`mod@format`]: one format string against one command (st2's parser);
//! * `crate::core::pyre`: Python regex syntax, translated for `fancy_regex`;
//! * [`load`]: alias YAML files and pack directories, with diagnostics;
//! * [`cast`]: turning parsed strings into typed action parameters;
//! * this module: [`AliasSet`], which picks the one alias a command means.

pub mod cast;
pub mod format;
pub mod load;

use std::path::PathBuf;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use serde_json::Value;

pub use format::{Command, Format, ParseError};

/// Parameters as st2's parser returns them: strings, or null for a group
/// that did not take part in the match. Insertion order is kept, as in Python.
pub type Params = serde_json::Map<String, Value>;

/// One alias file, normalised.
#[derive(Debug, Clone)]
pub struct Alias {
    /// Its pack.
    pub pack: String,
    /// Its name within the pack.
    pub name: String,
    /// The action it runs.
    pub action_ref: String,
    /// What `!help` says about it.
    pub description: Option<String>,
    /// Disabled aliases never match.
    pub enabled: bool,
    /// Its formats, in order.
    pub formats: Vec<AliasFormat>,
    /// The message when a request is accepted.
    pub ack: Option<MessageSpec>,
    /// The message when it finishes.
    pub result: Option<MessageSpec>,
    /// Parameters the alias fixes (rendered as templates).
    pub immutable_parameters: Params,
    /// Free-form data for chat adapters (`actionalias.extra`).
    pub extra: Option<Value>,
    /// The file it came from.
    pub file: PathBuf,
}

impl Alias {
    /// Whether some format of the alias captures parameter `name`.
    pub fn captures(&self, name: &str) -> bool {
        self.formats
            .iter()
            .flat_map(|f| &f.representations)
            .any(|r| r.parameter_names().iter().any(|n| n == name))
    }

    /// Whether the file sets st2's `extra.security.twofactor: true`: a
    /// second person must confirm, whatever the rule says.
    pub fn twofactor(&self) -> bool {
        self.extra
            .as_ref()
            .and_then(|e| e.pointer("/security/twofactor"))
            .is_some_and(|v| v == true)
    }

    /// `pack.name`, the alias's identity in policies and the audit log.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.name)
    }

    /// st2's alias execution steps after parsing: `immutable_parameters`
    /// are rendered (with `context`: `api_user`, `source_channel`, ...),
    /// a user key that collides with one is refused, then values are cast
    /// by the action's parameter types (`type_of`).
    pub fn execution_parameters(
        &self,
        mut params: Params,
        context: &Value,
        type_of: impl Fn(&str) -> Option<cast::ParamType>,
    ) -> Result<Params, String> {
        if !self.immutable_parameters.is_empty() {
            let mut rendered = Params::new();
            for (k, v) in &self.immutable_parameters {
                let v = crate::render::render_value(v, context)
                    .map_err(|e| format!("Cannot render immutable parameter \"{k}\": {e}"))?;
                rendered.insert(k.clone(), v);
            }
            let overridden: Vec<&str> = self
                .immutable_parameters
                .keys()
                .filter(|k| params.contains_key(*k))
                .map(String::as_str)
                .collect();
            if !overridden.is_empty() {
                return Err(format!(
                    "Immutable arguments cannot be overriden: {}",
                    overridden.join(",")
                ));
            }
            params.extend(rendered);
        }
        let mut out = Params::new();
        for (k, v) in params {
            let v = match type_of(&k) {
                Some(t) => cast::cast(&k, v, t)?,
                None => v,
            };
            out.insert(k, v);
        }
        Ok(out)
    }

    /// st2's `extract_parameters_for_action_alias_db`: parse `command` with
    /// one named format of this alias (hubot's `POST /aliasexecution` path).
    pub fn extract_with_format(&self, format: &str, command: &str) -> Result<Vec<Params>, String> {
        let found = self.formats.iter().find_map(|f| {
            f.representations
                .iter()
                .find(|r| r.source == format)
                .map(|r| (f, r))
        });
        let Some((f, repr)) = found else {
            return Err(format!(
                "Format string \"{format}\" is not available on the alias \"{}\"",
                self.name
            ));
        };
        let cmd = Command::new(command);
        let r = if f.match_multiple {
            repr.extract_all(&cmd)
        } else {
            repr.extract(&cmd).map(|p| vec![p])
        };
        r.map_err(|e| e.to_string())
    }
}

/// One entry of `formats`, after st2's `normalise_alias_format_string`.
#[derive(Debug, Clone)]
pub struct AliasFormat {
    /// What `!help` shows.
    pub display: Option<String>,
    /// Compiled representations; a display-only format has one, the empty format.
    pub representations: Vec<Arc<Format>>,
    /// Whether one command can match it several times (one execution each).
    pub match_multiple: bool,
}

pub use crate::render::MessageSpec;

impl crate::render::Templated for Alias {
    fn ack_spec(&self) -> Option<&MessageSpec> {
        self.ack.as_ref()
    }

    fn result_spec(&self) -> Option<&MessageSpec> {
        self.result.as_ref()
    }

    fn view(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "pack": self.pack,
            "ref": self.reference(),
            "action_ref": self.action_ref,
            "description": self.description,
            "enabled": self.enabled,
            "formats": self.formats.iter().map(|f| serde_json::json!({
                "display": f.display,
                "representation": f.representations.iter().map(|r| r.source.clone()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "extra": self.extra,
        })
    }
}

/// What a command resolved to.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The alias.
    pub alias: Arc<Alias>,
    /// The representation that matched.
    pub representation: String,
    /// What `!help` shows.
    pub display: Option<String>,
    /// Whether one command can match it several times (one execution each).
    pub match_multiple: bool,
    /// One parameter set per execution: several only for `match_multiple`.
    pub parameters: Vec<Params>,
    /// Keys set by trailing `key=value` pairs in the chat command: st2 lets
    /// them set any parameter, so the policy looks at them separately.
    pub overrides: Vec<String>,
}

/// Why a command did not resolve to one alias, in st2's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// Nothing matched.
    #[error("Command '{command}' matched no patterns")]
    NoMatch {
        /// The command.
        command: String,
    },
    /// Several aliases matched.
    #[error("Command '{command}' matched more than 1 pattern")]
    Ambiguous {
        /// The command.
        command: String,
        /// The aliases it matched.
        refs: Vec<String>,
    },
    /// Several `match_multiple` aliases matched.
    #[error("Command '{command}' matched more than 1 (multi) pattern")]
    AmbiguousMulti {
        /// The command.
        command: String,
        /// The aliases it matched.
        refs: Vec<String>,
    },
}

/// A help line: what `!help` and `airlock help` show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HelpEntry {
    /// `pack.name`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its pack.
    pub pack: String,
    /// The action it runs.
    pub action_ref: String,
    /// The format's display string.
    pub display: String,
    /// What `!help` says about it.
    pub description: Option<String>,
}

/// One (alias, representation) pair, in load order ("DB order").
#[derive(Debug)]
struct Pattern {
    alias: usize,
    format: usize,
    repr: usize,
}

/// The aliases a bot answers to, indexed for matching.
///
/// Matching must find *every* representation that matches (st2 refuses
/// ambiguous commands), but running ~1,000 backtracking regexes per message
/// is too slow. Each representation has literal text that every match must
/// contain; one Aho-Corasick pass over the command finds which of those
/// occur, and only their representations (plus the few with no literal at
/// all) run the full matcher.
#[derive(Debug, Default)]
pub struct AliasSet {
    aliases: Vec<Arc<Alias>>,
    patterns: Vec<Pattern>,
    prefilter: Option<AhoCorasick>,
    /// Patterns to try when prefilter literal `i` occurs.
    by_literal: Vec<Vec<usize>>,
    /// Patterns with no usable literal: always tried.
    always: Vec<usize>,
}

impl AliasSet {
    /// Index `aliases` in the given order. Disabled aliases are kept (for
    /// listing) but never match.
    pub fn new(aliases: Vec<Alias>) -> Self {
        let aliases: Vec<Arc<Alias>> = aliases.into_iter().map(Arc::new).collect();
        let mut patterns = Vec::new();
        let mut literals: Vec<String> = Vec::new();
        let mut by_literal: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        let mut literal_ids = std::collections::HashMap::new();
        for (ai, a) in aliases.iter().enumerate() {
            if !a.enabled {
                continue;
            }
            for (fi, f) in a.formats.iter().enumerate() {
                for (ri, r) in f.representations.iter().enumerate() {
                    let pi = patterns.len();
                    patterns.push(Pattern {
                        alias: ai,
                        format: fi,
                        repr: ri,
                    });
                    match r.literals.first() {
                        Some(lit) => {
                            let id = *literal_ids.entry(lit.clone()).or_insert_with(|| {
                                literals.push(lit.clone());
                                by_literal.push(Vec::new());
                                literals.len() - 1
                            });
                            by_literal[id].push(pi);
                        }
                        None => always.push(pi),
                    }
                }
            }
        }
        let prefilter = if literals.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(&literals).expect("literal prefilter"))
        };
        AliasSet {
            aliases,
            patterns,
            prefilter,
            by_literal,
            always,
        }
    }

    /// Every alias, in load order.
    pub fn aliases(&self) -> &[Arc<Alias>] {
        &self.aliases
    }

    /// The alias `pack.name`.
    pub fn get(&self, reference: &str) -> Option<&Arc<Alias>> {
        self.aliases.iter().find(|a| a.reference() == reference)
    }

    /// How many aliases.
    pub fn len(&self) -> usize {
        self.aliases.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
    }

    /// st2's `get_matching_alias` followed by parameter extraction.
    pub fn match_command(&self, command: &str) -> Result<Matched, MatchError> {
        let cmd = Command::new(command);
        let candidates = self.candidates(&cmd.stream);

        // Pass 1: aliases with at least one ordinary format; pass 2, only if
        // nothing matched: aliases with a `match_multiple` format.
        let mut hits = self.run(&cmd, &candidates, |a| {
            a.formats.iter().any(|f| !f.match_multiple)
        });
        if hits.len() > 1 {
            return Err(MatchError::Ambiguous {
                command: command.to_string(),
                refs: self.refs(&hits),
            });
        }
        if hits.is_empty() {
            hits = self.run(&cmd, &candidates, |a| {
                a.formats.iter().any(|f| f.match_multiple)
            });
            if hits.len() > 1 {
                return Err(MatchError::AmbiguousMulti {
                    command: command.to_string(),
                    refs: self.refs(&hits),
                });
            }
        }
        let Some(&(pi, ref first)) = hits.first() else {
            return Err(MatchError::NoMatch {
                command: command.to_string(),
            });
        };
        let p = &self.patterns[pi];
        let alias = &self.aliases[p.alias];
        let fmt = &alias.formats[p.format];
        let repr = &fmt.representations[p.repr];
        let parameters = if fmt.match_multiple {
            repr.extract_all(&cmd)
                .unwrap_or_else(|_| vec![first.clone()])
        } else {
            vec![first.clone()]
        };
        Ok(Matched {
            alias: alias.clone(),
            representation: repr.source.clone(),
            display: fmt.display.clone(),
            match_multiple: fmt.match_multiple,
            parameters,
            overrides: cmd.pairs.iter().map(|(k, _)| k.clone()).collect(),
        })
    }

    fn candidates(&self, stream: &str) -> Vec<usize> {
        let mut out = self.always.clone();
        if let Some(ac) = &self.prefilter {
            let mut seen = vec![false; self.by_literal.len()];
            for m in ac.find_overlapping_iter(stream) {
                let id = m.pattern().as_usize();
                if !seen[id] {
                    seen[id] = true;
                    out.extend_from_slice(&self.by_literal[id]);
                }
            }
        }
        // Keep load order, so results do not depend on the prefilter.
        out.sort_unstable();
        out
    }

    fn run(
        &self,
        cmd: &Command,
        candidates: &[usize],
        pass: impl Fn(&Alias) -> bool,
    ) -> Vec<(usize, Params)> {
        candidates
            .iter()
            .filter(|&&pi| pass(&self.aliases[self.patterns[pi].alias]))
            .filter_map(|&pi| {
                let p = &self.patterns[pi];
                let repr = &self.aliases[p.alias].formats[p.format].representations[p.repr];
                if !repr.could_match(cmd) {
                    return None;
                }
                repr.extract(cmd).ok().map(|params| (pi, params))
            })
            .collect()
    }

    fn refs(&self, hits: &[(usize, Params)]) -> Vec<String> {
        hits.iter()
            .map(|(pi, _)| self.aliases[self.patterns[*pi].alias].reference())
            .collect()
    }

    /// Help lines for enabled aliases whose display matches `filter`
    /// (case-insensitive regex search, as st2's help API).
    pub fn help(&self, filter: Option<&str>) -> Vec<HelpEntry> {
        let filter = filter.filter(|f| !f.is_empty()).map(|f| {
            regex::RegexBuilder::new(f)
                .case_insensitive(true)
                .build()
                .unwrap_or_else(|_| {
                    regex::RegexBuilder::new(&regex::escape(f))
                        .case_insensitive(true)
                        .build()
                        .expect("escaped filter")
                })
        });
        let mut out = Vec::new();
        for a in self.aliases.iter().filter(|a| a.enabled) {
            for f in &a.formats {
                let Some(display) = f.display.as_deref().filter(|d| !d.is_empty()) else {
                    continue;
                };
                if filter.as_ref().is_some_and(|re| !re.is_match(display)) {
                    continue;
                }
                out.push(HelpEntry {
                    reference: a.reference(),
                    pack: a.pack.clone(),
                    action_ref: a.action_ref.clone(),
                    display: display.to_string(),
                    description: a.description.clone(),
                });
            }
        }
        out
    }
}

/// Chat hygiene before matching, as hubot's Slack-like adapters do: smart
/// quotes become ASCII quotes, no-break spaces become spaces.
pub fn normalize_command(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' => '"',
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => '\'',
            '\u{00a0}' | '\u{202f}' | '\u{2007}' => ' ',
            c => c,
        })
        .collect()
}
