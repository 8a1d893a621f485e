//! Python regular expressions, read the way CPython's `sre_parse` reads them.
//!
//! StackStorm alias formats are raw Python regexes. This module parses one
//! into a small token tree, which is used for two things:
//! * StackStorm's anchor check (`search_regex_tokens`), quirks included: it
//!   looks inside groups and only inside the *second* branch of an
//!   alternation, after `sre_parse` has factored common prefixes out of
//!   branches and turned single-character branches into character sets;
//! * the literal text every match must contain, for the matcher's prefilter.
//!
//! The same pass writes the pattern out in `fancy_regex` syntax: `{` and `}`
//! that are not quantifiers are escaped, `\Z` becomes `\z`, Python's `$`
//! (end, or before a final newline) becomes a look-ahead, and character
//! classes are re-escaped so Rust's nested-class syntax cannot misread them.

use std::collections::HashSet;

/// Zero-width assertions that StackStorm's anchor check looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Beginning,
    BeginningString,
    End,
    EndString,
    Boundary,
    NonBoundary,
}

/// One `sre_parse` token, reduced to what the anchor check and the
/// literal prefilter need.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Literal(char),
    /// Any single-character matcher that is not a literal (`.`, `\d`, `[..]`).
    Class(String),
    At(At),
    /// A group, capturing or not (`SUBPATTERN`).
    Group(Option<String>, Vec<Token>),
    /// An alternation left after prefix factoring (`BRANCH`).
    Branch(Vec<Vec<Token>>),
    Repeat {
        min: u32,
        item: Vec<Token>,
        raw: String,
    },
    /// Look-arounds, back-references, conditionals, atomic groups: never searched.
    Opaque(String),
}

/// A parsed Python pattern and its `fancy_regex` translation.
#[derive(Debug, Clone)]
pub struct PyRegex {
    pub tokens: Vec<Token>,
    pub rust: String,
    pub group_names: Vec<String>,
    /// Inline flags change what a literal means (`(?i)`), so the prefilter
    /// must not trust literals when any are present.
    pub has_inline_flags: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyRegexError {
    pub message: String,
    pub position: usize,
}

impl std::fmt::Display for PyRegexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

pub fn parse(pattern: &str) -> Result<PyRegex, PyRegexError> {
    let multiline = has_multiline_flag(pattern);
    let mut p = Parser {
        chars: pattern.chars().collect(),
        pos: 0,
        out: String::with_capacity(pattern.len() * 2),
        names: Vec::new(),
        seen: HashSet::new(),
        multiline,
        inline_flags: false,
    };
    let tokens = p.parse_alternation(0)?;
    if p.pos < p.chars.len() {
        return Err(p.err("unbalanced parenthesis"));
    }
    Ok(PyRegex {
        tokens,
        rust: p.out,
        group_names: p.names,
        has_inline_flags: p.inline_flags,
    })
}

/// `search_regex_tokens` from st2's `action_alias_utils.py`.
pub fn search_tokens(needles: &[At], tokens: &[Token]) -> bool {
    tokens.iter().any(|t| match t {
        Token::Group(_, inner) => search_tokens(needles, inner),
        // st2 inspects `rtoken[1][1]`: the second alternative only.
        Token::Branch(items) => items.get(1).is_some_and(|b| search_tokens(needles, b)),
        Token::At(a) => needles.contains(a),
        _ => false,
    })
}

/// Runs of literal text that every match must contain, longest first.
pub fn required_literals(tokens: &[Token]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur = String::new();
    collect_literals(tokens, &mut cur, &mut runs);
    flush(&mut cur, &mut runs);
    runs.sort_by_key(|r| std::cmp::Reverse(r.len()));
    runs
}

fn flush(cur: &mut String, runs: &mut Vec<String>) {
    if !cur.is_empty() {
        runs.push(std::mem::take(cur));
    }
}

fn collect_literals(tokens: &[Token], cur: &mut String, runs: &mut Vec<String>) {
    for t in tokens {
        match t {
            Token::Literal(c) => cur.push(*c),
            Token::Group(_, inner) => collect_literals(inner, cur, runs),
            Token::Repeat { min, item, .. } if *min >= 1 => {
                flush(cur, runs);
                collect_literals(item, cur, runs);
                flush(cur, runs);
            }
            Token::At(_) => {}
            _ => flush(cur, runs),
        }
    }
}

fn has_multiline_flag(pattern: &str) -> bool {
    // Only `(?m)`-style flag groups enable multiline; good enough to decide
    // whether `$` keeps Python's single-line meaning.
    let b = pattern.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == b'(' && b[i + 1] == b'?' {
            let mut j = i + 2;
            while j < b.len() && b[j].is_ascii_alphabetic() {
                if b[j] == b'm' {
                    return true;
                }
                j += 1;
            }
        }
        i += 1;
    }
    false
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    out: String,
    names: Vec<String>,
    seen: HashSet<String>,
    multiline: bool,
    inline_flags: bool,
}

impl Parser {
    fn err(&self, msg: &str) -> PyRegexError {
        PyRegexError {
            message: msg.to_string(),
            position: self.pos,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<char> {
        self.chars.get(self.pos + off).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.peek_at(i) == Some(c))
    }

    /// `_parse_sub`: alternatives separated by `|`, then sre's optimisations.
    fn parse_alternation(&mut self, depth: usize) -> Result<Vec<Token>, PyRegexError> {
        let mut items = vec![self.parse_sequence(depth)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            self.out.push('|');
            items.push(self.parse_sequence(depth)?);
        }
        if items.len() == 1 {
            return Ok(items.pop().unwrap_or_default());
        }
        Ok(optimise_branch(items))
    }

    fn parse_sequence(&mut self, depth: usize) -> Result<Vec<Token>, PyRegexError> {
        let mut seq: Vec<Token> = Vec::new();
        // Where in `out` the last item started, so a quantifier can wrap it.
        let mut last_start = self.out.len();
        while let Some(c) = self.peek() {
            if c == '|' || (c == ')' && depth > 0) {
                break;
            }
            if c == ')' {
                return Err(self.err("unbalanced parenthesis"));
            }
            if let Some((min, max_text)) = self.quantifier_here() {
                let Some(prev) = seq.pop() else {
                    return Err(self.err("nothing to repeat"));
                };
                if matches!(prev, Token::At(_)) {
                    return Err(self.err("nothing to repeat"));
                }
                if matches!(prev, Token::Repeat { .. }) {
                    return Err(self.err("multiple repeat"));
                }
                let item = match prev {
                    Token::Group(None, inner) => inner,
                    other => vec![other],
                };
                let raw = self.out[last_start..].to_string();
                self.out.push_str(&max_text);
                seq.push(Token::Repeat { min, item, raw });
                continue;
            }
            last_start = self.out.len();
            let tok = self.parse_atom(depth)?;
            if let Some(t) = tok {
                seq.push(t);
            }
        }
        Ok(seq)
    }

    /// If a quantifier starts here, consume it and return (min, rust text).
    fn quantifier_here(&mut self) -> Option<(u32, String)> {
        let c = self.peek()?;
        let (min, mut text) = match c {
            '*' => {
                self.pos += 1;
                (0, "*".to_string())
            }
            '+' => {
                self.pos += 1;
                (1, "+".to_string())
            }
            '?' => {
                self.pos += 1;
                (0, "?".to_string())
            }
            '{' => {
                let (min, max, len) = self.brace_quantifier()?;
                self.pos += len;
                let text = match max {
                    Some(Some(m)) => format!("{{{min},{m}}}"),
                    Some(None) => format!("{{{min},}}"),
                    None => format!("{{{min}}}"),
                };
                (min, text)
            }
            _ => return None,
        };
        // Lazy `?` or possessive `+` suffix (Python 3.11).
        if let Some(s @ ('?' | '+')) = self.peek() {
            self.pos += 1;
            text.push(s);
        }
        Some((min, text))
    }

    /// Python's `{m}`, `{m,}`, `{,n}`, `{m,n}`; anything else is a literal `{`.
    /// Returns (min, Some(max) | None for `{m}`, length).
    fn brace_quantifier(&self) -> Option<(u32, Option<Option<u32>>, usize)> {
        let mut i = self.pos + 1;
        let mut lo = String::new();
        while let Some(c) = self.chars.get(i).filter(|c| c.is_ascii_digit()) {
            lo.push(*c);
            i += 1;
        }
        match self.chars.get(i) {
            Some('}') if !lo.is_empty() => {
                let min = lo.parse().ok()?;
                Some((min, None, i + 1 - self.pos))
            }
            Some(',') => {
                i += 1;
                let mut hi = String::new();
                while let Some(c) = self.chars.get(i).filter(|c| c.is_ascii_digit()) {
                    hi.push(*c);
                    i += 1;
                }
                if self.chars.get(i) != Some(&'}') {
                    return None;
                }
                let min = if lo.is_empty() { 0 } else { lo.parse().ok()? };
                let max = if hi.is_empty() {
                    None
                } else {
                    Some(hi.parse().ok()?)
                };
                Some((min, Some(max), i + 1 - self.pos))
            }
            _ => None,
        }
    }

    fn parse_atom(&mut self, depth: usize) -> Result<Option<Token>, PyRegexError> {
        let c = self.peek().ok_or_else(|| self.err("unexpected end"))?;
        self.pos += 1;
        let tok = match c {
            '(' => return self.parse_group(depth),
            '[' => self.parse_class()?,
            '\\' => self.parse_escape()?,
            '.' => {
                self.out.push('.');
                Token::Class(".".into())
            }
            '^' => {
                self.out.push('^');
                Token::At(At::Beginning)
            }
            '$' => {
                if self.multiline {
                    self.out.push('$');
                } else {
                    self.out.push_str("(?=\\n?\\z)");
                }
                Token::At(At::End)
            }
            other => {
                self.push_literal(other);
                Token::Literal(other)
            }
        };
        Ok(Some(tok))
    }

    fn push_literal(&mut self, c: char) {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            self.out.push('\\');
        }
        self.out.push(c);
    }

    fn parse_group(&mut self, depth: usize) -> Result<Option<Token>, PyRegexError> {
        // `(` already consumed.
        if self.peek() != Some('?') {
            self.out.push('(');
            let inner = self.parse_alternation(depth + 1)?;
            self.close_group()?;
            return Ok(Some(Token::Group(Some(String::new()), inner)));
        }
        self.pos += 1; // '?'
        if self.starts_with("P<") {
            self.pos += 2;
            let name = self.group_name('>')?;
            self.out.push_str(&format!("(?P<{name}>"));
            let inner = self.parse_alternation(depth + 1)?;
            self.close_group()?;
            return Ok(Some(Token::Group(Some(name), inner)));
        }
        if self.starts_with("P=") {
            self.pos += 2;
            let name = self.read_until(')')?;
            if !self.seen.contains(&name) {
                return Err(self.err(&format!("unknown group name '{name}'")));
            }
            self.out.push_str(&format!("\\k<{name}>"));
            return Ok(Some(Token::Opaque(name)));
        }
        if self.peek() == Some('#') {
            self.read_until(')')?;
            return Ok(None);
        }
        // Lookarounds and atomic groups match nothing a search can name.
        const OPENERS: [(&str, &str, bool); 6] = [
            ("<=", "(?<=", true),
            ("<!", "(?<!", true),
            ("=", "(?=", true),
            ("!", "(?!", true),
            (">", "(?>", true),
            (":", "(?:", false),
        ];
        let Some(&(prefix, open, opaque)) = OPENERS.iter().find(|(p, ..)| self.starts_with(p))
        else {
            return self.conditional_or_flags(depth);
        };
        self.pos += prefix.len();
        self.out.push_str(open);
        let inner = self.parse_alternation(depth + 1)?;
        self.close_group()?;
        if opaque {
            Ok(Some(Token::Opaque(open.to_string())))
        } else {
            Ok(Some(Token::Group(None, inner)))
        }
    }

    /// After `(?`: a conditional `(?(id)yes|no)`, passed through and
    /// never searched, or inline flags, `(?aiLmsux)` or scoped
    /// `(?i-m:...)`.
    fn conditional_or_flags(&mut self, depth: usize) -> Result<Option<Token>, PyRegexError> {
        if self.peek() == Some('(') {
            self.pos += 1;
            let cond = self.read_until(')')?;
            self.out.push_str(&format!("(?({cond})"));
            self.parse_alternation(depth + 1)?;
            self.close_group()?;
            return Ok(Some(Token::Opaque(cond)));
        }
        let mut flags = String::new();
        while let Some(c) = self.peek().filter(|c| c.is_ascii_alphabetic() || *c == '-') {
            flags.push(c);
            self.pos += 1;
        }
        if flags.is_empty() {
            return Err(self.err("unknown extension"));
        }
        self.inline_flags = true;
        // Rust has no `a`, `L` or `u`: ASCII/locale/unicode modes.
        let rust_flags: String = flags.chars().filter(|c| "imsx-".contains(*c)).collect();
        let plain = rust_flags.trim_matches('-').is_empty();
        match self.peek() {
            Some(')') => {
                self.pos += 1;
                if !plain {
                    self.out.push_str(&format!("(?{rust_flags})"));
                }
                Ok(None)
            }
            Some(':') => {
                self.pos += 1;
                if plain {
                    self.out.push_str("(?:");
                } else {
                    self.out.push_str(&format!("(?{rust_flags}:"));
                }
                let inner = self.parse_alternation(depth + 1)?;
                self.close_group()?;
                Ok(Some(Token::Group(None, inner)))
            }
            _ => Err(self.err("missing -, : or )")),
        }
    }

    fn close_group(&mut self) -> Result<(), PyRegexError> {
        if self.peek() != Some(')') {
            return Err(self.err("missing ), unterminated subpattern"));
        }
        self.pos += 1;
        self.out.push(')');
        Ok(())
    }

    fn read_until(&mut self, end: char) -> Result<String, PyRegexError> {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == end {
                return Ok(s);
            }
            s.push(c);
        }
        Err(self.err(&format!("missing {end}")))
    }

    fn group_name(&mut self, end: char) -> Result<String, PyRegexError> {
        let start = self.pos;
        let name = self.read_until(end)?;
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            self.pos = start;
            return Err(self.err(&format!("bad character in group name '{name}'")));
        }
        if !self.seen.insert(name.clone()) {
            self.pos = start;
            return Err(self.err(&format!("redefinition of group name '{name}'")));
        }
        self.names.push(name.clone());
        Ok(name)
    }

    fn parse_escape(&mut self) -> Result<Token, PyRegexError> {
        let c = self
            .peek()
            .ok_or_else(|| self.err("bad escape (end of pattern)"))?;
        self.pos += 1;
        let tok = match c {
            'A' => {
                self.out.push_str("\\A");
                Token::At(At::BeginningString)
            }
            'Z' => {
                self.out.push_str("\\z");
                Token::At(At::EndString)
            }
            'b' => {
                self.out.push_str("\\b");
                Token::At(At::Boundary)
            }
            'B' => {
                self.out.push_str("\\B");
                Token::At(At::NonBoundary)
            }
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => {
                self.out.push('\\');
                self.out.push(c);
                Token::Class(format!("\\{c}"))
            }
            '1'..='9' => {
                let mut n = c.to_string();
                if let Some(d) = self.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(d);
                    self.pos += 1;
                }
                self.out.push_str(&format!("\\{n}"));
                Token::Opaque(n)
            }
            _ => {
                let ch = self.simple_escape(c)?;
                self.push_literal(ch);
                Token::Literal(ch)
            }
        };
        Ok(tok)
    }

    /// Escapes that stand for one character: `\n`, `\x41`, `\u00e9`, `\0`, `\.`.
    fn simple_escape(&mut self, c: char) -> Result<char, PyRegexError> {
        let hex = |p: &mut Self, n: usize| -> Result<char, PyRegexError> {
            let s: String = (0..n).filter_map(|i| p.peek_at(i)).collect();
            if s.len() != n || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(p.err("incomplete escape"));
            }
            p.pos += n;
            u32::from_str_radix(&s, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| p.err("bad escape"))
        };
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'f' => '\x0c',
            'v' => '\x0b',
            'a' => '\x07',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '0' => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                char::from_u32(v).unwrap_or('\0')
            }
            c if c.is_ascii_alphanumeric() => {
                return Err(self.err(&format!("bad escape \\{c}")));
            }
            other => other,
        })
    }

    fn parse_class(&mut self) -> Result<Token, PyRegexError> {
        // `[` already consumed.
        let start = self.pos - 1;
        self.out.push('[');
        if self.peek() == Some('^') {
            self.pos += 1;
            self.out.push('^');
        }
        let mut first = true;
        loop {
            let c = self
                .peek()
                .ok_or_else(|| self.err("unterminated character set"))?;
            if c == ']' && !first {
                self.pos += 1;
                break;
            }
            first = false;
            self.pos += 1;
            let lo = self.class_item(c)?;
            let Some(lo) = lo else { continue };
            // A range `a-z`, unless `-` is last.
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.pos += 1;
                let c2 = self
                    .peek()
                    .ok_or_else(|| self.err("unterminated character set"))?;
                self.pos += 1;
                self.out.push('-');
                match self.class_item(c2)? {
                    Some(hi) if hi >= lo => {}
                    Some(_) => return Err(self.err("bad character range")),
                    None => return Err(self.err("bad character range")),
                }
            }
        }
        self.out.push(']');
        let text: String = self.chars[start..self.pos].iter().collect();
        Ok(Token::Class(text))
    }

    /// One class member; writes it out and returns its char when it is one.
    fn class_item(&mut self, c: char) -> Result<Option<char>, PyRegexError> {
        if c != '\\' {
            self.push_class_char(c);
            return Ok(Some(c));
        }
        let e = self
            .peek()
            .ok_or_else(|| self.err("bad escape (end of pattern)"))?;
        self.pos += 1;
        match e {
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => {
                self.out.push('\\');
                self.out.push(e);
                Ok(None)
            }
            'b' => {
                self.push_class_char('\x08');
                Ok(Some('\x08'))
            }
            _ => {
                let ch = self.simple_escape(e)?;
                self.push_class_char(ch);
                Ok(Some(ch))
            }
        }
    }

    fn push_class_char(&mut self, c: char) {
        if "\\[]^-&~".contains(c) {
            self.out.push('\\');
        }
        match c {
            '\n' => self.out.push_str("\\n"),
            '\t' => self.out.push_str("\\t"),
            _ => self.out.push(c),
        }
    }
}

/// `_parse_sub`'s rewrites: factor out a common first token, and replace a
/// branch of single characters by a character set.
fn optimise_branch(mut items: Vec<Vec<Token>>) -> Vec<Token> {
    let mut prefix = Vec::new();
    while let Some(first) = items.first().and_then(|i| i.first()).cloned() {
        if items.iter().all(|i| i.first() == Some(&first)) {
            for i in items.iter_mut() {
                i.remove(0);
            }
            prefix.push(first);
        } else {
            break;
        }
    }
    let all_chars = items.iter().all(|i| {
        i.len() == 1
            && match &i[0] {
                Token::Literal(_) => true,
                Token::Class(c) => c.starts_with('[') && !c.starts_with("[^"),
                _ => false,
            }
    });
    if all_chars {
        prefix.push(Token::Class("[branch]".into()));
    } else {
        prefix.push(Token::Branch(items));
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchored_start(p: &str) -> bool {
        search_tokens(
            &[At::Beginning, At::BeginningString],
            &parse(p).unwrap().tokens,
        )
    }

    fn anchored_end(p: &str) -> bool {
        search_tokens(&[At::End, At::EndString], &parse(p).unwrap().tokens)
    }

    #[test]
    fn anchor_quirk_only_second_branch_counts() {
        assert!(anchored_start(r"(?:\b|^)duplicate"));
        assert!(!anchored_start(r"(?:^|\b)duplicate"));
        assert!(anchored_end(r"x(?:\b|$)"));
        assert!(anchored_start(r"^\s*foo"));
        assert!(anchored_end(r"foo\s*$"));
        assert!(anchored_end(r"foo\Z"));
        assert!(!anchored_start(r"(^foo)?"));
        // A common prefix is factored out of the branch first.
        assert!(anchored_start(r"(?:^a|^b|c)"));
    }

    #[test]
    fn translation_escapes_python_literals() {
        let r = parse(r"skip {.+?} \Z x{2} y{,3} [a-z[\]] $").unwrap();
        assert_eq!(r.rust, r"skip \{.+?\} \z x{2} y{0,3} [a-z\[\]] (?=\n?\z)");
        fancy_regex::Regex::new(&r.rust).unwrap();
    }

    #[test]
    fn named_groups_and_errors() {
        let r = parse(r"(?P<issue_key>[A-Z]+-\d+)").unwrap();
        assert_eq!(r.group_names, vec!["issue_key"]);
        assert!(parse(r"(?P<ip-address>x)").is_err());
        assert!(parse(r"(?P<a>x)(?P<a>y)").is_err());
        assert!(parse(r"(a").is_err());
        assert!(parse(r"a)").is_err());
    }

    #[test]
    fn literals_required_by_every_match() {
        let r = parse(r"github get user( type x)? (?P<u>.+?)\s*$").unwrap();
        assert_eq!(required_literals(&r.tokens)[0], "github get user");
    }
}
