//! Property targets for every text path a chat message or a file takes:
//! each runs `cases` generated inputs through one function and checks what
//! must hold for any input (first of all: no panic). `tests/properties.rs`
//! runs them briefly in the test suite; `benches/fuzz.rs` runs them for
//! over a million cases and prints the counts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{Value, json};

use airlock::alias::cast::{self, ParamType};
use airlock::alias::{self, AliasSet, Command, Format};
use airlock::engine::{self, Settings};
use airlock::render::{self, Message};
use airlock::{matrix, policy};

/// A target: its name and how to run it for a number of cases.
pub struct Target {
    pub name: &'static str,
    pub run: fn(u32),
    /// Relative cost, so a run of N cases spends them where they are cheap.
    pub heavy: bool,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "normalize_command",
        run: normalize_command,
        heavy: false,
    },
    Target {
        name: "command_text (prefix and names)",
        run: command_text,
        heavy: false,
    },
    Target {
        name: "reply fallback stripping",
        run: reply_fallback,
        heavy: false,
    },
    Target {
        name: "parameter casting",
        run: casting,
        heavy: false,
    },
    Target {
        name: "html escaping and {~} messages",
        run: html,
        heavy: false,
    },
    Target {
        name: "identifier grammar",
        run: identifiers,
        heavy: false,
    },
    Target {
        name: "lock names rendered from chat values",
        run: lock_names,
        heavy: false,
    },
    Target {
        name: "alias format parse + extract",
        run: format_parser,
        heavy: true,
    },
    Target {
        name: "alias matching over the shipped aliases",
        run: matcher,
        heavy: true,
    },
    Target {
        name: "template rendering",
        run: templates,
        heavy: true,
    },
    Target {
        name: "audit query strings (the web search, /audit.jsonl)",
        run: audit_queries,
        heavy: false,
    },
    Target {
        name: "web pages over arbitrary text",
        run: web_pages,
        heavy: true,
    },
    Target {
        name: "alias YAML (random and truncated)",
        run: alias_yaml,
        heavy: true,
    },
    Target {
        name: "policy YAML (random and truncated)",
        run: policy_yaml,
        heavy: true,
    },
];

/// Where generation starts: fixed in the test suite, so CI is repeatable;
/// `AIRLOCK_FUZZ_SEED` (the fuzz bench sets a fresh one) to explore.
fn seed() -> RngSeed {
    match std::env::var("AIRLOCK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => RngSeed::Fixed(s),
        None => RngSeed::Fixed(0xA1_2C0C),
    }
}

fn run<S: Strategy>(cases: u32, strategy: S, check: impl Fn(S::Value)) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: seed(),
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |v| {
        check(v);
        Ok(())
    }) {
        panic!("{e}");
    }
}

/// Characters that have broken text handling somewhere: case changes that
/// change byte length (Kelvin sign, dotted I), quotes, braces, separators.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => prop::sample::select(vec![
            'k', 'K', '\u{212a}', '\u{130}', 'ß', 'ﬃ', 'a', 'i', 'r', 'l', 'o', 'c',
            ':', ',', '!', '@', '#', '=', ' ', '\t', '\n', '\u{a0}', '\u{201c}', '\u{2019}',
            '"', '\'', '{', '}', '%', '~', '>', '<', '&', '\\', '(', ')', '[', ']', '*', '?',
            '|', '.', '$', '^', '\0',
        ]),
    ]
}

/// Arbitrary Unicode, biased toward the tricky characters.
pub fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..80).prop_map(String::from_iter)
}

/// Text built from pieces that mean something to a format or template.
fn pieces(vocab: Vec<&'static str>) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![3 => prop::sample::select(vocab).prop_map(str::to_string), 1 => text()],
        0..12,
    )
    .prop_map(|v| v.concat())
}

pub fn normalize_command(cases: u32) {
    run(cases, text(), |s| {
        let n = alias::normalize_command(&s);
        assert_eq!(n.chars().count(), s.chars().count());
        assert_eq!(alias::normalize_command(&n), n);
    });
}

pub fn command_text(cases: u32) {
    let names = prop::collection::vec(
        prop::collection::vec(tricky_char(), 1..8).prop_map(String::from_iter),
        0..3,
    );
    run(
        cases,
        (text(), names, any::<bool>()),
        |(body, names, addressed)| {
            let settings = Settings {
                names: names.into_iter().chain(["airlock".to_string()]).collect(),
                bot_user: Some("@airlock:example.org".into()),
                ..Settings::default()
            };
            if let Some(cmd) = engine::command_text(&settings, &body, addressed) {
                assert!(!cmd.is_empty());
                assert_eq!(cmd.trim(), cmd);
            }
            // Any name the text starts with, in any case, strips on a boundary.
            for prefix in ["airlock", "AIRLOCK", "airlocK", "\u{130}"] {
                if let Some(rest) = engine::strip_prefix_caseless(&body, prefix) {
                    assert!(body.ends_with(rest));
                }
            }
        },
    );
}

pub fn reply_fallback(cases: u32) {
    let quoted = prop::collection::vec(
        prop_oneof![
            text(),
            text().prop_map(|t| format!("> {t}")),
            Just(">".to_string())
        ],
        0..6,
    )
    .prop_map(|v| v.join("\n"));
    run(cases, quoted, |s| {
        let rest = matrix::strip_reply_fallback(&s);
        assert!(s.ends_with(rest), "not a suffix");
    });
}

pub fn casting(cases: u32) {
    let ty = prop::sample::select(vec![
        ParamType::String,
        ParamType::Integer,
        ParamType::Number,
        ParamType::Boolean,
        ParamType::Array,
        ParamType::Object,
    ]);
    let value = prop_oneof![
        text(),
        pieces(vec![
            "1", "-", ".", "e", "0x", "true", "False", "[", "]", "{", "}", ",", "\"", "None",
            "1e999"
        ]),
    ];
    run(cases, (value, ty), |(s, ty)| {
        let _ = cast::python_literal(&s);
        if let Ok(v) = cast::cast("p", Value::String(s), ty) {
            let ok = match ty {
                ParamType::String => v.is_string(),
                ParamType::Integer => v.is_i64() || v.is_u64() || v.is_string(),
                ParamType::Number => v.is_number() || v.is_string(),
                ParamType::Boolean => v.is_boolean() || v.is_string(),
                ParamType::Array => v.is_array() || v.is_string(),
                ParamType::Object => v.is_object() || v.is_string(),
            };
            assert!(ok, "{ty:?} gave {v}");
        }
    });
}

pub fn html(cases: u32) {
    run(
        cases,
        pieces(vec!["{~}", "<script>", "</pre>", "```", "&amp;", "\n"]),
        |s| {
            let escaped = render::escape_html(&s);
            assert!(!escaped.contains(['<', '>', '"', '\'']));
            let m = Message::from_template_output(&s);
            if let Some(html) = &m.html {
                let bare = html
                    .replace("<br/>", "")
                    .replace("<pre><code>", "")
                    .replace("</code></pre>", "");
                assert!(!bare.contains('<'), "markup leaked: {html}");
            }
            assert!(m.body.chars().count() <= 16_001);
        },
    );
}

pub fn identifiers(cases: u32) {
    let id = pieces(vec![
        "@",
        "!",
        "#",
        ":",
        "example.org",
        "[::1]",
        ":8448",
        "*",
        "?",
    ]);
    run(cases, id, |s| {
        let k = airlock::ids::kind(&s);
        if k.is_some() {
            assert!(s.len() <= 255 && !s.contains(char::is_whitespace));
        }
        let _ = airlock::ids::is_user_glob(&s) || airlock::ids::is_room_glob(&s);
    });
}

/// A chat value rendered into a rule's lock template (`deploy/{{ env }}`)
/// either refuses the request or gives a name of only letters, digits and
/// `. _ - / : @`, at most 100 long: nothing else reaches a sled key, a
/// message or a log as a lock name.
pub fn lock_names(cases: u32) {
    static POLICY: LazyLock<policy::Policy> = LazyLock::new(|| {
        policy::parse_texts(&[(
            PathBuf::from("p.yaml"),
            "rules:\n  - id: r\n    effect: allow\n    users: ['@a:x']\n    packs: [p]\n    lock: \"deploy/{{ env }}\"\n".into(),
        )])
        .policy
    });
    let mut prod = serde_json::Map::new();
    prod.insert("env".into(), json!("prod"));
    let spec = POLICY
        .lock_for("r", &prod)
        .unwrap()
        .expect("the rule's lock");
    assert_eq!(spec.name, "deploy/prod");
    let value = pieces(vec![
        "prod", "{{", "}}", "{%", "/", "..", "\0", "\n", " ", "é", "x",
    ]);
    run(cases, value, |v| {
        let mut params = serde_json::Map::new();
        params.insert("env".into(), Value::String(v));
        if let Ok(Some(spec)) = POLICY.lock_for("r", &params) {
            let n = &spec.name;
            assert!(!n.is_empty() && n.len() <= 100, "{n:?}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c)),
                "{n:?}"
            );
        }
    });
}

pub fn format_parser(cases: u32) {
    let format = pieces(vec![
        "{{ branch }}",
        "{{x=1}}",
        "{{ y = \"a b\" }}",
        "{{",
        "}}",
        "deploy ",
        "(?P<n>a)",
        "(",
        ")",
        "|",
        "[!.]",
        "\\",
        "*",
        "+?",
        "^",
        "$",
        "{1,3}",
        "(?i)",
        "(?=",
        "\\b",
    ]);
    let command = pieces(vec![
        "deploy ",
        "main",
        "x=1",
        " k=\"v w\"",
        "'q'",
        "{a}",
        "=",
        " ",
    ]);
    run(cases, (format, command), |(f, c)| {
        if let Ok(fmt) = Format::compile(&f) {
            let cmd = Command::new(&c);
            if let Ok(params) = fmt.extract(&cmd) {
                for v in params.values() {
                    assert!(v.is_string() || v.is_null(), "{v}");
                }
            }
            let _ = fmt.could_match(&cmd);
        }
    });
}

static SHIPPED: LazyLock<AliasSet> = LazyLock::new(|| {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    AliasSet::new(airlock::catalog::load_aliases(&[root.join("aliases")]).aliases)
});

pub fn matcher(cases: u32) {
    let command = pieces(vec![
        "flow deploy ",
        "main",
        "pack ",
        "list",
        "rollback ",
        "uninstall ",
        "st2-flow",
        " x=1",
        " branch=\"a b\"",
        "'",
        "\"",
    ]);
    run(cases, command, |c| {
        if let Ok(m) = SHIPPED.match_command(&alias::normalize_command(&c)) {
            assert!(!m.parameters.is_empty());
        }
    });
}

pub fn templates(cases: u32) {
    let template = pieces(vec![
        "{{ ",
        " }}",
        "{% ",
        " %}",
        "for x in range(5)",
        "endfor",
        "if ",
        "endif",
        "x",
        "user",
        "execution.result",
        "| to_json_string",
        "| regex_replace('a','b')",
        ".items()",
        "{#",
        "#}",
        "{{ user }}",
    ]);
    let ctx = json!({"user": "@alice:example.org", "execution": {"result": {"a": [1, 2]}}});
    run(cases, template, |t| {
        let _ = render::check_template(&t);
        let _ = render::render_value(&Value::String(t), &ctx);
    });
}

const ALIAS_DOC: &str = include_str!("../../aliases/flow_deploy.yaml");
const POLICY_DOC: &str = include_str!("../../policies/ops.yaml");

/// A valid document cut at any character, or with one character changed.
fn damaged(doc: &'static str) -> impl Strategy<Value = String> {
    let n = doc.chars().count();
    prop_oneof![
        (0..=n).prop_map(move |i| doc.chars().take(i).collect()),
        (0..n, tricky_char()).prop_map(move |(i, c)| {
            doc.chars()
                .enumerate()
                .map(|(j, d)| if i == j { c } else { d })
                .collect()
        }),
        pieces(vec![
            "---\n",
            "name: x\n",
            "formats:\n",
            "  - ",
            "{{ a }}",
            ": ",
            "\n  ",
            "[",
            "]",
            "&a ",
            "*a",
            "!!binary "
        ]),
    ]
}

fn assert_located(d: &airlock::diag::Diagnostic, path: &Path, text: &str) {
    assert_eq!(d.file, path, "{d}");
    assert!(d.to_string().starts_with(&path.display().to_string()));
    // Lines as YAML counts them: \r\n, \r and \n all end one. An error
    // at the end of the input may name the line after the last.
    let lines = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .split('\n')
        .count();
    assert!(d.line >= 1 && d.line <= lines + 1, "{d} in {lines} lines");
}

pub fn alias_yaml(cases: u32) {
    let path = Path::new("aliases/fuzzed.yaml");
    run(cases, damaged(ALIAS_DOC), |text| {
        if let Err(diags) = alias::load::parse_alias(path, &text, None, "default") {
            assert!(!diags.is_empty());
            for d in &diags {
                assert_located(d, path, &text);
            }
        }
    });
}

pub fn policy_yaml(cases: u32) {
    let path = PathBuf::from("policies/fuzzed.yaml");
    run(cases, damaged(POLICY_DOC), |text| {
        let loaded = policy::parse_texts(&[(path.clone(), text.clone())]);
        for d in &loaded.diagnostics {
            assert_located(d, &path, &text);
        }
        if loaded.has_errors() {
            assert!(
                loaded.policy.rules.is_empty(),
                "part of a broken policy kept"
            );
        }
    });
}

/// Every web page rendered with every text field from chat, a file or a
/// query (each made unique by a number, so equal values stay equal only
/// where they were) and again with plain names: the markup must be the
/// same. Escaping leaves no `<`, `>`, `"` or `'` of a value in the page,
/// so their counts, the page's elements and attribute boundaries, do not
/// depend on the values. Nothing may fail to render.
pub fn web_pages(cases: u32) {
    run(cases, prop::collection::vec(text(), 1..6), |texts| {
        let mut n = 0;
        let mut arbitrary = || {
            n += 1;
            format!("{}{n}", texts[n % texts.len()])
        };
        let hostile = web_contexts(&mut arbitrary);
        let mut m = 0;
        let mut plain = || {
            m += 1;
            format!("v{m}")
        };
        let benign = web_contexts(&mut plain);
        for ((name, hostile), (_, benign)) in hostile.into_iter().zip(benign) {
            let a = airlock::web::render(name, hostile)
                .unwrap_or_else(|e| panic!("{name} over {texts:?}: {e}"));
            let b = airlock::web::render(name, benign).unwrap();
            for c in ['<', '>', '"', '\''] {
                assert_eq!(
                    a.matches(c).count(),
                    b.matches(c).count(),
                    "{name}: {c:?} from a value reached the page ({texts:?}):\n{a}"
                );
            }
        }
    });
}

/// Each page's template and a context for it, every text taken from `v`.
fn web_contexts(v: &mut dyn FnMut() -> String) -> Vec<(&'static str, minijinja::Value)> {
    use airlock::engine::*;
    use minijinja::{Value, context};
    let deploy = |v: &mut dyn FnMut() -> String, rollback: bool, x: u64| WebDeploy {
        id: v(),
        status: v(),
        what: v(),
        commit: v(),
        version: Some(v()),
        rollback,
        summary: v(),
        by: v(),
        approvers: vec![v(), v()],
        at: v(),
        x,
    };
    let runs = vec![
        deploy(v, false, 0),
        deploy(v, true, 500),
        deploy(v, false, 1000),
    ];
    let overview = WebOverview {
        user: v(),
        open: vec![WebRow {
            id: v(),
            room: v(),
            state: v(),
            line: v(),
        }],
        recent: runs.clone(),
        audit: WebAuditState {
            head: v(),
            posted: v(),
            chain: v(),
            intact: Some(false),
        },
        locks: vec![WebLock {
            name: v(),
            held: Some(v()),
            queue: vec![v(), v()],
            others: 2,
        }],
    };
    let request = WebRequest {
        id: v(),
        room: v(),
        room_link: v(),
        command: Some(v()),
        command_link: Some(v()),
        requester: Some(v()),
        alias: Some(v()),
        action: Some(v()),
        status: Some(v()),
        parameters: vec![WebParam {
            name: v(),
            value: v(),
        }],
        changes: vec![v()],
        plan: Some(WebPlan {
            action: v(),
            ok: false,
            output: v(),
            truncated: true,
        }),
        approvals: vec![WebApproval {
            user: v(),
            part: Some(v()),
            at: v(),
            device: Some(v()),
            verified: "cross-signed",
            link: Some(v()),
        }],
        outcome: Some(v()),
        deployed: vec![WebCommit {
            pack: v(),
            version: Some(v()),
            commit: v(),
            previous: Some(v()),
            source: Some(v()),
        }],
        output: vec![WebStream {
            name: "stdout",
            text: v(),
        }],
        truncated: vec![v()],
        result: Some(v()),
        timeline: vec![WebEntry {
            line: v(),
            link: Some(v()),
        }],
    };
    let entries = vec![WebAuditLine {
        line: v(),
        request: Some(v()),
    }];
    vec![
        (
            "overview.html",
            context! { user => v(), o => Value::from(minijinja::value::Serde(&overview)) },
        ),
        (
            "request.html",
            context! { user => v(), r => Value::from(minijinja::value::Serde(&request)) },
        ),
        (
            "deploys.html",
            context! { user => v(), what => v(), runs => Value::from(minijinja::value::Serde(&runs)) },
        ),
        (
            "audit.html",
            context! {
                user => v(), error => Option::<String>::None, query => v(), older => 7, paging => true,
                f => context! { room => v(), user => v(), alias => v(), action => v(), request => v(), status => v(), event => v(), deployed => v(), since => v() },
                entries => Value::from(minijinja::value::Serde(&entries)),
            },
        ),
        (
            "message.html",
            context! { heading => v(), text => v(), user => v() },
        ),
    ]
}

/// A query string of the audit's filters, from anyone holding a session
/// or the export's token: any text in any key or value is a query or a
/// refusal naming what it could not read, never a panic; a filter read
/// holds the text as sent.
pub fn audit_queries(cases: u32) {
    let key = prop_oneof![
        prop::sample::select(vec![
            "user", "alias", "action", "request", "status", "event", "deployed"
        ])
        .prop_map(String::from),
        text(),
    ];
    let bound = prop_oneof![any::<u64>().prop_map(|n| n.to_string()), text()];
    run(cases, (key, text(), bound), |(key, value, bound)| {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let q = format!(
            "room={}&{}={}&before={}&since=2h",
            enc(&value),
            enc(&key),
            enc(&value),
            enc(&bound),
        );
        match airlock::http::export_query(&q, 1_800_000_000_000) {
            Ok((parsed, _, _)) => assert_eq!(parsed.room.as_deref(), Some(value.as_str())),
            Err(e) => assert!(!e.is_empty(), "{q}"),
        }
    });
}
