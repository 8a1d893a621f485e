//! Values in a `cmd` template, placed by where they stand in the shell
//! text. A template author may quote a placeholder (`'{{ x }}'`,
//! `"{{ x }}"`), put it in a larger word (`--name={{ x }}`) or in a
//! here-document; one quoting for all of those cancels out somewhere
//! (`''x; touch pwned''`). So the template is rendered with an inert
//! marker in place of each value, the rendered text is read as the shell
//! will read it, and each marker is replaced by the value written for
//! exactly its context: the shell reads back the value, byte for byte.
//! Contexts where no writing is exact (a comment, backquotes, `${…}`,
//! arithmetic, `$'…'`, right after `$` or `\`) are refused, at load time
//! by [`unsupported_placeholders`] and at run time by [`substitute`].

mod lex;
use lex::lex;

/// Starts a marker: a private-use character no shell treats specially.
const OPEN: char = '\u{E000}';
/// Ends a marker.
const CLOSE: char = '\u{E001}';

/// An inert stand-in for `value`: the markers around its UTF-8 bytes in
/// hex, so nothing in it can look like shell syntax to the lexer.
pub fn marker(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2 + 2);
    out.push(OPEN);
    for b in value.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out.push(CLOSE);
    out
}

/// Where a placeholder stands in the shell text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// A plain word, or part of one (`--x={{ v }}`).
    Unquoted,
    /// Inside `'…'`.
    Single,
    /// Inside `"…"`.
    Double,
    /// In the body of a here-document.
    Heredoc {
        /// Its delimiter, quoted (`<<'EOF'`): no expansion in the body.
        quoted: bool,
    },
    /// Nowhere a value can be written exactly; says where.
    Unsupported(&'static str),
}

/// A marker found by [`lex`]: its byte range in the text and its context,
/// and for a here-document its index in [`Lexed::heredocs`].
#[derive(Debug, Clone)]
struct Found {
    start: usize,
    end: usize,
    context: Context,
    heredoc: Option<usize>,
}

/// A here-document: the range of its body, and its delimiter.
#[derive(Debug, Clone)]
struct Heredoc {
    delim: String,
    strip_tabs: bool,
    quoted: bool,
    /// Byte offset where the body starts.
    body: usize,
    /// Byte offset of the delimiter line (the text's end if there is none).
    end: usize,
}

#[derive(Debug, Default)]
struct Lexed {
    found: Vec<Found>,
    heredocs: Vec<Heredoc>,
}

/// `value` written for `context`, so the shell reads back exactly it.
fn write(value: &str, context: &Context) -> String {
    match context {
        Context::Unquoted => {
            // As `shlex.quote`: a word of only these characters as it is.
            let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
            if value.is_empty() {
                "''".into()
            } else if value.chars().all(plain) {
                value.to_string()
            } else if value.contains('\'') && !value.contains(['$', '`', '"', '\\', '!']) {
                // Easier to read than '\'' at every quote.
                format!("\"{value}\"")
            } else {
                format!("'{}'", value.replace('\'', r"'\''"))
            }
        }
        Context::Single => value.replace('\'', r"'\''"),
        Context::Double => escape(value, &['\\', '$', '`', '"']),
        Context::Heredoc { quoted: false } => escape(value, &['\\', '$', '`']),
        Context::Heredoc { quoted: true } | Context::Unsupported(_) => value.to_string(),
    }
}

/// Every way [`substitute`] may write `value`: what masking looks for.
pub fn writings(value: &str) -> Vec<String> {
    [
        Context::Unquoted,
        Context::Single,
        Context::Double,
        Context::Heredoc { quoted: false },
    ]
    .iter()
    .map(|c| write(value, c))
    .collect()
}

fn escape(value: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn decode(hex: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The rendered text with every marker replaced by its value, written for
/// where it stands; an error when a value cannot be placed exactly.
pub fn substitute(text: &str) -> Result<String, String> {
    let lexed = lex(text);
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    // Where each here-document's delimiter line lands in `out`.
    let mut shift: isize = 0;
    let mut ends: Vec<Option<usize>> = vec![None; lexed.heredocs.len()];
    let fix_ends = |upto: usize, shift: isize, ends: &mut Vec<Option<usize>>| {
        for (h, e) in lexed.heredocs.iter().zip(ends.iter_mut()) {
            if e.is_none() && h.end <= upto {
                *e = Some((h.end as isize + shift) as usize);
            }
        }
    };
    for f in &lexed.found {
        fix_ends(f.start, shift, &mut ends);
        let inner = &text[f.start + OPEN.len_utf8()..f.end - CLOSE.len_utf8()];
        let value = decode(inner).ok_or("a value's marker was damaged")?;
        placeable(text, &lexed, f, &value)?;
        let written = write(&value, &f.context);
        out.push_str(&text[last..f.start]);
        out.push_str(&written);
        shift += written.len() as isize - (f.end - f.start) as isize;
        last = f.end;
    }
    fix_ends(usize::MAX, shift, &mut ends);
    out.push_str(&text[last..]);
    let openers = heredoc_openers(text, &lexed, &out, &ends)?;
    for at in openers.into_iter().rev() {
        out.insert_str(at, "${x+}");
    }
    Ok(out)
}

/// Whether `value` can be written where marker `f` stands: no NUL, a
/// supported place, and no line a `<<-` here-document would strip.
fn placeable(text: &str, lexed: &Lexed, f: &Found, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err("a value holds a NUL byte, which no shell argument can carry".into());
    }
    if let Context::Unsupported(where_) = f.context {
        return Err(format!(
            "the cmd template places a value {where_}, where the shell would not read it as data"
        ));
    }
    if let Some(h) = f.heredoc.map(|i| &lexed.heredocs[i])
        && h.strip_tabs
        && (value.contains("\n\t")
            || (value.starts_with('\t')
                && text[..f.start]
                    .rsplit('\n')
                    .next()
                    .is_some_and(|l| l.chars().all(|c| c == '\t'))))
    {
        return Err(
            "a value has a line starting with a tab, which the cmd template's <<- here-document would strip"
                .into(),
        );
    }
    Ok(())
}

/// A value may not end its here-document early: the first delimiter
/// line of each body must still be the template's own. And dash drops
/// the byte after a line's start that matches the delimiter's start when
/// that byte is not ASCII (`EO¡` reads back as `EO` and half a
/// character): in an expanding body such a line is opened with an empty
/// expansion, `${x+}` (at the offsets returned), which no delimiter
/// matches; in a quoted body the value is refused. `ends` is where each
/// delimiter line landed in `out`.
fn heredoc_openers(
    text: &str,
    lexed: &Lexed,
    out: &str,
    ends: &[Option<usize>],
) -> Result<Vec<usize>, String> {
    let mut openers = Vec::new();
    for (i, h) in lexed.heredocs.iter().enumerate() {
        if !lexed.found.iter().any(|f| f.heredoc == Some(i)) {
            continue;
        }
        let start = (h.body as isize
            + lexed
                .found
                .iter()
                .filter(|f| f.end <= h.body)
                .map(|f| write_len(text, f) as isize - (f.end - f.start) as isize)
                .sum::<isize>()) as usize;
        let expected = ends[i].unwrap_or(out.len());
        let mut pos = start;
        for line in out[start..].split_inclusive('\n') {
            let bare = line.strip_suffix('\n').unwrap_or(line);
            let tabs = if h.strip_tabs {
                bare.len() - bare.trim_start_matches('\t').len()
            } else {
                0
            };
            let bare = &bare[tabs..];
            if bare == h.delim {
                if pos != expected {
                    return Err(format!(
                        "a value holds the line {}, which would end the cmd template's here-document early",
                        h.delim
                    ));
                }
                break;
            }
            let common = bare
                .bytes()
                .zip(h.delim.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            if common > 0 && bare.as_bytes().get(common).is_some_and(|b| *b >= 0x80) {
                if h.quoted {
                    return Err(format!(
                        "a value has a line starting with {:?} and a non-ASCII character, which the shell misreads in the cmd template's quoted here-document",
                        &h.delim[..common]
                    ));
                }
                openers.push(pos + tabs);
            }
            pos += line.len();
        }
    }
    Ok(openers)
}

/// The length of what [`substitute`] writes for `f`.
fn write_len(text: &str, f: &Found) -> usize {
    let inner = &text[f.start + OPEN.len_utf8()..f.end - CLOSE.len_utf8()];
    decode(inner).map_or(0, |v| write(&v, &f.context).len())
}

/// The placeholders of a `cmd` template that stand where no value can be
/// written exactly: `(placeholder, 1-based line in the template, where)`.
/// Read from the template's text (each `{{ … }}` a marker, `{% … %}` and
/// `{# … #}` left out), so a load can refuse the action.
pub fn unsupported_placeholders(template: &str) -> Vec<(String, usize, &'static str)> {
    let mut text = String::new();
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{']) {
        let (before, from) = rest.split_at(open);
        text.push_str(before);
        let close = match &from[..from.len().min(2)] {
            "{{" => "}}",
            "{%" => "%}",
            "{#" => "#}",
            _ => {
                text.push('{');
                rest = &from[1..];
                continue;
            }
        };
        let Some(end) = from.find(close) else {
            text.push_str(from);
            rest = "";
            break;
        };
        let inner = &from[2..end];
        if close == "}}" {
            let line = template[..template.len() - from.len()]
                .matches('\n')
                .count()
                + 1;
            names.push((inner.trim_matches(['-', ' ']).to_string(), line));
            text.push_str(&marker("x"));
        }
        rest = &from[end + 2..];
    }
    text.push_str(rest);
    let lexed = lex(&text);
    lexed
        .found
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match (&f.context, names.get(i)) {
            (Context::Unsupported(w), Some((name, line))) if !name.ends_with("| safe") => {
                Some((format!("{{{{ {name} }}}}"), *line, *w))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(template: &str, value: &str) -> Result<String, String> {
        substitute(&template.replace("V", &marker(value)))
    }

    #[test]
    fn each_context_is_written_for_itself() {
        assert_eq!(with("echo V", "a'b").unwrap(), "echo \"a'b\"");
        assert_eq!(with("echo V", "a'$b").unwrap(), r"echo 'a'\''$b'");
        assert_eq!(with("echo 'V'", "x; touch p").unwrap(), "echo 'x; touch p'");
        assert_eq!(with("echo 'V'", "a'b").unwrap(), r"echo 'a'\''b'");
        assert_eq!(
            with("echo \"V\"", "$(id)`x`").unwrap(),
            r#"echo "\$(id)\`x\`""#
        );
        assert_eq!(with("echo --n=V", "").unwrap(), "echo --n=''");
        assert_eq!(
            with("cat <<EOF\nV\nEOF\n", "$HOME").unwrap(),
            "cat <<EOF\n\\$HOME\nEOF\n"
        );
        assert_eq!(
            with("cat <<'EOF'\nV\nEOF\n", "$HOME").unwrap(),
            "cat <<'EOF'\n$HOME\nEOF\n"
        );
    }

    #[test]
    fn contexts_without_an_exact_writing_are_refused() {
        for t in [
            "echo `V`",
            "echo ${X:-V}",
            "echo $((V))",
            "echo $'V'",
            "echo hi # V",
            "echo $V",
            "echo \\V",
            "echo \"\\V\"",
            "cat <<V\nx\nV\n",
        ] {
            let err = with(t, "x").unwrap_err();
            assert!(err.contains("places a value"), "{t}: {err}");
        }
    }

    #[test]
    fn a_line_dash_would_misread_is_opened_or_refused() {
        assert_eq!(
            with("cat <<EOF\nV\nEOF\n", "EO\u{a1}").unwrap(),
            "cat <<EOF\n${x+}EO\u{a1}\nEOF\n"
        );
        assert!(with("cat <<'EOF'\nV\nEOF\n", "EO\u{a1}").is_err());
        assert_eq!(
            with("cat <<EOF\nV\nEOF\n", "xEO\u{a1}").unwrap(),
            "cat <<EOF\nxEO\u{a1}\nEOF\n"
        );
    }

    #[test]
    fn a_value_cannot_end_a_heredoc() {
        let err = with("cat <<EOF\nV\nEOF\necho ok", "a\nEOF\ntouch p").unwrap_err();
        assert!(err.contains("here-document"), "{err}");
        assert!(with("cat <<-EOF\n\tV\n\tEOF\n", "a\n\tEOF").is_err());
        assert!(with("cat <<EOF\nV\nEOF\n", "EOFx\nxEOF").is_ok());
    }

    #[test]
    fn load_time_names_the_placeholder_and_line() {
        let found = unsupported_placeholders("echo ok\necho `{{ a }}` {{ b }} '{{ c }}'");
        assert_eq!(found, vec![("{{ a }}".to_string(), 2, "inside backquotes")]);
        assert!(unsupported_placeholders("{% if x %}echo '{{ x }}'{% endif %}").is_empty());
    }
}

/// The property the whole module exists for: for any value, in every
/// context, the shell's argv (or here-document) is exactly the value.
#[cfg(test)]
mod property {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::super::params::{Quoting, render};

    /// What `/bin/sh -c` prints for `template` rendered with `v`.
    fn run(template: &str, v: &str) -> Result<Vec<u8>, TestCaseError> {
        run_or_refuse(template, v).map_err(TestCaseError::fail)
    }

    fn run_or_refuse(template: &str, v: &str) -> Result<Vec<u8>, String> {
        let mut ctx = Map::new();
        ctx.insert("v".into(), Value::String(v.into()));
        let cmd = render(template, &ctx, Quoting::Shell)?;
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &cmd])
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        Ok(out.stdout)
    }

    /// Values rich in what shells treat specially, and any Unicode.
    fn value() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("$(touch pwned)".to_string()),
            Just("`id`".to_string()),
            Just("${HOME}".to_string()),
            Just("\n".to_string()),
            Just("EOF".to_string()),
            Just("EO\u{e9}".to_string()),
            Just("\t".to_string()),
            Just("-".to_string()),
            Just(";&|<>*?~#!{}[] ".to_string()),
            "[^\u{0}]{0,4}",
        ];
        prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_shell_reads_back_exactly_the_value(v in value()) {
            let bracket = |s: &str| format!("[{s}]").into_bytes();
            prop_assert_eq!(run("printf '[%s]' {{ v }}", &v)?, bracket(&v));
            prop_assert_eq!(run("printf '[%s]' '{{ v }}'", &v)?, bracket(&v));
            prop_assert_eq!(run("printf '[%s]' \"{{ v }}\"", &v)?, bracket(&v));
            prop_assert_eq!(
                run("printf '[%s]' pre{{ v }}\"mid\"'{{ v }}'post", &v)?,
                format!("[pre{v}mid{v}post]").into_bytes()
            );
            // A substitution strips trailing newlines, as it always does.
            prop_assert_eq!(
                run("printf '[%s]' \"$(printf '%s' \"{{ v }}\")\"", &v)?,
                bracket(v.trim_end_matches('\n'))
            );
            let holds_eof = |strip: bool| {
                v.split('\n').any(|l| (if strip { l.trim_start_matches('\t') } else { l }) == "EOF")
            };
            for (t, strip) in [
                ("cat <<EOF\n{{ v }}\nEOF\n", false),
                ("cat <<'EOF'\n{{ v }}\nEOF\n", false),
                ("cat <<-EOF\n{{ v }}\nEOF\n", true),
            ] {
                match run_or_refuse(t, &v) {
                    Ok(out) => prop_assert_eq!(String::from_utf8_lossy(&out), format!("{v}\n")),
                    Err(e) => prop_assert!(
                        holds_eof(strip)
                            || (strip && (v.starts_with('\t') || v.contains("\n\t")))
                            || e.contains("misreads"),
                        "{t:?} refused {v:?}: {e}"
                    ),
                }
            }
        }
    }
}
