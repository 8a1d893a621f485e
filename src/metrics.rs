//! What airlock counts, in Prometheus' text format (`GET /metrics`).
//!
//! Almost everything is derived from the audit entries the engine writes
//! ([`Metrics::observe`]): one mechanism, and a metric can never disagree
//! with the audit log. What only the transport sees (sync, replies, send
//! retries) it reports through the other methods.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::{Entry, Event};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    rule: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecutionLabel {
    action: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 5 ms … ~40 min.
    exponential_buckets(0.005, 2.0, 20)
}

fn histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

/// The counters, gauges and histograms, and their registry.
pub struct Metrics {
    registry: Registry,
    commands: Family<OutcomeLabel, Counter>,
    decisions: Family<DecisionLabel, Counter>,
    approvals: Family<OutcomeLabel, Counter>,
    requests: Family<StateLabel, Counter>,
    executions: Family<ExecutionLabel, Counter>,
    durations: Family<ActionLabel, Histogram, fn() -> Histogram>,
    reply_latency: Histogram,
    syncs: Family<OutcomeLabel, Counter>,
    sync_lag: Gauge<f64, AtomicU64>,
    send_retries: Counter,
    reactions_dropped: Counter,
    pending: Gauge,
    audit_entries: Counter,
    locks: Family<EventLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered and at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("airlock");
        let m = Metrics {
            commands: Family::default(),
            decisions: Family::default(),
            approvals: Family::default(),
            requests: Family::default(),
            executions: Family::default(),
            durations: Family::new_with_constructor(histogram),
            reply_latency: histogram(),
            syncs: Family::default(),
            sync_lag: Gauge::default(),
            send_retries: Counter::default(),
            reactions_dropped: Counter::default(),
            pending: Gauge::default(),
            audit_entries: Counter::default(),
            locks: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "commands",
            "Commands received, by outcome (builtin, matched, no_match, refused, needs_confirmation)",
            m.commands.clone(),
        );
        registry.register(
            "decisions",
            "Policy decisions, by rule and decision",
            m.decisions.clone(),
        );
        registry.register(
            "approvals",
            "Answers to prompts, by outcome (counted, refused)",
            m.approvals.clone(),
        );
        registry.register(
            "requests_closed",
            "Requests by the final state they reached",
            m.requests.clone(),
        );
        registry.register(
            "executions",
            "Actions run, by action and status",
            m.executions.clone(),
        );
        registry.register(
            "execution_duration_seconds",
            "How long actions ran, by action",
            m.durations.clone(),
        );
        registry.register(
            "reply_latency_seconds",
            "From a command's timestamp to the bot's first answer sent",
            m.reply_latency.clone(),
        );
        registry.register(
            "syncs",
            "Sync responses, by outcome (ok, failed)",
            m.syncs.clone(),
        );
        registry.register(
            "sync_lag_seconds",
            "Age of the newest event in the last sync",
            m.sync_lag.clone(),
        );
        registry.register(
            "send_retries",
            "Messages sent again after a failure",
            m.send_retries.clone(),
        );
        registry.register(
            "reactions_dropped",
            "Status reactions dropped because too many were waiting",
            m.reactions_dropped.clone(),
        );
        registry.register(
            "lock_events",
            "Locks taken, waited for and released, by event (locked, queued, unlocked)",
            m.locks.clone(),
        );
        registry.register(
            "pending_requests",
            "Requests waiting for approvals now",
            m.pending.clone(),
        );
        registry.register(
            "audit_entries",
            "Audit entries written",
            m.audit_entries.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Count what an audit entry records.
    pub fn observe(&self, e: &Entry) {
        self.audit_entries.inc();
        let outcome = |s: &str| OutcomeLabel { outcome: s.into() };
        let state = |s: &str| {
            self.requests
                .get_or_create(&StateLabel { state: s.into() })
                .inc();
        };
        match e.event {
            Event::Locked | Event::Queued | Event::Unlocked => {
                self.locks
                    .get_or_create(&EventLabel {
                        event: e.event.name().into(),
                    })
                    .inc();
            }
            Event::Matched => {
                self.commands.get_or_create(&outcome("matched")).inc();
            }
            Event::Received if e.details().get("builtin").is_some() => {
                self.commands.get_or_create(&outcome("builtin")).inc();
            }
            Event::NoMatch => {
                self.commands.get_or_create(&outcome("no_match")).inc();
            }
            Event::ConfirmationRequested => {
                self.commands
                    .get_or_create(&outcome("needs_confirmation"))
                    .inc();
            }
            Event::Allowed => {
                self.decisions
                    .get_or_create(&DecisionLabel {
                        rule: e.rule.clone().unwrap_or_default(),
                        decision: "allow".into(),
                    })
                    .inc();
            }
            Event::Denied => {
                self.decisions
                    .get_or_create(&DecisionLabel {
                        rule: e.rule.clone().unwrap_or_else(|| "(default)".into()),
                        decision: "deny".into(),
                    })
                    .inc();
                if e.request.is_some() {
                    state("refused");
                } else if e.alias.is_some() {
                    self.commands.get_or_create(&outcome("refused")).inc();
                }
            }
            Event::Approval => {
                self.approvals.get_or_create(&outcome("counted")).inc();
            }
            Event::ApprovalRefused => {
                self.approvals.get_or_create(&outcome("refused")).inc();
            }
            Event::Rejected => state("denied"),
            Event::Expired => state("expired"),
            Event::Cancelled if e.status.map(|s| s.name()) != Some("running") => state("cancelled"),
            Event::Finished | Event::Interrupted => {
                let status = e.status.map(|s| s.name()).unwrap_or("unknown");
                state(status);
                let action = e.action.clone().unwrap_or_default();
                self.executions
                    .get_or_create(&ExecutionLabel {
                        action: action.clone(),
                        status: status.into(),
                    })
                    .inc();
                if let Some(ms) = e.detail_field::<u64>("elapsed_ms") {
                    self.durations
                        .get_or_create(&ActionLabel { action })
                        .observe(ms as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }

    /// A sync response arrived (`ok`) or failed; `lag_ms` is the age of the
    /// newest event it carried.
    pub fn sync(&self, ok: bool, lag_ms: Option<u64>) {
        let label = OutcomeLabel {
            outcome: if ok { "ok" } else { "failed" }.into(),
        };
        self.syncs.get_or_create(&label).inc();
        if let Some(ms) = lag_ms {
            self.sync_lag.set(ms as f64 / 1000.0);
        }
    }

    /// The first answer to a command went out `ms` after its timestamp.
    pub fn replied(&self, ms: u64) {
        self.reply_latency.observe(ms as f64 / 1000.0);
    }

    /// A message had to be sent again.
    pub fn send_retry(&self) {
        self.send_retries.inc();
    }

    /// `n` status reactions were dropped, too many waiting.
    pub fn reactions_dropped(&self, n: usize) {
        self.reactions_dropped.inc_by(n as u64);
    }

    /// The Prometheus text exposition, with the pending requests as of
    /// `pending`.
    pub fn render(&self, pending: usize) -> String {
        self.pending.set(pending as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The last successful sync (ms since the epoch), for `/healthz`.
#[derive(Default)]
pub struct Liveness {
    last_sync_ms: AtomicU64,
}

impl Liveness {
    /// A sync succeeded at `now_ms`.
    pub fn synced(&self, now_ms: u64) {
        self.last_sync_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When the last sync succeeded; None before the first.
    pub fn last_sync(&self) -> Option<u64> {
        match self.last_sync_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }
}
