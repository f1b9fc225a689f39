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

/// Bank holidays in England and Wales, 2025–2027 (later years come from config).
const BANK_HOLIDAYS: &[(i32, u32, u32)] = &[
    (2025, 1, 1),
    (2025, 4, 18),
    (2025, 4, 21),
    (2025, 5, 5),
    (2025, 5, 26),
    (2025, 8, 25),
    (2025, 12, 25),
    (2025, 12, 26),
    (2026, 1, 1),
    (2026, 4, 3),
    (2026, 4, 6),
    (2026, 5, 4),
    (2026, 5, 25),
    (2026, 8, 31),
    (2026, 12, 25),
    (2026, 12, 28),
    (2027, 1, 1),
    (2027, 3, 26),
    (2027, 3, 29),
    (2027, 5, 3),
    (2027, 5, 31),
    (2027, 8, 30),
    (2027, 12, 27),
    (2027, 12, 28),
];

pub fn is_bank_holiday(d: NaiveDate, extra: &[NaiveDate]) -> bool {
    BANK_HOLIDAYS
        .iter()
        .any(|&(y, m, day)| d.year() == y && d.month() == m && d.day() == day)
        || extra.contains(&d)
}

pub fn is_working_day(d: NaiveDate, extra_holidays: &[NaiveDate]) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !is_bank_holiday(d, extra_holidays)
}

/// The `n`th working day after `from` (which itself does not count).
pub fn add_working_days(from: NaiveDate, n: u32, extra_holidays: &[NaiveDate]) -> NaiveDate {
    let mut d = from;
    let mut left = n;
    while left > 0 {
        d = d.succ_opt().unwrap_or(d);
        if is_working_day(d, extra_holidays) {
            left -= 1;
        }
    }
    d
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
        // Friday 27 November 2026 → Mon 30, Tue 1, Wed 2, Thu 3, Fri 4 December.
        assert_eq!(add_working_days(d(2026, 11, 27), 5, &[]), d(2026, 12, 4));
        // Over Christmas 2026: 25 and 28 December are bank holidays.
        // Wed 23 Dec → Thu 24, Tue 29, Wed 30, Thu 31, (Fri 1 Jan holiday) Mon 4 Jan.
        assert_eq!(add_working_days(d(2026, 12, 23), 5, &[]), d(2027, 1, 4));
        // Received on a Saturday.
        assert_eq!(add_working_days(d(2026, 11, 28), 5, &[]), d(2026, 12, 4));
        // Extra holidays from config count too.
        assert_eq!(
            add_working_days(d(2026, 11, 27), 1, &[d(2026, 11, 30)]),
            d(2026, 12, 1)
        );
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
