//! st2's `render_final_params`, safely: templated defaults are rendered
//! over the other parameters and `config_context`, in dependency order;
//! values given in chat are data and never rendered (st2 renders any
//! supplied value containing `{{`, so chat text could read the pack's
//! config). A `cmd` template writes every value it interpolates so the
//! shell reads back exactly that value, wherever the placeholder stands
//! (`shell`); `{{ x | safe }}` opts out, which `airlock check` flags
//! unless the policy constrains `x`.

use std::sync::LazyLock;

use minijinja::value::Value as JValue;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::{python, shell};
use crate::action::{ActionSpec, check_value};
use crate::alias::Params;
use crate::alias::cast;

/// How interpolated values are written into a rendered string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// Python's `str()`, as st2 writes them.
    Plain,
    /// Python's `str()`, then written for where it stands in the shell
    /// text (`shell::substitute`).
    Shell,
}

/// The two environments, built once (an environment registers every filter).
static PLAIN: LazyLock<Environment<'static>> = LazyLock::new(|| env(Quoting::Plain));
static SHELL: LazyLock<Environment<'static>> = LazyLock::new(|| env(Quoting::Shell));

fn env(quoting: Quoting) -> Environment<'static> {
    let mut env = crate::render::environment(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(move |_| match quoting {
        Quoting::Plain => AutoEscape::None,
        Quoting::Shell => AutoEscape::Custom("shell".into()),
    });
    env.set_formatter(|out, state, value| {
        let text = python_str(value);
        if *state.auto_escape() == AutoEscape::None || value.is_safe() {
            out.write_str(&text)?;
        } else {
            // A marker now; the whole text is read as the shell will
            // read it before the value is written in.
            out.write_str(&shell::marker(&text))?;
        }
        Ok(())
    });
    env
}

/// Python's `str()` of a template value.
fn python_str(v: &JValue) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    if v.is_none() || v.is_undefined() {
        return "None".into();
    }
    match serde_json::to_value(v) {
        Ok(j) => python::str_of(&j),
        Err(_) => v.to_string(),
    }
}

/// Render one template over `ctx`.
pub fn render(
    template: &str,
    ctx: &Map<String, Value>,
    quoting: Quoting,
) -> Result<String, String> {
    let env = match quoting {
        Quoting::Plain => &*PLAIN,
        Quoting::Shell => &*SHELL,
    };
    let text = env
        .render_str(template, JValue::from(minijinja::value::Serde(ctx)))
        .map_err(|e| match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        })?;
    match quoting {
        Quoting::Plain => Ok(text),
        Quoting::Shell => shell::substitute(&text),
    }
}

/// Fill in `params` (validated: templated defaults still raw) by
/// rendering every templated default over the rest and `config`, in
/// dependency order; each result is cast to its parameter's type. The
/// parameters named in `shell` are rendered with [`Quoting::Shell`].
pub fn render_defaults(
    spec: &ActionSpec,
    params: &Params,
    config: &Value,
    shell: &[&str],
) -> Result<Params, String> {
    let templated: Vec<&str> = spec
        .params
        .iter()
        .filter(|p| p.templated_default() && params.get(&p.name) == p.default.as_ref())
        .map(|p| p.name.as_str())
        .collect();
    let mut done = params.clone();
    let mut todo: Vec<&str> = templated.clone();
    // Unset parameters are None to templates, as st2 has them.
    let mut ctx: Map<String, Value> = spec
        .params
        .iter()
        .map(|p| (p.name.clone(), Value::Null))
        .collect();
    for (k, v) in params {
        if !templated.contains(&k.as_str()) {
            ctx.insert(k.clone(), v.clone());
        }
    }
    ctx.insert("config_context".into(), config.clone());
    while !todo.is_empty() {
        let mut progressed = false;
        let mut last_err = String::new();
        for name in std::mem::take(&mut todo) {
            let p = spec.param(name).expect("declared");
            let Some(Value::String(template)) = &p.default else {
                continue;
            };
            // A default that names a parameter still to be rendered waits.
            let waits = templated
                .iter()
                .any(|o| *o != name && ctx.get(*o) == Some(&Value::Null) && mentions(template, o));
            if waits {
                todo.push(name);
                continue;
            }
            let quoting = if shell.contains(&name) {
                Quoting::Shell
            } else {
                Quoting::Plain
            };
            match render(template, &ctx, quoting) {
                Ok(text) => {
                    let v = match p.ty {
                        Some(ty) => cast::cast(name, Value::String(text), ty)?,
                        None => Value::String(text),
                    };
                    check_value(p, &v)?;
                    ctx.insert(name.to_string(), v.clone());
                    done.insert(name.to_string(), v);
                    progressed = true;
                }
                Err(e) => {
                    last_err = format!("the default of {name} does not render: {e}");
                    todo.push(name);
                }
            }
        }
        if !progressed && !todo.is_empty() {
            if last_err.is_empty() {
                last_err = format!("the defaults of {} refer to each other", todo.join(", "));
            }
            return Err(last_err);
        }
    }
    Ok(done)
}

/// Whether `template` mentions the variable `name` (a word match).
pub fn mentions(template: &str, name: &str) -> bool {
    template.match_indices(name).any(|(i, _)| {
        let before = template[..i].chars().next_back();
        let after = template[i + name.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !word(before) && !word(after) && before != Some('.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ParamSpec;
    use crate::alias::cast::ParamType;
    use serde_json::json;

    fn spec() -> ActionSpec {
        ActionSpec::new(
            "p.a",
            "",
            vec![
                ParamSpec::new("cmd", ParamType::String, "")
                    .default(json!("echo {{ msg }} {{ items }} {{ n }} {{ none }}")),
                ParamSpec::new("msg", ParamType::String, "").required(),
                ParamSpec::new("items", ParamType::Array, ""),
                ParamSpec::new("n", ParamType::Number, ""),
                ParamSpec::new("none", ParamType::String, ""),
                ParamSpec::new("url", ParamType::String, "")
                    .default(json!("{{ config_context.base }}/{{ path }}")),
                ParamSpec::new("path", ParamType::String, "").default(json!("{{ msg }}x")),
            ],
        )
    }

    #[test]
    fn a_cmd_template_quotes_every_value() {
        let params = spec()
            .validate(
                json!({"msg": "hi; touch /tmp/pwned", "items": "a,b", "n": "3"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
        let out =
            render_defaults(&spec(), &params, &json!({"base": "http://h"}), &["cmd"]).unwrap();
        assert_eq!(
            out["cmd"],
            "echo 'hi; touch /tmp/pwned' \"['a', 'b']\" 3.0 None"
        );
        // Defaults that depend on other defaults render after them.
        assert_eq!(out["url"], "http://h/hi; touch /tmp/pwnedx");
    }

    #[test]
    fn chat_values_are_never_rendered() {
        let params = spec()
            .validate(
                json!({"msg": "{{ config_context }}{% for x in [1] %}y{% endfor %}"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
        let out = render_defaults(&spec(), &params, &json!({"base": "secret"}), &["cmd"]).unwrap();
        assert_eq!(
            out["msg"],
            "{{ config_context }}{% for x in [1] %}y{% endfor %}"
        );
        assert_eq!(
            out["cmd"],
            "echo '{{ config_context }}{% for x in [1] %}y{% endfor %}' None None None"
        );
    }

    #[test]
    fn a_cycle_is_an_error() {
        let spec = ActionSpec::new(
            "p.a",
            "",
            vec![
                ParamSpec::new("a", ParamType::String, "").default(json!("{{ b }}")),
                ParamSpec::new("b", ParamType::String, "").default(json!("{{ a }}")),
            ],
        );
        let params = spec.validate(Map::new()).unwrap();
        let err = render_defaults(&spec, &params, &Value::Null, &[]).unwrap_err();
        assert!(err.contains("refer to each other"), "{err}");
    }
}
