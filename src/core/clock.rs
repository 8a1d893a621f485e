//! Wall-clock time as the rest of the crate stores it: milliseconds since
//! the Unix epoch, shown as RFC 3339.

use std::time::Duration;

/// `2026-11-24T18:31:09Z` (UTC, seconds).
pub fn format_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

/// A point in time from the command line: RFC 3339, or a span back from
/// `now_ms` such as `30m`, `2h`, `7d`.
pub fn parse_since(s: &str, now_ms: u64) -> Option<u64> {
    if let Some(d) = parse_duration(s) {
        return Some(now_ms.saturating_sub(d.as_millis() as u64));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
}

/// "9m 30s" for prompts and expiry notices.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// Parse "10m", "30s", "2h", "1d" or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(mult)?))
}
