//! StackStorm's runners, natively: what a pack's own actions run on
//! (`local-shell-cmd`, `local-shell-script`, `http-request`), checked
//! against st2's own answers (`tests/runner_vectors.rs`).
//!
//! [`PackAction`] is one action of a pack (or st2's `core.local`,
//! `core.local_sudo`, `core.http`): when a request is made it renders the
//! parameters ([`params`]) and shows them, secrets masked; once approved it
//! runs them on its runner ([`local`], [`http`]) and returns st2's result,
//! secrets masked again ([`secrets`]).

pub mod http;
pub mod local;
pub mod params;
pub mod python;
pub mod sandbox;
pub mod secrets;
pub mod shell;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::metadata::{ActionMeta, Runner};
use super::{Action, ActionSpec, Outcome, PrepareError, Prepared, RunContext, Status};
use crate::alias::Params;
use crate::alias::cast::ParamType;

/// `runners:` in `airlock.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// Whether `sudo: true` actions (`core.local_sudo`) may run.
    #[serde(default)]
    pub allow_sudo: bool,
    /// Pack configs (`<pack>.yaml`, st2's `/opt/stackstorm/configs`):
    /// what `config_context` reads.
    #[serde(default = "default_configs")]
    pub configs: PathBuf,
    /// Bytes kept per output stream.
    #[serde(default = "default_cap")]
    pub output_cap: usize,
    /// Seconds between SIGTERM and SIGKILL.
    #[serde(default = "default_grace")]
    pub kill_grace_seconds: u64,
    /// More environment variables no action may see.
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// How local actions run: `bwrap` (the default) hides airlock's own
    /// files from them (`sandbox`); `none` does not.
    #[serde(default)]
    pub sandbox: sandbox::Sandbox,
    /// What the sandbox hides: `data_dir` and `configs` (set at open).
    #[serde(skip)]
    pub hidden: Vec<PathBuf>,
    /// Key of the hashes the audit keeps of secret values (set at open).
    #[serde(skip)]
    pub hash_key: Vec<u8>,
}

fn default_configs() -> PathBuf {
    "configs".into()
}
fn default_cap() -> usize {
    1 << 20
}
fn default_grace() -> u64 {
    5
}

impl Default for RunnerConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("defaults")
    }
}

impl RunnerConfig {
    /// The keyed hash of a secret value as the audit keeps it.
    pub fn proof(&self, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.hash_key).expect("any key length");
        mac.update(value.as_bytes());
        let bytes = mac.finalize().into_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("hmac-sha256:{hex}")
    }
}

/// One action of a pack, run in-process on its st2 runner.
pub struct PackAction {
    meta: ActionMeta,
    /// The pack's directory as found (`packs/<name>`, a link to the live
    /// version); None for st2's embedded core actions.
    root: Option<PathBuf>,
    cfg: Arc<RunnerConfig>,
}

impl PackAction {
    /// `meta`, from the pack at `root`.
    pub fn new(meta: ActionMeta, root: Option<PathBuf>, cfg: Arc<RunnerConfig>) -> Self {
        PackAction { meta, root, cfg }
    }

    /// Parameters a template interpolates into a shell command line.
    fn shell_params(&self) -> &'static [&'static str] {
        if self.meta.runner == Runner::ShellCmd {
            &["cmd"]
        } else {
            &[]
        }
    }

    /// `config_context`: the pack's config file, checked against its
    /// `config.schema.yaml` (defaults filled, required keys present).
    fn config_context(&self, pack_dir: Option<&Path>) -> Result<Value, String> {
        let file = self.cfg.configs.join(format!("{}.yaml", self.meta.pack));
        let mut config = match std::fs::read_to_string(&file) {
            Ok(text) => match serde_yaml::from_str::<Option<Value>>(&text) {
                Ok(Some(Value::Object(m))) => m,
                Ok(None) => Map::new(),
                Ok(Some(_)) => return Err(format!("{}: must be a mapping", file.display())),
                Err(e) => return Err(format!("{}: {e}", file.display())),
            },
            Err(_) => Map::new(),
        };
        let schema = pack_dir
            .map(|d| d.join("config.schema.yaml"))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| serde_yaml::from_str::<Value>(&t).ok());
        if let Some(Value::Object(schema)) = schema {
            for (key, s) in &schema {
                if config.get(key).is_none_or(Value::is_null) {
                    if let Some(d) = s.get("default") {
                        config.insert(key.clone(), d.clone());
                    } else if s.get("required") == Some(&Value::Bool(true)) {
                        return Err(format!(
                            "{}: {key} is required by the pack's config.schema.yaml",
                            file.display()
                        ));
                    }
                }
                if let (Some(v), Some(ty)) =
                    (config.get(key), s.get("type").and_then(Value::as_str))
                    && !v.is_null()
                    && ParamType::named(ty).is_some_and(|t| !t.accepts(v))
                {
                    return Err(format!(
                        "{}: {key} must be of type {ty} (config.schema.yaml)",
                        file.display()
                    ));
                }
            }
        }
        Ok(Value::Object(config))
    }

    /// Every parameter rendered for `pack_dir`, secrets in clear.
    fn render(&self, params: &Params, pack_dir: Option<&Path>) -> Result<Params, String> {
        let config = self.config_context(pack_dir)?;
        params::render_defaults(&self.meta.spec, params, &config, self.shell_params())
    }

    /// The values of the secret parameters, and their shell-quoted forms:
    /// what must never be shown.
    fn secret_values(&self, rendered: &Params) -> secrets::Secrets {
        let mut out = Vec::new();
        for p in self.meta.spec.params.iter().filter(|p| p.secret) {
            if let Some(v) = rendered.get(&p.name).filter(|v| !v.is_null()) {
                let s = python::str_of(v);
                if s.len() >= 3 {
                    out.extend(shell::writings(&s));
                    out.push(s);
                }
            }
        }
        secrets::Secrets::new(out)
    }

    /// Check what must hold before a request is even shown.
    fn check(&self, p: &Params, pack_dir: Option<&Path>) -> Result<(), String> {
        if p.get("sudo") == Some(&Value::Bool(true)) && !self.cfg.allow_sudo {
            return Err(format!(
                "{} runs with sudo, which this bot's configuration does not allow (runners.allow_sudo)",
                self.meta.spec.reference
            ));
        }
        match self.meta.runner {
            Runner::ShellScript => {
                self.entry_point(pack_dir)?;
            }
            Runner::Http => {
                let req = http::Request::from_params(p, &self.meta.spec.reference)?;
                http::check_host(&req.url, &req.deny, &req.allow)?;
            }
            Runner::ShellCmd => {
                if !p.get("cmd").is_some_and(Value::is_string) {
                    return Err(format!("{} has no cmd to run", self.meta.spec.reference));
                }
            }
        }
        Ok(())
    }

    /// The script, which must be inside the pack.
    fn entry_point(&self, pack_dir: Option<&Path>) -> Result<PathBuf, String> {
        let (Some(dir), Some(entry)) = (pack_dir, &self.meta.entry_point) else {
            return Err(format!("{} has no entry point", self.meta.spec.reference));
        };
        let path = dir.join("actions").join(entry);
        let real = path
            .canonicalize()
            .map_err(|e| format!("entry point {}: {e}", path.display()))?;
        if !real.starts_with(dir) || !real.is_file() {
            return Err(format!(
                "entry point {} is not a file inside the pack",
                path.display()
            ));
        }
        Ok(real)
    }

    /// The process's environment: the `env` parameter, then st2's
    /// `ST2_ACTION_*` variables.
    fn environment(&self, ctx: &RunContext, p: &Params) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = p
            .get("env")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), python::str_of(v)))
                    .collect()
            })
            .unwrap_or_default();
        let debug = p.get("debug") == Some(&Value::Bool(true));
        env.extend([
            ("ST2_ACTION_PACK_NAME".into(), self.meta.pack.clone()),
            ("ST2_ACTION_EXECUTION_ID".into(), ctx.request_id.to_string()),
            (
                "ST2_ACTION_DEBUG".into(),
                if debug { "True" } else { "False" }.into(),
            ),
        ]);
        env
    }

    /// The program and its arguments: `/bin/sh -c cmd`, or the script
    /// with its positional and named arguments under its interpreter.
    fn command(
        &self,
        p: &Params,
        pack_dir: Option<&Path>,
    ) -> Result<(PathBuf, Vec<String>), String> {
        Ok(match self.meta.runner {
            Runner::ShellCmd => (
                PathBuf::from("/bin/sh"),
                vec![
                    "-c".into(),
                    p["cmd"].as_str().unwrap_or_default().to_string(),
                ],
            ),
            _ => {
                let script = self.entry_point(pack_dir)?;
                let named: Map<String, Value> = p
                    .iter()
                    .filter(|(k, _)| !self.meta.is_runner_param(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let schema: Vec<(String, local::ScriptParam)> = self
                    .meta
                    .spec
                    .params
                    .iter()
                    .filter(|sp| !self.meta.is_runner_param(&sp.name))
                    .map(|sp| {
                        (
                            sp.name.clone(),
                            local::ScriptParam {
                                ty: sp.ty.map(|t| t.name().to_string()),
                                position: sp.position,
                            },
                        )
                    })
                    .collect();
                let op = p.get("kwarg_op").and_then(Value::as_str).unwrap_or("--");
                let args = local::script_args(&named, &schema, op);
                interpreter(&script, args)
            }
        })
    }

    /// Run the rendered parameters `p` on the action's runner.
    fn run_rendered(
        &self,
        ctx: &RunContext,
        p: &Params,
        pack_dir: Option<&Path>,
    ) -> Result<(&'static str, Value), String> {
        let reference = &self.meta.spec.reference;
        if self.meta.runner == Runner::Http {
            return http::Request::from_params(p, reference)?.send();
        }
        let timeout = p.get("timeout").cloned().unwrap_or(json!(60));
        let env = self.environment(ctx, p);
        let (program, args) = self.command(p, pack_dir)?;
        // The sandbox inside sudo: bubblewrap forbids gaining privileges,
        // so sudo must come first.
        let (program, args) = match self.cfg.sandbox {
            sandbox::Sandbox::Bwrap => sandbox::wrap(program, args, &self.cfg.hidden, pack_dir),
            sandbox::Sandbox::None => (program, args),
        };
        let (program, args) = if p.get("sudo") == Some(&Value::Bool(true)) {
            // Allowed by the configuration (checked when prepared).
            let mut a = vec!["-n".to_string(), "-E".into(), "--".into()];
            a.push(program.to_string_lossy().into_owned());
            a.extend(args);
            (PathBuf::from("sudo"), a)
        } else {
            (program, args)
        };
        let mut withheld: Vec<String> = local::WITHHELD_ENV.iter().map(|s| s.to_string()).collect();
        withheld.extend(self.cfg.secret_env.iter().cloned());
        let spawn = local::Spawn {
            program,
            args,
            env,
            withheld,
            cwd: p.get("cwd").and_then(Value::as_str).map(PathBuf::from),
            timeout: Duration::from_secs(timeout.as_u64().unwrap_or(60)),
            grace: Duration::from_secs(self.cfg.kill_grace_seconds),
            output_cap: self.cfg.output_cap,
        };
        let ran = local::run(&spawn, ctx.cancel, ctx.output)
            .map_err(|e| format!("cannot start {}: {e}", spawn.program.display()))?;
        if let Some(msg) = ran.invalid_utf8 {
            return Err(msg);
        }
        let (status, mut result) = local::result(&ran.ended, &timeout, false);
        if ran.dropped != (0, 0) {
            result["truncated"] = json!({
                "cap_bytes": self.cfg.output_cap,
                "stdout_dropped_bytes": ran.dropped.0,
                "stderr_dropped_bytes": ran.dropped.1,
            });
        }
        let status = if ran.cancelled { "canceled" } else { status };
        Ok((status, result))
    }
}

/// How a script is started without a shell: its `#!` interpreter (what
/// `execve` would use, so no execute bit is needed, as st2 `chmod`s it),
/// else `/bin/sh`.
fn interpreter(script: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
    let first = std::fs::read(script)
        .ok()
        .and_then(|b| {
            b.strip_prefix(b"#!").map(|rest| {
                let end = rest.iter().position(|c| *c == b'\n').unwrap_or(rest.len());
                String::from_utf8_lossy(&rest[..end]).trim().to_string()
            })
        })
        .filter(|l| !l.is_empty());
    let mut argv = Vec::new();
    let program = match first {
        Some(line) => {
            let (prog, arg) = match line.split_once(char::is_whitespace) {
                Some((p, a)) => (p.to_string(), Some(a.trim().to_string())),
                None => (line, None),
            };
            argv.extend(arg);
            PathBuf::from(prog)
        }
        None => PathBuf::from("/bin/sh"),
    };
    argv.push(script.to_string_lossy().into_owned());
    argv.extend(args);
    (program, argv)
}

impl Action for PackAction {
    fn spec(&self) -> &ActionSpec {
        &self.meta.spec
    }

    fn version(&self) -> Option<String> {
        let dir = self.root.as_ref()?.canonicalize().ok()?;
        Some(dir.file_name()?.to_string_lossy().into_owned())
    }

    fn prepare(&self, params: Params) -> Result<Prepared, PrepareError> {
        // The version live now is the one that runs, even if the pack is
        // switched before the request is approved.
        let pack_dir = match &self.root {
            Some(r) => Some(r.canonicalize().map_err(|e| {
                PrepareError::Unavailable(format!(
                    "pack {} at {}: {e}",
                    self.meta.pack,
                    r.display()
                ))
            })?),
            None => None,
        };
        let rendered = self
            .render(&params, pack_dir.as_deref())
            .map_err(PrepareError::Invalid)?;
        self.check(&rendered, pack_dir.as_deref())
            .map_err(PrepareError::Invalid)?;
        let secrets = self.secret_values(&rendered);
        let shown = match &pack_dir {
            Some(d) if d.parent().and_then(Path::file_name) == Some(self.meta.pack.as_ref()) => {
                let commit = d
                    .file_name()
                    .map(|c| c.to_string_lossy())
                    .unwrap_or_default();
                vec![format!(
                    "{} at commit {}",
                    self.meta.pack,
                    &commit[..commit.len().min(12)]
                )]
            }
            _ => Vec::new(),
        };
        let shown_params = match secrets.value(&Value::Object(rendered.clone())) {
            Value::Object(m) => self.meta.spec.masked(&m),
            _ => unreachable!("an object stays an object"),
        };
        // What masking changed is rendered again from its default at run
        // time; the plan names it, so nothing else is ever re-rendered.
        let masked: Vec<&String> = shown_params
            .iter()
            .filter(|(k, v)| rendered.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        Ok(Prepared {
            plan: json!({ "pack_dir": pack_dir, "masked": masked }),
            params: shown_params,
            shown,
        })
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let pack_dir = ctx.plan["pack_dir"].as_str().map(PathBuf::from);
        if let Some(d) = &pack_dir
            && !d.is_dir()
        {
            return Outcome::failed(format!(
                "the pack version approved for this request ({}) is no longer on disk",
                d.display()
            ));
        }
        // What was masked when the request was made is rendered again from
        // its default (secrets never come from chat, so only defaults can
        // have been masked).
        let mut raw = params.clone();
        let masked = ctx.plan["masked"].as_array().cloned().unwrap_or_default();
        for name in masked.iter().filter_map(Value::as_str) {
            if let Some(d) = self.meta.spec.param(name).and_then(|p| p.default.clone()) {
                raw.insert(name.to_string(), d);
            }
        }
        let rendered = match self.render(&raw, pack_dir.as_deref()) {
            Ok(r) => r,
            Err(e) => return Outcome::failed(e),
        };
        let secrets = self.secret_values(&rendered);
        ctx.output.mask(secrets.clone());
        let (status, result) = match self.run_rendered(ctx, &rendered, pack_dir.as_deref()) {
            Ok(r) => r,
            Err(e) => ("failed", json!({ "error": e })),
        };
        let result = secrets::mask_result(
            self.meta.output_schema.as_ref(),
            self.meta.runner.name(),
            &result,
        );
        let result = secrets.value(&result);
        let summary = summary(status, &result, &rendered);
        let mut outcome = if status == "succeeded" {
            Outcome::ok(summary, result)
        } else {
            Outcome {
                status: Status::Failed,
                result,
                summary,
                deployed: Vec::new(),
                packs_changed: false,
                proofs: Vec::new(),
                remote: None,
            }
        };
        for p in self.meta.spec.params.iter().filter(|p| p.secret) {
            if let Some(v) = rendered.get(&p.name).filter(|v| !v.is_null()) {
                outcome
                    .proofs
                    .push((p.name.clone(), self.cfg.proof(&python::str_of(v))));
            }
        }
        outcome
    }
}

/// One line for the audit and default messages.
fn summary(status: &str, result: &Value, p: &Params) -> String {
    if let Some(e) = result.get("error").and_then(Value::as_str) {
        return format!("{status}: {e}");
    }
    if let Some(code) = result.get("status_code") {
        return format!("{status}: HTTP {code}");
    }
    match (status, result.get("return_code")) {
        ("canceled", _) => "cancelled while running".into(),
        ("timeout", _) => format!(
            "timed out after {}s",
            python::str_of(p.get("timeout").unwrap_or(&json!(60)))
        ),
        (s, Some(code)) => format!("{s} (exit code {code})"),
        (s, None) => s.to_string(),
    }
}
