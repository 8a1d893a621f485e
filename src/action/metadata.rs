//! st2 action metadata (`actions/*.yaml`) read as st2 reads it: the
//! action's parameters merged over its runner's, `entry_point` inside the
//! pack's `actions/` directory, every problem reported with file, line
//! and field (`airlock check` shows them, the bot logs them).
//!
//! st2's own `core.local`, `core.local_sudo` and `core.http` are the same
//! metadata, embedded ([`core_actions`]).

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::{ActionSpec, ParamSpec, is_template};
use crate::alias::cast::ParamType;
use crate::diag::{Diagnostic, Severity, YamlIndex};

/// The runners airlock runs in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// `local-shell-cmd`: the `cmd` parameter, through `/bin/sh -c`.
    ShellCmd,
    /// `local-shell-script`: the entry point, with the parameters as argv.
    ShellScript,
    /// `http-request`.
    Http,
}

impl Runner {
    /// The runner called `name` in st2's metadata.
    pub fn named(name: &str) -> Option<Runner> {
        match name {
            "local-shell-cmd" | "run-local" => Some(Runner::ShellCmd),
            "local-shell-script" | "run-local-script" => Some(Runner::ShellScript),
            "http-request" | "http-runner" => Some(Runner::Http),
            _ => None,
        }
    }

    /// Its name in st2's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Runner::ShellCmd => "local-shell-cmd",
            Runner::ShellScript => "local-shell-script",
            Runner::Http => "http-request",
        }
    }

    /// The names of [`params`](Runner::params), without building them.
    pub fn param_names(self) -> &'static [&'static str] {
        match self {
            Runner::ShellCmd => &[
                "cmd",
                "cwd",
                "env",
                "kwarg_op",
                "sudo",
                "sudo_password",
                "timeout",
            ],
            Runner::ShellScript => &[
                "cwd",
                "env",
                "kwarg_op",
                "sudo",
                "sudo_password",
                "timeout",
                "debug",
                "content_version",
            ],
            Runner::Http => &[
                "url",
                "headers",
                "cookies",
                "allow_redirects",
                "http_proxy",
                "https_proxy",
                "username",
                "password",
                "verify_ssl_cert",
                "url_hosts_blacklist",
                "url_hosts_whitelist",
            ],
        }
    }

    /// Its own parameters (st2's `runner.yaml`), which an action may
    /// redeclare (a default, `immutable`).
    pub fn params(self) -> Vec<ParamSpec> {
        use ParamType::*;
        let p = ParamSpec::new;
        let local = || {
            vec![
                p("cwd", String, "working directory"),
                p("env", Object, "environment variables"),
                p("kwarg_op", String, "prefix of named arguments").default("--".into()),
                p("sudo", Boolean, "run as root").default(false.into()),
                secret(p("sudo_password", String, "sudo's password")),
                p("timeout", Integer, "seconds the command may run").default(60.into()),
            ]
        };
        match self {
            Runner::ShellCmd => {
                let mut v = vec![p("cmd", String, "the command line")];
                v.extend(local());
                v
            }
            Runner::ShellScript => {
                let mut v = local();
                v.push(p("debug", Boolean, "set ST2_ACTION_DEBUG").default(false.into()));
                v.push(p("content_version", String, "git revision of the pack"));
                v
            }
            Runner::Http => vec![
                p("url", String, "the URL").required(),
                p("headers", Object, "request headers"),
                p("cookies", Object, "request cookies"),
                p("allow_redirects", Boolean, "follow redirects").default(false.into()),
                p("http_proxy", String, "proxy for http"),
                p("https_proxy", String, "proxy for https"),
                p("username", String, "basic auth user"),
                secret(p("password", String, "basic auth password")),
                p("verify_ssl_cert", Boolean, "check TLS certificates").default(true.into()),
                p("url_hosts_blacklist", Array, "hosts never requested"),
                p("url_hosts_whitelist", Array, "the only hosts requested"),
            ],
        }
    }
}

fn secret(mut p: ParamSpec) -> ParamSpec {
    p.secret = true;
    p
}

/// One action of a pack, as its metadata file declares it.
#[derive(Debug, Clone)]
pub struct ActionMeta {
    /// Parameters: the action's, then the runner's it does not redeclare.
    pub spec: ActionSpec,
    /// What runs it.
    pub runner: Runner,
    /// The pack it belongs to.
    pub pack: String,
    /// The script, relative to the pack's `actions/` directory.
    pub entry_point: Option<PathBuf>,
    /// The raw parameter schemas by name (nested `secret`s for masking).
    pub schemas: Map<String, Value>,
    /// The action's `output_schema`.
    pub output_schema: Option<Value>,
    /// The file it came from (empty for st2's embedded core actions).
    pub file: PathBuf,
}

impl ActionMeta {
    /// Whether `name` is one of the runner's parameters rather than the
    /// action's own (a script's arguments are the action's own only).
    pub fn is_runner_param(&self, name: &str) -> bool {
        self.runner.param_names().contains(&name)
    }
}

/// Every action in `pack_dir/actions/*.yaml` of pack `pack`, with the
/// problems found. Actions on runners airlock does not run are left out,
/// with a warning (an alias over one is refused when used) unless
/// `routed` says they run elsewhere (StackStorm).
pub fn load_pack(
    pack_dir: &Path,
    pack: &str,
    routed: &dyn Fn(&str) -> bool,
) -> (Vec<ActionMeta>, Vec<Diagnostic>) {
    let mut found = Vec::new();
    let mut diags = Vec::new();
    let dir = pack_dir.join("actions");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (found, diags);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::file(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        match parse(&file, &text, pack, routed) {
            Ok(Some(meta)) => found.push(meta),
            Ok(None) => {}
            Err(mut d) => diags.append(&mut d),
        }
    }
    (found, diags)
}

/// The packs among alias directories (a pack itself, the pack around an
/// `aliases/` folder, or packs inside a folder), with their names.
pub fn pack_dirs(dirs: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let is_pack = |d: &Path| d.join("pack.yaml").is_file() && d.join("actions").is_dir();
    let name = |d: &Path| {
        d.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for dir in dirs {
        if is_pack(dir) {
            out.push((dir.clone(), name(dir)));
        } else if let Some(parent) = dir
            .parent()
            .filter(|p| name(dir) == "aliases" && is_pack(p))
        {
            out.push((parent.to_path_buf(), name(parent)));
        } else if let Ok(entries) = std::fs::read_dir(dir) {
            let mut subs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_pack(p) && !name(p).starts_with('.'))
                .collect();
            subs.sort();
            out.extend(subs.into_iter().map(|p| {
                let n = name(&p);
                (p, n)
            }));
        }
    }
    out
}

/// Parameters a `cmd` template writes unquoted (`{{ x | safe }}`): a
/// chat value there is shell code unless the policy constrains it.
pub fn unquoted_cmd_params(meta: &ActionMeta) -> Vec<String> {
    let Some(Value::String(cmd)) = meta.spec.param("cmd").and_then(|p| p.default.as_ref()) else {
        return Vec::new();
    };
    let re = regex::Regex::new(r"\{\{-?\s*(\w+)\s*\|\s*safe\s*-?\}\}").expect("regex");
    re.captures_iter(cmd)
        .map(|c| c[1].to_string())
        .filter(|n| n != "cmd")
        .collect()
}

/// Parse one action file of pack `pack`. `Ok(None)`: a valid action that
/// airlock does not run here: disabled, or on another runner and
/// `routed` elsewhere. On another runner and not routed, the `Err` holds
/// a warning saying aliases over it are refused.
pub fn parse(
    file: &Path,
    text: &str,
    pack: &str,
    routed: &dyn Fn(&str) -> bool,
) -> Result<Option<ActionMeta>, Vec<Diagnostic>> {
    let idx = YamlIndex::parse(text);
    let raw: Value = match serde_yaml::from_str::<Option<Value>>(text) {
        Ok(Some(v)) => v,
        Ok(None) => Value::Null,
        Err(e) => return Err(vec![crate::diag::from_serde_yaml(file, &e)]),
    };
    let mut errors = Vec::new();
    let mut err = |field: &str, msg: String| {
        errors.push(idx.diag(Severity::Error, file, field, msg));
    };
    let Some(raw) = raw.as_object() else {
        err("", "an action file must be a mapping".into());
        return Err(errors);
    };
    let str_field = |k: &str| raw.get(k).and_then(Value::as_str);
    let name = str_field("name").unwrap_or_default().to_string();
    if !is_word(&name) {
        err(
            "name",
            format!("\"{name}\" is not an action name (letters, digits and _)"),
        );
    }
    if let Some(p) = str_field("pack")
        && p != pack
    {
        err(
            "pack",
            format!("action declares pack \"{p}\" but is in pack \"{pack}\""),
        );
    }
    let runner_name = str_field("runner_type").unwrap_or_default();
    let runner = Runner::named(runner_name);
    // Not run here, and nothing to warn about: disabled, or on a runner
    // airlock lacks but routed to StackStorm, which has it.
    let elsewhere =
        runner.is_none() && !runner_name.is_empty() && routed(&format!("{pack}.{name}"));
    if raw.get("enabled") == Some(&Value::Bool(false)) || elsewhere {
        return if errors.is_empty() {
            Ok(None)
        } else {
            Err(errors)
        };
    }
    let Some(runner) = runner else {
        if runner_name.is_empty() {
            err("runner_type", "is required".into());
            return Err(errors);
        }
        errors.push(idx.diag(
            Severity::Warning,
            file,
            "runner_type",
            format!(
                "{pack}.{name} runs on {runner_name}, which airlock does not run in-process (local-shell-cmd, local-shell-script and http-request); aliases over it are refused"
            ),
        ));
        return Err(errors);
    };
    let entry_point = entry_point(str_field("entry_point"), runner, &mut err);
    let (params, schemas) = parameters(raw.get("parameters"), runner, &mut err);
    if !errors.is_empty() {
        return Err(errors);
    }
    let spec = spec(
        &format!("{pack}.{name}"),
        str_field("description").unwrap_or_default(),
        params,
        runner,
    );
    Ok(Some(ActionMeta {
        spec,
        runner,
        pack: pack.to_string(),
        entry_point,
        schemas,
        output_schema: raw.get("output_schema").cloned(),
        file: file.to_path_buf(),
    }))
}

/// The action's script, inside the pack's actions directory (required by
/// local-shell-script).
fn entry_point(
    field: Option<&str>,
    runner: Runner,
    err: &mut dyn FnMut(&str, String),
) -> Option<PathBuf> {
    if runner == Runner::ShellScript && field.is_none_or(str::is_empty) {
        err("entry_point", "local-shell-script needs a script".into());
    }
    let e = field.filter(|e| !e.is_empty())?;
    let inside = inside_actions(e);
    if inside.is_none() {
        err(
            "entry_point",
            format!("\"{e}\" leaves the pack's actions directory"),
        );
    }
    inside
}

/// The action's parameters (with the runner's it does not redeclare),
/// and their schemas as written; a shell command's template must leave
/// every value somewhere it can be written as data.
fn parameters(
    raw: Option<&Value>,
    runner: Runner,
    err: &mut dyn FnMut(&str, String),
) -> (Vec<ParamSpec>, Map<String, Value>) {
    let mut params: Vec<ParamSpec> = Vec::new();
    let mut schemas = Map::new();
    match raw {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (pname, schema) in m {
                let field = format!("parameters.{pname}");
                match param(pname, schema, runner) {
                    Ok(p) => {
                        schemas.insert(pname.clone(), schema.clone());
                        params.push(p);
                    }
                    Err((sub, msg)) => err(&crate::diag::join(&field, sub), msg),
                }
            }
        }
        Some(_) => err("parameters", "must be a mapping".into()),
    }
    // Runner parameters the action does not redeclare follow its own.
    for rp in runner.params() {
        if !params.iter().any(|p| p.name == rp.name) {
            params.push(rp);
        }
    }
    match params.iter().find(|p| p.name == "cmd") {
        None if runner == Runner::ShellCmd => {
            err("parameters.cmd", "local-shell-cmd needs a cmd".into());
        }
        Some(ParamSpec {
            default: Some(Value::String(template)),
            ..
        }) if runner == Runner::ShellCmd => {
            for (placeholder, line, where_) in
                super::runners::shell::unsupported_placeholders(template)
            {
                err(
                    "parameters.cmd.default",
                    format!(
                        "{placeholder} (line {line} of the template) stands {where_}, where no value can be written so the shell reads it as data; move it into a plain word or quotes"
                    ),
                );
            }
        }
        _ => {}
    }
    (params, schemas)
}

/// The schema the engine checks requests against: which parameters are
/// the runner's controls, and which reach the command as arguments.
fn spec(reference: &str, description: &str, params: Vec<ParamSpec>, runner: Runner) -> ActionSpec {
    let mut spec = ActionSpec::new(reference, description, params);
    spec.controls = runner
        .param_names()
        .iter()
        .filter(|n| !matches!(**n, "cmd" | "url"))
        .map(|n| n.to_string())
        .collect();
    spec.arguments = match runner {
        Runner::ShellCmd => match spec.param("cmd").and_then(|p| p.default.as_ref()) {
            Some(Value::String(t)) => spec
                .params
                .iter()
                .filter(|p| p.name != "cmd" && super::runners::params::mentions(t, &p.name))
                .map(|p| p.name.clone())
                .collect(),
            _ => Vec::new(),
        },
        Runner::ShellScript => spec
            .params
            .iter()
            .filter(|p| p.position.is_some())
            .map(|p| p.name.clone())
            .collect(),
        Runner::Http => Vec::new(),
    };
    spec
}

/// st2's parameter name rule, `^\w+$`.
fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// A relative path that stays inside the directory it is relative to.
fn inside_actions(entry: &str) -> Option<PathBuf> {
    let p = Path::new(entry);
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| p.to_path_buf())
}

/// One parameter's schema, merged over the runner's declaration of the
/// same name. The error names the sub-field.
fn param(name: &str, schema: &Value, runner: Runner) -> Result<ParamSpec, (&'static str, String)> {
    if !is_word(name) {
        return Err((
            "",
            format!("\"{name}\" is not a parameter name (letters, digits and _)"),
        ));
    }
    let Some(m) = schema.as_object() else {
        return Err(("", "must be a mapping".into()));
    };
    let base = runner.params().into_iter().find(|p| p.name == name);
    let mut p = base.unwrap_or_else(|| ParamSpec {
        ty: None,
        ..ParamSpec::new(name, ParamType::String, "")
    });
    if let Some(t) = m.get("type") {
        p.ty = Some(t.as_str().and_then(ParamType::named).ok_or_else(|| {
            (
                "type",
                format!("{t} is not one of string, integer, number, boolean, array, object"),
            )
        })?);
    }
    let flag = |k: &'static str, now: bool| match m.get(k) {
        None => Ok(now),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err((k, format!("must be true or false, got {v}"))),
    };
    p.required = flag("required", p.required)?;
    p.immutable = flag("immutable", p.immutable)?;
    p.secret = flag("secret", p.secret)?;
    if let Some(d) = m.get("description").and_then(Value::as_str) {
        p.description = d.to_string();
    }
    if let Some(d) = m.get("default") {
        if let Value::String(s) = d
            && is_template(s)
            && s.contains("st2kv")
        {
            return Err((
                "default",
                "reads st2's datastore (st2kv), which airlock does not have; put the value in the pack's config and use config_context".into(),
            ));
        }
        p.default = Some(d.clone());
    }
    match m.get("enum") {
        None => {}
        Some(Value::Array(a)) => p.allowed = a.clone(),
        Some(_) => return Err(("enum", "must be a list".into())),
    }
    match m.get("position") {
        None => {}
        Some(v) => match v.as_u64() {
            Some(n) => p.position = Some(n),
            None => return Err(("position", format!("must be a number ≥ 0, got {v}"))),
        },
    }
    if let Some(d) = &p.default
        && !p.templated_default()
    {
        super::check_value(&p, d).map_err(|e| ("default", e))?;
    }
    Ok(p)
}

/// st2's `core.local`, `core.local_sudo` and `core.http`, from st2's own
/// metadata (`contrib/core/actions/`).
pub fn core_actions() -> Vec<ActionMeta> {
    [CORE_LOCAL, CORE_LOCAL_SUDO, CORE_HTTP]
        .iter()
        .filter_map(|text| {
            parse(Path::new(""), text, "core", &|_| false)
                .ok()
                .flatten()
        })
        .collect()
}

const CORE_LOCAL: &str = r#"
name: local
runner_type: local-shell-cmd
description: Action that executes an arbitrary Linux command on the localhost.
enabled: true
entry_point: ''
parameters:
  cmd:
    description: Arbitrary Linux command to be executed on the local host.
    required: true
    type: string
  sudo:
    immutable: true
"#;

const CORE_LOCAL_SUDO: &str = r#"
name: local_sudo
runner_type: local-shell-cmd
description: Action that executes an arbitrary Linux command on the localhost.
enabled: true
entry_point: ''
parameters:
  cmd:
    description: Arbitrary Linux command to be executed on the local host.
    required: true
    type: string
  sudo:
    default: true
    immutable: true
"#;

const CORE_HTTP: &str = r#"
name: http
runner_type: http-request
description: Action that performs an http request.
enabled: true
entry_point: ''
parameters:
  url:
    description: URL to the HTTP endpoint.
    type: string
    required: true
  headers:
    description: HTTP headers for the request.
    type: object
  cookies:
    description: Optional cookies to send with the request.
    type: object
  http_proxy:
    description: A URL of a HTTP proxy to use (e.g. http://10.10.1.10:3128).
    type: string
  https_proxy:
    description: A URL of a HTTPs proxy to use (e.g. http://10.10.1.10:3128).
    type: string
  body:
    description: Body to send with the request
    type: string
  method:
    description: HTTP method to use.
    type: string
    enum: [HEAD, GET, POST, PUT, DELETE, OPTIONS, TRACE, PATCH, PURGE]
  params:
    description: Query params to be used with the HTTP request.
    type: object
  timeout:
    description: Timeout for the HTTP request.
    type: number
    default: 60
  username:
    description: Username for basic authentication.
    type: string
  password:
    description: Password for basic authentication.
    type: string
    secret: true
  allow_redirects:
    description: Set to True if POST/PUT/DELETE redirect following is allowed.
    type: boolean
    default: false
  verify_ssl_cert:
    description: Certificate for HTTPS request is verified by default using requests CA bundle which comes from Mozilla. Verification using a custom CA bundle is not yet supported. Set to False to skip verification.
    type: boolean
    default: true
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_parameter_names_agree_with_their_declarations() {
        for r in [Runner::ShellCmd, Runner::ShellScript, Runner::Http] {
            let names: Vec<String> = r.params().into_iter().map(|p| p.name).collect();
            assert_eq!(names, r.param_names(), "{}", r.name());
        }
    }

    #[test]
    fn st2s_core_actions_load() {
        let core = core_actions();
        let refs: Vec<&str> = core.iter().map(|a| a.spec.reference.as_str()).collect();
        assert_eq!(refs, ["core.local", "core.local_sudo", "core.http"]);
        let sudo = core[1].spec.param("sudo").unwrap();
        assert!(sudo.immutable);
        assert_eq!(sudo.default, Some(Value::Bool(true)));
        assert!(core[2].spec.param("password").unwrap().secret);
    }

    #[test]
    fn problems_name_file_line_and_field() {
        let text = "name: deploy\nrunner_type: local-shell-script\nentry_point: ../../etc/x.sh\nparameters:\n  env_name:\n    type: strin\n  token:\n    default: \"{{ st2kv.system.token }}\"\n";
        let errs = parse(Path::new("a.yaml"), text, "p", &|_| false).unwrap_err();
        let fields: Vec<(&str, usize)> = errs.iter().map(|d| (d.field.as_str(), d.line)).collect();
        assert_eq!(
            fields,
            [
                ("entry_point", 3),
                ("parameters.env_name.type", 6),
                ("parameters.token.default", 8)
            ],
            "{errs:?}"
        );
    }
}
