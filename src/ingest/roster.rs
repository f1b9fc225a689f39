//! Nightly MIS roster CSV from schools (SPEC §4.5): upserts the school's learners.

use super::table::{ColumnSpec, RowResult, Unreadable, parse_rows};
use crate::domain::dates::parse_date;
use crate::domain::identifiers::check_upn;

pub const COLUMNS: ColumnSpec = ColumnSpec {
    required: &[
        "upn",
        "surname",
        "forename",
        "date_of_birth",
        "gender",
        "year_group",
    ],
    optional: &[
        "ethnicity",
        "sen",
        "fsm",
        "pupil_premium",
        "medical_flag",
        "contact1_name",
        "contact1_relationship",
        "contact1_phone",
        "contact2_name",
        "contact2_relationship",
        "contact2_phone",
        "contact3_name",
        "contact3_relationship",
        "contact3_phone",
    ],
    aliases: &[
        ("legal surname", "surname"),
        ("last name", "surname"),
        ("legal forename", "forename"),
        ("first name", "forename"),
        ("preferred forename", "forename"),
        ("dob", "date_of_birth"),
        ("birth date", "date_of_birth"),
        ("sex", "gender"),
        ("year", "year_group"),
        ("nc year", "year_group"),
        ("ncyearactual", "year_group"),
        ("sen status", "sen"),
        ("senprovision", "sen"),
    ],
    loose: true,
};

#[derive(Debug, Clone, PartialEq)]
pub struct RosterRow {
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub date_of_birth: String,
    pub gender: String,
    pub year_group: String,
    /// The optional columns present, as JSON (sen, fsm, contacts, …).
    pub details: serde_json::Value,
}

fn parse_row(r: &super::table::Row<'_>) -> Result<RosterRow, String> {
    let upn = r.need("upn")?.to_ascii_uppercase();
    check_upn(&upn)?;
    let dob = parse_date(r.need("date_of_birth")?).map_err(|e| format!("date_of_birth: {e}"))?;
    if let Some(sen) = r.get("sen")
        && !["E", "K", "N"].contains(&sen.to_ascii_uppercase().as_str())
    {
        return Err(format!("sen `{sen}` must be E, K or N"));
    }
    let mut details = serde_json::Map::new();
    for c in COLUMNS.optional {
        if let Some(v) = r.get(c) {
            details.insert((*c).to_string(), serde_json::Value::String(v.to_string()));
        }
    }
    Ok(RosterRow {
        upn,
        surname: r.need("surname")?.to_string(),
        forename: r.need("forename")?.to_string(),
        date_of_birth: dob.to_string(),
        gender: r.need("gender")?.to_string(),
        year_group: r.need("year_group")?.to_string(),
        details: serde_json::Value::Object(details),
    })
}

pub fn parse(text: &str) -> Result<Vec<RowResult<RosterRow>>, Unreadable> {
    parse_rows(text, &COLUMNS, parse_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mis_headers_and_aliases() {
        let text = "UPN,Legal Surname,Preferred Forename,DOB,Sex,NC Year Actual,SEN Provision,Contact1 Phone\n\
                    B801200005001,Taylor,Sam,14/03/2011,F,9,K,07700 900123\n\
                    B801200005001,Taylor,Sam,14/03/2011,F,9,Q,\n";
        let rows = parse(text).unwrap();
        let r = rows[0].result.as_ref().unwrap();
        assert_eq!((r.surname.as_str(), r.forename.as_str()), ("Taylor", "Sam"));
        assert_eq!(r.date_of_birth, "2011-03-14");
        assert_eq!(r.details["sen"], "K");
        assert_eq!(r.details["contact1_phone"], "07700 900123");
        assert!(rows[1].result.as_ref().unwrap_err().contains("E, K or N"));
    }

    #[test]
    fn missing_required_column_is_unreadable() {
        let e = parse("upn,surname\nB801200005001,T\n").unwrap_err();
        assert!(e.0.contains("forename"), "{}", e.0);
    }
}
