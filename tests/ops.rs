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
