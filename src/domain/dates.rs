//! Dates as users write them, working days and the England and Wales bank holidays.

use chrono::{Datelike, Months, NaiveDate, Weekday};

/// Accepts `YYYY-MM-DD` and `DD/MM/YYYY`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let t = s.trim();
    // The common exact form without chrono's format interpreter (a register has a date a row).
    if let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = t.as_bytes()
        && [y1, y2, y3, y4, m1, m2, d1, d2]
            .iter()
            .all(|b| b.is_ascii_digit())
    {
        let n = |digits: &[&u8]| {
            digits
                .iter()
                .fold(0u32, |n, d| n * 10 + u32::from(**d - b'0'))
        };
        if let Some(date) =
            NaiveDate::from_ymd_opt(n(&[y1, y2, y3, y4]) as i32, n(&[m1, m2]), n(&[d1, d2]))
        {
            return Ok(date);
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(t, "%d/%m/%Y"))
        .map_err(|_| format!("`{t}` is not a date: write YYYY-MM-DD or DD/MM/YYYY"))
}

/// Days on which nobody works: weekends and the England and Wales bank holidays, computed for
/// any year by the standing rules, with the one-off days of config (`bank_holidays.extra`: a
/// coronation, a moved May holiday) added and `bank_holidays.cancelled` taken away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calendar {
    pub extra: Vec<NaiveDate>,
    pub cancelled: Vec<NaiveDate>,
}

/// Easter Sunday of `year` (the Gregorian computus, anonymous algorithm).
pub fn easter_sunday(year: i32) -> NaiveDate {
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    NaiveDate::from_ymd_opt(year, month as u32, day as u32).unwrap_or_default()
}

fn ymd(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap_or_default()
}

/// The first `weekday` of a month, or the last when `last`.
fn nth_weekday(year: i32, month: u32, weekday: Weekday, last: bool) -> NaiveDate {
    if last {
        let next = if month == 12 {
            ymd(year + 1, 1, 1)
        } else {
            ymd(year, month + 1, 1)
        };
        let mut d = next.pred_opt().unwrap_or(next);
        while d.weekday() != weekday {
            d = d.pred_opt().unwrap_or(d);
        }
        d
    } else {
        let mut d = ymd(year, month, 1);
        while d.weekday() != weekday {
            d = d.succ_opt().unwrap_or(d);
        }
        d
    }
}

/// The next weekday that is not already taken (a substitute day).
fn substitute(mut d: NaiveDate, taken: &[NaiveDate]) -> NaiveDate {
    while matches!(d.weekday(), Weekday::Sat | Weekday::Sun) || taken.contains(&d) {
        d = d.succ_opt().unwrap_or(d);
    }
    d
}

/// The standing bank holidays of England and Wales in `year`, with their substitute days.
pub fn standing_bank_holidays(year: i32) -> [NaiveDate; 8] {
    let easter = easter_sunday(year);
    let christmas = substitute(ymd(year, 12, 25), &[]);
    // Boxing Day takes the next free weekday after Christmas (or its substitute).
    let boxing = substitute(ymd(year, 12, 26), &[christmas]);
    // Christmas on a Sunday: Boxing Day keeps Monday 26 and Christmas moves to Tuesday 27.
    let (christmas, boxing) = if ymd(year, 12, 25).weekday() == Weekday::Sun {
        (ymd(year, 12, 27), ymd(year, 12, 26))
    } else {
        (christmas, boxing)
    };
    [
        substitute(ymd(year, 1, 1), &[]),
        easter - chrono::Days::new(2),
        easter + chrono::Days::new(1),
        nth_weekday(year, 5, Weekday::Mon, false),
        nth_weekday(year, 5, Weekday::Mon, true),
        nth_weekday(year, 8, Weekday::Mon, true),
        christmas,
        boxing,
    ]
}

impl Calendar {
    pub fn is_bank_holiday(&self, d: NaiveDate) -> bool {
        if self.extra.contains(&d) {
            return true;
        }
        !self.cancelled.contains(&d) && standing_bank_holidays(d.year()).contains(&d)
    }

    pub fn is_working_day(&self, d: NaiveDate) -> bool {
        !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !self.is_bank_holiday(d)
    }

    /// The `n`th working day after `from` (which itself does not count).
    pub fn add_working_days(&self, from: NaiveDate, n: u32) -> NaiveDate {
        let mut d = from;
        let mut left = n;
        while left > 0 {
            d = d.succ_opt().unwrap_or(d);
            if self.is_working_day(d) {
                left -= 1;
            }
        }
        d
    }
}

/// True when `completed` is more than three calendar months before `received`.
pub fn older_than_three_months(completed: NaiveDate, received: NaiveDate) -> bool {
    received
        .checked_sub_months(Months::new(3))
        .is_some_and(|limit| completed < limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn both_date_forms() {
        assert_eq!(parse_date("2026-11-20").unwrap(), d(2026, 11, 20));
        assert_eq!(parse_date(" 20/11/2026 ").unwrap(), d(2026, 11, 20));
        assert!(parse_date("11/20/2026").is_err());
        assert!(parse_date("2026-02-30").is_err());
        assert!(parse_date("yesterday").unwrap_err().contains("YYYY-MM-DD"));
    }

    #[test]
    fn fifth_working_day() {
        let cal = Calendar::default();
        // Friday 27 November 2026 → Mon 30, Tue 1, Wed 2, Thu 3, Fri 4 December.
        assert_eq!(cal.add_working_days(d(2026, 11, 27), 5), d(2026, 12, 4));
        // Over Christmas 2026: 25 and 28 December are bank holidays.
        // Wed 23 Dec → Thu 24, Tue 29, Wed 30, Thu 31, (Fri 1 Jan holiday) Mon 4 Jan.
        assert_eq!(cal.add_working_days(d(2026, 12, 23), 5), d(2027, 1, 4));
        // Received on a Saturday.
        assert_eq!(cal.add_working_days(d(2026, 11, 28), 5), d(2026, 12, 4));
        // Extra holidays from config count too; cancelled ones are working days.
        let cal = Calendar {
            extra: vec![d(2026, 11, 30)],
            cancelled: vec![d(2026, 12, 28)],
        };
        assert_eq!(cal.add_working_days(d(2026, 11, 27), 1), d(2026, 12, 1));
        assert_eq!(cal.add_working_days(d(2026, 12, 24), 1), d(2026, 12, 28));
    }

    /// The dates published for England and Wales, 2019–2027, against the rules plus the
    /// one-off changes an operator writes in `bank_holidays.extra` / `cancelled`.
    #[test]
    fn published_bank_holidays_2019_to_2027() {
        let published: &[(i32, &[(u32, u32)])] = &[
            (
                2019,
                &[
                    (1, 1),
                    (4, 19),
                    (4, 22),
                    (5, 6),
                    (5, 27),
                    (8, 26),
                    (12, 25),
                    (12, 26),
                ],
            ),
            // Early May moved to Friday 8 May (VE Day 75); Boxing Day on a Saturday.
            (
                2020,
                &[
                    (1, 1),
                    (4, 10),
                    (4, 13),
                    (5, 8),
                    (5, 25),
                    (8, 31),
                    (12, 25),
                    (12, 28),
                ],
            ),
            // Christmas on a Saturday, Boxing Day on a Sunday.
            (
                2021,
                &[
                    (1, 1),
                    (4, 2),
                    (4, 5),
                    (5, 3),
                    (5, 31),
                    (8, 30),
                    (12, 27),
                    (12, 28),
                ],
            ),
            // Spring moved to Thursday 2 June, the Jubilee on 3 June, the State Funeral on
            // 19 September; Christmas on a Sunday.
            (
                2022,
                &[
                    (1, 3),
                    (4, 15),
                    (4, 18),
                    (5, 2),
                    (6, 2),
                    (6, 3),
                    (8, 29),
                    (9, 19),
                    (12, 26),
                    (12, 27),
                ],
            ),
            // The Coronation on Monday 8 May.
            (
                2023,
                &[
                    (1, 2),
                    (4, 7),
                    (4, 10),
                    (5, 1),
                    (5, 8),
                    (5, 29),
                    (8, 28),
                    (12, 25),
                    (12, 26),
                ],
            ),
            (
                2024,
                &[
                    (1, 1),
                    (3, 29),
                    (4, 1),
                    (5, 6),
                    (5, 27),
                    (8, 26),
                    (12, 25),
                    (12, 26),
                ],
            ),
            (
                2025,
                &[
                    (1, 1),
                    (4, 18),
                    (4, 21),
                    (5, 5),
                    (5, 26),
                    (8, 25),
                    (12, 25),
                    (12, 26),
                ],
            ),
            (
                2026,
                &[
                    (1, 1),
                    (4, 3),
                    (4, 6),
                    (5, 4),
                    (5, 25),
                    (8, 31),
                    (12, 25),
                    (12, 28),
                ],
            ),
            (
                2027,
                &[
                    (1, 1),
                    (3, 26),
                    (3, 29),
                    (5, 3),
                    (5, 31),
                    (8, 30),
                    (12, 27),
                    (12, 28),
                ],
            ),
        ];
        let cal = Calendar {
            extra: vec![
                d(2020, 5, 8),
                d(2022, 6, 2),
                d(2022, 6, 3),
                d(2022, 9, 19),
                d(2023, 5, 8),
            ],
            cancelled: vec![d(2020, 5, 4), d(2022, 5, 30)],
        };
        for (year, days) in published {
            let want: Vec<NaiveDate> = days.iter().map(|&(m, day)| d(*year, m, day)).collect();
            let mut got = Vec::new();
            let mut day = d(*year, 1, 1);
            while day.year() == *year {
                if cal.is_bank_holiday(day) {
                    got.push(day);
                }
                day = day.succ_opt().unwrap();
            }
            assert_eq!(got, want, "{year}");
        }
        // Without the one-offs the rules give the usual days.
        let plain = Calendar::default();
        assert!(plain.is_bank_holiday(d(2020, 5, 4)));
        assert!(!plain.is_bank_holiday(d(2023, 5, 8)));
        // Any year: Easter 2100 is 28 March.
        assert_eq!(easter_sunday(2100), d(2100, 3, 28));
        assert!(plain.is_bank_holiday(d(2100, 3, 26)));
    }

    #[test]
    fn three_calendar_months() {
        let received = d(2026, 11, 28);
        assert!(!older_than_three_months(d(2026, 8, 28), received));
        assert!(older_than_three_months(d(2026, 8, 27), received));
        // 31 May minus three months is 28 February (clamped), not 3 March.
        assert!(!older_than_three_months(d(2026, 2, 28), d(2026, 5, 31)));
        assert!(older_than_three_months(d(2026, 2, 27), d(2026, 5, 31)));
    }
}
