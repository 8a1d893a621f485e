//! Handing actions to a StackStorm cluster: what must hold for every value
//! airlock sends there.
//!
//! StackStorm renders every parameter value that holds Jinja (`{{`, `{%`)
//! with its datastore in scope (`st2kv.system.*`), before the action runs.
//! A value typed in chat, sent as is, would be rendered there: `{{
//! st2kv.system.db_password }}` would come back in the result. So chat
//! values reach st2 as [`literal`]s: text st2's renderer turns back into
//! exactly the value typed, and nothing else.

use serde_json::Value;

/// `value` (a string, or strings inside arrays and objects) written so
/// that Jinja renders it to itself: every `{{`, `{%` and `{#` becomes an
/// expression printing those two characters (`{{ '{%' }}`). No other
/// delimiter can open a tag, so nothing the value holds is evaluated;
/// values without them are left as they are (st2 does not render those).
pub fn literal(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(literal_str(s)),
        Value::Array(items) => Value::Array(items.iter().map(literal).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), literal(v))).collect())
        }
        other => other.clone(),
    }
}

fn literal_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some(&next @ ('{' | '%' | '#'))) => {
                chars.next();
                out.push_str("{{ '{");
                out.push(next);
                out.push_str("' }}");
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jinja_openers_become_expressions_and_the_rest_stays() {
        assert_eq!(
            literal(&json!("{{ st2kv.system.db_password }}")),
            json!("{{ '{{' }} st2kv.system.db_password }}")
        );
        assert_eq!(
            literal(&json!("{% raw %}x{# c #}")),
            json!("{{ '{%' }} raw %}x{{ '{#' }} c #}")
        );
        // "{{{" is "{{" then "{".
        assert_eq!(literal(&json!("{{{")), json!("{{ '{{' }}{"));
        assert_eq!(literal(&json!("plain }} %} #}")), json!("plain }} %} #}"));
        assert_eq!(
            literal(&json!({"a": ["{{x}}", 1, true], "b": null})),
            json!({"a": ["{{ '{{' }}x}}", 1, true], "b": null})
        );
    }
}
