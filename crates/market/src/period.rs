//! Settlement periods in UTC, from Unix milliseconds.
//!
//! A period is a half-open interval `[start_ms, end_ms)`. The default rule
//! is the calendar month in UTC (what providers and builders expect on a
//! payout); a fixed length from an origin serves tests, simulations and
//! networks that settle daily or hourly.
//!
//! Calendar arithmetic is Howard Hinnant's `days_from_civil` /
//! `civil_from_days` (proleptic Gregorian calendar, exact for every day a
//! `u64` of milliseconds can name), so no date crate and no clock are
//! needed: the caller passes the time.
//!
//! Lookups return a `Result` rather than a bare [`Period`]: a fixed rule of
//! length zero, a moment before a fixed rule's first period after the Unix
//! epoch, or a month ending after `u64::MAX` milliseconds has no period,
//! and that is an error, not a panic.

use serde::{Deserialize, Serialize};

use crate::MarketError;

/// Milliseconds in a UTC day (UTC days have no leap seconds in Unix time).
pub const MS_PER_DAY: u64 = 86_400_000;

/// How time is cut into settlement periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PeriodRule {
    /// Calendar months in UTC: `[YYYY-MM-01T00:00Z, next month's first day)`.
    #[default]
    CalendarMonth,
    /// Periods of `length_ms` on the grid `origin_ms + k × length_ms` (k any
    /// integer: the grid extends before the origin too).
    Fixed { length_ms: u64, origin_ms: u64 },
}

/// A settlement period: `[start_ms, end_ms)` in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Period {
    /// First millisecond in the period.
    pub start_ms: u64,
    /// First millisecond after the period (exclusive).
    pub end_ms: u64,
}

impl PeriodRule {
    /// The period that contains `ms`.
    pub fn period_of(&self, ms: u64) -> Result<Period, MarketError> {
        match *self {
            PeriodRule::CalendarMonth => {
                let days = ms / MS_PER_DAY;
                let (y, m, _) = civil_from_days(days_i64(days)?);
                let start = month_start_ms(y, m)?;
                let end = if m == 12 {
                    month_start_ms(y + 1, 1)?
                } else {
                    month_start_ms(y, m + 1)?
                };
                Ok(Period {
                    start_ms: start,
                    end_ms: end,
                })
            }
            PeriodRule::Fixed {
                length_ms,
                origin_ms,
            } => {
                if length_ms == 0 {
                    return Err(MarketError::Invalid {
                        field: "period length",
                        reason: "must be at least 1 ms".into(),
                    });
                }
                let phase = origin_ms % length_ms;
                if ms < phase {
                    return Err(MarketError::Invalid {
                        field: "period",
                        reason: format!(
                            "{ms} ms is before the first period that starts after the Unix epoch ({phase} ms)"
                        ),
                    });
                }
                let start_ms = ms - (ms - phase) % length_ms;
                let end_ms = start_ms
                    .checked_add(length_ms)
                    .ok_or_else(|| beyond_u64("period end"))?;
                Ok(Period { start_ms, end_ms })
            }
        }
    }
}

impl Period {
    /// Whether `ms` falls in the period.
    pub fn contains(&self, ms: u64) -> bool {
        self.start_ms <= ms && ms < self.end_ms
    }

    /// Its length in milliseconds (zero for a malformed period).
    pub fn len_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }

    /// The period that follows this one under `rule` (for a period made by
    /// `rule`: the one starting at `end_ms`).
    pub fn next(&self, rule: &PeriodRule) -> Result<Period, MarketError> {
        rule.period_of(self.end_ms)
    }

    /// `"2026-11"` when the period is exactly one UTC calendar month,
    /// otherwise `"<start_ms>-<end_ms>"`. Derived from the period alone, so
    /// a statement names its period the same way without knowing the rule.
    pub fn label(&self) -> String {
        if let Ok(month) = PeriodRule::CalendarMonth.period_of(self.start_ms)
            && month == *self
            && let Ok(days) = days_i64(self.start_ms / MS_PER_DAY)
        {
            let (y, m, _) = civil_from_days(days);
            return format!("{y:04}-{m:02}");
        }
        format!("{}-{}", self.start_ms, self.end_ms)
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d`
/// (Hinnant's `days_from_civil`; `m` in 1..=12, `d` in 1..=31).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400; // [0, 399]
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of a day
/// counted from 1970-01-01 (Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction (see the bounds above).
    (y, m as u32, d as u32)
}

fn month_start_ms(y: i64, m: u32) -> Result<u64, MarketError> {
    let days = days_from_civil(y, m, 1);
    u64::try_from(days)
        .ok()
        .and_then(|d| d.checked_mul(MS_PER_DAY))
        .ok_or_else(|| beyond_u64("month boundary"))
}

fn days_i64(days: u64) -> Result<i64, MarketError> {
    // u64::MAX ms is about 2.1e11 days: always fits.
    i64::try_from(days).map_err(|_| beyond_u64("day count"))
}

fn beyond_u64(what: &str) -> MarketError {
    MarketError::Invalid {
        field: "period",
        reason: format!("{what} is beyond u64::MAX milliseconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Unix ms of `y-m-d` at midnight UTC.
    fn ms(y: i64, m: u32, d: u32) -> u64 {
        days_from_civil(y, m, d) as u64 * MS_PER_DAY
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // `date -u -d 2026-11-01 +%s` = 1793491200
        assert_eq!(ms(2026, 11, 1), 1_793_491_200_000);
        // `date -u -d 2000-02-29 +%s` = 951782400
        assert_eq!(ms(2000, 2, 29), 951_782_400_000);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(days_from_civil(1600, 3, 1), -135_080);
    }

    #[test]
    fn calendar_month_and_label() {
        let rule = PeriodRule::default();
        let p = rule.period_of(ms(2026, 11, 24) + 12_345).unwrap();
        assert_eq!(p.start_ms, ms(2026, 11, 1));
        assert_eq!(p.end_ms, ms(2026, 12, 1));
        assert_eq!(p.label(), "2026-11");
        // The first and the last millisecond of the month, and the next one.
        assert_eq!(rule.period_of(p.start_ms).unwrap(), p);
        assert_eq!(rule.period_of(p.end_ms - 1).unwrap(), p);
        assert_ne!(rule.period_of(p.end_ms).unwrap(), p);
        assert!(p.contains(p.start_ms) && !p.contains(p.end_ms));
    }

    #[test]
    fn december_rolls_over_to_january() {
        let rule = PeriodRule::CalendarMonth;
        let dec = rule.period_of(ms(2026, 12, 31) + MS_PER_DAY - 1).unwrap();
        assert_eq!(dec.label(), "2026-12");
        assert_eq!(dec.end_ms, ms(2027, 1, 1));
        let jan = dec.next(&rule).unwrap();
        assert_eq!(jan.label(), "2027-01");
        assert_eq!(jan.start_ms, dec.end_ms);
        assert_eq!(jan.len_ms(), 31 * MS_PER_DAY);
    }

    #[test]
    fn february_in_leap_and_common_years() {
        let rule = PeriodRule::CalendarMonth;
        for (year, days) in [
            (2024, 29), // divisible by 4
            (2025, 28),
            (2000, 29), // divisible by 400
            (2100, 28), // by 100, not 400
            (2400, 29),
        ] {
            let feb = rule.period_of(ms(year, 2, 10)).unwrap();
            assert_eq!(feb.len_ms(), days * MS_PER_DAY, "{year}");
            assert_eq!(feb.label(), format!("{year}-02"));
            assert_eq!(feb.next(&rule).unwrap().label(), format!("{year}-03"));
        }
        // 2024-02-29 is in February, the next day in March.
        assert_eq!(rule.period_of(ms(2024, 2, 29)).unwrap().label(), "2024-02");
        assert_eq!(rule.period_of(ms(2024, 3, 1)).unwrap().label(), "2024-03");
    }

    #[test]
    fn a_whole_year_of_months_tiles_time() {
        let rule = PeriodRule::CalendarMonth;
        let mut p = rule.period_of(ms(1970, 1, 1)).unwrap();
        assert_eq!(p.start_ms, 0);
        let mut total = 0;
        for _ in 0..12 * 400 {
            let next = p.next(&rule).unwrap();
            assert_eq!(next.start_ms, p.end_ms);
            total += p.len_ms();
            p = next;
        }
        // 400 Gregorian years have exactly 146,097 days.
        assert_eq!(total, 146_097 * MS_PER_DAY);
        assert_eq!(p.label(), "2370-01");
    }

    #[test]
    fn fixed_periods() {
        let rule = PeriodRule::Fixed {
            length_ms: 1_000,
            origin_ms: 10_250,
        };
        let p = rule.period_of(10_250).unwrap();
        assert_eq!((p.start_ms, p.end_ms), (10_250, 11_250));
        assert_eq!(p.label(), "10250-11250");
        assert_eq!(rule.period_of(11_249).unwrap(), p);
        assert_eq!(p.next(&rule).unwrap().start_ms, 11_250);
        // Before the origin the grid continues.
        assert_eq!(rule.period_of(300).unwrap().start_ms, 250);
        // Before the first period after the epoch: no period.
        assert!(rule.period_of(249).is_err());
        // A zero length is refused, the far end of time too.
        let zero = PeriodRule::Fixed {
            length_ms: 0,
            origin_ms: 0,
        };
        assert!(zero.period_of(5).is_err());
        let day = PeriodRule::Fixed {
            length_ms: MS_PER_DAY,
            origin_ms: 0,
        };
        assert!(day.period_of(u64::MAX).is_err());
        // A fixed period that happens to be a calendar month is labelled as one.
        let p = Period {
            start_ms: ms(2026, 11, 1),
            end_ms: ms(2026, 12, 1),
        };
        assert_eq!(p.label(), "2026-11");
    }

    #[test]
    fn the_far_end_of_time_is_an_error_not_a_panic() {
        assert!(PeriodRule::CalendarMonth.period_of(u64::MAX).is_err());
        assert!(PeriodRule::CalendarMonth.period_of(u64::MAX / 2).is_ok());
    }

    #[test]
    fn serde_shape() {
        let json = serde_json::to_string(&PeriodRule::default()).unwrap();
        assert_eq!(json, r#"{"kind":"calendar_month"}"#);
        let fixed: PeriodRule =
            serde_json::from_str(r#"{"kind":"fixed","length_ms":5,"origin_ms":1}"#).unwrap();
        assert_eq!(
            fixed,
            PeriodRule::Fixed {
                length_ms: 5,
                origin_ms: 1
            }
        );
    }

    proptest! {
        #[test]
        fn civil_round_trips(days in -1_000_000_000i64..1_000_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn every_moment_is_in_its_period(t in 0u64..=u64::MAX / 2, len in 1u64..=10_000_000_000, origin in any::<u64>()) {
            let p = PeriodRule::CalendarMonth.period_of(t).unwrap();
            prop_assert!(p.contains(t));
            let (_, _, day) = civil_from_days(days_i64(p.start_ms / MS_PER_DAY).unwrap());
            prop_assert_eq!(day, 1);
            prop_assert_eq!(p.start_ms % MS_PER_DAY, 0);
            prop_assert!((28 * MS_PER_DAY..=31 * MS_PER_DAY).contains(&p.len_ms()));
            let rule = PeriodRule::Fixed { length_ms: len, origin_ms: origin };
            if let Ok(f) = rule.period_of(t) {
                prop_assert!(f.contains(t));
                prop_assert_eq!(f.len_ms(), len);
                prop_assert_eq!(f.start_ms % len, origin % len);
                prop_assert_eq!(f.next(&rule).unwrap().start_ms, f.end_ms);
            } else {
                prop_assert!(t < origin % len);
            }
        }
    }
}
