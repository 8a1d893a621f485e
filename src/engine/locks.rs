//! Locks: runs whose rule names the same lock run one at a time, in the
//! order they were approved; the rest wait in a queue the room can see.
//! `!lock` holds one by hand (a freeze of one environment), `!unlock`
//! releases it, `!locks` shows them all. The store keeps locks and queues
//! (`store/locks.rs`); this decides when a run may start and says so.

use std::time::Duration;

use serde_json::json;

use super::{Effect, Engine, Out, reply_to_request, request_entry};
use crate::audit::{Entry, Event, Status};
use crate::clock;
use crate::locks::{Blocker, Claim, Place};
use crate::policy::LockSpec;
use crate::render::Message;
use crate::requests::{Request, State, Update};

/// What holds a request back, in words.
fn blocker_text(b: &Blocker, now: u64) -> String {
    let since = |ms: u64| clock::human(Duration::from_millis(now.saturating_sub(ms)));
    match b {
        Blocker::Run(h) => format!(
            "request {} holds it (running for {})",
            h.request,
            since(h.since_ms)
        ),
        Blocker::Hand(m) => format!(
            "{} locked it {} ago: {}",
            m.by,
            since(m.since_ms),
            if m.reason.is_empty() {
                "no reason given"
            } else {
                &m.reason
            }
        ),
        Blocker::Queue(first) => format!("request {first} was approved before it and goes first"),
    }
}

impl Engine {
    /// The locks the web overview shows a viewer: every one to whoever
    /// sees every room (`all`); to others, those held or waited for by a
    /// request of a room `visible` accepts, naming only those requests
    /// (a run of another room holds it "in another room"; others waiting
    /// are counted). Locks have no room of their own; this is what `!locks`
    /// would say, cut to what the viewer may know.
    pub(super) fn web_locks(
        &self,
        all: bool,
        visible: &mut dyn FnMut(&str) -> bool,
        now: u64,
    ) -> Vec<super::WebLock> {
        let mut sees = |id: &str| {
            all || self
                .requests
                .get(id)
                .ok()
                .flatten()
                .is_some_and(|r| visible(&r.room))
        };
        let mut shown = Vec::new();
        for l in self.requests.locks().all().unwrap_or_default() {
            let holder_seen = l.held.as_ref().map(|h| sees(&h.request));
            let (queue, others): (Vec<String>, Vec<String>) =
                l.queue.iter().cloned().partition(|id| sees(id));
            if !all && holder_seen != Some(true) && queue.is_empty() {
                continue;
            }
            let mut held: Vec<String> = Vec::new();
            if let Some(h) = &l.held {
                held.push(if holder_seen == Some(true) {
                    blocker_text(&Blocker::Run(h.clone()), now)
                } else {
                    "a run in another room holds it".to_string()
                });
            }
            if let Some(m) = &l.manual {
                held.push(blocker_text(&Blocker::Hand(m.clone()), now));
            }
            shown.push(super::WebLock {
                name: l.name,
                held: (!held.is_empty()).then(|| held.join("; ")),
                queue,
                others: others.len(),
            });
        }
        shown
    }

    /// The lock `req`'s run must hold, under its rule as the policy says
    /// now.
    pub(super) fn lock_of(&self, req: &Request) -> Result<Option<LockSpec>, String> {
        self.policy().lock_for(&req.rule, &req.params)
    }

    /// Before `req` (approved) starts: Ok if it needs no lock or now holds
    /// its lock; otherwise what to tell the room (it waits, or its lock
    /// name is not one and it will not run).
    pub(super) fn claim_lock(&self, req: &Request, now: u64) -> Result<(), Vec<Effect>> {
        let spec = match self.lock_of(req) {
            Ok(None) => return Ok(()),
            Ok(Some(spec)) => spec,
            Err(why) => return Err(self.refuse_waiting(req, &why, now)),
        };
        let pass_hand = spec.break_glass_passes && req.break_glass.is_some();
        match self
            .requests
            .locks()
            .claim(&spec.name, &req.id, now, pass_hand)
        {
            Ok(Claim::Holds) => {
                self.record(vec![
                    request_entry(Event::Locked, req, now)
                        .status(Status::Ok)
                        .detail(json!({"lock": spec.name, "by": "run"})),
                ]);
                Ok(())
            }
            Ok(Claim::Waits {
                position,
                blocker,
                new,
                ..
            }) => {
                if !new {
                    return Err(Vec::new());
                }
                self.record(vec![
                    request_entry(Event::Queued, req, now)
                        .status(Status::Pending)
                        .detail(json!({
                            "lock": spec.name, "position": position,
                            "behind": blocker_text(&blocker, now),
                        })),
                ]);
                let timeout = spec
                    .queue_timeout
                    .map(|t| {
                        format!(
                            " It expires if it has not started within {}.",
                            clock::human(t)
                        )
                    })
                    .unwrap_or_default();
                Err(vec![Effect::Send(reply_to_request(
                    req,
                    Message::plain(format!(
                        "⏳ Request {} waits for lock {}: {}. It is number {position} in the queue.{timeout}",
                        req.id,
                        spec.name,
                        blocker_text(&blocker, now)
                    )),
                ))])
            }
            Err(e) => {
                tracing::error!("cannot claim lock {} for {}: {e}", spec.name, req.id);
                Err(vec![Effect::Send(reply_to_request(
                    req,
                    Message::plain(format!(
                        "⚠️ Request {} cannot take lock {} ({e}); it waits and is tried again.",
                        req.id, spec.name
                    )),
                ))])
            }
        }
    }

    /// An approved request that cannot hold a lock ends refused.
    fn refuse_waiting(&self, req: &Request, why: &str, now: u64) -> Vec<Effect> {
        let Ok(Update::Done(req, ())) = self.requests.update(&req.id, |r| r.refuse(why, now))
        else {
            return Vec::new();
        };
        self.record(vec![
            request_entry(Event::Denied, &req, now)
                .status(Status::Denied)
                .detail(json!({"reason": why, "when": "at start"})),
        ]);
        let mut fx = vec![Effect::Send(reply_to_request(
            &req,
            Message::plain(format!("🚫 Request {} will not start: {why}.", req.id)),
        ))];
        fx.extend(self.release_lock(&req, now));
        fx
    }

    /// Request `id` has ended (or will not run): the lock it held is
    /// released, its place in a queue given up, and whatever waited next
    /// is started.
    pub(super) fn release_lock(&self, req: &Request, now: u64) -> Vec<Effect> {
        // Every request's end comes here: one read of the locks tree when
        // it held none and waited for none.
        let left = match self.requests.locks().leave(&req.id) {
            Ok(left) => left,
            Err(e) => {
                tracing::error!("cannot release the lock of {}: {e}", req.id);
                return Vec::new();
            }
        };
        if let Some(name) = &left.held {
            self.record(vec![
                request_entry(Event::Unlocked, req, now)
                    .status(Status::Ok)
                    .detail(json!({"lock": name, "by": "run", "state": req.state.name()})),
            ]);
        }
        if left.held.is_none() && left.waited.is_none() {
            return Vec::new();
        }
        self.ready_to_start()
    }

    /// Start the next request of every queue whose lock is free.
    fn ready_to_start(&self) -> Vec<Effect> {
        self.requests
            .locks()
            .ready()
            .unwrap_or_default()
            .into_iter()
            .map(Effect::Execute)
            .collect()
    }

    /// Locks held by a request that is no longer open (a crash between
    /// its end and the release) are released; what waited is started.
    pub(super) fn settle_locks(&self, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for view in self.requests.locks().all().unwrap_or_default() {
            let Some(held) = view.held else { continue };
            match self.requests.get(&held.request) {
                Ok(Some(req)) if req.state.is_open() => {}
                Ok(Some(req)) => fx.extend(self.release_lock(&req, now)),
                Ok(None) => {
                    let _ = self.requests.locks().leave(&held.request);
                }
                Err(e) => tracing::warn!("lock {}: {e}", view.name),
            }
        }
        fx.extend(self.ready_to_start());
        fx
    }

    /// At each tick: requests that waited longer than their rule's
    /// `queue_timeout` expire; the next of each free queue is started (a
    /// restart, or a crash between a release and the start that follows).
    pub(super) fn tick_locks(&self, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for (id, place) in self.requests.locks().all_waiting().unwrap_or_default() {
            let Ok(Some(req)) = self.requests.get(&id) else {
                // Gone (removed by hand): its place goes too.
                let _ = self.requests.locks().leave(&id);
                continue;
            };
            if req.state != State::Approved {
                fx.extend(self.release_lock(&req, now));
                continue;
            }
            let timeout = self
                .lock_of(&req)
                .ok()
                .flatten()
                .and_then(|s| s.queue_timeout);
            if let Some(t) = timeout
                && now.saturating_sub(place.since_ms) >= t.as_millis() as u64
            {
                fx.extend(self.expire_waiting(&req, &place, t, now));
            }
        }
        fx.extend(self.settle_locks(now));
        fx
    }

    fn expire_waiting(&self, req: &Request, place: &Place, t: Duration, now: u64) -> Vec<Effect> {
        let why = format!(
            "it waited {} for lock {} (queue_timeout {})",
            clock::human(Duration::from_millis(now.saturating_sub(place.since_ms))),
            place.lock,
            clock::human(t)
        );
        let Ok(Update::Done(req, ())) = self
            .requests
            .update(&req.id, |r| r.expire_waiting(&why, now))
        else {
            return Vec::new();
        };
        self.record(vec![
            request_entry(Event::Expired, &req, now)
                .status(Status::Expired)
                .detail(json!({"lock": place.lock, "reason": why})),
        ]);
        let mut fx = vec![Effect::Send(reply_to_request(
            &req,
            Message::plain(format!(
                "⌛ Request {} expired: {why}; it will not run.",
                req.id
            )),
        ))];
        fx.push(super::react_request(&req, super::FAILED));
        fx.extend(self.release_lock(&req, now));
        fx
    }

    /// `!cancel` of an approved request waiting for its lock: it leaves
    /// the queue and ends cancelled. False if it does not wait.
    pub(super) fn cancel_waiting(&self, out: &mut Out, req: &Request, user: &str) -> bool {
        let now = out.now;
        if req.state != State::Approved
            || !matches!(self.requests.locks().waiting(&req.id), Ok(Some(_)))
        {
            return false;
        }
        let Ok(Update::Done(req, ())) = self
            .requests
            .update(&req.id, |r| r.cancel_waiting(user, now))
        else {
            return false;
        };
        out.log(
            request_entry(Event::Cancelled, &req, now)
                .sender(user)
                .status(Status::Cancelled)
                .detail(json!({"while": "waiting for its lock"})),
        );
        let fx = self.release_lock(&req, now);
        out.effects.extend(fx);
        out.say(format!(
            "🛑 Request {} left the queue and will not run.",
            req.id
        ));
        true
    }

    /// Where `req` waits, for `!pending` and `!status`.
    pub(super) fn queue_note(&self, req: &Request) -> Option<String> {
        let (place, position) = self.requests.locks().waiting(&req.id).ok()??;
        Some(format!(
            " — waiting for lock {}, number {position} in the queue",
            place.lock
        ))
    }

    /// For a prompt: who holds the lock this request's run will need.
    pub(super) fn lock_note(&self, req: &Request, now: u64) -> Option<String> {
        let spec = self.lock_of(req).ok()??;
        let view = self.requests.locks().view(&spec.name).ok()?;
        let blocker = match (view.held, view.manual) {
            (Some(h), _) => Blocker::Run(h),
            (None, Some(m)) => Blocker::Hand(m),
            (None, None) => return None,
        };
        let waiting = if view.queue.is_empty() {
            String::new()
        } else {
            format!("; {} waiting", view.queue.len())
        };
        Some(format!(
            "🔒 Lock {}: {}{waiting}. Once approved, it runs after that.",
            spec.name,
            blocker_text(&blocker, now)
        ))
    }

    /// `!lock <name> [reason]`: hold a lock by hand; runs that need it wait
    /// until `!unlock <name>`.
    pub(super) fn builtin_lock(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "lock") {
            return;
        }
        let (name, reason) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        let (name, reason) = (name.trim(), reason.trim());
        if name.is_empty() {
            return out.say(format!(
                "Usage: {}lock <name> [reason]",
                self.settings.prefix
            ));
        }
        let user = out.m.sender.clone();
        match self.requests.locks().hold(name, &user, reason, out.now) {
            Ok(Ok(())) => {
                let e = self.lock_entry(out, Event::Locked, name, reason);
                out.log(e);
                out.say(format!(
                    "🔒 Lock {name} is held by {user}. Runs that need it wait until {}unlock {name}.",
                    self.settings.prefix
                ));
            }
            Ok(Err(m)) => out.say(format!(
                "Lock {name} is already held by {} since {} ago: {}.",
                m.by,
                clock::human(Duration::from_millis(out.now.saturating_sub(m.since_ms))),
                m.reason
            )),
            Err(e) => out.say(format!("🚫 Cannot lock: {e}.")),
        }
    }

    /// `!unlock <name>`: release a lock held by hand; what waited starts.
    pub(super) fn builtin_unlock(&self, out: &mut Out, args: &str) {
        if !self.gate(out, "lock") {
            return;
        }
        let name = args.trim();
        match self.requests.locks().unhold(name) {
            Ok(Some(m)) => {
                let e = self.lock_entry(out, Event::Unlocked, name, &m.reason);
                out.log(e.detail(json!({"lock": name, "by": "hand", "held_by": m.by})));
                out.say(format!(
                    "🔓 Lock {name} is released (held by {}: {}).",
                    m.by, m.reason
                ));
                let fx = self.ready_to_start();
                out.effects.extend(fx);
            }
            Ok(None) => out.say(format!("Lock \"{name}\" is not held by hand.")),
            Err(e) => out.say(format!("🚫 Cannot unlock: {e}.")),
        }
    }

    fn lock_entry(&self, out: &Out, event: Event, name: &str, reason: &str) -> Entry {
        out.entry(event)
            .room(&out.m.room)
            .sender(&out.m.sender)
            .status(Status::Ok)
            .detail(json!({"lock": name, "by": "hand", "reason": reason}))
    }

    /// `!locks`: every lock held or waited for, who holds it and why, and
    /// its queue.
    pub(super) fn builtin_locks(&self, out: &mut Out) {
        if !self.gate(out, "locks") {
            return;
        }
        let now = out.now;
        let all = self.requests.locks().all().unwrap_or_default();
        let e = out
            .entry(Event::Pending)
            .status(Status::Ok)
            .detail(json!({"locks": all.len()}));
        out.log(e);
        if all.is_empty() {
            return out.say("No lock is held and nothing waits.");
        }
        let lines: Vec<String> = all
            .iter()
            .map(|l| {
                let mut s = format!("{}:", l.name);
                if let Some(h) = &l.held {
                    s.push_str(&format!(" {}", blocker_text(&Blocker::Run(h.clone()), now)));
                }
                if let Some(m) = &l.manual {
                    s.push_str(&format!(
                        " {}",
                        blocker_text(&Blocker::Hand(m.clone()), now)
                    ));
                }
                if l.held.is_none() && l.manual.is_none() {
                    s.push_str(" free");
                }
                if !l.queue.is_empty() {
                    s.push_str(&format!("; waiting: {}", l.queue.join(", ")));
                }
                s
            })
            .collect();
        out.say(format!("Locks:\n{}", lines.join("\n")));
    }
}
