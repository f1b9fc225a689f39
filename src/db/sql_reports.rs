//! SQLite: the reads behind the reports of SPEC §6.

use sqlx::Row;

use super::sql::SqlDb;
use super::*;

pub(super) async fn marks(
    db: &SqlDb,
    scope: MarkScope,
    current_only: bool,
) -> anyhow::Result<Vec<MarkRecord>> {
    let (school, provider) = scope_ids(scope);
    let rows = sqlx::query(
        "SELECT l.school_org_id, m.provider_org_id, l.upn, l.surname, l.forename, s.slug AS school,
                p.slug AS provider, m.course, m.date,
                m.start, m.end_time, m.status, m.contribution, m.dfe_code, m.note, m.version, m.current,
                m.source, m.created_at
         FROM marks m JOIN learners l ON l.id = m.learner_id
         JOIN orgs p ON p.id = m.provider_org_id
         LEFT JOIN orgs s ON s.id = l.school_org_id
         WHERE ($1 IS NULL OR l.school_org_id = $1) AND ($2 IS NULL OR m.provider_org_id = $2)
           AND ($3 = 0 OR m.current = 1)
         ORDER BY l.upn, p.slug, m.course, m.date, m.start, m.version",
    )
    .bind(school)
    .bind(provider)
    .bind(i64::from(current_only))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(MarkRecord {
                school_org_id: r.try_get("school_org_id")?,
                provider_org_id: r.try_get("provider_org_id")?,
                upn: r.try_get("upn")?,
                surname: r.try_get("surname")?,
                forename: r.try_get("forename")?,
                school: r.try_get("school")?,
                provider: r.try_get("provider")?,
                course: r.try_get("course")?,
                date: r.try_get("date")?,
                start: r.try_get("start")?,
                end: r.try_get("end_time")?,
                status: r.try_get("status")?,
                contribution: r.try_get("contribution")?,
                dfe_code: r.try_get("dfe_code")?,
                note: r.try_get("note")?,
                version: r.try_get("version")?,
                current: r.try_get::<i64, _>("current")? != 0,
                source: r.try_get("source")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub(super) async fn placements(
    db: &SqlDb,
    scope: MarkScope,
) -> anyhow::Result<Vec<PlacementRecord>> {
    let (school, provider) = scope_ids(scope);
    let rows = sqlx::query(
        "SELECT l.school_org_id, p.provider_org_id, l.upn, l.surname, l.forename, s.slug AS school,
                o.slug AS provider, p.course, p.start_date, p.end_date, p.cohort, p.qualification,
                p.partnership, p.referral
         FROM placements p JOIN learners l ON l.id = p.learner_id
         JOIN orgs o ON o.id = p.provider_org_id
         LEFT JOIN orgs s ON s.id = l.school_org_id
         WHERE ($1 IS NULL OR l.school_org_id = $1) AND ($2 IS NULL OR p.provider_org_id = $2)
         ORDER BY l.upn, o.slug, p.course, p.start_date",
    )
    .bind(school)
    .bind(provider)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PlacementRecord {
                school_org_id: r.try_get("school_org_id")?,
                provider_org_id: r.try_get("provider_org_id")?,
                upn: r.try_get("upn")?,
                surname: r.try_get("surname")?,
                forename: r.try_get("forename")?,
                school: r.try_get("school")?,
                provider: r.try_get("provider")?,
                course: r.try_get("course")?,
                start_date: r.try_get("start_date")?,
                end_date: r.try_get("end_date")?,
                cohort: r.try_get("cohort")?,
                qualification: r.try_get("qualification")?,
                partnership: r.try_get("partnership")?,
                referral: r.try_get("referral")?,
            })
        })
        .collect()
}

/// (school, provider) filters of a scope.
fn scope_ids(scope: MarkScope) -> (Option<i64>, Option<i64>) {
    match scope {
        MarkScope::All => (None, None),
        MarkScope::School(id) => (Some(id), None),
        MarkScope::Provider(id) => (None, Some(id)),
    }
}

pub(super) async fn learners(db: &SqlDb, scope: MarkScope) -> anyhow::Result<Vec<LearnerRecord>> {
    let (school, provider) = scope_ids(scope);
    let rows = sqlx::query(
        "SELECT l.school_org_id, l.upn, l.surname, l.forename, l.date_of_birth, l.gender,
                l.year_group, l.details, s.slug AS school, s.name AS school_name,
                s.coordinator_email AS school_email
         FROM learners l LEFT JOIN orgs s ON s.id = l.school_org_id
         WHERE ($1 IS NULL OR l.school_org_id = $1)
           AND ($2 IS NULL OR EXISTS (SELECT 1 FROM placements p
                                      WHERE p.learner_id = l.id AND p.provider_org_id = $2))
         ORDER BY l.upn",
    )
    .bind(school)
    .bind(provider)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LearnerRecord {
                school_org_id: r.try_get("school_org_id")?,
                upn: r.try_get("upn")?,
                surname: r.try_get("surname")?,
                forename: r.try_get("forename")?,
                date_of_birth: r.try_get("date_of_birth")?,
                gender: r.try_get("gender")?,
                year_group: r.try_get("year_group")?,
                details: r.try_get("details")?,
                school: r.try_get("school")?,
                school_name: r.try_get("school_name")?,
                school_email: r.try_get("school_email")?,
            })
        })
        .collect()
}

pub(super) async fn training_entries(
    db: &SqlDb,
    scope: MarkScope,
) -> anyhow::Result<Vec<EntryRecord>> {
    let (school, provider) = scope_ids(scope);
    let rows = sqlx::query(
        "SELECT e.kind, l.school_org_id, p.provider_org_id, l.upn, l.surname, l.forename,
                s.slug AS school, o.slug AS provider, p.course, p.start_date, e.fields, e.version,
                e.current, e.created_at
         FROM training_entries e JOIN placements p ON p.id = e.placement_id
         JOIN learners l ON l.id = p.learner_id
         JOIN orgs o ON o.id = p.provider_org_id
         LEFT JOIN orgs s ON s.id = l.school_org_id
         WHERE ($1 IS NULL OR l.school_org_id = $1) AND ($2 IS NULL OR p.provider_org_id = $2)
         ORDER BY l.upn, o.slug, p.course, e.kind, e.entry_key, e.version",
    )
    .bind(school)
    .bind(provider)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EntryRecord {
                kind: r.try_get("kind")?,
                school_org_id: r.try_get("school_org_id")?,
                provider_org_id: r.try_get("provider_org_id")?,
                upn: r.try_get("upn")?,
                surname: r.try_get("surname")?,
                forename: r.try_get("forename")?,
                school: r.try_get("school")?,
                provider: r.try_get("provider")?,
                course: r.try_get("course")?,
                placement_start: r.try_get("start_date")?,
                fields: r.try_get("fields")?,
                version: r.try_get("version")?,
                current: r.try_get::<i64, _>("current")? != 0,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub(super) async fn learner_notes(db: &SqlDb, scope: MarkScope) -> anyhow::Result<Vec<NoteRecord>> {
    let (school, provider) = scope_ids(scope);
    let rows = sqlx::query(
        "SELECT l.school_org_id, l.upn, l.surname, l.forename, a.slug AS author_org, n.author,
                n.subject, n.note, n.created_at
         FROM learner_notes n JOIN learners l ON l.id = n.learner_id
         JOIN orgs a ON a.id = n.author_org_id
         WHERE ($1 IS NULL OR l.school_org_id = $1)
           AND ($2 IS NULL OR EXISTS (SELECT 1 FROM placements p
                                      WHERE p.learner_id = l.id AND p.provider_org_id = $2))
         ORDER BY l.upn, n.id",
    )
    .bind(school)
    .bind(provider)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(NoteRecord {
                school_org_id: r.try_get("school_org_id")?,
                upn: r.try_get("upn")?,
                surname: r.try_get("surname")?,
                forename: r.try_get("forename")?,
                author_org: r.try_get("author_org")?,
                author: r.try_get("author")?,
                subject: r.try_get("subject")?,
                note: r.try_get("note")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub(super) async fn transfers(
    db: &SqlDb,
    org_id: Option<i64>,
) -> anyhow::Result<Vec<TransferRecord>> {
    let rows = sqlx::query(
        "SELECT u.sender_org_id, d.recipient_org_id, u.created_at, so.slug AS sender, us.username AS sent_by, ro.slug AS recipient,
                d.recipient_role, u.folder, u.name, u.size, u.sha256, u.scan, d.downloaded_by, d.downloaded_at,
                d.recalled_at, u.expired_at
         FROM deliveries d JOIN uploads u ON u.id = d.upload_id
         JOIN orgs so ON so.id = u.sender_org_id
         JOIN orgs ro ON ro.id = d.recipient_org_id
         LEFT JOIN users us ON us.id = u.sender_user_id
         WHERE $1 IS NULL OR u.sender_org_id = $1 OR d.recipient_org_id = $1
         ORDER BY u.created_at, d.id",
    )
    .bind(org_id)
    .fetch_all(&db.pool)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(TransferRecord {
                sender_org_id: r.try_get("sender_org_id")?,
                recipient_org_id: r.try_get("recipient_org_id")?,
                sent_at: r.try_get("created_at")?,
                sender: r.try_get("sender")?,
                sent_by: r.try_get("sent_by")?,
                recipient: r.try_get("recipient")?,
                role: r.try_get("recipient_role")?,
                folder: r.try_get("folder")?,
                name: r.try_get("name")?,
                size: r.try_get::<i64, _>("size")? as u64,
                sha256: r.try_get("sha256")?,
                scan: r
                    .try_get::<Option<String>, _>("scan")?
                    .unwrap_or_else(|| "unscanned".into()),
                downloaded_by: r.try_get("downloaded_by")?,
                downloaded_at: r.try_get("downloaded_at")?,
                recalled_at: r.try_get("recalled_at")?,
                expired_at: r.try_get("expired_at")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if org_id.is_none() {
        // Refused uploads were delivered to nobody: only the hub's report lists them.
        let refused = sqlx::query(
            "SELECT r.sender_org_id, (SELECT id FROM orgs WHERE kind = 'hub') AS hub_id,
                    r.created_at, so.slug AS sender, us.username AS sent_by,
                    r.recipient_role, r.folder, r.name, r.size, r.sha256
             FROM refused_uploads r JOIN orgs so ON so.id = r.sender_org_id
             LEFT JOIN users us ON us.id = r.sender_user_id ORDER BY r.id",
        )
        .fetch_all(&db.pool)
        .await?;
        for r in &refused {
            out.push(TransferRecord {
                sender_org_id: r.try_get("sender_org_id")?,
                // Everything is sent to or by the hub: its users holding the role see it.
                recipient_org_id: r.try_get("hub_id")?,
                sent_at: r.try_get("created_at")?,
                sender: r.try_get("sender")?,
                sent_by: r.try_get("sent_by")?,
                recipient: String::new(),
                role: r.try_get("recipient_role")?,
                folder: r.try_get("folder")?,
                name: r.try_get("name")?,
                size: r.try_get::<i64, _>("size")? as u64,
                sha256: r.try_get("sha256")?,
                scan: "refused".into(),
                downloaded_by: None,
                downloaded_at: None,
                recalled_at: None,
                expired_at: None,
            });
        }
        // Stable: rows of one moment keep the order they were written in.
        out.sort_by(|a, b| a.sent_at.cmp(&b.sent_at));
    }
    Ok(out)
}

pub(super) async fn referrals(
    db: &SqlDb,
    school: Option<i64>,
) -> anyhow::Result<Vec<ReferralRecord>> {
    let rows = sqlx::query(
        "SELECT r.reference, o.slug, r.upn, r.tier, r.received_at, r.form FROM referrals r
         JOIN orgs o ON o.id = r.school_org_id WHERE $1 IS NULL OR r.school_org_id = $1
         ORDER BY r.id",
    )
    .bind(school)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ReferralRecord {
                reference: r.try_get("reference")?,
                school: r.try_get("slug")?,
                upn: r.try_get("upn")?,
                tier: r.try_get("tier")?,
                received_at: r.try_get("received_at")?,
                form: r.try_get("form")?,
            })
        })
        .collect()
}

pub(super) async fn withdrawals(
    db: &SqlDb,
    org: Option<i64>,
) -> anyhow::Result<Vec<WithdrawalRecord>> {
    let rows = sqlx::query(
        "SELECT l.school_org_id, w.provider_org_id, w.reference, ro.slug AS requester,
                po.slug AS provider, w.upn, w.course,
                w.requested_last_day, w.reason, w.meeting_date, w.received_at, w.deadline
         FROM withdrawals w JOIN orgs ro ON ro.id = w.requester_org_id
         JOIN orgs po ON po.id = w.provider_org_id
         LEFT JOIN learners l ON l.upn = w.upn
         WHERE $1 IS NULL OR w.requester_org_id = $1 OR w.provider_org_id = $1
            OR l.school_org_id = $1
         ORDER BY w.id",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(WithdrawalRecord {
                school_org_id: r.try_get("school_org_id")?,
                provider_org_id: r.try_get("provider_org_id")?,
                reference: r.try_get("reference")?,
                requester: r.try_get("requester")?,
                provider: r.try_get("provider")?,
                upn: r.try_get("upn")?,
                course: r.try_get("course")?,
                requested_last_day: r.try_get("requested_last_day")?,
                reason: r.try_get("reason")?,
                meeting_date: r.try_get("meeting_date")?,
                received_at: r.try_get("received_at")?,
                deadline: r.try_get("deadline")?,
            })
        })
        .collect()
}

pub(super) async fn activity(db: &SqlDb) -> anyhow::Result<Vec<ActivityRecord>> {
    let rows = sqlx::query(
        "SELECT substr(at, 1, 10) AS day, org,
                CAST(SUM(CASE WHEN action = 'login' AND outcome = 'ok' THEN 1 ELSE 0 END) AS BIGINT) AS logins,
                CAST(SUM(CASE WHEN action = 'login' AND outcome = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed_logins,
                CAST(SUM(CASE WHEN action = 'upload' THEN 1 ELSE 0 END) AS BIGINT) AS uploads,
                CAST(SUM(CASE WHEN action = 'download' THEN 1 ELSE 0 END) AS BIGINT) AS downloads,
                CAST(SUM(CASE WHEN action = 'transfer denied' THEN 1 ELSE 0 END) AS BIGINT) AS denials
         FROM audit WHERE org <> '' OR action = 'login'
         GROUP BY day, org ORDER BY day, org",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ActivityRecord {
                day: r.try_get("day")?,
                org: r.try_get("org")?,
                logins: r.try_get("logins")?,
                failed_logins: r.try_get("failed_logins")?,
                uploads: r.try_get("uploads")?,
                downloads: r.try_get("downloads")?,
                denials: r.try_get("denials")?,
            })
        })
        .collect()
}
