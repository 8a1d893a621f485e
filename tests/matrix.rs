//! airlock as a real bot on a real homeserver: Synapse on loopback (started
//! by scripts/test), the `airlock run` binary, and matrix-sdk clients for
//! alice, bob and mallory.

mod common;
#[path = "common/matrix.rs"]
mod mx;

use std::time::Duration;

use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoom;
use matrix_sdk::ruma::events::relation::Thread;
use matrix_sdk::ruma::events::room::message::{
    Relation, ReplacementMetadata, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use mx::{AUDIT_TOKEN, Airlock, Homeserver, Seen, User, eventually, reply, say, unique};

const PW: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(30);

struct Scene {
    dir: tempfile::TempDir,
    bot: OwnedUserId,
    alice: User,
    bob: User,
    mallory: User,
    repo: common::PackRepo,
    alias: String,
    /// The bot's `/healthz` and `/metrics` listener.
    http_port: u16,
}

/// The example pack's deploy token, in its config only.
const EXAMPLE_SECRET: &str = "s3cr3t-t0ken-value";

async fn scene(hs: Homeserver) -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let tag = unique();
    let bot = hs.register(&format!("airlock-{tag}"), PW).await;
    let mut users = Vec::new();
    for who in ["alice", "bob", "mallory"] {
        let id = hs.register(&format!("{who}-{tag}"), PW).await;
        users.push(User::login(&hs, &id, PW, &dir.path().join(format!("{who}-store"))).await);
    }
    let mallory = users.pop().unwrap();
    let bob = users.pop().unwrap();
    let alice = users.pop().unwrap();
    let repo = common::PackRepo::new(&dir.path().join("st2-flow"), "st2-flow");
    let alias = format!("#ops-{tag}:example.org");
    // The shipped policy, for these users and this room.
    let shipped = std::fs::read_to_string(common::repo_root().join("policies/ops.yaml")).unwrap();
    let mut policy = shipped
        .replace("@alice:example.org", alice.id.as_str())
        .replace("@bob:example.org", bob.id.as_str())
        .replace("!ops:example.org", &alias);
    // A slow command, to see the bot answer while an action runs.
    policy.push_str(&format!(
        "\n  - id: slow\n    effect: allow\n    groups: [ops]\n    rooms: [\"{alias}\"]\n    packs: [tests]\n"
    ));
    // The example pack's script deploy, with one approval.
    policy.push_str(&format!(
        "\n  - id: example-deploy\n    effect: allow\n    groups: [ops]\n    rooms: [\"{alias}\"]\n    aliases: [deploy_example.deploy]\n    extra_params: true\n    confirm:\n      approvers: {{groups: [ops]}}\n      approvals: 1\n"
    ));
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    std::fs::write(
        dir.path().join("configs/deploy_example.yaml"),
        format!("api_token: {EXAMPLE_SECRET}\n"),
    )
    .unwrap();
    let extra = dir.path().join("extra-aliases");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        extra.join("pause.yaml"),
        "name: pause\npack: tests\naction_ref: core.pause\nformats: ['pause {{ max_pause }}']\nack:\n  format: pausing\n",
    )
    .unwrap();
    // Runs that take turns: a lock per environment.
    std::fs::write(
        extra.join("hold.yaml"),
        "name: hold\npack: locked\naction_ref: core.pause\nformats: ['hold {{ max_pause }}']\nack:\n  enabled: false\nresult:\n  format: 'held {{ execution.id }}'\n",
    )
    .unwrap();
    policy.push_str(&format!(
        "\n  - id: locked-holds\n    effect: allow\n    groups: [ops]\n    rooms: [\"{alias}\"]\n    packs: [locked]\n    confirm: false\n    lock: env/prod\n    queue_timeout: 10m\n"
    ));
    // Approvals from cross-signed devices only.
    std::fs::write(
        extra.join("secure.yaml"),
        "name: echo\npack: secure\naction_ref: core.echo\nformats: ['secure echo {{ message }}']\nresult:\n  format: 'secure: {{ execution.result.stdout }}'\n",
    )
    .unwrap();
    policy.push_str(&format!(
        "\n  - id: secure-echo\n    effect: allow\n    groups: [ops]\n    rooms: [\"{alias}\"]\n    packs: [secure]\n    confirm:\n      approvers: {{groups: [ops]}}\n      self_approve: false\n      verified_devices: true\n"
    ));
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ops.yaml"), policy).unwrap();
    let http_port = common::free_port();
    std::fs::write(
        dir.path().join("airlock.yaml"),
        format!(
            "http:\n  listen: \"127.0.0.1:{http_port}\"\n  audit_export: true\nhomeserver: {}\nuser_id: \"{bot}\"\ndevice_name: airlock e2e\ndata_dir: data\npacks: packs\naliases: [{}, extra-aliases, {}]\npolicies: [policies]\nreaction_approvals: true\nrunners:\n  configs: configs\ngit:\n  instead_of:\n    - from: \"{}\"\n      to: \"{}\"\n",
            hs.url,
            common::repo_root().join("aliases").display(),
            common::repo_root().join("tests/packs").display(),
            common::SEED_URL,
            repo.url()
        ),
    )
    .unwrap();
    Scene {
        dir,
        bot,
        alice,
        bob,
        mallory,
        repo,
        alias,
        http_port,
    }
}

impl Scene {
    fn start(&self) -> Airlock {
        Airlock::start(&self.dir.path().join("airlock.yaml"), PW)
    }

    /// Alice makes a room (with the policy's alias when `aliased`), invites
    /// the bot, bob and mallory; everyone joins.
    async fn room(&self, aliased: bool, encrypted: bool) -> OwnedRoomId {
        let invite = vec![
            self.bot.clone(),
            self.bob.id.clone(),
            self.mallory.id.clone(),
        ];
        let alias = aliased.then_some(self.alias.as_str());
        let id = mx::create_room(&self.alice, alias, invite, encrypted).await;
        self.bob.join(&id).await;
        self.mallory.join(&id).await;
        id
    }

    /// Alice says `body` in `room`; the bot's first answer to it.
    async fn ask(&self, room: &OwnedRoomId, body: &str) -> Seen {
        let sent = say(&self.alice, room, body).await;
        self.alice
            .wait_for(body, WAIT, answer_to(&self.bot, &sent))
            .await
    }

    /// Wait until the bot has joined `room` (as alice sees it).
    async fn bot_joined(&self, room: &OwnedRoomId) {
        let r = self.alice.room(room).await;
        let what = format!("the bot joining {room}");
        eventually(&what, WAIT, || async {
            let m = r.get_member(&self.bot).await.ok()??;
            (*m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join)
                .then_some(())
        })
        .await
    }

    /// Wait until alice's and bob's clients know the bot's device, so what
    /// they send in an encrypted room is encrypted for it.
    async fn devices_known(&self) {
        self.alice.knows_devices_of(&self.bot).await;
        self.bob.knows_devices_of(&self.bot).await;
    }
}

fn from_bot<'a>(
    bot: &'a OwnedUserId,
    room: &'a OwnedRoomId,
    needle: &'a str,
) -> impl Fn(&Seen) -> bool + 'a {
    move |s| s.sender == *bot && s.room == *room && s.body.contains(needle)
}

/// The bot's answers to `event`.
fn answer_to<'a>(
    bot: &'a OwnedUserId,
    event: &'a matrix_sdk::ruma::OwnedEventId,
) -> impl Fn(&Seen) -> bool + 'a {
    move |s| s.sender == *bot && s.reply_to.as_ref() == Some(event)
}

/// The seed's deploy, end to end: prompt, refusals, a confirmation by a
/// colleague, and the result, in `room`.
async fn deploy_flow(s: &Scene, room: &OwnedRoomId, branch: &str) {
    let cmd = say(&s.alice, room, &format!("!flow deploy {branch}")).await;
    let prompt = s
        .alice
        .wait_for("the prompt", WAIT, |x| {
            x.sender == s.bot
                && x.room == *room
                && x.body.contains("Confirmation needed")
                && x.reply_to.as_ref() == Some(&cmd)
        })
        .await;
    assert!(prompt.body.contains(&s.repo.head()), "{}", prompt.body);
    // Alice may not approve her own request.
    reply(&s.alice, room, &prompt.event_id, "yes").await;
    s.alice
        .wait_for(
            "self-approval refused",
            WAIT,
            from_bot(&s.bot, room, "someone else must approve"),
        )
        .await;
    // Bob approves; the pack is installed; a result message follows.
    reply(&s.bob, room, &prompt.event_id, "yes").await;
    s.alice
        .wait_for(
            "the ack",
            WAIT,
            from_bot(&s.bot, room, "Deploying flow ... standby ..."),
        )
        .await;
    s.alice
        .wait_for(
            "the result",
            WAIT,
            from_bot(&s.bot, room, "Successfully deployed flow"),
        )
        .await;
    s.alice
        .wait_for("the ✅ reaction on the command", WAIT, |x| {
            x.sender == s.bot
                && x.reaction
                    .as_ref()
                    .is_some_and(|(k, e)| k == "✅" && *e == cmd)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_with_confirmation_on_synapse() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    let mut bot = s.start();
    let room = s.room(true, false).await;
    s.bot_joined(&room).await;

    // The bot is healthy once it syncs, and says so on /healthz.
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", s.http_port);
    let body: serde_json::Value = eventually("a healthy /healthz", WAIT, || async {
        let health = http.get(url("/healthz")).send().await.unwrap();
        let code = health.status();
        let body: serde_json::Value = health.json().await.unwrap();
        assert!(code == 200 || code == 503, "{code}: {body}");
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "ok", "{body}");
    // A SIEM shipper tails the audit log while the bot runs.
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["audit", "--config"])
        .arg(s.dir.path().join("airlock.yaml"))
        .args(["--jsonl", "--follow", "--since", "1h"])
        .env("AIRLOCK_AUDIT_TOKEN", AUDIT_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, followed) = std::sync::mpsc::channel::<serde_json::Value>();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).expect("each line is one JSON entry");
            if tx.send(v).is_err() {
                break;
            }
        }
    });

    // Mallory is refused; help lists nothing for her.
    say(&s.mallory, &room, "!flow deploy main").await;
    s.mallory
        .wait_for("mallory refused", WAIT, from_bot(&s.bot, &room, "Refused"))
        .await;

    deploy_flow(&s, &room, "main").await;
    // The deploy moved the counters the running bot serves on /metrics.
    let metrics = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    for series in [
        "airlock_executions_total{action=\"packs.install\",status=\"succeeded\"} 1",
        "airlock_commands_total{outcome=\"refused\"} 1",
        "airlock_approvals_total{outcome=\"counted\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "no {series} in\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("airlock_syncs_total{outcome=\"ok\"} ")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("airlock_reply_latency_seconds_count ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The follower saw the deploy finish, as it was written.
    let deadline = std::time::Instant::now() + WAIT;
    let finished = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = followed
            .recv_timeout(left)
            .expect("the follower saw the deploy finish");
        if e["event"] == "finished" && e["action"] == "packs.install" {
            break e;
        }
    };
    assert_eq!(finished["status"], "succeeded", "{finished}");
    follower.kill().unwrap();
    follower.wait().unwrap();
    say(&s.alice, &room, "!st2-flow status").await;
    s.alice
        .wait_for(
            "the pack's own alias",
            WAIT,
            from_bot(&s.bot, &room, "st2-flow v1 is live"),
        )
        .await;

    // A reply quoting "yes" whose relation points elsewhere approves nothing.
    let cmd = say(&s.alice, &room, "!flow deploy main").await;
    let prompt = s
        .alice
        .wait_for("second prompt", WAIT, |x| {
            x.sender == s.bot
                && x.reply_to.as_ref() == Some(&cmd)
                && x.body.contains("Confirmation needed")
        })
        .await;
    let id = common::request_id(&prompt.body);
    reply(
        &s.bob,
        &room,
        &cmd,
        &format!(
            "> <{}> {}\n\nyes",
            s.bot,
            prompt.body.lines().next().unwrap()
        ),
    )
    .await;
    // An edit of an old message into a command runs nothing.
    let old = say(&s.alice, &room, "just chatting").await;
    let edit = RoomMessageEventContent::text_plain("!flow deploy main")
        .make_replacement(ReplacementMetadata::new(old.clone(), None));
    s.alice.room(&room).await.send(edit).await.unwrap();
    s.alice
        .wait_for(
            "the edit notice",
            WAIT,
            from_bot(&s.bot, &room, "Edited messages never run"),
        )
        .await;
    say(&s.alice, &room, "!pending").await;
    let pending = s
        .alice
        .wait_for(
            "pending list",
            WAIT,
            from_bot(&s.bot, &room, "Open requests"),
        )
        .await;
    assert!(
        pending.body.contains(&id) && pending.body.contains("0/1 approvals"),
        "{}",
        pending.body
    );
    assert_eq!(
        pending.body.matches("pending").count(),
        1,
        "{}",
        pending.body
    );

    // A long action never holds up the sync loop: other commands are
    // answered while it runs.
    let slow = say(&s.alice, &room, "!pause 120").await;
    s.alice
        .wait_for("the slow ack", WAIT, |x| {
            x.sender == s.bot && x.reply_to.as_ref() == Some(&slow) && x.body == "pausing"
        })
        .await;
    let status_cmd = say(&s.alice, &room, "!st2-flow status").await;
    s.alice
        .wait_for("an answer while the action runs", WAIT, |x| {
            x.sender == s.bot
                && x.reply_to.as_ref() == Some(&status_cmd)
                && x.body.contains("v1 is live")
        })
        .await;
    assert!(
        !s.alice
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|x| x.sender == s.bot && x.body.contains("core.pause")),
        "the slow action should still be running"
    );

    // Restart with a request pending and the slow action running: the
    // action is interrupted cleanly, the pending request survives and later
    // runs once.
    let stopping = std::time::Instant::now();
    let status = bot.stop();
    assert!(
        status.success(),
        "airlock exited with {status}: {}",
        bot.log()
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    // Bob approves while the bot is down: the stored sync token means the
    // reply is neither replayed nor lost when it comes back.
    reply(&s.bob, &room, &prompt.event_id, "yes").await;
    let mut bot = s.start();
    s.alice
        .wait_for("the deploy after restart", WAIT, |x| {
            x.sender == s.bot
                && x.body.contains("Successfully deployed flow")
                && x.reply_to.as_ref() == Some(&cmd)
        })
        .await;
    reply(&s.bob, &room, &prompt.event_id, "yes").await;
    s.alice
        .wait_for(
            "no second run",
            WAIT,
            from_bot(&s.bot, &room, "it is already succeeded"),
        )
        .await;
    let deploys = s
        .alice
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|x| x.sender == s.bot && x.body.contains("Successfully deployed flow"))
        .count();
    assert_eq!(deploys, 2, "one deploy before the restart, one after");

    say(&s.alice, &room, "!audit 40").await;
    let log = s
        .alice
        .wait_for(
            "the audit",
            WAIT,
            from_bot(&s.bot, &room, "audit entries for this room"),
        )
        .await;
    assert!(
        log.body.contains("interrupted") && log.body.contains("alias=tests.pause"),
        "{}",
        log.body
    );

    // The audit log answers who deployed.
    say(&s.alice, &room, "!audit who deployed st2-flow").await;
    let who = s
        .alice
        .wait_for(
            "who deployed",
            WAIT,
            from_bot(&s.bot, &room, "Deployments of st2-flow"),
        )
        .await;
    assert!(
        who.body
            .contains(&format!("by {} (approved by {})", s.alice.id, s.bob.id)),
        "{}",
        who.body
    );
    assert!(bot.stop().success());
    // One device across restarts, under the configured name.
    assert_eq!(
        devices(&s.alice, &s.bot).await,
        vec![Some("airlock e2e".to_string())]
    );
}

/// The display names of `who`'s devices with keys, as the homeserver lists
/// them to `u`.
async fn devices(u: &User, who: &OwnedUserId) -> Vec<Option<String>> {
    let url = u
        .client
        .homeserver()
        .join("_matrix/client/v3/keys/query")
        .unwrap();
    let r = mx::json(
        reqwest::Client::new()
            .post(url)
            .bearer_auth(u.client.access_token().unwrap())
            .json(&serde_json::json!({"device_keys": {who.as_str(): []}})),
    )
    .await;
    r["device_keys"][who.as_str()]
        .as_object()
        .unwrap()
        .values()
        .map(|d| {
            d["unsigned"]["device_display_name"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// What reaches the bot around its commands: history from before it
/// joined (never run), a conversation in a thread (answered and approved
/// there), and a homeserver that goes away for a while (the bot comes back,
/// and says so of the command it could not act on in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_threads_and_outages() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    // The bot reaches the homeserver through a proxy the test can cut.
    let upstream: u16 = hs.url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = common::Proxy::start(upstream);
    let direct = format!("homeserver: {}\n", hs.url);
    let s = scene(hs).await;
    let cfg = s.dir.path().join("airlock.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        &direct,
        &format!(
            "homeserver: http://127.0.0.1:{}\nmax_command_age: 10s\n",
            proxy.port
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();

    // Before the bot's first start: it is invited to a room with a command
    // in it. Joining shows it that history; it must not run it.
    let room = s.room(true, false).await;
    let old = say(&s.alice, &room, "!pending").await;
    let mut bot = s.start();
    s.bot_joined(&room).await;
    let fresh = say(&s.alice, &room, "!pending").await;
    s.alice
        .wait_for(
            "an answer to the new command",
            WAIT,
            answer_to(&s.bot, &fresh),
        )
        .await;
    s.alice
        .never_sees(
            "an answer to a command from before the bot joined",
            Duration::from_secs(1),
            answer_to(&s.bot, &old),
        )
        .await;

    // A deploy asked for in a thread: prompt, approval and result stay there.
    let root = say(&s.alice, &room, "deploying from a thread").await;
    let mut c = RoomMessageEventContent::text_plain("!flow deploy main");
    c.relates_to = Some(Relation::Thread(Thread::plain(root.clone(), root.clone())));
    let cmd = s
        .alice
        .room(&room)
        .await
        .send(c)
        .await
        .unwrap()
        .response
        .event_id;
    let prompt = s
        .alice
        .wait_for("the prompt in the thread", WAIT, answer_to(&s.bot, &cmd))
        .await;
    assert!(
        prompt.body.contains("Confirmation needed"),
        "{}",
        prompt.body
    );
    assert_eq!(prompt.thread.as_ref(), Some(&root));
    let mut yes = RoomMessageEventContent::text_plain("yes");
    yes.relates_to = Some(Relation::Thread(Thread::reply(
        root.clone(),
        prompt.event_id.clone(),
    )));
    s.bob.room(&room).await.send(yes).await.unwrap();
    let done = s
        .alice
        .wait_for(
            "the result in the thread",
            WAIT,
            from_bot(&s.bot, &room, "Successfully deployed flow"),
        )
        .await;
    assert_eq!(done.thread.as_ref(), Some(&root));
    assert_eq!(done.reply_to.as_ref(), Some(&cmd));

    // The homeserver goes away while an action runs. Its result is
    // delivered when the server is back; a command sent meanwhile reaches
    // the bot then, too late to run, and the bot says so.
    let slow = say(&s.alice, &room, "!pause 3").await;
    s.alice
        .wait_for("the pause ack", WAIT, |x| {
            answer_to(&s.bot, &slow)(x) && x.body == "pausing"
        })
        .await;
    let failed_syncs = || async {
        let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", s.http_port))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("airlock_syncs_total{outcome=\"failed\"} "))
            .map_or(Some(0.0), |n| n.trim().parse::<f64>().ok())
    };
    let failed_before = failed_syncs().await.unwrap_or(0.0);
    proxy.cut();
    eventually("the bot noticing the outage", WAIT, || async {
        failed_syncs().await.filter(|n| *n > failed_before)
    })
    .await;
    // The command must reach the bot older than its max_command_age (10 s):
    // the server comes back once that much time has passed since it was sent.
    let too_old = tokio::time::Instant::now() + Duration::from_secs(11);
    let during = say(&s.alice, &room, "!pending").await;
    tokio::time::sleep_until(too_old).await;
    proxy.restore();
    let late = s
        .alice
        .wait_for(
            "the answer after the outage",
            Duration::from_secs(90),
            answer_to(&s.bot, &during),
        )
        .await;
    assert!(
        late.body.contains("Not acting on your command"),
        "{}",
        late.body
    );
    s.alice
        .wait_for("the result of the action that ran offline", WAIT, |x| {
            answer_to(&s.bot, &slow)(x) && x.body.contains("core.pause succeeded")
        })
        .await;
    let after = say(&s.alice, &room, "!pending").await;
    let answer = s
        .alice
        .wait_for(
            "an answer after the outage",
            WAIT,
            answer_to(&s.bot, &after),
        )
        .await;
    assert!(answer.body.contains("No open requests"), "{}", answer.body);
    assert!(bot.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_room_deploy_and_invites_by_policy() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    let mut bot = s.start();
    let room = s.room(true, true).await;
    s.bot_joined(&room).await;
    s.devices_known().await;
    deploy_flow(&s, &room, "main").await;
    // With reaction_approvals on, 👍 on the prompt approves like "yes".
    s.repo.branch("other");
    let cmd = say(&s.alice, &room, "!flow deploy other").await;
    let prompt = s
        .alice
        .wait_for("the prompt", WAIT, answer_to(&s.bot, &cmd))
        .await;
    s.bob
        .room(&room)
        .await
        .send(
            matrix_sdk::ruma::events::reaction::ReactionEventContent::new(
                matrix_sdk::ruma::events::relation::Annotation::new(
                    prompt.event_id.clone(),
                    "👍".into(),
                ),
            ),
        )
        .await
        .unwrap();
    s.alice
        .wait_for("the deploy approved by 👍", WAIT, |x| {
            x.sender == s.bot
                && x.reply_to.as_ref() == Some(&cmd)
                && x.body.contains("Successfully deployed flow")
        })
        .await;
    // The bot's answers were encrypted and decrypted by alice's client.
    let r = s.alice.room(&room).await;
    assert!(r.latest_encryption_state().await.unwrap().is_encrypted());
    // Formatted answers: a summary, then the block, all of it escaped.
    say(&s.alice, &room, "!pack list").await;
    let list = s
        .alice
        .wait_for(
            "pack list",
            WAIT,
            from_bot(&s.bot, &room, "pack(s) installed"),
        )
        .await;
    let html = list.html.expect("formatted_body");
    assert!(
        html.starts_with("1 pack(s) installed<pre><code>st2-flow 0.1.0"),
        "{html}"
    );
    // A message the bot cannot decrypt gets a visible warning.
    let bogus = serde_json::json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnB5d2Z0ZXN0aW5nLXVuZGVjcnlwdGFibGU",
        "device_id": "NOSUCHDEVICE",
        "sender_key": "aGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYSBrZXk",
        "session_id": "bm8gc3VjaCBzZXNzaW9uIGV4aXN0cyBhdCBhbGw",
    });
    s.bob
        .room(&room)
        .await
        .send_raw("m.room.encrypted", bogus)
        .await
        .unwrap();
    s.alice
        .wait_for(
            "the decryption warning",
            WAIT,
            from_bot(&s.bot, &room, "could not decrypt your message"),
        )
        .await;

    // Mallory's room: the policy gives her nothing there, so the bot declines.
    let mut req = CreateRoom::new();
    req.invite = vec![s.bot.clone()];
    let hers = s.mallory.client.create_room(req).await.unwrap();
    eventually("the bot declining mallory's invite", WAIT, || async {
        let m = hers.get_member(&s.bot).await.ok()??;
        (*m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Leave)
            .then_some(())
    })
    .await;
    // A sync after the decline has been handled (the bot answers again),
    // and declining logged no error.
    say(&s.alice, &room, "!help").await;
    s.alice
        .wait_for(
            "help after the decline",
            WAIT,
            from_bot(&s.bot, &room, "flow deploy"),
        )
        .await;
    let log = bot.log();
    assert!(
        !log.contains("ERROR"),
        "a normal decline logged an error:\n{log}"
    );
    assert!(bot.stop().success());
}

/// The audit room's checkpoints are read back by structure: text mallory
/// makes the bot echo there (`seq=1 hash=…`) is no checkpoint, so after a
/// restart the log still verifies against what the room holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn echoed_checkpoint_text_in_the_audit_room_is_no_checkpoint() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    let room = s.room(true, false).await;
    let cfg = s.dir.path().join("airlock.yaml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "audit_room: \"{room}\"\naudit_checkpoints:\n  entries: 1\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    let mut bot = s.start();
    s.bot_joined(&room).await;
    let hash = "ab".repeat(32);
    let forged = say(&s.mallory, &room, &format!("!zz seq=1 hash={hash} ok")).await;
    let echo = s
        .alice
        .wait_for("the echo", WAIT, answer_to(&s.bot, &forged))
        .await;
    assert!(
        echo.body.contains(&format!("seq=1 hash={hash}")),
        "{}",
        echo.body
    );
    assert!(bot.stop().success());
    let mut bot = s.start();
    let asked = say(&s.alice, &room, "!audit verify").await;
    let verdict = s
        .alice
        .wait_for("the verdict", WAIT, answer_to(&s.bot, &asked))
        .await;
    assert!(
        verdict.body.contains("intact") && verdict.body.contains("checkpoint(s)"),
        "{}",
        verdict.body
    );
    assert!(bot.stop().success());
}

/// Rooms of room version 12 have IDs with no server part; the policy names
/// this one by its ID, not an alias, and the bot serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_named_by_its_v12_id() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    // The room exists (and the bot is invited) before the bot first starts.
    let room = s.room(false, false).await;
    assert!(
        !room.as_str().contains(':'),
        "Synapse made a room of an older version: {room}"
    );
    let policy = s.dir.path().join("policies/ops.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace(&s.alias, room.as_str())).unwrap();
    let mut bot = s.start();
    s.bot_joined(&room).await;
    deploy_flow(&s, &room, "main").await;
    // The bot ran itself again with glibc's per-thread caches off, once:
    // the same process, the environment it was given otherwise.
    common::assert_without_thread_caches(bot.pid());
    // `!approve <id>` from a room where mallory has no rights leaks nothing.
    let cmd = say(&s.alice, &room, "!flow deploy main").await;
    let prompt = s
        .alice
        .wait_for("the prompt", WAIT, answer_to(&s.bot, &cmd))
        .await;
    let id = prompt
        .body
        .split("request ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let ask = reply(&s.bob, &room, &prompt.event_id, "no").await;
    s.alice
        .wait_for("the denial, answering bob", WAIT, |x| {
            x.sender == s.bot && x.reply_to.as_ref() == Some(&ask) && x.body.contains(&id)
        })
        .await;
    assert!(bot.stop().success());
}

/// The example pack's script deploy on Synapse: the prompt masks the
/// secret, a reply approves it, and the result template renders the
/// script's JSON output.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_packs_script_deploys_with_approval() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    let mut bot = s.start();
    let room = s.room(true, false).await;
    s.bot_joined(&room).await;
    let cmd = say(&s.alice, &room, "!deploy web v1.2.3 environment=prod").await;
    let prompt = s
        .alice
        .wait_for("the prompt", WAIT, answer_to(&s.bot, &cmd))
        .await;
    assert!(prompt.body.contains("token: ********"), "{}", prompt.body);
    reply(&s.bob, &room, &prompt.event_id, "yes").await;
    let seen = s
        .alice
        .wait_for("the result", WAIT, |x| {
            x.sender == s.bot && x.body.contains("Deployed web v1.2.3 to prod")
        })
        .await;
    assert!(!seen.body.contains(EXAMPLE_SECRET));
    assert!(bot.stop().success());
    assert!(!bot.log().contains(EXAMPLE_SECRET));
}

/// Bootstrap cross-signing for `u`'s device (with the password, should
/// the homeserver ask for it).
async fn cross_sign(u: &User) {
    use matrix_sdk::ruma::api::client::uiaa;
    let enc = u.client.encryption();
    if let Err(e) = enc.bootstrap_cross_signing(None).await {
        let info = e
            .as_uiaa_response()
            .unwrap_or_else(|| panic!("cross-signing: {e}"));
        let mut pw = uiaa::Password::new(
            uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(u.id.to_string())),
            PW.to_owned(),
        );
        pw.session = info.session.clone();
        enc.bootstrap_cross_signing(Some(uiaa::AuthData::Password(pw)))
            .await
            .expect("cross-signing with the password");
    }
}

/// `verified_devices: true`: bob's own device, which he cross-signed,
/// approves; a second login with his password (a stolen token, a device he
/// never signed) is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_cross_signed_devices_approve_under_verified_devices() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    cross_sign(&s.bob).await;
    let stolen = User::login(
        &Homeserver::from_env().unwrap(),
        &s.bob.id,
        PW,
        &s.dir.path().join("bob-stolen-store"),
    )
    .await;
    let mut bot = s.start();
    let room = s.room(true, true).await;
    s.bot_joined(&room).await;
    s.devices_known().await;
    let cmd = say(&s.alice, &room, "!secure echo hello").await;
    let prompt = s
        .alice
        .wait_for("the prompt", WAIT, answer_to(&s.bot, &cmd))
        .await;
    assert!(
        prompt.body.contains("from cross-signed devices only"),
        "{}",
        prompt.body
    );
    reply(&stolen, &room, &prompt.event_id, "yes").await;
    let refused = s
        .alice
        .wait_for(
            "the refusal",
            WAIT,
            from_bot(&s.bot, &room, "has not cross-signed"),
        )
        .await;
    assert!(
        refused.body.contains(&format!(
            "your answer came from device {}",
            stolen.client.device_id().unwrap()
        )),
        "{}",
        refused.body
    );
    reply(&s.bob, &room, &prompt.event_id, "yes").await;
    s.alice
        .wait_for("the result", WAIT, from_bot(&s.bot, &room, "secure: hello"))
        .await;
    assert!(bot.stop().success());
}

/// Actions routed to StackStorm (the stand-in) from a real room: alice
/// asks, bob approves, st2 runs it; airlock stops mid-run and, started
/// again, re-attaches and reports the result once, without submitting it
/// again; the audit holds st2's execution id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actions_run_on_stackstorm_and_survive_a_restart() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let Some(venv) = common::st2::venv() else {
        return;
    };
    let st2 = common::st2::StandIn::start(&venv);
    let s = scene(hs).await;
    let dir = s.dir.path();
    common::append(
        &dir.join("airlock.yaml"),
        &format!(
            "st2:\n  url: {}\n  api_key_env: AIRLOCK_TEST_ST2_API_KEY\n  actions: [\"tests.*\"]\n  announce_as: \"@st2:example.org\"\n",
            st2.url
        ),
    );
    std::fs::write(
        dir.join("extra-aliases/st2slow.yaml"),
        "name: slow\npack: st2ops\naction_ref: tests.slow\nformats: ['st2 slow {{ seconds }}']\nresult:\n  format: 'st2 {{ execution.id }} {{ execution.status }}: {{ execution.result.stdout }}'\n",
    )
    .unwrap();
    common::append(
        &dir.join("policies/ops.yaml"),
        &format!(
            "\n  - id: st2-announces\n    effect: allow\n    users: [\"@st2:example.org\"]\n    rooms: [\"{a}\"]\n    builtins: [announce]\n\n  - id: st2-ops\n    effect: allow\n    groups: [ops]\n    rooms: [\"{a}\"]\n    packs: [st2ops]\n    confirm:\n      approvers: {{groups: [ops]}}\n      self_approve: false\n",
            a = s.alias
        ),
    );

    let mut bot = s.start();
    let room = s.room(true, false).await;
    s.bot_joined(&room).await;
    let cmd = say(&s.alice, &room, "!st2 slow 4").await;
    let prompt = s
        .alice
        .wait_for("the prompt", WAIT, answer_to(&s.bot, &cmd))
        .await;
    assert!(
        prompt.body.contains("runs on StackStorm at"),
        "{}",
        prompt.body
    );
    reply(&s.bob, &room, &prompt.event_id, "yes").await;
    let list = || {
        st2.st2(&[
            "execution",
            "list",
            "-j",
            "--action",
            "tests.slow",
            "--attr",
            "id",
            "status",
        ])
        .1
    };
    eventually("the run on st2", WAIT, || async {
        list().contains("\"running\"").then_some(())
    })
    .await;
    // Stopped mid-run: st2's execution goes on.
    assert!(bot.stop().success());
    let mut bot = s.start();
    let done = s
        .alice
        .wait_for(
            "the result after the restart",
            WAIT,
            from_bot(&s.bot, &room, "succeeded: done"),
        )
        .await;
    let listed = list();
    assert_eq!(
        listed.matches("\"id\"").count(),
        1,
        "submitted once: {listed}"
    );
    let id = done.body.split_whitespace().nth(1).unwrap().to_string();
    assert!(listed.contains(&id), "{id} in {listed}");
    s.alice
        .wait_for(
            "the re-attach notice",
            WAIT,
            from_bot(&s.bot, &room, "re-attached, not run again"),
        )
        .await;
    // A workflow's chatops.post_message reaches this room (the policy lets
    // st2 post here), and not another.
    let (code, out) = st2.st2(&[
        "run",
        "tests.announce",
        &format!("channel={room}"),
        "message=deploy window opens in 5 minutes",
    ]);
    assert_eq!(code, Some(0), "{out}");
    st2.st2(&[
        "run",
        "tests.announce",
        "channel=!elsewhere:example.org",
        "message=psst",
    ]);
    s.alice
        .wait_for(
            "the announcement",
            WAIT,
            from_bot(
                &s.bot,
                &room,
                "📣 StackStorm: deploy window opens in 5 minutes",
            ),
        )
        .await;
    assert!(bot.stop().success());
    // The audit names st2's execution.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["audit", "--config"])
        .arg(dir.join("airlock.yaml"))
        .args(["--jsonl", "--all", "--status", "succeeded"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["detail"]["st2_execution"]["id"] == id.as_str()
        }),
        "{text}"
    );
}

/// Alice asks on Matrix, bob approves, a Temporal worker runs it; `airlock
/// run` is killed mid-run (SIGKILL) and started again, and the result
/// arrives once, with the worker and queue in the audit.
#[cfg(feature = "temporal")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actions_run_on_a_temporal_worker_and_survive_a_restart() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let Some(bin) = common::temporal::binary() else {
        return;
    };
    let s = scene(hs).await;
    let dir = s.dir.path();
    let server = common::temporal::Server::start(&bin, dir);
    let temporal = format!(
        "temporal:\n  url: {}\n  heartbeat_seconds: 5\n  queues:\n    prod: [\"core.local\"]\n",
        server.url()
    );
    common::append(&dir.join("airlock.yaml"), &temporal);
    let worker_cfg = dir.join("worker.yaml");
    std::fs::write(&worker_cfg, format!("data_dir: worker-data\n{temporal}")).unwrap();
    let _worker = common::temporal::Worker::start(&worker_cfg, "prod", &[]);
    std::fs::write(
        dir.join("extra-aliases/tdeploy.yaml"),
        "name: tdeploy\npack: remote\naction_ref: core.local\nformats: ['remote deploy']\nimmutable_parameters:\n  cmd: 'sleep 3; echo deployed from $WHERE'\nresult:\n  format: '{{ execution.status }}: {{ execution.result.stdout }}'\n",
    )
    .unwrap();
    common::append(
        &dir.join("policies/ops.yaml"),
        &format!(
            "\n  - id: remote-ops\n    effect: allow\n    groups: [ops]\n    rooms: [\"{}\"]\n    actions: [core.local]\n    confirm:\n      approvers: {{groups: [ops]}}\n      self_approve: false\n",
            s.alias
        ),
    );

    let mut bot = s.start();
    let room = s.room(true, false).await;
    s.bot_joined(&room).await;
    let cmd = say(&s.alice, &room, "!remote deploy").await;
    let prompt = s
        .alice
        .wait_for("the prompt", WAIT, answer_to(&s.bot, &cmd))
        .await;
    assert!(
        prompt.body.contains("runs on Temporal, task queue prod"),
        "{}",
        prompt.body
    );
    let request = common::request_id(&prompt.body);
    reply(&s.bob, &room, &prompt.event_id, "yes").await;
    eventually("the workflow starting", WAIT, || async {
        server.describe(&request).map(drop)
    })
    .await;
    // Killed mid-run: the workflow goes on.
    bot.kill();
    let mut bot = s.start();
    s.alice
        .wait_for(
            "the result after the restart",
            WAIT,
            from_bot(&s.bot, &room, "succeeded: deployed from prod"),
        )
        .await;
    s.alice
        .wait_for(
            "the re-attach notice",
            WAIT,
            from_bot(&s.bot, &room, "re-attached, not run again"),
        )
        .await;
    assert!(bot.stop().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["audit", "--config"])
        .arg(dir.join("airlock.yaml"))
        .args(["--jsonl", "--all", "--request", &request])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let finished: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "finished")
        .collect();
    assert_eq!(finished.len(), 1, "reported once: {text}");
    assert_eq!(finished[0]["detail"]["temporal"]["task_queue"], "prod");
}

/// Locks on Synapse: a run approved while another holds its lock waits and
/// is told so, then runs after it; a stop with one running and one queued
/// keeps the queue across the restart and runs each once; a lock held by
/// hand holds runs until it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_with_one_lock_take_turns_across_a_restart_and_a_hand_lock() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    let room = s.room(true, false).await;
    let mut bot = s.start();
    s.bot_joined(&room).await;
    let request_of = |body: &str, after: &str| -> String {
        body.split(after)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .trim_end_matches([')', '.', ':'])
            .to_string()
    };
    // One run holds env/prod; the next waits behind it, then runs.
    // The two may reach the bot in either order: whichever it took second
    // is told it waits.
    let first = say(&s.alice, &room, "!hold 3").await;
    let second = say(&s.bob, &room, "!hold 1").await;
    let waits = s
        .alice
        .wait_for(
            "the second told it waits",
            WAIT,
            from_bot(&s.bot, &room, "waits for lock env/prod: request"),
        )
        .await;
    assert!(
        answer_to(&s.bot, &first)(&waits) || answer_to(&s.bot, &second)(&waits),
        "{}",
        waits.body
    );
    assert!(
        waits.body.contains("number 1 in the queue"),
        "{}",
        waits.body
    );
    let (b, a) = (
        request_of(&waits.body, "Request "),
        request_of(&waits.body, "lock env/prod: request "),
    );
    s.alice
        .wait_for(
            "the second's result",
            WAIT,
            from_bot(&s.bot, &room, &format!("held {b}")),
        )
        .await;
    let firsts = s.alice.seen.lock().unwrap().clone();
    let at = |id: &str| {
        firsts
            .iter()
            .position(|x| x.body.contains(&format!("held {id}")))
    };
    assert!(at(&a).unwrap() < at(&b).unwrap(), "the first ran first");

    // Stopped with one running and one queued: after the restart the
    // queued one runs, once; the running one is interrupted, not re-run.
    say(&s.alice, &room, "!hold 30").await;
    // Only once it holds the lock does the second ask: the two would
    // otherwise race to the bot.
    eventually("the 30-second run holding env/prod", WAIT, || async {
        let ask = say(&s.alice, &room, "!locks").await;
        let answer = s
            .alice
            .wait_for("the answer to !locks", WAIT, answer_to(&s.bot, &ask))
            .await;
        answer.body.contains("env/prod: request").then_some(())
    })
    .await;
    let queued = say(&s.bob, &room, "!hold 1").await;
    let waits = s
        .alice
        .wait_for("the queued one told it waits", WAIT, |x| {
            answer_to(&s.bot, &queued)(x) && x.body.contains("waits for lock env/prod")
        })
        .await;
    let (q, r) = (
        request_of(&waits.body, "Request "),
        request_of(&waits.body, "lock env/prod: request "),
    );
    assert!(bot.stop().success());
    let mut bot = s.start();
    s.alice
        .wait_for(
            "the queued one's result after the restart",
            Duration::from_secs(60),
            from_bot(&s.bot, &room, &format!("held {q}")),
        )
        .await;

    // A lock held by hand: runs wait until it is released.
    let locked = say(&s.bob, &room, "!lock env/prod database maintenance").await;
    s.alice
        .wait_for("the lock held", WAIT, |x| {
            answer_to(&s.bot, &locked)(x) && x.body.contains("🔒 Lock env/prod is held by")
        })
        .await;
    let held_back = say(&s.alice, &room, "!hold 1").await;
    let waits = s
        .alice
        .wait_for("a run held back by hand", WAIT, |x| {
            answer_to(&s.bot, &held_back)(x) && x.body.contains("database maintenance")
        })
        .await;
    let h = request_of(&waits.body, "Request ");
    let listed = s.ask(&room, "!locks").await;
    assert!(
        listed.body.contains(&format!("waiting: {h}")),
        "{}",
        listed.body
    );
    say(&s.bob, &room, "!unlock env/prod").await;
    s.alice
        .wait_for(
            "the held-back run's result",
            WAIT,
            from_bot(&s.bot, &room, &format!("held {h}")),
        )
        .await;
    assert!(bot.stop().success());

    // Each ran once: one `started` per request in the audit log.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["audit", "--jsonl", "--all", "--config"])
        .arg(s.dir.path().join("airlock.yaml"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    for id in [&a, &b, &q, &h] {
        let started = log
            .lines()
            .filter(|l| {
                l.contains("\"event\":\"started\"") && l.contains(&format!("\"request\":\"{id}\""))
            })
            .count();
        assert_eq!(started, 1, "request {id} started {started} times");
    }
    // The one running at the stop ended interrupted; the one queued ran
    // after the restart.
    let has = |id: &str, event: &str| {
        log.lines().any(|l| {
            l.contains(&format!("\"event\":\"{event}\""))
                && l.contains(&format!("\"request\":\"{id}\""))
        })
    };
    assert!(has(&r, "interrupted") && !has(&r, "finished"), "{log}");
    assert!(has(&q, "finished") && !has(&q, "interrupted"), "{log}");
}

/// What an install changes and a redeploy on Synapse: a new commit is
/// shown as a step forward; `!deploys` lists both installs; `!redeploy` of
/// the first installs its commit again after the branch has moved, its
/// prompt calling it a rewind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_install_shows_its_range_and_a_redeploy_rewinds_on_synapse() {
    let Some(hs) = Homeserver::from_env() else {
        return;
    };
    let s = scene(hs).await;
    let room = s.room(true, false).await;
    let mut bot = s.start();
    s.bot_joined(&room).await;
    let v1 = s.repo.head();
    deploy_flow(&s, &room, "main").await;
    s.repo.write("actions/a.txt", "a\n");
    let v2 = s.repo.commit("add a");
    let cmd = say(&s.alice, &room, "!flow deploy main").await;
    let forward = s
        .alice
        .wait_for("the second prompt", WAIT, |x| {
            answer_to(&s.bot, &cmd)(x) && x.body.contains("Confirmation needed")
        })
        .await;
    assert!(
        forward
            .body
            .contains(&format!("1 commit forward from the live {}", &v1[..12]))
            && forward.body.contains("add a — tests"),
        "{}",
        forward.body
    );
    reply(&s.bob, &room, &forward.event_id, "yes").await;
    s.alice
        .wait_for("the second install", WAIT, |x| {
            answer_to(&s.bot, &cmd)(x) && x.body.contains("Successfully deployed flow")
        })
        .await;
    let deploys = s.ask(&room, "!deploys st2-flow").await;
    let lines: Vec<&str> = deploys.body.lines().collect();
    assert!(
        lines.len() == 3 && lines[1].contains(&v2[..12]) && lines[2].contains(&v1[..12]),
        "{}",
        deploys.body
    );
    let first = lines[2].split_whitespace().next().unwrap().to_string();
    let again = say(&s.alice, &room, &format!("!redeploy {first}")).await;
    let rewind = s
        .alice
        .wait_for("the redeploy's prompt", WAIT, |x| {
            answer_to(&s.bot, &again)(x) && x.body.contains("Confirmation needed")
        })
        .await;
    assert!(
        rewind
            .body
            .contains(&format!("↩️ Asks again for request {first}"))
            && rewind.body.contains(&format!(
                "goes back 1 commit from the live {} (a rewind)",
                &v2[..12]
            )),
        "{}",
        rewind.body
    );
    reply(&s.bob, &room, &rewind.event_id, "yes").await;
    s.alice
        .wait_for("the rewind installed", WAIT, |x| {
            answer_to(&s.bot, &again)(x) && x.body.contains("Successfully deployed flow")
        })
        .await;
    let listed = s.ask(&room, "!pack list").await;
    assert!(listed.body.contains(&v1[..12]), "{}", listed.body);
    assert!(bot.stop().success());
}
