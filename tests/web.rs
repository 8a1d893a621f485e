//! The web view's sign-in through Matrix: `!web` sends the asker alone a
//! one-time link (never in the room, the audit or a log), which opens one
//! session, in time, once; `!web logout` ends them. Who may ask is the
//! policy's (built-in `web`).

mod common;

use std::time::Duration;

use common::*;

fn web_bot(dir: &std::path::Path, on: bool) -> (Bot, PackRepo) {
    let (s, repo) = web_settings(dir, on.then_some("https://airlock.example.org/"));
    (Bot::open(s), repo)
}

/// The token in a sign-in link's message.
fn token(body: &str) -> String {
    let at = body.find("/web/login?token=").expect("a sign-in link") + 17;
    body[at..at + 64].to_string()
}

#[test]
fn a_sign_in_link_goes_to_its_user_alone_and_opens_one_session_in_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), true);
    let sent = bot.say(ALICE, OPS, "!web");
    let dm: Vec<_> = sent
        .iter()
        .filter(|s| s.room.starts_with("direct:"))
        .collect();
    assert_eq!(dm.len(), 1, "{sent:?}");
    assert_eq!(dm[0].room, format!("direct:{ALICE}"));
    assert!(
        dm[0]
            .body
            .contains("https://airlock.example.org/web/login?token="),
        "{}",
        dm[0].body
    );
    let link = token(&dm[0].body);
    let in_room = bodies(
        &sent
            .iter()
            .filter(|s| s.room == OPS)
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert!(
        in_room.contains("Sent @alice:example.org a sign-in link"),
        "{in_room}"
    );
    assert!(!in_room.contains(&link), "the link reached the room");
    let audit =
        serde_json::to_string(&bot.engine.audit_log().after(0, usize::MAX).unwrap()).unwrap();
    assert!(!audit.contains(&link), "the link reached the audit");
    assert!(bot.audit_events().contains(&"web_link".to_string()));

    // Once, and for its user.
    let (user, session) = bot.engine.web_sign_in(&link, bot.now()).unwrap();
    assert_eq!(user, ALICE);
    assert_eq!(
        bot.engine.web_user(&session, bot.now()).as_deref(),
        Some(ALICE)
    );
    assert!(
        bot.engine.web_sign_in(&link, bot.now()).is_err(),
        "replayed"
    );
    // Hours, not days.
    assert_eq!(
        bot.engine.web_session_length(),
        Some(Duration::from_secs(8 * 3600))
    );
    assert_eq!(
        bot.engine.web_user(&session, bot.now() + 9 * 3_600_000),
        None
    );

    // A link not used within its minutes is refused.
    let late = token(&bodies(&bot.say(ALICE, OPS, "!web")));
    bot.advance(6 * 60_000);
    assert!(bot.engine.web_sign_in(&late, bot.now()).is_err(), "expired");

    // `!web logout` ends every session of its user, not another's.
    let (_, mine) = bot
        .engine
        .web_sign_in(&token(&bodies(&bot.say(ALICE, OPS, "!web"))), bot.now())
        .unwrap();
    let (_, bobs) = bot
        .engine
        .web_sign_in(&token(&bodies(&bot.say(BOB, OPS, "!web"))), bot.now())
        .unwrap();
    let r = bodies(&bot.say(ALICE, OPS, "!web logout"));
    // The first session and this one.
    assert!(
        r.contains("Ended 2 web sessions of @alice:example.org"),
        "{r}"
    );
    assert_eq!(bot.engine.web_user(&mine, bot.now()), None);
    assert_eq!(bot.engine.web_user(&bobs, bot.now()).as_deref(), Some(BOB));
}

#[test]
fn web_is_a_built_in_the_policy_grants_and_off_unless_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), true);
    // Mallory is not in ops: refused, and nothing sent.
    let sent = bot.say(MALLORY, OPS, "!web");
    assert!(
        sent.iter().all(|s| !s.room.starts_with("direct:")),
        "{sent:?}"
    );
    drop(bot);
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), false);
    let r = bodies(&bot.say(ALICE, OPS, "!web"));
    assert!(r.contains("The web view is off here"), "{r}");
}

/// The listener over `bot`'s engine on loopback; its base URL.
fn serve(bot: &Bot, rt: &tokio::runtime::Runtime) -> String {
    let (listener, base) = loopback(rt);
    serve_http(bot, rt, listener, None);
    base
}

/// A client that keeps no cookies and follows no redirects: each test
/// step says what it sends.
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sign in with a fresh link for `user`; the session cookie's value.
fn signed_in(bot: &Bot, base: &str, user: &str) -> String {
    let link = token(&bodies(&bot.say(user, OPS, "!web")));
    let r = client()
        .get(format!("{base}/web/login?token={link}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/web/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/web",
        "Secure",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("airlock_session=")
        .unwrap()
        .to_string()
}

fn get(base: &str, path: &str, session: Option<&str>) -> (u16, String, reqwest::header::HeaderMap) {
    let mut r = client().get(format!("{base}{path}"));
    if let Some(s) = session {
        r = r.header("cookie", format!("airlock_session={s}"));
    }
    let r = r.send().unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.text().unwrap(), headers)
}

#[test]
fn pages_show_the_users_rooms_escaped_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);

    // A request whose command carries markup and script, waiting for
    // approval in the ops room.
    let p = prompt(&bot.say(ALICE, OPS, "!say <script>alert(1)</script><b>bold</b>")).clone();
    let id = request_id(&p.body);

    // No session: sent to sign in through Matrix, nothing shown.
    let (status, body, _) = get(&base, "/web/", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Type !web"), "{body}");
    assert!(!body.contains(&id), "{body}");
    // A forged or replayed link: refused.
    let (status, _, _) = get(&base, &format!("/web/login?token={}", "0".repeat(64)), None);
    assert_eq!(status, 403);
    let (status, _, _) = get(&base, "/web/login?token=%00%3Cscript%3E", None);
    assert_eq!(status, 403, "a crafted query string is a 4xx");
    let (status, _, _) = get(&base, "/web/", Some("forged-session"));
    assert_eq!(status, 401);

    let alice = signed_in(&bot, &base, ALICE);
    let (status, body, headers) = get(&base, "/web/", Some(&alice));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("/web/request/{id}")), "{body}");
    // Escaped: the markup shows as text.
    assert!(
        body.contains("&lt;script&gt;alert(1)") && body.contains("&lt;b&gt;bold"),
        "{body}"
    );
    assert!(
        !body.contains("<script>") && !body.contains("<b>"),
        "{body}"
    );
    // The audit's state: its head, and where checkpoints go.
    assert!(
        body.contains(" entries; the newest") && body.contains("No audit room is set"),
        "{body}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(headers["referrer-policy"], "no-referrer");

    // Its page: what !status says and its audit timeline.
    let (status, body, _) = get(&base, &format!("/web/request/{id}"), Some(&alice));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("confirmation_requested"), "{body}");
    // (minijinja writes `/` as `&#x2f;`, which the browser reads back;
    // matrix.to takes identifiers percent-encoded, as the spec shows them.)
    assert!(
        body.replace("&#x2f;", "/")
            .contains("href=\"https://matrix.to/#/%21ops%3Aexample.org\""),
        "{body}"
    );
    assert!(!body.contains("<script>"), "{body}");

    // Mallory (granted neither `pending` nor `audit` anywhere) gets no
    // link, and would see nothing of the ops room: its request answers as
    // an unknown id does.
    let r = bodies(&bot.say(MALLORY, OPS, "!web"));
    assert!(!r.contains("/web/login"), "{r}");
    assert!(bot.engine.web_overview(MALLORY, bot.now()).open.is_empty());
    assert!(bot.engine.web_request(MALLORY, &id, bot.now()).is_none());
    let (unknown_status, unknown_body, _) = get(&base, "/web/request/zzzzzz", Some(&alice));
    assert_eq!(unknown_status, 404);
    assert!(unknown_body.contains("nothing here you may see"));

    // Nothing changes state: any other method is refused, and the request
    // is still pending.
    let r = client()
        .post(format!("{base}/web/request/{id}"))
        .header("cookie", format!("airlock_session={alice}"))
        .body("approve")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        bot.engine
            .requests()
            .get(&id)
            .unwrap()
            .unwrap()
            .state
            .name(),
        "pending"
    );

    // Logged out: the cookie opens nothing.
    bot.say(ALICE, OPS, "!web logout");
    let (status, _, _) = get(&base, "/web/", Some(&alice));
    assert_eq!(status, 401);
}

/// st2's `append_url`: with the web view on, a result message ends with
/// the link to its request's page, unless the alias says
/// `result.append_url: false`; off, nothing is appended.
#[test]
fn results_link_to_their_page_as_st2s_append_url_did() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), true);
    let run = |cmd: &str| {
        let p = prompt(&bot.say(ALICE, OPS, cmd)).clone();
        let id = request_id(&p.body);
        (id, bodies(&bot.reply(BOB, OPS, &p.event_id, "yes")))
    };
    let (id, r) = run("!say hello");
    assert!(
        r.trim_end()
            .ends_with(&format!("\nhttps://airlock.example.org/web/request/{id}")),
        "{r}"
    );
    let (_, r) = run("!quiet hello");
    assert!(!r.contains("/web/request/"), "{r}");
    drop(bot);
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), false);
    let p = prompt(&bot.say(ALICE, OPS, "!say hello")).clone();
    let r = bodies(&bot.reply(BOB, OPS, &p.event_id, "yes"));
    assert!(!r.contains("/web/request/"), "{r}");
}

/// The example pack's token (in its config only) is on no page: the
/// overview, every request's page, pending and finished, the histories,
/// the audit search and its download.
#[test]
fn no_page_shows_a_secret() {
    const SECRET: &str = "s3cr3t-t0ken-value";
    let tmp = tempfile::tempdir().unwrap();
    let pol = tmp.path().join("policy.yaml");
    std::fs::write(
        &pol,
        "groups:\n  ops: [\"@alice:example.org\", \"@bob:example.org\"]\nrules:\n  - id: deploys\n    effect: allow\n    groups: [ops]\n    aliases: [deploy_example.deploy]\n    extra_params: true\n    confirm:\n      approvers: {groups: [ops]}\n  - id: builtins\n    effect: allow\n    groups: [ops]\n    builtins: [\"*\"]\n",
    )
    .unwrap();
    let configs = tmp.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    std::fs::write(
        configs.join("deploy_example.yaml"),
        format!("api_token: {SECRET}\n"),
    )
    .unwrap();
    let mut s = settings(tmp.path(), &pol, None);
    s.aliases = vec![repo_root().join("tests/packs")];
    s.runners.configs = configs;
    s.http.web = true;
    s.http.public_url = Some("https://airlock.example.org".into());
    let bot = Bot::open(s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);

    let done = prompt(&bot.say(ALICE, OPS, "!deploy web v1.2.3 environment=prod")).clone();
    let finished = bodies(&bot.reply(BOB, OPS, &done.event_id, "yes"));
    assert!(finished.contains("Deployed web v1.2.3"), "{finished}");
    let waiting = prompt(&bot.say(ALICE, OPS, "!deploy api 2.0")).clone();
    let session = signed_in(&bot, &base, ALICE);
    // Every page there is: the overview, both requests', the alias's and
    // the pack's history, the audit search and its download.
    let mut pages = vec![
        "/web/".to_string(),
        "/web/deploys/deploy_example.deploy".into(),
        "/web/deploys/deploy_example".into(),
        "/web/audit?room=%21ops%3Aexample.org".into(),
        "/web/audit?room=%21ops%3Aexample.org&format=jsonl".into(),
    ];
    for p in [&done, &waiting] {
        pages.push(format!("/web/request/{}", request_id(&p.body)));
    }
    for page in &pages {
        let (status, body, _) = get(&base, page, Some(&session));
        assert_eq!(status, 200, "{page}: {body}");
        assert!(!body.contains(SECRET), "{page} shows the secret: {body}");
    }
}

/// Audit search: the filters of `airlock audit` on a room the viewer may
/// see, newest first, and every match as JSON lines; another room, or no
/// room for a viewer who may not see them all, is refused; a crafted
/// query is a 400.
#[test]
fn the_audit_is_searched_in_the_viewers_rooms_and_downloads_as_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);
    let p = prompt(&bot.say(ALICE, OPS, "!say one")).clone();
    bot.reply(BOB, OPS, &p.event_id, "yes");
    bot.say(BOB, OPS, "!say two");
    let alice = signed_in(&bot, &base, ALICE);

    let (status, body, _) = get(&base, "/web/audit", Some(&alice));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Name a room"), "{body}");
    let (status, body, _) = get(
        &base,
        "/web/audit?room=%21elsewhere%3Aexample.org",
        Some(&alice),
    );
    assert_eq!(status, 403, "{body}");

    let q = "/web/audit?room=%21ops%3Aexample.org&user=%40bob%3Aexample.org&user=&since=1h";
    let (status, body, _) = get(&base, q, Some(&alice));
    assert_eq!(status, 200, "{body}");
    let entries: Vec<&str> = body.lines().filter(|l| l.starts_with("<li>#")).collect();
    assert!(!entries.is_empty(), "{body}");
    assert!(
        entries.iter().all(|l| l.contains("by=@bob:example.org")),
        "{entries:?}"
    );
    // Newest first.
    let seqs = audit_seqs(&body);
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");

    let (status, body, headers) = get(&base, &format!("{q}&format=jsonl"), Some(&alice));
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), seqs.len());
    assert!(
        lines.iter().all(|e| e["sender"] == BOB && e["room"] == OPS),
        "{lines:?}"
    );

    for crafted in [
        "/web/audit?room=%21ops%3Aexample.org&drop=table",
        "/web/audit?room=%21ops%3Aexample.org&since=yesterday%3Cscript%3E",
    ] {
        let (status, body, _) = get(&base, crafted, Some(&alice));
        assert_eq!(status, 400, "{crafted}: {body}");
        assert!(!body.contains("<script>"), "{body}");
    }
    // Signed out: nothing.
    let (status, _, _) = get(&base, q, None);
    assert_eq!(status, 401);
}

/// The overview's locks: a hand lock and the request waiting for it, to
/// whoever may see that request's room, not to a viewer of another room;
/// and the audit's state: not checked, intact, then, once an entry is
/// altered in the store, not intact, naming the entry.
#[test]
fn the_overview_shows_locks_and_whether_the_chain_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _repo) = web_settings(tmp.path(), Some("https://airlock.example.org/"));
    std::fs::write(
        tmp.path().join("extra/hold.yaml"),
        "name: hold\npack: locked\naction_ref: core.echo\nformats: ['hold {{ message }}']\n",
    )
    .unwrap();
    let policy = tmp.path().join("policies/ops.yaml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str("\n  - id: locked\n    effect: allow\n    groups: [ops]\n    rooms: [\"!ops:example.org\"]\n    packs: [locked]\n    confirm: false\n    lock: env/prod\n    queue_timeout: 10m\n");
    text.push_str("\n  - id: carol-elsewhere\n    effect: allow\n    groups: [security]\n    rooms: [\"!elsewhere:example.org\"]\n    builtins: [pending, web]\n");
    std::fs::write(&policy, text).unwrap();
    s.http.web = true;
    let data = s.data_dir.clone();
    let bot = Bot::open(s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);
    let r = bodies(&bot.say(BOB, OPS, "!lock env/prod db maintenance"));
    assert!(r.contains("env/prod"), "{r}");
    let r = bodies(&bot.say(ALICE, OPS, "!hold on"));
    let queued = request_id(r.lines().find(|l| l.contains("waits for lock")).unwrap());
    let alice = signed_in(&bot, &base, ALICE);
    let body = page(&base, "/web/", &alice);
    let locks = &body[body
        .find("<h1>Locks</h1>")
        .unwrap_or_else(|| panic!("{body}"))..];
    let locks = locks.split("</table>").next().unwrap();
    assert!(locks.contains("<code>env/prod</code>"), "{locks}");
    assert!(locks.contains("@bob:example.org locked it"), "{locks}");
    assert!(locks.contains("db maintenance"), "{locks}");
    assert!(locks.contains(&format!(">{queued}</a>")), "{locks}");
    // Carol sees another room only: no lock, no request.
    let carol = "@carol:example.org";
    let link = bodies(&bot.say(carol, "!elsewhere:example.org", "!web"));
    assert!(link.contains("/web/login?token="), "{link}");
    let carols = signed_in_from(&base, &link);
    let body = page(&base, "/web/", &carols);
    assert!(
        !body.contains("env/prod") && !body.contains(&queued),
        "{body}"
    );

    // The chain: not checked yet, then intact, then altered.
    let chain = |body: &str| {
        let at = body
            .find("class=\"chain")
            .unwrap_or_else(|| panic!("{body}"));
        body[at..].split("</li>").next().unwrap().to_string()
    };
    let body = page(&base, "/web/", &alice);
    assert!(
        chain(&body).contains("unchecked\">Chain: Not checked yet"),
        "{}",
        chain(&body)
    );
    let c = bot.engine.check_chain(bot.now()).unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let body = page(&base, "/web/", &alice);
    assert!(
        chain(&body).contains(&format!(
            "intact\">Chain: Intact at {}",
            airlock::clock::format_ms(bot.now())
        )) && chain(&body).contains(&format!("{} entries chain", c.entries)),
        "{}",
        chain(&body)
    );
    airlock::audit::edit_stored(&memory_db(&data), 3, |b| {
        let text = String::from_utf8(b.unwrap().to_vec()).unwrap();
        Some(
            text.replace("@alice:example.org", "@mallory:example.org")
                .into_bytes(),
        )
    })
    .unwrap();
    bot.engine.check_chain(bot.now()).unwrap();
    let body = page(&base, "/web/", &alice);
    assert!(
        chain(&body).contains("broken\">Chain: Does NOT verify at")
            && chain(&body).contains("entry 3: content does not match its hash (altered)"),
        "{}",
        chain(&body)
    );
}

/// Page `path`, answered 200, with `/` as a browser reads it (minijinja
/// writes it `&#x2f;`).
fn page(base: &str, path: &str, session: &str) -> String {
    let (status, body, _) = get(base, path, Some(session));
    assert_eq!(status, 200, "{path}: {body}");
    body.replace("&#x2f;", "/")
}

/// The session a sign-in link (in `dm`, the text of the direct message)
/// opens.
fn signed_in_from(base: &str, dm: &str) -> String {
    let r = client()
        .get(format!("{base}/web/login?token={}", token(dm)))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

/// A pack's history: its deploys as circles and a rollback as a square on
/// the timeline, each row naming the version and commit it put in place;
/// the version is written on the timeline where it changes; the request
/// page of the second deploy names the commit it replaced.
#[test]
fn a_packs_history_names_versions_and_marks_rollbacks() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, repo) = web_bot(tmp.path(), true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);
    let mut ids = Vec::new();
    let mut run = |cmd: &str| {
        let p = prompt(&bot.say(ALICE, OPS, cmd)).clone();
        ids.push(request_id(&p.body));
        bot.reply(BOB, OPS, &p.event_id, "yes");
        bot.advance(60_000);
    };
    let v1 = repo.head();
    run("!flow deploy main");
    repo.write(
        "pack.yaml",
        "---\nname: st2-flow\ndescription: test pack\nversion: 0.2.0\nauthor: tests\n",
    );
    let v2 = repo.commit("version 0.2.0");
    run("!flow deploy main");
    run("!pack rollback st2-flow");
    let alice = signed_in(&bot, &base, ALICE);
    let body = page(&base, "/web/deploys/st2-flow", &alice);
    assert_eq!(
        body.matches("<circle class=\"deploy succeeded\"").count(),
        2,
        "{body}"
    );
    assert_eq!(
        body.matches("<rect class=\"deploy rollback succeeded\"")
            .count(),
        1,
        "{body}"
    );
    // Versions on the timeline where they change: 0.1.0, 0.2.0, 0.1.0.
    let labels: Vec<&str> = body
        .split("text-anchor=\"middle\" font-size=\"11\">")
        .skip(1)
        .map(|t| t.split('<').next().unwrap())
        .collect();
    assert_eq!(labels, ["0.1.0", "0.2.0", "0.1.0"], "{body}");
    let rows: Vec<&str> = body.split("<tr class=\"").skip(1).collect();
    assert!(
        rows[0].starts_with("succeeded rollback") && rows[0].contains(&v1[..12]),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains("<td>0.2.0</td>") && rows[1].contains(&v2[..12]),
        "{}",
        rows[1]
    );
    assert!(
        rows[2].contains("<td>0.1.0</td>") && rows[2].contains(&v1[..12]),
        "{}",
        rows[2]
    );
    // The audit search takes the CLI's filters, `deployed` and `status`
    // among them: the three runs that put st2-flow in place.
    let found = page(
        &base,
        "/web/audit?room=%21ops%3Aexample.org&deployed=st2-flow&status=succeeded",
        &alice,
    );
    assert_eq!(audit_seqs(&found).len(), 3, "{found}");
    // The second deploy's page: what it put in place, and what it replaced.
    let second = page(&base, &format!("/web/request/{}", ids[1]), &alice);
    let deployed = second
        .split("class=\"runs deployed\"")
        .nth(1)
        .expect("a deployed table");
    assert!(
        deployed.contains(&format!(
            "<td><code>{v2}</code></td><td><code>{v1}</code></td>"
        )),
        "{deployed}"
    );
}

/// The entries' numbers on an audit search page, in order.
fn audit_seqs(body: &str) -> Vec<u64> {
    body.lines()
        .filter_map(|l| l.strip_prefix("<li>#")?.split(' ').next()?.parse().ok())
        .collect()
}

/// An audit search pages back through every match, 100 at a time, newest
/// first: each page's "Older entries" link starts below the oldest entry
/// shown, and the pages together are exactly what the download holds.
#[test]
fn audit_search_pages_back_through_every_match() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);
    for _ in 0..120 {
        bot.say(ALICE, OPS, "!pending");
    }
    let alice = signed_in(&bot, &base, ALICE);
    let first = "/web/audit?room=%21ops%3Aexample.org&user=%40alice%3Aexample.org";
    let (_, all, _) = get(&base, &format!("{first}&format=jsonl"), Some(&alice));
    let mut want = jsonl_seqs(&all);
    want.reverse();
    assert!(want.len() > 200, "{} entries", want.len());
    let (mut seen, mut next, mut pages) = (Vec::new(), Some(first.to_string()), 0);
    while let Some(page) = next.take() {
        let (status, body, _) = get(&base, &page, Some(&alice));
        assert_eq!(status, 200, "{page}: {body}");
        let seqs = audit_seqs(&body);
        assert!(seqs.len() <= 100 && !seqs.is_empty(), "{page}: {seqs:?}");
        seen.extend(seqs);
        pages += 1;
        next = body.split("<a class=\"older\" href=\"").nth(1).map(|r| {
            r.split('"')
                .next()
                .unwrap()
                .replace("&amp;", "&")
                .replace("&#x2f;", "/")
        });
        if let Some(n) = &next {
            assert!(
                n.contains(&format!("before={}", seen.last().unwrap())),
                "{n}"
            );
        }
    }
    assert_eq!(pages, want.len().div_ceil(100));
    assert_eq!(seen, want, "the pages, in order, are every match once");
    // A crafted bound is a 400.
    let (status, _, _) = get(&base, &format!("{first}&before=-1"), Some(&alice));
    assert_eq!(status, 400);
}

/// An alias's runs: one mark per run on the timeline (drawn on the
/// server as SVG), a row each with outcome, who asked and who approved;
/// none from rooms the viewer may not see.
#[test]
fn an_alias_history_has_one_mark_per_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (bot, _repo) = web_bot(tmp.path(), true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);
    let mut ids = Vec::new();
    for word in ["one", "two", "three"] {
        let p = prompt(&bot.say(ALICE, OPS, &format!("!say {word}"))).clone();
        ids.push(request_id(&p.body));
        bot.reply(BOB, OPS, &p.event_id, "yes");
        bot.advance(60_000);
    }
    let alice = signed_in(&bot, &base, ALICE);
    let (status, body, _) = get(&base, "/web/deploys/tests.say", Some(&alice));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.matches("<circle class=\"deploy succeeded\"").count(),
        3,
        "{body}"
    );
    for id in &ids {
        assert!(body.contains(&format!("/web/request/{id}")), "{id}: {body}");
    }
    assert!(body.contains("@bob:example.org"), "the approver: {body}");
    // Oldest left, newest right.
    let xs: Vec<u64> = body
        .match_indices("cx=\"")
        .map(|(i, _)| body[i + 4..].split('"').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(xs, vec![20, 520, 1020], "{body}");
    // The name is a percent-encoded path segment: encoded, the same page;
    // not UTF-8 once decoded, a 400.
    let (_, encoded, _) = get(&base, "/web/deploys/tests%2Esay", Some(&alice));
    assert_eq!(
        encoded
            .matches("<circle class=\"deploy succeeded\"")
            .count(),
        3
    );
    let (status, _, _) = get(&base, "/web/deploys/%ff%fe", Some(&alice));
    assert_eq!(status, 400);
    // Its request page links here.
    let (_, page, _) = get(&base, &format!("/web/request/{}", ids[0]), Some(&alice));
    assert!(page.contains("/web/deploys/tests.say"), "{page}");
    assert!(
        bot.engine
            .web_deploys(MALLORY, "tests.say", bot.now())
            .is_empty()
    );
}

/// A request's page shows its command (linked to its Matrix event), every
/// parameter, who approved as which part and from which device, and its
/// whole recorded output with what the runner dropped past its cap; all
/// of it still there once the request has left the store, read from the
/// audit alone.
#[test]
fn a_requests_page_shows_approvers_devices_and_the_whole_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut s, _repo) = web_settings(tmp.path(), Some("https://airlock.example.org/"));
    std::fs::write(
        tmp.path().join("extra/count.yaml"),
        "name: count\npack: tests\naction_ref: core.local\nformats: ['count']\nimmutable_parameters:\n  cmd: \"seq 1 100; echo '<b>done</b>' >&2\"\n",
    )
    .unwrap();
    s.runners.output_cap = 100;
    s.requests.keep = "1m".into();
    let bot = Bot::open(s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = serve(&bot, &rt);
    let p = prompt(&bot.say(ALICE, OPS, "!count")).clone();
    let id = request_id(&p.body);
    let mut yes = bot.message(BOB, OPS, "yes");
    yes.reply_to = Some(p.event_id.clone());
    yes.device = airlock::engine::Device::CrossSigned("BOBSLAPTOP".into());
    let answer = yes.event_id.clone();
    bot.deliver(yes);
    let alice = signed_in(&bot, &base, ALICE);
    let page = |what: &str| {
        let (status, body, _) = get(&base, &format!("/web/request/{id}"), Some(&alice));
        assert_eq!(status, 200, "{what}: {body}");
        // minijinja escapes `/` too; links are compared as a browser reads them.
        body.replace("&#x2f;", "/")
    };
    for (what, body) in [
        ("kept", page("kept")),
        ("gone", {
            bot.advance(120_000);
            bot.play(bot.engine.tick(bot.now()));
            assert!(
                bot.engine.requests().get(&id).unwrap().is_none(),
                "left the store"
            );
            page("gone")
        }),
    ] {
        let section = |h: &str| {
            let at = body
                .find(h)
                .unwrap_or_else(|| panic!("{what}: no {h}: {body}"));
            body[at..].split("<h2>").nth(1).unwrap_or("").to_string()
        };
        let command = p
            .reply_to
            .as_deref()
            .expect("the prompt answers the command");
        assert!(
            body.contains(&format!(
                "<code class=\"command\">count</code> (<a href=\"https://matrix.to/#/%21ops%3Aexample.org/{}\">in Matrix</a>)",
                command.replace('$', "%24")
            )),
            "{what}: {body}"
        );
        let params = section("<h2>Parameters");
        assert!(
            params.contains("<th>cmd</th><td><code>seq 1 100; echo &#x27;&lt;b&gt;done&lt;/b&gt;&#x27; &gt;&amp;2</code>"),
            "{what}: {params}"
        );
        let approvals = section("<h2>Approvals");
        assert!(
            approvals.contains("<td>@bob:example.org</td><td>group ops</td>")
                && approvals.contains("<td>BOBSLAPTOP</td>")
                && approvals.contains("<td>cross-signed</td>"),
            "{what}: {approvals}"
        );
        assert!(
            approvals.contains(&format!("/{}\"", answer.replace('$', "%24"))),
            "{what}: the answer's event is linked: {approvals}"
        );
        let output = section("<h2>Output");
        // The first 100 bytes of stdout, whole: "1\n2\n…" to the cap.
        let kept: String =
            (1..=100).map(|n| format!("{n}\n")).collect::<String>()[..100].to_string();
        assert!(output.contains(&kept), "{what}: {output}");
        assert!(
            output.contains(
                "stdout: 192 more bytes were dropped past the runner&#x27;s cap of 100 bytes"
            ),
            "{what}: {output}"
        );
        assert!(
            output.contains("&lt;b&gt;done&lt;/b&gt;"),
            "{what}: stderr as text: {output}"
        );
        assert!(body.contains("succeeded after"), "{what}: {body}");
    }
}
