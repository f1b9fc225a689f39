//! SQLite side of the mail outbox: events and their messages written together, atomic claims,
//! retries and dead letters.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::{AnyConnection, Row};

use super::sql::SqlDb;
use super::*;
use crate::mail::{Notice, Outgoing, merge_about, plan};

/// Writes the event row for `notice` and its messages, inside the caller's transaction.
pub(super) async fn insert_notice(
    conn: &mut AnyConnection,
    upload_id: Option<i64>,
    notice: &Notice,
) -> anyhow::Result<()> {
    let now = now_text();
    let event_id: i64 = sqlx::query_scalar(
        "INSERT INTO events (kind, upload_id, payload, created_at) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(notice.kind())
    .bind(upload_id)
    .bind(serde_json::to_string(notice)?)
    .bind(&now)
    .fetch_one(&mut *conn)
    .await?;
    let hub: Option<i64> = sqlx::query_scalar("SELECT id FROM orgs WHERE kind = 'hub'")
        .fetch_optional(&mut *conn)
        .await?;
    let Some(hub) = hub else {
        return Ok(());
    };
    for out in plan(notice, hub) {
        enqueue(conn, event_id, &out, &now).await?;
    }
    Ok(())
}

async fn enqueue(
    conn: &mut AnyConnection,
    event_id: i64,
    out: &Outgoing,
    now: &str,
) -> anyhow::Result<()> {
    let key = out.group_key();
    if let Some(key) = &key {
        let waiting: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, about FROM mail WHERE group_key = $1 AND state = 'pending' AND attempts = 0
             ORDER BY id LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((id, about)) = waiting {
            let mut about: BTreeMap<i64, i64> = serde_json::from_str(&about)?;
            merge_about(&mut about, out.about_org_id, out.count);
            sqlx::query("UPDATE mail SET about = $1 WHERE id = $2")
                .bind(serde_json::to_string(&about)?)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            return Ok(());
        }
    }
    let about = BTreeMap::from([(out.about_org_id, out.count)]);
    sqlx::query(
        "INSERT INTO mail (event_id, kind, to_org_id, to_role, to_user_id, about, group_key,
                           due_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(event_id)
    .bind(out.kind.as_str())
    .bind(out.to_org_id)
    .bind(out.to_role.as_str())
    .bind(out.to_user_id)
    .bind(serde_json::to_string(&about)?)
    .bind(key)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn escalate_dsl(db: &SqlDb, received_before: &str) -> anyhow::Result<usize> {
    let mut tx = db.begin().await?;
    let overdue: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT d.id, d.upload_id, u.sender_org_id, d.recipient_org_id
         FROM deliveries d JOIN uploads u ON u.id = d.upload_id
         WHERE d.recipient_role = 'dsl' AND d.downloaded_at IS NULL AND d.deleted_at IS NULL
           AND d.recalled_at IS NULL AND d.escalated_at IS NULL AND u.expired_at IS NULL
           AND u.ingest_kind IS NULL AND u.created_at <= $1",
    )
    .bind(received_before)
    .fetch_all(&mut *tx)
    .await?;
    let now = now_text();
    for (delivery, upload, sender, recipient) in &overdue {
        sqlx::query("UPDATE deliveries SET escalated_at = $1 WHERE id = $2")
            .bind(&now)
            .bind(delivery)
            .execute(&mut *tx)
            .await?;
        let notice = Notice::DslNotDownloaded {
            sender_org_id: *sender,
            recipient_org_id: *recipient,
        };
        insert_notice(&mut tx, Some(*upload), &notice).await?;
    }
    tx.commit().await?;
    Ok(overdue.len())
}

pub(super) async fn claim_mail(
    db: &SqlDb,
    grouped_before: &str,
    lease_until: &str,
    limit: i64,
) -> anyhow::Result<Vec<MailRow>> {
    let mut tx = db.begin().await?;
    let now = now_text();
    // Pending and due (a grouped row once its gathering time is over), or claimed by a sender
    // that stopped before finishing.
    let rows = sqlx::query(
        "UPDATE mail SET state = 'sending', lease_until = $1, attempts = attempts + 1
         WHERE id IN (
            SELECT id FROM mail
            WHERE (state = 'pending' AND due_at <= $2
                   AND (group_key IS NULL OR created_at <= $3))
               OR (state = 'sending' AND lease_until <= $2)
            ORDER BY due_at, id LIMIT $4)
         RETURNING id, kind, to_org_id, to_role, to_user_id, about, attempts",
    )
    .bind(lease_until)
    .bind(&now)
    .bind(grouped_before)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            let role: String = r.try_get("to_role")?;
            Ok(MailRow {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                to_org_id: r.try_get("to_org_id")?,
                to_role: Role::from_str(&role).map_err(anyhow::Error::msg)?,
                to_user_id: r.try_get("to_user_id")?,
                about: serde_json::from_str(&r.try_get::<String, _>("about")?)?,
                attempts: r.try_get::<i64, _>("attempts")? as u32,
            })
        })
        .collect()
}

pub(super) async fn mail_recipients(db: &SqlDb, row: &MailRow) -> anyhow::Result<Vec<String>> {
    let contact: Option<String> = sqlx::query_scalar(
        "SELECT CASE $2 WHEN 'dsl' THEN dsl_email ELSE coordinator_email END
         FROM orgs WHERE id = $1",
    )
    .bind(row.to_org_id)
    .bind(row.to_role.as_str())
    .fetch_optional(&db.pool)
    .await?
    .flatten();
    let users: Vec<(String, String)> = sqlx::query_as(
        "SELECT email, roles FROM users
         WHERE org_id = $1 AND disabled = 0 AND email IS NOT NULL ORDER BY id",
    )
    .bind(row.to_org_id)
    .fetch_all(&db.pool)
    .await?;
    let uploader: Option<String> = match row.to_user_id {
        Some(id) => sqlx::query_scalar("SELECT email FROM users WHERE id = $1 AND disabled = 0")
            .bind(id)
            .fetch_optional(&db.pool)
            .await?
            .flatten(),
        None => None,
    };
    let with_role = users.into_iter().filter_map(|(email, roles)| {
        crate::domain::org::parse_roles(&roles)
            .ok()
            .filter(|r| r.contains(&row.to_role))
            .map(|_| email)
    });
    let mut out: Vec<String> = Vec::new();
    for email in contact.into_iter().chain(with_role).chain(uploader) {
        if !out.iter().any(|e| e.eq_ignore_ascii_case(&email)) {
            out.push(email);
        }
    }
    Ok(out)
}

pub(super) async fn mail_done(
    db: &SqlDb,
    id: i64,
    outcome: &MailOutcome<'_>,
) -> anyhow::Result<()> {
    let now = now_text();
    let query = match outcome {
        MailOutcome::Sent => sqlx::query(
            "UPDATE mail SET state = 'sent', sent_at = $1, lease_until = NULL, last_error = NULL
             WHERE id = $2",
        )
        .bind(now),
        MailOutcome::Retry { error, at } => sqlx::query(
            "UPDATE mail SET state = 'pending', due_at = $1, lease_until = NULL, last_error = $2
             WHERE id = $3",
        )
        .bind(*at)
        .bind(*error),
        MailOutcome::Dead { error } => sqlx::query(
            "UPDATE mail SET state = 'dead', lease_until = NULL, last_error = $1 WHERE id = $2",
        )
        .bind(*error),
    };
    query.bind(id).execute(&db.pool).await?;
    Ok(())
}

pub(super) async fn mail_counts(db: &SqlDb) -> anyhow::Result<MailCounts> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM mail GROUP BY state")
            .fetch_all(&db.pool)
            .await?;
    let mut counts = MailCounts::default();
    for (state, n) in rows {
        match state.as_str() {
            "pending" | "sending" => counts.waiting += n,
            "sent" => counts.sent += n,
            "dead" => counts.dead += n,
            _ => {}
        }
    }
    Ok(counts)
}
