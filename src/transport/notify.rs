//! On-call notifications: a signed JSON webhook and PagerDuty's Events
//! API v2, told of break-glass runs (resolved when reviewed) and of failed
//! runs under a rule marked `page_on_failure`. Each target has its own
//! thread and queue: sending is retried with backoff and never delays or
//! blocks a command; a target that keeps failing is a `/healthz` problem.
//! Secrets (the webhook's HMAC key, PagerDuty's routing key) come from the
//! environment only, and never reach a log.

pub use crate::engine::{Notice, NoticeKind as Kind};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

/// PagerDuty's Events API v2.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// Notices waiting per target before new ones are dropped (and logged).
const QUEUE: usize = 1_000;
/// Tries per notice.
const ATTEMPTS: u32 = 5;
/// The header carrying the webhook body's HMAC-SHA256, as GitHub's.
pub const SIGNATURE_HEADER: &str = "X-Airlock-Signature-256";

/// `notify:` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where notices go.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// Which notices go where.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The first wait before a notice is sent again (doubled each time,
    /// five tries in all): `1s` by default.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// An approved request not started this long after (`15m`) is a
    /// `stuck` notice, resolved when it starts or ends.
    #[serde(default)]
    pub stuck_after: Option<String>,
    /// A lock held this long (`2h`), by a run or by hand, is a
    /// `lock_held` notice, resolved when it is released.
    #[serde(default)]
    pub lock_held_after: Option<String>,
}

/// One target: a webhook or PagerDuty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Its name, for routes and `/healthz`.
    pub name: String,
    /// A URL to POST signed JSON to.
    #[serde(default)]
    pub webhook: Option<String>,
    /// The environment variable holding the webhook's HMAC key.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// PagerDuty's Events API v2.
    #[serde(default)]
    pub pagerduty: Option<PagerDutyConfig>,
}

/// PagerDuty's side of a target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The environment variable holding the integration's routing key.
    pub routing_key_env: String,
    /// The Events API's URL (PagerDuty's by default; EU accounts use
    /// events.eu.pagerduty.com).
    #[serde(default)]
    pub url: Option<String>,
}

/// Notices of `events` go to `targets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Which notices.
    pub events: Vec<Kind>,
    /// Target names.
    pub targets: Vec<String>,
}

enum Sink {
    Webhook { url: String, key: Vec<u8> },
    PagerDuty { url: String, routing_key: String },
}

struct Target {
    name: String,
    tx: SyncSender<Notice>,
}

/// Sends notices to their targets, off the caller's thread.
pub struct Notifier {
    targets: Vec<Target>,
    routes: Vec<Route>,
    /// Targets whose last notice could not be delivered, and why.
    failing: Arc<Mutex<BTreeMap<String, String>>>,
    /// `stuck_after` and `lock_held_after`.
    stuck_after: Option<Duration>,
    lock_held_after: Option<Duration>,
    /// Matters triggered and not yet resolved (kind, request): each is
    /// triggered once, and resolved only if it was.
    open: Mutex<std::collections::BTreeSet<(&'static str, String)>>,
}

/// A target's name and its problem with the configuration.
fn bad(name: &str, why: impl std::fmt::Display) -> String {
    format!("notify target {name}: {why}")
}

impl Notifier {
    /// Threads for every target of `cfg`, secrets read from the
    /// environment. An error names the target and what is missing.
    pub fn start(cfg: &NotifyConfig) -> Result<Notifier, String> {
        let retry = match cfg.retry_after.as_deref() {
            None => Duration::from_secs(1),
            // Milliseconds too: a test's receiver should not take minutes.
            Some(s) => match s.trim().strip_suffix("ms") {
                Some(ms) => ms.trim().parse().ok().map(Duration::from_millis),
                None => crate::clock::parse_duration(s),
            }
            .ok_or_else(|| {
                format!("notify.retry_after: \"{s}\" is not a duration such as 1s or 500ms")
            })?,
        };
        for r in &cfg.routes {
            for t in &r.targets {
                if !cfg.targets.iter().any(|x| &x.name == t) {
                    return Err(format!("notify.routes: no target named \"{t}\""));
                }
            }
        }
        let env = |name: &str, var: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| bad(name, format!("the environment variable {var} is not set")))
        };
        let failing = Arc::new(Mutex::new(BTreeMap::new()));
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("notify: {e}"))?;
        let mut targets = Vec::new();
        for t in &cfg.targets {
            let sink = match (&t.webhook, &t.pagerduty) {
                (Some(url), None) => {
                    let var = t.secret_env.as_deref().ok_or_else(|| {
                        bad(
                            &t.name,
                            "a webhook needs secret_env: the receiver checks its signature",
                        )
                    })?;
                    url::Url::parse(url).map_err(|e| bad(&t.name, format!("webhook: {e}")))?;
                    Sink::Webhook {
                        url: url.clone(),
                        key: env(&t.name, var)?.into_bytes(),
                    }
                }
                (None, Some(pd)) => Sink::PagerDuty {
                    url: pd.url.clone().unwrap_or_else(|| PAGERDUTY_URL.into()),
                    routing_key: env(&t.name, &pd.routing_key_env)?,
                },
                _ => return Err(bad(&t.name, "give either webhook or pagerduty")),
            };
            let (tx, rx) = sync_channel(QUEUE);
            let (name, failing, client) = (t.name.clone(), failing.clone(), client.clone());
            std::thread::Builder::new()
                .name(format!("notify-{}", t.name))
                .spawn(move || deliver(&name, &sink, &client, rx, retry, &failing))
                .map_err(|e| bad(&t.name, e))?;
            targets.push(Target {
                name: t.name.clone(),
                tx,
            });
        }
        let bound = |field: &str, v: &Option<String>| match v.as_deref() {
            None => Ok(None),
            Some(s) => crate::clock::parse_duration(s)
                .filter(|d| !d.is_zero())
                .map(Some)
                .ok_or_else(|| format!("notify.{field}: \"{s}\" is not a duration such as 15m")),
        };
        Ok(Notifier {
            targets,
            routes: cfg.routes.clone(),
            failing,
            stuck_after: bound("stuck_after", &cfg.stuck_after)?,
            lock_held_after: bound("lock_held_after", &cfg.lock_held_after)?,
            open: Mutex::default(),
        })
    }

    /// Queue `n` for every target its kind is routed to; never waits.
    pub fn send(&self, n: Notice) {
        for t in &self.targets {
            let routed = self
                .routes
                .iter()
                .any(|r| r.events.contains(&n.kind) && r.targets.contains(&t.name));
            if !routed {
                continue;
            }
            match t.tx.try_send(n.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => tracing::error!(
                    target_name = %t.name,
                    "notify: {QUEUE} notices wait for this target; a {} notice for request {} is dropped",
                    n.kind.name(),
                    n.request
                ),
                Err(TrySendError::Disconnected(_)) => {
                    tracing::error!(target_name = %t.name, "notify: the target's thread has stopped")
                }
            }
        }
    }

    /// `stuck_after`, if set.
    pub fn stuck_after(&self) -> Option<Duration> {
        self.stuck_after
    }

    /// `lock_held_after`, if set.
    pub fn lock_held_after(&self) -> Option<Duration> {
        self.lock_held_after
    }

    /// Send `n` if it triggers a matter not already open, or resolves
    /// one that is (a matter never triggered is not resolved).
    pub fn once(&self, n: Notice) {
        let key = (n.kind.name(), n.request.clone());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let news = if n.trigger {
            open.insert(key)
        } else {
            open.remove(&key)
        };
        drop(open);
        if news {
            self.send(n);
        }
    }

    /// Targets whose last notice could not be delivered, for `/healthz`.
    pub fn problems(&self) -> Vec<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, why)| format!("notify target {name} fails: {why}"))
            .collect()
    }
}

/// The webhook's body, as sent and signed.
pub fn webhook_body(n: &Notice, delivery: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event": n.kind.name(),
        "action": if n.trigger { "trigger" } else { "resolve" },
        "request": n.request,
        "summary": n.summary,
        "details": n.details,
        "timestamp": crate::clock::format_ms(n.ts_ms),
        "delivery": delivery,
    }))
    .expect("json")
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `key`: the value of
/// [`SIGNATURE_HEADER`].
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    let hex = crate::audit::hex(&mac.finalize().into_bytes());
    format!("sha256={hex}")
}

/// PagerDuty's event for `n`: a trigger with a summary, source and
/// severity, or a resolve, under one dedup key per request and kind.
pub fn pagerduty_event(n: &Notice, routing_key: &str) -> Value {
    let dedup_key = format!("airlock-{}-{}", n.kind.name(), n.request);
    if !n.trigger {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key});
    }
    let summary: String = n.summary.chars().take(1024).collect();
    let mut payload = json!({
        "summary": summary,
        "source": "airlock",
        "severity": match n.kind {
            Kind::Failed => "error",
            Kind::BreakGlass | Kind::Stuck | Kind::LockHeld => "warning",
        },
        "timestamp": crate::clock::format_ms(n.ts_ms),
        "class": n.kind.name(),
        "custom_details": n.details,
    });
    // The schema's optional strings are left out rather than sent null.
    for (field, from) in [("component", "alias"), ("group", "room")] {
        if let Some(v) = n.details.get(from).and_then(Value::as_str) {
            payload[field] = json!(v);
        }
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "client": "airlock",
    })
}

/// A target's thread: each notice sent, tried again with backoff.
fn deliver(
    name: &str,
    sink: &Sink,
    client: &reqwest::blocking::Client,
    rx: Receiver<Notice>,
    retry: Duration,
    failing: &Mutex<BTreeMap<String, String>>,
) {
    let mut sent = 0u64;
    for n in rx {
        sent += 1;
        let delivery = format!("{}-{}-{sent}", n.request, n.ts_ms);
        let mut wait = retry;
        for attempt in 1..=ATTEMPTS {
            match post(sink, client, &n, &delivery) {
                Ok(()) => {
                    failing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(name);
                    break;
                }
                Err(why) => {
                    tracing::warn!(
                        target_name = name,
                        attempt,
                        "notify: a {} notice for request {} was not delivered: {why}",
                        n.kind.name(),
                        n.request
                    );
                    if attempt == ATTEMPTS {
                        failing
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name.to_string(), why);
                    } else {
                        std::thread::sleep(wait);
                        wait *= 2;
                    }
                }
            }
        }
    }
}

/// One try. The error never carries a URL (a webhook's may hold a token)
/// or a key.
fn post(
    sink: &Sink,
    client: &reqwest::blocking::Client,
    n: &Notice,
    delivery: &str,
) -> Result<(), String> {
    let response = match sink {
        Sink::Webhook { url, key } => {
            let body = webhook_body(n, delivery);
            client
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-Airlock-Event", n.kind.name())
                .header("X-Airlock-Delivery", delivery)
                .header(SIGNATURE_HEADER, signature(key, &body))
                .body(body)
                .send()
        }
        Sink::PagerDuty { url, routing_key } => client
            .post(url)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&pagerduty_event(n, routing_key)).expect("json"))
            .send(),
    }
    .map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

impl crate::engine::Notify for Notifier {
    fn send(&self, n: Notice) {
        Notifier::send(self, n)
    }
    fn once(&self, n: Notice) {
        Notifier::once(self, n)
    }
    fn stuck_after(&self) -> Option<Duration> {
        Notifier::stuck_after(self)
    }
    fn lock_held_after(&self) -> Option<Duration> {
        Notifier::lock_held_after(self)
    }
    fn problems(&self) -> Vec<String> {
        Notifier::problems(self)
    }
}
