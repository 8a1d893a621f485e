//! Handing actions to a StackStorm cluster (`st2:` in `airlock.yaml`).
//!
//! An action routed there is a [`St2Action`]: when a request is made it
//! asks st2 for the action's metadata and checks the parameters against it
//! (off the event path); once approved it submits exactly the parameters
//! the prompt showed with `POST /api/v1/executions` (never
//! `/aliasexecution`, which would parse the command again), follows the
//! execution over st2's event stream, falling back to polling when the
//! stream drops, cancels it on `!cancel`, and reports st2's result and
//! execution id.
//!
//! StackStorm renders every parameter value that holds Jinja (`{{`, `{%`)
//! with its datastore in scope (`st2kv.system.*`), before the action runs.
//! A value typed in chat, sent as is, would be rendered there: `{{
//! st2kv.system.db_password }}` would come back in the result. So every
//! value airlock sends is a [`literal`]: text st2's renderer turns back
//! into exactly the value typed. st2 still renders the action's own
//! defaults, which airlock does not send.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Action, ActionSpec, Handover, Outcome, PrepareError, Prepared, Remote, RunContext, Status,
    hand_over,
};
use crate::alias::Params;
use crate::policy::Glob;

/// `value` (a string, or strings inside arrays and objects) written so
/// that Jinja renders it to itself: every `{{`, `{%` and `{#` becomes an
/// expression printing those two characters (`{{ '{%' }}`). No other
/// delimiter can open a tag, so nothing the value holds is evaluated;
/// values without them are left as they are (st2 does not render those).
pub fn literal(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(literal_str(s)),
        Value::Array(items) => Value::Array(items.iter().map(literal).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), literal(v))).collect())
        }
        other => other.clone(),
    }
}

fn literal_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some(&next @ ('{' | '%' | '#'))) => {
                chars.next();
                out.push_str("{{ '{");
                out.push(next);
                out.push_str("' }}");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Statuses after which an execution changes no more.
const DONE: [&str; 5] = ["succeeded", "failed", "timeout", "abandoned", "canceled"];

/// `st2:` in `airlock.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct St2Config {
    /// st2's base URL (`https://st2.example.org`): the API is under
    /// `/api/v1`, the stream under `/stream/v1`.
    pub url: String,
    /// The environment variable holding the API key (never the file).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    /// Action refs (globs: `mypack.*`) that run on StackStorm.
    #[serde(default)]
    pub actions: Vec<String>,
    /// The Matrix user ID StackStorm's announcements (`chatops.post_message`)
    /// are judged as: the policy must let it use the `announce` built-in
    /// in a room before st2 may post there. None: no announcements.
    #[serde(default)]
    pub announce_as: Option<String>,
    /// The API key itself, handed in by code that embeds airlock (a test,
    /// a composition of its own); never read from a file. None: read
    /// from `api_key_env` when needed.
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
}

/// An API key: shown as `***` by `Debug`, so it never reaches a log.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn default_key_env() -> String {
    "ST2_API_KEY".into()
}

impl St2Config {
    /// The API key: the one handed in, or `api_key_env`'s value.
    pub fn key(&self) -> Result<String, String> {
        if let Some(k) = &self.api_key {
            return Ok(k.0.clone());
        }
        std::env::var(&self.api_key_env).map_err(|_| {
            format!(
                "no StackStorm API key: set {} in airlock's environment",
                self.api_key_env
            )
        })
    }

    /// Whether action `reference` runs on StackStorm.
    pub fn routes(&self, reference: &str) -> bool {
        self.actions.iter().any(|g| Glob::new(g).matches(reference))
    }
}

/// An action that runs on StackStorm.
pub struct St2Action {
    spec: ActionSpec,
    cfg: Arc<St2Config>,
}

/// Why talking to st2 failed, in words a person can act on.
fn explain(cfg: &St2Config, e: &reqwest::Error) -> String {
    if e.is_connect() || e.is_timeout() {
        format!("StackStorm at {} cannot be reached ({e})", cfg.url)
    } else {
        format!("StackStorm at {}: {e}", cfg.url)
    }
}

impl St2Action {
    /// Action `reference`, run by the st2 `cfg` names.
    pub fn new(reference: &str, cfg: Arc<St2Config>) -> Self {
        St2Action {
            spec: ActionSpec::open(reference, "runs on StackStorm"),
            cfg,
        }
    }

    fn key(&self) -> Result<String, String> {
        self.cfg.key()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.url.trim_end_matches('/'))
    }

    fn client(timeout: Option<Duration>) -> Result<reqwest::blocking::Client, String> {
        reqwest::blocking::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())
    }

    /// GET `path` as JSON; st2's `faultstring` on an error status.
    fn get(&self, path: &str) -> Result<Value, String> {
        let key = self.key()?;
        let r = Self::client(Some(Duration::from_secs(15)))?
            .get(self.url(path))
            .header("St2-Api-Key", key)
            .send()
            .map_err(|e| explain(&self.cfg, &e))?;
        answer(&self.cfg, r)
    }
}

/// The body of st2's answer, or its `faultstring` with the status.
fn answer(cfg: &St2Config, r: reqwest::blocking::Response) -> Result<Value, String> {
    let status = r.status();
    let body: Value = r
        .bytes()
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if status.is_success() && body.get("faultstring").is_none() {
        return Ok(body);
    }
    let fault = body
        .get("faultstring")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    Err(match status.as_u16() {
        401 | 403 => format!("StackStorm at {} refused the API key ({fault})", cfg.url),
        _ => format!("StackStorm said: {fault} (HTTP {status})"),
    })
}

impl Action for St2Action {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    fn prepares_slowly(&self) -> bool {
        true
    }

    /// st2's metadata for the action and its runner: unknown parameters
    /// and missing required ones are refused now, before anyone is asked
    /// to approve.
    fn prepare(&self, params: Params) -> Result<Prepared, PrepareError> {
        let reference = &self.spec.reference;
        let action = self
            .get(&format!("/api/v1/actions/{reference}"))
            .map_err(|e| {
                PrepareError::Unavailable(format!("{e} (looking up action {reference})"))
            })?;
        let runner = action["runner_type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let runners = self
            .get(&format!("/api/v1/runnertypes/?name={runner}"))
            .map_err(PrepareError::Unavailable)?;
        let mut schema = action["parameters"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(r) = runners
            .get(0)
            .and_then(|r| r["runner_parameters"].as_object())
        {
            for (k, v) in r {
                schema.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let unknown: Vec<&str> = params
            .keys()
            .filter(|k| !schema.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let mut known: Vec<&str> = schema.keys().map(String::as_str).collect();
            known.sort();
            return Err(PrepareError::Invalid(format!(
                "StackStorm's {reference} takes no parameter {} (it takes: {})",
                unknown.join(", "),
                known.join(", ")
            )));
        }
        for (k, p) in &schema {
            if p["required"] == true && p.get("default").is_none() && !params.contains_key(k) {
                return Err(PrepareError::Invalid(format!(
                    "StackStorm's {reference} needs parameter {k}"
                )));
            }
            if p["immutable"] == true && params.contains_key(k) {
                return Err(PrepareError::Invalid(format!(
                    "parameter {k} of {reference} is immutable: it cannot be given"
                )));
            }
            if p["secret"] == true && params.contains_key(k) {
                return Err(PrepareError::Invalid(format!(
                    "parameter {k} of {reference} is secret: it cannot be given in chat"
                )));
            }
        }
        Ok(Prepared {
            params,
            shown: vec![format!(
                "runs on StackStorm at {} ({runner}); st2 fills in its defaults",
                self.cfg.url
            )],
            plan: json!({"st2": self.cfg.url}),
        })
    }

    /// Submit, and follow. While st2 cannot be reached (or answers 5xx)
    /// the submission is retried with backoff, each retry only after
    /// asking st2 whether the last one arrived after all; `!status` shows
    /// the retries. A refusal (4xx) is final.
    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let submitted = hand_over(ctx, || match self.submit(ctx, params) {
            // Did the last one arrive after all?
            Err(Handover::Unreachable(e)) => match self.find(ctx.request_id) {
                Ok(Some(id)) => Ok(id),
                _ => Err(Handover::Unreachable(e)),
            },
            other => other,
        });
        match submitted {
            Ok(id) => self.follow(ctx, &id),
            Err(e) => Outcome::failed(e),
        }
    }

    fn continues_elsewhere(&self) -> bool {
        true
    }

    /// After a restart: the execution st2 has for this request (found by
    /// the request id airlock put in its context), followed again; only if
    /// st2 never received it is it submitted now.
    fn resume(&self, ctx: &RunContext, params: &Params) -> Outcome {
        loop {
            match self.find(ctx.request_id) {
                Ok(Some(id)) => return self.follow(ctx, &id),
                Ok(None) => return self.run(ctx, params),
                // Unknown: never submit twice; ask again until st2 answers
                // or airlock stops.
                Err(e) => {
                    tracing::warn!("looking up request {} on StackStorm: {e}", ctx.request_id);
                    if ctx.stopping.load(Ordering::Relaxed) {
                        return Outcome::failed(e);
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
    }
}

impl St2Action {
    /// The id of the execution st2 has for airlock request `request`.
    fn find(&self, request: &str) -> Result<Option<String>, String> {
        let list = self.get(&format!(
            "/api/v1/executions?action={}&limit=200",
            self.spec.reference
        ))?;
        Ok(list.as_array().and_then(|l| {
            l.iter()
                .find(|e| e["context"]["airlock"]["request_id"] == request)
                .and_then(|e| e["id"].as_str().map(str::to_string))
        }))
    }

    /// `POST /api/v1/executions`: the parameters as literals, who asked and
    /// the request id in the context (to find it again). Returns st2's id.
    fn submit(&self, ctx: &RunContext, params: &Params) -> Result<String, Handover> {
        let key = self.key().map_err(Handover::Refused)?;
        let body = json!({
            "action": self.spec.reference,
            "parameters": literal(&Value::Object(params.clone())),
        });
        let context = json!({
            "airlock": {
                "request_id": ctx.request_id, "requester": ctx.requester,
                "approvers": ctx.approvers,
            },
            "api_user": ctx.requester,
        });
        let r = Self::client(Some(Duration::from_secs(30)))
            .map_err(Handover::Refused)?
            .post(self.url("/api/v1/executions"))
            .header("St2-Api-Key", key)
            .header("st2-context", context.to_string())
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .map_err(|e| Handover::Unreachable(explain(&self.cfg, &e)))?;
        let server_error = r.status().is_server_error();
        let ex = answer(&self.cfg, r).map_err(|e| {
            if server_error {
                Handover::Unreachable(e)
            } else {
                Handover::Refused(e)
            }
        })?;
        ex["id"].as_str().map(str::to_string).ok_or_else(|| {
            Handover::Refused("StackStorm answered without an execution id".to_string())
        })
    }

    /// Follow execution `id` to its end: its events over the stream while
    /// the stream lasts, a poll when it drops or says nothing for a while;
    /// `!cancel` sends `DELETE` once.
    fn follow(&self, ctx: &RunContext, id: &str) -> Outcome {
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        self.stream(id, tx);
        let mut cancelled = false;
        let mut asked: Vec<String> = Vec::new();
        let mut last_poll = Instant::now();
        let mut stream_open = true;
        loop {
            if ctx.stopping.load(Ordering::Relaxed) {
                // airlock is stopping: the execution goes on, and the next
                // start follows it again.
                return Outcome::failed(format!("no longer followed: StackStorm execution {id}"));
            }
            if ctx.cancel.load(Ordering::Relaxed) && !cancelled {
                cancelled = true;
                if let Err(e) = self.cancel(id) {
                    tracing::warn!("cancelling st2 execution {id}: {e}");
                }
            }
            let event = if stream_open {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(e) => Some(e),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        stream_open = false;
                        None
                    }
                }
            } else {
                std::thread::sleep(Duration::from_millis(500));
                None
            };
            let ex = match event {
                Some(e) if e.get("status").is_some() => e,
                Some(out) => {
                    if let Some(data) = out["data"].as_str() {
                        ctx.output.push(data.as_bytes());
                    }
                    continue;
                }
                // Quiet, or no stream: ask.
                None if !stream_open || last_poll.elapsed() > Duration::from_secs(5) => {
                    last_poll = Instant::now();
                    match self.get(&format!("/api/v1/executions/{id}")) {
                        Ok(ex) => ex,
                        Err(e) => {
                            tracing::warn!("polling st2 execution {id}: {e}");
                            continue;
                        }
                    }
                }
                None => continue,
            };
            let status = ex["status"].as_str().unwrap_or_default();
            if DONE.contains(&status) {
                return outcome(id, &ex);
            }
            // A workflow waiting on a question (`core.ask`): the request's
            // approvers answer it in the room, and the answer goes back.
            if matches!(status, "pending" | "paused")
                && let Some((inquiry, question, field)) = self.inquiry_of(id, &ex)
                && !asked.contains(&inquiry)
            {
                asked.push(inquiry.clone());
                ctx.output
                    .push(format!("StackStorm asks: {question}\n").as_bytes());
                if let Some(answer) = (ctx.ask)(&question)
                    && let Err(e) = self.respond(&inquiry, &field, answer)
                {
                    ctx.output
                        .push(format!("the answer did not reach StackStorm: {e}\n").as_bytes());
                }
            }
        }
    }

    /// The event stream for execution `id`, read on its own thread into
    /// `tx`; the thread ends when the stream does (st2 ends it after the
    /// execution's last update).
    fn stream(&self, id: &str, tx: std::sync::mpsc::Sender<Value>) {
        let Ok(key) = self.key() else { return };
        let url = self.url(&format!(
            "/stream/v1/stream?events=st2.execution__update,st2.execution.output__create&execution_ids={id}&end_execution_id={id}&end_event=st2.execution__update"
        ));
        std::thread::spawn(move || {
            let Ok(client) = St2Action::client(None) else {
                return;
            };
            let Ok(r) = client.get(url).header("St2-Api-Key", key).send() else {
                return;
            };
            if r.status().is_success() {
                read_events(r, |v| tx.send(v).is_ok());
            }
        });
    }

    /// The open inquiry execution `id` waits on: its id, its question and
    /// the boolean field a yes or no answers.
    fn inquiry_of(&self, id: &str, ex: &Value) -> Option<(String, String, String)> {
        let mut candidates: Vec<String> = ex["result"]["inquiry"]
            .as_str()
            .map(str::to_string)
            .into_iter()
            .collect();
        if let Ok(children) = self.get(&format!("/api/v1/executions/{id}/children")) {
            candidates.extend(
                children
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["id"].as_str().map(str::to_string)),
            );
        }
        candidates.into_iter().find_map(|c| {
            let inq = self.get(&format!("/api/v1/inquiries/{c}")).ok()?;
            let props = inq["schema"]["properties"].as_object()?;
            let (field, schema) = props.iter().find(|(_, s)| s["type"] == "boolean")?;
            let question = schema["description"]
                .as_str()
                .unwrap_or("StackStorm asks whether to go on")
                .to_string();
            Some((c, question, field.clone()))
        })
    }

    /// `PUT /api/v1/inquiries/{id}` with `{field: answer}`.
    fn respond(&self, inquiry: &str, field: &str, yes: bool) -> Result<(), String> {
        let key = self.key()?;
        let body = json!({"id": inquiry, "response": {field: yes}});
        let r = Self::client(Some(Duration::from_secs(15)))?
            .put(self.url(&format!("/api/v1/inquiries/{inquiry}")))
            .header("St2-Api-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .map_err(|e| explain(&self.cfg, &e))?;
        answer(&self.cfg, r).map(|_| ())
    }

    fn cancel(&self, id: &str) -> Result<(), String> {
        let key = self.key()?;
        let r = Self::client(Some(Duration::from_secs(15)))?
            .delete(self.url(&format!("/api/v1/executions/{id}")))
            .header("St2-Api-Key", key)
            .send()
            .map_err(|e| explain(&self.cfg, &e))?;
        answer(&self.cfg, r).map(|_| ())
    }
}

/// Each event's `data` in an SSE stream, parsed, to `f` until it returns
/// false or the stream ends.
fn read_events(stream: impl std::io::Read, mut f: impl FnMut(Value) -> bool) {
    let mut data = String::new();
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            let event = std::mem::take(&mut data);
            if let Ok(v) = serde_json::from_str(&event)
                && !f(v)
            {
                return;
            }
        }
    }
}

/// StackStorm's `chatops.post_message` announcements, for ever: each
/// event's body to `f` (which returns false to stop). The stream is
/// opened again, with backoff, whenever it drops.
pub fn listen_announcements(cfg: &St2Config, mut f: impl FnMut(Value) -> bool) {
    let url = format!(
        "{}/stream/v1/stream?events=st2.announcement__chatops",
        cfg.url.trim_end_matches('/')
    );
    let mut wait = Duration::from_secs(1);
    loop {
        let key = match cfg.key() {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!("{e}: no announcements");
                return;
            }
        };
        let started = Instant::now();
        let mut go_on = true;
        match St2Action::client(None).and_then(|c| {
            c.get(&url)
                .header("St2-Api-Key", key)
                .send()
                .map_err(|e| e.to_string())
        }) {
            Ok(r) if r.status().is_success() => read_events(r, |v| {
                go_on = f(v);
                go_on
            }),
            Ok(r) => tracing::warn!("StackStorm's stream answered {}", r.status()),
            Err(e) => tracing::warn!("StackStorm's stream: {e}"),
        }
        if !go_on {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            wait = Duration::from_secs(1);
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

/// How execution `id` ended, as an outcome: st2's result as the result,
/// its id, status and parameters for the audit and the templates.
fn outcome(id: &str, ex: &Value) -> Outcome {
    let status = ex["status"].as_str().unwrap_or("failed");
    let result = ex.get("result").cloned().unwrap_or(Value::Null);
    let mut o = if status == "succeeded" {
        Outcome::ok(format!("StackStorm execution {id} succeeded"), result)
    } else {
        let mut f = Outcome::failed(format!("StackStorm execution {id} ended {status}"));
        f.result = result;
        f
    };
    o.status = if status == "succeeded" {
        Status::Succeeded
    } else {
        Status::Failed
    };
    o.remote = Some(Remote {
        audit_key: "st2_execution",
        place: format!("StackStorm as execution {id}"),
        view: json!({
            "id": id, "status": status, "parameters": ex.get("parameters").cloned().unwrap_or(Value::Null),
        }),
    });
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jinja_openers_become_expressions_and_the_rest_stays() {
        assert_eq!(
            literal(&json!("{{ st2kv.system.db_password }}")),
            json!("{{ '{{' }} st2kv.system.db_password }}")
        );
        assert_eq!(
            literal(&json!("{% raw %}x{# c #}")),
            json!("{{ '{%' }} raw %}x{{ '{#' }} c #}")
        );
        // "{{{" is "{{" then "{".
        assert_eq!(literal(&json!("{{{")), json!("{{ '{{' }}{"));
        assert_eq!(literal(&json!("plain }} %} #}")), json!("plain }} %} #}"));
        assert_eq!(
            literal(&json!({"a": ["{{x}}", 1, true], "b": null})),
            json!({"a": ["{{ '{{' }}x}}", 1, true], "b": null})
        );
    }
}
