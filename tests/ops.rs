//! Operating airlock: the systemd unit shipped in the repository.

mod common;

use common::repo_root;

/// The unit is hardened as the README says, and `systemd-analyze verify`
/// accepts it without a warning (where the machine has systemd-analyze),
/// pointed at the binary just built.
#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit =
        std::fs::read_to_string(repo_root().join("scripts/systemd/airlock.service")).unwrap();
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/airlock",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/airlock --config /etc/airlock/airlock.yaml run",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    let Ok(which) = std::process::Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        return;
    };
    if !which.status.success() {
        eprintln!("systemd-analyze is not installed here: the unit was not verified");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("airlock.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/airlock", env!("CARGO_BIN_EXE_airlock")),
    )
    .unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let about_it: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("airlock.service"))
        .collect();
    assert!(
        o.status.success() && about_it.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// What the engine does shows in `/metrics`: every count is derived from
/// the audit entries it writes.
#[test]
fn metrics_count_commands_decisions_approvals_and_runs() {
    use common::*;
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = shipped(tmp.path());
    bot.say(ALICE, OPS, "!no such command");
    bot.say(MALLORY, OPS, "!help");
    bot.say(ALICE, OPS, "!pending");
    bot.say(MALLORY, OPS, "!flow deploy main");
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    let before = bot.engine.render_metrics();
    assert_eq!(
        sample(&before, "airlock_pending_requests"),
        Some(1.0),
        "{before}"
    );
    bot.reply(ALICE, OPS, &p.event_id, "yes"); // refused: her own request
    bot.reply(BOB, OPS, &p.event_id, "yes");
    let m = bot.engine.render_metrics();
    let expect = [
        ("airlock_commands_total{outcome=\"no_match\"}", 1.0),
        ("airlock_commands_total{outcome=\"builtin\"}", 2.0),
        ("airlock_commands_total{outcome=\"matched\"}", 2.0),
        ("airlock_commands_total{outcome=\"refused\"}", 1.0),
        (
            "airlock_commands_total{outcome=\"needs_confirmation\"}",
            1.0,
        ),
        (
            "airlock_decisions_total{rule=\"(default)\",decision=\"deny\"}",
            1.0,
        ),
        (
            "airlock_decisions_total{rule=\"ops-deploy-flow\",decision=\"allow\"}",
            1.0,
        ),
        ("airlock_approvals_total{outcome=\"refused\"}", 1.0),
        ("airlock_approvals_total{outcome=\"counted\"}", 1.0),
        ("airlock_requests_closed_total{state=\"succeeded\"}", 1.0),
        (
            "airlock_executions_total{action=\"packs.install\",status=\"succeeded\"}",
            1.0,
        ),
        (
            "airlock_execution_duration_seconds_count{action=\"packs.install\"}",
            1.0,
        ),
        ("airlock_pending_requests", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&m, series), Some(want), "{series} in\n{m}");
    }
    let written = bot.engine.audit_log().verify().unwrap();
    assert_eq!(
        sample(&m, "airlock_audit_entries_total"),
        Some(written.entries as f64),
        "{m}"
    );
}

/// Checkpoints: the log's head goes to the audit room (at the first tick,
/// then every N entries); `!audit verify` checks against them. Someone
/// with the disk rewrites an old entry and recomputes every hash after it:
/// the chain alone still verifies, the checkpoints do not.
#[test]
fn a_rewritten_history_with_recomputed_hashes_is_caught_by_the_checkpoints() {
    use airlock::audit::{AuditLog, edit_stored};
    use common::*;
    const AUDIT_ROOM: &str = "!audit:example.org";
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let mut s = settings(tmp.path(), &repo_root().join("policies"), Some(&repo.path));
    s.audit_room = Some(AUDIT_ROOM.into());
    s.audit_checkpoints.entries = 3;
    let bot = Bot::on_disk(s);
    bot.say(ALICE, OPS, "!help");
    bot.say(MALLORY, OPS, "!flow deploy main");
    let mut posted = bot.play(bot.engine.tick(bot.now()));
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].room, AUDIT_ROOM);
    assert!(
        bot.play(bot.engine.tick(bot.now())).is_empty(),
        "nothing new"
    );
    let p = prompt(&bot.say(ALICE, OPS, "!flow deploy main")).clone();
    bot.reply(BOB, OPS, &p.event_id, "yes");
    posted.extend(bot.play(bot.engine.tick(bot.now())));
    assert_eq!(posted.len(), 2, "{posted:?}");
    let r = bodies(&bot.say(ALICE, OPS, "!audit verify"));
    assert!(
        r.contains("✅ The audit log is intact") && r.contains("matches all 2 checkpoint(s)"),
        "{r}"
    );
    let checkpoints = tmp.path().join("checkpoints.txt");
    std::fs::write(&checkpoints, room_export(&posted, BOT)).unwrap();
    drop(bot);

    // The forgery: entry 2 now says bob did it, and every hash after it is
    // recomputed, the head record too; the index, whose copies would
    // still say alice, is dropped (airlock rebuilds it from the log).
    let db = open_db(&tmp.path().join("data/airlock.sled"));
    let entries = AuditLog::open(&db).unwrap().after(0, usize::MAX).unwrap();
    let last = entries.len() as u64;
    let mut prev = entries[0].hash.clone();
    for mut e in entries.into_iter().skip(1) {
        let seq = e.seq;
        if seq == 2 {
            assert_eq!(e.sender.as_deref(), Some(ALICE), "{e:?}");
            e.sender = Some(BOB.into());
        }
        e.prev = prev;
        e.hash = e.compute_hash();
        prev = e.hash.clone();
        edit_stored(&db, seq, |_| Some(serde_json::to_vec(&e).unwrap())).unwrap();
    }
    let tree = db.open_tree("audit").unwrap();
    tree.insert(
        b"h",
        serde_json::to_vec(&serde_json::json!({"seq": last, "hash": prev})).unwrap(),
    )
    .unwrap();
    db.open_tree("audit_index").unwrap().clear().unwrap();
    db.flush().unwrap();
    drop(tree);
    drop(db);

    let cfg = tmp.path().join("airlock.yaml");
    std::fs::write(&cfg, format!("data_dir: data\nuser_id: \"{BOT}\"\n")).unwrap();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "--config", cfg.to_str().unwrap(), "verify"];
        args.extend(extra);
        let o = airlock(&args, tmp.path());
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(0), "the forgery fools the chain alone: {out}");
    let (code, out) = verify(&["--against", checkpoints.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("no longer matches its checkpoint")
            && out.contains("the history was rewritten at or before entry"),
        "{out}"
    );

    // In chat: the bot restarts, reads its checkpoints back from the
    // audit room, and `!audit verify` says the log does not verify.
    let mut s = settings(tmp.path(), &repo_root().join("policies"), Some(&repo.path));
    s.audit_room = Some(AUDIT_ROOM.into());
    let bot = Bot::on_disk(s);
    bot.engine.add_checkpoints(
        airlock::audit::Checkpoint::from_export(&room_export(&posted, BOT), BOT).unwrap(),
    );
    let r = bodies(&bot.say(ALICE, OPS, "!audit verify"));
    assert!(
        r.contains("❌ The audit log does NOT verify")
            && r.contains("no longer matches its checkpoint"),
        "{r}"
    );
}

/// A manifest changed on this machine (as it would be to cover a
/// rewritten segment) differs from the seal the audit room holds.
#[test]
fn a_segment_rewritten_with_its_manifest_differs_from_its_seal() {
    use common::*;
    const AUDIT_ROOM: &str = "!audit:example.org";
    let tmp = tempfile::tempdir().unwrap();
    let repo = PackRepo::new(&tmp.path().join("st2-flow"), "st2-flow");
    let mut s = settings(tmp.path(), &repo_root().join("policies"), Some(&repo.path));
    s.audit_room = Some(AUDIT_ROOM.into());
    s.audit.seal_entries = 5;
    let bot = Bot::on_disk(s.clone());
    for _ in 0..4 {
        bot.say(ALICE, OPS, "!help");
    }
    let posted = bot.play(bot.engine.tick(bot.now()));
    let seals = airlock::audit::Seal::from_export(&room_export(&posted, BOT), BOT).unwrap();
    assert!(!seals.is_empty(), "{posted:?}");
    let r = bodies(&bot.say(ALICE, OPS, "!audit verify"));
    assert!(r.contains("✅"), "{r}");
    drop(bot);

    // The forgery: the first segment's manifest made to name another
    // file hash.
    let db = open_db(&tmp.path().join("data/airlock.sled"));
    let meta = db.open_tree("audit_meta").unwrap();
    let mut m: airlock::audit::Manifest =
        serde_json::from_slice(&meta.scan_prefix(b"m").next().unwrap().unwrap().1).unwrap();
    m.file_sha256 = "00".repeat(32);
    let mut key = b"m".to_vec();
    key.extend(m.first.to_be_bytes());
    meta.insert(key, serde_json::to_vec(&m).unwrap()).unwrap();
    db.flush().unwrap();
    drop(meta);
    drop(db);
    let bot = Bot::on_disk(s);
    bot.engine.add_seals(seals);
    let r = bodies(&bot.say(ALICE, OPS, "!audit verify"));
    assert!(
        r.contains("differ from the seal the audit room holds"),
        "{r}"
    );
}
