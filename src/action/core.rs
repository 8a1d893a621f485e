//! A few of st2's `core` actions, implemented natively (no shell): enough
//! for harmless aliases, tests and demos.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Action, ActionSpec, Outcome, ParamSpec, RunContext};
use crate::alias::Params;
use crate::alias::cast::ParamType;

/// The `core.*` actions airlock runs natively.
pub fn actions() -> Vec<Arc<dyn Action>> {
    vec![
        Arc::new(Echo(echo_spec())),
        Arc::new(Noop(noop_spec())),
        Arc::new(Pause(pause_spec())),
    ]
}

/// `core.echo`: say a message.
pub fn echo_spec() -> ActionSpec {
    ActionSpec::new(
        "core.echo",
        "Return the message given",
        vec![ParamSpec::new("message", ParamType::String, "text to echo").required()],
    )
}

/// `core.noop`: do nothing, successfully.
pub fn noop_spec() -> ActionSpec {
    ActionSpec::new("core.noop", "Do nothing", vec![])
}

/// `core.pause`: wait a number of seconds.
pub fn pause_spec() -> ActionSpec {
    ActionSpec::new(
        "core.pause",
        "Wait a number of seconds",
        vec![
            ParamSpec::new(
                "max_pause",
                ParamType::Integer,
                "seconds to wait (at most 3600)",
            )
            .default(json!(5)),
        ],
    )
}

/// `core.echo`: returns its message as stdout.
struct Echo(ActionSpec);

impl Action for Echo {
    fn spec(&self) -> &ActionSpec {
        &self.0
    }

    fn run(&self, _: &RunContext, params: &Params) -> Outcome {
        let msg = params
            .get("message")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        Outcome::ok(
            format!("echoed {} characters", msg.chars().count()),
            json!({"stdout": msg, "stderr": "", "return_code": 0, "succeeded": true, "failed": false}),
        )
    }
}

/// `core.noop`: does nothing, successfully.
struct Noop(ActionSpec);

impl Action for Noop {
    fn spec(&self) -> &ActionSpec {
        &self.0
    }

    fn run(&self, _: &RunContext, _: &Params) -> Outcome {
        Outcome::ok("nothing to do", json!({}))
    }
}

/// `core.pause`: waits `max_pause` seconds; stops early on shutdown.
struct Pause(ActionSpec);

impl Action for Pause {
    fn spec(&self) -> &ActionSpec {
        &self.0
    }

    fn run(&self, ctx: &RunContext, params: &Params) -> Outcome {
        let secs = params
            .get("max_pause")
            .and_then(|v| v.as_u64())
            .unwrap_or(5)
            .min(3600);
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if ctx.cancel.load(Ordering::Relaxed) {
                return Outcome::failed(format!("interrupted before {secs}s had passed"));
            }
            std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
        }
        Outcome::ok(format!("paused {secs}s"), json!({"paused_seconds": secs}))
    }
}
