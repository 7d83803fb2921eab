//! Log output: the tracing subscriber (pretty or JSON lines on stderr) and the
//! escaping that keeps user-controlled strings (a token's `sub` or `name`, an
//! `Origin`, a client's error text) from starting a new log line, forging
//! fields or sending terminal escape codes. It does not decide what is logged.
//!
//! JSON lines are safe by construction (serde_json escapes control
//! characters inside strings). The pretty format writes field values through
//! [`field_value`] and the message through [`message`].

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process-wide subscriber: `RUST_LOG` filter (default `info`),
/// stderr, colours only for a person at a terminal.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in captured logs.
    let ansi = std::io::stderr().is_terminal();
    // Fails only if a subscriber is already installed (tests); keep that one.
    let _ = subscriber(format, filter, std::io::stderr, ansi).try_init();
}

/// The subscriber [`init`] installs, writing to `writer` (tests pass a buffer).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(builder.json().finish()),
        LogFormat::Pretty => Box::new(
            builder
                .fmt_fields(
                    tracing_subscriber::fmt::format::debug_fn(write_field as FieldWriter)
                        .delimited(" "),
                )
                .finish(),
        ),
    }
}

type FieldWriter = fn(&mut Writer<'_>, &Field, &dyn fmt::Debug) -> fmt::Result;

/// One field of the pretty format: `name=value`, or the bare message.
fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    // `%x` fields arrive here as Display output, `?x` as Debug output; both
    // may carry whatever a client sent.
    let raw = format!("{value:?}");
    match field.name() {
        "message" => w.write_str(&message(&raw)),
        name => write!(w, "{}={}", name.trim_start_matches("r#"), field_value(&raw)),
    }
}

/// A field value as the pretty format writes it: bare when it is one plain
/// token, else double-quoted with `\"`, `\\`, `\n`, `\u{1b}`... escapes. A
/// value that already is a quoted, escaped string (`?` on a `String`) is kept.
pub fn field_value(raw: &str) -> Cow<'_, str> {
    if !raw.is_empty() && raw.chars().all(is_bare) {
        return Cow::Borrowed(raw);
    }
    if is_quoted_literal(raw) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len() + 2);
    out.push('"');
    for c in raw.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// A log message: control and invisible direction characters escaped, the
/// rest as written.
pub fn message(raw: &str) -> Cow<'_, str> {
    escape_controls(raw)
}

fn escape_controls(raw: &str) -> Cow<'_, str> {
    if !raw.chars().any(needs_escape) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Characters that break a line, drive a terminal or reorder what a reader
/// sees: C0/C1 controls and DEL, line/paragraph separators, bidirectional
/// overrides and invisible formatting characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

fn is_bare(c: char) -> bool {
    !needs_escape(c) && !c.is_whitespace() && !matches!(c, '"' | '\\' | '=')
}

/// `"..."` where every inner `"` is escaped: what `{:?}` makes of a string.
fn is_quoted_literal(raw: &str) -> bool {
    let Some(inner) = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| raw.len() >= 2)
    else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            // An escape covers the next character, whatever it is.
            '\\' if chars.next().is_none() => return false,
            '\\' => {}
            '"' => return false,
            c if needs_escape(c) => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const HOSTILE: &str =
        "mallory\n2026-01-01T00:00:00.000000Z  INFO switchboard: admin logged in\u{1b}[2J\u{1b}[31m\r\u{202e}x";

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// What one span + event with hostile fields looks like in `format`.
    fn log_hostile(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let sub = subscriber(format, EnvFilter::new("info"), buffer.clone(), ansi);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("session", user = %HOSTILE, room = "r1");
            let _entered = span.enter();
            tracing::info!(name = %HOSTILE, origin = ?HOSTILE, reason = HOSTILE, "joined as {}", HOSTILE);
        });
        let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("log output is not UTF-8: {e}"))
    }

    #[test]
    fn pretty_output_is_one_line_without_control_characters() {
        for ansi in [false, true] {
            let out = log_hostile(LogFormat::Pretty, ansi);
            assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
            assert!(out.ends_with('\n'), "{out:?}");
            let body = &out[..out.len() - 1];
            assert!(
                !body.contains('\r') && !body.contains('\u{202e}'),
                "{out:?}"
            );
            // With colours the formatter writes its own escape codes; never the client's.
            assert!(
                !body.contains("\u{1b}[2J") && !body.contains("\u{1b}[31m"),
                "{out:?}"
            );
            if !ansi {
                assert!(!body.contains('\u{1b}'), "{out:?}");
            }
            let escaped = r#""mallory\n2026-01-01T00:00:00.000000Z  INFO switchboard: admin logged in\u{1b}[2J\u{1b}[31m\r\u{202e}x""#;
            for field in ["user", "name", "origin", "reason"] {
                assert!(
                    out.contains(&format!("{field}={escaped}")),
                    "{field} not escaped: {out:?}"
                );
            }
            assert!(
                out.contains(r"joined as mallory\n2026-01-01T00:00:00.000000Z  INFO switchboard: admin logged in\u{1b}[2J"),
                "message not escaped: {out:?}"
            );
        }
    }

    #[test]
    fn json_output_is_one_line_and_keeps_the_exact_value() {
        let out = log_hostile(LogFormat::Json, false);
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
        let line: serde_json::Value = serde_json::from_str(out.trim_end())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
        assert_eq!(line["fields"]["name"], HOSTILE, "{line}");
        assert_eq!(line["fields"]["reason"], HOSTILE, "{line}");
        assert_eq!(line["span"]["user"], HOSTILE, "{line}");
        assert_eq!(
            line["fields"]["message"],
            format!("joined as {HOSTILE}"),
            "{line}"
        );
    }

    #[test]
    fn field_values_are_bare_only_when_plain() {
        let cases: &[(&str, &str)] = &[
            ("alice", "alice"),
            ("José-李_1.2:3", "José-李_1.2:3"),
            ("42", "42"),
            ("", r#""""#),
            ("alice smith", r#""alice smith""#),
            ("a=b", r#""a=b""#),
            (r#"x" admin="1"#, r#""x\" admin=\"1""#),
            (r"back\slash", r#""back\\slash""#),
            ("tab\there", r#""tab\there""#),
            ("\u{0}\u{7f}\u{85}", r#""\u{0}\u{7f}\u{85}""#),
            ("line\u{2028}sep", r#""line\u{2028}sep""#),
            // What `?` makes of a string is kept as it is.
            (r#""already \"quoted\"""#, r#""already \"quoted\"""#),
            // A quoted-looking value with a raw inner quote is quoted again.
            (r#""a" b="c""#, r#""\"a\" b=\"c\"""#),
            (r#"""#, r#""\"""#),
        ];
        for (raw, want) in cases {
            assert_eq!(field_value(raw), *want, "field_value({raw:?})");
        }
    }

    #[test]
    fn messages_keep_text_and_escape_controls() {
        assert_eq!(
            message("peer silent past the ping timeout"),
            "peer silent past the ping timeout"
        );
        assert_eq!(message("a\nb\u{1b}[0m \"q\""), r#"a\nb\u{1b}[0m "q""#);
    }
}
