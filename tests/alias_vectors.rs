//! StackStorm's own test vectors (tests/fixtures, copied from
//! ../shared/compat with their `source`), run against airlock's alias engine.

use std::path::Path;

use airlock::alias::{self, AliasSet, MatchError, cast::ParamType, load};
use serde_json::{Value, json};

fn vectors(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("vector is JSON"))
        .collect()
}

fn obj(v: &Value) -> alias::Params {
    v.as_object().cloned().unwrap_or_default()
}

fn types(v: &Value) -> impl Fn(&str) -> Option<ParamType> + '_ {
    move |k| {
        v.get("param_types")
            .and_then(|t| t.get(k))
            .map(|t| serde_json::from_value(t.clone()).expect("param type"))
    }
}

/// An alias built from a vector's inline definition, through the real loader.
fn alias_from_json(def: &Value) -> alias::Alias {
    let mut def = def.clone();
    let m = def.as_object_mut().unwrap();
    m.remove("_file");
    // st2's match_command_to_alias test uses a mock without an action.
    m.entry("action_ref").or_insert(json!("mock.action"));
    let yaml = serde_yaml::to_string(&def).unwrap();
    load::parse_alias(Path::new("vector.yaml"), &yaml, None, "vectors").expect("vector alias loads")
}

fn alias_with_formats(formats: &Value) -> alias::Alias {
    alias_from_json(
        &json!({"name": "v", "pack": "vectors", "action_ref": "x.y", "formats": formats}),
    )
}

/// The execution pipeline the bot runs after matching: immutable
/// parameters, then casting by the action's parameter types.
fn execute(v: &Value, parsed: alias::Params) -> Result<alias::Params, String> {
    let mut a = alias_with_formats(&json!([v["format"]]));
    if let Some(imm) = v.get("immutable_parameters") {
        a.immutable_parameters = obj(imm);
    }
    a.execution_parameters(parsed, &json!({}), types(v))
}

#[test]
fn parser_vectors() {
    let all = vectors("parser_vectors.jsonl");
    assert_eq!(all.len(), 97);
    for v in &all {
        assert_eq!(v["verified"], "ran st2 parser", "{v}");
        let format = v["format"].as_str().unwrap();
        let message = v["message"].as_str().unwrap();
        let src = &v["source"];
        if v.get("match_multiple") == Some(&Value::Bool(true)) {
            let a =
                alias_with_formats(&json!([{"representation": [format], "match_multiple": true}]));
            let got = a.extract_with_format(format, message).unwrap();
            let got: Vec<Value> = got.into_iter().map(Value::Object).collect();
            assert_eq!(Value::Array(got), v["expected"], "{src}");
            continue;
        }
        let got = alias::format::extract_parameters(format, message);
        if v["error"] == true {
            let e = got.expect_err(&format!("{src}: should not parse"));
            if let Some(m) = v.get("error_message") {
                assert_eq!(e, m.as_str().unwrap(), "{src}");
            }
            continue;
        }
        let parsed = got.unwrap_or_else(|e| panic!("{src}: {e}"));
        if v["level"] == "execution" {
            if let Some(pe) = v.get("parser_expected") {
                assert_eq!(Value::Object(parsed.clone()), *pe, "{src}: parser output");
            }
            let executed = execute(v, parsed).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(Value::Object(executed), v["expected"], "{src}");
        } else {
            assert_eq!(Value::Object(parsed), v["expected"], "{src}");
        }
    }
}

#[test]
fn derived_vectors_with_casting() {
    // packs.install's parameter types, from st2's install.meta.yaml.
    let install = |k: &str| match k {
        "packs" => Some(ParamType::Array),
        "force" | "skip_dependencies" => Some(ParamType::Boolean),
        "timeout" => Some(ParamType::Integer),
        _ => None,
    };
    for v in vectors("derived_vectors.jsonl") {
        let src = &v["source"];
        let got = alias::format::extract_parameters(
            v["format"].as_str().unwrap(),
            v["message"].as_str().unwrap(),
        );
        if v["error"] == true {
            assert!(got.is_err(), "{src} {}: should not parse", v["message"]);
            continue;
        }
        let parsed = got.unwrap();
        assert_eq!(
            Value::Object(parsed.clone()),
            v["expected"],
            "{}",
            v["message"]
        );
        if let Some(exec) = v.get("execution_expected") {
            let a = alias_with_formats(&json!([v["format"]]));
            let executed = a.execution_parameters(parsed, &json!({}), install).unwrap();
            assert_eq!(Value::Object(executed), *exec, "{}", v["message"]);
        }
    }
}

/// The wolfpack test actions' parameter types (st2tests fixtures).
fn wolfpack_types(k: &str) -> Option<ParamType> {
    (k == "array_param").then_some(ParamType::Array)
}

#[test]
fn match_vectors() {
    let all = vectors("match_vectors.jsonl");
    assert_eq!(all.len(), 67);
    let mut seen = std::collections::BTreeMap::new();
    for v in &all {
        let kind = v["kind"].as_str().unwrap();
        *seen.entry(kind.to_string()).or_insert(0) += 1;
        let command = v.get("command").and_then(Value::as_str).unwrap_or_default();
        match kind {
            // st2's pack-test helper: how many of an alias's formats match.
            "exactly_one_format_matches" => {
                let n = v["formats"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|f| {
                        alias::format::extract_parameters(f.as_str().unwrap(), command).is_ok()
                    })
                    .count();
                let want = match v["expected"].as_str().unwrap() {
                    "exactly_one" => n == 1,
                    "multiple" => n > 1,
                    _ => n == 0,
                };
                assert!(
                    want,
                    "{command}: {n} formats matched, expected {}",
                    v["expected"]
                );
            }
            "st2_match_api" | "st2_match_and_execute_api" | "st2_match_command_to_alias" => {
                let set = AliasSet::new(
                    v["aliases"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(alias_from_json)
                        .collect(),
                );
                match set.match_command(command) {
                    Err(e) => {
                        assert_eq!(v["error"], true, "{command}: unexpected {e}");
                        assert_eq!(e.to_string(), v["error_message"].as_str().unwrap());
                    }
                    Ok(m) => {
                        assert_eq!(v["error"], false, "{command}: matched {}", m.alias.name);
                        let exp = &v["expected"];
                        assert_eq!(m.alias.name, exp["alias"].as_str().unwrap(), "{command}");
                        if let Some(r) = exp.get("representation") {
                            assert_eq!(m.representation, r.as_str().unwrap());
                        }
                        if let Some(n) = exp.get("results") {
                            assert_eq!(m.parameters.len() as u64, n.as_u64().unwrap(), "{command}");
                        }
                        if let Some(want) = exp.get("parameters") {
                            let got: Vec<Value> = m
                                .parameters
                                .iter()
                                .map(|p| {
                                    Value::Object(
                                        m.alias
                                            .execution_parameters(
                                                p.clone(),
                                                &json!({}),
                                                wolfpack_types,
                                            )
                                            .unwrap(),
                                    )
                                })
                                .collect();
                            assert_eq!(Value::Array(got), *want, "{command}");
                        }
                    }
                }
            }
            "st2_aliasexecution_api" => {
                let a = alias_from_json(&v["aliases"][0]);
                let r = a.extract_with_format(v["request"]["format"].as_str().unwrap(), command);
                assert_eq!(r.unwrap_err(), v["error_message"].as_str().unwrap());
            }
            "st2_ack_render" => {
                let a = alias_from_json(&v["aliases"][0]);
                let set = AliasSet::new(vec![a]);
                let m = set.match_command(command).unwrap();
                assert_eq!(
                    Value::Object(m.parameters[0].clone()),
                    v["expected"]["parameters"]
                );
                let execution = json!({"id": "5f1", "status": "requested",
                    "action": {"ref": m.alias.action_ref}, "parameters": m.parameters[0]});
                let ack = airlock::render::ack(&*m.alias, &execution).unwrap();
                assert_eq!(ack, v["expected"]["message"].as_str().unwrap());
            }
            "inject_immutable" => {
                let mut a = alias_with_formats(&json!(["x"]));
                a.immutable_parameters = obj(&v["immutable_parameters"]);
                let r: Result<Vec<Value>, String> = v["exec_params"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        a.execution_parameters(obj(p), &json!({}), |_| None)
                            .map(Value::Object)
                    })
                    .collect();
                match r {
                    Ok(got) => assert_eq!(Value::Array(got), v["expected"]),
                    Err(e) => assert_eq!(e, v["error_message"].as_str().unwrap()),
                }
            }
            // The failing case is list_format_strings_rejects_non_string_formats.
            "list_format_strings" if v["error"] == true => {}
            "list_format_strings" => {
                let a = alias_from_json(
                    &json!({"name": "v", "pack": "p", "action_ref": "x.y", "formats": v["formats"]}),
                );
                let got: Vec<Value> = a
                    .formats
                    .iter()
                    .flat_map(|f| {
                        f.representations
                            .iter()
                            .map(|r| json!({"display": f.display, "representation": r.source}))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                assert_eq!(Value::Array(got), v["expected"]);
            }
            // hubot matches client-side (case-insensitive, first format
            // wins); airlock applies st2's server-side rule instead. Where
            // both formats match, st2 (and airlock) refuse as ambiguous.
            "hubot_client_match" => {
                let a = alias_with_formats(&v["formats"]);
                let set = AliasSet::new(vec![a]);
                match set.match_command(command) {
                    Ok(m) => {
                        assert_eq!(m.representation, v["expected"]["format"].as_str().unwrap())
                    }
                    Err(MatchError::Ambiguous { .. }) => {
                        assert!(v["notes"].as_str().unwrap().contains("more than 1 pattern"))
                    }
                    Err(e) => panic!("{command}: {e}"),
                }
            }
            "hubot_pretext_split" => {
                let data = &v["data"];
                let m = airlock::render::Message::from_template_output(
                    data["message"].as_str().unwrap(),
                );
                let exp = &v["expected"];
                let text = exp
                    .get("text")
                    .or_else(|| exp.get("plain_text"))
                    .map(|t| t.as_str().unwrap().to_string())
                    .unwrap_or_else(|| {
                        let a = &exp["attachments"][0];
                        format!(
                            "{}\n{}",
                            a["pretext"].as_str().unwrap(),
                            a["text"].as_str().unwrap()
                        )
                    });
                // hubot prefixes "user: " (or "<@user>: "); airlock replies to the command instead.
                let user = data["user"].as_str().unwrap();
                let text = text
                    .trim_start_matches(&format!("<@{user}>: "))
                    .trim_start_matches(&format!("{user}: "));
                assert_eq!(m.body, text);
            }
            other => panic!("unhandled vector kind {other}"),
        }
    }
    assert_eq!(seen.values().sum::<i32>(), 67);
}

#[test]
fn list_format_strings_rejects_non_string_formats() {
    let v = vectors("match_vectors.jsonl")
        .into_iter()
        .find(|v| v["kind"] == "list_format_strings" && v["error"] == true)
        .unwrap();
    let yaml = serde_yaml::to_string(
        &json!({"name": "v", "pack": "p", "action_ref": "x.y", "formats": v["formats"]}),
    )
    .unwrap();
    let errs = load::parse_alias(Path::new("bad.yaml"), &yaml, None, "p").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "formats[0]");
    assert_eq!(errs[0].message, v["error_message"].as_str().unwrap());
}
