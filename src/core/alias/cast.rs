//! Typing parsed parameters by the action's schema, as st2's alias
//! execution does (`cast_params`): the parser yields strings, actions take
//! arrays, booleans, numbers and objects.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// st2's parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A string.
    String,
    /// An integer.
    Integer,
    /// Any number.
    Number,
    /// true or false.
    Boolean,
    /// A list (from chat: comma-separated).
    Array,
    /// A mapping (from chat: JSON or a Python literal).
    Object,
}

impl ParamType {
    /// The type called `name` in st2's metadata.
    pub fn named(name: &str) -> Option<ParamType> {
        Some(match name {
            "string" => ParamType::String,
            "integer" => ParamType::Integer,
            "number" => ParamType::Number,
            "boolean" => ParamType::Boolean,
            "array" => ParamType::Array,
            "object" => ParamType::Object,
            _ => return None,
        })
    }

    /// Whether `v` is of this type.
    pub fn accepts(self, v: &serde_json::Value) -> bool {
        match self {
            ParamType::String => v.is_string(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Number => v.is_number(),
            ParamType::Boolean => v.is_boolean(),
            ParamType::Array => v.is_array(),
            ParamType::Object => v.is_object(),
        }
    }

    /// The type's name in st2's metadata.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Array => "array",
            ParamType::Object => "object",
        }
    }
}

/// Cast one value. Only strings are converted; values that already have a
/// structure (from `immutable_parameters`) and nulls pass through.
pub fn cast(name: &str, value: Value, ty: ParamType) -> Result<Value, String> {
    let Value::String(s) = value else {
        return Ok(value);
    };
    let fail = || {
        format!(
            "Failed to cast value \"{s}\" for parameter \"{name}\" of type \"{}\". Perhaps the value is of an invalid type?",
            ty.name()
        )
    };
    Ok(match ty {
        ParamType::String => Value::String(s),
        // st2: [v.strip() for v in value.split(",")]
        ParamType::Array => Value::Array(
            s.split(',')
                .map(|v| Value::String(v.trim().to_string()))
                .collect(),
        ),
        // st2: ast.literal_eval(value.capitalize()) — so true/false in any case.
        ParamType::Boolean => match s.to_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(fail()),
        },
        ParamType::Integer => Value::from(python_int(&s).ok_or_else(fail)?),
        ParamType::Number => {
            let f: f64 = s.trim().parse().map_err(|_| fail())?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(fail)?
        }
        ParamType::Object => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => v,
            _ => match python_literal(&s) {
                Some(v @ Value::Object(_)) => v,
                _ => return Err(fail()),
            },
        },
    })
}

/// Python's `int(str)`: surrounding whitespace, a sign, `_` between digits.
fn python_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let v: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -v } else { v })
}

/// A Python literal (`ast.literal_eval`) for the shapes chat users type:
/// dicts, lists, tuples, quoted strings, numbers, True/False/None.
pub fn python_literal(s: &str) -> Option<Value> {
    let mut p = Lit {
        c: s.chars().collect(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.i == p.c.len()).then_some(v)
}

struct Lit {
    c: Vec<char>,
    i: usize,
}

impl Lit {
    fn ws(&mut self) {
        while self.c.get(self.i).is_some_and(|c| c.is_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, ch: char) -> bool {
        self.ws();
        if self.c.get(self.i) == Some(&ch) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        match *self.c.get(self.i)? {
            '{' => {
                self.i += 1;
                let mut m = serde_json::Map::new();
                if self.eat('}') {
                    return Some(Value::Object(m));
                }
                loop {
                    let Value::String(k) = self.value()? else {
                        return None;
                    };
                    if !self.eat(':') {
                        return None;
                    }
                    m.insert(k, self.value()?);
                    if self.eat(',') {
                        if self.eat('}') {
                            break;
                        }
                    } else if self.eat('}') {
                        break;
                    } else {
                        return None;
                    }
                }
                Some(Value::Object(m))
            }
            open @ ('[' | '(') => {
                self.i += 1;
                let close = if open == '[' { ']' } else { ')' };
                let mut v = Vec::new();
                if self.eat(close) {
                    return Some(Value::Array(v));
                }
                loop {
                    v.push(self.value()?);
                    if self.eat(',') {
                        if self.eat(close) {
                            break;
                        }
                    } else if self.eat(close) {
                        break;
                    } else {
                        return None;
                    }
                }
                Some(Value::Array(v))
            }
            q @ ('\'' | '"') => {
                self.i += 1;
                let mut s = String::new();
                loop {
                    let ch = *self.c.get(self.i)?;
                    self.i += 1;
                    match ch {
                        '\\' => {
                            let e = *self.c.get(self.i)?;
                            self.i += 1;
                            s.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            });
                        }
                        c if c == q => break,
                        c => s.push(c),
                    }
                }
                Some(Value::String(s))
            }
            _ => {
                let start = self.i;
                while self
                    .c
                    .get(self.i)
                    .is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'))
                {
                    self.i += 1;
                }
                let word: String = self.c[start..self.i].iter().collect();
                match word.as_str() {
                    "True" => Some(Value::Bool(true)),
                    "False" => Some(Value::Bool(false)),
                    "None" => Some(Value::Null),
                    w => python_int(w).map(Value::from).or_else(|| {
                        w.parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(Value::Number)
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn st2_casting_rules() {
        assert_eq!(
            cast("p", json!("a, b ,c"), ParamType::Array).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            cast("p", json!("TRUE"), ParamType::Boolean).unwrap(),
            json!(true)
        );
        assert!(
            cast("p", json!("yes"), ParamType::Boolean)
                .unwrap_err()
                .contains("Failed to cast value \"yes\"")
        );
        assert_eq!(
            cast("p", json!(" 1_000 "), ParamType::Integer).unwrap(),
            json!(1000)
        );
        assert_eq!(
            cast("p", json!("2.5"), ParamType::Number).unwrap(),
            json!(2.5)
        );
        assert_eq!(
            cast("p", json!("{'a': [1, 'x']}"), ParamType::Object).unwrap(),
            json!({"a": [1, "x"]})
        );
        assert_eq!(
            cast("p", json!(["x"]), ParamType::Array).unwrap(),
            json!(["x"])
        );
    }
}
