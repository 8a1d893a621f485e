//! Diagnostics for configuration files: every problem with its file, line,
//! column and the field at fault, so `airlock check` can list them all.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Loaded anyway.
    Warning,
    /// Not loaded.
    Error,
}

/// A problem in a file, located by line, column and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted path of the field at fault (`formats[1].representation[0]`), or empty.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Diagnostic {
    /// An error about a whole file (unreadable, missing).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            field: String::new(),
            message: message.into(),
        }
    }

    /// Whether it is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: ",
            self.file.display(),
            self.line,
            self.column
        )?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Where each field of a YAML document starts, by path.
///
/// serde_yaml gives positions only for its own errors; semantic checks
/// (a bad regex in `formats[2]`, an unknown group in `rules[0].groups`) use
/// this index to point at the right line.
#[derive(Debug, Default, Clone)]
pub struct YamlIndex {
    positions: HashMap<String, (usize, usize)>,
}

impl YamlIndex {
    /// Index `text` (YAML) by dotted field path.
    pub fn parse(text: &str) -> Self {
        let mut rec = Recorder::default();
        // A scan error is reported by serde_yaml with its own position; the
        // index then just knows less.
        let _ = Parser::new_from_str(text).load(&mut rec, false);
        YamlIndex {
            positions: rec.positions,
        }
    }

    /// (line, column) of `path`, or of its closest recorded ancestor.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
    }

    /// A diagnostic located at `path` in `file`.
    pub fn diag(
        &self,
        severity: Severity,
        file: &Path,
        path: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = self.locate(path);
        Diagnostic {
            severity,
            file: file.to_path_buf(),
            line,
            column,
            field: path.to_string(),
            message: message.into(),
        }
    }
}

/// A diagnostic for a serde_yaml error, which carries its own position.
pub fn from_serde_yaml(file: &Path, err: &serde_yaml::Error) -> Diagnostic {
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let msg = err.to_string();
    // serde_yaml appends " at line X column Y"; the prefix already says it.
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    // serde names the field in its message ("name: invalid type ...").
    let (field, message) = match msg.split_once(": ") {
        Some((f, m)) if !f.contains(' ') => (f.to_string(), m.to_string()),
        _ => (String::new(), msg),
    };
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line,
        column,
        field,
        message,
    }
}

/// `path.key`, or `key` at the top.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Recorder {
    fn mark(&mut self, path: String, m: Marker) {
        // yaml-rust2 columns are 0-based; editors count from 1.
        self.positions
            .entry(path)
            .or_insert((m.line(), m.col() + 1));
    }

    /// The path of the node that starts now, or None when it is a map key.
    fn node_path(&mut self, ev: &Event, m: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    let k = match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => "?".to_string(),
                    };
                    // A block mapping's start marker lies after its first
                    // key; its first key is where a reader sees it begin.
                    let container = path.clone();
                    let p = join(path, &k);
                    *key = Some(k);
                    self.mark(container, m);
                    self.mark(p, m);
                    None
                }
            },
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, m: Marker) {
        match ev {
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(p) = self.node_path(&ev, m) {
                    self.mark(p, m);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.node_path(&ev, m);
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = match path {
                    Some(p) => {
                        if !is_map {
                            self.mark(p.clone(), m);
                        }
                        p
                    }
                    // A complex key: give its contents a throwaway path.
                    None => "?".to_string(),
                };
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_points_at_keys_and_items() {
        let y = "---\nname: x\nformats:\n  - \"a {{b}}\"\n  - display: d\n    representation:\n      - \"r1\"\n";
        let idx = YamlIndex::parse(y);
        assert_eq!(idx.locate("name"), (2, 1));
        assert_eq!(idx.locate("formats[0]"), (4, 5));
        assert_eq!(idx.locate("formats[1].representation"), (6, 5));
        assert_eq!(idx.locate("formats[1].representation[0]"), (7, 9));
        assert_eq!(idx.locate("formats[1].nothing"), (5, 5));
    }
}
