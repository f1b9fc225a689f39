//! The database behind the gateway: one [`Database`] trait of plain domain methods and one
//! implementation per backend. The backend is picked once, from the URL scheme, by [`open`].

mod sql;
mod sql_guard;
mod sql_ingest;
mod sql_mail;
mod sql_reports;

use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditRecord};
use crate::domain::org::{OrgKind, Role};
use crate::domain::tree::IngestKind;
use crate::ingest::Batch;
use crate::ingest::receipt::ApplyReport;

pub type Db = Arc<dyn Database>;

/// Opens (creating if needed) and migrates the database named by `url`: `sqlite://FILE` or
/// `postgres://…`.
pub async fn open(url: &str) -> anyhow::Result<Db> {
    Ok(Arc::new(sql::SqlDb::open(url).await?))
}

/// Creates the database named by `url` as the release whose last migration was `last` left it
/// (the upgrade tests start from there).
pub async fn create_as_of(url: &str, last: i64) -> anyhow::Result<()> {
    sql::SqlDb::create_as_of(url, last).await
}

/// The URL without a password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Current time as stored: RFC 3339 UTC with milliseconds, which sorts as text.
pub fn now_text() -> String {
    time_text(chrono::Utc::now())
}

/// A time as stored (see [`now_text`]).
pub fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[derive(Debug, Clone)]
pub struct Org {
    pub id: i64,
    pub slug: String,
    pub kind: OrgKind,
    pub name: String,
    pub urn: Option<String>,
    pub ukprn: Option<String>,
    pub coordinator_email: Option<String>,
    pub dsl_email: Option<String>,
    pub disabled: bool,
}

#[derive(Debug, Clone)]
pub struct NewOrg {
    pub slug: String,
    pub kind: OrgKind,
    pub name: String,
    pub urn: Option<String>,
    pub ukprn: Option<String>,
    pub coordinator_email: Option<String>,
    pub dsl_email: Option<String>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub org_slug: String,
    pub username: String,
    pub roles: Vec<Role>,
    pub disabled: bool,
    pub has_password: bool,
    pub keys: usize,
    pub email: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub org_slug: String,
    pub username: String,
    pub roles: Vec<Role>,
    pub password_hash: Option<String>,
    /// (OpenSSH public key line, fingerprint)
    pub keys: Vec<(String, String)>,
    pub email: Option<String>,
}

/// Everything a login decision needs about one user.
#[derive(Debug, Clone)]
pub struct LoginUser {
    pub user_id: i64,
    pub username: String,
    pub org: Org,
    pub roles: Vec<Role>,
    pub password_hash: Option<String>,
    /// OpenSSH public key lines.
    pub keys: Vec<String>,
    pub disabled: bool,
}

impl LoginUser {
    pub fn active(&self) -> bool {
        !self.disabled && !self.org.disabled
    }
}

/// A recipient organisation of an upload and the inbox folder it lands in.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub org_id: i64,
    /// The sender's slug when the recipient is the hub; empty otherwise.
    pub inbox_folder: String,
}

#[derive(Debug, Clone)]
pub struct NewUpload {
    pub sender_org_id: i64,
    /// `None` for files from the command line or a drop folder.
    pub sender_user_id: Option<i64>,
    pub folder: String,
    pub name: String,
    pub recipient_role: Role,
    pub ingest_kind: Option<String>,
    pub blob: String,
    pub size: u64,
    pub sha256: String,
    pub recipients: Vec<Recipient>,
    /// How it was scanned (SPEC §7).
    pub scan: crate::scan::Mark,
}

/// An upload refused by the malware scan (SPEC §7): stored nowhere, recorded for the hub.
#[derive(Debug, Clone)]
pub struct RefusedUpload {
    pub sender_org_id: i64,
    pub sender_user_id: Option<i64>,
    pub folder: String,
    pub name: String,
    pub recipient_role: Role,
    pub size: u64,
    pub sha256: String,
    /// `malware` or `unscanned`.
    pub reason: String,
    /// The signature, or why the scan failed.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct CommittedUpload {
    pub upload_id: i64,
    /// The ingest job written with an upload into an ingest folder.
    pub job_id: Option<i64>,
    /// The name the sender sees in its outbox (a copy number when the name was in use).
    pub outbox_name: String,
    pub inbox_names: Vec<String>,
}

/// A file in an inbox.
#[derive(Debug, Clone)]
pub struct InboxFile {
    pub delivery_id: i64,
    pub upload_id: i64,
    pub inbox_folder: String,
    pub inbox_name: String,
    pub recipient_role: Role,
    pub size: u64,
    pub created_at: String,
    pub blob: String,
    pub downloaded_at: Option<String>,
}

/// A file in an outbox: sent, not yet downloaded by every recipient, not recalled.
#[derive(Debug, Clone)]
pub struct OutboxFile {
    pub upload_id: i64,
    pub name: String,
    pub size: u64,
    pub created_at: String,
}

/// An ingest job with what processing it needs to know.
#[derive(Debug, Clone)]
pub struct IngestJob {
    pub job_id: i64,
    pub upload_id: i64,
    pub kind: IngestKind,
    pub org: Org,
    /// The sending user's name, or `cli` / `drop` for files without a user.
    pub sender_label: String,
    pub sender_user_id: Option<i64>,
    pub file_name: String,
    pub blob: String,
    pub size: u64,
    pub sha256: String,
    pub received_at: String,
    pub done: bool,
}

/// A receipt as read from `/receipts/`.
#[derive(Debug, Clone)]
pub struct ReceiptFile {
    pub name: String,
    pub body: String,
    pub created_at: String,
}

/// A receipt as listed in `/receipts/`: its body is read only when the file is.
#[derive(Debug, Clone)]
pub struct ReceiptEntry {
    pub name: String,
    /// Bytes of the body the lister would read.
    pub size: u64,
    pub created_at: String,
}

/// Which marks a report reads: all (hub), a school's learners', or a provider's own.
#[derive(Debug, Clone, Copy)]
pub enum MarkScope {
    All,
    School(i64),
    Provider(i64),
}

/// A mark as the reports show it.
#[derive(Debug, Clone)]
pub struct MarkRecord {
    pub school_org_id: Option<i64>,
    pub provider_org_id: i64,
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub school: Option<String>,
    pub provider: String,
    pub course: String,
    pub date: String,
    pub start: String,
    pub end: String,
    pub status: String,
    pub contribution: i64,
    pub dfe_code: Option<String>,
    pub note: Option<String>,
    pub version: i64,
    pub current: bool,
    pub source: String,
    pub created_at: String,
}

/// A placement as the reports show it (SPEC §4.0).
#[derive(Debug, Clone)]
pub struct PlacementRecord {
    pub school_org_id: Option<i64>,
    pub provider_org_id: i64,
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub school: Option<String>,
    pub provider: String,
    pub course: String,
    pub start_date: String,
    pub end_date: Option<String>,
    pub cohort: Option<String>,
    pub qualification: Option<String>,
    pub partnership: Option<String>,
    pub referral: Option<String>,
}

/// A learner as `learners.csv` shows it.
#[derive(Debug, Clone)]
pub struct LearnerRecord {
    pub school_org_id: Option<i64>,
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub date_of_birth: Option<String>,
    pub gender: Option<String>,
    pub year_group: Option<String>,
    /// Roster extras and referral facts (sen, fsm, contacts, in care, …) as JSON.
    pub details: String,
    pub school: Option<String>,
    pub school_name: Option<String>,
    pub school_email: Option<String>,
}

/// One version of a progress, appraisal, assessment or target entry, with its placement.
#[derive(Debug, Clone)]
pub struct EntryRecord {
    pub kind: String,
    pub school_org_id: Option<i64>,
    pub provider_org_id: i64,
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub school: Option<String>,
    pub provider: String,
    pub course: String,
    pub placement_start: String,
    /// The columns as sent, as JSON.
    pub fields: String,
    pub version: i64,
    pub current: bool,
    pub created_at: String,
}

/// A miscellaneous note on a learner.
#[derive(Debug, Clone)]
pub struct NoteRecord {
    pub school_org_id: Option<i64>,
    pub upn: String,
    pub surname: String,
    pub forename: String,
    pub author_org: String,
    pub author: String,
    pub subject: String,
    pub note: String,
    pub created_at: String,
}

/// One delivery of a transfer, for `transfers.csv`.
#[derive(Debug, Clone)]
pub struct TransferRecord {
    pub sender_org_id: i64,
    pub recipient_org_id: i64,
    pub sent_at: String,
    pub sender: String,
    pub sent_by: Option<String>,
    pub recipient: String,
    pub role: String,
    pub folder: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// `clean`, `unscanned` or `refused` (the hub's rows of refused uploads, with no recipient).
    pub scan: String,
    pub downloaded_by: Option<String>,
    pub downloaded_at: Option<String>,
    pub recalled_at: Option<String>,
    pub expired_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ReferralRecord {
    pub reference: String,
    pub school: String,
    pub upn: String,
    pub tier: i64,
    pub received_at: String,
    pub form: String,
}

#[derive(Debug, Clone)]
pub struct WithdrawalRecord {
    /// The learner's home school, when the learner is known.
    pub school_org_id: Option<i64>,
    pub provider_org_id: i64,
    pub reference: String,
    pub requester: String,
    pub provider: String,
    pub upn: String,
    pub course: String,
    pub requested_last_day: String,
    pub reason: String,
    pub meeting_date: Option<String>,
    pub received_at: String,
    pub deadline: String,
}

/// Audit counts per organisation and day.
#[derive(Debug, Clone)]
pub struct ActivityRecord {
    pub day: String,
    pub org: String,
    pub logins: i64,
    pub failed_logins: i64,
    pub uploads: i64,
    pub downloads: i64,
    pub denials: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    Done,
    /// The recipient has downloaded it: the transfer is fixed.
    AlreadyDownloaded,
    NotFound,
    NameTaken,
}

/// A message claimed for sending (see [`crate::mail`]).
#[derive(Debug, Clone)]
pub struct MailRow {
    pub id: i64,
    pub kind: String,
    pub to_org_id: i64,
    pub to_role: Role,
    pub to_user_id: Option<i64>,
    /// Count per organisation the message is about.
    pub about: std::collections::BTreeMap<i64, i64>,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone)]
pub enum MailOutcome<'a> {
    Sent,
    Retry { error: &'a str, at: &'a str },
    Dead { error: &'a str },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailCounts {
    /// Pending or being sent.
    pub waiting: i64,
    pub sent: i64,
    pub dead: i64,
}

#[async_trait]
pub trait Database: Send + Sync {
    async fn add_org(&self, org: &NewOrg, audit: &AuditEntry) -> anyhow::Result<Org>;
    async fn orgs(&self) -> anyhow::Result<Vec<Org>>;
    async fn org_by_slug(&self, slug: &str) -> anyhow::Result<Option<Org>>;
    async fn hub(&self) -> anyhow::Result<Option<Org>>;
    async fn disable_org(&self, slug: &str, audit: &AuditEntry) -> anyhow::Result<bool>;

    async fn add_user(&self, user: &NewUser, audit: &AuditEntry) -> anyhow::Result<i64>;
    async fn users(&self) -> anyhow::Result<Vec<User>>;
    async fn disable_user(&self, username: &str, audit: &AuditEntry) -> anyhow::Result<bool>;
    async fn add_user_key(
        &self,
        username: &str,
        key: &str,
        fingerprint: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<bool>;
    async fn login_user(&self, username: &str) -> anyhow::Result<Option<LoginUser>>;
    /// Users that may no longer be logged in: disabled, or of a disabled organisation.
    async fn inactive_user_ids(&self) -> anyhow::Result<Vec<i64>>;

    /// Records a committed file, its deliveries, an event and the audit entry in one transaction.
    async fn commit_upload(
        &self,
        upload: &NewUpload,
        audit: &AuditEntry,
    ) -> anyhow::Result<CommittedUpload>;
    /// Records a refused upload with its audit entry and, for malware, the alert (SPEC §5).
    async fn refuse_upload(&self, up: &RefusedUpload, audit: &AuditEntry) -> anyhow::Result<()>;
    /// Visible inbox files of `org_id` addressed to one of `roles`; `folder` narrows to one
    /// inbox folder (the sender's slug for the hub).
    async fn inbox(
        &self,
        org_id: i64,
        roles: &[Role],
        folder: Option<&str>,
    ) -> anyhow::Result<Vec<InboxFile>>;
    async fn outbox(&self, org_id: i64, folder: &str) -> anyhow::Result<Vec<OutboxFile>>;
    /// Records the first complete download of a delivery; `false` (nothing recorded) when the
    /// sender recalled it meanwhile.
    async fn mark_downloaded(
        &self,
        delivery_id: i64,
        username: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<bool>;
    /// Whether the sender has recalled the transfer of this delivery.
    async fn delivery_recalled(&self, delivery_id: i64) -> anyhow::Result<bool>;
    async fn delete_delivery(&self, delivery_id: i64, audit: &AuditEntry) -> anyhow::Result<()>;
    async fn recall_upload(
        &self,
        upload_id: i64,
        audit: &AuditEntry,
    ) -> anyhow::Result<ChangeOutcome>;
    async fn rename_upload(
        &self,
        upload_id: i64,
        new_name: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<ChangeOutcome>;
    /// Bytes stored for files an organisation sent and that have not expired.
    async fn org_usage(&self, org_id: i64) -> anyhow::Result<u64>;
    /// Every blob the database refers to (for cleaning orphans out of the store).
    async fn blob_names(&self) -> anyhow::Result<Vec<String>>;
    /// Marks uploads received before `before` as expired (audited, one entry each) and returns
    /// the blobs of every expired upload, for deletion from the store.
    async fn expire_uploads(
        &self,
        before: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<(usize, Vec<String>)>;

    async fn ingest_job(&self, job_id: i64) -> anyhow::Result<Option<IngestJob>>;
    /// Pending jobs created before `before` (younger ones are still being processed at close).
    async fn pending_ingest_jobs(&self, before: &str) -> anyhow::Result<Vec<i64>>;
    /// The earlier file (`name at time`) with the same bytes, kind and sender that was applied
    /// (at least one row accepted: a file whose every row was refused, say before the hub made
    /// the placements it needed, is applied when it is sent again).
    async fn applied_duplicate(&self, job: &IngestJob) -> anyhow::Result<Option<String>>;
    /// Applies a parsed file, stores its receipt and marks the job done, in one transaction.
    /// `None` when the job was done already (nothing is applied twice).
    async fn apply_ingest(
        &self,
        job: &IngestJob,
        batch: &Batch,
        audit: &AuditEntry,
    ) -> anyhow::Result<Option<ApplyReport>>;
    /// The receipts of the files `org_id` sent, as its own users (`hub_view` false) or the hub
    /// (with what only the hub may read) see them.
    async fn receipt_list(&self, org_id: i64, hub_view: bool) -> anyhow::Result<Vec<ReceiptEntry>>;
    /// One receipt by name, seen the same way.
    async fn receipt(
        &self,
        org_id: i64,
        name: &str,
        hub_view: bool,
    ) -> anyhow::Result<Option<ReceiptFile>>;

    /// Marks in scope; `current_only` leaves out amended versions.
    async fn marks(&self, scope: MarkScope, current_only: bool) -> anyhow::Result<Vec<MarkRecord>>;
    /// Placements in scope (the same scopes as marks: all, a school's learners', a provider's).
    async fn placements(&self, scope: MarkScope) -> anyhow::Result<Vec<PlacementRecord>>;
    /// Learners in scope: all, a school's, or those with a placement at a provider.
    async fn learners(&self, scope: MarkScope) -> anyhow::Result<Vec<LearnerRecord>>;
    /// Progress, appraisal, assessment and target entries of the placements in scope, every
    /// version.
    async fn training_entries(&self, scope: MarkScope) -> anyhow::Result<Vec<EntryRecord>>;
    /// Notes on the learners in scope (as for [`Database::learners`]).
    async fn learner_notes(&self, scope: MarkScope) -> anyhow::Result<Vec<NoteRecord>>;
    /// Deliveries sent or received by `org_id` (all for `None`).
    async fn transfers(&self, org_id: Option<i64>) -> anyhow::Result<Vec<TransferRecord>>;
    /// Referrals of one school (all for `None`).
    async fn referrals(&self, school_org_id: Option<i64>) -> anyhow::Result<Vec<ReferralRecord>>;
    /// Withdrawals requested by `org_id`, of its placements or of its learners (all for `None`).
    async fn withdrawals(&self, org_id: Option<i64>) -> anyhow::Result<Vec<WithdrawalRecord>>;
    async fn activity(&self) -> anyhow::Result<Vec<ActivityRecord>>;

    /// Stored blobs (of uploads not expired) not yet re-encrypted to the recipient set `recipients`.
    async fn blobs_to_reencrypt(&self, recipients: &str) -> anyhow::Result<Vec<String>>;
    async fn mark_reencrypted(
        &self,
        blob: &str,
        recipients: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<()>;

    /// Writes a notice for every `dsl` delivery received before `received_before` and still not
    /// downloaded (once per delivery); returns how many.
    async fn escalate_dsl(&self, received_before: &str) -> anyhow::Result<usize>;
    /// Claims up to `limit` due messages until `lease_until`; a grouped message is due once it
    /// was created before `grouped_before`. A claim that runs out is taken again.
    async fn claim_mail(
        &self,
        grouped_before: &str,
        lease_until: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<MailRow>>;
    /// The addresses of a message: the organisation's contact for the role, its users with that
    /// role and an address, and the uploader for a receipt.
    async fn mail_recipients(&self, row: &MailRow) -> anyhow::Result<Vec<String>>;
    async fn mail_done(&self, id: i64, outcome: &MailOutcome<'_>) -> anyhow::Result<()>;
    async fn mail_counts(&self) -> anyhow::Result<MailCounts>;
    /// Ingest jobs per state (`pending`, `done`).
    async fn ingest_job_counts(&self) -> anyhow::Result<Vec<(String, i64)>>;

    /// Counts a failed login for the address and the user name (one window of `ban` from the
    /// first failure); the `limit`-th failure bans that address or user for `ban`. Returns
    /// whether this failure started a ban.
    async fn record_auth_failure(
        &self,
        address: &str,
        username: &str,
        limit: u32,
        ban: std::time::Duration,
    ) -> anyhow::Result<bool>;
    /// Whether the address (or the user, when given) is banned now.
    async fn auth_banned(&self, address: &str, username: Option<&str>) -> anyhow::Result<bool>;
    /// A login succeeded: the user's failure count starts again (a ban stays).
    async fn clear_auth_failures(&self, username: &str) -> anyhow::Result<()>;
    /// Bans in force: (addresses, users).
    async fn bans_in_force(&self) -> anyhow::Result<(i64, i64)>;
    /// Forgets failure counts older than `older_than` that no ban keeps.
    async fn prune_auth_failures(&self, older_than: std::time::Duration) -> anyhow::Result<()>;
    /// Admits a session of `user_id` on `node` unless the user has `limit` live sessions on all
    /// nodes (rows not renewed within `stale_after` no longer count); returns the session's id.
    async fn open_session(
        &self,
        node: &str,
        user_id: i64,
        limit: u32,
        stale_after: std::time::Duration,
    ) -> anyhow::Result<Option<i64>>;
    async fn close_session(&self, id: i64) -> anyhow::Result<()>;
    /// Marks every session of `node` as still alive.
    async fn renew_sessions(&self, node: &str) -> anyhow::Result<()>;
    /// Forgets every session of `node` (it is shutting down).
    async fn end_node_sessions(&self, node: &str) -> anyhow::Result<()>;

    async fn audit(&self, entry: &AuditEntry) -> anyhow::Result<()>;
    /// All audit records in order and the head record.
    async fn audit_records(&self) -> anyhow::Result<(Vec<AuditRecord>, Option<(i64, String)>)>;
}
