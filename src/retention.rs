//! Retention (SPEC §7): stored files older than `retention_days` are deleted from the store;
//! their transfer records stay, marked expired, and each expiry is audited.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::audit::AuditEntry;
use crate::gateway::Gateway;

/// Expires what was received more than `retention_days` before `now`; returns how many uploads
/// expired in this pass.
pub async fn run_once(gw: &Gateway, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let cutoff = now - chrono::Duration::days(i64::from(gw.config().retention_days));
    let before = crate::db::time_text(cutoff);
    let audit = AuditEntry::new("expire", "ok").by("retention", "", "local");
    // The database first: a crash before the files are gone leaves them to the next pass,
    // never a listed file without its content.
    let (expired, blobs) = gw.db.expire_uploads(&before, &audit).await?;
    for blob in blobs {
        if let Err(e) = gw.vault.remove(&blob) {
            tracing::error!(blob, "cannot delete an expired file from the store: {e}");
        }
    }
    if expired > 0 {
        tracing::info!(expired, "retention: stored files deleted");
    }
    Ok(expired)
}

/// Runs a pass at start and then every hour.
pub async fn run(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = run_once(&gw, Utc::now()).await {
            tracing::error!("retention pass failed: {e:#}");
        }
    }
}
