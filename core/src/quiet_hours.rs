//! Quiet hours: a nightly window, in a school's own time zone, when non-urgent messages
//! wait. A message composed inside the window is delivered when it ends; emergencies never
//! wait.

use chrono::{DateTime, Duration, LocalResult, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A daily window `[start, end)` in minutes after local midnight; `start > end` wraps past
/// midnight (21:00–07:00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub timezone: Tz,
    pub start_minute: u16,
    pub end_minute: u16,
}

/// A window that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidQuietHours {
    #[error("unknown time zone {0:?} (expected an IANA name such as America/Chicago)")]
    TimeZone(String),
    #[error("{0:?} is not a time of day (expected HH:MM)")]
    Time(String),
    #[error("quiet hours must not start and end at the same time")]
    Empty,
}

impl QuietHours {
    pub fn new(
        timezone: &str,
        start_minute: u16,
        end_minute: u16,
    ) -> Result<Self, InvalidQuietHours> {
        let timezone = timezone
            .parse::<Tz>()
            .map_err(|_| InvalidQuietHours::TimeZone(timezone.to_owned()))?;
        Self::check_window(start_minute, end_minute)?;
        Ok(Self {
            timezone,
            start_minute,
            end_minute,
        })
    }

    /// Whether `[start, end)`, in minutes after midnight, is a window: both times of day,
    /// and not the same.
    pub fn check_window(start_minute: u16, end_minute: u16) -> Result<(), InvalidQuietHours> {
        if start_minute >= 1440 || end_minute >= 1440 {
            return Err(InvalidQuietHours::Time(format!(
                "{start_minute}/{end_minute} minutes"
            )));
        }
        if start_minute == end_minute {
            return Err(InvalidQuietHours::Empty);
        }
        Ok(())
    }

    /// `HH:MM` of minutes after midnight (what [`parse_time`](Self::parse_time) reads).
    pub fn format_time(minute: u16) -> String {
        format!("{:02}:{:02}", minute / 60, minute % 60)
    }

    /// Minutes after midnight of an `HH:MM` time.
    pub fn parse_time(text: &str) -> Result<u16, InvalidQuietHours> {
        let time = NaiveTime::parse_from_str(text.trim(), "%H:%M")
            .map_err(|_| InvalidQuietHours::Time(text.to_owned()))?;
        Ok((time.hour() * 60 + time.minute()) as u16)
    }

    fn contains(&self, minute: u16) -> bool {
        if self.start_minute < self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }

    /// When a message composed at `now` may be delivered: `None` if now is outside the
    /// window, else the moment the window ends (the first instant at or after the local end
    /// time; a daylight-saving gap moves it forward, never back).
    pub fn ends_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.timezone);
        let minute = (local.hour() * 60 + local.minute()) as u16;
        if !self.contains(minute) {
            return None;
        }
        let end = NaiveTime::from_hms_opt(
            u32::from(self.end_minute / 60),
            u32::from(self.end_minute % 60),
            0,
        )
        .expect("minutes below 1440");
        let mut day = local.date_naive();
        if minute >= self.end_minute {
            day = day.succ_opt()?;
        }
        let mut wall = day.and_time(end);
        // A local end time skipped by a DST change: take the first minute that exists.
        for _ in 0..180 {
            match self.timezone.from_local_datetime(&wall) {
                LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(first, _) => return Some(first.with_timezone(&Utc)),
                LocalResult::None => wall += Duration::minutes(1),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_message_at_night_waits_for_the_morning_in_the_schools_zone() {
        let chicago = QuietHours::new("America/Chicago", 21 * 60, 7 * 60).unwrap();
        // 03:30 UTC on 2026-11-24 is 21:30 on the 23rd in Chicago (UTC−6).
        assert_eq!(
            chicago.ends_after(utc("2026-11-24T03:30:00Z")),
            Some(utc("2026-11-24T13:00:00Z"))
        );
        // 05:00 in Chicago: the same morning.
        assert_eq!(
            chicago.ends_after(utc("2026-11-24T11:00:00Z")),
            Some(utc("2026-11-24T13:00:00Z"))
        );
        // Noon in Chicago: no wait.
        assert_eq!(chicago.ends_after(utc("2026-11-24T18:00:00Z")), None);
        // Exactly at the end: no wait.
        assert_eq!(chicago.ends_after(utc("2026-11-24T13:00:00Z")), None);
    }

    #[test]
    fn an_end_time_skipped_by_daylight_saving_moves_forward() {
        // New York springs forward on 2026-03-08: 02:00–03:00 does not exist.
        let ny = QuietHours::new("America/New_York", 22 * 60, 2 * 60 + 30).unwrap();
        let end = ny.ends_after(utc("2026-03-08T05:00:00Z")).unwrap(); // 00:00 EST
        assert_eq!(
            end,
            utc("2026-03-08T07:00:00Z"),
            "03:00 EDT, the first minute after the gap"
        );
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        assert_eq!(
            QuietHours::new("Mars/Olympus", 0, 60),
            Err(InvalidQuietHours::TimeZone("Mars/Olympus".into()))
        );
        assert_eq!(
            QuietHours::new("UTC", 60, 60),
            Err(InvalidQuietHours::Empty)
        );
        assert_eq!(QuietHours::parse_time("21:15"), Ok(21 * 60 + 15));
        assert!(QuietHours::parse_time("25:00").is_err());
    }

    fn zone() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "UTC",
            "America/Chicago",
            "America/New_York",
            "Europe/London",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ])
    }

    proptest! {
        /// Whatever the zone, window and moment: a wait ends in the future, within a day,
        /// outside the window; and there is a wait exactly when now is inside the window.
        #[test]
        fn a_wait_ends_after_now_outside_the_window_within_a_day(
            tz in zone(), start in 0u16..1440, end in 0u16..1440, seconds in 1_700_000_000i64..1_900_000_000,
        ) {
            prop_assume!(start != end);
            let quiet = QuietHours::new(tz, start, end).unwrap();
            let now = DateTime::from_timestamp(seconds, 0).unwrap();
            let local = now.with_timezone(&quiet.timezone);
            let inside = quiet.contains((local.hour() * 60 + local.minute()) as u16);
            match quiet.ends_after(now) {
                None => prop_assert!(!inside),
                Some(until) => {
                    prop_assert!(inside);
                    prop_assert!(until > now);
                    prop_assert!(until - now <= Duration::hours(26));
                    let at = until.with_timezone(&quiet.timezone);
                    prop_assert!(!quiet.contains((at.hour() * 60 + at.minute()) as u16));
                }
            }
        }
    }
}
