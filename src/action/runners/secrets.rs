//! `secret: true`: which values a person or a file must never see, as
//! st2's `mask_secret_parameters` and `mask_secret_output` decide it.

use serde_json::{Map, Value};

/// What st2 writes in place of a secret.
pub const MASK: &str = "********";

/// Secret runner parameters, by runner.
pub fn runner_secrets(runner: &str) -> &'static [&'static str] {
    match runner {
        "local-shell-cmd" | "local-shell-script" => &["sudo_password"],
        "http-request" => &["password"],
        _ => &[],
    }
}

/// `params` with every secret masked: a parameter marked `secret` whole
/// (even when null), secret `properties` of objects and `items` of arrays
/// one by one; `runner` names the runner's own secret parameters.
pub fn mask_parameters(schema: &Map<String, Value>, runner: &str, params: &Value) -> Value {
    let Value::Object(params) = params else {
        return params.clone();
    };
    let mut out = Map::new();
    for (k, v) in params {
        let masked = if runner_secrets(runner).contains(&k.as_str()) {
            Value::String(MASK.into())
        } else {
            match schema.get(k) {
                Some(s) => mask_value(s, v),
                None => v.clone(),
            }
        };
        out.insert(k.clone(), masked);
    }
    Value::Object(out)
}

/// A runner's result with the secrets of the action's `output_schema`
/// masked in its output field (`body` for http-request; local runners
/// have none, so nothing in their result is masked).
pub fn mask_result(output_schema: Option<&Value>, runner: &str, result: &Value) -> Value {
    let (Some(schema), Some(key)) = (output_schema, output_key(runner)) else {
        return result.clone();
    };
    let mut out = result.clone();
    if let Some(v) = out.get_mut(key) {
        *v = mask_value(schema, v);
    }
    out
}

fn output_key(runner: &str) -> Option<&'static str> {
    (runner == "http-request").then_some("body")
}

/// `v` as `schema` says: all of it if secret, else its secret parts.
fn mask_value(schema: &Value, v: &Value) -> Value {
    if schema.get("secret") == Some(&Value::Bool(true)) {
        return Value::String(MASK.into());
    }
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let masked = match props.and_then(|p| p.get(k)) {
                            Some(s) => mask_value(s, v),
                            None => v.clone(),
                        };
                        (k.clone(), masked)
                    })
                    .collect(),
            )
        }
        Value::Array(items) => match schema.get("items") {
            Some(s) => Value::Array(items.iter().map(|v| mask_value(s, v)).collect()),
            None => v.clone(),
        },
        other => other.clone(),
    }
}

/// The secret values of one run, in every form a runner may write them:
/// the one place that masks what a run shows (its result, the keys of a
/// JSON object it printed, its live output).
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// These values (shorter than 3 characters: too common to mask).
    pub fn new(mut values: Vec<String>) -> Self {
        values.retain(|v| v.len() >= 3);
        values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        values.dedup();
        Secrets(values)
    }

    /// `s` with every secret masked.
    pub fn text(&self, s: &str) -> String {
        let mut s = s.to_string();
        for secret in &self.0 {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), MASK);
            }
        }
        s
    }

    /// `v` with every secret masked, in its strings and its keys.
    pub fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.value(v)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (self.text(k), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_strings_and_nested_values_are_masked() {
        let s = Secrets::new(vec!["hunter22".into(), "x".into()]);
        let v = json!({"hunter22": ["a hunter22 b", {"k": "hunter22"}], "x": 1});
        assert_eq!(
            s.value(&v),
            json!({"********": ["a ******** b", {"k": "********"}], "x": 1})
        );
    }
}
