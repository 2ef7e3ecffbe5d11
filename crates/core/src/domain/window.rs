//! Update windows: when a runner may start an update (`Sat 02:00-05:00 Europe/Berlin`).
//!
//! A window lies in the **wall-clock time of its zone**: it is open while the local time is
//! between its start (included) and its end (excluded) on one of its days (a window whose end is
//! before its start runs past midnight, into the next day). On the night the clocks go forward,
//! the part of a window inside the skipped hour does not exist (a window wholly inside it does not
//! open that night); on the night they go back, the repeated hour is inside the window both times.
//! The time-zone database is compiled into the binary (the container image has no zoneinfo), so
//! this is a pure function of its inputs.
//!
//! A window bounds when an attempt may **start**: an attempt under way when its window closes
//! finishes (stopping a deployment half way is worse than finishing it).

use std::fmt;
use std::sync::Arc;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::Millis;

/// The most windows one runner may have.
pub const WINDOWS_MAX: usize = 16;

/// The value that lifts every window (a runner's `desired/update-window` overriding its
/// configuration's): updates may start at any time.
pub const ANY: &str = "any";

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;

/// One window: days, a start and an end in minutes of the day, a zone.
#[derive(Clone)]
pub struct UpdateWindow {
    /// Bit `i` set: the window starts on day `i` (Monday = 0).
    days: u8,
    /// Minutes after midnight, `0..1440`.
    start: u16,
    /// Minutes after midnight, `1..=1440`; before `start`: the window runs past midnight.
    end: u16,
    zone: TimeZone,
    zone_name: Arc<str>,
}

impl fmt::Debug for UpdateWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpdateWindow({self})")
    }
}

impl PartialEq for UpdateWindow {
    fn eq(&self, other: &Self) -> bool {
        self.days == other.days
            && self.start == other.start
            && self.end == other.end
            && self.zone_name == other.zone_name
    }
}

impl Eq for UpdateWindow {}

impl fmt::Display for UpdateWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = if self.days == 0x7f {
            "daily".to_owned()
        } else {
            (0..7)
                .filter(|i| self.days & (1 << i) != 0)
                .map(|i| DAY_NAMES[i])
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "{days} {:02}:{:02}-{:02}:{:02} {}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60,
            self.zone_name
        )
    }
}

/// A runner's windows: open when any of them is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateWindows {
    windows: Vec<UpdateWindow>,
}

/// Why a window was refused; each names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Nothing, or a window that lasts no time (`Sat 02:00-02:00`).
    #[error("an empty window{0}: write days, a start, an end and a time zone, such as \"Sat 02:00-05:00 Europe/Berlin\" (or \"any\" for no window)")]
    Empty(String),
    /// A window that does not parse.
    #[error("{window:?} is not a window: {why} (expected days, a start, an end and a time zone, such as \"Sat 02:00-05:00 Europe/Berlin\")")]
    Invalid {
        /// The window as written.
        window: String,
        /// What is wrong.
        why: String,
    },
    /// A time zone the compiled-in database does not have.
    #[error("{zone:?} is not a time zone (IANA names such as Europe/Berlin, or UTC)")]
    UnknownZone {
        /// The zone as written.
        zone: String,
    },
    /// More than [`WINDOWS_MAX`] windows.
    #[error("{count} windows (at most {WINDOWS_MAX})")]
    TooMany {
        /// How many were written.
        count: usize,
    },
}

/// Parses `text`: windows separated by `;`, or [`ANY`]. `Ok(None)` for [`ANY`].
///
/// # Errors
/// A [`WindowError`] naming the window at fault.
pub fn parse_windows(text: &str) -> Result<Option<UpdateWindows>, WindowError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case(ANY) {
        return Ok(None);
    }
    let parts: Vec<&str> = text.split(';').map(str::trim).collect();
    if parts.iter().all(|p| p.is_empty()) {
        return Err(WindowError::Empty(String::new()));
    }
    if parts.len() > WINDOWS_MAX {
        return Err(WindowError::TooMany { count: parts.len() });
    }
    let windows = parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(parse_window)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(UpdateWindows { windows }))
}

fn parse_window(text: &str) -> Result<UpdateWindow, WindowError> {
    let invalid = |why: &str| WindowError::Invalid {
        window: text.to_owned(),
        why: why.to_owned(),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let [days, span, zone] = words.as_slice() else {
        return Err(invalid("three parts are needed, separated by spaces"));
    };
    let days = parse_days(days).ok_or_else(|| {
        invalid("the days are Mon..Sun, a range (Mon-Fri), a list (Sat,Sun) or daily")
    })?;
    let (start, end) = span
        .split_once('-')
        .ok_or_else(|| invalid("the hours are START-END, such as 02:00-05:00"))?;
    let start = parse_minutes(start, false)
        .ok_or_else(|| invalid("the start is not a time HH:MM (00:00 to 23:59)"))?;
    let end = parse_minutes(end, true)
        .ok_or_else(|| invalid("the end is not a time HH:MM (00:00 to 24:00)"))?;
    // `00:00` as an end is midnight, the day's end (`22:00-00:00`); a window from midnight to
    // midnight is written `00:00-24:00` (`00:00-00:00` lasts no time, as `02:00-02:00`).
    let end = if end == 0 && start != 0 {
        MINUTES_PER_DAY
    } else {
        end
    };
    if end == start {
        return Err(WindowError::Empty(format!(" ({text:?} lasts no time)")));
    }
    let zone_time = TimeZone::get(zone).map_err(|_| WindowError::UnknownZone {
        zone: (*zone).to_owned(),
    })?;
    Ok(UpdateWindow {
        days,
        start,
        end,
        zone: zone_time,
        zone_name: Arc::from(*zone),
    })
}

fn day_index(name: &str) -> Option<u8> {
    let name = name.get(..3)?;
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .and_then(|i| u8::try_from(i).ok())
}

fn parse_day_name(name: &str) -> Option<u8> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let index = day_index(name)?;
    let full = FULL[usize::from(index)];
    (name.len() == 3 || name.eq_ignore_ascii_case(full)).then_some(index)
}

fn parse_days(text: &str) -> Option<u8> {
    if text.eq_ignore_ascii_case("daily") || text == "*" {
        return Some(0x7f);
    }
    let mut days = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse_day_name(from)?, parse_day_name(to)?);
                let mut day = from;
                loop {
                    days |= 1 << day;
                    if day == to {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days |= 1 << parse_day_name(part)?,
        }
    }
    (days != 0).then_some(days)
}

fn parse_minutes(text: &str, end: bool) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    let digits = |text: &str| text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(hours) || !digits(minutes) {
        return None;
    }
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    let total = hours * 60 + minutes;
    let ok = minutes < 60 && (total < MINUTES_PER_DAY || (end && total == MINUTES_PER_DAY));
    ok.then_some(total)
}

fn timestamp(at: Millis) -> Option<Timestamp> {
    Timestamp::from_millisecond(i64::try_from(at.0).ok()?).ok()
}

fn millis(at: Timestamp) -> Option<Millis> {
    u64::try_from(at.as_millisecond()).ok().map(Millis)
}

impl UpdateWindow {
    fn starts_on(&self, date: Date) -> bool {
        let day = date.weekday().to_monday_zero_offset();
        self.days & (1 << day) != 0
    }

    /// Whether the window is open at `at`.
    #[must_use]
    pub fn is_open(&self, at: Millis) -> bool {
        let Some(at) = timestamp(at) else {
            return false;
        };
        let local = self.zone.to_datetime(at);
        let minute = u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute()))
            .unwrap_or_default();
        let today = self.starts_on(local.date());
        if self.start < self.end {
            return today && (self.start..self.end).contains(&minute);
        }
        // Past midnight: the evening of a start day, or the morning after one.
        let yesterday = local
            .date()
            .yesterday()
            .is_ok_and(|date| self.starts_on(date));
        (today && minute >= self.start) || (yesterday && minute < self.end)
    }

    /// The instants at which the window may open after `after`, in the next eight days: its
    /// starts (both readings of one the clocks repeat) and the zone's transitions (a start
    /// inside a skipped hour opens when the hour ends).
    fn candidates(&self, after: Millis, into: &mut Vec<Millis>) {
        let Some(at) = timestamp(after) else {
            return;
        };
        let today = self.zone.to_datetime(at).date();
        let start = Time::constant(0, 0, 0, 0)
            .checked_add(jiff::SignedDuration::from_mins(i64::from(self.start)))
            .unwrap_or_default();
        for offset in -1..=8 {
            let Ok(date) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            if !self.starts_on(date) {
                continue;
            }
            let local = DateTime::from_parts(date, start);
            let ambiguous = self.zone.to_ambiguous_timestamp(local);
            for reading in [ambiguous.earlier(), ambiguous.later()] {
                if let Some(instant) = reading.ok().and_then(millis) {
                    into.push(instant);
                }
            }
        }
        let horizon = after.after(std::time::Duration::from_hours(9 * 24));
        for transition in self.zone.following(at) {
            match millis(transition.timestamp()) {
                Some(instant) if instant <= horizon => into.push(instant),
                _ => break,
            }
        }
    }
}

impl UpdateWindows {
    /// Whether an update may start at `at`.
    #[must_use]
    pub fn is_open(&self, at: Millis) -> bool {
        self.windows.iter().any(|w| w.is_open(at))
    }

    /// When one of the windows opens next (`at` itself when one is open); `None` when none
    /// opens in the next eight days (a window only inside a skipped hour, for one).
    #[must_use]
    pub fn next_open(&self, at: Millis) -> Option<Millis> {
        if self.is_open(at) {
            return Some(at);
        }
        let mut candidates = Vec::new();
        for window in &self.windows {
            window.candidates(at, &mut candidates);
        }
        candidates
            .into_iter()
            .filter(|c| *c > at && self.is_open(*c))
            .min()
    }

    /// The windows.
    #[must_use]
    pub fn windows(&self) -> &[UpdateWindow] {
        &self.windows
    }
}

impl fmt::Display for UpdateWindows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.windows.iter().map(ToString::to_string).collect();
        f.write_str(&text.join("; "))
    }
}

/// Where a runner stands with its windows at `now`, in words for the rule and `status`.
#[must_use]
pub fn describe(windows: &UpdateWindows, now: Millis) -> String {
    if windows.is_open(now) {
        return format!("inside its update window ({windows})");
    }
    match windows.next_open(now) {
        Some(at) => format!("outside its update window ({windows}): it opens at {at}"),
        None => {
            format!("outside its update window ({windows}): it does not open in the next 8 days")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC instant written as RFC 3339.
    fn at(text: &str) -> Millis {
        let ts: Timestamp = text.parse().unwrap();
        Millis(u64::try_from(ts.as_millisecond()).unwrap())
    }

    fn windows(text: &str) -> UpdateWindows {
        parse_windows(text).unwrap().unwrap()
    }

    #[test]
    fn a_window_opens_in_its_zones_wall_clock_time_on_its_days() {
        // 2026-12-05 is a Saturday; Berlin is UTC+1 in winter.
        let w = windows("Sat 02:00-05:00 Europe/Berlin");
        assert!(!w.is_open(at("2026-12-05T00:59:59Z")));
        assert!(w.is_open(at("2026-12-05T01:00:00Z")));
        assert!(w.is_open(at("2026-12-05T03:59:59Z")));
        assert!(!w.is_open(at("2026-12-05T04:00:00Z")));
        assert!(!w.is_open(at("2026-12-06T01:30:00Z")), "Sunday");
        assert_eq!(
            w.next_open(at("2026-12-01T12:00:00Z")),
            Some(at("2026-12-05T01:00:00Z"))
        );
        assert_eq!(
            w.next_open(at("2026-12-05T02:00:00Z")),
            Some(at("2026-12-05T02:00:00Z")),
            "open now"
        );
        assert_eq!(
            w.next_open(at("2026-12-05T04:00:00Z")),
            Some(at("2026-12-12T01:00:00Z"))
        );
        assert_eq!(w.to_string(), "Sat 02:00-05:00 Europe/Berlin");
    }

    #[test]
    fn ranges_lists_midnight_and_several_windows() {
        let w = windows("Mon-Fri 22:00-02:00 UTC; sat,sun 10:00-11:00 UTC");
        // Friday 23:00 and the Saturday morning after it: inside the Friday night window.
        assert!(w.is_open(at("2026-12-04T23:00:00Z")));
        assert!(w.is_open(at("2026-12-05T01:59:00Z")));
        assert!(!w.is_open(at("2026-12-05T02:00:00Z")));
        assert!(w.is_open(at("2026-12-05T10:30:00Z")));
        // Monday 01:00 follows Sunday, not a start day of the night window.
        assert!(!w.is_open(at("2026-12-07T01:00:00Z")));
        assert_eq!(
            w.next_open(at("2026-12-05T11:00:00Z")),
            Some(at("2026-12-06T10:00:00Z"))
        );
        assert!(windows("daily 00:00-24:00 UTC").is_open(at("2026-12-07T13:00:00Z")));
        assert!(windows("Fri-Mon 01:00-02:00 UTC").is_open(at("2026-12-07T01:00:00Z")));
        assert_eq!(parse_windows(" any ").unwrap(), None);
    }

    #[test]
    fn daylight_saving_skips_the_missing_hour_and_repeats_the_doubled_one() {
        // Berlin springs forward on Sunday 2026-03-29 at 02:00 local (01:00Z) to 03:00.
        let straddling = windows("Sun 02:30-04:00 Europe/Berlin");
        assert!(!straddling.is_open(at("2026-03-29T00:59:00Z")), "01:59 CET");
        assert!(straddling.is_open(at("2026-03-29T01:00:00Z")), "03:00 CEST");
        assert!(
            !straddling.is_open(at("2026-03-29T02:00:00Z")),
            "04:00 CEST"
        );
        assert_eq!(
            straddling.next_open(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z")),
            "opens when the skipped hour ends"
        );
        let inside = windows("Sun 02:00-03:00 Europe/Berlin");
        assert_eq!(
            inside.next_open(at("2026-03-28T12:00:00Z")),
            Some(at("2026-04-05T00:00:00Z")),
            "a window wholly inside the skipped hour waits a week"
        );
        // Berlin falls back on Sunday 2026-10-25 at 03:00 CEST (01:00Z) to 02:00 CET.
        let doubled = windows("Sun 02:00-03:00 Europe/Berlin");
        assert_eq!(
            doubled.next_open(at("2026-10-24T12:00:00Z")),
            Some(at("2026-10-25T00:00:00Z")),
            "the first 02:00"
        );
        assert!(doubled.is_open(at("2026-10-25T00:30:00Z")), "02:30 CEST");
        assert!(doubled.is_open(at("2026-10-25T01:30:00Z")), "02:30 CET");
        assert!(!doubled.is_open(at("2026-10-25T02:00:00Z")), "03:00 CET");
    }

    #[test]
    fn bad_windows_are_refused_by_name() {
        let refused = |text: &str| parse_windows(text).unwrap_err();
        assert!(matches!(refused(""), WindowError::Empty(_)));
        assert!(matches!(refused(" ; "), WindowError::Empty(_)));
        assert!(matches!(
            refused("Sat 02:00-02:00 UTC"),
            WindowError::Empty(_)
        ));
        assert!(matches!(
            refused("Sat 00:00-00:00 UTC"),
            WindowError::Empty(_)
        ));
        assert!(matches!(
            refused("Sat 02:00-05:00 Mars/Olympus"),
            WindowError::UnknownZone { .. }
        ));
        for bad in [
            "Sat 02:00-05:00",
            "Caturday 02:00-05:00 UTC",
            "Sat 2:00-05:00 UTC",
            "Sat 02:00-25:00 UTC",
            "Sat 24:00-02:00 UTC",
            "Sat 02:60-03:00 UTC",
            "Sat 02:00 UTC",
            "Sat,,Sun 02:00-03:00 UTC",
            "Sat +2:00-05:00 UTC",
        ] {
            assert!(
                matches!(refused(bad), WindowError::Invalid { .. }),
                "{bad}: {:?}",
                parse_windows(bad)
            );
        }
        let many = vec!["Sat 02:00-03:00 UTC"; WINDOWS_MAX + 1].join(";");
        assert!(matches!(refused(&many), WindowError::TooMany { .. }));
        assert!(refused("Sat 02:00-05:00 Mars/Olympus")
            .to_string()
            .contains("Mars/Olympus"));
    }
}
