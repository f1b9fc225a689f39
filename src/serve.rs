//! `apgate serve`: opens everything, then runs the SFTP listener and the background tasks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db;
use crate::gateway::Gateway;
use crate::sftp::guard::Guard;
use crate::sftp::ssh;
use crate::vault::{Vault, keys};

/// Blobs in the store that no database row names and that are older than this are leftovers of
/// a crash between storing and committing (younger ones may be another node's commit in flight).
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

pub async fn open_gateway(config: Config) -> anyhow::Result<(Arc<Gateway>, keys::Keys)> {
    let keys = keys::init(&config.keys_dir)?;
    let db = db::open(&config.database.url).await?;
    let vault = Vault::open(&config.data_dir, &keys, &config.escrow_recipients)?;
    let guard = Guard::new(config.limits.clone())?;
    Ok((Arc::new(Gateway::new(config, db, vault, guard)), keys))
}

/// Runs the gateway; `config_path` is read again on SIGHUP.
pub async fn serve(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let listen = config.listen;
    let (gw, keys) = open_gateway(config).await?;
    let cleaned = gw.vault.clean_spool()?;
    if cleaned > 0 {
        tracing::info!("removed {cleaned} uncommitted upload(s) left in the spool");
    }
    remove_orphan_blobs(&gw).await?;
    let russh_config = Arc::new(std::sync::RwLock::new(Arc::new(ssh::russh_config(
        &gw, &keys,
    ))));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    tracing::info!("apgate listening on {bound}");

    tokio::spawn(end_disabled_sessions(gw.clone()));
    tokio::spawn(keep_shared_guard(gw.clone()));
    tokio::spawn(crate::ingest::run_pending(gw.clone()));
    tokio::spawn(crate::ingest::watcher::run(gw.clone()));
    tokio::spawn(crate::retention::run(gw.clone()));
    tokio::spawn(crate::mail::sender::run(gw.clone()));
    if let Some(addr) = gw.config().metrics.listen {
        crate::metrics::install(gw.clone(), addr)?;
    }
    let accept = tokio::spawn(ssh::accept_loop(gw.clone(), russh_config.clone(), listener));
    if let Some(path) = config_path {
        tokio::spawn(reload_on_hangup(gw.clone(), keys, russh_config, path));
    }
    // Migrations ran and the listener is bound: tell systemd (Type=notify) we are ready.
    notify_systemd(&format!("READY=1\nSTATUS=listening on {bound}"));
    shutdown_signal().await;
    notify_systemd("STOPPING=1");
    tracing::info!("shutting down");
    accept.abort();
    // Sessions of this process stop counting against their users' limits at once.
    if let Err(e) = gw.db.end_node_sessions(&gw.node).await {
        tracing::warn!("cannot forget this process's sessions: {e:#}");
    }
    Ok(())
}

/// Sends a state line to systemd's notification socket when run as a `Type=notify` service.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd at {path}: {e}");
    }
}

/// SIGHUP: reads the config file again. A broken file keeps the running configuration; keys that
/// only take effect at start are reported.
async fn reload_on_hangup(
    gw: Arc<Gateway>,
    keys: keys::Keys,
    russh_config: Arc<std::sync::RwLock<Arc<russh::server::Config>>>,
    path: std::path::PathBuf,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        notify_systemd("RELOADING=1");
        match Config::load(&path) {
            Ok(new) => {
                let old = gw.config();
                let fixed: Vec<&str> = [
                    ("listen", old.listen != new.listen),
                    ("data_dir", old.data_dir != new.data_dir),
                    ("keys_dir", old.keys_dir != new.keys_dir),
                    ("database.url", old.database.url != new.database.url),
                    ("metrics.listen", old.metrics != new.metrics),
                    (
                        "escrow_recipients",
                        old.escrow_recipients != new.escrow_recipients,
                    ),
                ]
                .into_iter()
                .filter_map(|(k, changed)| changed.then_some(k))
                .collect();
                gw.set_config(new);
                let rebuilt = Arc::new(ssh::russh_config(&gw, &keys));
                if let Ok(mut c) = russh_config.write() {
                    *c = rebuilt;
                }
                if fixed.is_empty() {
                    tracing::info!("configuration reloaded from {}", path.display());
                } else {
                    tracing::warn!(
                        "configuration reloaded from {}; changes to {} take effect at the next restart",
                        path.display(),
                        fixed.join(", ")
                    );
                }
            }
            Err(e) => tracing::error!("reload failed, keeping the current configuration: {e:#}"),
        }
        notify_systemd("READY=1");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Disabling a user or organisation (from the command line, in another process) ends its live
/// sessions: checked every two seconds.
async fn end_disabled_sessions(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        gw.guard.prune();
        let ids = match gw.db.inactive_user_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("cannot check for disabled users: {e:#}");
                continue;
            }
        };
        for handle in gw.guard.sessions_of(&ids) {
            tracing::info!("ending a session of a disabled user or organisation");
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "account disabled".into(),
                    "en".into(),
                )
                .await;
        }
    }
}

/// Keeps this process's rows in the shared session table alive (they stop counting once it
/// stops renewing them) and forgets failed-login counts that no longer matter.
async fn keep_shared_guard(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(ssh::SESSION_STALE_AFTER / 3);
    loop {
        tick.tick().await;
        if let Err(e) = gw.db.renew_sessions(&gw.node).await {
            tracing::warn!("cannot renew live sessions: {e:#}");
        }
        let ban = Duration::from_secs(gw.config().limits.ban_seconds);
        if let Err(e) = gw.db.prune_auth_failures(ban).await {
            tracing::warn!("cannot prune failed logins: {e:#}");
        }
    }
}

async fn remove_orphan_blobs(gw: &Gateway) -> anyhow::Result<()> {
    let known: std::collections::HashSet<String> = gw.db.blob_names().await?.into_iter().collect();
    let store = gw.config().store_dir();
    let Ok(shards) = std::fs::read_dir(&store) else {
        return Ok(());
    };
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let Some(blob) = name.strip_suffix(".age") else {
                continue;
            };
            let old = f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > ORPHAN_AGE);
            if !known.contains(blob) && old {
                tracing::warn!("removing orphan blob {name} (stored but never committed)");
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
    Ok(())
}
