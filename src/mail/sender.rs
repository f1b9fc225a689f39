//! The sender task of `serve`: escalates overdue `dsl` transfers, claims due messages, renders
//! and delivers them, retries with back-off and marks a message dead after `mail.max_attempts`.
//! Claims are atomic in the database, so several gateway processes send each message once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::transport::{Transport, build};
use super::{MailKind, MailView, OrgLabel, backoff_seconds, render};
use crate::config::Config;
use crate::db::{MailOutcome, MailRow, time_text};
use crate::gateway::Gateway;

/// Messages claimed at once; a claim lasts this long before another sender may take it again.
const BATCH: i64 = 50;
const LEASE: Duration = Duration::from_secs(300);

pub async fn run(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Built once per configuration (a reload brings a new one), not for every pass.
    let mut transport: Option<(Arc<Config>, Transport)> = None;
    loop {
        tick.tick().await;
        let config = gw.config();
        if !transport
            .as_ref()
            .is_some_and(|(c, _)| Arc::ptr_eq(c, &config))
        {
            match Transport::from_config(&config.mail) {
                Ok(t) => transport = Some((config.clone(), t)),
                Err(e) => {
                    tracing::warn!("mail: {e:#}");
                    continue;
                }
            }
        }
        let Some((_, t)) = &transport else {
            continue;
        };
        if let Err(e) = run_once(&gw, &config, t).await {
            tracing::warn!("mail: {}", redact_addresses(&format!("{e:#}")));
        }
    }
}

/// One pass: escalations, then every due message. Returns how many messages were handled.
async fn run_once(gw: &Gateway, config: &Config, transport: &Transport) -> anyhow::Result<usize> {
    let mail = &config.mail;
    let now = Utc::now();
    let overdue =
        now - chrono::Duration::milliseconds((mail.dsl_escalate_minutes * 60_000.0) as i64);
    let escalated = gw.db.escalate_dsl(&time_text(overdue)).await?;
    if escalated > 0 {
        tracing::info!("escalated {escalated} safeguarding transfer(s) not downloaded in time");
    }
    let grouped_before = now - chrono::Duration::seconds(mail.group_seconds as i64);
    let lease_until = now + chrono::Duration::from_std(LEASE)?;
    let rows = gw
        .db
        .claim_mail(&time_text(grouped_before), &time_text(lease_until), BATCH)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let orgs: HashMap<i64, OrgLabel> = gw
        .db
        .orgs()
        .await?
        .into_iter()
        .map(|o| {
            (
                o.id,
                OrgLabel {
                    slug: o.slug,
                    name: o.name,
                    kind: o.kind,
                },
            )
        })
        .collect();
    for row in &rows {
        let outcome = deliver(gw, config, transport, row, &orgs).await;
        let (error, dead) = match &outcome {
            Ok(()) => {
                gw.db.mail_done(row.id, &MailOutcome::Sent).await?;
                continue;
            }
            Err(Failure::Permanent(e)) => (e.clone(), true),
            Err(Failure::Transient(e)) => (e.clone(), row.attempts >= mail.max_attempts),
        };
        if dead {
            tracing::error!(
                "mail message {} ({}) is dead after {} attempt(s): {}",
                row.id,
                row.kind,
                row.attempts,
                redact_addresses(&error)
            );
            gw.db
                .mail_done(row.id, &MailOutcome::Dead { error: &error })
                .await?;
        } else {
            let wait = backoff_seconds(mail.retry_seconds, row.attempts);
            let at = time_text(Utc::now() + chrono::Duration::seconds(wait as i64));
            tracing::warn!(
                "mail message {} ({}) not delivered, attempt {} of {}, next in {wait} s: {}",
                row.id,
                row.kind,
                row.attempts,
                mail.max_attempts,
                redact_addresses(&error)
            );
            gw.db
                .mail_done(
                    row.id,
                    &MailOutcome::Retry {
                        error: &error,
                        at: &at,
                    },
                )
                .await?;
        }
    }
    Ok(rows.len())
}

enum Failure {
    /// Retrying cannot help (no address, unknown organisation): dead at once.
    Permanent(String),
    Transient(String),
}

async fn deliver(
    gw: &Gateway,
    config: &Config,
    transport: &Transport,
    row: &MailRow,
    orgs: &HashMap<i64, OrgLabel>,
) -> Result<(), Failure> {
    let kind = MailKind::parse(&row.kind)
        .ok_or_else(|| Failure::Permanent(format!("unknown message kind `{}`", row.kind)))?;
    let to = orgs.get(&row.to_org_id).ok_or_else(|| {
        Failure::Permanent(format!("organisation {} no longer exists", row.to_org_id))
    })?;
    let about = row
        .about
        .iter()
        .filter_map(|(id, n)| orgs.get(id).map(|o| (o, *n)))
        .collect();
    let recipients = gw
        .db
        .mail_recipients(row)
        .await
        .map_err(|e| Failure::Transient(format!("{e:#}")))?;
    if recipients.is_empty() {
        return Err(Failure::Permanent(format!(
            "organisation `{}` has no email address for its {} contact (org add --{}-email, \
             or user add --email)",
            to.slug,
            row.to_role,
            row.to_role.as_str()
        )));
    }
    let (subject, body) = render(&MailView {
        kind,
        to,
        role: row.to_role,
        about,
        escalate_minutes: config.mail.dsl_escalate_minutes,
    });
    let message = build(
        &config.mail.from,
        &recipients,
        &subject,
        body,
        kind.high_priority(),
    )
    .map_err(|e| Failure::Permanent(format!("{e:#}")))?;
    transport
        .send(message)
        .await
        .map_err(|e| Failure::Transient(format!("{e:#}")))
}

/// Log lines carry no addresses: each word with an `@` becomes `<address>`.
fn redact_addresses(text: &str) -> String {
    text.split(' ')
        .map(|w| if w.contains('@') { "<address>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_never_reach_the_log() {
        assert_eq!(
            redact_addresses("550 mailbox <dsl@oak.sch.uk> unknown"),
            "550 mailbox <address> unknown"
        );
    }
}
