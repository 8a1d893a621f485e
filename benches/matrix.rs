//! Latency and memory of `airlock run` on a real Synapse: the time from
//! alice sending a command to her client seeing airlock's first reply (200
//! commands, median and p99; one at a time and back to back), the same
//! while a long action runs, and airlock's RSS idle and along 10,000 more
//! commands (AIRLOCK_BENCH_COMMANDS to change; closed requests kept a
//! minute, AIRLOCK_BENCH_KEEP), beside a bare matrix-sdk
//! echo bot as the floor. Prints figures.
//!
//! Needs a homeserver: `scripts/synapse start DIR`, then
//! `AIRLOCK_TEST_HOMESERVER=$(cat DIR/url) AIRLOCK_TEST_SYNAPSE_DIR=DIR cargo bench --bench matrix`.

#[path = "../tests/common/matrix.rs"]
mod mx;
#[path = "common/rss.rs"]
mod rss;

use std::time::{Duration, Instant};

use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::events::room::message::{
    AddMentions, ForwardThread, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use mx::{Airlock, Homeserver, User, unique};
use rss::{rss, show, slope};

const PW: &str = "bench password";

fn pct(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Send `body` as alice and time the bot's first reply to it. With
/// `settle`, also wait until the bot has finished with the command (its ✅
/// reaction), so the next command meets a quiet bot, as a person's would.
async fn round_trip(
    alice: &User,
    room: &matrix_sdk::room::Room,
    bot: &matrix_sdk::ruma::OwnedUserId,
    body: &str,
    settle: bool,
) -> Duration {
    let t = Instant::now();
    let id = room
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .unwrap()
        .response
        .event_id;
    alice
        .wait_for("a reply", Duration::from_secs(30), |s| {
            s.sender == *bot && s.reply_to.as_ref() == Some(&id)
        })
        .await;
    let took = t.elapsed();
    if settle {
        alice
            .wait_for("the ✅", Duration::from_secs(30), |s| {
                s.sender == *bot
                    && s.reaction
                        .as_ref()
                        .is_some_and(|(k, e)| k == "✅" && *e == id)
            })
            .await;
    }
    took
}

/// Print the figures; returns the median.
fn report(what: &str, lat: Vec<Duration>) -> Duration {
    let p50 = pct(lat.clone(), 0.5);
    println!(
        "{what}, {} commands: median {p50:?}, p99 {:?}, max {:?}",
        lat.len(),
        pct(lat.clone(), 0.99),
        pct(lat, 1.0)
    );
    p50
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tag = unique();
    let bot = hs.register(&format!("airlock-bench-{tag}"), PW).await;
    let alice_id = hs.register(&format!("alice-bench-{tag}"), PW).await;
    std::fs::create_dir_all(dir.path().join("aliases")).unwrap();
    std::fs::write(
        dir.path().join("aliases/bench.yaml"),
        "name: ping\npack: bench\naction_ref: core.noop\nformats: ['ping']\nack:\n  format: pong\nresult:\n  enabled: false\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("aliases/pause.yaml"),
        "name: pause\npack: bench\naction_ref: core.pause\nformats: ['pause {{ max_pause }}']\nack:\n  format: pausing\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!("rules:\n  - id: bench\n    effect: allow\n    users: ['{alice_id}']\n    packs: [bench]\n"),
    )
    .unwrap();
    let cfg = dir.path().join("airlock.yaml");
    // Months pressed into minutes, as in benches/console.rs: closed
    // requests leave after a minute (AIRLOCK_BENCH_KEEP).
    let keep = std::env::var("AIRLOCK_BENCH_KEEP").unwrap_or_else(|_| "1m".into());
    std::fs::write(
        &cfg,
        format!("homeserver: {}\nuser_id: \"{bot}\"\ndata_dir: data\npacks: packs\naliases: [aliases]\npolicies: [policy.yaml]\nrequests:\n  keep: {keep}\n", hs.url),
    )
    .unwrap();
    let alice = User::login(&hs, &alice_id, PW, &dir.path().join("alice")).await;

    // The floor on this machine: a bare matrix-sdk echo bot, E2EE and SQLite
    // store like airlock, replying from its own sync_once loop.
    let floor = {
        let echo_id = hs.register(&format!("echo-bench-{tag}"), PW).await;
        let echo = User::login(&hs, &echo_id, PW, &dir.path().join("echo")).await;
        let me = echo_id.clone();
        echo.client.add_event_handler(
            move |ev: OriginalSyncRoomMessageEvent, room: matrix_sdk::room::Room| {
                let me = me.clone();
                async move {
                    if ev.sender == me || ev.content.body() != "!ping" {
                        return;
                    }
                    let reply = RoomMessageEventContent::notice_plain("pong").make_reply_to(
                        &ev,
                        ForwardThread::No,
                        AddMentions::No,
                    );
                    let _ = room.send(reply).await;
                }
            },
        );
        let mut req = CreateRoom::new();
        req.invite = vec![echo_id.clone()];
        let room = alice.client.create_room(req).await.unwrap();
        echo.join(&room.room_id().to_owned()).await;
        for _ in 0..10 {
            round_trip(&alice, &room, &echo_id, "!ping", false).await;
        }
        let mut lat = Vec::new();
        for _ in 0..200 {
            lat.push(round_trip(&alice, &room, &echo_id, "!ping", false).await);
        }
        report("bare echo bot (the floor)", lat)
    };
    let airlock = Airlock::start(&cfg, PW);
    let mut req = CreateRoom::new();
    req.invite = vec![bot.clone()];
    let room = alice.client.create_room(req).await.unwrap();
    for _ in 0..300 {
        if matches!(room.get_member(&bot).await, Ok(Some(m)) if *m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for _ in 0..10 {
        round_trip(&alice, &room, &bot, "!ping", true).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = show(rss(airlock.pid()));

    // Each command meets a bot done with the previous one (a person's pace).
    let mut lat = Vec::new();
    for _ in 0..200 {
        lat.push(round_trip(&alice, &room, &bot, "!ping", true).await);
    }
    let one = report("airlock first reply, one command at a time", lat);
    println!(
        "  {:.2}× the floor",
        one.as_secs_f64() / floor.as_secs_f64()
    );
    // Back to back: each command follows the previous reply at once, while
    // the bot is still sending that command's status reactions.
    let mut lat = Vec::new();
    for _ in 0..200 {
        lat.push(round_trip(&alice, &room, &bot, "!ping", false).await);
    }
    let b2b = report("airlock first reply, back to back", lat);
    println!(
        "  {:.2}× the floor",
        b2b.as_secs_f64() / floor.as_secs_f64()
    );

    // A long action runs on its own thread; commands are still answered.
    round_trip(&alice, &room, &bot, "!pause 30", false).await;
    let mut during = Vec::new();
    for _ in 0..50 {
        during.push(round_trip(&alice, &room, &bot, "!ping", true).await);
    }
    report("airlock first reply while a 30 s action runs", during);

    println!("airlock RSS idle: {idle}");
    let commands: usize = std::env::var("AIRLOCK_BENCH_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // Anonymous RSS every 100 commands. Over the first 2,500 the caches
    // fill (sled's, the Matrix stores'); what follows should not grow.
    let mut samples = Vec::new();
    for i in 1..=commands {
        round_trip(&alice, &room, &bot, "!ping", false).await;
        if i % 100 != 0 && i != commands {
            continue;
        }
        let now = rss(airlock.pid());
        if i % 100 == 0 {
            samples.push((i as f64, now[1]));
        }
        if i % 2_500 == 0 || i == commands {
            println!("airlock RSS after {i} more commands: {}", show(now));
        }
    }
    let settled: Vec<_> = samples.iter().copied().filter(|s| s.0 > 2_500.0).collect();
    if settled.len() > 1 {
        println!(
            "airlock anonymous RSS after the first 2,500 commands: {:.2} MB per 1,000 more commands (least squares over {} readings)",
            slope(&settled),
            settled.len()
        );
    }
    // Idle again, once the status reactions have gone out.
    tokio::time::sleep(Duration::from_secs(35)).await;
    println!("airlock RSS idle again: {}", show(rss(airlock.pid())));
    if std::env::var_os("AIRLOCK_BENCH_KEEP").is_some() {
        println!("airlock's log: {}", airlock.log.display());
        std::mem::forget(dir);
    }
}
