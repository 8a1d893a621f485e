//! The web view in a real browser: Debian's Chromium, driven through
//! ChromeDriver (WebDriver), with JavaScript off, against the bot's HTTP
//! listener on loopback. Signs in with the link `!web` sends, and checks
//! that markup and script in a command show as text, that no dialog
//! opens, and that a used link is refused. Saves screenshots of the pages
//! (docs/web.md shows them). The last test runs the `airlock run` binary
//! on the test Synapse and signs in from the direct message a Matrix
//! client receives. Needs /usr/bin/chromium and /usr/bin/chromedriver
//! (`.ci/run` installs them); SKIPPED without.

mod common;
#[path = "common/matrix.rs"]
mod mx;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{ClientBuilder, Locator};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};

/// How long a Synapse scene waits for what the bot or a client does.
const WAIT: Duration = Duration::from_secs(30);

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// ChromeDriver on a port of its own, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Option<Driver> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: no {CHROMIUM} / {CHROMEDRIVER} (Debian's chromium and chromium-driver; .ci/run installs them) ***\n"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    wait_until("chromedriver listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(drop)
    });
    Some(Driver { child, port })
}

/// A headless Chromium session with JavaScript off and a profile of its
/// own (the flags this machine's closed network needs).
async fn browser(d: &Driver, profile: &Path) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1100,800",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {"profile.managed_default_content_settings.javascript": 2},
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a WebDriver session")
}

/// The text of the first element `css` selects.
async fn text(c: &fantoccini::Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

#[test]
fn signed_in_by_the_dm_link_the_pages_show_markup_as_text_without_javascript() {
    let Some(d) = driver() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (listener, base) = loopback(&rt);
    let (s, _repo) = web_settings(tmp.path(), Some(&base));
    let bot = Bot::open(s);
    serve_http(&bot, &rt, listener, None);

    // Two runs of `say`, approved and done, a minute apart.
    let mut runs = Vec::new();
    for word in ["first", "second <b>run</b>"] {
        let p = prompt(&bot.say(ALICE, OPS, &format!("!say {word}"))).clone();
        runs.push(request_id(&p.body));
        bot.reply(BOB, OPS, &p.event_id, "yes");
        bot.advance(60_000);
    }
    // A request whose command holds markup and a script, waiting.
    let p = prompt(&bot.say(
        ALICE,
        OPS,
        "!say <script>alert('pwned')</script><b>bold</b><i>x</i>",
    ))
    .clone();
    let id = request_id(&p.body);
    // The sign-in link, from the direct message alone.
    let sent = bot.say(ALICE, OPS, "!web");
    let dm = sent
        .iter()
        .find(|m| m.room == format!("direct:{ALICE}"))
        .expect("a direct message");
    let at = dm.body.find(&format!("{base}/web/login?token=")).unwrap();
    let link = dm.body[at..].split_whitespace().next().unwrap().to_string();

    let shots = repo_root().join("target/web-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    rt.block_on(async {
        let c = browser(&d, &tmp.path().join("profile")).await;
        c.goto(&link).await.unwrap();
        // Signed in: the overview, at /web/.
        assert_eq!(c.current_url().await.unwrap().path(), "/web/");
        let row = text(&c, "ul.requests li pre").await;
        assert!(
            row.contains("<script>alert('pwned')</script><b>bold</b><i>x</i>"),
            "shown as text: {row}"
        );
        markup_is_text(&c).await;
        std::fs::write(
            shots.join("web-overview.png"),
            c.screenshot().await.unwrap(),
        )
        .unwrap();

        // The request's page, by its link.
        c.find(Locator::Css(&format!("a[href='/web/request/{id}']")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let page = text(&c, "main").await;
        assert!(page.contains(&format!("Request {id}")), "{page}");
        assert!(page.contains("confirmation_requested"), "{page}");
        markup_is_text(&c).await;

        // A finished run's page: its approver, and its output as text.
        c.goto(&format!("{base}/web/request/{}", runs[1]))
            .await
            .unwrap();
        assert!(text(&c, "table.approvals").await.contains(BOB));
        assert_eq!(
            text(&c, "pre.output.stdout").await.trim_end(),
            "second <b>run</b>"
        );
        markup_is_text(&c).await;
        std::fs::write(shots.join("web-request.png"), c.screenshot().await.unwrap()).unwrap();

        // The alias's runs: one mark per run on the timeline.
        c.goto(&format!("{base}/web/deploys/tests.say"))
            .await
            .unwrap();
        let marks = c.find_all(Locator::Css("svg circle.deploy")).await.unwrap();
        assert_eq!(marks.len(), 2, "one mark per run");
        let rows = c
            .find_all(Locator::Css("table.runs tr.succeeded"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        std::fs::write(shots.join("web-deploys.png"), c.screenshot().await.unwrap()).unwrap();

        // The link again: refused.
        c.goto(&link).await.unwrap();
        let again = text(&c, "main").await;
        assert!(again.contains("This link cannot be used"), "{again}");

        // A fresh link, opened after its five minutes: refused too.
        let late = bot.say(ALICE, OPS, "!web");
        let late = &late
            .iter()
            .find(|m| m.room.starts_with("direct:"))
            .unwrap()
            .body;
        let at = late.find(&format!("{base}/web/login?token=")).unwrap();
        bot.advance(5 * 60_000 + 1);
        c.goto(late[at..].split_whitespace().next().unwrap())
            .await
            .unwrap();
        let expired = text(&c, "main").await;
        assert!(expired.contains("This link cannot be used"), "{expired}");
        c.close().await.unwrap();
    });
}

/// What commands, parameters and outputs held as markup and script
/// showed as text: no script element anywhere, no `<b>` or `<i>` of theirs
/// in the page, no dialog open.
async fn markup_is_text(c: &fantoccini::Client) {
    assert!(c.find_all(Locator::Css("script")).await.unwrap().is_empty());
    assert!(
        c.find_all(Locator::Css("main b, main i"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(c.get_alert_text().await.is_err(), "a dialog opened");
}

/// Whoever may not see a room's requests on the web: a page of another
/// room's request answers as an unknown one does.
const NOT_FOUND: &str = "There is no such page, or nothing here you may see.";

/// The bot on the test Synapse with the web view on: alice and bob run
/// `say` in the ops room (bob approves), carol runs it in a room of her
/// own. The ops room is encrypted, so an approval's device is known.
/// Alice asks `!web`, joins the direct room the bot opens, and signs
/// in with the link found there, in Chromium with JavaScript off. She
/// sees her room's runs, not carol's; a run's page names bob as its
/// approver and shows the output; markup in the command, the parameter
/// and the output is text; the link works once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_synapse_the_dm_link_signs_in_and_pages_show_only_the_users_rooms() {
    const PW: &str = "correct horse battery staple";
    let Some(hs) = mx::Homeserver::from_env() else {
        return;
    };
    let Some(d) = driver() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tag = mx::unique();
    let bot = hs.register(&format!("airlock-{tag}"), PW).await;
    let mut users = Vec::new();
    for who in ["alice", "bob", "carol"] {
        let id = hs.register(&format!("{who}-{tag}"), PW).await;
        users.push(mx::User::login(&hs, &id, PW, &dir.path().join(format!("{who}-store"))).await);
    }
    let (ops, other) = (
        format!("#ops-{tag}:example.org"),
        format!("#other-{tag}:example.org"),
    );
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let policy = format!(
        r#"groups:
  ops: ["{alice}", "{bob}"]
  other: ["{carol}"]
rules:
  - id: ops-tools
    effect: allow
    groups: [ops]
    rooms: ["{ops}"]
    builtins: [pending, audit, web]
  - id: ops-say
    effect: allow
    groups: [ops]
    rooms: ["{ops}"]
    packs: [tests]
    confirm:
      approvers: {{groups: [ops]}}
      self_approve: false
  - id: other-tools
    effect: allow
    groups: [other]
    rooms: ["{other}"]
    builtins: [pending, audit, web]
  - id: other-say
    effect: allow
    groups: [other]
    rooms: ["{other}"]
    packs: [tests]
    confirm:
      approvers: {{groups: [other]}}
      self_approve: true
"#,
        alice = alice.id,
        bob = bob.id,
        carol = carol.id
    );
    for (sub, name, text) in [
        ("policies", "web.yaml", policy.as_str()),
        (
            "aliases",
            "say.yaml",
            "name: say\npack: tests\naction_ref: core.echo\nformats: ['say {{ message }}']\nresult:\n  format: 'said: {{ execution.result.stdout }}'\n",
        ),
        (
            "aliases",
            "slow.yaml",
            "name: slow\npack: tests\naction_ref: core.local\nformats: ['slow']\nimmutable_parameters:\n  cmd: 'echo step one; sleep 6'\n",
        ),
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join(name), text).unwrap();
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "http:\n  listen: \"127.0.0.1:{port}\"\n  web: true\n  public_url: \"{base}\"\nhomeserver: {}\nuser_id: \"{bot}\"\ndevice_name: airlock web e2e\ndata_dir: data\npacks: packs\naliases: [aliases]\npolicies: [policies]\n",
            hs.url
        ),
    )
    .unwrap();
    let _airlock = mx::Airlock::start(&config, PW);

    // Two rooms, each under the alias its rules name.
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let ops_room =
        mx::create_room(alice, Some(&ops), vec![bot.clone(), bob.id.clone()], true).await;
    bob.join(&ops_room).await;
    let other_room = mx::create_room(carol, Some(&other), vec![bot.clone()], false).await;
    // The bot joins on its invites; a command before that is never seen.
    for (u, room) in [(alice, &ops_room), (carol, &other_room)] {
        let r = u.room(room).await;
        let bot = bot.clone();
        mx::eventually("the bot joining", WAIT, || {
            let (r, bot) = (r.clone(), bot.clone());
            async move {
                let m = r.get_member(&bot).await.ok()??;
                (*m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join)
                    .then_some(())
            }
        })
        .await;
    }

    // The ops room is encrypted: what alice and bob send there must be
    // encrypted for the bot's device too (an approval then names bob's).
    alice.knows_devices_of(&bot).await;
    bob.knows_devices_of(&bot).await;

    // Alice's runs, approved by bob; markup in the command, the
    // parameter, and so in the output.
    const MARKUP: &str = "<script>alert('pwned')</script><b>bold</b>";
    let mut ids = Vec::new();
    for n in 1..=2 {
        let cmd = mx::say(alice, &ops_room, &format!("!say {MARKUP} {n}")).await;
        let prompt = alice
            .wait_for("the prompt", WAIT, |x| {
                x.sender == bot
                    && x.reply_to.as_ref() == Some(&cmd)
                    && x.body.contains("Confirmation needed")
            })
            .await;
        ids.push(common::request_id(&prompt.body));
        mx::reply(bob, &ops_room, &prompt.event_id, "yes").await;
        alice
            .wait_for("the result", WAIT, |x| {
                x.sender == bot && x.body.contains(&format!("said: {MARKUP} {n}"))
            })
            .await;
    }
    // One more of alice's, left waiting.
    let cmd = mx::say(alice, &ops_room, "!say still waiting").await;
    let waiting = common::request_id(
        &alice
            .wait_for("the prompt", WAIT, |x| {
                x.sender == bot && x.reply_to.as_ref() == Some(&cmd)
            })
            .await
            .body,
    );
    // Carol's, in her room: one run, one waiting.
    let mut carols = Vec::new();
    for (what, approve) in [("carols own run", true), ("carols open one", false)] {
        let cmd = mx::say(carol, &other_room, &format!("!say {what}")).await;
        let prompt = carol
            .wait_for("carol's prompt", WAIT, |x| {
                x.sender == bot && x.reply_to.as_ref() == Some(&cmd)
            })
            .await;
        carols.push(common::request_id(&prompt.body));
        if approve {
            mx::reply(carol, &other_room, &prompt.event_id, "yes").await;
            carol
                .wait_for("carol's result", WAIT, |x| {
                    x.sender == bot && x.body.contains("said: carols own run")
                })
                .await;
        }
    }

    // `!web`: the bot opens a direct room with alice; her client joins it
    // and reads the link there, never in the ops room.
    let (invited, dm) = ask_for_link(alice, &ops_room, &bot, None).await;
    let at = dm.body.find(&format!("{base}/web/login?token=")).unwrap();
    let link = dm.body[at..].split_whitespace().next().unwrap().to_string();
    alice
        .never_sees(
            "the link in the ops room",
            Duration::from_millis(500),
            |x| x.room == ops_room && x.body.contains(&link),
        )
        .await;

    let c = browser(&d, &dir.path().join("profile")).await;
    c.goto(&link).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/web/");
    // Her room's runs and open request; nothing of carol's.
    let overview = text(&c, "main").await;
    for id in ids.iter().chain([&waiting]) {
        let link = format!("a[href='/web/request/{id}']");
        assert!(
            !c.find_all(Locator::Css(&link)).await.unwrap().is_empty(),
            "{id}: {overview}"
        );
    }
    assert!(overview.contains("still waiting"), "{overview}");
    for id in &carols {
        let link = format!("a[href='/web/request/{id}']");
        assert!(
            c.find_all(Locator::Css(&link)).await.unwrap().is_empty(),
            "{id}: {overview}"
        );
    }
    assert!(!overview.contains("carols"), "carol's room: {overview}");
    markup_is_text(&c).await;

    // A run's page: bob approved it, and its output is there, as text.
    c.goto(&format!("{base}/web/request/{}", ids[1]))
        .await
        .unwrap();
    let approvals = text(&c, "table.approvals").await;
    assert!(approvals.contains(bob.id.as_str()), "{approvals}");
    assert!(approvals.contains("group ops"), "{approvals}");
    // Bob's device is known (the room is encrypted) but not cross-signed.
    assert!(approvals.contains("not cross-signed"), "{approvals}");
    let device = bob.client.device_id().unwrap().to_string();
    assert!(
        approvals.contains(&device),
        "bob's device {device}: {approvals}"
    );
    let output = text(&c, "pre.output.stdout").await;
    assert_eq!(output.trim_end(), format!("{MARKUP} 2"));
    assert_eq!(text(&c, "code.command").await, format!("say {MARKUP} 2"));
    let params = text(&c, "table.params").await;
    assert!(params.contains(&format!("message {MARKUP} 2")), "{params}");
    markup_is_text(&c).await;

    // A run in progress: the overview says for how long, and its last
    // output lines.
    let cmd = mx::say(alice, &ops_room, "!slow").await;
    let prompt = alice
        .wait_for("the slow prompt", WAIT, |x| {
            x.sender == bot && x.reply_to.as_ref() == Some(&cmd) && x.body.contains("Confirmation")
        })
        .await;
    let slow = common::request_id(&prompt.body);
    mx::reply(bob, &ops_room, &prompt.event_id, "yes").await;
    let running = mx::eventually("the slow run's output on the overview", WAIT, || async {
        c.goto(&format!("{base}/web/")).await.unwrap();
        let row = text(&c, "ul.requests").await;
        (row.contains(&slow) && row.contains("running for") && row.contains("│ step one"))
            .then_some(row)
    })
    .await;
    assert!(running.contains("running"), "{running}");

    // Carol's run is not alice's to see: as unknown as a made-up id.
    for id in &carols {
        c.goto(&format!("{base}/web/request/{id}")).await.unwrap();
        assert!(text(&c, "main").await.contains(NOT_FOUND));
    }

    // The alias's runs she may see: one mark each, carol's not among them.
    c.goto(&format!("{base}/web/deploys/tests.say"))
        .await
        .unwrap();
    assert_eq!(
        c.find_all(Locator::Css("svg circle.deploy"))
            .await
            .unwrap()
            .len(),
        2
    );

    // The link, used: refused.
    c.goto(&link).await.unwrap();
    assert!(text(&c, "main").await.contains("This link cannot be used"));
    c.close().await.unwrap();

    // Alice leaves the direct room: the next link comes in a new one.
    alice.room(&invited).await.leave().await.unwrap();
    let (again, _) = ask_for_link(alice, &ops_room, &bot, Some(&invited)).await;
    // …and the bot left the room she had left (as the bot's account sees
    // it, from a login of its own).
    let rooms = hs.joined_rooms(&bot, PW).await;
    assert!(rooms.contains(&again.to_string()), "{rooms:?}");
    assert!(!rooms.contains(&invited.to_string()), "{rooms:?}");
}

/// `!web` from `alice` in `ops_room`: the direct room the bot invites her
/// to (other than `not`), which she joins, and the sign-in link's message
/// there.
async fn ask_for_link(
    alice: &mx::User,
    ops_room: &OwnedRoomId,
    bot: &OwnedUserId,
    not: Option<&OwnedRoomId>,
) -> (OwnedRoomId, mx::Seen) {
    mx::say(alice, ops_room, "!web").await;
    let room = mx::eventually("the bot's invite to a direct room", WAIT, || async {
        alice
            .client
            .invited_rooms()
            .into_iter()
            .map(|r| r.room_id().to_owned())
            .find(|r| Some(r) != not)
    })
    .await;
    alice.join(&room).await;
    let dm = alice
        .wait_for("the sign-in link", WAIT, |x| {
            x.sender == *bot && x.room == room && x.body.contains("/web/login?token=")
        })
        .await;
    (room, dm)
}
