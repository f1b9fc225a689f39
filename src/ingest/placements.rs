//! Placements CSV from the hub (SPEC §4.0): creates, updates and ends placements.

use chrono::NaiveDate;

use super::table::{ColumnSpec, RowResult, Unreadable, parse_rows};
use crate::domain::dates::parse_date;
use crate::domain::identifiers::check_upn;

pub const COLUMNS: ColumnSpec = ColumnSpec {
    required: &["upn", "provider", "course", "start_date"],
    optional: &[
        "end_date",
        "cohort",
        "qualification",
        "partnership",
        "referral",
    ],
    aliases: &[],
    loose: false,
};

#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRow {
    pub upn: String,
    /// The provider's slug.
    pub provider: String,
    pub course: String,
    pub start_date: NaiveDate,
    pub end_date: Option<NaiveDate>,
    pub cohort: Option<String>,
    pub qualification: Option<String>,
    pub partnership: Option<String>,
    pub referral: Option<String>,
}

fn parse_row(r: &super::table::Row<'_>) -> Result<PlacementRow, String> {
    let upn = r.need("upn")?.to_ascii_uppercase();
    check_upn(&upn)?;
    let start_date = parse_date(r.need("start_date")?).map_err(|e| format!("start_date: {e}"))?;
    let end_date = r
        .get("end_date")
        .map(|d| parse_date(d).map_err(|e| format!("end_date: {e}")))
        .transpose()?;
    if let Some(end) = end_date
        && end < start_date
    {
        return Err(format!("end_date {end} is before start_date {start_date}"));
    }
    let referral = r.get("referral").map(|s| s.to_ascii_uppercase());
    if let Some(reference) = &referral
        && !reference.starts_with("REF-")
    {
        return Err(format!(
            "referral `{reference}` is not a referral reference (REF-YYYY-NNNNNN)"
        ));
    }
    Ok(PlacementRow {
        upn,
        provider: r.need("provider")?.to_ascii_lowercase(),
        course: r.need("course")?.to_string(),
        start_date,
        end_date,
        cohort: r.get("cohort").map(String::from),
        qualification: r.get("qualification").map(String::from),
        partnership: r.get("partnership").map(String::from),
        referral,
    })
}

pub fn parse(text: &str) -> Result<Vec<RowResult<PlacementRow>>, Unreadable> {
    parse_rows(text, &COLUMNS, parse_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_reasons() {
        let text = "UPN,Provider,Course,Start_Date,End_Date,Cohort,Referral\n\
            b801200005001,Prov-A,Motor Vehicle L1,2026-09-07,,2026/27,ref-2026-000001\n\
            B801200005001,prov-a,MV,14/09/2026,13/09/2026,,\n\
            A801200005001,prov-a,MV,2026-09-07,,,\n\
            B801200005001,prov-a,MV,2026-09-07,2027-07-16,,X-1\n\
            B801200005001,prov-a,,2026-09-07,,,\n";
        let rows = parse(text).unwrap();
        let r = rows[0].result.as_ref().unwrap();
        assert_eq!(r.upn, "B801200005001");
        assert_eq!(r.provider, "prov-a");
        assert_eq!(r.end_date, None);
        assert_eq!(r.cohort.as_deref(), Some("2026/27"));
        assert_eq!(r.referral.as_deref(), Some("REF-2026-000001"));
        let reasons: Vec<String> = rows[1..]
            .iter()
            .map(|r| r.result.clone().unwrap_err())
            .collect();
        assert!(reasons[0].contains("before start_date"), "{}", reasons[0]);
        assert!(reasons[1].contains("check letter"), "{}", reasons[1]);
        assert!(reasons[2].contains("referral"), "{}", reasons[2]);
        assert!(reasons[3].contains("course"), "{}", reasons[3]);
        assert_eq!(rows[4].row, 6);
    }

    #[test]
    fn missing_column_is_unreadable() {
        assert!(
            parse("upn,provider,course\n")
                .unwrap_err()
                .0
                .contains("start_date")
        );
    }
}
