//! Whether a signed webhook was signed just now. Mailgun signs only a timestamp and a
//! token, SendGrid a timestamp and the body: without a window a request captured once
//! (from a log, a proxy, a misdirected post) stays valid forever. Both send the time as
//! Unix seconds; anything else, too old, or too far ahead, is refused.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Why a webhook's timestamp is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfresh {
    /// Not Unix seconds (digits only, at most 12 of them).
    Unreadable,
    /// Older than the window, by this many seconds in all.
    Stale { age: u64 },
    /// Later than the window allows, by this many seconds in all.
    Ahead { by: u64 },
}

impl std::fmt::Display for Unfresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfresh::Unreadable => write!(f, "the timestamp is not Unix seconds"),
            Unfresh::Stale { age } => write!(f, "stale: signed {age} s ago"),
            Unfresh::Ahead { by } => write!(f, "the timestamp is {by} s in the future"),
        }
    }
}

/// Reads a webhook timestamp (Unix seconds, ASCII digits only).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `timestamp` lies within `window` of `now`, either way (clocks drift both ways;
/// a time far ahead would keep a captured request valid until then).
pub fn check(timestamp: &str, now: DateTime<Utc>, window: Duration) -> Result<(), Unfresh> {
    let signed = parse_timestamp(timestamp).ok_or(Unfresh::Unreadable)?;
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    let age = now.timestamp().saturating_sub(signed);
    if age > window {
        Err(Unfresh::Stale { age: age as u64 })
    } else if age < -window {
        Err(Unfresh::Ahead {
            by: age.unsigned_abs(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(300);

    #[test]
    fn a_timestamp_from_2001_or_next_year_is_refused() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(check("1800000000", now, WINDOW), Ok(()));
        assert_eq!(check("1799999700", now, WINDOW), Ok(()));
        assert_eq!(
            check("1799999699", now, WINDOW),
            Err(Unfresh::Stale { age: 301 })
        );
        assert!(matches!(
            check("1000000000", now, WINDOW),
            Err(Unfresh::Stale { .. })
        ));
        assert_eq!(
            check("1800000301", now, WINDOW),
            Err(Unfresh::Ahead { by: 301 })
        );
        for junk in [
            "",
            "-1",
            "+1800000000",
            "1800000000.5",
            " 1800000000",
            "1e9",
            "0x6b",
        ] {
            assert_eq!(
                check(junk, now, WINDOW),
                Err(Unfresh::Unreadable),
                "{junk:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn within_the_window_is_fresh_and_beyond_it_is_not(
            now in 0i64..4_000_000_000,
            offset in -100_000i64..100_000,
            window in 0u64..10_000,
        ) {
            let at = DateTime::from_timestamp(now, 0).unwrap();
            let signed = now - offset;
            prop_assume!(signed >= 0);
            let verdict = check(&signed.to_string(), at, Duration::from_secs(window));
            prop_assert_eq!(verdict.is_ok(), offset.unsigned_abs() <= window);
        }

        #[test]
        fn any_text_is_read_without_panicking(text in ".{0,20}", now in 0i64..4_000_000_000) {
            let at = DateTime::from_timestamp(now, 0).unwrap();
            let verdict = check(&text, at, WINDOW);
            if parse_timestamp(&text).is_none() {
                prop_assert_eq!(verdict, Err(Unfresh::Unreadable));
            }
        }
    }
}
