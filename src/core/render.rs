//! Chat messages from alias `ack` and `result` templates (minijinja with
//! StackStorm's filters), the `{~}` split, and the plain/HTML pair sent to
//! Matrix.
//!
//! st2 renders `ack` strictly (an undefined variable becomes an error text
//! in place of the message) and `result` leniently. Both see `execution`;
//! `ack` also sees `actionalias`, `result` sees `alias`.

use std::sync::LazyLock;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

/// An alias's `ack` or `result` block.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct MessageSpec {
    /// `false` silences the message.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The Jinja template.
    #[serde(default)]
    pub format: Option<String>,
    /// st2 appends its web UI's link to the result; airlock appends the
    /// request's page when the web view is on, unless this is `false`.
    #[serde(default)]
    pub append_url: Option<bool>,
    /// Free-form data for chat adapters.
    #[serde(default)]
    pub extra: Option<serde_json::Value>,
}

/// What rendering needs of an alias, so this module does not depend on
/// the alias model (the alias module implements it).
pub trait Templated {
    /// The `ack` block, if any.
    fn ack_spec(&self) -> Option<&MessageSpec>;
    /// The `result` block, if any.
    fn result_spec(&self) -> Option<&MessageSpec>;
    /// The alias as templates see it (`actionalias`, `alias`).
    fn view(&self) -> serde_json::Value;
}

/// Upper bound on template work, so a pack's template cannot stall the bot.
const FUEL: u64 = 2_000_000;
/// Longest message body sent to a room.
pub const MAX_MESSAGE_CHARS: usize = 16_000;

static STRICT: LazyLock<Environment<'static>> =
    LazyLock::new(|| environment(UndefinedBehavior::Strict));
static LENIENT: LazyLock<Environment<'static>> =
    LazyLock::new(|| environment(UndefinedBehavior::Chainable));

pub(crate) fn environment(undefined: UndefinedBehavior) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("syntax config"),
    );
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(python_methods);
    filters::register(&mut env);
    env
}

/// Python methods templates call: `dict.items()`, Python 2's `iteritems()`,
/// `str.upper()` and the rest of minijinja-contrib's list.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let method = match method {
        "iteritems" => "items",
        "iterkeys" => "keys",
        "itervalues" => "values",
        m => m,
    };
    if value.is_undefined() && state.undefined_behavior() == UndefinedBehavior::Chainable {
        return Ok(Value::UNDEFINED);
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Whether `source` is a valid template (for alias loading).
pub fn check_template(source: &str) -> Result<(), String> {
    LENIENT
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| format!("invalid template: {}", describe(&e, source)))
}

/// The message of a render error in st2's words where we can: the
/// expression that was undefined is named.
fn describe(err: &Error, source: &str) -> String {
    if err.kind() == ErrorKind::UndefinedError
        && let Some(expr) = err.range().and_then(|r| source.get(r))
    {
        let expr = expr.trim();
        return match expr.rsplit_once('.') {
            Some((_, attr)) if !attr.is_empty() => {
                format!("'dict object' has no attribute '{attr}'")
            }
            _ => format!("'{expr}' is undefined"),
        };
    }
    let mut msg = err
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| err.kind().to_string());
    if let Some(line) = err.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// The ack text for an accepted command, or None when the alias disables
/// it. A render failure becomes st2's error text, as in st2.
pub fn ack(alias: &impl Templated, execution: &serde_json::Value) -> Option<String> {
    let spec = alias.ack_spec();
    if spec.and_then(|s| s.enabled) == Some(false) {
        return None;
    }
    let id = execution.get("id").and_then(|v| v.as_str()).unwrap_or("?");
    let Some(format) = spec.and_then(|s| s.format.as_deref()) else {
        return Some(format!(
            "I'll take it from here! Your request ID for reference is {id}"
        ));
    };
    let ctx = minijinja::context! {
        execution => Value::from(minijinja::value::Serde(execution)),
        actionalias => Value::from(minijinja::value::Serde(alias.view())),
    };
    Some(match STRICT.render_str(format, ctx) {
        Ok(s) => s,
        Err(e) => format!(
            "Cannot render \"format\" in field \"ack\" for alias. {}",
            describe(&e, format)
        ),
    })
}

/// The result text for a finished execution, or None when disabled.
/// `alias` is None for executions that did not come from an alias.
pub fn result<A: Templated>(alias: Option<&A>, execution: &serde_json::Value) -> Option<String> {
    let spec = alias.and_then(|a| a.result_spec());
    if spec.and_then(|s| s.enabled) == Some(false) {
        return None;
    }
    let format = spec
        .and_then(|s| s.format.as_deref())
        .unwrap_or(DEFAULT_RESULT);
    let ctx = minijinja::context! {
        execution => Value::from(minijinja::value::Serde(execution)),
        alias => Value::from(minijinja::value::Serde(alias.map(|a| a.view()))),
    };
    Some(match LENIENT.render_str(format, ctx) {
        Ok(s) => s,
        Err(e) => {
            // The execution still finished: say so even if the template broke.
            let status = execution
                .get("status")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            format!(
                "Request {} {status}. (The alias's result template failed: {})",
                execution.get("id").and_then(|v| v.as_str()).unwrap_or("?"),
                describe(&e, format)
            )
        }
    })
}

/// st2's `render_values` for `immutable_parameters`: strings are rendered
/// strictly; lists and objects are JSON-encoded, rendered and decoded.
pub fn render_value(
    value: &serde_json::Value,
    ctx: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let render = |src: &str| {
        STRICT
            .render_str(src, Value::from(minijinja::value::Serde(ctx)))
            .map_err(|e| describe(&e, src))
    };
    match value {
        serde_json::Value::String(s) => render(s).map(serde_json::Value::String),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            let encoded = serde_json::to_string(value).map_err(|e| e.to_string())?;
            let rendered = render(&encoded)?;
            serde_json::from_str(&rendered).map_err(|e| e.to_string())
        }
        other => Ok(other.clone()),
    }
}

/// st2's `default.j2`, in spirit: what ran, how it ended, what it returned.
/// Real emoji: Matrix clients do not expand Slack's `:x:` codes.
const DEFAULT_RESULT: &str = "\
{% if execution.status == 'succeeded' %}✅{% else %}❌{% endif %} \
Action {{ execution.action.ref }} {{ execution.status }}\
{% if execution.elapsed_seconds is number %} in {{ execution.elapsed_seconds | round(1) }}s{% endif %} \
(request {{ execution.id }}).\
{% if execution.result %}{~}{{ execution.result | to_yaml_string }}{% endif %}";

/// A message ready for a room: a plain body and an HTML rendition in which
/// every character of the text is escaped (no markup from templates,
/// parameters or results reaches the room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Plain text.
    pub body: String,
    /// HTML, every character of the text escaped.
    pub html: Option<String>,
    /// Fields of the event's content besides the text: structure only the
    /// bot writes (an audit checkpoint's), which nothing typed in a room
    /// can pass for.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    /// Plain text only.
    pub fn plain(text: impl Into<String>) -> Self {
        Message {
            body: truncate(text.into()),
            html: None,
            fields: Default::default(),
        }
    }

    /// With field `key` in its event's content.
    pub fn with_field(mut self, key: &str, value: serde_json::Value) -> Self {
        self.fields.insert(key.to_string(), value);
        self
    }

    /// Split on `{~}` as hubot does: the part before is the summary, the
    /// part after a block (shown preformatted); anything after a second
    /// `{~}` is dropped.
    pub fn from_template_output(text: &str) -> Self {
        let parts: Vec<&str> = text.split("{~}").collect();
        let (summary, block) = if parts.len() > 1 {
            (parts[0].trim(), parts[1].trim_matches('\n').trim_end())
        } else {
            ("", parts[0].trim())
        };
        if summary.is_empty() || block.is_empty() {
            let only = if summary.is_empty() { block } else { summary };
            return Message {
                body: truncate(only.to_string()),
                html: Some(lines_html(&truncate(only.to_string()))),
                fields: Default::default(),
            };
        }
        let block = block.replace("```", "");
        let block = block.trim_matches('\n');
        let body = truncate(format!("{summary}\n{block}"));
        let html = format!(
            "{}<pre><code>{}</code></pre>",
            lines_html(summary),
            escape_html(&truncate(block.to_string()))
        );
        Message {
            body,
            html: Some(html),
            fields: Default::default(),
        }
    }
}

/// A message cut to what a room takes, saying so (the whole result stays
/// in the audit log).
fn truncate(mut s: String) -> String {
    let total = s.chars().count();
    if total > MAX_MESSAGE_CHARS {
        s = s.chars().take(MAX_MESSAGE_CHARS).collect();
        s.push_str(&format!(
            "…\n[cut: {} more characters; the whole result is in the audit log]",
            total - MAX_MESSAGE_CHARS
        ));
    }
    s
}

fn lines_html(s: &str) -> String {
    escape_html(s).replace('\n', "<br/>")
}

/// Escape `&`, `<`, `>`, `"` and `'`.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// StackStorm's Jinja filters (`st2common/jinja/filters`).
mod filters {
    use super::*;

    pub fn register(env: &mut Environment<'static>) {
        env.add_filter("to_json_string", to_json_string);
        env.add_filter("to_yaml_string", to_yaml_string);
        env.add_filter("to_complex", to_complex);
        env.add_filter("from_json_string", from_json_string);
        env.add_filter("from_yaml_string", from_yaml_string);
        env.add_filter("json_escape", json_escape);
        env.add_filter("regex_match", regex_match);
        env.add_filter("regex_search", regex_search);
        env.add_filter("regex_replace", regex_replace);
        env.add_filter("regex_substring", regex_substring);
        env.add_filter("to_human_time_from_seconds", to_human_time_from_seconds);
        env.add_filter("use_none", use_none);
        env.add_filter("basename", basename);
        env.add_filter("dirname", dirname);
        env.add_filter("version_compare", version_compare);
        env.add_filter("version_more_than", |a: String, b: String| {
            Ok::<_, Error>(version_compare(a, b)? > 0)
        });
        env.add_filter("version_less_than", |a: String, b: String| {
            Ok::<_, Error>(version_compare(a, b)? < 0)
        });
        env.add_filter("version_equal", |a: String, b: String| {
            Ok::<_, Error>(version_compare(a, b)? == 0)
        });
        env.add_filter("version_bump_major", |v: String| bump(&v, 0));
        env.add_filter("version_bump_minor", |v: String| bump(&v, 1));
        env.add_filter("version_bump_patch", |v: String| bump(&v, 2));
        env.add_filter("version_strip_patch", |v: String| {
            let p = semver(&v)?;
            Ok::<_, Error>(format!("{}.{}", p[0], p[1]))
        });
    }

    fn bad(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidOperation, msg.into())
    }

    fn json(v: &Value) -> Result<serde_json::Value, Error> {
        serde_json::to_value(v).map_err(|e| bad(e.to_string()))
    }

    fn to_json_string(v: Value, kwargs: Kwargs) -> Result<String, Error> {
        let indent: Option<usize> = kwargs.get("indent")?;
        let _: Option<bool> = kwargs.get("sort_keys")?;
        kwargs.assert_all_used()?;
        let j = json(&v)?;
        match indent {
            Some(_) => serde_json::to_string_pretty(&j),
            None => serde_json::to_string(&j),
        }
        .map_err(|e| bad(e.to_string()))
    }

    fn to_yaml_string(v: Value) -> Result<String, Error> {
        if v.is_undefined() || v.is_none() {
            return Ok(String::new());
        }
        serde_yaml::to_string(&json(&v)?).map_err(|e| bad(e.to_string()))
    }

    fn to_complex(v: Value) -> Result<String, Error> {
        serde_json::to_string(&json(&v)?).map_err(|e| bad(e.to_string()))
    }

    fn from_json_string(s: String) -> Result<Value, Error> {
        let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| bad(e.to_string()))?;
        Ok(Value::from(minijinja::value::Serde(v)))
    }

    fn from_yaml_string(s: String) -> Result<Value, Error> {
        let v: serde_json::Value = serde_yaml::from_str(&s).map_err(|e| bad(e.to_string()))?;
        Ok(Value::from(minijinja::value::Serde(v)))
    }

    fn json_escape(s: String) -> String {
        let quoted = serde_json::to_string(&s).unwrap_or_default();
        quoted[1..quoted.len() - 1].to_string()
    }

    fn re(pattern: &str) -> Result<regex::Regex, Error> {
        // Python patterns: reuse the alias translator for `(?P<..>)`, `\Z`...
        let translated = crate::core::pyre::parse(pattern)
            .map(|p| p.rust)
            .map_err(|e| bad(format!("invalid regex {pattern:?}: {e}")))?;
        regex::Regex::new(&translated)
            .or_else(|_| regex::Regex::new(pattern))
            .map_err(|e| bad(format!("invalid regex {pattern:?}: {e}")))
    }

    fn regex_match(v: String, pattern: String) -> Result<bool, Error> {
        // re.match: anchored at the start only.
        Ok(re(&pattern)?.find(&v).is_some_and(|m| m.start() == 0))
    }

    fn regex_search(v: String, pattern: String) -> Result<bool, Error> {
        Ok(re(&pattern)?.is_match(&v))
    }

    fn regex_replace(v: String, pattern: String, replacement: String) -> Result<String, Error> {
        // Python's \1 backreferences become ${1}.
        let rep = regex::Regex::new(r"\\(\d+)")
            .expect("backref regex")
            .replace_all(&replacement, "$${$1}");
        Ok(re(&pattern)?.replace_all(&v, rep.as_ref()).into_owned())
    }

    fn regex_substring(v: String, pattern: String, index: Option<usize>) -> Result<String, Error> {
        let r = re(&pattern)?;
        let i = index.unwrap_or(0);
        r.find_iter(&v)
            .nth(i)
            .map(|m| m.as_str().to_string())
            .ok_or_else(|| bad(format!("regex_substring: no match {i} for {pattern:?}")))
    }

    fn to_human_time_from_seconds(v: Value) -> Result<String, Error> {
        let secs = f64::try_from(v).map_err(|_| bad("seconds must be a number"))? as u64;
        let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        let mut parts = Vec::new();
        for (n, unit) in [(d, "d"), (h, "h"), (m, "m")] {
            if n > 0 {
                parts.push(format!("{n}{unit}"));
            }
        }
        if s > 0 || parts.is_empty() {
            parts.push(format!("{s}s"));
        }
        Ok(parts.join(""))
    }

    fn use_none(v: Value) -> Value {
        if v.is_none() || v.is_undefined() {
            Value::from("%*****__%NONE%__*****%")
        } else {
            v
        }
    }

    fn basename(v: String) -> String {
        v.rsplit('/').next().unwrap_or_default().to_string()
    }

    fn dirname(v: String) -> String {
        match v.rfind('/') {
            Some(0) => "/".into(),
            Some(i) => v[..i].to_string(),
            None => String::new(),
        }
    }

    fn semver(v: &str) -> Result<[u64; 3], Error> {
        let core = v.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or_default();
        let nums: Vec<u64> = core
            .split('.')
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("{v:?} is not a semantic version")))?;
        if nums.len() != 3 {
            return Err(bad(format!("{v:?} is not a semantic version")));
        }
        Ok([nums[0], nums[1], nums[2]])
    }

    fn version_compare(a: String, b: String) -> Result<i64, Error> {
        Ok(match semver(&a)?.cmp(&semver(&b)?) {
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Greater => 1,
        })
    }

    fn bump(v: &str, part: usize) -> Result<String, Error> {
        let mut p = semver(v)?;
        p[part] += 1;
        for x in p.iter_mut().skip(part + 1) {
            *x = 0;
        }
        Ok(format!("{}.{}.{}", p[0], p[1], p[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_escapes_everything() {
        let m = Message::from_template_output("Deployed <b>x</b>{~}\nline & more\n");
        assert_eq!(m.body, "Deployed <b>x</b>\nline & more");
        assert_eq!(
            m.html.unwrap(),
            "Deployed &lt;b&gt;x&lt;/b&gt;<pre><code>line &amp; more</code></pre>"
        );
        let m = Message::from_template_output("only plain{~}");
        assert_eq!(m.body, "only plain");
    }
}
