//! A full disk: new commands are refused with the reason, nothing already
//! written is lost or half-written, sealing waits, the health check says
//! why, and everything resumes by itself when space returns. On a real
//! small file system (a tmpfs mounted for the test: the tests run as
//! root, as CI does), filled by another writer to under the bot's reserve
//! (`disk_reserve_mb`): sled cannot go on once one of its writes has
//! failed for want of space (its error sticks until it is opened again),
//! so the bot stops writing before that.

mod common;

use std::path::{Path, PathBuf};

use airlock::audit::Query;
use common::*;

const SAY: &str =
    "---\nname: say\npack: demo\naction_ref: core.echo\nformats:\n  - \"say {{ message }}\"\n";
const HOLD: &str =
    "---\nname: hold\npack: held\naction_ref: core.echo\nformats:\n  - \"hold {{ message }}\"\n";
const POLICY: &str = r#"
rules:
  - id: say
    effect: allow
    users: ["@alice:example.org", "@bob:example.org"]
    packs: [demo]
  - id: hold
    effect: allow
    users: ["@alice:example.org"]
    packs: [held]
    confirm:
      approvers: {users: ["@bob:example.org"]}
"#;

/// A tmpfs of `size` at `at`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fill the file system holding `dir` with a file (another program's,
/// say) until `left` bytes are free.
fn fill(dir: &Path, left: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while airlock::free_bytes(dir).unwrap() > left {
        f.write_all(&block).unwrap();
        f.sync_all().unwrap();
    }
    path
}

#[test]
fn a_full_disk_refuses_with_the_reason_loses_nothing_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _fs = Tmpfs::mount(&dir.join("data"), "48m");
    std::fs::create_dir_all(dir.join("aliases")).unwrap();
    std::fs::write(dir.join("aliases/say.yaml"), SAY).unwrap();
    std::fs::write(dir.join("aliases/hold.yaml"), HOLD).unwrap();
    std::fs::write(dir.join("p.yaml"), POLICY).unwrap();
    let mut config = settings(dir, &dir.join("p.yaml"), None);
    config.aliases = vec![dir.join("aliases")];
    // Sealing is due after a few entries: a full disk meets it too.
    config.audit.seal_entries = 5;
    config.disk_reserve_mb = 16;
    let bot = Bot::open(config);
    assert!(bodies(&bot.say(ALICE, OPS, "!say before")).contains("before"));
    let held = prompt(&bot.say(ALICE, OPS, "!hold on")).clone();
    let held_id = held.prompt_for.clone().unwrap();

    let filler = fill(&dir.join("data"), 8_000_000);
    // Sealing waits, and the health check says why.
    bot.advance(1_000);
    bot.engine.tick(bot.now());
    let why = bot.engine.stores_ok().unwrap_err();
    assert!(why.contains("No space left on device"), "{why}");
    // A new command is refused, saying why; it does not run, and nothing
    // claims it will.
    let r = bodies(&bot.say(ALICE, OPS, "!say during"));
    assert!(
        r.starts_with("⚠️") && r.contains("No space left on device"),
        "{r}"
    );
    assert!(!r.contains("during") && !r.contains("request ID"), "{r}");
    let why = bot.engine.stores_ok().unwrap_err();
    assert!(why.contains("No space left on device"), "{why}");

    // Space returns: everything resumes, with no operator.
    std::fs::remove_file(&filler).unwrap();
    bot.advance(1_000);
    bot.engine.tick(bot.now());
    let r = bodies(&bot.say(ALICE, OPS, "!say after"));
    assert!(r.contains("after"), "{r}");
    assert_eq!(bot.engine.stores_ok(), Ok(()));
    // The pending request kept its state, and runs once approved.
    let req = bot.engine.requests().get(&held_id).unwrap().unwrap();
    assert_eq!(req.state, airlock::requests::State::Pending);
    let r = bodies(&bot.reply(BOB, OPS, &held.event_id, "yes"));
    assert!(r.contains("succeeded") && r.contains("stdout: on"), "{r}");
    // Nothing lost, nothing twice: the chain holds across the segments
    // sealed once space returned, and every entry is found once.
    let log = bot.engine.audit_log();
    assert!(!log.manifests().unwrap().is_empty());
    let v = log.verify_full(true).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    let all = log.query(&Query::default()).unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    let said: Vec<String> = all
        .iter()
        .filter(|e| e.event.name() == "received")
        .filter_map(|e| e.detail_field::<String>("command"))
        .collect();
    for c in ["say before", "hold on", "say after"] {
        assert_eq!(said.iter().filter(|s| *s == c).count(), 1, "{c}: {said:?}");
    }
}
