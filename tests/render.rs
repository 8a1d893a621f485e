//! ack/result messages: every template in the alias corpus renders against
//! a sample execution; st2's strict/lenient split; the `{~}` split and HTML
//! escaping for Matrix.

use std::io::Write;
use std::path::PathBuf;

use airlock::alias;
use airlock::render::{self, Message};
use serde_json::{Value, json};

fn corpus() -> Option<Vec<alias::Alias>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/alias_corpus");
    if !dir.is_dir() {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {} not found ***\n",
            dir.display()
        );
        return None;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Some(
        files
            .iter()
            .map(|f| airlock::catalog::load_alias_file(f, None, "corpus").unwrap())
            .collect(),
    )
}

/// An execution as st2 would hand it to the templates: every parameter the
/// alias can produce is set, and the result has the usual runner shapes.
fn sample_execution(a: &alias::Alias, status: &str) -> Value {
    let mut params = serde_json::Map::new();
    for f in &a.formats {
        for r in &f.representations {
            for p in r.parameter_names() {
                params.insert(p.clone(), json!("sample"));
            }
        }
    }
    for (k, v) in &a.immutable_parameters {
        params.insert(k.clone(), v.clone());
    }
    json!({
        "id": "5f1a2b3c4d5e6f7a8b9c0d1e",
        "status": status,
        "action": {"ref": a.action_ref},
        "parameters": params,
        "result": {
            "stdout": "line one\nline two", "stderr": "", "return_code": 0,
            "succeeded": status == "succeeded", "failed": status != "succeeded",
            "result": {"message": "ok", "items": [1, 2], "total": 2},
            "localhost": {"stdout": "up", "stderr": "", "return_code": 0},
        },
        "context": {"user": "@alice:example.org", "api_user": "@alice:example.org", "source_channel": "!ops:example.org"},
        "start_timestamp": "2026-11-24T18:00:00Z",
        "end_timestamp": "2026-11-24T18:00:02Z",
        "elapsed_seconds": 2.0,
        "web_url": null,
    })
}

#[test]
fn every_corpus_template_renders_against_a_sample_execution() {
    let Some(aliases) = corpus() else { return };
    let mut acks = 0;
    let mut results = 0;
    for a in &aliases {
        for status in ["succeeded", "failed"] {
            let ex = sample_execution(a, status);
            if a.ack.as_ref().and_then(|s| s.format.as_ref()).is_some() {
                let text = render::ack(a, &ex).unwrap_or_default();
                // st2's own fixture for the strict-undefined error text.
                if a.name == "alias_with_undefined_jinja_in_ack_format" {
                    assert_eq!(
                        text,
                        "Cannot render \"format\" in field \"ack\" for alias. 'cmd' is undefined"
                    );
                } else {
                    assert!(
                        !text.starts_with("Cannot render"),
                        "{}: ack: {text}",
                        a.file.display()
                    );
                }
                acks += 1;
            }
            if let Some(text) = render::result(Some(a), &ex) {
                assert!(
                    !text.contains("result template failed"),
                    "{}: result: {text}",
                    a.file.display()
                );
                let m = Message::from_template_output(&text);
                assert!(m.html.is_some());
                results += 1;
            }
        }
    }
    assert!(acks >= 80, "{acks} ack renders");
    assert!(results >= 2 * 97, "{results} result renders");
    eprintln!("rendered {acks} acks and {results} results");
}

#[test]
fn ack_is_strict_and_result_is_lenient() {
    let yaml = "name: x\npack: p\naction_ref: core.echo\nformats: ['say {{ message }}']\nack:\n  format: 'Saying {{ nope }}'\nresult:\n  format: '{{ execution.result.missing.deeper }}done{~}{{ execution.parameters.message }}'\n";
    let a = alias::load::parse_alias(std::path::Path::new("x.yaml"), yaml, None, "p").unwrap();
    let ex = json!({"id": "1", "status": "succeeded", "action": {"ref": "core.echo"}, "parameters": {"message": "<b>hi</b>"}, "result": {}});
    assert_eq!(
        render::ack(&a, &ex).unwrap(),
        "Cannot render \"format\" in field \"ack\" for alias. 'nope' is undefined"
    );
    let m = Message::from_template_output(&render::result(Some(&a), &ex).unwrap());
    assert_eq!(m.body, "done\n<b>hi</b>");
    // User values reach the room as text, never as markup.
    assert_eq!(
        m.html.as_deref(),
        Some("done<pre><code>&lt;b&gt;hi&lt;/b&gt;</code></pre>")
    );
}

#[test]
fn disabled_blocks_send_nothing_and_defaults_exist() {
    let yaml = "name: x\npack: p\naction_ref: core.echo\nformats: ['say {{ message }}']\nack: {enabled: false}\nresult: {enabled: false}\n";
    let a = alias::load::parse_alias(std::path::Path::new("x.yaml"), yaml, None, "p").unwrap();
    let ex = json!({"id": "abc", "status": "succeeded", "action": {"ref": "core.echo"}, "result": {"stdout": "hi"}});
    assert!(render::ack(&a, &ex).is_none());
    assert!(render::result(Some(&a), &ex).is_none());
    let plain = alias::load::parse_alias(
        std::path::Path::new("y.yaml"),
        "name: y\npack: p\naction_ref: core.echo\nformats: ['hi']\n",
        None,
        "p",
    )
    .unwrap();
    assert!(render::ack(&plain, &ex).unwrap().contains("abc"));
    let text = render::result(Some(&plain), &ex).unwrap();
    assert!(
        text.starts_with("✅ Action core.echo succeeded") && text.contains("stdout: hi"),
        "{text}"
    );
}

#[test]
fn st2_filters_used_by_packs() {
    let yaml = r#"name: x
pack: p
action_ref: core.echo
formats: ['x']
result:
  format: >-
    {{ execution.result | to_json_string }}|{{ 'a"b' | json_escape }}|{{ 'v1.2.3' | regex_replace('v(\\d+)', 'ver\\1') }}|{{ 3725 | to_human_time_from_seconds }}|{{ '1.2.3' | version_bump_minor }}|{% for k, v in execution.result.iteritems() %}{{ k }}={{ v }}{% endfor %}
"#;
    let a = alias::load::parse_alias(std::path::Path::new("x.yaml"), yaml, None, "p").unwrap();
    let ex = json!({"id": "1", "status": "succeeded", "result": {"a": 1}});
    let text = render::result(Some(&a), &ex).unwrap();
    assert_eq!(text, r#"{"a":1}|a\"b|ver1.2.3|1h2m5s|1.3.0|a=1"#);
}
