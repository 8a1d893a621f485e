//! The read-only web view under `/web/` (`http.web`): pages rendered on
//! the server with minijinja, every value escaped (the templates are
//! `.html`, which minijinja auto-escapes), no JavaScript, a strict
//! Content-Security-Policy, and nothing that changes state: `GET` only,
//! and approvals stay in Matrix. A session comes from a one-time link the
//! bot sends in a direct message (`!web`); its cookie is HttpOnly,
//! SameSite=Strict, and Secure behind https.

use std::sync::OnceLock;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use minijinja::Environment;
use minijinja::Value;

use super::Body;
use crate::engine::Engine;

/// The session cookie's name.
pub const COOKIE: &str = "airlock_session";

/// What every page is sent with: nothing but its own stylesheet loads, no
/// script runs, no page frames it, and no link tells another site where
/// it came from (a sign-in link's token stays here).
const HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
];

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("base.html")),
            ("overview.html", include_str!("overview.html")),
            ("request.html", include_str!("request.html")),
            ("message.html", include_str!("message.html")),
            ("audit.html", include_str!("audit.html")),
            ("deploys.html", include_str!("deploys.html")),
            ("runs.html", include_str!("runs.html")),
        ] {
            env.add_template(name, text)
                .expect("the web templates parse (checked by the tests)");
        }
        env
    })
}

/// The HTML of page template `template` (`overview.html`, …) over
/// `ctx`, every value escaped. Public so the property tests can render
/// every page over arbitrary text.
pub fn render(template: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    templates().get_template(template)?.render(ctx)
}

/// A page: `template` over `ctx`, with the headers every page has.
fn page(status: StatusCode, template: &str, ctx: minijinja::Value) -> Response<Body> {
    let html = render(template, ctx).unwrap_or_else(|e| {
        tracing::error!("web page {template}: {e}");
        "<!doctype html><title>airlock</title><p>This page could not be shown.".into()
    });
    respond(status, "text/html; charset=utf-8", html)
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    for (k, v) in HEADERS {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            v.parse(),
        ) {
            h.insert(k, v);
        }
    }
    r
}

fn message(status: StatusCode, heading: &str, text: &str) -> Response<Body> {
    page(
        status,
        "message.html",
        minijinja::context! { heading, text, user => Option::<String>::None },
    )
}

/// The session token the request's cookie carries.
fn session_cookie(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The answer to a request under `/web`, at `now`; `secure`: the public
/// URL is https, so the cookie is sent over TLS only.
pub fn answer(
    method: &Method,
    uri: &hyper::Uri,
    headers: &hyper::HeaderMap,
    engine: &Engine,
    secure: bool,
    now: u64,
) -> Response<Body> {
    let Some(length) = engine.web_session_length() else {
        return message(
            StatusCode::NOT_FOUND,
            "No web view here",
            "http.web is off in this airlock's configuration.",
        );
    };
    if method != Method::GET {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "Read-only",
            "Nothing here changes anything: approvals stay in Matrix.",
        );
    }
    let path = uri.path();
    match path {
        "/web/style.css" => {
            return respond(
                StatusCode::OK,
                "text/css; charset=utf-8",
                include_str!("style.css").into(),
            );
        }
        "/web/login" => return login(uri, engine, secure, length, now),
        _ => {}
    }
    let Some(user) = session_cookie(headers).and_then(|t| engine.web_user(&t, now)) else {
        return message(
            StatusCode::UNAUTHORIZED,
            "Sign in through Matrix",
            "Type !web in a room where you may, and open the link airlock sends you in a direct message.",
        );
    };
    if path == "/web/" || path == "/web" {
        let o = engine.web_overview(&user, now);
        return page(
            StatusCode::OK,
            "overview.html",
            minijinja::context! { user => o.user.clone(), o => Value::from(minijinja::value::Serde(&o)) },
        );
    }
    if path == "/web/audit" {
        return audit(uri, engine, &user, now);
    }
    if let Some(what) = path.strip_prefix("/web/deploys/") {
        // A path segment, percent-encoded (`+` is a plus here, not a
        // space as in a query string).
        let Ok(what) = percent_encoding::percent_decode_str(what).decode_utf8() else {
            return message(
                StatusCode::BAD_REQUEST,
                "Not a name",
                "An alias or pack name is UTF-8 text.",
            );
        };
        let what = what.into_owned();
        let runs = engine.web_deploys(&user, &what, now);
        return page(
            StatusCode::OK,
            "deploys.html",
            minijinja::context! { user, what, runs => Value::from(minijinja::value::Serde(&runs)) },
        );
    }
    if let Some(id) = path.strip_prefix("/web/request/")
        && let Some(r) = engine.web_request(&user, id, now)
    {
        return page(
            StatusCode::OK,
            "request.html",
            minijinja::context! { user, r => Value::from(minijinja::value::Serde(&r)) },
        );
    }
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page, or nothing here you may see.",
    )
}

/// `/web/audit?room=…&user=…&since=…`: the filters of `airlock audit`,
/// the newest entries first; `&format=jsonl` downloads every match (up to
/// 100,000) as JSON lines. A viewer names a room unless they may see
/// every room.
fn audit(uri: &hyper::Uri, engine: &Engine, user: &str, now: u64) -> Response<Body> {
    // Empty form fields filter nothing; `format` is the page's own.
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .filter(|(_, v)| !v.is_empty())
            .collect();
    let jsonl = pairs.iter().any(|(k, v)| k == "format" && v == "jsonl");
    // `before` is the page's place: links to other pages and the download
    // carry the filters without it.
    let filters: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "format" && k != "before")
        .collect();
    let before = pairs.iter().find(|(k, _)| k == "before");
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(filters.iter().map(|(k, v)| (k, v)))
        .finish();
    let field = |name: &str| {
        filters
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let f = minijinja::context! {
        room => field("room"), user => field("user"), alias => field("alias"),
        action => field("action"), request => field("request"), status => field("status"),
        event => field("event"), deployed => field("deployed"), since => field("since"),
    };
    let paged = match before {
        Some((k, v)) => url::form_urlencoded::Serializer::new(query.clone())
            .append_pair(k, v)
            .finish(),
        None => query.clone(),
    };
    let q = match crate::http::export_query(&paged, now) {
        Ok((q, 0, false)) => q,
        Ok(_) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Not a filter",
                "after and follow are for /audit.jsonl",
            );
        }
        Err(e) => return message(StatusCode::BAD_REQUEST, "Not a filter", &e),
    };
    if jsonl {
        return match engine.web_audit_entries(user, q, crate::engine::AUDIT_DOWNLOAD, now) {
            Ok((entries, _)) => {
                let mut body = String::new();
                for e in &entries {
                    body.push_str(&serde_json::to_string(e).unwrap_or_default());
                    body.push('\n');
                }
                let mut r = respond(StatusCode::OK, "application/jsonl", body);
                if let Ok(v) = "attachment; filename=\"airlock-audit.jsonl\"".parse() {
                    r.headers_mut()
                        .insert(hyper::header::CONTENT_DISPOSITION, v);
                }
                r
            }
            Err(e) => message(StatusCode::FORBIDDEN, "Not a search you may run", &e),
        };
    }
    let paging = before.is_some();
    let (entries, older, error) = match engine.web_audit(user, q, now) {
        Ok(a) => (a.entries, a.older, None),
        Err(e) => (Vec::new(), None, Some(e)),
    };
    page(
        if error.is_some() {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        },
        "audit.html",
        minijinja::context! {
            user, f, error, query, older, paging,
            entries => Value::from(minijinja::value::Serde(&entries)),
        },
    )
}

/// `/web/login?token=…`: the link opens a session (a cookie) and goes
/// to the overview; a used, expired or forged link is refused.
fn login(
    uri: &hyper::Uri,
    engine: &Engine,
    secure: bool,
    length: std::time::Duration,
    now: u64,
) -> Response<Body> {
    let token = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match engine.web_sign_in(&token, now) {
        Ok((user, session)) => {
            tracing::info!("web session opened for {user}");
            let mut r = respond(StatusCode::SEE_OTHER, "text/plain", String::new());
            let cookie = format!(
                "{COOKIE}={session}; Path=/web; HttpOnly; SameSite=Strict; Max-Age={}{}",
                length.as_secs(),
                if secure { "; Secure" } else { "" }
            );
            if let (Ok(c), Ok(l)) = (cookie.parse(), "/web/".parse()) {
                r.headers_mut().insert(hyper::header::SET_COOKIE, c);
                r.headers_mut().insert(hyper::header::LOCATION, l);
            }
            r
        }
        Err(e) => message(
            StatusCode::FORBIDDEN,
            "This link cannot be used",
            &e.to_string(),
        ),
    }
}
