//! Loading alias YAML files, alone or as packs, with a diagnostic for each
//! problem (file, line, column, field).
//!
//! Layouts accepted for each directory given:
//! * alias files directly in it (`aliases/flow_deploy.yaml`);
//! * packs: `<dir>/<pack>/aliases/*.yaml`;
//! * a single pack: `<dir>/aliases/*.yaml`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{Alias, AliasFormat, Format, MessageSpec, Params};
use crate::diag::{self, Diagnostic, Severity, YamlIndex};

/// st2's `ActionAliasAPI` schema: no other top-level keys are allowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    name: String,
    #[serde(default)]
    pack: Option<String>,
    action_ref: String,
    #[serde(default)]
    formats: Vec<serde_yaml::Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default)]
    ack: Option<MessageSpec>,
    #[serde(default)]
    result: Option<MessageSpec>,
    #[serde(default)]
    extra: Option<serde_yaml::Value>,
    #[serde(default)]
    immutable_parameters: Option<serde_yaml::Mapping>,
    // System fields st2 writes back; accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<serde_yaml::Value>,
    #[serde(default, rename = "ref")]
    #[allow(dead_code)]
    reference: Option<serde_yaml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    uid: Option<serde_yaml::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    metadata_file: Option<serde_yaml::Value>,
}

fn default_true() -> bool {
    true
}

/// Parse alias YAML `text` (read from `path`); every problem is reported.
pub fn parse_alias(
    path: &Path,
    text: &str,
    pack_dir: Option<&str>,
    default_pack: &str,
) -> Result<Alias, Vec<Diagnostic>> {
    let raw: RawAlias =
        serde_yaml::from_str(text).map_err(|e| vec![diag::from_serde_yaml(path, &e)])?;
    let idx = YamlIndex::parse(text);
    let mut errors = Vec::new();
    let mut err = |field: &str, msg: String| {
        errors.push(idx.diag(Severity::Error, path, field, msg));
    };

    let pack = raw
        .pack
        .clone()
        .unwrap_or_else(|| pack_dir.unwrap_or(default_pack).to_string());
    if let (Some(dir), Some(declared)) = (pack_dir, raw.pack.as_deref())
        && dir != declared
    {
        err(
            "pack",
            format!("alias declares pack \"{declared}\" but is in pack \"{dir}\""),
        );
    }
    if raw.name.trim().is_empty() {
        err("name", "must not be empty".into());
    }
    if pack.trim().is_empty() {
        err("pack", "must not be empty".into());
    }
    if !raw.action_ref.contains('.') {
        err(
            "action_ref",
            format!(
                "\"{}\" is not an action reference (expected pack.action)",
                raw.action_ref
            ),
        );
    }

    let formats = compile_formats(&raw.formats, &mut err);

    let immutable_parameters = match raw.immutable_parameters.as_ref().map(serde_json::to_value) {
        None => Params::new(),
        Some(Ok(Value::Object(m))) => m,
        Some(Ok(_)) => Params::new(),
        Some(Err(e)) => {
            err("immutable_parameters", format!("cannot be read: {e}"));
            Params::new()
        }
    };
    let extra = match raw.extra.as_ref().map(serde_json::to_value) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            err("extra", format!("cannot be read: {e}"));
            None
        }
    };
    for (field, spec) in [("ack", &raw.ack), ("result", &raw.result)] {
        if let Some(fmt) = spec.as_ref().and_then(|s| s.format.as_deref())
            && let Err(e) = crate::render::check_template(fmt)
        {
            err(&format!("{field}.format"), e);
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Alias {
        pack,
        name: raw.name,
        action_ref: raw.action_ref,
        description: raw.description,
        enabled: raw.enabled,
        formats,
        ack: raw.ack,
        result: raw.result,
        immutable_parameters,
        extra,
        file: path.to_path_buf(),
    })
}

/// Each of `formats` (st2's strings or display/representation mappings)
/// compiled; what does not compile is reported under its field.
fn compile_formats(
    formats: &[serde_yaml::Value],
    err: &mut dyn FnMut(&str, String),
) -> Vec<AliasFormat> {
    let mut compiled_formats = Vec::new();
    for (i, f) in formats.iter().enumerate() {
        let field = format!("formats[{i}]");
        match normalise_format(f) {
            Ok((display, reprs, match_multiple)) => {
                let display_only =
                    reprs.is_empty() && display.as_deref().is_some_and(|d| !d.is_empty());
                let sources = if display_only {
                    vec![String::new()]
                } else {
                    reprs
                };
                let mut compiled = Vec::new();
                for (j, r) in sources.iter().enumerate() {
                    match Format::compile(r) {
                        Ok(c) => compiled.push(Arc::new(c)),
                        Err(e) => {
                            let at = if f.is_string() {
                                field.clone()
                            } else {
                                format!("{field}.representation[{j}]")
                            };
                            err(&at, e);
                        }
                    }
                }
                compiled_formats.push(AliasFormat {
                    display,
                    representations: compiled,
                    match_multiple,
                });
            }
            Err(msg) => err(&field, msg),
        }
    }
    compiled_formats
}

/// st2's `normalise_alias_format_string`: (display, representations, match_multiple).
fn normalise_format(f: &serde_yaml::Value) -> Result<(Option<String>, Vec<String>, bool), String> {
    use serde_yaml::Value as Y;
    match f {
        Y::String(s) => Ok((Some(s.clone()), vec![s.clone()], false)),
        Y::Mapping(m) => {
            let display = match m.get("display") {
                None | Some(Y::Null) => None,
                Some(Y::String(s)) => Some(s.clone()),
                Some(_) => return Err("display must be a string".into()),
            };
            let reprs = match m.get("representation") {
                None | Some(Y::Null) => Vec::new(),
                Some(Y::String(s)) => vec![s.clone()],
                Some(Y::Sequence(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| "representation items must be strings".to_string())
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err("representation must be a string or a list of strings".into());
                }
            };
            let multiple = match m.get("match_multiple") {
                None | Some(Y::Null) => false,
                Some(Y::Bool(b)) => *b,
                Some(_) => return Err("match_multiple must be true or false".into()),
            };
            Ok((display, reprs, multiple))
        }
        other => Err(format!(
            "alias_format '{}' is neither a dictionary or string type.",
            serde_json::to_string(other).unwrap_or_default()
        )),
    }
}

/// The result of loading alias directories: what loaded, and what did not.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The aliases that loaded.
    pub aliases: Vec<Alias>,
    /// Every problem found, with file, line and field.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Whether any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// An alias file found on disk: its path, the pack directory it sits in
/// (if any) and the pack it belongs to when it names none.
#[derive(Debug, Clone)]
pub struct AliasFile {
    /// Where it is.
    pub path: PathBuf,
    /// The pack directory it sits in, whose name its `pack` must match.
    pub pack_dir: Option<String>,
    /// The pack it belongs to when it names none.
    pub default_pack: String,
}

/// The aliases in `files` (each with its text), in order, with the
/// problems found reading them (`diagnostics`) and parsing them. A ref
/// defined twice keeps the later file (as st2's registration does) and
/// both files are named in a warning.
pub fn parse_files(files: Vec<(AliasFile, String)>, mut diagnostics: Vec<Diagnostic>) -> Loaded {
    let mut aliases: Vec<Alias> = Vec::new();
    let mut by_ref: HashMap<String, usize> = HashMap::new();
    for (
        AliasFile {
            path: file,
            pack_dir,
            default_pack,
        },
        text,
    ) in files
    {
        match parse_alias(&file, &text, pack_dir.as_deref(), &default_pack) {
            Ok(alias) => {
                let r = alias.reference();
                if let Some(&i) = by_ref.get(&r) {
                    diagnostics.push(YamlIndex::parse(&text).diag(
                        Severity::Warning,
                        &file,
                        "name",
                        format!(
                            "alias {r} is also defined in {}; this later file replaces it",
                            aliases[i].file.display()
                        ),
                    ));
                    aliases[i] = alias;
                } else {
                    by_ref.insert(r, aliases.len());
                    aliases.push(alias);
                }
            }
            Err(mut d) => diagnostics.append(&mut d),
        }
    }
    Loaded {
        aliases,
        diagnostics,
    }
}
