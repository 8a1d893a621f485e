//! StackStorm's `ActionAliasFormatParser`: one format string against one
//! command. See `../shared/compat/stackstorm.md` §2 for the rules (P1–P10)
//! this reproduces, quirks included.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::Params;
use crate::core::pyre::{self, At};

/// Most backtracking steps one format may take on one command. Formats with
/// several optional groups are cubic in the command's length; past this the
/// format simply does not match, the bot stays responsive.
const BACKTRACK_LIMIT: usize = 1_000_000;

// st2's snippets, written in Rust regex syntax. They have no look-around, so
// the linear-time `regex` crate runs them with the same leftmost-first
// semantics as Python's backtracking engine.
const VALUE: &str = r#"""|''|"(.+?)"|'(.+?)'|(\{.+?\})|(\S+)"#;
const EXT_VALUE: &str = r#"""|''|"(.+?)"|'(.+?)'|(\{.+?\})|(.+?)"#;

static PAIRS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"(?s)(?:^|\s+)\s*(\S+?)\s*=({VALUE})")).expect("pairs regex")
});
static ENDING: LazyLock<Regex> = LazyLock::new(|| {
    let pairs = format!(r"(?:^|\s+)\s*(?:\S+?)\s*=(?:{VALUE})");
    Regex::new(&format!(r"(?s)\A.*?((?:{pairs}\s*)*)\n?\z")).expect("ending regex")
});
fn optional_snippet() -> String {
    format!(r"\{{\{{\s*(\S+?)\s*\s*=\s*(?:{EXT_VALUE})\s*\}}\}}")
}
static OPTIONAL_DOTALL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("(?s){}", optional_snippet())).expect("optional regex"));
static OPTIONAL_SUB: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"(\s*){}", optional_snippet())).expect("optional regex"));
static REQUIRED_SUB: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\s*)\{\{\s*(\S+?)\s*\}\}").expect("required regex"));

/// The capture st2 puts in place of each `{{ name }}`: lazy, one pair of
/// quotes dropped, `{...}` blobs allowed.
fn param_match(ws: &str, name: &str) -> String {
    format!(r#"{ws}["\']?(?P<{name}>(?:(?<=\').+?(?=\')|(?<=").+?(?=")|{{.+?}}|.+?))["\']?"#)
}

/// A command after step P1: trailing `key=value` pairs cut off, padded.
/// It does not depend on the format, so it is computed once per command.
#[derive(Debug, Clone)]
pub struct Command {
    /// The command as typed.
    pub original: String,
    /// What formats are matched against: the command without its trailing pairs, padded with a space each side.
    pub stream: String,
    /// The trailing `key=value` pairs, in order.
    pub pairs: Vec<(String, String)>,
}

impl Command {
    /// Cut the trailing pairs off `command`.
    pub fn new(command: &str) -> Self {
        let mut rest = command.to_string();
        let mut pairs = Vec::new();
        // Pairs need an `=`; most commands have none, and the pair regex
        // is the costliest step of matching.
        if let Some(suffix) = Some(command)
            .filter(|c| c.contains('='))
            .and_then(|c| ENDING.captures(c))
            .and_then(|c| c.get(1))
            .map(|m| m.as_str())
            .filter(|s| !s.is_empty())
        {
            for c in PAIRS.captures_iter(suffix) {
                let value: String = (3..=6)
                    .filter_map(|i| c.get(i).map(|m| m.as_str()))
                    .collect();
                pairs.push((c[1].to_string(), value));
            }
            // Python's str.replace: every occurrence goes.
            rest = command.replace(suffix, "");
        }
        Command {
            original: command.to_string(),
            stream: format!(" {rest} "),
            pairs,
        }
    }
}

/// Why a format did not yield parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The command does not match the format.
    #[error("Command \"{command}\" doesn't match format string \"{format}\"")]
    NoMatch {
        /// The command.
        command: String,
        /// The format.
        format: String,
    },
    /// A parameter has neither a value nor a default.
    #[error("No value supplied and no default value found.")]
    NoValue,
}

/// A format string compiled once, matched many times.
#[derive(Debug)]
pub struct Format {
    /// The format as written in the alias.
    pub source: String,
    regex: fancy_regex::Regex,
    /// `{{name=default}}` placeholders, in order.
    optional: Vec<(String, String)>,
    group_names: Vec<String>,
    /// Literal text every match contains; empty when none can be trusted.
    pub literals: Vec<String>,
    /// Literal text every match starts with (after leading whitespace),
    /// when the format is anchored at the start by st2's implicit `^\s*`.
    prefix: Option<String>,
    /// The translated regex, for diagnostics.
    pub regex_text: String,
}

impl Format {
    /// Translate and compile `format`; the error says why it cannot be.
    pub fn compile(format: &str) -> Result<Self, String> {
        let optional: Vec<(String, String)> = OPTIONAL_DOTALL
            .captures_iter(format)
            .map(|c| {
                let default: String = (2..=5)
                    .filter_map(|i| c.get(i).map(|m| m.as_str()))
                    .collect();
                (c[1].to_string(), default)
            })
            .collect();
        let reg = OPTIONAL_SUB.replace_all(format, |c: &regex::Captures| {
            format!("(?:{})?", param_match(&c[1], &c[2]))
        });
        let reg = REQUIRED_SUB.replace_all(&reg, |c: &regex::Captures| param_match(&c[1], &c[2]));

        let parsed = pyre::parse(&reg).map_err(|e| {
            format!(
                "format is not a valid regular expression once its parameters are expanded: {e}"
            )
        })?;
        let mut rust = String::from("(?s)");
        let implicit_start =
            !pyre::search_tokens(&[At::Beginning, At::BeginningString], &parsed.tokens);
        if implicit_start {
            rust.push_str(r"^\s*");
        }
        rust.push_str(&parsed.rust);
        if !pyre::search_tokens(&[At::End, At::EndString], &parsed.tokens) {
            rust.push_str(r"\s*(?=\n?\z)");
        }
        let regex = fancy_regex::RegexBuilder::new(&rust)
            .backtrack_limit(BACKTRACK_LIMIT)
            .build()
            .map_err(|e| format!("format cannot be compiled: {e}"))?;
        let trusted = !parsed.has_inline_flags;
        let literals = if trusted {
            pyre::required_literals(&parsed.tokens)
        } else {
            Vec::new()
        };
        let prefix: String = parsed
            .tokens
            .iter()
            .map_while(|t| match t {
                pyre::Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect::<String>()
            .trim_start_matches(is_py_space)
            .to_string();
        let prefix = (trusted && implicit_start && !prefix.is_empty()).then_some(prefix);
        Ok(Format {
            source: format.to_string(),
            regex,
            optional,
            group_names: parsed.group_names,
            literals,
            prefix,
            regex_text: rust,
        })
    }

    /// Parameter names this format can yield, in order.
    pub fn parameter_names(&self) -> &[String] {
        &self.group_names
    }

    /// A cheap necessary condition for a match: the required literals occur
    /// and the literal start is there. False means `extract` would fail.
    pub fn could_match(&self, cmd: &Command) -> bool {
        self.prefix.as_ref().is_none_or(|p| {
            cmd.stream
                .trim_start_matches(is_py_space)
                .starts_with(p.as_str())
        }) && self
            .literals
            .iter()
            .all(|l| cmd.stream.contains(l.as_str()))
    }

    /// `extract_parameters(format, command)`: the first match (`re.search`).
    pub fn extract(&self, cmd: &Command) -> Result<Params, ParseError> {
        let caps = self.regex.captures(&cmd.stream).ok().flatten();
        match caps {
            Some(c) => self.params_from(&c, cmd),
            None => Err(self.no_match(cmd)),
        }
    }

    /// `match_multiple`: one parameter set per non-overlapping match.
    pub fn extract_all(&self, cmd: &Command) -> Result<Vec<Params>, ParseError> {
        let mut out = Vec::new();
        for c in self.regex.captures_iter(&cmd.stream) {
            let Ok(c) = c else { break };
            out.push(self.params_from(&c, cmd)?);
        }
        if out.is_empty() {
            return Err(self.no_match(cmd));
        }
        Ok(out)
    }

    fn no_match(&self, cmd: &Command) -> ParseError {
        ParseError::NoMatch {
            command: cmd.original.clone(),
            format: self.source.clone(),
        }
    }

    fn params_from(
        &self,
        caps: &fancy_regex::Captures,
        cmd: &Command,
    ) -> Result<Params, ParseError> {
        let mut result = Params::new();
        for name in &self.group_names {
            let v = caps
                .name(name)
                .map(|m| Value::String(m.as_str().to_string()))
                .unwrap_or(Value::Null);
            result.insert(name.clone(), v);
        }
        for (name, default) in &self.optional {
            let matched = result
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            if matched.is_none() {
                result.insert(name.clone(), Value::String(default.clone()));
            }
        }
        for (k, v) in &cmd.pairs {
            result.insert(k.clone(), Value::String(v.clone()));
        }
        let any_value = result
            .values()
            .any(|v| v.as_str().is_some_and(|s| !s.is_empty()));
        if !self.source.is_empty() && cmd.stream.trim().is_empty() && !any_value {
            return Err(ParseError::NoValue);
        }
        Ok(result)
    }
}

/// Whitespace as Python's `\s` sees it (Unicode spaces and the ASCII
/// separators U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Parse `command` against `format`, as `st2`'s `extract_parameters` does.
pub fn extract_parameters(format: &str, command: &str) -> Result<Params, String> {
    let f = Format::compile(format)?;
    f.extract(&Command::new(command)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(format: &str, cmd: &str) -> Value {
        Value::Object(extract_parameters(format, cmd).unwrap())
    }

    #[test]
    fn seed_alias_defaults_and_branch() {
        let f = "{{register=all}} {{packs=st2-flow}} {{repo_url=git@github.com:websages/st2-flow}} flow deploy {{branch=master}}";
        assert_eq!(
            p(f, "flow deploy feature-x"),
            json!({"register": "all", "packs": "st2-flow",
                   "repo_url": "git@github.com:websages/st2-flow", "branch": "feature-x"})
        );
        assert_eq!(p(f, "flow deploy")["branch"], "master");
    }

    #[test]
    fn trailing_pairs_are_stolen_even_when_quoted() {
        assert_eq!(
            p("run {{cmd}}", "run \"echo a=b\""),
            json!({"cmd": "echo", "a": "b\""})
        );
        assert!(extract_parameters("pack install {{ packs }}", "pack install st2=1.0.0").is_err());
    }
}
