//! What every part of a running gateway shares: configuration, database, store and guards.

use std::sync::Arc;

use crate::audit::AuditEntry;
use crate::config::Config;
use crate::db::{Db, Org};
use crate::domain::org::Role;
use crate::sftp::guard::Guard;
use crate::vault::Vault;

pub struct Gateway {
    /// Replaced as a whole on reload (SIGHUP); readers take the current one.
    config: std::sync::RwLock<Arc<Config>>,
    pub db: Db,
    pub vault: Vault,
    pub guard: Arc<Guard>,
    /// Ingest jobs being processed in this process (inline at an upload's close, or by the
    /// background run): the background run leaves them alone.
    pub ingest_in_flight: std::sync::Mutex<std::collections::HashSet<i64>>,
    /// This process among the gateway processes sharing the database (random at start).
    pub node: String,
}

impl Gateway {
    pub fn new(config: Config, db: Db, vault: Vault, guard: Arc<Guard>) -> Gateway {
        Gateway {
            config: std::sync::RwLock::new(Arc::new(config)),
            db,
            vault,
            guard,
            ingest_in_flight: Default::default(),
            node: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Puts a reloaded configuration in force (limits and banner apply to new connections).
    pub fn set_config(&self, config: Config) {
        self.guard.set_limits(config.limits.clone());
        match self.config.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(p) => *p.into_inner() = Arc::new(config),
        }
    }
}

/// An authenticated user as the SFTP layer sees it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: i64,
    pub username: String,
    pub org: Org,
    pub roles: Vec<Role>,
    pub address: String,
}

impl Principal {
    /// This user as visibility sees it (SPEC §1): its organisation and its roles.
    pub fn viewer(&self) -> crate::domain::visibility::Viewer<'_> {
        crate::domain::visibility::Viewer {
            org_id: self.org.id,
            kind: self.org.kind,
            roles: Some(&self.roles),
        }
    }

    pub fn audit(&self, action: &str, outcome: &str) -> AuditEntry {
        AuditEntry::new(action, outcome).by(&self.username, &self.org.slug, &self.address)
    }
}
