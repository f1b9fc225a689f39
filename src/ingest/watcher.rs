//! Drop folders (`drop_dirs`): files that local programs write into a host folder are taken once
//! they are closed and stable, ingested through the same pipeline as an SFTP upload, and deleted
//! from the folder only after they were committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::DropDir;
use crate::domain::names::is_temp_name;
use crate::domain::tree::IngestKind;
use crate::gateway::Gateway;

/// A file must keep its size and modification time this long before it is taken.
const STABLE_FOR: Duration = Duration::from_millis(700);
/// Folders are also rescanned this often, in case an event was missed.
const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// Whether a name in a drop folder is a finished file (not hidden, not a temporary name).
fn wanted(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.') && !is_temp_name(n))
}

fn fingerprint(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::symlink_metadata(path).ok()?;
    (m.is_file()).then(|| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// Takes one file: waits until it is stable, ingests it, deletes it after the commit.
async fn take(gw: &Gateway, dir: &DropDir, kind: IngestKind, path: &Path) {
    let Some(mut seen) = fingerprint(path) else {
        return;
    };
    loop {
        tokio::time::sleep(STABLE_FOR).await;
        match fingerprint(path) {
            None => return,
            Some(now) if now == seen => break,
            Some(now) => seen = now,
        }
    }
    match super::local::ingest_file(gw, &dir.org, kind, path, "drop").await {
        Ok(done) => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), "ingested but cannot delete from the drop folder: {e}");
            }
            tracing::info!(
                path = %path.display(), org = %dir.org, upload = done.upload_id,
                unreadable = done.unreadable.is_some(), "drop-folder file ingested"
            );
        }
        Err(e) => match e.downcast_ref::<crate::scan::Refusal>() {
            Some(crate::scan::Refusal::Malware(signature)) => {
                match quarantine(dir, path, &e.to_string()) {
                    Ok(to) => tracing::warn!(
                        path = %path.display(), org = %dir.org, signature = %signature,
                        quarantine = %to.display(), "drop-folder file refused as malware and moved to quarantine"
                    ),
                    Err(q) => tracing::error!(
                        path = %path.display(), signature = %signature,
                        "drop-folder file refused as malware but cannot be moved to quarantine: {q:#}"
                    ),
                }
            }
            // Not scanned (scan.on_error: refuse): left where it is and tried again at the
            // next rescan.
            _ => tracing::error!(path = %path.display(), "drop-folder file left in place: {e:#}"),
        },
    }
}

/// Where a drop folder's refused files go: `quarantine/<drop folder's name>/` beside it, so
/// that the watcher never takes them again and the MIS operator finds them.
pub fn quarantine_dir(drop_dir: &Path) -> PathBuf {
    let name = drop_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "drop".into());
    drop_dir
        .parent()
        .unwrap_or(drop_dir)
        .join("quarantine")
        .join(name)
}

/// Moves a refused file into the quarantine folder under a name stamped with the time, with a
/// receipt beside it that says why.
fn quarantine(dir: &DropDir, path: &Path, why: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let qdir = quarantine_dir(&dir.path);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&qdir)
        .with_context(|| format!("cannot create {}", qdir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let to = qdir.join(format!("{stamp}-{name}"));
    std::fs::rename(path, &to).with_context(|| format!("cannot move it to {}", to.display()))?;
    let receipt = format!(
        "{why}\n\nThe file {name} was taken from the drop folder {} of {} at {stamp} and moved \
         here. It was not delivered, not applied and not stored by the gateway; the AP hub has \
         been told. Have the computer that produced it checked, then delete it.\n",
        dir.path.display(),
        dir.org
    );
    let receipt_path = qdir.join(format!("{stamp}-{name}.receipt.txt"));
    std::fs::write(&receipt_path, receipt)
        .with_context(|| format!("cannot write {}", receipt_path.display()))?;
    Ok(to)
}

fn scan(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| wanted(p))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Watches the configured drop folders until the process ends. A reload (SIGHUP) that changes
/// `drop_dirs` takes effect within a second: new folders are watched and scanned, removed ones
/// are let go.
pub async fn run(gw: Arc<Gateway>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let events = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && matches!(
                event.kind,
                EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Write
                )) | EventKind::Modify(notify::event::ModifyKind::Name(_))
                    | EventKind::Create(_)
            )
        {
            for p in event.paths {
                let _ = events.send(p);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("cannot watch drop folders: {e}; falling back to rescans");
            return rescan_only(gw).await;
        }
    };
    let mut current: Vec<DropDir> = Vec::new();
    let mut by_dir: HashMap<PathBuf, DropDir> = HashMap::new();
    let in_progress = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<PathBuf>::new(),
    ));
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut last_rescan = tokio::time::Instant::now();
    loop {
        tokio::select! {
            Some(path) = rx.recv() => {
                if !wanted(&path) {
                    continue;
                }
                let Some(dir) = path.parent().and_then(|p| by_dir.get(p)).cloned() else {
                    continue;
                };
                let Some(kind) = IngestKind::parse(&dir.kind) else {
                    continue;
                };
                if !in_progress
                    .lock()
                    .map(|mut s| s.insert(path.clone()))
                    .unwrap_or(false)
                {
                    continue;
                }
                let gw = gw.clone();
                let in_progress = in_progress.clone();
                tokio::spawn(async move {
                    take(&gw, &dir, kind, &path).await;
                    if let Ok(mut s) = in_progress.lock() {
                        s.remove(&path);
                    }
                });
            }
            _ = check.tick() => {
                let wanted_dirs = gw.config().drop_dirs.clone();
                let mut rescan: Vec<PathBuf> = Vec::new();
                if wanted_dirs != current {
                    for d in current.iter().filter(|d| !wanted_dirs.contains(d)) {
                        let _ = watcher.unwatch(&d.path);
                        tracing::info!(path = %d.path.display(), "drop folder no longer watched");
                    }
                    for d in wanted_dirs.iter().filter(|d| !current.contains(d)) {
                        match watcher.watch(&d.path, RecursiveMode::NonRecursive) {
                            Ok(()) => tracing::info!(path = %d.path.display(), org = %d.org, kind = %d.kind, "watching drop folder"),
                            Err(e) => tracing::error!(path = %d.path.display(), "cannot watch drop folder: {e}"),
                        }
                        // Files that arrived while the folder was not watched.
                        rescan.push(d.path.clone());
                    }
                    by_dir = wanted_dirs.iter().map(|d| (d.path.clone(), d.clone())).collect();
                    current = wanted_dirs;
                }
                if last_rescan.elapsed() >= RESCAN_EVERY {
                    last_rescan = tokio::time::Instant::now();
                    rescan = current.iter().map(|d| d.path.clone()).collect();
                }
                for dir in rescan {
                    for p in scan(&dir) {
                        let _ = tx.send(p);
                    }
                }
            }
        }
    }
}

async fn rescan_only(gw: Arc<Gateway>) {
    loop {
        let dirs = gw.config().drop_dirs.clone();
        for d in &dirs {
            let Some(kind) = IngestKind::parse(&d.kind) else {
                continue;
            };
            for p in scan(&d.path) {
                take(&gw, d, kind, &p).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
