//! Match latency over StackStorm's corpus plus 1,000 generated aliases.
//!
//! `cargo bench --bench match` prints the median and p99 per command for
//! hits and misses (measured one command at a time), then criterion's own
//! estimates. Needs ../shared/compat (the corpus and bench_commands.jsonl).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock::alias::{self, Alias, AliasSet};
use criterion::Criterion;

const VERBS: [&str; 8] = [
    "restart", "deploy", "rollback", "status", "scale", "drain", "backup", "flush",
];

/// 1,000 aliases shaped like the corpus: literal verbs, required and
/// optional parameters, regex groups.
fn generated() -> Vec<Alias> {
    (0..1000)
        .map(|i| {
            let verb = VERBS[i % VERBS.len()];
            let format = match i % 4 {
                0 => format!("svc{i} {verb} {{{{host}}}}"),
                1 => format!("{verb} app{i} on {{{{env=staging}}}}"),
                2 => format!("team{i} {verb} {{{{target}}}}( with {{{{opts}}}})?"),
                _ => format!("(start|stop) worker{i} {{{{count=1}}}} {verb}"),
            };
            let yaml = format!(
                "name: gen{i}\npack: generated\naction_ref: core.noop\nformats:\n  - {}\n",
                serde_json::to_string(&format).unwrap()
            );
            alias::load::parse_alias(
                &PathBuf::from(format!("gen{i}.yaml")),
                &yaml,
                None,
                "generated",
            )
            .expect("generated alias")
        })
        .collect()
}

fn corpus(compat: &std::path::Path) -> Vec<Alias> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(compat.join("alias_corpus"))
        .expect("corpus")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| airlock::catalog::load_alias_file(f, None, "corpus").expect("corpus alias"))
        .collect()
}

struct Workload {
    set: AliasSet,
    hits: Vec<String>,
    misses: Vec<String>,
}

fn workload() -> Option<Workload> {
    let compat = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/compat");
    if !compat.join("alias_corpus").is_dir() {
        eprintln!("SKIPPED: {} not found", compat.display());
        return None;
    }
    let mut aliases = corpus(&compat);
    let n_corpus = aliases.len();
    aliases.extend(generated());
    let set = AliasSet::new(aliases);
    let mut hits = Vec::new();
    let mut misses = Vec::new();
    let text =
        std::fs::read_to_string(compat.join("bench_commands.jsonl")).expect("bench commands");
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let c = v["command"].as_str().unwrap().to_string();
        if set.match_command(&c).is_ok() {
            hits.push(c)
        } else {
            misses.push(c)
        }
    }
    for i in (0..1000).step_by(7) {
        hits.push(format!(
            "svc{i} {} web-{i}.example.org",
            VERBS[i % VERBS.len()]
        ));
        misses.push(format!(
            "please {} everything on host{i} now",
            VERBS[i % VERBS.len()]
        ));
    }
    eprintln!(
        "aliases: {} corpus + 1000 generated; commands: {} hits, {} misses",
        n_corpus,
        hits.len(),
        misses.len()
    );
    Some(Workload { set, hits, misses })
}

/// Per-command latency: each command timed over `reps` runs, its mean kept.
fn percentiles(set: &AliasSet, commands: &[String], reps: u32) -> (Duration, Duration, Duration) {
    let mut per: Vec<Duration> = commands
        .iter()
        .map(|c| {
            let t = Instant::now();
            for _ in 0..reps {
                let _ = black_box(set.match_command(black_box(c)));
            }
            t.elapsed() / reps
        })
        .collect();
    per.sort();
    let at = |q: f64| per[((per.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *per.last().unwrap())
}

fn report(w: &Workload) {
    for (name, cmds) in [("hit", &w.hits), ("miss", &w.misses)] {
        let (p50, p99, max) = percentiles(&w.set, cmds, 50);
        println!(
            "match/{name}: median {p50:?}  p99 {p99:?}  max {max:?}  ({} commands)",
            cmds.len()
        );
    }
}

fn bench(c: &mut Criterion, w: &Workload) {
    let mut g = c.benchmark_group("match");
    for (name, cmds) in [("hit", &w.hits), ("miss", &w.misses)] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % cmds.len();
                black_box(w.set.match_command(&cmds[i]))
            })
        });
    }
    g.finish();
    c.bench_function("load/corpus+1000", |b| {
        b.iter(|| black_box(AliasSet::new(generated())))
    });
}

fn main() {
    let Some(w) = workload() else { return };
    report(&w);
    let mut c: Criterion = Criterion::default().configure_from_args();
    bench(&mut c, &w);
    c.final_summary();
}
