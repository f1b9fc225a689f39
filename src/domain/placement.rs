//! Placements (SPEC §4.0): one learner on one provider's course, from a start date to an
//! optional end date. Whether one is open, and whether it covers a day.

use chrono::NaiveDate;

/// A placement's dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: NaiveDate,
    pub end: Option<NaiveDate>,
}

impl Span {
    /// Whether a lesson on `day` belongs to this placement.
    pub fn covers(&self, day: NaiveDate) -> bool {
        self.start <= day && self.end.is_none_or(|end| day <= end)
    }

    /// Open on `today`: not ended yet (a placement that ends today is still open today).
    pub fn is_open(&self, today: NaiveDate) -> bool {
        self.end.is_none_or(|end| today <= end)
    }

    /// `active` or `ended`, as `training-records.csv` and `placements.csv` say it.
    pub fn status(&self, today: NaiveDate) -> &'static str {
        if self.is_open(today) {
            "active"
        } else {
            "ended"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, m, day).unwrap()
    }

    #[test]
    fn cover_and_status() {
        let open = Span {
            start: d(9, 7),
            end: None,
        };
        assert!(!open.covers(d(9, 6)));
        assert!(open.covers(d(9, 7)) && open.covers(d(12, 31)));
        assert_eq!(open.status(d(12, 1)), "active");
        let ended = Span {
            start: d(9, 7),
            end: Some(d(11, 20)),
        };
        assert!(ended.covers(d(11, 20)) && !ended.covers(d(11, 21)));
        assert_eq!(ended.status(d(11, 20)), "active");
        assert_eq!(ended.status(d(11, 21)), "ended");
    }
}
