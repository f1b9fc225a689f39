//! The one implementation of [`Database`], on SQLite (the embedded default) or PostgreSQL through
//! sqlx's `Any` driver. The SQL is written once for both; the few differences (how a write
//! transaction takes its lock, connection settings, the migrations) are in [`Backend`].

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use super::*;
use crate::audit::{GENESIS, entry_hash};
use crate::domain::names::with_copy_number;
use crate::domain::org::{format_roles, parse_roles};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

impl Backend {
    fn migrations(self) -> &'static sqlx::migrate::Migrator {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// The length in bytes of a text column.
    pub fn byte_length(self, column: &str) -> String {
        match self {
            Backend::Sqlite => format!("LENGTH(CAST({column} AS BLOB))"),
            Backend::Postgres => format!("OCTET_LENGTH({column})"),
        }
    }

    /// Parameter `n` (from 1) of a statement built at run time. SQLite gets `?`: it looks up
    /// `$n` by name, which is quadratic in a statement with thousands of parameters (measured:
    /// a 1,000,000-row register took 36 times longer).
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Backend::Sqlite => "?".to_string(),
            Backend::Postgres => format!("${n}"),
        }
    }
}

pub struct SqlDb {
    pub(super) pool: AnyPool,
    pub(super) backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Every write transaction on PostgreSQL first takes this advisory lock, so writers are
/// serialised across all gateway processes as SQLite serialises them within one file: claims of
/// ingest jobs and mail, unique inbox names and the audit chain's head stay consistent.
const WRITE_LOCK: i64 = 0x6170_6761_7465; // "apgate"

/// SQLite settings for every connection. Measured on a 1,000,000-row register
/// (docs/benchmarks.md): a larger page cache, memory-mapped reads and an in-memory temp store
/// keep SQLite out of read syscalls.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
    PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000; PRAGMA cache_size = -65536;
    PRAGMA mmap_size = 268435456; PRAGMA temp_store = MEMORY;";

/// Connects once, retrying a few times with back-off, so that a server that is not up yet gets a
/// moment and one that is unreachable gives its own error (not a pool timeout). Under systemd
/// the unit's restart policy retries further.
async fn reach(opts: &AnyConnectOptions, url: &str) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, Connection};
    let mut delay = Duration::from_millis(500);
    for attempt in 1.. {
        match opts.connect().await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) if attempt < 4 => {
                tracing::warn!(
                    "database {} not reachable (attempt {attempt}): {e}; retrying in {delay:?}",
                    redact_url(url)
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot connect to the database {}", redact_url(url))
                });
            }
        }
    }
    Ok(())
}

impl SqlDb {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let db = Self::connect(url).await?;
        db.backend
            .migrations()
            .run(&db.pool)
            .await
            .context("cannot apply database migrations")?;
        Ok(db)
    }

    /// Creates a database with the migrations up to `last` only: the schema an earlier release
    /// left, for the tests of an upgrade.
    pub async fn create_as_of(url: &str, last: i64) -> anyhow::Result<()> {
        let db = Self::connect(url).await?;
        let all = db.backend.migrations();
        let earlier = sqlx::migrate::Migrator {
            migrations: all
                .iter()
                .filter(|m| m.version <= last)
                .cloned()
                .collect::<Vec<_>>()
                .into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        earlier
            .run(&db.pool)
            .await
            .context("cannot apply the earlier migrations")?;
        db.pool.close().await;
        Ok(())
    }

    async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).with_context(|| {
            format!(
                "database `{}`: the URL must start with sqlite:// or postgres://",
                redact_url(url)
            )
        })?;
        let mut url = url.to_string();
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string();
            if let Some(dir) = std::path::Path::new(&path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create database folder {}", dir.display()))?;
            }
            if !url.contains('?') {
                url.push_str("?mode=rwc");
            }
        }
        let opts = AnyConnectOptions::from_str(&url)
            .with_context(|| format!("database url `{}`", redact_url(&url)))?;
        if backend == Backend::Postgres {
            reach(&opts, &url).await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .with_context(|| format!("cannot connect to the database {}", redact_url(&url)))?;
        Ok(SqlDb { pool, backend })
    }

    /// A write transaction: it holds the database's write lock from its first statement, so a
    /// read-then-write inside it never races another writer.
    pub(super) async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }
}

/// Ends a sender's change to an upload (recall, rename): audited as refused unless it was done,
/// in the same transaction.
async fn finish_change(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    audit: &AuditEntry,
    outcome: ChangeOutcome,
) -> anyhow::Result<ChangeOutcome> {
    let mut audit = audit.clone();
    if outcome != ChangeOutcome::Done {
        audit.outcome = "refused".into();
    }
    append_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(outcome)
}

pub(super) async fn append_audit(conn: &mut AnyConnection, e: &AuditEntry) -> anyhow::Result<()> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    let (prev_seq, prev_hash) = head.unwrap_or((0, GENESIS.to_string()));
    let seq = prev_seq + 1;
    let at = now_text();
    let hash = entry_hash(seq, &at, e, &prev_hash);
    sqlx::query(
        "INSERT INTO audit (seq, at, actor, org, address, action, outcome, detail, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(seq)
    .bind(&at)
    .bind(&e.actor)
    .bind(&e.org)
    .bind(&e.address)
    .bind(&e.action)
    .bind(&e.outcome)
    .bind(&e.detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .bind(seq)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) const ORG_COLUMNS: &str =
    "id, slug, kind, name, urn, ukprn, coordinator_email, dsl_email, disabled";

pub(super) fn org_from_row(r: &sqlx::any::AnyRow) -> anyhow::Result<Org> {
    let kind: String = r.try_get("kind")?;
    Ok(Org {
        id: r.try_get("id")?,
        slug: r.try_get("slug")?,
        kind: OrgKind::from_str(&kind).map_err(anyhow::Error::msg)?,
        name: r.try_get("name")?,
        urn: r.try_get("urn")?,
        ukprn: r.try_get("ukprn")?,
        coordinator_email: r.try_get("coordinator_email")?,
        dsl_email: r.try_get("dsl_email")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
    })
}

fn roles_from(text: &str) -> anyhow::Result<Vec<Role>> {
    parse_roles(text).map_err(anyhow::Error::msg)
}

/// A set of names in which a file name must be unique.
enum NameSpace<'a> {
    /// The pending files of a sender's write folder.
    Outbox { org_id: i64, folder: &'a str },
    /// The visible files of a recipient's inbox folder (a folder of that name counts too).
    Inbox { org_id: i64, folder: &'a str },
}

async fn name_taken(
    conn: &mut AnyConnection,
    space: &NameSpace<'_>,
    name: &str,
) -> anyhow::Result<bool> {
    let (sql, org_id, folder) = match space {
        NameSpace::Outbox { org_id, folder } => (
            "SELECT COUNT(*) FROM uploads u
             WHERE u.sender_org_id = $1 AND u.folder = $2 AND u.name = $3 AND u.recalled_at IS NULL
               AND EXISTS (SELECT 1 FROM deliveries d WHERE d.upload_id = u.id
                           AND d.downloaded_at IS NULL AND d.recalled_at IS NULL)",
            org_id,
            folder,
        ),
        NameSpace::Inbox { org_id, folder } => (
            "SELECT COUNT(*) FROM deliveries
             WHERE recipient_org_id = $1 AND inbox_folder = $2
               AND (inbox_name = $3 OR substr(inbox_name, 1, length($3) + 1) = $3 || '/')
               AND deleted_at IS NULL AND recalled_at IS NULL",
            org_id,
            folder,
        ),
    };
    let n: i64 = sqlx::query_scalar(sql)
        .bind(*org_id)
        .bind(*folder)
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(n > 0)
}

/// The first of `name`, `name (2)`, … free in `space`.
async fn free_name(
    conn: &mut AnyConnection,
    space: &NameSpace<'_>,
    name: &str,
) -> anyhow::Result<String> {
    // Bounded: a folder with thousands of copies of one name is refused.
    for n in 1..=10_000u32 {
        let candidate = with_copy_number(name, n);
        if !name_taken(conn, space, &candidate).await? {
            return Ok(candidate);
        }
    }
    anyhow::bail!("too many files named {name}")
}

#[async_trait]
impl Database for SqlDb {
    async fn add_org(&self, org: &NewOrg, audit: &AuditEntry) -> anyhow::Result<Org> {
        let mut tx = self.begin().await?;
        let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orgs WHERE slug = $1")
            .bind(&org.slug)
            .fetch_one(&mut *tx)
            .await?;
        anyhow::ensure!(
            exists == 0,
            "an organisation with slug `{}` already exists",
            org.slug
        );
        if org.kind == OrgKind::Hub {
            let hubs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orgs WHERE kind = 'hub'")
                .fetch_one(&mut *tx)
                .await?;
            anyhow::ensure!(hubs == 0, "there is already a hub; there can be only one");
        }
        let row = sqlx::query(&format!(
            "INSERT INTO orgs (slug, kind, name, urn, ukprn, coordinator_email, dsl_email, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ORG_COLUMNS}"
        ))
        .bind(&org.slug)
        .bind(org.kind.as_str())
        .bind(&org.name)
        .bind(&org.urn)
        .bind(&org.ukprn)
        .bind(&org.coordinator_email)
        .bind(&org.dsl_email)
        .bind(now_text())
        .fetch_one(&mut *tx)
        .await?;
        let created = org_from_row(&row)?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn orgs(&self) -> anyhow::Result<Vec<Org>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM orgs ORDER BY kind, slug"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(org_from_row).collect()
    }

    async fn org_by_slug(&self, slug: &str) -> anyhow::Result<Option<Org>> {
        let row = sqlx::query(&format!("SELECT {ORG_COLUMNS} FROM orgs WHERE slug = $1"))
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn hub(&self) -> anyhow::Result<Option<Org>> {
        let row = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM orgs WHERE kind = 'hub'"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn disable_org(&self, slug: &str, audit: &AuditEntry) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE orgs SET disabled = 1 WHERE slug = $1")
            .bind(slug)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn add_user(&self, user: &NewUser, audit: &AuditEntry) -> anyhow::Result<i64> {
        let mut tx = self.begin().await?;
        let org_id: Option<i64> = sqlx::query_scalar("SELECT id FROM orgs WHERE slug = $1")
            .bind(&user.org_slug)
            .fetch_optional(&mut *tx)
            .await?;
        let org_id = org_id
            .ok_or_else(|| anyhow::anyhow!("no organisation with slug `{}`", user.org_slug))?;
        let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = $1")
            .bind(&user.username)
            .fetch_one(&mut *tx)
            .await?;
        anyhow::ensure!(
            exists == 0,
            "a user named `{}` already exists",
            user.username
        );
        let now = now_text();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (org_id, username, roles, password_hash, email, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(org_id)
        .bind(&user.username)
        .bind(format_roles(&user.roles))
        .bind(&user.password_hash)
        .bind(&user.email)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        for (key, fp) in &user.keys {
            sqlx::query(
                "INSERT INTO user_keys (user_id, public_key, fingerprint, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(key)
            .bind(fp)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn users(&self) -> anyhow::Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT u.id, o.slug, u.username, u.roles, u.disabled, CASE WHEN u.password_hash IS NULL THEN 0 ELSE 1 END AS has_pw,
                    u.email, (SELECT COUNT(*) FROM user_keys k WHERE k.user_id = u.id) AS nkeys
             FROM users u JOIN orgs o ON o.id = u.org_id ORDER BY o.slug, u.username",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(User {
                    id: r.try_get("id")?,
                    org_slug: r.try_get("slug")?,
                    username: r.try_get("username")?,
                    roles: roles_from(&r.try_get::<String, _>("roles")?)?,
                    disabled: r.try_get::<i64, _>("disabled")? != 0,
                    has_password: r.try_get::<i64, _>("has_pw")? != 0,
                    keys: r.try_get::<i64, _>("nkeys")? as usize,
                    email: r.try_get("email")?,
                })
            })
            .collect()
    }

    async fn disable_user(&self, username: &str, audit: &AuditEntry) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("UPDATE users SET disabled = 1 WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            append_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn add_user_key(
        &self,
        username: &str,
        key: &str,
        fingerprint: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(id) = id else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO user_keys (user_id, public_key, fingerprint, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(key)
        .bind(fingerprint)
        .bind(now_text())
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn login_user(&self, username: &str) -> anyhow::Result<Option<LoginUser>> {
        let row = sqlx::query(
            "SELECT u.id AS user_id, u.username, u.roles, u.password_hash, u.disabled AS user_disabled,
                    o.id, o.slug, o.kind, o.name, o.urn, o.ukprn, o.coordinator_email, o.dsl_email,
                    o.disabled
             FROM users u JOIN orgs o ON o.id = u.org_id WHERE u.username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let user_id: i64 = r.try_get("user_id")?;
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT public_key FROM user_keys WHERE user_id = $1 ORDER BY id")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(Some(LoginUser {
            user_id,
            username: r.try_get("username")?,
            org: org_from_row(&r)?,
            roles: roles_from(&r.try_get::<String, _>("roles")?)?,
            password_hash: r.try_get("password_hash")?,
            keys,
            disabled: r.try_get::<i64, _>("user_disabled")? != 0,
        }))
    }

    async fn inactive_user_ids(&self) -> anyhow::Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT u.id FROM users u JOIN orgs o ON o.id = u.org_id
             WHERE u.disabled = 1 OR o.disabled = 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn commit_upload(
        &self,
        up: &NewUpload,
        audit: &AuditEntry,
    ) -> anyhow::Result<CommittedUpload> {
        let mut tx = self.begin().await?;
        let outbox = NameSpace::Outbox {
            org_id: up.sender_org_id,
            folder: &up.folder,
        };
        let outbox_name = free_name(&mut tx, &outbox, &up.name).await?;
        let now = now_text();
        let upload_id: i64 = sqlx::query_scalar(
            "INSERT INTO uploads (sender_org_id, sender_user_id, folder, name, recipient_role,
                                  ingest_kind, blob, size, sha256, created_at, scan)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(up.sender_org_id)
        .bind(up.sender_user_id)
        .bind(&up.folder)
        .bind(&outbox_name)
        .bind(up.recipient_role.as_str())
        .bind(&up.ingest_kind)
        .bind(&up.blob)
        .bind(up.size as i64)
        .bind(&up.sha256)
        .bind(&now)
        .bind(up.scan.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let mut inbox_names = Vec::with_capacity(up.recipients.len());
        for r in &up.recipients {
            let inbox = NameSpace::Inbox {
                org_id: r.org_id,
                folder: &r.inbox_folder,
            };
            let inbox_name = free_name(&mut tx, &inbox, &up.name).await?;
            sqlx::query(
                "INSERT INTO deliveries (upload_id, recipient_org_id, recipient_role, inbox_folder, inbox_name)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(upload_id)
            .bind(r.org_id)
            .bind(up.recipient_role.as_str())
            .bind(&r.inbox_folder)
            .bind(&inbox_name)
            .execute(&mut *tx)
            .await?;
            inbox_names.push(inbox_name);
        }
        let notice = crate::mail::Notice::TransferCommitted {
            sender_org_id: up.sender_org_id,
            role: up.recipient_role,
            recipients: up.recipients.iter().map(|r| r.org_id).collect(),
            ingest_kind: up.ingest_kind.clone(),
        };
        super::sql_mail::insert_notice(&mut tx, Some(upload_id), &notice).await?;
        let job_id = match &up.ingest_kind {
            Some(kind) => Some(
                sqlx::query_scalar(
                    "INSERT INTO ingest_jobs (upload_id, kind, created_at, updated_at)
                     VALUES ($1, $2, $3, $3) RETURNING id",
                )
                .bind(upload_id)
                .bind(kind)
                .bind(&now)
                .fetch_one(&mut *tx)
                .await?,
            ),
            None => None,
        };
        let mut audit = audit.clone();
        audit.detail = format!("upload {upload_id}; {}", audit.detail);
        append_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(CommittedUpload {
            upload_id,
            job_id,
            outbox_name,
            inbox_names,
        })
    }

    async fn refuse_upload(&self, up: &RefusedUpload, audit: &AuditEntry) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO refused_uploads (sender_org_id, sender_user_id, folder, name,
                                          recipient_role, size, sha256, reason, detail, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(up.sender_org_id)
        .bind(up.sender_user_id)
        .bind(&up.folder)
        .bind(&up.name)
        .bind(up.recipient_role.as_str())
        .bind(up.size as i64)
        .bind(&up.sha256)
        .bind(&up.reason)
        .bind(&up.detail)
        .bind(now_text())
        .fetch_one(&mut *tx)
        .await?;
        if up.reason == "malware" {
            let notice = crate::mail::Notice::MalwareRefused {
                sender_org_id: up.sender_org_id,
            };
            super::sql_mail::insert_notice(&mut tx, None, &notice).await?;
        }
        let mut audit = audit.clone();
        audit.detail = format!("refused upload {id}; {}", audit.detail);
        append_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn inbox(
        &self,
        org_id: i64,
        roles: &[Role],
        folder: Option<&str>,
    ) -> anyhow::Result<Vec<InboxFile>> {
        let rows = sqlx::query(
            "SELECT d.id, d.upload_id, d.inbox_folder, d.inbox_name, d.recipient_role, u.size,
                    u.created_at, u.blob, d.downloaded_at
             FROM deliveries d JOIN uploads u ON u.id = d.upload_id
             WHERE d.recipient_org_id = $1 AND ($2 IS NULL OR d.inbox_folder = $2)
               AND d.deleted_at IS NULL AND d.recalled_at IS NULL AND u.expired_at IS NULL
             ORDER BY d.inbox_folder, d.inbox_name",
        )
        .bind(org_id)
        .bind(folder)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let role = Role::from_str(&r.try_get::<String, _>("recipient_role")?)
                .map_err(anyhow::Error::msg)?;
            if !roles.contains(&role) {
                continue;
            }
            out.push(InboxFile {
                delivery_id: r.try_get("id")?,
                upload_id: r.try_get("upload_id")?,
                inbox_folder: r.try_get("inbox_folder")?,
                inbox_name: r.try_get("inbox_name")?,
                recipient_role: role,
                size: r.try_get::<i64, _>("size")? as u64,
                created_at: r.try_get("created_at")?,
                blob: r.try_get("blob")?,
                downloaded_at: r.try_get("downloaded_at")?,
            });
        }
        Ok(out)
    }

    async fn outbox(&self, org_id: i64, folder: &str) -> anyhow::Result<Vec<OutboxFile>> {
        let rows = sqlx::query(
            "SELECT u.id, u.name, u.size, u.created_at FROM uploads u
             WHERE u.sender_org_id = $1 AND u.folder = $2 AND u.recalled_at IS NULL
               AND u.expired_at IS NULL
               AND EXISTS (SELECT 1 FROM deliveries d WHERE d.upload_id = u.id
                           AND d.downloaded_at IS NULL AND d.recalled_at IS NULL)
             ORDER BY u.name",
        )
        .bind(org_id)
        .bind(folder)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxFile {
                    upload_id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    size: r.try_get::<i64, _>("size")? as u64,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn mark_downloaded(
        &self,
        delivery_id: i64,
        username: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        let recalled: Option<String> =
            sqlx::query_scalar("SELECT recalled_at FROM deliveries WHERE id = $1")
                .bind(delivery_id)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        if recalled.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE deliveries SET downloaded_by = $1, downloaded_at = $2
             WHERE id = $3 AND downloaded_at IS NULL",
        )
        .bind(username)
        .bind(now_text())
        .bind(delivery_id)
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delivery_recalled(&self, delivery_id: i64) -> anyhow::Result<bool> {
        let recalled: Option<String> =
            sqlx::query_scalar("SELECT recalled_at FROM deliveries WHERE id = $1")
                .bind(delivery_id)
                .fetch_optional(&self.pool)
                .await?
                .flatten();
        Ok(recalled.is_some())
    }

    async fn delete_delivery(&self, delivery_id: i64, audit: &AuditEntry) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE deliveries SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(now_text())
            .bind(delivery_id)
            .execute(&mut *tx)
            .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn recall_upload(
        &self,
        upload_id: i64,
        audit: &AuditEntry,
    ) -> anyhow::Result<ChangeOutcome> {
        let mut tx = self.begin().await?;
        let downloaded: Option<i64> = sqlx::query_scalar(
            "SELECT COUNT(d.downloaded_at) FROM uploads u JOIN deliveries d ON d.upload_id = u.id
             WHERE u.id = $1 AND u.recalled_at IS NULL GROUP BY u.id",
        )
        .bind(upload_id)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match downloaded {
            None => ChangeOutcome::NotFound,
            Some(n) if n > 0 => ChangeOutcome::AlreadyDownloaded,
            Some(_) => {
                let now = now_text();
                sqlx::query("UPDATE uploads SET recalled_at = $1 WHERE id = $2")
                    .bind(&now)
                    .bind(upload_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE deliveries SET recalled_at = $1 WHERE upload_id = $2")
                    .bind(&now)
                    .bind(upload_id)
                    .execute(&mut *tx)
                    .await?;
                ChangeOutcome::Done
            }
        };
        finish_change(tx, audit, outcome).await
    }

    async fn rename_upload(
        &self,
        upload_id: i64,
        new_name: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<ChangeOutcome> {
        let mut tx = self.begin().await?;
        let row: Option<(i64, String, i64)> = sqlx::query_as(
            "SELECT u.sender_org_id, u.folder, COUNT(d.downloaded_at)
             FROM uploads u JOIN deliveries d ON d.upload_id = u.id
             WHERE u.id = $1 AND u.recalled_at IS NULL GROUP BY u.id",
        )
        .bind(upload_id)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match row {
            None => ChangeOutcome::NotFound,
            Some((_, _, n)) if n > 0 => ChangeOutcome::AlreadyDownloaded,
            Some((org_id, folder, _)) => {
                let outbox = NameSpace::Outbox {
                    org_id,
                    folder: &folder,
                };
                if name_taken(&mut tx, &outbox, new_name).await? {
                    ChangeOutcome::NameTaken
                } else {
                    sqlx::query("UPDATE uploads SET name = $1 WHERE id = $2")
                        .bind(new_name)
                        .bind(upload_id)
                        .execute(&mut *tx)
                        .await?;
                    let deliveries: Vec<(i64, i64, String)> = sqlx::query_as(
                        "SELECT id, recipient_org_id, inbox_folder FROM deliveries WHERE upload_id = $1",
                    )
                    .bind(upload_id)
                    .fetch_all(&mut *tx)
                    .await?;
                    for (id, org, folder) in deliveries {
                        // Hide this delivery's own name while choosing its new one.
                        sqlx::query("UPDATE deliveries SET inbox_name = '' WHERE id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        let inbox = NameSpace::Inbox {
                            org_id: org,
                            folder: &folder,
                        };
                        let name = free_name(&mut tx, &inbox, new_name).await?;
                        sqlx::query("UPDATE deliveries SET inbox_name = $1 WHERE id = $2")
                            .bind(&name)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    ChangeOutcome::Done
                }
            }
        };
        finish_change(tx, audit, outcome).await
    }

    async fn org_usage(&self, org_id: i64) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads WHERE sender_org_id = $1 AND expired_at IS NULL",
        )
        .bind(org_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn blob_names(&self) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT DISTINCT blob FROM uploads")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn ingest_job(&self, job_id: i64) -> anyhow::Result<Option<IngestJob>> {
        super::sql_ingest::ingest_job(self, job_id).await
    }

    async fn pending_ingest_jobs(&self, before: &str) -> anyhow::Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM ingest_jobs WHERE state = 'pending' AND created_at < $1 ORDER BY id",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn applied_duplicate(&self, job: &IngestJob) -> anyhow::Result<Option<String>> {
        super::sql_ingest::applied_duplicate(self, job).await
    }

    async fn apply_ingest(
        &self,
        job: &IngestJob,
        batch: &Batch,
        audit: &AuditEntry,
    ) -> anyhow::Result<Option<ApplyReport>> {
        super::sql_ingest::apply_ingest(self, job, batch, audit).await
    }

    async fn receipt_list(&self, org_id: i64, hub_view: bool) -> anyhow::Result<Vec<ReceiptEntry>> {
        super::sql_ingest::receipt_list(self, org_id, hub_view).await
    }

    async fn receipt(
        &self,
        org_id: i64,
        name: &str,
        hub_view: bool,
    ) -> anyhow::Result<Option<ReceiptFile>> {
        super::sql_ingest::receipt(self, org_id, name, hub_view).await
    }

    async fn marks(&self, scope: MarkScope, current_only: bool) -> anyhow::Result<Vec<MarkRecord>> {
        super::sql_reports::marks(self, scope, current_only).await
    }

    async fn placements(&self, scope: MarkScope) -> anyhow::Result<Vec<PlacementRecord>> {
        super::sql_reports::placements(self, scope).await
    }
    async fn learners(&self, scope: MarkScope) -> anyhow::Result<Vec<LearnerRecord>> {
        super::sql_reports::learners(self, scope).await
    }
    async fn training_entries(&self, scope: MarkScope) -> anyhow::Result<Vec<EntryRecord>> {
        super::sql_reports::training_entries(self, scope).await
    }
    async fn learner_notes(&self, scope: MarkScope) -> anyhow::Result<Vec<NoteRecord>> {
        super::sql_reports::learner_notes(self, scope).await
    }
    async fn transfers(&self, org_id: Option<i64>) -> anyhow::Result<Vec<TransferRecord>> {
        super::sql_reports::transfers(self, org_id).await
    }

    async fn referrals(&self, school_org_id: Option<i64>) -> anyhow::Result<Vec<ReferralRecord>> {
        super::sql_reports::referrals(self, school_org_id).await
    }

    async fn withdrawals(&self, org_id: Option<i64>) -> anyhow::Result<Vec<WithdrawalRecord>> {
        super::sql_reports::withdrawals(self, org_id).await
    }

    async fn activity(&self) -> anyhow::Result<Vec<ActivityRecord>> {
        super::sql_reports::activity(self).await
    }

    async fn expire_uploads(
        &self,
        before: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<(usize, Vec<String>)> {
        let mut tx = self.begin().await?;
        let due: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT u.id, o.slug, u.folder || '/' || u.name FROM uploads u
             JOIN orgs o ON o.id = u.sender_org_id
             WHERE u.created_at < $1 AND u.expired_at IS NULL ORDER BY u.id",
        )
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        let now = now_text();
        for (id, org, path) in &due {
            sqlx::query("UPDATE uploads SET expired_at = $1 WHERE id = $2")
                .bind(&now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let mut entry = audit.clone();
            entry.org = org.clone();
            entry.detail =
                format!("upload {id}: /{path}: stored file deleted after the retention period");
            append_audit(&mut tx, &entry).await?;
        }
        let blobs: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT blob FROM uploads WHERE expired_at IS NOT NULL")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok((due.len(), blobs))
    }

    async fn blobs_to_reencrypt(&self, recipients: &str) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT u.blob FROM uploads u WHERE u.expired_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM reencrypted r WHERE r.blob = u.blob AND r.recipients = $1)
             ORDER BY u.blob",
        )
        .bind(recipients)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn mark_reencrypted(
        &self,
        blob: &str,
        recipients: &str,
        audit: &AuditEntry,
    ) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO reencrypted (blob, recipients, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(blob)
        .bind(recipients)
        .bind(now_text())
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit(&self, entry: &AuditEntry) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        append_audit(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn escalate_dsl(&self, received_before: &str) -> anyhow::Result<usize> {
        super::sql_mail::escalate_dsl(self, received_before).await
    }

    async fn claim_mail(
        &self,
        grouped_before: &str,
        lease_until: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<MailRow>> {
        super::sql_mail::claim_mail(self, grouped_before, lease_until, limit).await
    }

    async fn mail_recipients(&self, row: &MailRow) -> anyhow::Result<Vec<String>> {
        super::sql_mail::mail_recipients(self, row).await
    }

    async fn mail_done(&self, id: i64, outcome: &MailOutcome<'_>) -> anyhow::Result<()> {
        super::sql_mail::mail_done(self, id, outcome).await
    }

    async fn mail_counts(&self) -> anyhow::Result<MailCounts> {
        super::sql_mail::mail_counts(self).await
    }

    async fn ingest_job_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT state, COUNT(*) FROM ingest_jobs GROUP BY state")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn record_auth_failure(
        &self,
        address: &str,
        username: &str,
        limit: u32,
        ban: Duration,
    ) -> anyhow::Result<bool> {
        super::sql_guard::record_auth_failure(self, address, username, limit, ban).await
    }

    async fn auth_banned(&self, address: &str, username: Option<&str>) -> anyhow::Result<bool> {
        super::sql_guard::auth_banned(self, address, username).await
    }

    async fn clear_auth_failures(&self, username: &str) -> anyhow::Result<()> {
        super::sql_guard::clear_auth_failures(self, username).await
    }

    async fn bans_in_force(&self) -> anyhow::Result<(i64, i64)> {
        super::sql_guard::bans_in_force(self).await
    }

    async fn prune_auth_failures(&self, older_than: Duration) -> anyhow::Result<()> {
        super::sql_guard::prune_auth_failures(self, older_than).await
    }

    async fn open_session(
        &self,
        node: &str,
        user_id: i64,
        limit: u32,
        stale_after: Duration,
    ) -> anyhow::Result<Option<i64>> {
        super::sql_guard::open_session(self, node, user_id, limit, stale_after).await
    }

    async fn close_session(&self, id: i64) -> anyhow::Result<()> {
        super::sql_guard::close_session(self, id).await
    }

    async fn renew_sessions(&self, node: &str) -> anyhow::Result<()> {
        super::sql_guard::renew_sessions(self, node).await
    }

    async fn end_node_sessions(&self, node: &str) -> anyhow::Result<()> {
        super::sql_guard::end_node_sessions(self, node).await
    }

    async fn audit_records(&self) -> anyhow::Result<(Vec<AuditRecord>, Option<(i64, String)>)> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, org, address, action, outcome, detail, prev_hash, hash
             FROM audit ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        let records = rows
            .iter()
            .map(|r| {
                Ok(AuditRecord {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    entry: AuditEntry {
                        actor: r.try_get("actor")?,
                        org: r.try_get("org")?,
                        address: r.try_get("address")?,
                        action: r.try_get("action")?,
                        outcome: r.try_get("outcome")?,
                        detail: r.try_get("detail")?,
                    },
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok((records, head))
    }
}
