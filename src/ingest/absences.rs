//! Absence decisions CSV from schools (SPEC §4.2): the school decides an unexplained absence.

use chrono::NaiveDate;

use super::table::{ColumnSpec, RowResult, Unreadable, parse_rows, parse_time};
use crate::domain::attendance::{Status, check_dfe_code};
use crate::domain::dates::parse_date;
use crate::domain::identifiers::check_upn;

pub const COLUMNS: ColumnSpec = ColumnSpec {
    required: &["date", "start", "upn", "decision"],
    optional: &["dfe_code", "note"],
    aliases: &[],
    loose: false,
};

#[derive(Debug, Clone, PartialEq)]
pub struct AbsenceDecision {
    pub date: NaiveDate,
    pub start: String,
    pub upn: String,
    /// `AuthorisedAbsence` or `UnauthorisedAbsence`.
    pub decision: Status,
    pub dfe_code: Option<String>,
    pub note: Option<String>,
}

fn parse_row(r: &super::table::Row<'_>) -> Result<AbsenceDecision, String> {
    let date = parse_date(r.need("date")?).map_err(|e| format!("date: {e}"))?;
    let start = parse_time(r.need("start")?).map_err(|e| format!("start: {e}"))?;
    let upn = r.need("upn")?.to_ascii_uppercase();
    check_upn(&upn)?;
    let decision = match r.need("decision")?.to_ascii_lowercase().as_str() {
        "authorised" => Status::AuthorisedAbsence,
        "unauthorised" => Status::UnauthorisedAbsence,
        other => {
            return Err(format!(
                "decision `{other}` must be authorised or unauthorised"
            ));
        }
    };
    let dfe_code = r.get("dfe_code").map(str::to_string);
    if let Some(code) = &dfe_code {
        check_dfe_code(decision, code).map_err(|e| format!("dfe_code: {e}"))?;
    }
    Ok(AbsenceDecision {
        date,
        start,
        upn,
        decision,
        dfe_code,
        note: r.note("note")?,
    })
}

pub fn parse(text: &str) -> Result<Vec<RowResult<AbsenceDecision>>, Unreadable> {
    parse_rows(text, &COLUMNS, parse_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let text = "upn,date,start,decision,dfe_code\n\
                    B801200005001,2026-11-23,09:00,authorised,I\n\
                    B801200005001,2026-11-23,09:00,unauthorised,I\n\
                    B801200005001,2026-11-23,09:00,maybe,\n\
                    B801200005001,2026-11-24,13:00,Unauthorised,G\n";
        let rows = parse(text).unwrap();
        assert_eq!(
            rows[0].result.as_ref().unwrap().decision,
            Status::AuthorisedAbsence
        );
        assert!(
            rows[1]
                .result
                .as_ref()
                .unwrap_err()
                .contains("does not fit")
        );
        assert!(
            rows[2]
                .result
                .as_ref()
                .unwrap_err()
                .contains("authorised or unauthorised")
        );
        assert_eq!(
            rows[3].result.as_ref().unwrap().decision,
            Status::UnauthorisedAbsence
        );
    }
}
