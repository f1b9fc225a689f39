//! The reports of SPEC §6, generated at read time as CSV. What each organisation (and each user's
//! roles) may see is decided by `domain::visibility`; the database queries only narrow the rows
//! it is asked about. The same code serves `/reports/` and `apgate report`. Every report goes
//! through one writer, [`Sheet`], which makes text from uploads safe to open in Excel.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::db::{Database, MarkRecord, MarkScope, PlacementRecord};
use crate::domain::attendance::{MarkCounts, Status, percent, signed};
use crate::domain::org::OrgKind;
use crate::domain::placement::Span;
use crate::domain::visibility::{Viewer, may_see_placement_record, may_see_transfer};

mod learner;

const ALL: [&str; 14] = [
    "training-records.csv",
    "learners.csv",
    "progress.csv",
    "appraisals.csv",
    "assessments.csv",
    "targets.csv",
    "notes.csv",
    "unprocessed-absences.csv",
    "registers.csv",
    "transfers.csv",
    "referrals.csv",
    "withdrawals.csv",
    "activity.csv",
    "placements.csv",
];

/// The reports an organisation of `kind` has.
pub fn names(kind: OrgKind) -> Vec<&'static str> {
    ALL.iter()
        .copied()
        .filter(|n| match kind {
            OrgKind::Hub => true,
            OrgKind::School => !matches!(*n, "activity.csv" | "placements.csv"),
            OrgKind::Provider => !matches!(
                *n,
                "activity.csv" | "unprocessed-absences.csv" | "referrals.csv" | "placements.csv"
            ),
        })
        .collect()
}

/// One cell of a report.
enum Cell {
    /// Text, possibly from an upload: written with a leading `'` when Excel would read it as a
    /// formula (SPEC §6).
    Text(String),
    /// A figure the gateway computed: written as it is, so it stays a number.
    Figure(String),
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn opt(s: Option<String>) -> Cell {
    Cell::Text(s.unwrap_or_default())
}

fn figure(n: impl ToString) -> Cell {
    Cell::Figure(n.to_string())
}

/// Text as a spreadsheet may safely show it: a cell beginning with `=`, `+`, `-`, `@`, TAB or CR
/// gets a leading `'` so that it is never evaluated as a formula.
pub fn defuse(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// The one CSV writer of every report.
struct Sheet {
    writer: csv::Writer<Vec<u8>>,
}

impl Sheet {
    fn new(header: &[&str]) -> anyhow::Result<Sheet> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(header)?;
        Ok(Sheet { writer })
    }

    fn row(&mut self, cells: Vec<Cell>) -> anyhow::Result<()> {
        for c in &cells {
            match c {
                Cell::Text(t) => self.writer.write_field(defuse(t).as_bytes())?,
                Cell::Figure(f) => self.writer.write_field(f)?,
            }
        }
        // An empty record after the fields ends the row.
        self.writer.write_record(None::<&[u8]>)?;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<String> {
        let bytes = self
            .writer
            .into_inner()
            .map_err(|e| anyhow::anyhow!("csv: {e}"))?;
        Ok(String::from_utf8(bytes)?)
    }
}

fn sheet(header: &[&str], rows: impl IntoIterator<Item = Vec<Cell>>) -> anyhow::Result<String> {
    let mut s = Sheet::new(header)?;
    for r in rows {
        s.row(r)?;
    }
    s.finish()
}

/// The rows the database is asked for; visibility then decides each one.
fn scope(v: Viewer<'_>) -> MarkScope {
    match v.kind {
        OrgKind::Hub => MarkScope::All,
        OrgKind::School => MarkScope::School(v.org_id),
        OrgKind::Provider => MarkScope::Provider(v.org_id),
    }
}

fn own(v: Viewer<'_>) -> Option<i64> {
    (v.kind != OrgKind::Hub).then_some(v.org_id)
}

async fn visible_marks(
    db: &dyn Database,
    v: Viewer<'_>,
    current_only: bool,
) -> anyhow::Result<Vec<MarkRecord>> {
    let mut marks = db.marks(scope(v), current_only).await?;
    marks.retain(|m| may_see_placement_record(v, m.school_org_id, m.provider_org_id));
    Ok(marks)
}

async fn visible_placements(
    db: &dyn Database,
    v: Viewer<'_>,
) -> anyhow::Result<Vec<PlacementRecord>> {
    let mut placements = db.placements(scope(v)).await?;
    placements.retain(|p| may_see_placement_record(v, p.school_org_id, p.provider_org_id));
    Ok(placements)
}

fn span_of(p: &PlacementRecord) -> Span {
    let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    Span {
        start: day(&p.start_date).unwrap_or_default(),
        end: p.end_date.as_deref().and_then(day),
    }
}

/// Generates report `name` for `viewer` as of `today`; `None` when it has no such report.
pub async fn generate(
    db: &dyn Database,
    name: &str,
    viewer: Viewer<'_>,
    today: NaiveDate,
) -> anyhow::Result<Option<String>> {
    if !names(viewer.kind).contains(&name) {
        return Ok(None);
    }
    let v = viewer;
    let text = match name {
        "training-records.csv" => training_records(db, v, today).await?,
        "learners.csv" => learner::learners(db, v, today).await?,
        "notes.csv" => learner::notes(db, v, today).await?,
        "progress.csv" => {
            let fields = ["unit", "status", "predicted_grade", "comment", "date"];
            learner::entries(db, v, "progress", &fields, true).await?
        }
        "appraisals.csv" => {
            let fields = ["date", "aptitude", "effort", "comment"];
            learner::entries(db, v, "appraisal", &fields, true).await?
        }
        "assessments.csv" => {
            let fields = ["description", "date", "level", "comments"];
            learner::entries(db, v, "assessment", &fields, false).await?
        }
        "targets.csv" => {
            let fields = [
                "description",
                "set_date",
                "target_date",
                "achieved",
                "reviewed_date",
            ];
            learner::entries(db, v, "target", &fields, false).await?
        }
        "placements.csv" => sheet(
            &[
                "upn",
                "surname",
                "forename",
                "school",
                "provider",
                "course",
                "start_date",
                "end_date",
                "status",
                "cohort",
                "qualification",
                "partnership",
                "referral",
            ],
            visible_placements(db, v).await?.into_iter().map(|p| {
                let status = span_of(&p).status(today);
                vec![
                    text(p.upn),
                    text(p.surname),
                    text(p.forename),
                    opt(p.school),
                    text(p.provider),
                    text(p.course),
                    text(p.start_date),
                    opt(p.end_date),
                    text(status),
                    opt(p.cohort),
                    opt(p.qualification),
                    opt(p.partnership),
                    opt(p.referral),
                ]
            }),
        )?,
        "unprocessed-absences.csv" => sheet(
            &[
                "upn", "surname", "forename", "school", "provider", "course", "date", "start",
                "end", "note",
            ],
            visible_marks(db, v, true)
                .await?
                .into_iter()
                .filter(|m| m.status == Status::UnexplainedAbsence.as_str())
                .map(|m| {
                    vec![
                        text(m.upn),
                        text(m.surname),
                        text(m.forename),
                        opt(m.school),
                        text(m.provider),
                        text(m.course),
                        text(m.date),
                        text(m.start),
                        text(m.end),
                        opt(m.note),
                    ]
                }),
        )?,
        "registers.csv" => sheet(
            &[
                "upn",
                "surname",
                "forename",
                "school",
                "provider",
                "course",
                "date",
                "start",
                "end",
                "status",
                "contribution",
                "dfe_code",
                "note",
                "version",
                "current",
                "amended",
                "source",
            ],
            visible_marks(db, v, false).await?.into_iter().map(|m| {
                vec![
                    text(m.upn),
                    text(m.surname),
                    text(m.forename),
                    opt(m.school),
                    text(m.provider),
                    text(m.course),
                    text(m.date),
                    text(m.start),
                    text(m.end),
                    text(m.status),
                    figure(m.contribution),
                    opt(m.dfe_code),
                    opt(m.note),
                    figure(m.version),
                    text(if m.current { "yes" } else { "no" }),
                    text(if m.version > 1 { "yes" } else { "no" }),
                    text(m.source),
                ]
            }),
        )?,
        "transfers.csv" => sheet(
            &[
                "sent_at",
                "from",
                "sent_by",
                "to",
                "role",
                "folder",
                "name",
                "size",
                "sha256",
                "scan",
                "downloaded_by",
                "downloaded_at",
                "recalled_at",
                "expired_at",
            ],
            db.transfers(own(v))
                .await?
                .into_iter()
                .filter(|t| {
                    t.role.parse().is_ok_and(|role| {
                        may_see_transfer(v, t.sender_org_id, t.recipient_org_id, role)
                    })
                })
                .map(|t| {
                    vec![
                        text(t.sent_at),
                        text(t.sender),
                        opt(t.sent_by),
                        text(t.recipient),
                        text(t.role),
                        text(t.folder),
                        text(t.name),
                        figure(t.size),
                        text(t.sha256),
                        text(t.scan),
                        opt(t.downloaded_by),
                        opt(t.downloaded_at),
                        opt(t.recalled_at),
                        opt(t.expired_at),
                    ]
                }),
        )?,
        "referrals.csv" => sheet(
            &["reference", "school", "upn", "tier", "received_at", "form"],
            db.referrals(own(v)).await?.into_iter().map(|r| {
                vec![
                    text(r.reference),
                    text(r.school),
                    text(r.upn),
                    figure(r.tier),
                    text(r.received_at),
                    text(r.form),
                ]
            }),
        )?,
        "withdrawals.csv" => sheet(
            &[
                "reference",
                "requested_by",
                "provider",
                "upn",
                "course",
                "requested_last_day",
                "reason",
                "meeting_date",
                "received_at",
                "deadline",
            ],
            db.withdrawals(own(v))
                .await?
                .into_iter()
                .filter(|w| may_see_placement_record(v, w.school_org_id, w.provider_org_id))
                .map(|w| {
                    vec![
                        text(w.reference),
                        text(w.requester),
                        text(w.provider),
                        text(w.upn),
                        text(w.course),
                        text(w.requested_last_day),
                        text(w.reason),
                        opt(w.meeting_date),
                        text(w.received_at),
                        text(w.deadline),
                    ]
                }),
        )?,
        "activity.csv" => sheet(
            &[
                "day",
                "organisation",
                "logins",
                "failed_logins",
                "uploads",
                "downloads",
                "denials",
            ],
            db.activity().await?.into_iter().map(|a| {
                vec![
                    text(a.day),
                    text(if a.org.is_empty() {
                        "(unknown user)".into()
                    } else {
                        a.org
                    }),
                    figure(a.logins),
                    figure(a.failed_logins),
                    figure(a.uploads),
                    figure(a.downloads),
                    figure(a.denials),
                ]
            }),
        )?,
        _ => return Ok(None),
    };
    Ok(Some(text))
}

/// The columns of `training-records.csv`, the file schools mail-merge: stable names, one row
/// per placement (README lists them).
pub const TRAINING_RECORD_COLUMNS: [&str; 45] = [
    "learner",
    "upn",
    "school",
    "provider",
    "course",
    "start",
    "end",
    "status",
    "registers_taken",
    "attended",
    "present",
    "late",
    "authorised_absence",
    "unexplained_absence",
    "unauthorised_absence",
    "dismissed_behaviour",
    "dismissed_other",
    "not_required",
    "attended_pct",
    "present_pct",
    "late_pct",
    "authorised_pct",
    "unexplained_pct",
    "unauthorised_pct",
    "contribution_plus2",
    "contribution_plus1",
    "contribution_0",
    "contribution_minus1",
    "contribution_minus2",
    "contribution_plus2_pct",
    "contribution_plus1_pct",
    "contribution_0_pct",
    "contribution_minus1_pct",
    "contribution_minus2_pct",
    "contribution_balance",
    "first_mark",
    "units_total",
    "units_not_started",
    "units_behind",
    "units_on_track",
    "units_under_assessment",
    "units_completed",
    "latest_appraisal_date",
    "latest_aptitude",
    "latest_effort",
];

/// One row per placement with its status and the attendance figures of its marks. A mark
/// belongs to the placement of its learner, provider and course whose dates cover its day (the
/// latest to start, when placements follow one another).
async fn training_records(
    db: &dyn Database,
    v: Viewer<'_>,
    today: NaiveDate,
) -> anyhow::Result<String> {
    let placements = visible_placements(db, v).await?;
    let units = learner::unit_summaries(&learner::visible_entries(db, v).await?);
    let mut counts: Vec<(MarkCounts, Option<String>)> =
        vec![(MarkCounts::default(), None); placements.len()];
    // (upn, provider, course) → the placements' indexes, in start order.
    type Key<'a> = (&'a str, &'a str, &'a str);
    let mut by_key: BTreeMap<Key<'_>, Vec<(usize, Span)>> = BTreeMap::new();
    for (i, p) in placements.iter().enumerate() {
        by_key
            .entry((p.upn.as_str(), p.provider.as_str(), p.course.as_str()))
            .or_default()
            .push((i, span_of(p)));
    }
    for m in visible_marks(db, v, true).await? {
        let Ok(status) = m.status.parse::<Status>() else {
            continue;
        };
        let Some(candidates) =
            by_key.get(&(m.upn.as_str(), m.provider.as_str(), m.course.as_str()))
        else {
            continue;
        };
        let day = NaiveDate::parse_from_str(&m.date, "%Y-%m-%d").ok();
        let Some(&(i, _)) = candidates
            .iter()
            .rev()
            .find(|(_, span)| day.is_some_and(|d| span.covers(d)))
            .or_else(|| candidates.first())
        else {
            continue;
        };
        let (c, first) = &mut counts[i];
        c.add(status, i8::try_from(m.contribution).unwrap_or(0));
        if first.as_ref().is_none_or(|f| m.date < *f) {
            *first = Some(m.date.clone());
        }
    }
    let rows = placements.iter().zip(counts).map(|(p, (c, first))| {
        let t = c.registers_taken();
        let a = c.attended();
        let mut row = vec![
            text(format!("{} {}", p.forename, p.surname)),
            text(&p.upn),
            opt(p.school.clone()),
            text(&p.provider),
            text(&p.course),
            text(&p.start_date),
            opt(p.end_date.clone()),
            text(span_of(p).status(today)),
            figure(t),
            figure(a),
            figure(c.present),
            figure(c.late),
            figure(c.authorised),
            figure(c.unexplained),
            figure(c.unauthorised),
            figure(c.dismissed_behaviour),
            figure(c.dismissed_other),
            figure(c.not_required),
            figure(percent(a, t)),
            figure(percent(c.present, t)),
            figure(percent(c.late, t)),
            figure(percent(c.authorised, t)),
            figure(percent(c.unexplained, t)),
            figure(percent(c.unauthorised, t)),
        ];
        row.extend(c.contributions.iter().map(figure));
        row.extend(c.contributions.iter().map(|&n| figure(percent(n, a))));
        row.push(figure(signed(c.balance())));
        row.push(opt(first));
        let key = (
            p.upn.clone(),
            p.provider.clone(),
            p.course.clone(),
            p.start_date.clone(),
        );
        let u = units.get(&key).cloned().unwrap_or_default();
        row.push(figure(u.total()));
        row.extend(u.by_status.iter().map(figure));
        let (date, aptitude, effort) = u.latest_appraisal.unwrap_or_default();
        row.extend([text(date), text(aptitude), Cell::Figure(effort)]);
        row
    });
    sheet(&TRAINING_RECORD_COLUMNS, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_excel_would_evaluate_gets_a_quote() {
        for bad in [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(defuse(bad), format!("'{bad}"));
        }
        for fine in [
            "Motor Vehicle",
            "B801200005001",
            "",
            "'quoted",
            "2026-11-23",
        ] {
            assert_eq!(defuse(fine), fine);
        }
    }

    #[test]
    fn figures_stay_numbers_and_text_is_defused_in_the_same_file() {
        let out = sheet(
            &["note", "balance", "pct"],
            [vec![
                text("=cmd|' /C calc'!A0"),
                figure("-2"),
                figure("97.0"),
            ]],
        )
        .unwrap();
        assert_eq!(out, "note,balance,pct\n'=cmd|' /C calc'!A0,-2,97.0\n");
    }
}
