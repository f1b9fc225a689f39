//! The database behind the gateway: one [`Database`] trait of plain domain methods and one
//! implementation per backend. The backend is picked once, from the URL scheme, by [`open`].

mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::{AuditEntry, AuditRecord};
use crate::domain::org::{OrgKind, Role};

pub type Db = Arc<dyn Database>;

/// Opens (creating if needed) and migrates the database named by `url`.
pub async fn open(url: &str) -> anyhow::Result<Db> {
    if url.starts_with("sqlite://") {
        Ok(Arc::new(sqlite::SqliteDb::open(url).await?))
    } else {
        anyhow::bail!(
            "database `{}`: only sqlite:// is built into this version of apgate",
            redact_url(url)
        )
    }
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
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
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
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub org_slug: String,
    pub username: String,
    pub roles: Vec<Role>,
    pub password_hash: Option<String>,
    /// (OpenSSH public key line, fingerprint)
    pub keys: Vec<(String, String)>,
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
    pub sender_user_id: i64,
    pub folder: String,
    pub name: String,
    pub recipient_role: Role,
    pub ingest_kind: Option<String>,
    pub blob: String,
    pub size: u64,
    pub sha256: String,
    pub recipients: Vec<Recipient>,
}

#[derive(Debug, Clone)]
pub struct CommittedUpload {
    pub upload_id: i64,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    Done,
    /// The recipient has downloaded it: the transfer is fixed.
    AlreadyDownloaded,
    NotFound,
    NameTaken,
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
    /// Visible inbox files of `org_id` addressed to one of `roles`; `folder` narrows to one
    /// inbox folder (the sender's slug for the hub).
    async fn inbox(
        &self,
        org_id: i64,
        roles: &[Role],
        folder: Option<&str>,
    ) -> anyhow::Result<Vec<InboxFile>>;
    async fn outbox(&self, org_id: i64, folder: &str) -> anyhow::Result<Vec<OutboxFile>>;
    /// Records the first complete download of a delivery.
    async fn mark_downloaded(
        &self,
        delivery_id: i64,
        username: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<()>;
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

    async fn audit(&self, entry: &AuditEntry) -> anyhow::Result<()>;
    /// All audit records in order and the head record.
    async fn audit_records(&self) -> anyhow::Result<(Vec<AuditRecord>, Option<(i64, String)>)>;
}
