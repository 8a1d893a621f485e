//! Reading a cmd template as a POSIX shell does, far enough to know
//! where each value's marker stands: unquoted, in quotes, in a
//! here-document, or somewhere no value can be written as data.

use super::{CLOSE, Context, Found, Heredoc, Lexed, OPEN};

/// One level of nesting while reading.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    /// Command level: the top, or inside `$( … )` (with its open parens).
    Command {
        parens: u32,
        in_case: bool,
    },
    Double,
    Backquote,
    /// `${ … }` (with its open braces).
    Brace(u32),
    /// `$(( … ))` (with its open parens).
    Arith(u32),
}

/// Read `text` (markers in place of values) as a POSIX shell does, far
/// enough to know where each marker stands.
pub(super) fn lex(text: &str) -> Lexed {
    let mut l = Lexer {
        text,
        chars: text.char_indices().collect(),
        out: Lexed::default(),
        stack: vec![Frame::Command {
            parens: 0,
            in_case: false,
        }],
        pending: Vec::new(),
        word_start: true,
        i: 0,
    };
    while l.i < l.chars.len() {
        l.step();
    }
    l.out
}

/// The lexer's state: where it is, the frames it is inside, and the
/// here-documents whose bodies start after the next unquoted newline.
struct Lexer<'a> {
    text: &'a str,
    chars: Vec<(usize, char)>,
    out: Lexed,
    stack: Vec<Frame>,
    pending: Vec<(String, bool, bool)>,
    /// The next character starts a word (where `#` starts a comment and
    /// `case` a case statement).
    word_start: bool,
    i: usize,
}

/// Whether a step moved on by itself (`Moved`) or leaves the character
/// to the common tail: word boundaries, `case`, one character on.
enum Flow {
    Moved,
    Tail,
}

impl Lexer<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).map(|c| c.1)
    }

    /// The index of the marker's close from `from` on.
    fn marker_end(&self, from: usize) -> usize {
        let mut j = from;
        while j < self.chars.len() && self.chars[j].1 != CLOSE {
            j += 1;
        }
        j.min(self.chars.len().saturating_sub(1))
    }

    fn byte(&self, i: usize) -> usize {
        self.chars.get(i).map_or(self.text.len(), |c| c.0)
    }

    /// Record the marker from `from` to `to` (character indexes) in `context`.
    fn push(&mut self, from: usize, to: usize, context: Context) {
        let (start, end) = (self.byte(from), self.byte(to + 1));
        self.out.found.push(Found {
            start,
            end,
            context,
            heredoc: None,
        });
    }

    fn frame(&self) -> Frame {
        *self.stack.last().expect("the command frame stays")
    }

    fn set_frame(&mut self, f: Frame) {
        *self.stack.last_mut().expect("the command frame stays") = f;
    }

    fn step(&mut self) {
        let c = self.chars[self.i].1;
        let frame = self.frame();
        let flow = if c == OPEN {
            self.marker(frame)
        } else if c == '$'
            && matches!(frame, Frame::Command { .. } | Frame::Double)
            && let Some((opened, len)) = expansion(self.at(self.i + 1), self.at(self.i + 2))
        {
            // `$((`, `$(` and `${` open the same frames unquoted or in `"…"`.
            self.word_start = matches!(opened, Frame::Command { .. });
            self.stack.push(opened);
            self.i += len;
            Flow::Moved
        } else if c == '\\' && matches!(frame, Frame::Command { .. } | Frame::Double) {
            self.escape()
        } else {
            match frame {
                Frame::Command { parens, in_case } => self.command(c, parens, in_case),
                other => self.nested(c, other),
            }
        };
        if let Flow::Tail = flow {
            self.tail(c);
        }
    }

    /// A value's marker: where it stands decides how it is written.
    fn marker(&mut self, frame: Frame) -> Flow {
        let i = self.i;
        let j = self.marker_end(i);
        let prev = if i > 0 { self.at(i - 1) } else { None };
        let context = match frame {
            _ if prev == Some('$') => Context::Unsupported("right after $"),
            Frame::Command { in_case: true, .. } => {
                Context::Unsupported("in a case statement inside $( )")
            }
            Frame::Command { .. } => Context::Unquoted,
            Frame::Double => Context::Double,
            Frame::Backquote => Context::Unsupported("inside backquotes"),
            Frame::Brace(_) => Context::Unsupported("inside ${ }"),
            Frame::Arith(_) => Context::Unsupported("inside $(( ))"),
        };
        self.push(i, j, context);
        self.word_start = false;
        self.i = j + 1;
        Flow::Moved
    }

    /// A backslash escapes the next character, unquoted or in `"…"`; a
    /// value right after one cannot be written as itself.
    fn escape(&mut self) -> Flow {
        let i = self.i;
        if self.at(i + 1) == Some(OPEN) {
            let j = self.marker_end(i + 1);
            self.push(i + 1, j, Context::Unsupported("right after \\"));
            self.i = j + 1;
        } else {
            self.i += 2;
        }
        self.word_start = false;
        Flow::Moved
    }

    /// A character outside quotes (at the top, or inside `$( )`).
    fn command(&mut self, c: char, parens: u32, in_case: bool) -> Flow {
        let nested = self.stack.len() > 1;
        match c {
            '\'' => return self.single_quoted(),
            '"' => self.stack.push(Frame::Double),
            '`' => self.stack.push(Frame::Backquote),
            '#' if self.word_start => return self.comment(),
            '(' if nested => self.set_frame(Frame::Command {
                parens: parens + 1,
                in_case,
            }),
            ')' if nested && parens == 0 => {
                self.stack.pop();
                self.i += 1;
                self.word_start = false;
                return Flow::Moved;
            }
            ')' if nested => self.set_frame(Frame::Command {
                parens: parens - 1,
                in_case,
            }),
            '<' if self.at(self.i + 1) == Some('<') && self.at(self.i + 2) != Some('<') => {
                return self.heredoc_start();
            }
            '\n' if !self.pending.is_empty() => {
                self.i = heredoc_bodies(
                    self.text,
                    &self.chars,
                    self.i + 1,
                    &mut self.pending,
                    &mut self.out,
                );
                self.word_start = true;
                return Flow::Moved;
            }
            _ => {}
        }
        Flow::Tail
    }

    /// `'…'`: nothing inside is special; a value there is written quoted
    /// (but not in `$'…'`, whose escapes it could not control).
    fn single_quoted(&mut self) -> Flow {
        let i = self.i;
        let mut j = i + 1;
        while j < self.chars.len() && self.chars[j].1 != '\'' {
            if self.chars[j].1 == OPEN {
                let k = self.marker_end(j);
                let ctx = if i > 0 && self.at(i - 1) == Some('$') {
                    Context::Unsupported("inside $' '")
                } else {
                    Context::Single
                };
                self.push(j, k, ctx);
                j = k;
            }
            j += 1;
        }
        self.i = j + 1;
        self.word_start = false;
        Flow::Moved
    }

    /// `#` at a word's start: the rest of the line is a comment.
    fn comment(&mut self) -> Flow {
        let mut j = self.i;
        while j < self.chars.len() && self.chars[j].1 != '\n' {
            if self.chars[j].1 == OPEN {
                let k = self.marker_end(j);
                self.push(j, k, Context::Unsupported("in a comment"));
                j = k;
            }
            j += 1;
        }
        self.i = j;
        Flow::Moved
    }

    /// `<<` or `<<-`: a here-document, and its delimiter word.
    fn heredoc_start(&mut self) -> Flow {
        let mut j = self.i + 2;
        let strip_tabs = self.at(j) == Some('-');
        if strip_tabs {
            j += 1;
        }
        while matches!(self.at(j), Some(' ' | '\t')) {
            j += 1;
        }
        let mut delim = String::new();
        let mut quoted = false;
        while let Some(d) = self.at(j) {
            if d.is_whitespace() || matches!(d, ';' | '&' | '|' | '<' | '>' | '(' | ')') {
                break;
            }
            if d == OPEN {
                let k = self.marker_end(j);
                self.push(j, k, Context::Unsupported("as a here-document's delimiter"));
                j = k + 1;
                continue;
            }
            if matches!(d, '\'' | '"' | '\\') {
                quoted = true;
            } else {
                delim.push(d);
            }
            j += 1;
        }
        self.pending.push((delim, quoted, strip_tabs));
        self.i = j;
        self.word_start = true;
        Flow::Moved
    }

    /// A character inside `"…"`, backquotes, `${ }` or `$(( ))`.
    fn nested(&mut self, c: char, frame: Frame) -> Flow {
        let i = self.i;
        match frame {
            Frame::Command { .. } => {}
            Frame::Double => match c {
                '"' => {
                    self.stack.pop();
                }
                '`' => self.stack.push(Frame::Backquote),
                _ => {}
            },
            Frame::Backquote => match c {
                '\\' => {
                    self.i += 2;
                    return Flow::Moved;
                }
                '`' => {
                    self.stack.pop();
                }
                _ => {}
            },
            Frame::Brace(n) => match c {
                '{' => self.set_frame(Frame::Brace(n + 1)),
                '}' if n == 1 => {
                    self.stack.pop();
                }
                '}' => self.set_frame(Frame::Brace(n - 1)),
                _ => {}
            },
            Frame::Arith(n) => match c {
                '(' => self.set_frame(Frame::Arith(n + 1)),
                ')' if n <= 2 && self.at(i + 1) == Some(')') => {
                    self.stack.pop();
                    self.i += 2;
                    return Flow::Moved;
                }
                ')' => self.set_frame(Frame::Arith(n.saturating_sub(1))),
                _ => {}
            },
        }
        Flow::Tail
    }

    /// After a character that did not move on by itself: `case` inside
    /// `$( )` makes `)` a pattern's end, not the substitution's, so what
    /// follows cannot be placed with certainty; then word boundaries.
    fn tail(&mut self, c: char) {
        let i = self.i;
        if let Frame::Command { parens, .. } = self.frame()
            && self.stack.len() > 1
            && self.word_start
            && self.text[self.chars[i].0..].starts_with("case")
            && self.at(i + 4).is_none_or(|c| c.is_whitespace())
        {
            self.set_frame(Frame::Command {
                parens,
                in_case: true,
            });
        }
        self.word_start = c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '<' | '>');
        self.i += 1;
    }
}

/// The frame a `$` followed by `next` and `after` opens (`$((`, `$(`,
/// `${`), and how many characters that takes.
fn expansion(next: Option<char>, after: Option<char>) -> Option<(Frame, usize)> {
    match (next, after) {
        (Some('('), Some('(')) => Some((Frame::Arith(2), 3)),
        (Some('('), _) => Some((
            Frame::Command {
                parens: 0,
                in_case: false,
            },
            2,
        )),
        (Some('{'), _) => Some((Frame::Brace(1), 2)),
        _ => None,
    }
}

/// Read the bodies of the `pending` here-documents, starting at char
/// `from` (just after the newline that ends their command line); returns
/// where the command text resumes.
fn heredoc_bodies(
    text: &str,
    chars: &[(usize, char)],
    from: usize,
    pending: &mut Vec<(String, bool, bool)>,
    out: &mut Lexed,
) -> usize {
    let byte = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    let mut i = from;
    for (delim, quoted, strip_tabs) in pending.drain(..) {
        let body = byte(i);
        let index = out.heredocs.len();
        let mut end = text.len();
        while i < chars.len() {
            // One line: [i, eol).
            let mut eol = i;
            while eol < chars.len() && chars[eol].1 != '\n' {
                eol += 1;
            }
            let line = &text[byte(i)..byte(eol)];
            let line = if strip_tabs {
                line.trim_start_matches('\t')
            } else {
                line
            };
            if line == delim {
                end = byte(i);
                i = (eol + 1).min(chars.len());
                break;
            }
            let mut j = i;
            while j < eol {
                if chars[j].1 == OPEN {
                    let mut k = j;
                    while k < chars.len() && chars[k].1 != CLOSE {
                        k += 1;
                    }
                    let context = if j > 0 && matches!(chars[j - 1].1, '$' | '\\') && !quoted {
                        Context::Unsupported("right after $ or \\ in a here-document")
                    } else {
                        Context::Heredoc { quoted }
                    };
                    out.found.push(Found {
                        start: byte(j),
                        end: byte(k + 1),
                        context,
                        heredoc: Some(index),
                    });
                    j = k;
                }
                j += 1;
            }
            i = eol + 1;
        }
        out.heredocs.push(Heredoc {
            delim,
            strip_tabs,
            quoted,
            body,
            end,
        });
    }
    i.min(chars.len())
}
