//! The batch processor (SPEC §4): a committed ingest file becomes a job (written with the upload);
//! the job is decrypted, parsed, validated and applied in one transaction with its receipt,
//! exactly once. One parser per kind; `process` is the one pipeline every source goes through.

pub mod absences;
pub mod forms;
pub mod local;
pub mod placements;
pub mod receipt;
pub mod register;
pub mod roster;
pub mod table;
pub mod training;
pub mod watcher;

use std::io::Read;
use std::time::Duration;

use chrono::NaiveDate;

use crate::audit::AuditEntry;
use crate::db::IngestJob;
use crate::domain::dates::Calendar;
use crate::domain::org::OrgKind;
use crate::domain::tree::IngestKind;
use crate::gateway::Gateway;
use receipt::ApplyReport;
use table::{RowResult, Unreadable, decode_text};

/// Largest file the processor reads (it holds the plaintext in memory while parsing).
pub const MAX_INGEST_BYTES: u64 = 512 * 1024 * 1024;

/// The validated content of one file, by kind.
#[derive(Debug)]
pub enum Batch {
    Register(Vec<RowResult<register::RegisterRow>>),
    Absences(Vec<RowResult<absences::AbsenceDecision>>),
    Roster(Vec<RowResult<roster::RosterRow>>),
    Referral(Vec<RowResult<forms::Referral>>),
    Withdrawal(Vec<RowResult<forms::Withdrawal>>),
    Placements(Vec<RowResult<placements::PlacementRow>>),
    /// Progress, appraisals, assessments or targets.
    Training(Vec<RowResult<training::Entry>>),
    Notes(Vec<RowResult<training::Note>>),
    /// Nothing to apply: the file is unreadable as a whole.
    Unreadable(String),
    /// Nothing to apply: the same bytes were applied before (`name at time`).
    Duplicate(String),
}

fn looks_like_csv(name: &str, text: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".csv")
        || (!lower.ends_with(".yaml")
            && !lower.ends_with(".yml")
            && !lower.ends_with(".json")
            && text
                .lines()
                .next()
                .is_some_and(|l| l.contains(',') && !l.contains(':')))
}

/// Parses a file of `kind` sent by an organisation of `sender`, received on `received`: pure,
/// no I/O. `calendar` gives the working days of a withdrawal's deadline.
pub fn parse_file(
    kind: IngestKind,
    sender: OrgKind,
    name: &str,
    bytes: &[u8],
    received: NaiveDate,
    calendar: &Calendar,
) -> Batch {
    let parsed = decode_text(bytes).and_then(|text| {
        Ok(match kind {
            IngestKind::Register => Batch::Register(register::parse(text)?),
            IngestKind::Absences => Batch::Absences(absences::parse(text)?),
            IngestKind::Roster => Batch::Roster(roster::parse(text)?),
            IngestKind::Placements => Batch::Placements(placements::parse(text)?),
            IngestKind::Progress => Batch::Training(training::parse_progress(text)?),
            IngestKind::Assessments => Batch::Training(training::parse_assessments(text)?),
            IngestKind::Targets => Batch::Training(training::parse_targets(text)?),
            IngestKind::Notes => Batch::Notes(training::parse_notes(text)?),
            IngestKind::Referral if looks_like_csv(name, text) => {
                Batch::Referral(forms::parse_referral_csv(text, received)?)
            }
            IngestKind::Referral => {
                let form = forms::parse_document(text)?;
                Batch::Referral(vec![RowResult {
                    row: 1,
                    result: forms::check_referral(form, received),
                }])
            }
            IngestKind::Withdrawal => {
                let form = forms::parse_document(text)?;
                Batch::Withdrawal(vec![RowResult {
                    row: 1,
                    result: forms::check_withdrawal(&form, sender, received, calendar),
                }])
            }
        })
    });
    match parsed {
        Ok(batch) => batch,
        Err(Unreadable(reason)) => {
            Batch::Unreadable(table::excerpt(&reason, table::MAX_REASON_CHARS))
        }
    }
}

fn received_date(job: &IngestJob) -> NaiveDate {
    chrono::DateTime::parse_from_rfc3339(&job.received_at)
        .map(|d| d.date_naive())
        .unwrap_or_else(|_| chrono::Utc::now().date_naive())
}

/// Removes a job from the in-flight set when processing ends, however it ends.
struct InFlight<'a>(&'a Gateway, i64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.ingest_in_flight.lock() {
            set.remove(&self.1);
        }
    }
}

/// Runs one job to its end. Returns the report, or `None` when the job was already done (by an
/// earlier run or by another process), or is being processed right now in this process.
pub async fn process(gw: &Gateway, job_id: i64) -> anyhow::Result<Option<ApplyReport>> {
    let claimed = gw
        .ingest_in_flight
        .lock()
        .map(|mut set| set.insert(job_id))
        .unwrap_or(false);
    if !claimed {
        return Ok(None);
    }
    let _in_flight = InFlight(gw, job_id);
    run_job(gw, job_id).await
}

async fn run_job(gw: &Gateway, job_id: i64) -> anyhow::Result<Option<ApplyReport>> {
    let Some(job) = gw.db.ingest_job(job_id).await? else {
        return Ok(None);
    };
    if job.done {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let batch = match gw.db.applied_duplicate(&job).await? {
        Some(of) => Batch::Duplicate(of),
        None => {
            let reader = gw.vault.open_blob(&job.blob)?;
            let capacity = job.size.min(MAX_INGEST_BYTES) as usize;
            let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let mut out = Vec::with_capacity(capacity);
                reader.take(MAX_INGEST_BYTES + 1).read_to_end(&mut out)?;
                Ok(out)
            })
            .await??;
            if bytes.len() as u64 > MAX_INGEST_BYTES {
                Batch::Unreadable(format!(
                    "the file is larger than {} MiB; split it",
                    MAX_INGEST_BYTES >> 20
                ))
            } else {
                let (kind, sender, name, received) = (
                    job.kind,
                    job.org.kind,
                    job.file_name.clone(),
                    received_date(&job),
                );
                let calendar = gw.config().bank_holidays.calendar();
                tokio::task::spawn_blocking(move || {
                    parse_file(kind, sender, &name, &bytes, received, &calendar)
                })
                .await?
            }
        }
    };
    let audit = AuditEntry::new("ingest", "ok")
        .by(&job.sender_label, &job.org.slug, "local")
        .detail(format!(
            "upload {}: {} {}",
            job.upload_id,
            job.kind.as_str(),
            job.file_name
        ));
    let parsed = started.elapsed();
    let report = gw.db.apply_ingest(&job, &batch, &audit).await?;
    tracing::debug!(
        job = job.job_id,
        read_and_parse_ms = parsed.as_millis() as u64,
        apply_ms = (started.elapsed() - parsed).as_millis() as u64,
        "ingest timings"
    );
    if let Some(r) = &report {
        tracing::info!(
            org = %job.org.slug, kind = job.kind.as_str(), upload = job.upload_id,
            accepted = r.accepted, rejected = r.rejected.len(), unreadable = r.unreadable.is_some(),
            "ingested"
        );
    }
    Ok(report)
}

/// Processes jobs left pending (after a restart, or failed inline) every few seconds.
pub async fn run_pending(gw: std::sync::Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        // A job younger than this is being processed at its upload's close, which reports an
        // unreadable file to the client: leave it to that.
        let before = crate::db::time_text(chrono::Utc::now() - chrono::Duration::seconds(10));
        let jobs = match gw.db.pending_ingest_jobs(&before).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("cannot list ingest jobs: {e:#}");
                continue;
            }
        };
        for job in jobs {
            if let Err(e) = process(&gw, job).await {
                tracing::error!(job, "ingest failed, will retry: {e:#}");
            }
        }
    }
}
