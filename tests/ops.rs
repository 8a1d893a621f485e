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
