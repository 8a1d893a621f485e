//! An event in: which kind it is, whether it is a command at all, whether
//! it is too old to act on; then the dispatch to a built-in, an answer to a
//! prompt, or an alias.

use std::time::Duration;

use serde_json::json;

use super::approval::{Verdict, unknown_request};
use super::{Effect, Engine, Incoming, Kind, Out, Settings};
use crate::alias;
use crate::audit::Event;
use crate::clock;
use crate::requests::Request;

/// Longest command the bot will try to match.
const MAX_COMMAND_CHARS: usize = 4000;

/// How long an undecryptable-message warning is not repeated.
const WARN_AGAIN_MS: u64 = 300_000;

/// How many answered edits and warned senders are remembered: what a room
/// sends must not grow the bot's memory without bound.
const REMEMBERED: usize = 4096;

impl Engine {
    /// Handle one event from a room that arrived at `now`.
    pub fn handle(&self, m: &Incoming, now: u64) -> Vec<Effect> {
        if self.settings.bot_user.as_deref() == Some(m.sender.as_str())
            || !crate::ids::is_user_id(&m.sender)
        {
            return Vec::new();
        }
        // Every log line while this event is handled carries who and where.
        let _span = tracing::info_span!(
            "event",
            room = %m.room,
            sender = %m.sender,
            event = %m.event_id,
            request = tracing::field::Empty
        )
        .entered();
        let mut out = Out::new(m, now);
        // Under the disk's reserve nothing new is written, not even the
        // command's own entry: what is addressed to the bot is answered
        // with the reason, and comes back to life when space returns.
        if let Some(why) = self.disk_low() {
            let addressed = match &m.kind {
                Kind::Message => {
                    command_text(&self.settings, &m.body, m.addressed).is_some()
                        || m.reply_to.as_ref().is_some_and(|p| {
                            self.requests.by_prompt(&m.room, p).ok().flatten().is_some()
                        })
                }
                _ => false,
            };
            tracing::warn!("{why}: the event is not acted on");
            if addressed {
                out.say(format!(
                    "⚠️ Not acting on this: {why}. Nothing new runs or is recorded until space returns; pending requests keep their state."
                ));
            }
            return out.effects;
        }
        match &m.kind {
            Kind::Message => self.on_message(&mut out),
            Kind::Edit => self.on_edit(&mut out),
            Kind::Reaction(key) => self.on_reaction(&mut out, key),
            Kind::Undecryptable => self.on_undecryptable(&mut out),
        }
        self.finish(out)
    }

    fn stale(&self, out: &mut Out, what: &str) -> bool {
        let age = out.now.saturating_sub(out.m.ts_ms);
        if age <= self.settings.max_age.as_millis() as u64 {
            return false;
        }
        out.say(format!(
            "⏱️ Not acting on your {what} from {} ago: anything older than {} is ignored (sent while I was away?). Send it again if it still applies.",
            clock::human(Duration::from_millis(age)),
            clock::human(self.settings.max_age)
        ));
        let e = out
            .entry(Event::IgnoredStale)
            .detail(json!({"body": out.m.body, "age_ms": age}));
        out.log(e);
        true
    }

    fn on_message(&self, out: &mut Out) {
        /// The commands the engine answers itself.
        const COMMAND_WORDS: [&str; 14] = [
            "help", "pending", "status", "audit", "review", "cancel", "approve", "deny", "lock",
            "unlock", "locks", "deploys", "redeploy", "web",
        ];
        let m = out.m;
        // A reply to a prompt: the relation decides, never quoted text.
        if let Some(parent) = &m.reply_to
            && let Ok(Some(req)) = self.requests.by_prompt(&m.room, parent)
            && (self.stale(out, "reply") || self.on_prompt_reply(out, &req))
        {
            return;
        }
        let Some(cmd) = command_text(&self.settings, &m.body, m.addressed) else {
            return;
        };
        if self.stale(out, "command") {
            return;
        }
        let (word, args) = match cmd.split_once(char::is_whitespace) {
            Some((w, a)) => (w, a.trim()),
            None => (cmd.as_str(), ""),
        };
        let mut detail = json!({"command": self.masked_command(&cmd), "event": m.event_id});
        if COMMAND_WORDS.contains(&word) {
            // So the metrics count built-ins among the commands.
            detail["builtin"] = json!(word);
        }
        let e = out.entry(Event::Received).detail(detail);
        out.log(e);
        if cmd.chars().count() > MAX_COMMAND_CHARS {
            out.say(format!(
                "That command is too long (over {MAX_COMMAND_CHARS} characters)."
            ));
            return;
        }
        match word {
            "help" => self.builtin_help(out, args),
            "pending" => self.builtin_pending(out),
            "status" => self.builtin_status(out, args),
            "audit" => self.builtin_audit(out, args),
            "review" => self.builtin_review(out, args),
            "cancel" => self.by_id(out, args, Verdict::Cancel),
            "approve" => self.by_id(out, args, Verdict::Approve),
            "deny" => self.by_id(out, args, Verdict::Deny),
            "lock" => self.builtin_lock(out, args),
            "unlock" => self.builtin_unlock(out, args),
            "locks" => self.builtin_locks(out),
            "deploys" => self.builtin_deploys(out, args),
            "redeploy" => self.builtin_redeploy(out, args),
            "web" => self.builtin_web(out, args),
            _ => self.run_alias(out, &cmd),
        }
    }

    fn on_edit(&self, out: &mut Out) {
        let m = out.m;
        let original = m.relates_to.clone().unwrap_or_else(|| m.event_id.clone());
        let approving = m
            .reply_to
            .as_ref()
            .is_some_and(|p| matches!(self.requests.by_prompt(&m.room, p), Ok(Some(_))));
        if command_text(&self.settings, &m.body, m.addressed).is_none() && !approving {
            return;
        }
        {
            let mut noticed = self.noticed.lock().unwrap_or_else(|e| e.into_inner());
            // Edits come soon after their message: forgetting old ones keeps
            // the set small however many edits a room sends, at worst
            // answering a very late edit twice.
            if noticed.len() >= REMEMBERED {
                noticed.clear();
            }
            if !noticed.insert(original.clone()) {
                return;
            }
        }
        let e = out
            .entry(Event::IgnoredEdit)
            .detail(json!({"body": m.body, "edits": original}));
        out.log(e);
        out.say("✋ Edited messages never run or approve anything. Send the command (or your reply) again as a new message.");
    }

    fn on_undecryptable(&self, out: &mut Out) {
        let m = out.m;
        let key = (m.room.clone(), m.sender.clone());
        let now = out.now;
        {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned
                .get(&key)
                .is_some_and(|t| now.saturating_sub(*t) < WARN_AGAIN_MS)
            {
                return;
            }
            if warned.len() >= REMEMBERED {
                warned.retain(|_, t| now.saturating_sub(*t) < WARN_AGAIN_MS);
            }
            warned.insert(key, now);
        }
        let e = out
            .entry(Event::Undecryptable)
            .detail(json!({"event": m.event_id}));
        out.log(e);
        out.say(format!(
            "⚠️ {}: I could not decrypt your message, so if it was a command it did not run. Check that this device is verified or shares keys with the room, then send it again.",
            m.sender
        ));
    }

    fn on_reaction(&self, out: &mut Out, key: &str) {
        let m = out.m;
        if !self.settings.reaction_approvals {
            return;
        }
        let verdict = match key.trim_end_matches(['\u{fe0f}']) {
            "👍" => Verdict::Approve,
            "👎" => Verdict::Deny,
            _ => return,
        };
        let Some(target) = &m.relates_to else { return };
        if let Ok(Some(req)) = self.requests.by_prompt(&m.room, target) {
            if self.stale(out, "reaction") {
                return;
            }
            self.decide(out, &req, verdict);
        }
    }

    /// Answer a reply to a prompt. Returns false when the reply is not an
    /// answer but a command, to be handled as one; anything else gets a hint.
    fn on_prompt_reply(&self, out: &mut Out, req: &Request) -> bool {
        let body = out.m.body.trim();
        let body = body
            .strip_prefix(self.settings.prefix.as_str())
            .unwrap_or(body);
        let word = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches(['.', '!', ','])
            .to_lowercase();
        let verdict = match word.as_str() {
            "yes" | "y" | "approve" | "approved" | "ok" | "lgtm" | "👍" => Verdict::Approve,
            "no" | "n" | "deny" | "denied" | "reject" | "👎" => Verdict::Deny,
            "cancel" => Verdict::Cancel,
            _ if command_text(&self.settings, &out.m.body, out.m.addressed).is_some() => {
                return false;
            }
            _ => {
                out.say(format!(
                    "Reply \"yes\" to approve request {}, \"no\" to deny it, or \"cancel\" if it is yours.",
                    req.id
                ));
                return true;
            }
        };
        let e = out
            .entry(Event::Received)
            .request(&req.id)
            .detail(json!({"reply": body, "event": out.m.event_id}));
        out.log(e);
        self.decide(out, req, verdict);
        true
    }

    fn by_id(&self, out: &mut Out, args: &str, verdict: Verdict) {
        let id = args.split_whitespace().next().unwrap_or_default();
        if verdict == Verdict::Cancel && !self.gate(out, "cancel") {
            return;
        }
        match self.requests.get(id) {
            Ok(Some(req)) => self.decide(out, &req, verdict),
            _ => out.say(unknown_request(id)),
        }
    }
}

/// The command in a message addressed to the bot, if it is one: after
/// the prefix (`!deploy`), after one of the bot's names (`airlock:
/// deploy`), or after a mention the transport recognised.
pub fn command_text(settings: &Settings, body: &str, addressed: bool) -> Option<String> {
    let b = body.trim_start();
    let after_name = settings
        .names
        .iter()
        .chain(settings.bot_user.as_ref())
        .find_map(|n| strip_prefix_caseless(b, n))
        .and_then(|r| {
            r.strip_prefix([':', ','])
                .or_else(|| r.starts_with(char::is_whitespace).then_some(r))
        });
    let rest = if let Some(r) = b.strip_prefix(settings.prefix.as_str()) {
        r
    } else if let Some(r) = after_name {
        r
    } else if addressed {
        // A mention pill reads "Display Name: command".
        match b.split_once(':') {
            Some((head, r)) if head.len() <= 64 && !head.contains('\n') => r,
            _ => b,
        }
    } else {
        return None;
    };
    let rest = rest.trim();
    let rest = rest
        .strip_prefix(settings.prefix.as_str())
        .unwrap_or(rest)
        .trim();
    (!rest.is_empty()).then(|| alias::normalize_command(rest))
}

/// `text` after `prefix`, compared without case. The rest is sliced where
/// the original text's own characters end: a length taken from a lowercased
/// copy would be wrong (and can split a character) when lowercasing changes
/// a character's byte length, as for the Kelvin sign.
pub fn strip_prefix_caseless<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let mut rest = text.char_indices();
    for p in prefix.chars() {
        let (_, t) = rest.next()?;
        if !t.to_lowercase().eq(p.to_lowercase()) {
            return None;
        }
    }
    Some(rest.as_str())
}
