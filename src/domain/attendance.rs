//! Register marks and the attendance maths of SPEC §6.

use std::fmt;
use std::str::FromStr;

/// The DfE attendance codes in force from August 2024 (code, meaning, category, possible session).
const DFE_CODES_CSV: &str = include_str!("dfe-attendance-codes-2024.csv");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Present,
    Late,
    AuthorisedAbsence,
    UnexplainedAbsence,
    UnauthorisedAbsence,
    DismissedBehaviour,
    DismissedOther,
    NotRequired,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Present,
        Status::Late,
        Status::AuthorisedAbsence,
        Status::UnexplainedAbsence,
        Status::UnauthorisedAbsence,
        Status::DismissedBehaviour,
        Status::DismissedOther,
        Status::NotRequired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Present => "present",
            Status::Late => "late",
            Status::AuthorisedAbsence => "authorised_absence",
            Status::UnexplainedAbsence => "unexplained_absence",
            Status::UnauthorisedAbsence => "unauthorised_absence",
            Status::DismissedBehaviour => "dismissed_behaviour",
            Status::DismissedOther => "dismissed_other",
            Status::NotRequired => "not_required",
        }
    }

    pub fn attended(self) -> bool {
        matches!(self, Status::Present | Status::Late)
    }

    /// The DfE categories a `dfe_code` may belong to with this status; `None`: any code.
    fn dfe_categories(self) -> Option<&'static [&'static str]> {
        match self {
            Status::Present | Status::Late => Some(&["present", "approved_educational_activity"]),
            Status::UnexplainedAbsence => None,
            Status::AuthorisedAbsence => Some(&["authorised_absence"]),
            Status::UnauthorisedAbsence => Some(&["unauthorised_absence"]),
            Status::NotRequired => Some(&["not_counted", "administrative"]),
            Status::DismissedBehaviour | Status::DismissedOther => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        Status::ALL
            .into_iter()
            .find(|x| x.as_str() == t)
            .ok_or_else(|| {
                format!(
                    "status `{}` is not one of present, late, authorised_absence, unexplained_absence, \
                     unauthorised_absence, dismissed_behaviour, dismissed_other, not_required",
                    s.trim()
                )
            })
    }
}

/// The category of a current DfE code, or `None` when the code is unknown or retired.
pub fn dfe_category(code: &str) -> Option<&'static str> {
    DFE_CODES_CSV.lines().skip(1).find_map(|line| {
        let mut f = line.split(',');
        let c = f.next()?;
        let _meaning = f.next()?;
        let category = f.next()?;
        (c == code).then_some(category)
    })
}

/// Checks a `dfe_code` against the status it accompanies.
pub fn check_dfe_code(status: Status, code: &str) -> Result<(), String> {
    let code = code.trim();
    let Some(category) = dfe_category(code) else {
        let hint = match code {
            "H" => " (retired: use C)",
            "J" => " (retired: use J1)",
            "Y" => " (retired: use Y1 to Y7)",
            _ => "",
        };
        return Err(format!(
            "`{code}` is not a current DfE attendance code{hint}"
        ));
    };
    if status == Status::UnexplainedAbsence && code != "N" {
        return Err(format!(
            "an unexplained_absence takes the code N (no reason yet provided), not `{code}`"
        ));
    }
    match status.dfe_categories() {
        Some(allowed) if !allowed.contains(&category) => Err(format!(
            "code `{code}` ({}) does not fit status {status}",
            category.replace('_', " ")
        )),
        _ => Ok(()),
    }
}

/// Counts of marks for one placement over a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MarkCounts {
    pub present: u64,
    pub late: u64,
    pub authorised: u64,
    pub unexplained: u64,
    pub unauthorised: u64,
    pub dismissed_behaviour: u64,
    pub dismissed_other: u64,
    pub not_required: u64,
    /// Attended marks by contribution, from +2 down to −2.
    pub contributions: [u64; 5],
}

impl MarkCounts {
    pub fn add(&mut self, status: Status, contribution: i8) {
        match status {
            Status::Present => self.present += 1,
            Status::Late => self.late += 1,
            Status::AuthorisedAbsence => self.authorised += 1,
            Status::UnexplainedAbsence => self.unexplained += 1,
            Status::UnauthorisedAbsence => self.unauthorised += 1,
            Status::DismissedBehaviour => self.dismissed_behaviour += 1,
            Status::DismissedOther => self.dismissed_other += 1,
            Status::NotRequired => self.not_required += 1,
        }
        if status.attended() {
            let i = (2 - i64::from(contribution.clamp(-2, 2))) as usize;
            self.contributions[i] += 1;
        }
    }

    pub fn registers_taken(&self) -> u64 {
        self.present
            + self.late
            + self.authorised
            + self.unexplained
            + self.unauthorised
            + self.dismissed_behaviour
            + self.dismissed_other
    }

    pub fn attended(&self) -> u64 {
        self.present + self.late
    }

    /// Sum of contributions over attended marks.
    pub fn balance(&self) -> i64 {
        let c = self.contributions;
        2 * c[0] as i64 + c[1] as i64 - c[3] as i64 - 2 * c[4] as i64
    }
}

/// `part` of `whole` as a percentage with one decimal, rounded half up; "0.0" for an empty whole.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.0".into();
    }
    let tenths = (part as u128 * 2000 + whole as u128) / (whole as u128 * 2);
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Formats a balance with its sign: `+3`, `0`, `-2`.
pub fn signed(n: i64) -> String {
    if n > 0 {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the current attendance system (SPEC §6).
    #[test]
    fn worked_example() {
        let mut c = MarkCounts::default();
        for _ in 0..175 {
            c.add(Status::Present, 0);
        }
        for _ in 0..17 {
            c.add(Status::Late, 0);
        }
        for _ in 0..6 {
            c.add(Status::UnexplainedAbsence, 0);
        }
        // Contributions over the 192 attended marks: 0 / 4 / 187 / 1 / 0.
        c.contributions = [0, 4, 187, 1, 0];
        assert_eq!(c.registers_taken(), 198);
        assert_eq!(c.attended(), 192);
        let t = c.registers_taken();
        assert_eq!(percent(c.attended(), t), "97.0");
        assert_eq!(percent(c.present, t), "88.4");
        assert_eq!(percent(c.late, t), "8.6");
        assert_eq!(percent(c.unexplained, t), "3.0");
        let a = c.attended();
        let pcts: Vec<String> = c.contributions.iter().map(|&n| percent(n, a)).collect();
        assert_eq!(pcts, ["0.0", "2.1", "97.4", "0.5", "0.0"]);
        assert_eq!(signed(c.balance()), "+3");
    }

    #[test]
    fn not_required_is_not_a_register() {
        let mut c = MarkCounts::default();
        c.add(Status::NotRequired, 0);
        c.add(Status::Present, 2);
        assert_eq!(c.registers_taken(), 1);
        assert_eq!(c.contributions, [1, 0, 0, 0, 0]);
        assert_eq!(percent(1, 3), "33.3");
        assert_eq!(percent(2, 3), "66.7");
        assert_eq!(percent(1, 8), "12.5");
        assert_eq!(percent(0, 0), "0.0");
    }

    #[test]
    fn dfe_codes_fit_statuses() {
        assert!(check_dfe_code(Status::Present, "/").is_ok());
        assert!(check_dfe_code(Status::Present, "B").is_ok());
        assert!(check_dfe_code(Status::Late, "K").is_ok());
        assert!(check_dfe_code(Status::UnexplainedAbsence, "N").is_ok());
        assert!(check_dfe_code(Status::UnexplainedAbsence, "O").is_err());
        assert!(check_dfe_code(Status::AuthorisedAbsence, "I").is_ok());
        assert!(check_dfe_code(Status::AuthorisedAbsence, "G").is_err());
        assert!(check_dfe_code(Status::UnauthorisedAbsence, "G").is_ok());
        assert!(check_dfe_code(Status::NotRequired, "Y1").is_ok());
        assert!(check_dfe_code(Status::NotRequired, "#").is_ok());
        assert!(check_dfe_code(Status::DismissedBehaviour, "E").is_ok());
        assert!(
            check_dfe_code(Status::Present, "H")
                .unwrap_err()
                .contains("use C")
        );
        assert!(check_dfe_code(Status::Present, "ZZ").is_err());
        assert_eq!(dfe_category("J1"), Some("authorised_absence"));
    }

    #[test]
    fn statuses_parse() {
        assert_eq!("Present".parse::<Status>(), Ok(Status::Present));
        assert!(
            "absent"
                .parse::<Status>()
                .unwrap_err()
                .contains("not one of")
        );
    }
}
