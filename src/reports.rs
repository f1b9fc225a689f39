//! The reports of SPEC §6, generated at read time as CSV and scoped to what the reading
//! organisation may see (the hub sees all). The same code serves `/reports/` and `apgate report`.

use std::collections::BTreeMap;

use crate::db::{Database, MarkScope, Org};
use crate::domain::attendance::{MarkCounts, Status, percent, signed};
use crate::domain::org::OrgKind;

const ALL: [&str; 7] = [
    "training-records.csv",
    "unprocessed-absences.csv",
    "registers.csv",
    "transfers.csv",
    "referrals.csv",
    "withdrawals.csv",
    "activity.csv",
];

/// The reports an organisation of `kind` has.
pub fn names(kind: OrgKind) -> Vec<&'static str> {
    ALL.iter()
        .copied()
        .filter(|n| match kind {
            OrgKind::Hub => true,
            OrgKind::School => *n != "activity.csv",
            OrgKind::Provider => !matches!(
                *n,
                "activity.csv" | "unprocessed-absences.csv" | "referrals.csv"
            ),
        })
        .collect()
}

fn csv_text(
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(&r)?;
    }
    Ok(String::from_utf8(
        w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?,
    )?)
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

fn scope(org: &Org) -> MarkScope {
    match org.kind {
        OrgKind::Hub => MarkScope::All,
        OrgKind::School => MarkScope::School(org.id),
        OrgKind::Provider => MarkScope::Provider(org.id),
    }
}

fn own(org: &Org) -> Option<i64> {
    (org.kind != OrgKind::Hub).then_some(org.id)
}

/// Generates report `name` for `org`; `None` when it has no such report.
pub async fn generate(db: &dyn Database, name: &str, org: &Org) -> anyhow::Result<Option<String>> {
    if !names(org.kind).contains(&name) {
        return Ok(None);
    }
    let text = match name {
        "training-records.csv" => training_records(db, org).await?,
        "unprocessed-absences.csv" => {
            let marks = db.marks(scope(org), true).await?;
            csv_text(
                &[
                    "upn", "surname", "forename", "school", "provider", "course", "date", "start",
                    "end", "note",
                ],
                marks
                    .into_iter()
                    .filter(|m| m.status == Status::UnexplainedAbsence.as_str())
                    .map(|m| {
                        vec![
                            m.upn,
                            m.surname,
                            m.forename,
                            m.school.unwrap_or_default(),
                            m.provider,
                            m.course,
                            m.date,
                            m.start,
                            m.end,
                            m.note.unwrap_or_default(),
                        ]
                    }),
            )?
        }
        "registers.csv" => {
            let marks = db.marks(scope(org), false).await?;
            csv_text(
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
                marks.into_iter().map(|m| {
                    vec![
                        m.upn,
                        m.surname,
                        m.forename,
                        m.school.unwrap_or_default(),
                        m.provider,
                        m.course,
                        m.date,
                        m.start,
                        m.end,
                        m.status,
                        m.contribution.to_string(),
                        opt(&m.dfe_code),
                        opt(&m.note),
                        m.version.to_string(),
                        if m.current { "yes" } else { "no" }.into(),
                        if m.version > 1 { "yes" } else { "no" }.into(),
                        m.source,
                    ]
                }),
            )?
        }
        "transfers.csv" => {
            let rows = db.transfers(own(org)).await?;
            csv_text(
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
                    "downloaded_by",
                    "downloaded_at",
                    "recalled_at",
                    "expired_at",
                ],
                rows.into_iter().map(|t| {
                    vec![
                        t.sent_at,
                        t.sender,
                        opt(&t.sent_by),
                        t.recipient,
                        t.role,
                        t.folder,
                        t.name,
                        t.size.to_string(),
                        t.sha256,
                        opt(&t.downloaded_by),
                        opt(&t.downloaded_at),
                        opt(&t.recalled_at),
                        opt(&t.expired_at),
                    ]
                }),
            )?
        }
        "referrals.csv" => {
            let rows = db.referrals(own(org)).await?;
            csv_text(
                &["reference", "school", "upn", "tier", "received_at", "form"],
                rows.into_iter().map(|r| {
                    vec![
                        r.reference,
                        r.school,
                        r.upn,
                        r.tier.to_string(),
                        r.received_at,
                        r.form,
                    ]
                }),
            )?
        }
        "withdrawals.csv" => {
            let rows = db.withdrawals(own(org)).await?;
            csv_text(
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
                rows.into_iter().map(|w| {
                    vec![
                        w.reference,
                        w.requester,
                        w.provider,
                        w.upn,
                        w.course,
                        w.requested_last_day,
                        w.reason,
                        opt(&w.meeting_date),
                        w.received_at,
                        w.deadline,
                    ]
                }),
            )?
        }
        "activity.csv" => {
            let rows = db.activity().await?;
            csv_text(
                &[
                    "day",
                    "organisation",
                    "logins",
                    "failed_logins",
                    "uploads",
                    "downloads",
                    "denials",
                ],
                rows.into_iter().map(|a| {
                    vec![
                        a.day,
                        if a.org.is_empty() {
                            "(unknown user)".into()
                        } else {
                            a.org
                        },
                        a.logins.to_string(),
                        a.failed_logins.to_string(),
                        a.uploads.to_string(),
                        a.downloads.to_string(),
                        a.denials.to_string(),
                    ]
                }),
            )?
        }
        _ => return Ok(None),
    };
    Ok(Some(text))
}

/// One row per placement (learner × provider × course) with the attendance figures.
async fn training_records(db: &dyn Database, org: &Org) -> anyhow::Result<String> {
    struct Placement {
        surname: String,
        forename: String,
        school: String,
        first: String,
        last: String,
        counts: MarkCounts,
    }
    let mut placements: BTreeMap<(String, String, String), Placement> = BTreeMap::new();
    for m in db.marks(scope(org), true).await? {
        let status: Status = match m.status.parse() {
            Ok(s) => s,
            Err(_) => continue,
        };
        let p = placements
            .entry((m.upn.clone(), m.provider.clone(), m.course.clone()))
            .or_insert_with(|| Placement {
                surname: m.surname.clone(),
                forename: m.forename.clone(),
                school: m.school.clone().unwrap_or_default(),
                first: m.date.clone(),
                last: m.date.clone(),
                counts: MarkCounts::default(),
            });
        if m.date < p.first {
            p.first = m.date.clone();
        }
        if m.date > p.last {
            p.last = m.date.clone();
        }
        p.counts
            .add(status, i8::try_from(m.contribution).unwrap_or(0));
    }
    let header = [
        "learner",
        "upn",
        "school",
        "provider",
        "course",
        "start",
        "end",
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
    ];
    csv_text(
        &header,
        placements.into_iter().map(|((upn, provider, course), p)| {
            let c = p.counts;
            let t = c.registers_taken();
            let a = c.attended();
            let mut row = vec![
                format!("{} {}", p.forename, p.surname),
                upn,
                p.school,
                provider,
                course,
                p.first,
                p.last,
                t.to_string(),
                a.to_string(),
                c.present.to_string(),
                c.late.to_string(),
                c.authorised.to_string(),
                c.unexplained.to_string(),
                c.unauthorised.to_string(),
                c.dismissed_behaviour.to_string(),
                c.dismissed_other.to_string(),
                c.not_required.to_string(),
                percent(a, t),
                percent(c.present, t),
                percent(c.late, t),
                percent(c.authorised, t),
                percent(c.unexplained, t),
                percent(c.unauthorised, t),
            ];
            row.extend(c.contributions.iter().map(|n| n.to_string()));
            row.extend(c.contributions.iter().map(|&n| percent(n, a)));
            row.push(signed(c.balance()));
            row
        }),
    )
}
