//! The optional HTTP listener (`http.listen` in `airlock.yaml`): `GET
//! /healthz` for a supervisor or a probe, `GET /metrics` for Prometheus.
//! Nothing else is served, and nothing here changes any state.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::metrics::Liveness;

/// A sync older than this makes the bot unhealthy: the loop syncs at least
/// every 30 s (its long-poll timeout) while the homeserver answers.
pub const MAX_SYNC_AGE: Duration = Duration::from_secs(120);

/// Serve `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, liveness: Arc<Liveness>) {
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

fn response(
    (status, content_type, body): (StatusCode, &'static str, String),
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
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
