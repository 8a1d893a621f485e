//! st2's local runners, against the answers st2's own code gave
//! (`../shared/compat/runner_vectors.jsonl`, `runners.md` §4–§6):
//! script arguments, result shaping and the status map, and real child
//! processes. Deliberate deviations are skipped by name, with the reason
//! (the README lists them); kinds not implemented yet are counted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use airlock::action::runners::local::{self, Ended, ScriptParam, Spawn};
use serde_json::{Map, Value};

fn vectors() -> Option<Vec<Value>> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/runner_vectors.jsonl");
    let text = std::fs::read_to_string(&path).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("vector"))
            .collect(),
    )
}

/// Vectors airlock answers differently on purpose, and why.
fn deviation(v: &Value) -> Option<&'static str> {
    let input = &v["input"];
    let expected = &v["expected"];
    // A result with a sudo password is still shaped as st2 shapes it.
    let sudo_password =
        v["kind"] != "result" && input.get("sudo_password").is_some_and(|p| !p.is_null());
    if input["sudo"] == true || sudo_password {
        return Some("sudo is refused unless the configuration allows it");
    }
    // st2 lets these spellings of a denied host through; airlock compares
    // the normalised host (`http.rs` tests each spelling).
    if [
        "http_host_check-159",
        "http_host_check-160",
        "http_host_check-163",
    ]
    .contains(&v["id"].as_str().unwrap_or_default())
    {
        return Some(
            "the host is compared normalised (userinfo, trailing dot, numeric IPv4), so this spelling no longer bypasses the deny list",
        );
    }
    match v["id"].as_str().unwrap_or_default() {
        "http_result-129" => {
            return Some(
                "response header names are reported in Title-Case (the HTTP stack lowercases them; st2 keeps the server's spelling)",
            );
        }
        "http_result-152" => {
            return Some(
                "core.http's auth string is refused with a message saying what to use instead (st2 fails with a TypeError)",
            );
        }
        "script_command-050" => {
            return Some(
                "a chat string for an array parameter is split on commas (st2's API would literal_eval it and fail)",
            );
        }
        "cmd_command-059" => {
            return Some(
                "a value given for cmd is data: it runs as given, never rendered as a template",
            );
        }
        "cmd_command-064" | "cmd_command-066" => {
            return Some(
                "values a cmd template interpolates are quoted as one shell word each (tested by cmd_templates_quote_values)",
            );
        }
        "http_result-153" => {
            return Some(
                "every redirect is checked against the host lists, so this one is refused",
            );
        }
        _ => {}
    }
    if expected["args"]
        .as_array()
        .and_then(|a| a.first())
        .is_some_and(|a| a == "sudo")
    {
        return Some("airlock runs actions as its own user, never through sudo -u");
    }
    None
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn schema_of(v: &Value) -> Vec<(String, ScriptParam)> {
    v["input"]["parameters_schema"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, s)| {
                    (
                        k.clone(),
                        ScriptParam {
                            ty: s["type"].as_str().map(str::to_string),
                            position: s["position"].as_u64(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn local_runners_answer_as_st2_does() {
    let Some(vectors) = vectors() else {
        println!("SKIPPED: ../shared/compat/runner_vectors.jsonl not found");
        return;
    };
    let mut passed: BTreeMap<String, usize> = BTreeMap::new();
    let mut deviated: BTreeMap<String, usize> = BTreeMap::new();
    let mut pending: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for v in &vectors {
        let kind = v["kind"].as_str().unwrap_or("?").to_string();
        let id = v["id"].as_str().unwrap_or("?");
        let input = &v["input"];
        let expected = &v["expected"];
        if let Some(why) = deviation(v) {
            *deviated.entry(kind).or_default() += 1;
            println!("deviation {id}: {why}");
            continue;
        }
        let ok = match kind.as_str() {
            "script_command" if expected.get("error").is_some() => {
                // st2 rejects the value while casting it; so does airlock,
                // with its own message.
                match validated(v) {
                    Err(_) => Ok(()),
                    Ok(p) => Err(format!("accepted {p:?}")),
                }
            }
            "script_command" => {
                let params: Map<String, Value> = expected["action_params"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let op = input["kwarg_op"].as_str().unwrap_or("--");
                let args = local::script_args(&params, &schema_of(v), op);
                let want: Vec<String> = expected["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .skip(1)
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
                (args == want)
                    .then_some(())
                    .ok_or(format!("{args:?} != {want:?}"))
            }
            "result" => {
                let ended = Ended {
                    exit_code: input["exit_code"].as_i64().unwrap(),
                    stdout: input["stdout"].as_str().unwrap().into(),
                    stderr: input["stderr"].as_str().unwrap().into(),
                    timed_out: input["timed_out"] == true,
                };
                let sudo = input.get("sudo_password").is_some_and(|p| !p.is_null());
                let (status, result) = local::result(&ended, &input["timeout"], sudo);
                (status == expected["status"] && result == expected["result"])
                    .then_some(())
                    .ok_or(format!("{status} {result} != {}", expected))
            }
            "result_status_map" => {
                let map = expected["map"].as_object().unwrap();
                let all = map.iter().all(|(code, status)| {
                    local::status_for(code.parse().unwrap()) == status.as_str().unwrap()
                }) && local::status_for(7) == expected["default"]
                    && local::TIMEOUT_EXIT_CODE == expected["timeout_exit_code"];
                all.then_some(()).ok_or("status map differs".into())
            }
            "result_process" => {
                let spawn = Spawn {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), input["cmd"].as_str().unwrap().into()],
                    env: vec![
                        ("ST2_ACTION_PACK_NAME".into(), "vectors".into()),
                        ("ST2_ACTION_DEBUG".into(), "False".into()),
                    ],
                    withheld: Vec::new(),
                    cwd: input["cwd"].as_str().map(PathBuf::from),
                    timeout: Duration::from_secs(input["timeout"].as_u64().unwrap_or(60)),
                    grace: Duration::from_secs(5),
                    output_cap: 1 << 20,
                };
                let ran = local::run(&spawn, &AtomicBool::new(false), &Default::default()).unwrap();
                match (&ran.invalid_utf8, expected.get("raises")) {
                    (Some(msg), Some(raises)) => (raises["message"] == msg.as_str())
                        .then_some(())
                        .ok_or(format!("{msg} != {raises}")),
                    (None, None) => {
                        let (status, result) = local::result(&ran.ended, &input["timeout"], false);
                        (status == expected["status"] && result == expected["result"])
                            .then_some(())
                            .ok_or(format!("{status} {result} != {expected}"))
                    }
                    (got, want) => Err(format!("{got:?} vs {want:?}")),
                }
            }
            "http_host_check" => {
                let got = airlock::action::runners::http::check_host(
                    input["url"].as_str().unwrap(),
                    &strings(&input["url_hosts_blacklist"]),
                    &strings(&input["url_hosts_whitelist"]),
                );
                match (got, expected["allowed"].as_bool()) {
                    (Ok(()), Some(true)) => Ok(()),
                    (Err(msg), Some(false)) if expected["raises"]["message"] == msg.as_str() => {
                        Ok(())
                    }
                    (got, _) => Err(format!("{got:?} != {expected}")),
                }
            }
            "mask_secrets" => {
                use airlock::action::runners::secrets;
                let schema = input["action_parameters_schema"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let runner = input["runner"].as_str().unwrap();
                let params = secrets::mask_parameters(&schema, runner, &input["parameters"]);
                let result = secrets::mask_result(
                    input.get("action_output_schema").filter(|s| !s.is_null()),
                    runner,
                    &input["result"],
                );
                (params == expected["parameters"]
                    && params == expected["liveaction_parameters"]
                    && result == expected["result"])
                    .then_some(())
                    .ok_or(format!("{params} {result} != {expected}"))
            }
            "http_result" => http_case(v),
            "cmd_command" => cmd_case(v).and_then(|(cmd, runner)| {
                let want_runner = &expected["runner_params"];
                let same = |k: &str| runner.get(k).unwrap_or(&Value::Null) == &want_runner[k];
                (cmd == expected["command"] && same("cwd") && same("env") && same("timeout"))
                    .then_some(())
                    .ok_or(format!("{cmd} {runner:?} != {expected}"))
            }),
            _ => {
                *pending.entry(kind).or_default() += 1;
                continue;
            }
        };
        match ok {
            Ok(()) => *passed.entry(kind).or_default() += 1,
            Err(e) => failures.push(format!("{id} ({}): {e}", v["note"])),
        }
    }
    println!("passed: {passed:?}");
    println!("deliberate deviations: {deviated:?}");
    println!("not implemented yet: {pending:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every vector of the implemented kinds was checked or named a deviation.
    assert_eq!(passed.get("result"), Some(&33), "{passed:?}");
    assert!(
        passed.get("script_command").copied().unwrap_or(0) >= 30,
        "{passed:?}"
    );
    assert_eq!(passed.get("result_process"), Some(&10), "{passed:?}");
    assert_eq!(passed.get("mask_secrets"), Some(&5), "{passed:?}");
    assert_eq!(passed.get("http_result"), Some(&25), "{passed:?}");
    assert_eq!(passed.get("cmd_command"), Some(&3), "{passed:?}");
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(
        passed.get("http_host_check").copied().unwrap_or(0)
            + deviated.get("http_host_check").copied().unwrap_or(0),
        12,
        "{passed:?} {deviated:?}"
    );
}

/// A vector's values validated against its parameters, as a
/// `local-shell-script` action declares them.
fn validated(v: &Value) -> Result<Map<String, Value>, String> {
    let meta = serde_json::json!({
        "name": "vector_action",
        "runner_type": "local-shell-script",
        "entry_point": "script.sh",
        "parameters": v["input"]["parameters_schema"],
    });
    let meta = airlock::action::metadata::parse(
        std::path::Path::new("vector.yaml"),
        &meta.to_string(),
        "vectors",
        &|_| false,
    )
    .map_err(|e| format!("{e:?}"))?
    .ok_or("not loaded")?;
    meta.spec.validate(
        v["input"]["values"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

/// The command line a `cmd_command` vector's action renders, with the
/// rendered parameters.
fn cmd_case(v: &Value) -> Result<(String, Map<String, Value>), String> {
    use airlock::action::metadata;
    use airlock::action::runners::params;
    let input = &v["input"];
    let meta = serde_json::json!({
        "name": "vector_action",
        "runner_type": "local-shell-cmd",
        "parameters": input["parameters_schema"],
    });
    let meta = metadata::parse(
        std::path::Path::new("vector.yaml"),
        &meta.to_string(),
        "vectors",
        &|_| false,
    )
    .map_err(|e| format!("{e:?}"))?
    .ok_or("not loaded")?;
    let mut given: Map<String, Value> = input["values"].as_object().cloned().unwrap_or_default();
    for k in ["cmd", "env", "cwd", "timeout"] {
        if let Some(x) = input.get(k).filter(|x| !x.is_null()) {
            given.insert(k.into(), x.clone());
        }
    }
    let valid = meta.spec.validate(given)?;
    let rendered = params::render_defaults(&meta.spec, &valid, &Value::Null, &["cmd"])?;
    let cmd = rendered["cmd"].as_str().unwrap_or_default().to_string();
    Ok((cmd, rendered))
}

#[test]
fn cmd_templates_quote_values() {
    let Some(vectors) = vectors() else {
        return;
    };
    let quoted: BTreeMap<&str, &str> = [
        ("cmd_command-059", "echo {{ 1 + 1 }} {{ 'x' | upper }}"),
        ("cmd_command-064", "echo 'hi; touch /tmp/pwned'"),
        (
            "cmd_command-066",
            "run \"['a', 'b']\" \"{'k': 'v'}\" True 3.0 None",
        ),
    ]
    .into();
    for v in &vectors {
        if let Some(want) = quoted.get(v["id"].as_str().unwrap()) {
            let (cmd, _) = cmd_case(v).unwrap();
            assert_eq!(cmd, *want, "{}", v["id"]);
        }
    }
}

/// What the loopback server saw of a request.
#[derive(Debug, Default)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// Serve one connection the way the vector's server answered: HTTP/1.0,
/// exactly its headers, the body, then close. A vector with
/// `server_sleep` is never answered: the client gives up first.
fn serve_once(listener: &TcpListener, input: &Value) -> Seen {
    let (mut conn, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut seen = Seen::default();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    seen.method = parts.next().unwrap_or_default().into();
    seen.target = parts.next().unwrap_or_default().into();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().unwrap();
        }
        seen.headers.push((k.into(), v.trim().into()));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    seen.body = String::from_utf8(body).unwrap();
    if input.get("server_sleep").is_some() {
        // Hold the connection until the client closes it.
        let _ = reader.read(&mut [0u8; 1]);
        return seen;
    }
    let code = input["status_code"].as_u64().unwrap();
    let mut head = format!("HTTP/1.0 {code} Vector\r\n");
    for (k, v) in input["headers"].as_object().unwrap() {
        head.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap()));
    }
    for kv in input["extra_header_lines"].as_array().into_iter().flatten() {
        head.push_str(&format!(
            "{}: {}\r\n",
            kv[0].as_str().unwrap(),
            kv[1].as_str().unwrap()
        ));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(input["body"].as_str().unwrap().as_bytes())
        .unwrap();
    seen
}

/// One `http_result` vector against a real loopback server.
fn http_case(v: &Value) -> Result<(), String> {
    use airlock::action::runners::http::{Request, USER_AGENT};
    let input = &v["input"];
    let expected = &v["expected"];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = input["url"]
        .as_str()
        .unwrap()
        .replace("18765", &port.to_string());
    let mut params = input["action_values"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    params.insert("url".into(), Value::String(url));
    let server = {
        let input = input.clone();
        std::thread::spawn(move || serve_once(&listener, &input))
    };
    let req = Request::from_params(&params, "http").map_err(|e| format!("refused: {e}"))?;
    let got = req.send();
    let seen = server.join().unwrap();
    let (status, result) = got.map_err(|e| format!("not sent: {e}"))?;
    let want_result = serde_json::to_string(&expected["result"])
        .unwrap()
        .replace("18765", &port.to_string());
    let want_result: Value = serde_json::from_str(&want_result).unwrap();
    if status != expected["status"] || result != want_result {
        return Err(format!("{status} {result} != {expected}"));
    }
    let want = &expected["request_seen"];
    let header = |name: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    for (k, v) in want["headers"].as_object().unwrap() {
        // airlock names itself; st2 says st2/v<version>.
        let v = if k == "User-Agent" {
            USER_AGENT
        } else {
            v.as_str().unwrap()
        };
        if header(k) != Some(v) {
            return Err(format!("header {k}: {:?} != {v}", header(k)));
        }
    }
    if seen.method != want["method"] || seen.target != want["target"] || seen.body != want["body"] {
        return Err(format!("request {seen:?} != {want}"));
    }
    Ok(())
}
