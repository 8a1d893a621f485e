//! The optional HTTP listener (`http.listen` in `airlock.yaml`): `GET
//! /healthz` for a supervisor or a probe, `GET /metrics` for Prometheus,
//! and with `http.audit_export` `GET /audit.jsonl` to whoever bears the
//! token. Nothing here changes any state.

use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use super::Body;
use crate::audit::Query;
use crate::engine::Engine;
use crate::metrics::Liveness;

/// The HTTP listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on (off when absent; keep it on loopback or
    /// behind a proxy: it serves no secrets, but the metrics name rules
    /// and actions).
    #[serde(default)]
    pub listen: Option<String>,
    /// Also serve the audit log as JSON lines (`GET /audit.jsonl?since=2h
    /// &follow=true`), for a log shipper and `airlock audit --follow`
    /// while the bot runs. Off by default: the log says who ran what.
    #[serde(default)]
    pub audit_export: bool,
    /// Serve the read-only web view under `/web/`, signed in through
    /// Matrix (`!web`). Needs `public_url`.
    #[serde(default)]
    pub web: bool,
    /// Where users reach this listener (through a reverse proxy that
    /// terminates TLS): `https://airlock.example.org`. Sign-in links and
    /// `append_url` links point there.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// A sync older than this makes the bot unhealthy: the loop syncs at least
/// every 30 s (its long-poll timeout) while the homeserver answers.
pub const MAX_SYNC_AGE: Duration = Duration::from_secs(120);

/// How often a followed audit export looks for new entries.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Followed exports served at once: each holds a task until its client
/// goes, so their number is bounded.
pub const MAX_FOLLOWERS: usize = 16;

/// The environment variable holding the bearer token `/audit.jsonl` asks
/// for (the log says who ran what, in every room).
pub const AUDIT_TOKEN_ENV: &str = "AIRLOCK_AUDIT_TOKEN";

/// What `/audit.jsonl` needs: the token, and the count of followers.
pub struct AuditExport {
    token: String,
    followers: Arc<AtomicUsize>,
}

impl AuditExport {
    /// The export, answering only requests bearing `token`.
    pub fn new(token: String) -> Self {
        AuditExport {
            token,
            followers: Arc::default(),
        }
    }

    /// Whether `req` bears the token (compared in constant time).
    fn authorized(&self, req: &Request<hyper::body::Incoming>) -> bool {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
    }
}

/// Serve `listener` until the task is dropped; `audit_export` adds
/// `/audit.jsonl`.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    liveness: Arc<Liveness>,
    audit_export: Option<AuditExport>,
) {
    let audit_export = audit_export.map(Arc::new);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("http listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (engine, liveness, export) = (engine.clone(), liveness.clone(), audit_export.clone());
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (engine, liveness, export) = (engine.clone(), liveness.clone(), export.clone());
            async move {
                if let Some(export) = export.filter(|_| req.uri().path() == "/audit.jsonl") {
                    return Ok::<_, Infallible>(audit_jsonl(engine, &export, &req));
                }
                let path = req.uri().path();
                if path == "/web" || path.starts_with("/web/") {
                    let (method, uri, headers) = (
                        req.method().clone(),
                        req.uri().clone(),
                        req.headers().clone(),
                    );
                    let page = tokio::task::spawn_blocking(move || {
                        let secure = engine.web_secure();
                        super::web::answer(&method, &uri, &headers, &engine, secure, engine.now())
                    })
                    .await
                    .unwrap_or_else(|e| {
                        response((
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "text/plain",
                            e.to_string(),
                        ))
                    });
                    return Ok::<_, Infallible>(page);
                }
                // The stores are sled: quick, but blocking.
                let answer = tokio::task::spawn_blocking(move || {
                    route(req.method(), req.uri().path(), &engine, &liveness)
                })
                .await
                .unwrap_or_else(|e| {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        e.to_string(),
                    )
                });
                Ok::<_, Infallible>(response(answer))
            }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("http connection: {e}");
            }
        });
    }
}

fn response((status, content_type, body): (StatusCode, &'static str, String)) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn bad_request(msg: String) -> Response<Body> {
    response((StatusCode::BAD_REQUEST, "text/plain", format!("{msg}\n")))
}

/// What `/audit.jsonl` (and the web view's search) was asked: the
/// filters of `airlock audit` (`user`, `room`, `alias`, `action`,
/// `request`, `status`, `event`, `deployed`, `since`, `before=<seq>`),
/// `after=<seq>` and `follow`. Anything else, or a value that does not
/// parse, is refused: a filter the server ignored would export more than
/// was asked for.
pub fn export_query(query: &str, now_ms: u64) -> Result<(Query, u64, bool), String> {
    let mut q = Query::default();
    let mut after = 0u64;
    let mut follow = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let v = v.into_owned();
        match &*k {
            "since" => {
                q.since =
                    Some(crate::clock::parse_since(&v, now_ms).ok_or_else(|| {
                        format!("since={v}: expected RFC 3339 or a span such as 2h")
                    })?);
            }
            "before" => {
                q.before = Some(
                    v.parse()
                        .map_err(|_| format!("before={v}: expected an entry's number"))?,
                );
            }
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| format!("after={v}: expected an entry's number"))?;
            }
            "follow" => {
                follow = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("follow={v}: expected true or false")),
                };
            }
            "user" => q.user = Some(v),
            "room" => q.room = Some(v),
            "alias" => q.alias = Some(v),
            "action" => q.action = Some(v),
            "request" => q.request = Some(v),
            "status" => q.status = Some(v),
            "event" => q.event = Some(v),
            "deployed" => q.deployed = Some(v),
            other => {
                return Err(format!(
                    "{other}: not a filter (user, room, alias, action, request, status, event, deployed, since, before, after, follow)"
                ));
            }
        }
    }
    Ok((q, after, follow))
}

/// Ends a follower's count when its stream ends, however it ends.
struct Follower(Arc<AtomicUsize>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /audit.jsonl?since=<RFC 3339 or span>&after=<seq>&user=…&follow=true`
/// with the bearer token: the matching entries, one JSON object a line,
/// oldest first; with `follow`, then every new matching entry as it is
/// written, until the client hangs up.
fn audit_jsonl(
    engine: Arc<Engine>,
    export: &AuditExport,
    req: &Request<hyper::body::Incoming>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return response((
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    if !export.authorized(req) {
        let mut r = response((
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "a bearer token is needed (Authorization: Bearer $AIRLOCK_AUDIT_TOKEN)\n".into(),
        ));
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let (query, after, follow) = match export_query(req.uri().query().unwrap_or(""), engine.now()) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let follower = if follow {
        let n = export.followers.fetch_add(1, Ordering::SeqCst);
        let f = Follower(export.followers.clone());
        if n >= MAX_FOLLOWERS {
            return response((
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{MAX_FOLLOWERS} clients already follow the audit log\n"),
            ));
        }
        Some(f)
    } else {
        None
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _follower = follower;
        let mut last = after;
        loop {
            let log = engine.audit_log().clone();
            let batch = tokio::task::spawn_blocking(move || log.after(last, 1000)).await;
            let Ok(Ok(batch)) = batch else {
                return;
            };
            let full = batch.len() == 1000;
            for e in batch {
                last = e.seq;
                if !query.accepts(&e) {
                    continue;
                }
                let mut line = serde_json::to_vec(&e).unwrap_or_default();
                line.push(b'\n');
                if tx.send(Bytes::from(line)).await.is_err() {
                    return; // the client hung up
                }
            }
            if !full {
                if !follow {
                    return;
                }
                // A client that goes while every entry is filtered out is
                // noticed here, not only at the next send.
                tokio::select! {
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                    () = tx.closed() => return,
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if let Ok(v) = "application/jsonl".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// The answer to one request: status, content type, body.
fn route(
    method: &Method,
    path: &str,
    engine: &Engine,
    liveness: &Liveness,
) -> (StatusCode, &'static str, String) {
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match path {
        "/healthz" => {
            let (ok, body) = health(engine, liveness, engine.now());
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "application/json", format!("{body}\n"))
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            engine.render_metrics(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Healthy when the stores answer and the last sync is recent; the body
/// says what is wrong otherwise.
pub fn health(engine: &Engine, liveness: &Liveness, now_ms: u64) -> (bool, serde_json::Value) {
    let mut problems = Vec::new();
    if let Err(e) = engine.stores_ok() {
        problems.push(e);
    }
    problems.extend(engine.notify_problems());
    let age = liveness
        .last_sync()
        .map(|t| now_ms.saturating_sub(t) / 1000);
    match age {
        None => problems.push("no sync has succeeded yet".to_string()),
        Some(s) if s > MAX_SYNC_AGE.as_secs() => problems.push(format!(
            "the last successful sync was {s} s ago (more than {} s)",
            MAX_SYNC_AGE.as_secs()
        )),
        Some(_) => {}
    }
    let ok = problems.is_empty();
    (
        ok,
        json!({
            "status": if ok { "ok" } else { "unhealthy" },
            "last_sync_age_seconds": age,
            "problems": problems,
        }),
    )
}
