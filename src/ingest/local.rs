//! Files that arrive without an SFTP session (`apgate ingest`, later the drop folders): stored
//! and committed like any upload to the hub, then processed by the same pipeline.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::audit::AuditEntry;
use crate::db::{NewUpload, Recipient};
use crate::domain::org::Role;
use crate::domain::tree::IngestKind;
use crate::gateway::Gateway;

/// What became of a local file.
pub struct LocalIngest {
    pub upload_id: i64,
    pub receipt: Option<String>,
    pub unreadable: Option<String>,
}

/// Encrypts `path` into the store as an upload of `org_slug` into the folder of `kind`, commits
/// it, and processes it at once.
pub async fn ingest_file(
    gw: &Gateway,
    org_slug: &str,
    kind: IngestKind,
    path: &Path,
    source: &str,
) -> anyhow::Result<LocalIngest> {
    let org = gw
        .db
        .org_by_slug(org_slug)
        .await?
        .with_context(|| format!("no organisation with slug `{org_slug}`"))?;
    anyhow::ensure!(
        kind.sent_by(org.kind),
        "a {} does not send {} files",
        org.kind,
        kind.as_str()
    );
    let hub = gw
        .db
        .hub()
        .await?
        .context("there is no hub organisation yet")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", path.display()))?
        .to_string();
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut writer = gw.vault.begin_upload(gw.config().scan.stream())?;
    let mut total = 0u64;
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        anyhow::ensure!(
            total <= gw.config().limits.max_file_size,
            "{} is larger than limits.max_file_size",
            path.display()
        );
        buf.truncate(n);
        writer.write(Bytes::from(buf)).await?;
    }
    let sealed = writer.finish().await?;
    let attempt = crate::scan::Attempt {
        sender_org_id: org.id,
        sender_user_id: None,
        folder: kind.folder().to_string(),
        name: name.clone(),
        recipient_role: Role::Coordinator,
    };
    let audit = AuditEntry::new("upload refused", "").by(source, &org.slug, "local");
    // A refusal is the error itself, so a drop folder can tell it from a fault.
    let scan = crate::scan::screen(gw, &sealed, attempt, audit).await?;
    gw.vault.store(&sealed)?;
    let upload = NewUpload {
        sender_org_id: org.id,
        sender_user_id: None,
        folder: kind.folder().to_string(),
        name: name.clone(),
        recipient_role: Role::Coordinator,
        ingest_kind: Some(kind.as_str().to_string()),
        blob: sealed.blob.clone(),
        size: sealed.size,
        sha256: sealed.sha256.clone(),
        recipients: vec![Recipient {
            org_id: hub.id,
            inbox_folder: org.slug.clone(),
        }],
        scan,
    };
    let entry = AuditEntry::new("upload", "ok")
        .by(source, &org.slug, "local")
        .detail(format!(
            "/{}/{name}: {} bytes, sha256 {}, {}",
            kind.folder(),
            sealed.size,
            sealed.sha256,
            scan.as_str()
        ));
    let committed = match gw.db.commit_upload(&upload, &entry).await {
        Ok(c) => c,
        Err(e) => {
            let _ = gw.vault.remove(&sealed.blob);
            return Err(e);
        }
    };
    metrics::counter!(crate::metrics::TRANSFERS_COMMITTED, "source" => source.to_string())
        .increment(1);
    let job = committed.job_id.context("an ingest upload has a job")?;
    let report = super::process(gw, job).await?;
    let receipt = match gw.db.ingest_job(job).await? {
        Some(j) => {
            let wanted = super::receipt::receipt_name(&j.received_at, &j.file_name);
            gw.db.receipt(org.id, &wanted, false).await?.map(|r| r.body)
        }
        None => None,
    };
    Ok(LocalIngest {
        upload_id: committed.upload_id,
        receipt,
        unreadable: report.and_then(|r| r.unreadable),
    })
}
