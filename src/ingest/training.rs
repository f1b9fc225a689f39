//! The rest of the training record (SPEC §4.6): unit progress and tutor appraisals (one folder,
//! told apart by the header), initial assessments, non-academic targets, and notes. Each row is
//! an [`Entry`]: what it is about, the key a later row amends, and its fields.

use chrono::NaiveDate;
use serde_json::{Map, Value};

use super::table::{ColumnSpec, Row, RowResult, Unreadable, parse_rows};
use crate::domain::dates::parse_date;
use crate::domain::identifiers::check_upn;

/// The kinds of training-record entry a provider sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Progress,
    Appraisal,
    Assessment,
    Target,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Progress => "progress",
            EntryKind::Appraisal => "appraisal",
            EntryKind::Assessment => "assessment",
            EntryKind::Target => "target",
        }
    }
}

/// One row of a progress, assessments or targets file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: EntryKind,
    pub upn: String,
    /// The course of the placement it belongs to; `None` for assessments and targets (any
    /// placement of the sender).
    pub course: Option<String>,
    /// What a later row amends: the unit, the appraisal's date, the assessment's description
    /// and date, the target's description and set date.
    pub key: String,
    /// The columns as the reports show them.
    pub fields: Value,
}

/// A miscellaneous note on a learner's training record.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub upn: String,
    pub subject: String,
    pub note: String,
}

pub const PROGRESS_STATUSES: [&str; 5] = [
    "not_started",
    "behind",
    "on_track",
    "under_assessment",
    "completed",
];

const UNIT_PROGRESS: ColumnSpec = ColumnSpec {
    required: &["upn", "course", "unit", "status"],
    optional: &["predicted_grade", "comment", "date"],
    aliases: &[],
    loose: false,
};

const APPRAISALS: ColumnSpec = ColumnSpec {
    required: &["upn", "course", "date", "aptitude", "effort"],
    optional: &["comment"],
    aliases: &[],
    loose: false,
};

const ASSESSMENTS: ColumnSpec = ColumnSpec {
    required: &["upn", "description", "date"],
    optional: &["level", "comments"],
    aliases: &[],
    loose: false,
};

const TARGETS: ColumnSpec = ColumnSpec {
    required: &["upn", "description", "set_date", "target_date", "achieved"],
    optional: &["reviewed_date"],
    aliases: &[],
    loose: false,
};

const NOTES: ColumnSpec = ColumnSpec {
    required: &["upn", "subject", "note"],
    optional: &[],
    aliases: &[],
    loose: false,
};

fn upn(r: &Row<'_>) -> Result<String, String> {
    let upn = r.need("upn")?.to_ascii_uppercase();
    check_upn(&upn)?;
    Ok(upn)
}

fn date(r: &Row<'_>, column: &str) -> Result<NaiveDate, String> {
    parse_date(r.need(column)?).map_err(|e| format!("{column}: {e}"))
}

fn optional_date(r: &Row<'_>, column: &str) -> Result<Option<NaiveDate>, String> {
    r.get(column)
        .map(|d| parse_date(d).map_err(|e| format!("{column}: {e}")))
        .transpose()
}

/// The fields of an entry: each present cell as text, in the order given.
fn fields(pairs: &[(&str, Option<String>)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(
            (*k).to_string(),
            v.clone().map(Value::String).unwrap_or(Value::Null),
        );
    }
    Value::Object(m)
}

fn unit_progress(r: &Row<'_>) -> Result<Entry, String> {
    let upn = upn(r)?;
    let status = r.need("status")?.to_ascii_lowercase();
    if !PROGRESS_STATUSES.contains(&status.as_str()) {
        return Err(format!(
            "status `{status}` is not one of {}",
            PROGRESS_STATUSES.join(", ")
        ));
    }
    let unit = r.need("unit")?.to_string();
    let day = optional_date(r, "date")?;
    Ok(Entry {
        kind: EntryKind::Progress,
        upn,
        course: Some(r.need("course")?.to_string()),
        key: unit.clone(),
        fields: fields(&[
            ("unit", Some(unit)),
            ("status", Some(status)),
            (
                "predicted_grade",
                r.get("predicted_grade").map(String::from),
            ),
            ("comment", r.note("comment")?),
            ("date", day.map(|d| d.to_string())),
        ]),
    })
}

fn appraisal(r: &Row<'_>) -> Result<Entry, String> {
    let upn = upn(r)?;
    let day = date(r, "date")?;
    let aptitude = r.need("aptitude")?.to_ascii_uppercase();
    if !matches!(aptitude.as_str(), "A" | "B" | "C" | "D" | "E") {
        return Err(format!(
            "aptitude `{aptitude}` must be a letter from A (highest) to E"
        ));
    }
    let effort = r.need("effort")?;
    if !matches!(effort, "1" | "2" | "3" | "4" | "5") {
        return Err(format!(
            "effort `{effort}` must be a number from 1 (highest) to 5"
        ));
    }
    Ok(Entry {
        kind: EntryKind::Appraisal,
        upn,
        course: Some(r.need("course")?.to_string()),
        key: day.to_string(),
        fields: fields(&[
            ("date", Some(day.to_string())),
            ("aptitude", Some(aptitude)),
            ("effort", Some(effort.to_string())),
            ("comment", r.note("comment")?),
        ]),
    })
}

fn assessment(r: &Row<'_>) -> Result<Entry, String> {
    let upn = upn(r)?;
    let description = r.need("description")?.to_string();
    let day = date(r, "date")?;
    Ok(Entry {
        kind: EntryKind::Assessment,
        upn,
        course: None,
        key: format!("{description}\u{1f}{day}"),
        fields: fields(&[
            ("description", Some(description)),
            ("date", Some(day.to_string())),
            ("level", r.get("level").map(String::from)),
            ("comments", r.note("comments")?),
        ]),
    })
}

fn target(r: &Row<'_>) -> Result<Entry, String> {
    let upn = upn(r)?;
    let description = r.need("description")?.to_string();
    let set = date(r, "set_date")?;
    let due = date(r, "target_date")?;
    if due < set {
        return Err(format!("target_date {due} is before set_date {set}"));
    }
    let achieved = match r.need("achieved")?.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" => "yes",
        "no" | "n" | "false" => "no",
        other => return Err(format!("achieved `{other}` must be yes or no")),
    };
    Ok(Entry {
        kind: EntryKind::Target,
        upn,
        course: None,
        key: format!("{description}\u{1f}{set}"),
        fields: fields(&[
            ("description", Some(description)),
            ("set_date", Some(set.to_string())),
            ("target_date", Some(due.to_string())),
            ("achieved", Some(achieved.to_string())),
            (
                "reviewed_date",
                optional_date(r, "reviewed_date")?.map(|d| d.to_string()),
            ),
        ]),
    })
}

fn note(r: &Row<'_>) -> Result<Note, String> {
    Ok(Note {
        upn: upn(r)?,
        subject: r.need("subject")?.to_string(),
        note: r.note("note")?.ok_or("note is empty")?,
    })
}

/// Whether the header row of `text` names a column `column` (case and spaces ignored).
fn header_has(text: &str, column: &str) -> bool {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    matches!(reader.read_record(&mut record), Ok(true))
        && record.iter().any(|h| h.trim().eq_ignore_ascii_case(column))
}

/// `/progress/`: tutor appraisals when the header names `aptitude`, unit progress otherwise.
pub fn parse_progress(text: &str) -> Result<Vec<RowResult<Entry>>, Unreadable> {
    if header_has(text, "aptitude") {
        parse_rows(text, &APPRAISALS, appraisal)
    } else {
        parse_rows(text, &UNIT_PROGRESS, unit_progress)
    }
}

pub fn parse_assessments(text: &str) -> Result<Vec<RowResult<Entry>>, Unreadable> {
    parse_rows(text, &ASSESSMENTS, assessment)
}

pub fn parse_targets(text: &str) -> Result<Vec<RowResult<Entry>>, Unreadable> {
    parse_rows(text, &TARGETS, target)
}

pub fn parse_notes(text: &str) -> Result<Vec<RowResult<Note>>, Unreadable> {
    parse_rows(text, &NOTES, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors<T: std::fmt::Debug>(rows: &[RowResult<T>]) -> Vec<String> {
        rows.iter()
            .filter_map(|r| r.result.as_ref().err().map(|e| format!("{}: {e}", r.row)))
            .collect()
    }

    #[test]
    fn unit_progress_and_appraisals_are_told_apart_by_the_header() {
        let units = "upn,course,unit,status,predicted_grade\n\
            B801200005001,MV,Unit 1,on_track,Merit\n\
            B801200005001,MV,Unit 2,finished,\n";
        let rows = parse_progress(units).unwrap();
        let e = rows[0].result.as_ref().unwrap();
        assert_eq!((e.kind, e.key.as_str()), (EntryKind::Progress, "Unit 1"));
        assert_eq!(e.fields["predicted_grade"], "Merit");
        assert_eq!(
            errors(&rows),
            vec![
                "3: status `finished` is not one of not_started, behind, on_track, under_assessment, completed"
            ]
        );

        let appraisals = "UPN,Course,Date,Aptitude,Effort,Comment\n\
            B801200005001,MV,2026-11-20,b,2,Good week\n\
            B801200005001,MV,2026-11-27,F,2,\n\
            B801200005001,MV,2026-11-27,A,0,\n";
        let rows = parse_progress(appraisals).unwrap();
        let e = rows[0].result.as_ref().unwrap();
        assert_eq!(
            (e.kind, e.key.as_str()),
            (EntryKind::Appraisal, "2026-11-20")
        );
        assert_eq!(e.fields["aptitude"], "B");
        let errs = errors(&rows);
        assert!(errs[0].contains("aptitude `F`"), "{errs:?}");
        assert!(errs[1].contains("effort `0`"), "{errs:?}");
    }

    #[test]
    fn assessments_targets_and_notes() {
        let rows = parse_assessments(
            "upn,description,date,level\nB801200005001,Maths,2026-09-08,Entry 3\n",
        )
        .unwrap();
        assert_eq!(rows[0].result.as_ref().unwrap().fields["level"], "Entry 3");
        let rows = parse_targets(
            "upn,description,set_date,target_date,achieved\n\
             B801200005001,Punctuality,2026-09-08,2026-12-18,No\n\
             B801200005001,Punctuality,2026-09-08,2026-09-01,no\n\
             B801200005001,Punctuality,2026-09-08,2026-12-18,maybe\n",
        )
        .unwrap();
        assert_eq!(rows[0].result.as_ref().unwrap().fields["achieved"], "no");
        let errs = errors(&rows);
        assert!(errs[0].contains("before set_date"), "{errs:?}");
        assert!(errs[1].contains("yes or no"), "{errs:?}");
        let long = "x".repeat(2001);
        let rows = parse_notes(&format!(
            "upn,subject,note\nB801200005001,Lunch,Allergic to nuts\nB801200005001,Long,{long}\nB801200005001,Empty,\n"
        ))
        .unwrap();
        assert_eq!(rows[0].result.as_ref().unwrap().note, "Allergic to nuts");
        let errs = errors(&rows);
        assert!(errs[0].contains("at most 2000"), "{errs:?}");
        assert!(errs[1].contains("note is empty"), "{errs:?}");
    }
}
