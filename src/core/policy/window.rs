//! Change windows: when a rule applies (`when:` weekdays, hours and dated
//! freezes in a time zone). A deny rule with a window is a freeze ("no
//! deploys on Friday after 16:00"); an allow rule with one allows only
//! inside it. Time is passed in (ms since the Unix epoch); the time zone
//! database is the system's, or the one built in where the system has none.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ZonedDateTime};

/// How far ahead [`Window::next_change`] looks.
const HORIZON_DAYS: i64 = 400;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// When a rule applies. Every condition given must hold at once.
#[derive(Debug, Clone)]
pub struct Window {
    tz: TimeZone,
    tz_name: String,
    /// Bit `i` set: weekday `i` (Monday 0) is in; 0 = every day.
    days: u8,
    /// Minutes of the day, `[start, end)`; `end < start` wraps past
    /// midnight (the weekday is the one of the moment itself).
    hours: Option<(u16, u16)>,
    /// Inclusive date ranges (a freeze); empty = any date.
    dates: Vec<(Date, Date)>,
}

impl Window {
    /// Parse a rule's `when:` fields. Errors name the field and say what
    /// was expected.
    pub fn parse(
        timezone: Option<&str>,
        days: &[String],
        hours: Option<&str>,
        dates: &[String],
    ) -> Result<Window, (String, String)> {
        let tz_name = timezone.unwrap_or("UTC").to_string();
        let tz = TimeZone::get(&tz_name).map_err(|e| {
            (
                "timezone".to_string(),
                format!(
                    "unknown time zone \"{tz_name}\" ({e}); use an IANA name such as Europe/Berlin"
                ),
            )
        })?;
        let mut mask = 0u8;
        for (i, d) in days.iter().enumerate() {
            let field = format!("days[{i}]");
            let bad = || {
                (
                    field.clone(),
                    format!("\"{d}\" is not a weekday or range (mon, tue, … sun; mon-fri)"),
                )
            };
            let (a, b) = match d.split_once('-') {
                Some((a, b)) => (weekday(a).ok_or_else(bad)?, weekday(b).ok_or_else(bad)?),
                None => {
                    let w = weekday(d).ok_or_else(bad)?;
                    (w, w)
                }
            };
            let mut w = a;
            loop {
                mask |= 1 << w;
                if w == b {
                    break;
                }
                w = (w + 1) % 7;
            }
        }
        let hours = match hours {
            None => None,
            Some(h) => {
                let bad = || {
                    (
                        "hours".to_string(),
                        format!(
                            "\"{h}\" is not a span of hours such as 09:00-17:00 or 22:00-06:00"
                        ),
                    )
                };
                let (a, b) = h.split_once('-').ok_or_else(bad)?;
                let (a, b) = (
                    minute_of_day(a).ok_or_else(bad)?,
                    minute_of_day(b).ok_or_else(bad)?,
                );
                if a == b || a == 1440 {
                    return Err(bad());
                }
                Some((a, b))
            }
        };
        let mut ranges = Vec::new();
        for (i, d) in dates.iter().enumerate() {
            let bad = || {
                (
                    format!("dates[{i}]"),
                    format!(
                        "\"{d}\" is not a date or date range (2026-12-24, 2026-12-21..2027-01-03)"
                    ),
                )
            };
            let (a, b) = d.split_once("..").unwrap_or((d, d));
            let a: Date = a.trim().parse().map_err(|_| bad())?;
            let b: Date = b.trim().parse().map_err(|_| bad())?;
            if b < a {
                return Err((
                    format!("dates[{i}]"),
                    format!("\"{d}\" ends before it starts"),
                ));
            }
            ranges.push((a, b));
        }
        Ok(Window {
            tz,
            tz_name,
            days: mask,
            hours,
            dates: ranges,
        })
    }

    fn local(&self, at_ms: u64) -> Option<ZonedDateTime> {
        let ts = Timestamp::from_millisecond(i64::try_from(at_ms).ok()?).ok()?;
        Some(ts.to_zoned_datetime(self.tz.clone()))
    }

    /// Whether the local date is one the window can be open on.
    fn day_in(&self, z: &ZonedDateTime) -> bool {
        let date = z.date();
        let day = z.weekday().to_monday_zero_offset() as u8;
        (self.days == 0 || self.days & (1 << day) != 0)
            && (self.dates.is_empty() || self.dates.iter().any(|(a, b)| *a <= date && date <= *b))
    }

    fn contains_local(&self, z: &ZonedDateTime) -> bool {
        if !self.day_in(z) {
            return false;
        }
        let m = z.hour() as u16 * 60 + z.minute() as u16;
        match self.hours {
            None => true,
            Some((a, b)) if a < b => a <= m && m < b,
            Some((a, b)) => m >= a || m < b,
        }
    }

    /// Whether the window is open at `at_ms`.
    pub fn contains(&self, at_ms: u64) -> bool {
        self.local(at_ms).is_some_and(|z| self.contains_local(&z))
    }

    /// The first moment after `at_ms` at which the window opens (if it is
    /// closed) or closes (if it is open); None if that is more than
    /// 400 days away. Windows have minute resolution, so the scan
    /// steps by minutes, and over whole days the window cannot touch.
    pub fn next_change(&self, at_ms: u64) -> Option<u64> {
        let mut z = self.local(at_ms)?;
        let open = self.contains_local(&z);
        let end = z.timestamp() + SignedDuration::from_hours(24 * HORIZON_DAYS);
        // The next whole minute.
        let secs = z.timestamp().as_second();
        z = Timestamp::from_second(secs - secs.rem_euclid(60) + 60)
            .ok()?
            .to_zoned_datetime(self.tz.clone());
        while z.timestamp() < end {
            if !open && !self.day_in(&z) {
                z = z.tomorrow().ok()?.start_of_day().ok()?;
                continue;
            }
            if self.contains_local(&z) != open {
                return u64::try_from(z.timestamp().as_millisecond()).ok();
            }
            z = (z.timestamp() + SignedDuration::from_mins(1)).to_zoned_datetime(self.tz.clone());
        }
        None
    }

    /// A moment as people here read it: "Mon 2026-12-07 09:00 Europe/Berlin".
    pub fn show(&self, at_ms: u64) -> String {
        self.local(at_ms)
            .map(|z| format!("{} {}", z.strftime("%a %Y-%m-%d %H:%M"), self.tz_name))
            .unwrap_or_default()
    }

    /// The window as written: "Fri 16:00–24:00 Europe/Berlin",
    /// "2026-12-21 to 2027-01-03, Mon–Fri UTC".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.dates.is_empty() {
            parts.push(
                self.dates
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a} to {b}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        let mut when = Vec::new();
        if self.days != 0 {
            when.push(days_text(self.days));
        }
        if let Some((a, b)) = self.hours {
            when.push(format!("{}–{}", hhmm(a), hhmm(b)));
        }
        if !when.is_empty() {
            parts.push(when.join(" "));
        }
        if parts.is_empty() {
            parts.push("at all times".to_string());
        }
        format!("{} {}", parts.join(", "), self.tz_name)
    }

    /// "open now, closes Fri 2026-12-04 16:00 Europe/Berlin" and the like.
    pub fn state(&self, at_ms: u64) -> String {
        let open = self.contains(at_ms);
        let next = self.next_change(at_ms).map(|t| self.show(t));
        match (open, next) {
            (true, Some(t)) => format!("open now, closes {t}"),
            (true, None) => "open now".to_string(),
            (false, Some(t)) => format!("closed now, opens {t}"),
            (false, None) => "closed now, and for at least a year".to_string(),
        }
    }
}

fn weekday(s: &str) -> Option<u8> {
    let s = s.trim().to_ascii_lowercase();
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    full.iter()
        .position(|f| s.len() >= 3 && f.starts_with(&s))
        .map(|p| p as u8)
}

fn minute_of_day(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

fn hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// "Mon–Fri", "Fri", "Mon, Wed, Fri".
fn days_text(mask: u8) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for d in (0..7).filter(|d| mask & (1 << d) != 0) {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == d => *end = d,
            _ => runs.push((d, d)),
        }
    }
    runs.iter()
        .map(|&(a, b)| match b - a {
            0 => DAY_NAMES[a].to_string(),
            1 => format!("{}, {}", DAY_NAMES[a], DAY_NAMES[b]),
            _ => format!("{}–{}", DAY_NAMES[a], DAY_NAMES[b]),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    fn friday_evening() -> Window {
        Window::parse(
            Some("Europe/Berlin"),
            &["fri".into()],
            Some("16:00-24:00"),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn a_friday_freeze_holds_in_its_own_time_zone() {
        let w = friday_evening();
        // 2026-12-04 is a Friday; Berlin is UTC+1 in December.
        assert!(!w.contains(ms("2026-12-04T14:59:00Z")));
        assert!(w.contains(ms("2026-12-04T15:00:00Z")));
        assert!(w.contains(ms("2026-12-04T22:59:00Z")));
        assert!(!w.contains(ms("2026-12-04T23:00:00Z")));
        assert_eq!(w.describe(), "Fri 16:00–24:00 Europe/Berlin");
        assert_eq!(
            w.state(ms("2026-12-04T15:30:00Z")),
            "open now, closes Sat 2026-12-05 00:00 Europe/Berlin"
        );
        assert_eq!(
            w.state(ms("2026-11-30T10:00:00Z")),
            "closed now, opens Fri 2026-12-04 16:00 Europe/Berlin"
        );
    }

    #[test]
    fn summer_time_moves_the_window_in_utc() {
        let w = friday_evening();
        // 2027-06-04 is a Friday; Berlin is UTC+2 in June.
        assert!(w.contains(ms("2027-06-04T14:00:00Z")));
        assert!(!w.contains(ms("2027-06-04T13:59:00Z")));
    }

    #[test]
    fn business_hours_and_a_dated_freeze() {
        let w = Window::parse(None, &["mon-fri".into()], Some("09:00-17:00"), &[]).unwrap();
        assert_eq!(w.describe(), "Mon–Fri 09:00–17:00 UTC");
        // Saturday 2026-12-05 10:00: next opening is Monday 09:00.
        assert_eq!(
            w.state(ms("2026-12-05T10:00:00Z")),
            "closed now, opens Mon 2026-12-07 09:00 UTC"
        );
        let freeze = Window::parse(
            Some("UTC"),
            &[],
            None,
            &["2026-12-21..2027-01-03".into(), "2027-02-01".into()],
        )
        .unwrap();
        assert!(freeze.contains(ms("2026-12-31T12:00:00Z")));
        assert!(!freeze.contains(ms("2027-01-04T00:00:00Z")));
        assert_eq!(
            freeze.state(ms("2026-12-31T12:00:00Z")),
            "open now, closes Mon 2027-01-04 00:00 UTC"
        );
        assert_eq!(
            freeze.describe(),
            "2026-12-21 to 2027-01-03, 2027-02-01 UTC"
        );
    }

    #[test]
    fn night_hours_wrap_past_midnight() {
        let w = Window::parse(None, &[], Some("22:00-06:00"), &[]).unwrap();
        assert!(w.contains(ms("2026-12-01T23:00:00Z")));
        assert!(w.contains(ms("2026-12-02T05:59:00Z")));
        assert!(!w.contains(ms("2026-12-02T06:00:00Z")));
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Window::parse(Some("Mars/Olympus"), &[], None, &[]).unwrap_err();
        assert_eq!(e.0, "timezone");
        let e = Window::parse(None, &["mon".into(), "funday".into()], None, &[]).unwrap_err();
        assert_eq!(e.0, "days[1]");
        let e = Window::parse(None, &[], Some("9-5"), &[]).unwrap_err();
        assert_eq!(e.0, "hours");
        let e = Window::parse(None, &[], None, &["2027-01-03..2026-12-21".into()]).unwrap_err();
        assert_eq!(e.0, "dates[0]");
        assert!(e.1.contains("ends before it starts"));
    }
}
