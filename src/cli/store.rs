//! The commands that read the bot's database: compact, pending, and the
//! audit log's queries, follow, proofs and checks.

use crate::*;

/// Where the database is, if there is one (one a compaction cut short
/// moved aside counts: opening it puts it back).
pub(crate) fn store_path(arg: &ConfigArg) -> Result<PathBuf, ExitCode> {
    let path = config(arg)?.store_path();
    if !airlock::config::store_exists(&path) {
        return Err(fail(format!(
            "no database at {} (nothing has run yet?)",
            path.display()
        )));
    }
    Ok(path)
}

/// The database alone, for the read-only commands.
pub(crate) fn open_db(arg: &ConfigArg) -> Result<airlock::kv::Db, ExitCode> {
    let path = store_path(arg)?;
    airlock::config::open_store(&path).map_err(|e| {
        fail(format!(
            "cannot open {}: {e}\n(the database is locked while the bot runs; stop it, or ask in chat with !audit / !pending)",
            path.display()
        ))
    })
}

pub(crate) fn cmd_compact(arg: ConfigArg) -> Outcome {
    let path = store_path(&arg)?;
    let done = airlock::config::compact_store(&path).map_err(fail)?;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{}: {:.1} MB → {:.1} MB on disk ({} keys, checked against the original)",
        path.display(),
        mb(done.before),
        mb(done.after),
        done.keys
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cmd_pending(arg: ConfigArg) -> Outcome {
    let open = Requests::open(&open_db(&arg)?)
        .and_then(|r| r.open_requests())
        .map_err(fail)?;
    if open.is_empty() {
        println!("No open requests.");
    }
    let now = airlock::wall::now_ms();
    for r in open {
        println!("{}", engine::pending_line(&r, now));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit_log(arg: &ConfigArg) -> Result<AuditLog, ExitCode> {
    let archive = config(arg)?.archive_dir();
    AuditLog::open_at(&open_db(arg)?, Some(&archive)).map_err(fail)
}

pub(crate) fn cmd_audit(arg: ConfigArg, q: &Query, json: bool, jsonl: bool) -> Outcome {
    let entries = audit_log(&arg)?.query(q).map_err(fail)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
    }
    for e in entries.iter().filter(|_| !json) {
        if jsonl {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{}", e.summary_line());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock audit --follow`: stream the running bot's audit log (the store
/// is the bot's while it runs), matching entries as JSON lines.
pub(crate) fn cmd_follow(arg: ConfigArg, q: &Query, since: Option<u64>) -> Outcome {
    use std::io::{BufRead, Write};
    let cfg = config(&arg)?;
    let Some(listen) = cfg.http.listen.as_deref().filter(|_| cfg.http.audit_export) else {
        return Err(fail(
            "--follow reads from the running bot: set http.listen and http.audit_export: true in its configuration",
        ));
    };
    let token = std::env::var(airlock::http::AUDIT_TOKEN_ENV).map_err(|_| {
        fail(format!(
            "--follow needs the bot's {} in the environment",
            airlock::http::AUDIT_TOKEN_ENV
        ))
    })?;
    let mut url = url::Url::parse(&format!("http://{listen}/audit.jsonl"))
        .map_err(|e| fail(format!("http.listen {listen}: {e}")))?;
    {
        // The bot filters: only what was asked for leaves it.
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("follow", "true");
        if let Some(ms) = since {
            pairs.append_pair("since", &clock::format_ms(ms));
        }
        for (k, v) in [
            ("user", &q.user),
            ("room", &q.room),
            ("alias", &q.alias),
            ("action", &q.action),
            ("request", &q.request),
            ("status", &q.status),
            ("event", &q.event),
        ] {
            if let Some(v) = v {
                pairs.append_pair(k, v);
            }
        }
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .map_err(fail)?;
    let response = client
        .get(url.clone())
        .bearer_auth(token)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail(format!("{url}: {e}")))?;
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(response).lines() {
        let line = line.map_err(|e| fail(format!("{url}: {e}")))?;
        let Ok(entry) = serde_json::from_str::<airlock::audit::Entry>(&line) else {
            continue;
        };
        if q.accepts(&entry) && writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break; // stdout closed
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock audit prove <seq>`.
pub(crate) fn cmd_prove(arg: ConfigArg, seq: u64) -> Outcome {
    match audit_log(&arg)?.prove(seq).map_err(fail)? {
        Some(p) => {
            println!("{}", serde_json::to_string_pretty(&p).map_err(fail)?);
            Ok(ExitCode::SUCCESS)
        }
        None => Err(fail(format!(
            "entry {seq} is not sealed (only entries in segments have proofs; they are sealed after audit.seal_entries entries or audit.seal_after)"
        ))),
    }
}

/// `airlock audit check-proof <file>`.
pub(crate) fn cmd_check_proof(file: &Path, root: Option<&str>) -> Outcome {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(fail)?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| fail(format!("{}: {e}", file.display())))?
    };
    let proof: airlock::audit::Proof =
        serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    if let Some(r) = root.filter(|r| !r.eq_ignore_ascii_case(&proof.root)) {
        println!("PROBLEM: the proof is against root {}, not {r}", proof.root);
        return Ok(ExitCode::from(1));
    }
    match proof.check() {
        Ok(()) => {
            println!(
                "entry {} of segment {} is in the tree with root {}",
                proof.index, proof.segment, proof.root
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("PROBLEM: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

pub(crate) fn cmd_verify(arg: ConfigArg, against: Option<&Path>, full: bool) -> Outcome {
    let log = audit_log(&arg)?;
    let mut v = log.verify_full(full).map_err(fail)?;
    let mut seals = Vec::new();
    let checkpoints = match against {
        None => Vec::new(),
        Some(f) => {
            let bot = config(&arg)?.user_id.ok_or_else(|| {
                fail(
                    "the configuration names no user_id: the bot's Matrix ID tells its checkpoints from what anyone else sent"
                        .to_string(),
                )
            })?;
            let text =
                std::fs::read_to_string(f).map_err(|e| fail(format!("{}: {e}", f.display())))?;
            let found = Checkpoint::from_export(&text, &bot)
                .map_err(|e| fail(format!("{}: {e}", f.display())))?;
            seals = airlock::audit::Seal::from_export(&text, &bot)
                .map_err(|e| fail(format!("{}: {e}", f.display())))?;
            if found.is_empty() {
                return Err(fail(format!(
                    "{}: no checkpoints from {bot} in it (events whose content holds {})",
                    f.display(),
                    Checkpoint::FIELD
                )));
            }
            found
        }
    };
    v.problems
        .extend(log.verify_against(&checkpoints).map_err(fail)?);
    v.problems.extend(log.verify_seals(&seals).map_err(fail)?);
    for p in &v.pruned {
        println!("pruned: {p}");
    }
    if v.ok() {
        println!(
            "audit log intact: {} entries, head {}{}",
            v.entries,
            v.head_hash,
            if checkpoints.is_empty() {
                String::new()
            } else {
                format!("; matches all {} checkpoint(s)", checkpoints.len())
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &v.problems {
        println!("PROBLEM: {p}");
    }
    println!(
        "audit log NOT intact: {} problem(s) in {} entries",
        v.problems.len(),
        v.entries
    );
    Ok(ExitCode::from(1))
}

pub(crate) fn cmd_who_deployed(arg: ConfigArg, pack: &str) -> Outcome {
    let db = open_db(&arg)?;
    let log = AuditLog::open_at(&db, Some(&config(&arg)?.archive_dir())).map_err(fail)?;
    let requests = Requests::open(&db).map_err(fail)?;
    println!("{}", engine::who_deployed(&log, &requests, pack, None));
    Ok(ExitCode::SUCCESS)
}
