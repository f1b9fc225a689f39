//! What every part of a running gateway shares: configuration, database, store and guards.

use std::sync::Arc;

use crate::audit::AuditEntry;
use crate::config::Config;
use crate::db::{Db, Org};
use crate::domain::org::Role;
use crate::sftp::guard::Guard;
use crate::vault::Vault;

pub struct Gateway {
    pub config: Config,
    pub db: Db,
    pub vault: Vault,
    pub guard: Arc<Guard>,
    /// Ingest jobs being processed in this process (inline at an upload's close, or by the
    /// background run): the background run leaves them alone.
    pub ingest_in_flight: std::sync::Mutex<std::collections::HashSet<i64>>,
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
    pub fn audit(&self, action: &str, outcome: &str) -> AuditEntry {
        AuditEntry::new(action, outcome).by(&self.username, &self.org.slug, &self.address)
    }
}
