//! The web view in a real browser: Debian's Chromium, driven through
//! ChromeDriver (WebDriver), with JavaScript off, against the bot's HTTP
//! listener on loopback. Signs in with the link `!web` sends, and checks
//! that markup and script in a command show as text, that no dialog
//! opens, and that a used link is refused. Saves screenshots of the pages
//! (docs/web.md shows them). Needs /usr/bin/chromium and
//! /usr/bin/chromedriver (`.ci/run` installs them); SKIPPED without.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{ClientBuilder, Locator};

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
    for word in ["first", "second"] {
        let p = prompt(&bot.say(ALICE, OPS, &format!("!say {word}"))).clone();
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
        // No script element, no markup from the command, no dialog.
        assert!(c.find_all(Locator::Css("script")).await.unwrap().is_empty());
        assert!(
            c.find_all(Locator::Css("main b, main i"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(c.get_alert_text().await.is_err(), "a dialog opened");
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
        assert!(c.get_alert_text().await.is_err(), "a dialog opened");
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
        c.close().await.unwrap();
    });
}
