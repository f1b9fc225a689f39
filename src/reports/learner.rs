//! The learner record and the rest of the training record (SPEC §4.6, §6): `learners.csv`,
//! `progress.csv`, `appraisals.csv`, `assessments.csv`, `targets.csv` and `notes.csv`.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::Value;

use super::{Cell, figure, opt, scope, sheet, span_of, text, visible_marks, visible_placements};
use crate::db::{Database, EntryRecord, PlacementRecord};
use crate::domain::visibility::{
    LearnerLinks, PlacementLink, Viewer, may_see_learner, may_see_placement_record,
};
use crate::ingest::training::PROGRESS_STATUSES;

/// Each learner's placements as visibility needs them, by UPN.
fn links_by_upn(
    placements: &[PlacementRecord],
    today: NaiveDate,
) -> BTreeMap<&str, Vec<PlacementLink>> {
    let mut by_upn: BTreeMap<&str, Vec<PlacementLink>> = BTreeMap::new();
    for p in placements {
        by_upn
            .entry(p.upn.as_str())
            .or_default()
            .push(PlacementLink {
                provider_org_id: p.provider_org_id,
                open: span_of(p).is_open(today),
            });
    }
    by_upn
}

fn may_see(
    v: Viewer<'_>,
    links: &BTreeMap<&str, Vec<PlacementLink>>,
    upn: &str,
    home_school: Option<i64>,
) -> bool {
    may_see_learner(
        v,
        LearnerLinks {
            home_school,
            placements: links.get(upn).map_or(&[], Vec::as_slice),
        },
    )
}

/// A value of a JSON object of text fields, as a cell.
fn field(fields: &Value, key: &str) -> Cell {
    match &fields[key] {
        Value::Null => text(""),
        Value::String(s) => text(s),
        other => text(other.to_string()),
    }
}

/// The emergency contacts a roster may carry, in its column order.
fn contacts() -> impl Iterator<Item = &'static str> {
    crate::ingest::roster::COLUMNS
        .optional
        .iter()
        .copied()
        .filter(|c| c.starts_with("contact"))
}

/// `learners.csv`: the learner record with emergency contacts and the home school's contact,
/// for a provider only the learners with an open placement with it.
pub(super) async fn learners(
    db: &dyn Database,
    v: Viewer<'_>,
    today: NaiveDate,
) -> anyhow::Result<String> {
    let placements = visible_placements(db, v).await?;
    let links = links_by_upn(&placements, today);
    let mut shown: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for p in &placements {
        shown.entry(p.upn.as_str()).or_default().push(format!(
            "{} {} from {} ({})",
            p.provider,
            p.course,
            p.start_date,
            span_of(p).status(today)
        ));
    }
    let mut header = vec![
        "upn",
        "surname",
        "forename",
        "date_of_birth",
        "gender",
        "ethnicity",
        "year_group",
        "sen",
        "ehcp",
        "fsm",
        "pupil_premium",
        "medical_flag",
        "in_care",
    ];
    header.extend(contacts());
    header.extend(["school", "school_name", "school_email", "placements"]);
    let rows = db
        .learners(scope(v))
        .await?
        .into_iter()
        .filter(|l| may_see(v, &links, &l.upn, l.school_org_id))
        .map(|l| {
            let details: Value = serde_json::from_str(&l.details).unwrap_or(Value::Null);
            let mut row = vec![
                text(&l.upn),
                text(l.surname),
                text(l.forename),
                opt(l.date_of_birth),
                opt(l.gender),
                field(&details, "ethnicity"),
                opt(l.year_group),
            ];
            for key in [
                "sen",
                "ehcp",
                "fsm",
                "pupil_premium",
                "medical_flag",
                "in_care",
            ] {
                row.push(field(&details, key));
            }
            row.extend(contacts().map(|c| field(&details, c)));
            row.extend([
                opt(l.school),
                opt(l.school_name),
                opt(l.school_email),
                text(
                    shown
                        .get(l.upn.as_str())
                        .map_or(String::new(), |p| p.join("; ")),
                ),
            ]);
            row
        });
    sheet(&header, rows)
}

/// The reports of one kind of entry, every version, with the columns of `fields`.
pub(super) async fn entries(
    db: &dyn Database,
    v: Viewer<'_>,
    kind: &str,
    fields: &[&str],
    with_course: bool,
) -> anyhow::Result<String> {
    let mut header = vec!["upn", "learner", "school", "provider"];
    if with_course {
        header.extend(["course", "placement_start"]);
    }
    header.extend(fields);
    header.extend(["version", "current", "recorded_at"]);
    let rows = visible_entries(db, v)
        .await?
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| {
            let values: Value = serde_json::from_str(&e.fields).unwrap_or(Value::Null);
            let mut row = vec![
                text(&e.upn),
                text(format!("{} {}", e.forename, e.surname)),
                opt(e.school.clone()),
                text(&e.provider),
            ];
            if with_course {
                row.extend([text(&e.course), text(&e.placement_start)]);
            }
            row.extend(fields.iter().map(|f| field(&values, f)));
            row.extend([
                figure(e.version),
                text(if e.current { "yes" } else { "no" }),
                text(&e.created_at),
            ]);
            row
        });
    sheet(&header, rows)
}

pub(super) async fn visible_entries(
    db: &dyn Database,
    v: Viewer<'_>,
) -> anyhow::Result<Vec<EntryRecord>> {
    let mut entries = db.training_entries(scope(v)).await?;
    entries.retain(|e| may_see_placement_record(v, e.school_org_id, e.provider_org_id));
    Ok(entries)
}

/// `notes.csv`: the notes of registers (as placement records) and the miscellaneous notes (seen
/// by whoever may see the learner), with who wrote them and when.
pub(super) async fn notes(
    db: &dyn Database,
    v: Viewer<'_>,
    today: NaiveDate,
) -> anyhow::Result<String> {
    let placements = visible_placements(db, v).await?;
    let links = links_by_upn(&placements, today);
    /// A row of notes.csv, with what it is sorted by.
    struct NoteRow {
        upn: String,
        at: String,
        cells: Vec<Cell>,
    }
    let note_row = |upn: &str,
                    learner: String,
                    kind: &str,
                    subject: String,
                    note: String,
                    org: &str,
                    by: &str,
                    at: &str| NoteRow {
        upn: upn.to_string(),
        at: at.to_string(),
        cells: vec![
            text(upn),
            text(learner),
            text(kind),
            text(subject),
            text(note),
            text(org),
            text(by),
            text(at),
        ],
    };
    let mut rows: Vec<NoteRow> = Vec::new();
    for m in visible_marks(db, v, true).await? {
        let Some(note) = m.note.clone() else {
            continue;
        };
        rows.push(note_row(
            &m.upn,
            format!("{} {}", m.forename, m.surname),
            "register",
            format!("{} {} {}", m.course, m.date, m.start),
            note,
            &m.provider,
            "",
            &m.created_at,
        ));
    }
    for n in db.learner_notes(scope(v)).await? {
        if !may_see(v, &links, &n.upn, n.school_org_id) {
            continue;
        }
        rows.push(note_row(
            &n.upn,
            format!("{} {}", n.forename, n.surname),
            "note",
            n.subject,
            n.note,
            &n.author_org,
            &n.author,
            &n.created_at,
        ));
    }
    rows.sort_by(|a, b| (&a.upn, &a.at).cmp(&(&b.upn, &b.at)));
    sheet(
        &[
            "upn",
            "learner",
            "kind",
            "subject",
            "note",
            "organisation",
            "written_by",
            "written_at",
        ],
        rows.into_iter().map(|r| r.cells),
    )
}

/// A placement's units by status and its latest appraisal, for `training-records.csv`.
#[derive(Debug, Clone, Default)]
pub(super) struct UnitSummary {
    /// Current units per status, in the order of [`PROGRESS_STATUSES`].
    pub by_status: [u64; 5],
    /// (date, aptitude, effort) of the latest appraisal.
    pub latest_appraisal: Option<(String, String, String)>,
}

impl UnitSummary {
    pub fn total(&self) -> u64 {
        self.by_status.iter().sum()
    }
}

/// The unit summary of every placement with entries, by (upn, provider, course, start).
pub(super) fn unit_summaries(
    entries: &[EntryRecord],
) -> BTreeMap<(String, String, String, String), UnitSummary> {
    let mut out: BTreeMap<(String, String, String, String), UnitSummary> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.current) {
        let values: Value = serde_json::from_str(&e.fields).unwrap_or(Value::Null);
        let key = (
            e.upn.clone(),
            e.provider.clone(),
            e.course.clone(),
            e.placement_start.clone(),
        );
        let summary = out.entry(key).or_default();
        let get = |k: &str| values[k].as_str().unwrap_or_default().to_string();
        match e.kind.as_str() {
            "progress" => {
                if let Some(i) = PROGRESS_STATUSES.iter().position(|s| *s == get("status")) {
                    summary.by_status[i] += 1;
                }
            }
            "appraisal" => {
                let date = get("date");
                if summary
                    .latest_appraisal
                    .as_ref()
                    .is_none_or(|(d, _, _)| date > *d)
                {
                    summary.latest_appraisal = Some((date, get("aptitude"), get("effort")));
                }
            }
            _ => {}
        }
    }
    out
}
