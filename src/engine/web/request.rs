//! A request's page. It is read from the audit, the record that lasts:
//! the command and its event, the parameters (masked when they were
//! recorded, so a secret never reached the entries this page reads), what
//! the prompt said would change, the plan's output, who approved as which
//! part and from which device, the commits put in place, and the whole
//! recorded output with what the runner dropped. While the request is
//! still kept, its `!status` line and live output are added.

use serde::Serialize;
use serde_json::Value;

use crate::audit::{Entry, Event};
use crate::engine::Engine;

/// One request's page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebRequest {
    /// Its id.
    pub id: String,
    /// Its room.
    pub room: String,
    /// A matrix.to link to its room.
    pub room_link: String,
    /// The command as typed (without the prefix).
    pub command: Option<String>,
    /// A matrix.to link to the command's event.
    pub command_link: Option<String>,
    /// Who asked.
    pub requester: Option<String>,
    /// Its alias (`pack.name`), whose runs the page links to.
    pub alias: Option<String>,
    /// Its action.
    pub action: Option<String>,
    /// What `!status` says of it (with a running one's output), while it
    /// is kept.
    pub status: Option<String>,
    /// Every parameter, as recorded when it was allowed (secrets masked).
    pub parameters: Vec<WebParam>,
    /// What the prompt said would change.
    pub changes: Vec<String>,
    /// What its rule's plan printed before the prompt.
    pub plan: Option<WebPlan>,
    /// Who approved, as which part, when and from which device.
    pub approvals: Vec<WebApproval>,
    /// How it ended, in a line.
    pub outcome: Option<String>,
    /// The packs it put in place.
    pub deployed: Vec<WebCommit>,
    /// Its output streams, whole as recorded.
    pub output: Vec<WebStream>,
    /// What of the output was dropped past the runner's cap, in words.
    pub truncated: Vec<String>,
    /// The result (st2's `execution.result`) but the streams in
    /// `output`, as indented JSON.
    pub result: Option<String>,
    /// Its audit entries, oldest first.
    pub timeline: Vec<WebEntry>,
}

/// A parameter and its recorded value.
#[derive(Debug, Clone, Serialize)]
pub struct WebParam {
    /// Its name.
    pub name: String,
    /// Its value: text as it is, anything else as JSON.
    pub value: String,
}

/// A plan's run.
#[derive(Debug, Clone, Serialize)]
pub struct WebPlan {
    /// The action that planned.
    pub action: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its output.
    pub output: String,
    /// Whether that output was cut (at 64 KiB).
    pub truncated: bool,
}

/// One approval as a request's page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WebApproval {
    /// Who.
    pub user: String,
    /// The part of the confirmation it counted for ("group ops").
    pub part: Option<String>,
    /// When, RFC 3339.
    pub at: String,
    /// The device, when known.
    pub device: Option<String>,
    /// "cross-signed", "not cross-signed", or "unknown".
    pub verified: &'static str,
    /// A matrix.to link to the answer's event.
    pub link: Option<String>,
}

/// A pack a run put in place.
#[derive(Debug, Clone, Serialize)]
pub struct WebCommit {
    /// The pack.
    pub pack: String,
    /// Its version, from its pack.yaml.
    pub version: Option<String>,
    /// The commit now live.
    pub commit: String,
    /// The commit it replaced, if one was live.
    pub previous: Option<String>,
    /// Where it came from (repository and ref).
    pub source: Option<String>,
}

/// An output stream.
#[derive(Debug, Clone, Serialize)]
pub struct WebStream {
    /// `stdout` or `stderr`.
    pub name: &'static str,
    /// Its text.
    pub text: String,
}

/// One audit entry on a request's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct WebEntry {
    /// The entry, in a line.
    pub line: String,
    /// A matrix.to link to the Matrix event it records, if any.
    pub link: Option<String>,
}

/// A matrix.to link to `ids` (a room, then an event in it). They are
/// Matrix identifiers (no `/`, `?` or `#` in them), but percent-encoded
/// anyway, as the spec shows them: the link must stay one link whatever
/// the homeserver sent.
fn matrix_to(ids: &[&str]) -> String {
    let enc = |s: &&str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let path: Vec<String> = ids.iter().map(enc).collect();
    format!("https://matrix.to/#/{}", path.join("/"))
}

/// A matrix.to link to `event` in `room`.
fn event_link(room: &str, event: &str) -> String {
    matrix_to(&[room, event])
}

/// Text as it is, anything else as compact JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl WebRequest {
    /// The page as its audit entries tell it, oldest first.
    fn from_entries(id: &str, room: &str, entries: &[Entry]) -> Self {
        let mut page = WebRequest {
            id: id.to_string(),
            room: room.to_string(),
            room_link: matrix_to(&[room]),
            ..Default::default()
        };
        for e in entries {
            let d = e.details();
            let link = d["event"].as_str().map(|ev| event_link(room, ev));
            page.timeline.push(WebEntry {
                line: e.summary_line(),
                link: link.clone(),
            });
            page.alias = page.alias.take().or_else(|| e.alias.clone());
            page.action = page.action.take().or_else(|| e.action.clone());
            match e.event {
                Event::Allowed => {
                    page.command = d["command"].as_str().map(String::from);
                    page.command_link = link;
                    page.requester = e.sender.clone();
                    if let Value::Object(params) = &d["parameters"] {
                        page.parameters = params
                            .iter()
                            .map(|(k, v)| WebParam {
                                name: k.clone(),
                                value: plain(v),
                            })
                            .collect();
                    }
                    page.changes = d["shown"]
                        .as_array()
                        .map(|a| a.iter().map(plain).collect())
                        .unwrap_or_default();
                }
                Event::Planned => {
                    page.plan = Some(WebPlan {
                        action: plain(&d["action"]),
                        ok: e.status == Some(crate::audit::Status::Succeeded),
                        output: plain(&d["output"]),
                        truncated: d["truncated"].as_bool().unwrap_or(false),
                    });
                }
                Event::Approval if d.get("answer").is_none() => {
                    page.approvals.push(WebApproval {
                        user: e.sender.clone().unwrap_or_default(),
                        part: d["as"].as_str().map(String::from),
                        at: crate::clock::format_ms(e.ts),
                        device: d["device"].as_str().map(String::from),
                        verified: verified(d["cross_signed"].as_bool()),
                        link: None,
                    });
                }
                Event::Finished | Event::Interrupted => page.ended(e, &d),
                _ => {}
            }
        }
        // An approval's answer is the `received` entry just before it.
        for (i, e) in entries.iter().enumerate() {
            if e.event == Event::Approval
                && let Some(prev) = i.checked_sub(1).map(|j| &entries[j])
                && prev.event == Event::Received
                && prev.sender == e.sender
                && let Some(a) = page
                    .approvals
                    .iter_mut()
                    .find(|a| Some(&a.user) == e.sender.as_ref() && a.link.is_none())
            {
                a.link = prev.details()["event"]
                    .as_str()
                    .map(|ev| event_link(room, ev));
            }
        }
        page
    }

    /// What a `finished` (or `interrupted`) entry tells: the outcome, the
    /// packs put in place, the output and the whole result.
    fn ended(&mut self, e: &Entry, d: &Value) {
        self.outcome = Some(format!(
            "{} after {}: {}",
            e.status.map_or("ended", |s| s.name()),
            crate::clock::human(std::time::Duration::from_millis(
                d["elapsed_ms"].as_u64().unwrap_or(0)
            )),
            plain(&d["summary"])
        ));
        let result = &d["result"];
        let deployed: Vec<crate::action::Deployed> = e.detail_field("deployed").unwrap_or_default();
        self.deployed = deployed
            .into_iter()
            .map(|p| WebCommit {
                commit: p.commit,
                ..pack_facts(result, &p.pack)
            })
            .collect();
        for name in ["stdout", "stderr"] {
            if let Some(text) = result[name].as_str().filter(|t| !t.is_empty()) {
                self.output.push(WebStream {
                    name,
                    text: text.to_string(),
                });
            }
        }
        let cut = &result["truncated"];
        for (name, key) in [
            ("stdout", "stdout_dropped_bytes"),
            ("stderr", "stderr_dropped_bytes"),
        ] {
            if let Some(n) = cut[key].as_u64().filter(|n| *n > 0) {
                self.truncated.push(format!(
                    "{name}: {n} more bytes were dropped past the runner's cap of {} bytes (runners.output_cap)",
                    cut["cap_bytes"].as_u64().unwrap_or(0)
                ));
            }
        }
        // The rest of the result; the streams shown above are not repeated
        // (an output may be a megabyte).
        let mut rest = result.clone();
        if let Some(fields) = rest.as_object_mut() {
            for s in &self.output {
                fields.remove(s.name);
            }
        }
        if !rest.is_null() && rest.as_object().is_none_or(|f| !f.is_empty()) {
            self.result = serde_json::to_string_pretty(&rest).ok();
        }
    }
}

/// What a run's result says of `pack`: an install's `packs` record
/// (version, the commit replaced, the source) or a rollback's `from` and
/// `version`. The commit is left empty: the `deployed` detail has it.
pub(super) fn pack_facts(result: &Value, pack: &str) -> WebCommit {
    let installed = result["packs"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == pack));
    let rolled_back = (result["pack"] == pack).then_some(result);
    let field = |k: &str| {
        installed
            .or(rolled_back)
            .and_then(|r| r[k].as_str())
            .map(String::from)
    };
    WebCommit {
        pack: pack.to_string(),
        version: field("version"),
        commit: String::new(),
        previous: field("previous").or_else(|| field("from")),
        source: field("url").map(|u| match field("ref") {
            Some(r) => format!("{u} ({r})"),
            None => u,
        }),
    }
}

fn verified(cross_signed: Option<bool>) -> &'static str {
    match cross_signed {
        Some(true) => "cross-signed",
        Some(false) => "not cross-signed",
        None => "unknown",
    }
}

impl Engine {
    /// Request `id`'s page for `user`; None when it is unknown or in a
    /// room they may not see (the same answer, so its existence is not
    /// told).
    pub fn web_request(&self, user: &str, id: &str, now: u64) -> Option<WebRequest> {
        let q = crate::audit::Query {
            request: Some(id.to_string()),
            ..Default::default()
        };
        let entries = self.audit.query(&q).ok()?;
        let kept = self.requests.get(id).ok().flatten();
        let room = kept
            .as_ref()
            .map(|r| r.room.clone())
            .or_else(|| entries.iter().find_map(|e| e.room.clone()))?;
        if !self.web_may_see(user, &room, now) {
            return None;
        }
        let mut page = WebRequest::from_entries(id, &room, &entries);
        let Some(r) = kept else {
            return Some(page);
        };
        // Kept: its state now, and what older records kept only here.
        let mut status = self.request_line(&r, now);
        if let Some(summary) = &r.summary {
            status.push_str(&format!(" — {summary}"));
        }
        page.status = Some(status);
        page.alias = page.alias.or(r.alias.clone());
        page.action = page.action.or(Some(r.action.clone()));
        page.command = page.command.or(Some(r.command.clone()));
        page.requester = page.requester.or(Some(r.requester.clone()));
        if page.command_link.is_none() && r.event_id.starts_with('$') {
            page.command_link = Some(event_link(&room, &r.event_id));
        }
        for a in &r.approvals {
            match page.approvals.iter_mut().find(|p| p.user == a.user) {
                Some(p) if p.device.is_none() => {
                    p.device = a.device.clone();
                    p.verified = verified(a.cross_signed);
                }
                Some(_) => {}
                None => page.approvals.push(WebApproval {
                    user: a.user.clone(),
                    part: None,
                    at: crate::clock::format_ms(a.ts),
                    device: a.device.clone(),
                    verified: verified(a.cross_signed),
                    link: None,
                }),
            }
        }
        Some(page)
    }
}
