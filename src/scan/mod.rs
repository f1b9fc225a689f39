//! Malware scanning (SPEC §7): every upload streams to clamd while it is encrypted, and the
//! verdict decides the commit. What a verdict means is decided here, in [`decide`]; the bytes go
//! to clamd through [`clamd::InStream`] on the upload pool (`vault`), and what a refusal
//! leaves behind (audit, record, mail) is in [`refuse`].

pub mod clamd;

use std::time::Duration;

use serde::Deserialize;

use crate::audit::AuditEntry;
use crate::db::RefusedUpload;
use crate::gateway::Gateway;
use crate::vault::SealedBlob;

/// What clamd said about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No scanner is configured.
    NotScanned,
    Clean,
    /// The signature's name.
    Infected(String),
    /// clamd could not be reached, timed out, refused the stream (its size limit) or answered
    /// something else: why.
    Failed(String),
}

/// `scan.on_error`: what to do with a file that could not be scanned.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the upload is refused and the sender told to try later.
    #[default]
    Refuse,
    /// Commit it, marked `unscanned`.
    Deliver,
}

/// How a committed transfer was scanned, as `transfers.csv` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Clean,
    Unscanned,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Clean => "clean",
            Mark::Unscanned => "unscanned",
        }
    }
}

/// Why a file was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("refused: malware detected ({0}); nothing was delivered")]
    Malware(String),
    #[error(
        "refused: the file could not be checked for malware, so nothing was delivered; \
         please try again later"
    )]
    Unscanned(String),
}

impl Refusal {
    /// The reason stored with the refused upload.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malware(_) => "malware",
            Refusal::Unscanned(_) => "unscanned",
        }
    }

    /// The signature, or why the scan failed.
    pub fn detail(&self) -> &str {
        match self {
            Refusal::Malware(d) | Refusal::Unscanned(d) => d,
        }
    }
}

/// The rule: a clean file is committed as clean; an infected one never; one that could not be
/// scanned as `on_error` says; with no scanner configured, every file is unscanned.
pub fn decide(verdict: &Verdict, on_error: OnError) -> Result<Mark, Refusal> {
    match (verdict, on_error) {
        (Verdict::NotScanned, _) => Ok(Mark::Unscanned),
        (Verdict::Clean, _) => Ok(Mark::Clean),
        (Verdict::Infected(name), _) => Err(Refusal::Malware(name.clone())),
        (Verdict::Failed(why), OnError::Refuse) => Err(Refusal::Unscanned(why.clone())),
        (Verdict::Failed(_), OnError::Deliver) => Ok(Mark::Unscanned),
    }
}

/// The `scan:` section of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// `unix:/run/clamav/clamd.ctl` or `tcp:127.0.0.1:3310`; empty: no scanning.
    pub clamd: String,
    pub on_error: OnError,
    /// clamd's own config, read by `check-config` for its `TemporaryDirectory`.
    pub clamd_config: std::path::PathBuf,
    /// Seconds clamd may take to read the next bytes or to answer at the end.
    pub timeout_s: u64,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            clamd: String::new(),
            on_error: OnError::Refuse,
            clamd_config: "/etc/clamav/clamd.conf".into(),
            timeout_s: 60,
        }
    }
}

impl ScanConfig {
    /// clamd's address, when scanning is on (validation has checked it parses).
    pub fn address(&self) -> Option<clamd::Address> {
        (!self.clamd.is_empty())
            .then(|| self.clamd.parse().ok())
            .flatten()
    }

    /// A stream to clamd for one upload, when scanning is on.
    pub fn stream(&self) -> Option<clamd::InStream> {
        self.address()
            .map(|a| clamd::InStream::new(a, Duration::from_secs(self.timeout_s.max(1))))
    }
}

/// Who sent a file, where to: what a refusal records besides the file's size and hash.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub sender_org_id: i64,
    pub sender_user_id: Option<i64>,
    pub folder: String,
    pub name: String,
    pub recipient_role: crate::domain::org::Role,
}

/// Applies [`decide`] to a sealed upload. A refusal discards the spool file and leaves its
/// record, an audit entry (`audit` names who sent it) and, for malware, the alert; then the
/// caller tells the sender.
pub async fn screen(
    gw: &Gateway,
    sealed: &SealedBlob,
    attempt: Attempt,
    audit: AuditEntry,
) -> Result<Mark, Refusal> {
    let verdict_label = match &sealed.scan {
        Verdict::NotScanned => "off",
        Verdict::Clean => "clean",
        Verdict::Infected(_) => "infected",
        Verdict::Failed(_) => "error",
    };
    metrics::counter!(crate::metrics::SCAN_VERDICTS, "verdict" => verdict_label).increment(1);
    let refusal = match decide(&sealed.scan, gw.config().scan.on_error) {
        Ok(mark) => {
            if let Verdict::Failed(why) = &sealed.scan {
                tracing::error!(
                    org = %audit.org, folder = %attempt.folder,
                    "clamd failed ({why}); delivered unscanned as scan.on_error says"
                );
            }
            return Ok(mark);
        }
        Err(r) => r,
    };
    gw.vault.discard(sealed);
    match &refusal {
        Refusal::Malware(name) => tracing::warn!(
            org = %audit.org, user = %audit.actor, folder = %attempt.folder,
            sha256 = %sealed.sha256, signature = %name, "upload refused: malware detected"
        ),
        Refusal::Unscanned(why) => tracing::error!(
            org = %audit.org, user = %audit.actor, folder = %attempt.folder,
            "upload refused: clamd failed ({why}); check clamd (scan.clamd)"
        ),
    }
    let record = RefusedUpload {
        sender_org_id: attempt.sender_org_id,
        sender_user_id: attempt.sender_user_id,
        folder: attempt.folder,
        name: attempt.name,
        recipient_role: attempt.recipient_role,
        size: sealed.size,
        sha256: sealed.sha256.clone(),
        reason: refusal.reason().to_string(),
        detail: refusal.detail().to_string(),
    };
    let entry = AuditEntry {
        outcome: refusal.reason().to_string(),
        detail: format!(
            "/{}/{}: {} bytes, sha256 {}, {}: {}",
            record.folder,
            record.name,
            record.size,
            record.sha256,
            match refusal {
                Refusal::Malware(_) => "signature",
                Refusal::Unscanned(_) => "scan failed",
            },
            record.detail
        ),
        ..audit
    };
    if let Err(e) = gw.db.refuse_upload(&record, &entry).await {
        tracing::error!("cannot record the refused upload: {e:#}");
    }
    Err(refusal)
}

/// What `check-config` warns about: clamd not answering, and its `TemporaryDirectory` (where
/// it spools each stream while it scans) not on a tmpfs, so plaintext would touch a disk.
pub fn warnings(cfg: &ScanConfig) -> Vec<String> {
    let Some(address) = cfg.address() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Err(e) = clamd::ping(&address, Duration::from_secs(cfg.timeout_s.clamp(1, 10))) {
        out.push(format!(
            "key `scan.clamd`: clamd at {address} does not answer: {e}"
        ));
    }
    let conf = match std::fs::read_to_string(&cfg.clamd_config) {
        Ok(text) => text,
        Err(e) => {
            out.push(format!(
                "key `scan.clamd_config`: cannot read {} ({e}), so its TemporaryDirectory is not checked",
                cfg.clamd_config.display()
            ));
            return out;
        }
    };
    let tmp = temporary_directory(&conf)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/tmp"));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = std::fs::canonicalize(&tmp).unwrap_or(tmp.clone());
    match filesystem_of(&path, &mounts) {
        Some(fs) if fs == "tmpfs" || fs == "ramfs" => {}
        found => out.push(format!(
            "clamd's TemporaryDirectory {} (in {}) is on {}, not a tmpfs: clamd writes every \
             file it scans there in plaintext; point it at a tmpfs (see README)",
            tmp.display(),
            cfg.clamd_config.display(),
            found.unwrap_or("an unknown filesystem")
        )),
    }
    out
}

/// The `TemporaryDirectory` a clamd.conf sets (the last one wins, as in clamd).
pub fn temporary_directory(conf: &str) -> Option<&str> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.split_once(char::is_whitespace)?;
            key.eq_ignore_ascii_case("TemporaryDirectory")
                .then(|| value.trim().trim_matches('"'))
        })
        .rfind(|v| !v.is_empty())
}

/// The type of the filesystem holding `path`, from `/proc/self/mounts` (the longest mount point
/// that contains it; the last of equal ones, as mounts stack).
pub fn filesystem_of<'a>(path: &std::path::Path, mounts: &'a str) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(_dev), Some(point), Some(fstype)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if path.starts_with(&point) && best.is_none_or(|(len, _)| point.len() >= len) {
            best = Some((point.len(), fstype));
        }
    }
    best.map(|(_, fs)| fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_temporary_directory_and_its_filesystem() {
        let conf = "# TemporaryDirectory /commented\nLocalSocket /run/clamav/clamd.ctl\n\
                    TemporaryDirectory /var/tmp\nTemporaryDirectory /run/clamav-tmp\n";
        assert_eq!(temporary_directory(conf), Some("/run/clamav-tmp"));
        assert_eq!(temporary_directory("LocalSocket /x\n"), None);
        let mounts = "/dev/vda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n\
                      /dev/vdb /run/big xfs rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n";
        let fs = |p: &str| filesystem_of(std::path::Path::new(p), mounts);
        assert_eq!(fs("/run/clamav-tmp"), Some("tmpfs"));
        assert_eq!(fs("/run/big/x"), Some("xfs"));
        assert_eq!(fs("/var/tmp"), Some("ext4"));
        assert_eq!(fs("/tmp"), Some("tmpfs"));
        assert_eq!(
            fs("/tmpx"),
            Some("ext4"),
            "a prefix of a name is not a mount point"
        );
    }

    #[test]
    fn every_verdict_under_both_settings() {
        use OnError::*;
        let infected = Verdict::Infected("Eicar-Test-Signature".into());
        let failed = Verdict::Failed("clamd at unix:/x cannot be reached".into());
        for on_error in [Refuse, Deliver] {
            assert_eq!(decide(&Verdict::NotScanned, on_error), Ok(Mark::Unscanned));
            assert_eq!(decide(&Verdict::Clean, on_error), Ok(Mark::Clean));
            assert_eq!(
                decide(&infected, on_error),
                Err(Refusal::Malware("Eicar-Test-Signature".into())),
                "infected is refused whatever on_error says"
            );
        }
        assert!(matches!(
            decide(&failed, Refuse),
            Err(Refusal::Unscanned(_))
        ));
        assert_eq!(decide(&failed, Deliver), Ok(Mark::Unscanned));
    }

    #[test]
    fn the_words_a_sender_reads() {
        assert_eq!(
            Refusal::Malware("Eicar-Test-Signature".into()).to_string(),
            "refused: malware detected (Eicar-Test-Signature); nothing was delivered"
        );
        let unscanned = Refusal::Unscanned("clamd gave no answer within 60 s".into()).to_string();
        assert!(unscanned.contains("try again later"), "{unscanned}");
        assert!(
            !unscanned.contains("clamd"),
            "the sender is not told about the host's services: {unscanned}"
        );
    }
}
