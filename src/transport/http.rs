//! The optional HTTP listener (`http.listen` in `airlock.yaml`): `GET
//! /healthz` for a supervisor or a probe, `GET /metrics` for Prometheus.
//! Nothing else is served, and nothing here changes any state.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::metrics::Liveness;

/// A sync older than this makes the bot unhealthy: the loop syncs at least
/// every 30 s (its long-poll timeout) while the homeserver answers.
pub const MAX_SYNC_AGE: Duration = Duration::from_secs(120);

type Body = BoxBody<Bytes, Infallible>;

/// How often a followed audit export looks for new entries.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Serve `listener` until the task is dropped; `audit_export` adds
/// `/audit.jsonl`.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    liveness: Arc<Liveness>,
    audit_export: bool,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("http listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (engine, liveness) = (engine.clone(), liveness.clone());
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (engine, liveness) = (engine.clone(), liveness.clone());
            async move {
                if audit_export && req.method() == Method::GET && req.uri().path() == "/audit.jsonl"
                {
                    let query = req.uri().query().unwrap_or("").to_string();
                    return Ok::<_, Infallible>(audit_jsonl(engine, &query));
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

/// `GET /audit.jsonl?since=<RFC 3339 or span>&after=<seq>&follow=true`:
/// the matching entries, one JSON object a line, oldest first; with
/// `follow`, then every new entry as it is written, until the client
/// hangs up.
fn audit_jsonl(engine: Arc<Engine>, query: &str) -> Response<Body> {
    let mut since = None;
    let mut after = 0u64;
    let mut follow = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "since" => match crate::clock::parse_since(&v, crate::clock::now_ms()) {
                Some(t) => since = Some(t),
                None => {
                    return response((
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("since={v}: expected RFC 3339 or a span such as 2h\n"),
                    ));
                }
            },
            "after" => after = v.parse().unwrap_or(0),
            "follow" => follow = v == "true" || v == "1",
            _ => {}
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
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
                if since.is_some_and(|t| e.ts < t) {
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
                tokio::time::sleep(FOLLOW_POLL).await;
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
            let (ok, body) = health(engine, liveness, crate::clock::now_ms());
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
