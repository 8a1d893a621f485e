//! The audit log's archive: history sealed into segment files, found once
//! by every query, checked by `verify`, readable by stock tools, provable
//! entry by entry, and every kind of tampering reported precisely.

use std::path::{Path, PathBuf};

use airlock::audit::{AuditLog, Entry, Event, Query, SealPolicy, Status};

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const T0: u64 = 1_790_000_000_000;

struct Store {
    _tmp: tempfile::TempDir,
    db: airlock::kv::Db,
    archive: PathBuf,
    log: AuditLog,
}

impl Store {
    fn new() -> Store {
        let tmp = tempfile::tempdir().unwrap();
        let db = airlock::kv::Db::Sled(sled::open(tmp.path().join("db")).unwrap());
        let archive = tmp.path().join("audit");
        let log = AuditLog::open_at(&db, Some(&archive)).unwrap();
        Store {
            _tmp: tmp,
            db,
            archive,
            log,
        }
    }

    fn reopen(&mut self) {
        self.log = AuditLog::open_at(&self.db, Some(&self.archive)).unwrap();
    }

    /// `n` more entries, a minute apart: every third alice's, a request
    /// each five, every seventh in the prod room (up to entry 600) or the
    /// dev room (after), the rest in ops.
    fn append(&self, n: u64) {
        let start = self.log.len();
        for i in start + 1..=start + n {
            let room = match (i % 7, i <= 600) {
                (0, true) => "!prod:example.org",
                (0, false) => "!dev:example.org",
                _ => "!ops:example.org",
            };
            let e = Entry::new(Event::Received, T0 + i * 60_000)
                .sender(if i % 3 == 0 { ALICE } else { BOB })
                .room(room)
                .request(&format!("r{}", i / 5))
                .alias(Some("st2-flow.flow_deploy"))
                .status(if i % 2 == 0 {
                    Status::Succeeded
                } else {
                    Status::Pending
                })
                .detail(serde_json::json!({"command": format!("flow deploy {i} — ü")}));
            self.log.record(e).unwrap();
        }
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.archive)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn policy(entries: u64) -> SealPolicy {
    SealPolicy {
        entries,
        after: std::time::Duration::from_secs(1000 * 86400),
        retention: None,
    }
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

/// 1,000 entries sealed into segments of 300, then 50 more unsealed.
fn sealed_store() -> Store {
    let s = Store::new();
    let mut sealed = Vec::new();
    // Three epochs filled, then one sealed by age (its 100 entries are
    // past `after` 1,000 days later).
    for (n, now) in [
        (300, T0),
        (300, T0),
        (300, T0),
        (100, T0 + 1001 * 86_400_000),
    ] {
        s.append(n);
        sealed.extend(s.log.seal_due(now, &policy(300)).unwrap());
    }
    assert_eq!(
        sealed.iter().map(|m| (m.first, m.last)).collect::<Vec<_>>(),
        vec![(1, 300), (301, 600), (601, 900), (901, 1000)]
    );
    s.append(50);
    s
}

#[test]
fn every_query_finds_every_entry_once_across_the_tiers() {
    let mut s = sealed_store();
    for _ in 0..2 {
        let all = s.log.query(&Query::default()).unwrap();
        assert_eq!(seqs(&all), (1..=1_050).collect::<Vec<_>>());
        let alice = s
            .log
            .query(&Query {
                user: Some(ALICE.into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            seqs(&alice),
            (1..=1_050).filter(|i| i % 3 == 0).collect::<Vec<_>>()
        );
        let one = s
            .log
            .query(&Query {
                request: Some("r100".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(seqs(&one), vec![500, 501, 502, 503, 504]);
        let status = s
            .log
            .query(&Query {
                alias: Some("st2-flow.flow_deploy".into()),
                status: Some("succeeded".into()),
                limit: Some(10),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            seqs(&status),
            (1_032..=1_050).step_by(2).collect::<Vec<_>>()
        );
        // Across the tiers a status matches an entry's status or event.
        let succeeded = s
            .log
            .query(&Query {
                alias: Some("st2-flow.flow_deploy".into()),
                status: Some("succeeded".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(seqs(&succeeded), (2..=1_050).step_by(2).collect::<Vec<_>>());
        let received = s
            .log
            .query(&Query {
                user: Some(ALICE.into()),
                status: Some("received".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(seqs(&received), seqs(&alice));
        let since = s
            .log
            .query(&Query {
                since: Some(T0 + 990 * 60_000),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(seqs(&since), (990..=1_050).collect::<Vec<_>>());
        // Pages: the newest 100 below an entry, in either tier, through
        // a sender's copies, a posting list or no index; and a viewer's
        // own filter counted before the limit.
        type Matches = fn(u64) -> bool;
        let filters: [(Query, Matches); 3] = [
            (
                Query {
                    user: Some(ALICE.into()),
                    ..Default::default()
                },
                |i| i % 3 == 0,
            ),
            (
                Query {
                    room: Some("!dev:example.org".into()),
                    ..Default::default()
                },
                |i| i % 7 == 0 && i > 600,
            ),
            (Query::default(), |_| true),
        ];
        for (filter, matches) in &filters {
            for before in [1_051, 1_049, 1_020, 950, 601, 40, 1] {
                let page = s
                    .log
                    .query(&Query {
                        before: Some(before),
                        limit: Some(100),
                        ..filter.clone()
                    })
                    .unwrap();
                let want: Vec<u64> = (1..before).filter(|i| matches(*i)).collect();
                assert_eq!(
                    seqs(&page),
                    want[want.len().saturating_sub(100)..],
                    "before {before} of {filter:?}"
                );
            }
        }
        // Any of some rooms: segments holding none of them (prod's end at
        // 600) are skipped, the rest read through their room postings.
        let rooms = |rs: &[&str]| {
            s.log
                .query(&Query {
                    rooms: Some(rs.iter().map(|r| r.to_string()).collect()),
                    ..Default::default()
                })
                .unwrap()
        };
        assert_eq!(
            seqs(&rooms(&["!prod:example.org", "!dev:example.org"])),
            (7..=1_050).step_by(7).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(&rooms(&["!prod:example.org"])),
            (7..=600).step_by(7).collect::<Vec<_>>()
        );
        assert!(rooms(&[]).is_empty());
        assert!(rooms(&["!elsewhere:example.org"]).is_empty());
        let odd = s
            .log
            .query_where(
                &Query {
                    before: Some(700),
                    limit: Some(5),
                    ..Default::default()
                },
                &mut |e| e.seq % 2 == 1,
            )
            .unwrap();
        assert_eq!(seqs(&odd), vec![691, 693, 695, 697, 699]);
        let followed = s.log.after(250, 10_000).unwrap();
        assert_eq!(seqs(&followed), (251..=1_050).collect::<Vec<_>>());
        let v = s.log.verify().unwrap();
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!(v.entries, 1_050);
        let v = s.log.verify_full(true).unwrap();
        assert!(v.ok(), "{:?}", v.problems);
        // Checkpoints read sealed entries too.
        let cp = airlock::audit::Checkpoint {
            seq: 300,
            hash: s.log.manifests().unwrap()[0].last_hash.clone(),
        };
        assert!(s.log.verify_against(&[cp]).unwrap().is_empty());
        s.reopen();
    }
    assert_eq!(s.segments().len(), 4);
}

/// A field with too many values for a manifest (here 401 request ids)
/// is left out of it, and found through the segment's own index.
#[test]
fn a_request_among_too_many_for_a_manifest_is_found_in_its_segment() {
    let s = Store::new();
    s.append(2_000);
    let sealed = s.log.seal_due(T0, &policy(2_000)).unwrap();
    assert_eq!(sealed[0].many, vec!["request".to_string()]);
    assert!(!sealed[0].values.contains_key("request"));
    assert!(sealed[0].values["sender"].contains(ALICE));
    let one = |id: &str| {
        let q = Query {
            request: Some(id.into()),
            ..Default::default()
        };
        seqs(&s.log.query(&q).unwrap())
    };
    assert_eq!(one("r150"), vec![750, 751, 752, 753, 754]);
    assert_eq!(one("r400"), vec![2_000]);
    assert!(one("r401").is_empty());
    assert!(one("r1500").is_empty());
}

#[test]
fn stock_tools_read_a_segment() {
    let s = sealed_store();
    let seg = &s.segments()[0];
    let Ok(out) = std::process::Command::new("zstd")
        .arg("-dc")
        .arg(seg)
        .output()
    else {
        eprintln!("SKIPPED: no zstd");
        return;
    };
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 300);
    // The lines are the entries as stored (grouped by sender): each
    // hashes to itself, and together they are entries 1 to 300.
    let mut got = Vec::new();
    for line in text.lines() {
        let e: Entry = serde_json::from_str(line).unwrap();
        assert_eq!(e.compute_hash(), e.hash);
        got.push(e.seq);
    }
    got.sort();
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
    let jq = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | jq -c .seq", seg.display()))
        .output()
        .unwrap();
    assert!(jq.status.success(), "{jq:?}");
    let mut seqs: Vec<u64> = String::from_utf8(jq.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
}

#[test]
fn an_entry_is_proved_without_the_rest_of_the_log() {
    let s = sealed_store();
    let p = s.log.prove(457).unwrap().unwrap();
    assert_eq!((p.index, p.size), (156, 300));
    assert_eq!(p.root, s.log.manifests().unwrap()[1].root);
    p.check().unwrap();
    // A changed entry, path or root fails.
    let mut bad = p.clone();
    bad.entry = bad.entry.replace("flow deploy 457", "flow deploy 458");
    assert!(bad.check().is_err());
    let mut bad = p.clone();
    bad.path[0] = "00".repeat(32);
    assert!(bad.check().is_err());
    let mut bad = p.clone();
    bad.index += 1;
    assert!(bad.check().is_err());
    // The unsealed tail has no proof yet.
    assert!(s.log.prove(1_020).unwrap().is_none());
}

fn problems(s: &Store) -> String {
    let v = s.log.verify().unwrap();
    assert!(!v.ok(), "tampering went unnoticed");
    v.problems.join("\n")
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn each_kind_of_tampering_is_reported_as_itself() {
    // A byte changed.
    let s = sealed_store();
    let seg = s.segments()[1].clone();
    let mut b = std::fs::read(&seg).unwrap();
    b[100] ^= 0x20;
    std::fs::write(&seg, &b).unwrap();
    let p = problems(&s);
    assert!(
        p.contains(&name(&seg)) && p.contains("differs from what was sealed"),
        "{p}"
    );

    // A segment deleted.
    let s = sealed_store();
    let seg = s.segments()[2].clone();
    std::fs::remove_file(&seg).unwrap();
    let p = problems(&s);
    assert!(p.contains(&name(&seg)) && p.contains("deleted?"), "{p}");

    // Two segments swapped.
    let s = sealed_store();
    let (a, b) = (s.segments()[0].clone(), s.segments()[1].clone());
    let tmp = a.with_extension("x");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    let p = problems(&s);
    assert!(p.contains(&name(&a)) && p.contains(&name(&b)), "{p}");

    // A footer cut off.
    let s = sealed_store();
    let seg = s.segments()[3].clone();
    let b = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &b[..b.len() - 20]).unwrap();
    let p = problems(&s);
    assert!(p.contains(&name(&seg)), "{p}");

    // An entry rewritten inside a segment with every hash after it
    // recomputed, the segment and all manifests rewritten to match: only
    // a checkpoint held elsewhere (the audit room's seal) catches it.
    let s = sealed_store();
    let posted = airlock::audit::Checkpoint {
        seq: 300,
        hash: s.log.manifests().unwrap()[0].last_hash.clone(),
    };
    let seg = s.segments()[0].clone();
    let text = String::from_utf8(
        std::process::Command::new("zstd")
            .arg("-dc")
            .arg(&seg)
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .unwrap();
    if text.is_empty() {
        return; // no zstd here: the rest needs it
    }
    let mut prev = String::new();
    let mut forged = Vec::new();
    let mut lines: Vec<Entry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|e| e.seq);
    for mut e in lines {
        if e.seq == 5 {
            e.sender = Some(ALICE.into());
        }
        e.prev = prev;
        e.hash = e.compute_hash();
        prev = e.hash.clone();
        forged.push(e);
    }
    assert_ne!(prev, posted.hash);
    let mut f = std::fs::File::create(&seg).unwrap();
    let bytes: Vec<(Entry, Vec<u8>)> = forged
        .into_iter()
        .map(|e| {
            let b = serde_json::to_vec(&e).unwrap();
            (e, b)
        })
        .collect();
    airlock::segment::write(&mut f, &bytes).unwrap();
    drop(f);
    let problems = s.log.verify_against(&[posted]).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("entry 300 no longer matches its checkpoint")),
        "{problems:?}"
    );
}

#[test]
fn a_sealing_cut_short_is_finished_or_undone_at_the_next_open() {
    // Segments written, manifests not stored: the files are strays, the
    // epoch is still in sled and is sealed again.
    let mut s = Store::new();
    s.append(100);
    s.log.seal_due(T0, &policy(40)).unwrap();
    let kept: Vec<Vec<u8>> = s
        .segments()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let stray = s
        .archive
        .join("00000000000000000999-00000000000000001000.zst");
    std::fs::write(&stray, &kept[0]).unwrap();
    std::fs::write(s.archive.join("x.zst.tmp"), b"half").unwrap();
    s.reopen();
    assert!(!stray.exists());
    assert_eq!(s.segments().len(), 2, "100 entries in two parts of 50");
    let all = s.log.query(&Query::default()).unwrap();
    assert_eq!(seqs(&all), (1..=100).collect::<Vec<_>>());
    assert!(s.log.verify_full(true).unwrap().ok());
}

#[test]
fn a_segment_read_from_damaged_bytes_errs_with_its_name_and_offset() {
    use proptest::prelude::*;
    let s = sealed_store();
    let seg = s.segments()[0].clone();
    let good = std::fs::read(&seg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.zst");
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 64,
        ..Default::default()
    });
    runner
        .run(
            &(0..good.len(), any::<u8>(), 0..good.len()),
            |(at, byte, cut)| {
                let mut b = good.clone();
                b[at] ^= byte | 1;
                b.truncate(cut.max(1));
                std::fs::write(&path, &b).unwrap();
                match airlock::segment::Segment::open(&path) {
                    Err(e) => prop_assert!(
                        e.to_string().contains("seg.zst") && e.to_string().contains("at byte")
                    ),
                    Ok(seg) => {
                        let mut any_err = seg.verify_hash().is_err();
                        for i in 0..seg.frames().len() {
                            if let Err(e) = seg.frame(i) {
                                prop_assert!(e.to_string().contains("seg.zst"));
                                any_err = true;
                            }
                        }
                        prop_assert!(any_err || b == good);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

/// The one-page script the documentation gives an auditor (sha256 only)
/// agrees with `check-proof`.
#[test]
fn the_documented_script_checks_a_proof_by_hand() {
    let s = sealed_store();
    let p = s.log.prove(601).unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proof.json");
    std::fs::write(&file, serde_json::to_string(&p).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check-proof.py");
    let run = |root: &str| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&file)
            .arg(root)
            .output()
    };
    let Ok(ok) = run(&p.root) else {
        eprintln!("SKIPPED: no python3");
        return;
    };
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("is in the tree"));
    let wrong = run(&"ab".repeat(32)).unwrap();
    assert!(!wrong.status.success());
    let mut bad = p.clone();
    bad.entry = bad.entry.replace("flow deploy 601", "flow deploy 602");
    std::fs::write(&file, serde_json::to_string(&bad).unwrap()).unwrap();
    let tampered = run(&p.root).unwrap();
    assert!(
        String::from_utf8_lossy(&tampered.stderr).contains("does not match its hash"),
        "{tampered:?}"
    );
}

#[test]
fn retention_deletes_whole_old_segments_and_says_so() {
    let s = sealed_store();
    let keep = std::time::Duration::from_secs(100 * 86400);
    // The first two segments' newest entries are older than the cutoff.
    let now = T0 + 650 * 60_000 + keep.as_millis() as u64;
    let p = SealPolicy {
        retention: Some(keep),
        ..policy(300)
    };
    s.log.seal_due(now, &p).unwrap();
    assert_eq!(s.segments().len(), 2, "{:?}", s.segments());
    assert_eq!(s.log.manifests().unwrap().len(), 4, "manifests are kept");
    let v = s.log.verify_full(true).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.pruned.len(), 2, "{:?}", v.pruned);
    assert!(v.pruned[0].contains("entries 1..300") && v.pruned[0].contains("audit.retention"));
    let pruned = s
        .log
        .query(&Query {
            event: Some("pruned".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].details()["segments"].as_array().unwrap().len(), 2);
    let all = s.log.query(&Query::default()).unwrap();
    assert_eq!(all.first().unwrap().seq, 601);
    // A segment missing without a `pruned` entry is tampering.
    std::fs::remove_file(&s.segments()[0]).unwrap();
    let v = s.log.verify().unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("deleted?")),
        "{:?}",
        v.problems
    );
}

/// `who-deployed` reads sealed history: a run's `finished` entry says
/// what it put in place, who asked and who approved, and an older one
/// without approvers is completed from its request's approval entry,
/// with the request itself long gone from the store.
#[test]
fn who_deployed_answers_from_sealed_history_without_the_requests() {
    let s = Store::new();
    let finished = |i: u64, pack: &str, approved: Option<&[&str]>| {
        let mut detail = serde_json::json!({
            "summary": "ok",
            "deployed": [{"pack": pack, "commit": format!("c{i:04}")}, {"pack": "core", "commit": "x"}],
        });
        if let Some(a) = approved {
            detail["approved_by"] = serde_json::json!(a);
        }
        Entry::new(Event::Finished, T0 + i * 60_000)
            .sender(ALICE)
            .room("!ops:example.org")
            .request(&format!("d{i}"))
            .action("packs.install")
            .status(Status::Succeeded)
            .detail(detail)
    };
    for i in 0..600u64 {
        let e = match i % 100 {
            10 => finished(i, "st2-flow", Some(&[BOB])),
            20 => finished(i, "other", None),
            // An older run's entry without approvers; its request's last
            // approval names them.
            39 => Entry::new(Event::Approval, T0 + i * 60_000)
                .sender(BOB)
                .request(&format!("d{}", i + 1))
                .status(Status::Approved)
                .detail(serde_json::json!({"approvers": [BOB, "@carol:example.org"]})),
            40 => finished(i, "st2-flow", None),
            _ => Entry::new(Event::Received, T0 + i * 60_000).sender(BOB),
        };
        s.log.record(e).unwrap();
    }
    s.log.seal_due(T0, &policy(250)).unwrap();
    assert!(s.log.manifests().unwrap().len() >= 2);
    // One more, in the unsealed tail.
    s.log
        .record(finished(600, "st2-flow", Some(&[BOB])))
        .unwrap();
    let q = Query {
        deployed: Some("st2-flow".into()),
        ..Default::default()
    };
    let mut runs: Vec<u64> = (0..6).flat_map(|k| [k * 100 + 10, k * 100 + 40]).collect();
    runs.push(600);
    assert_eq!(
        seqs(&s.log.query(&q).unwrap()),
        runs.iter().map(|i| i + 1).collect::<Vec<_>>()
    );
    let requests = airlock::requests::Requests::open(&s.db).unwrap();
    let text = airlock::engine::who_deployed(&s.log, &requests, "st2-flow", None);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines.len(), 13, "{text}");
    assert!(lines[0].contains("c0600"), "{text}");
    let lines = &lines[1..];
    assert!(
        lines[0].contains("c0540") && lines[0].contains("request d540"),
        "{text}"
    );
    assert!(
        lines[0].contains(&format!(
            "by {ALICE} (approved by {BOB}, @carol:example.org)"
        )),
        "{text}"
    );
    assert!(lines[1].contains("c0510") && lines[1].contains(&format!("(approved by {BOB}) at")));
    assert!(lines[11].contains("c0010") && lines[11].contains("deployed st2-flow"));
    assert!(!text.contains("c0020"), "{text}");
    let none = airlock::engine::who_deployed(&s.log, &requests, "absent", None);
    assert_eq!(none, "No deployments of absent in the audit log.");
}

#[test]
fn an_epoch_that_overran_its_size_is_one_segment_and_a_big_one_equal_parts() {
    // The tick that starts the next epoch comes after this one filled: a
    // few entries more are sealed with it, not into a sliver of their own
    // (each segment is a manifest and a seal posted to the audit room).
    let s = Store::new();
    s.append(330);
    let sealed = s.log.seal_due(T0, &policy(300)).unwrap();
    let ranges = |m: &[airlock::audit::Manifest]| -> Vec<(u64, u64)> {
        m.iter().map(|m| (m.first, m.last)).collect()
    };
    assert_eq!(ranges(&sealed), vec![(1, 330)]);
    // An epoch far larger (a store from before epochs) in equal parts.
    s.append(1_000);
    let sealed = s.log.seal_due(T0, &policy(300)).unwrap();
    assert_eq!(ranges(&sealed), vec![(331, 664), (665, 998), (999, 1330)]);
}
