//! Register CSV from providers (SPEC §4.1): one row is one learner's mark for one lesson.

use chrono::NaiveDate;

use super::table::{ColumnSpec, RowResult, Unreadable, parse_rows, parse_time};
use crate::domain::attendance::{Status, check_dfe_code};
use crate::domain::dates::parse_date;
use crate::domain::identifiers::check_upn;

pub const COLUMNS: ColumnSpec = ColumnSpec {
    required: &[
        "date", "start", "end", "course", "upn", "surname", "forename", "status",
    ],
    optional: &["group", "location", "contribution", "dfe_code", "note"],
    aliases: &[],
    loose: false,
};

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterRow {
    pub date: NaiveDate,
    pub start: String,
    pub end: String,
    pub course: String,
    pub upn: String,
    pub status: Status,
    pub contribution: i8,
    pub group: Option<String>,
    pub location: Option<String>,
    pub dfe_code: Option<String>,
    pub note: Option<String>,
}

fn parse_row(r: &super::table::Row<'_>) -> Result<RegisterRow, String> {
    let date = parse_date(r.need("date")?).map_err(|e| format!("date: {e}"))?;
    let start = parse_time(r.need("start")?).map_err(|e| format!("start: {e}"))?;
    let end = parse_time(r.need("end")?).map_err(|e| format!("end: {e}"))?;
    if end <= start {
        return Err(format!("end {end} is not after start {start}"));
    }
    let upn = r.need("upn")?.to_ascii_uppercase();
    check_upn(&upn)?;
    // The names are for the provider's own eyes (SPEC §4.1): required, never kept; every
    // report names the learner as the home school does.
    r.need("surname")?;
    r.need("forename")?;
    let status: Status = r.need("status")?.parse()?;
    if matches!(
        status,
        Status::AuthorisedAbsence | Status::UnauthorisedAbsence
    ) {
        return Err(format!(
            "status `{status}` is not allowed from a provider; record unexplained_absence and the home school will decide"
        ));
    }
    let contribution = match r.get("contribution") {
        None => 0,
        Some(c) => {
            let n: i8 = c
                .parse()
                .ok()
                .filter(|n| (-2..=2).contains(n))
                .ok_or_else(|| {
                    format!("contribution `{c}` must be a whole number from -2 to +2")
                })?;
            if n != 0 && !status.attended() {
                return Err(format!(
                    "contribution {c} is only for present or late marks, not {status}"
                ));
            }
            n
        }
    };
    let note = r.note("note")?;
    let dfe_code = r.get("dfe_code").map(str::to_string);
    if let Some(code) = &dfe_code {
        check_dfe_code(status, code).map_err(|e| format!("dfe_code: {e}"))?;
    }
    Ok(RegisterRow {
        date,
        start,
        end,
        course: r.need("course")?.to_string(),
        upn,
        status,
        contribution,
        group: r.get("group").map(String::from),
        location: r.get("location").map(String::from),
        dfe_code,
        note,
    })
}

/// Parses a register: `Err` when the file is unreadable as a whole, else one result per row.
pub fn parse(text: &str) -> Result<Vec<RowResult<RegisterRow>>, Unreadable> {
    parse_rows(text, &COLUMNS, parse_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "date,start,end,course,upn,surname,forename,status,contribution,dfe_code\n";

    fn one(line: &str) -> Result<RegisterRow, String> {
        let rows = parse(&format!("{HEADER}{line}\n")).unwrap();
        rows.into_iter().next().unwrap().result
    }

    #[test]
    fn good_rows() {
        let r = one("2026-11-23,09:00,12:00,Motor Vehicle L1,B801200005001,Taylor,Sam,present,1,/")
            .unwrap();
        assert_eq!(r.status, Status::Present);
        assert_eq!(r.contribution, 1);
        let r = one("23/11/2026,9:00,12:00,MV,b801200005001,Taylor,Sam,unexplained_absence,,N")
            .unwrap();
        assert_eq!(r.upn, "B801200005001");
        assert_eq!(r.date, NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
        assert!(one("2026-11-23,09:00,12:00,MV,B801200005001,T,S,not_required,,").is_ok());
    }

    #[test]
    fn bad_rows_say_why() {
        let cases = [
            (
                "2026-11-23,09:00,12:00,MV,B801200005001,T,S,authorised_absence,,",
                "home school will decide",
            ),
            (
                "2026-11-23,09:00,12:00,MV,B801200005001,T,S,unauthorised_absence,,",
                "not allowed from a provider",
            ),
            (
                "2026-11-23,09:00,12:00,MV,A801200005001,T,S,present,,",
                "check letter",
            ),
            (
                "2026-11-23,09:00,12:00,MV,B801200005001,T,S,present,3,",
                "from -2 to +2",
            ),
            (
                "2026-11-23,09:00,12:00,MV,B801200005001,T,S,unexplained_absence,1,",
                "only for present or late",
            ),
            (
                "2026-11-23,09:00,12:00,MV,B801200005001,T,S,present,,N",
                "does not fit",
            ),
            (
                "2026-11-23,09:00,12:00,MV,B801200005001,T,S,unexplained_absence,,O",
                "takes the code N",
            ),
            (
                "2026-11-31,09:00,12:00,MV,B801200005001,T,S,present,,",
                "date",
            ),
            (
                "2026-11-23,12:00,09:00,MV,B801200005001,T,S,present,,",
                "not after start",
            ),
            (
                "2026-11-23,09:00,12:00,,B801200005001,T,S,present,,",
                "course is empty",
            ),
            (
                "2026-11-23,09:00,12:00,MV,B801200005001,T,S,here,,",
                "not one of",
            ),
        ];
        for (line, want) in cases {
            let e = one(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn a_bad_row_does_not_block_the_others() {
        let text = format!(
            "{HEADER}2026-11-23,09:00,12:00,MV,B801200005001,T,S,present,,\n\
             2026-11-23,09:00,12:00,MV,B801200005001,T,S,absent,,\n\
             2026-11-24,09:00,12:00,MV,B801200005001,T,S,late,,\n"
        );
        let rows = parse(&text).unwrap();
        let ok: Vec<usize> = rows
            .iter()
            .filter(|r| r.result.is_ok())
            .map(|r| r.row)
            .collect();
        assert_eq!(ok, vec![2, 4]);
    }
}
