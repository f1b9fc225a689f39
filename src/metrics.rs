//! The optional Prometheus endpoint (`metrics.listen`). Counters are bumped where things happen
//! (no-ops while no endpoint is installed); gauges are sampled every few seconds from the guard
//! and the database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::gateway::Gateway;

pub const SESSIONS: &str = "apgate_sessions";
pub const STARTUPS: &str = "apgate_unauthenticated_connections";
pub const BYTES_RECEIVED: &str = "apgate_bytes_received_total";
pub const BYTES_SENT: &str = "apgate_bytes_sent_total";
pub const TRANSFERS_COMMITTED: &str = "apgate_transfers_committed_total";
pub const TRANSFERS_DENIED: &str = "apgate_transfers_denied_total";
pub const LOGIN_FAILURES: &str = "apgate_login_failures_total";
pub const CONNECTIONS_REFUSED: &str = "apgate_connections_refused_total";
pub const BANS: &str = "apgate_bans";
pub const INGEST_JOBS: &str = "apgate_ingest_jobs";
pub const MAIL_MESSAGES: &str = "apgate_mail_messages";
pub const SCAN_VERDICTS: &str = "apgate_scan_verdicts_total";

const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Starts the endpoint on `addr` and the sampler of gauges.
pub fn install(gw: Arc<Gateway>, addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("key `metrics.listen`: cannot serve metrics on {addr}"))?;
    describe();
    tokio::spawn(sample(gw));
    tracing::info!("metrics on http://{addr}/metrics");
    Ok(())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(SESSIONS, "Live SFTP sessions.");
    describe_gauge!(
        STARTUPS,
        "Connections not yet authenticated (bounded by limits.max_startups)."
    );
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "File bytes received from clients."
    );
    describe_counter!(BYTES_SENT, Unit::Bytes, "File bytes sent to clients.");
    describe_counter!(TRANSFERS_COMMITTED, "Transfers committed (by source).");
    describe_counter!(TRANSFERS_DENIED, "Transfers refused by the routing rule.");
    describe_counter!(LOGIN_FAILURES, "Failed authentication requests.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once (too fast, too many authenticating) or after the login grace time."
    );
    describe_gauge!(BANS, "Temporary bans in force (by kind: address, user).");
    describe_gauge!(INGEST_JOBS, "Ingest jobs by state.");
    describe_counter!(
        SCAN_VERDICTS,
        "Malware scan verdicts on finished uploads (clean, infected, error, off)."
    );
    describe_gauge!(
        MAIL_MESSAGES,
        "Mail outbox messages by state (waiting, sent, dead)."
    );
}

async fn sample(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        metrics::gauge!(SESSIONS).set(gw.guard.live_sessions() as f64);
        metrics::gauge!(STARTUPS).set(f64::from(gw.guard.startups()));
        match gw.db.bans_in_force().await {
            Ok((addresses, users)) => {
                metrics::gauge!(BANS, "kind" => "address").set(addresses as f64);
                metrics::gauge!(BANS, "kind" => "user").set(users as f64);
            }
            Err(e) => tracing::warn!("metrics: cannot count bans: {e:#}"),
        }
        match gw.db.ingest_job_counts().await {
            Ok(counts) => {
                for state in ["pending", "done"] {
                    let n = counts
                        .iter()
                        .find(|(s, _)| s == state)
                        .map_or(0, |(_, n)| *n);
                    metrics::gauge!(INGEST_JOBS, "state" => state).set(n as f64);
                }
            }
            Err(e) => tracing::warn!("metrics: cannot count ingest jobs: {e:#}"),
        }
        match gw.db.mail_counts().await {
            Ok(c) => {
                metrics::gauge!(MAIL_MESSAGES, "state" => "waiting").set(c.waiting as f64);
                metrics::gauge!(MAIL_MESSAGES, "state" => "sent").set(c.sent as f64);
                metrics::gauge!(MAIL_MESSAGES, "state" => "dead").set(c.dead as f64);
            }
            Err(e) => tracing::warn!("metrics: cannot count mail: {e:#}"),
        }
    }
}
