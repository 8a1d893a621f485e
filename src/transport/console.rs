//! The console transport: the whole engine, real store and real actions,
//! with stdin as the room. Works piped or in a terminal.
//!
//! A plain line is a message from the current user in the current room.
//! Every message gets a reference (`[u1]` for yours, `[m1]` for the bot's)
//! so it can be replied to:
//!
//! ```text
//! /user @bob:example.org      speak as someone else
//! /room !ops:example.org      move to another room
//! /reply m1 yes               reply to message m1 (this is how prompts are answered)
//! /edit u1 !flow deploy x     edit message u1 (edits never run anything)
//! /react m1 👍                react to message m1
//! /power 50                   your power level in this room (default: unknown)
//! /wait                       wait for running actions to finish
//! /quit                       leave (also end of input), after running actions finish
//! ```

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::engine::{Effect, Engine, Incoming, Kind};
use crate::wall::now_ms;

struct Shared {
    out: Mutex<Printer>,
    running: Mutex<usize>,
    idle: Condvar,
}

struct Printer {
    /// Event IDs are `$<run>.<ref>`: unique across runs, so a reply in this
    /// run never lands on a prompt a previous run stored under `$m1`.
    run: u64,
    next_bot: u64,
}

impl Printer {
    /// An event ID as the reference it was shown with: this run's IDs are
    /// `$<run>.<ref>`, so the reference is read off the ID rather than kept
    /// in a map that would grow with every message.
    fn show(&self, event_id: &str) -> String {
        event_id
            .strip_prefix('$')
            .and_then(|id| id.split_once('.'))
            .filter(|(run, _)| run.parse() == Ok(self.run))
            .map_or(event_id, |(_, reference)| reference)
            .to_string()
    }
}

/// The console transport: one person, any user or room, stdin and stdout.
pub struct Console {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    user: String,
    room: String,
    power: Option<i64>,
    next_user: u64,
}

impl Console {
    /// A console as `user` in `room`.
    pub fn new(engine: Arc<Engine>, user: &str, room: &str) -> Self {
        Console {
            engine,
            shared: Arc::new(Shared {
                out: Mutex::new(Printer {
                    run: now_ms(),
                    next_bot: 1,
                }),
                running: Mutex::new(0),
                idle: Condvar::new(),
            }),
            user: user.to_string(),
            room: room.to_string(),
            power: None,
            next_user: 1,
        }
    }

    /// Read commands until end of input; returns when all actions finished.
    pub fn run(mut self, input: impl BufRead) {
        let interactive = std::io::stdin().is_terminal();
        let effects = self.engine.take_startup_effects();
        apply(&self.engine, &self.shared, effects);
        // Expiry runs on its own clock, as it would for a real room.
        let ticker = {
            let engine = self.engine.clone();
            let shared = self.shared.clone();
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let fx = engine.tick(now_ms());
                    apply(&engine, &shared, fx);
                }
            })
        };
        drop(ticker);
        if interactive {
            println!(
                "airlock console — you are {} in {}. /help for commands, Ctrl-D to quit.",
                self.user, self.room
            );
        }
        let mut lines = input.lines();
        loop {
            if interactive {
                print!("{} @ {}> ", self.user, self.room);
                let _ = std::io::stdout().flush();
            }
            let Some(Ok(line)) = lines.next() else { break };
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if !self.line(line) {
                break;
            }
        }
        self.wait();
        // Nothing runs any more; what the runs left unflushed is stored.
        self.engine.interrupt_running(crate::wall::now_ms());
    }

    fn wait(&self) {
        let mut n = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            n = self.shared.idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One input line; false to stop.
    fn line(&mut self, line: &str) -> bool {
        let (cmd, rest) = match line.split_once(' ') {
            Some((c, r)) => (c, r.trim()),
            None => (line, ""),
        };
        let event = |c: &mut Console,
                     kind: Kind,
                     body: &str,
                     reply: Option<String>,
                     rel: Option<String>| {
            let run = c.shared.out.lock().unwrap_or_else(|e| e.into_inner()).run;
            let id = format!("${run}.u{}", c.next_user);
            let reference = format!("u{}", c.next_user);
            c.next_user += 1;
            let mut m = Incoming::message(&c.user, &c.room, &id, body, now_ms());
            m.kind = kind;
            m.reply_to = reply;
            m.relates_to = rel;
            m.power_level = c.power;
            {
                let p = c.shared.out.lock().unwrap_or_else(|e| e.into_inner());
                let mut shown = format!("[{reference}] {}", c.user);
                if let Some(r) = &m.reply_to {
                    shown.push_str(&format!(" ↪ [{}]", p.show(r)));
                }
                if let Some(r) = &m.relates_to {
                    shown.push_str(&format!(" on [{}]", p.show(r)));
                }
                println!("{shown}: {body}");
            }
            let fx = c.engine.handle(&m, now_ms());
            apply(&c.engine, &c.shared, fx);
        };
        let run = self
            .shared
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .run;
        let target =
            |r: &str| format!("${run}.{}", r.trim_start_matches('[').trim_end_matches(']'));
        match cmd {
            "/user" if crate::ids::is_user_id(rest) => self.user = rest.to_string(),
            "/room" if crate::ids::is_room(rest) => self.room = rest.to_string(),
            "/user" => println!("\"{rest}\" is not {}", crate::ids::Kind::User.describe()),
            "/room" => println!(
                "\"{rest}\" is not {} or {}",
                crate::ids::Kind::Room.describe(),
                crate::ids::Kind::RoomAlias.describe()
            ),
            "/power" => self.power = rest.parse().ok(),
            "/wait" => self.wait(),
            "/quit" | "/exit" => return false,
            "/reply" | "/edit" | "/react" => {
                let Some((r, text)) = rest.split_once(' ') else {
                    println!("usage: {cmd} <ref> <text>");
                    return true;
                };
                let t = target(r);
                match cmd {
                    "/reply" => event(self, Kind::Message, text, Some(t), None),
                    "/edit" => event(self, Kind::Edit, text, None, Some(t)),
                    _ => event(
                        self,
                        Kind::Reaction(text.trim().to_string()),
                        text,
                        None,
                        Some(t),
                    ),
                }
            }
            "/help" => println!(
                "/user <@id:server>  /room <!id>  /reply <ref> <text>  /edit <ref> <text>\n/react <ref> <emoji>  /power <n>  /wait  /quit"
            ),
            c if c.starts_with('/') && !c.starts_with("//") => {
                println!("unknown console command {c}; /help lists them")
            }
            _ => event(self, Kind::Message, line, None, None),
        }
        true
    }
}

/// Print effects; start executions on their own threads.
fn apply(engine: &Arc<Engine>, shared: &Arc<Shared>, effects: Vec<Effect>) {
    for fx in effects {
        match fx {
            Effect::Send(o) => {
                let mut p = shared.out.lock().unwrap_or_else(|e| e.into_inner());
                let id = format!("${}.m{}", p.run, p.next_bot);
                let reference = format!("m{}", p.next_bot);
                p.next_bot += 1;
                let to = o
                    .reply_to
                    .as_deref()
                    .map(|r| format!(" ↪ [{}]", p.show(r)))
                    .unwrap_or_default();
                let mut lines = o.message.body.lines();
                println!(
                    "[{reference}] airlock{to}: {}",
                    lines.next().unwrap_or_default()
                );
                for l in lines {
                    println!("    {l}");
                }
                drop(p);
                if let Some(req) = &o.prompt_for {
                    engine.bind_prompt(req, &o.room, &id);
                }
            }
            Effect::Direct { user, message } => {
                // The console is one terminal: what goes to one user alone
                // is marked so.
                println!("[direct to {user}] {}", message.body);
            }
            Effect::React { event_id, key, .. } => {
                let p = shared.out.lock().unwrap_or_else(|e| e.into_inner());
                println!("    airlock reacted {key} to [{}]", p.show(&event_id));
            }
            // Prepared before the next line is read: one person types here,
            // and a piped script's reply must find the prompt it answers.
            Effect::Prepare(id) => apply(engine, shared, engine.prepare(&id, now_ms)),
            Effect::Execute(id) => background(engine, shared, move |e| e.execute(&id, now_ms)),
            Effect::Resume(id) => background(engine, shared, move |e| e.resume(&id, now_ms)),
        }
    }
    let _ = std::io::stdout().flush();
}

/// Run `job` on its own thread, as the Matrix transport does, and print
/// its effects; `/wait` and the end of input wait for it.
fn background(
    engine: &Arc<Engine>,
    shared: &Arc<Shared>,
    job: impl FnOnce(&Engine) -> Vec<Effect> + Send + 'static,
) {
    *shared.running.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let engine = engine.clone();
    let shared = shared.clone();
    std::thread::spawn(move || {
        let fx = job(&engine);
        apply(&engine, &shared, fx);
        let mut n = shared.running.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        shared.idle.notify_all();
    });
}
