//! What protects the gateway within this process: connection throttling per address, and the
//! live sessions of this process (to end them when their user is disabled). Failed logins, bans
//! and the count of sessions per user are shared by every process through the database
//! ([`crate::db::Database::record_auth_failure`], [`crate::db::Database::open_session`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::db::Db;

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct LiveSession {
    user_id: i64,
    /// Set once the SSH session has authenticated (the handle is known only then).
    handle: Option<russh::server::Handle>,
}

#[derive(Default)]
struct State {
    buckets: HashMap<IpAddr, Bucket>,
    sessions: HashMap<u64, LiveSession>,
    next_session: u64,
    /// Connections not yet authenticated, per address, and in all.
    startups: HashMap<IpAddr, u32>,
    startups_total: u32,
    /// When a refusal or time-out from an address was last logged.
    logged: HashMap<IpAddr, Instant>,
    /// Uploads being written, per user, and the bytes they hold against each organisation's
    /// quota (in this process).
    uploads: HashMap<i64, u32>,
    reserved: HashMap<i64, u64>,
}

/// An upload being written: it counts against its user's `limits.uploads_per_user` and holds
/// its bytes against its organisation's quota until it ends.
pub struct UploadSlot {
    guard: Arc<Guard>,
    user_id: i64,
    org_id: i64,
    reserved: u64,
}

impl UploadSlot {
    /// Grows what this upload holds to `end` bytes, unless the organisation's uploads would
    /// then hold more than `cap` (its quota left when this upload began).
    pub fn reserve_to(&mut self, end: u64, cap: u64) -> bool {
        if end <= self.reserved {
            return true;
        }
        let mut s = self.guard.lock();
        let held = s.reserved.entry(self.org_id).or_insert(0);
        let others = *held - self.reserved;
        if others + end > cap {
            return false;
        }
        *held = others + end;
        self.reserved = end;
        true
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut s = self.guard.lock();
        if let Some(n) = s.uploads.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                s.uploads.remove(&self.user_id);
            }
        }
        if let Some(held) = s.reserved.get_mut(&self.org_id) {
            *held -= self.reserved;
            if *held == 0 {
                s.reserved.remove(&self.org_id);
            }
        }
    }
}

/// Why a new connection is closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More than `limits.connections_per_second` from the address.
    TooFast,
    /// `limits.max_startups` connections are still authenticating.
    TooManyStartups,
    /// `limits.max_startups_per_address` connections from this address are.
    TooManyFromAddress,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::TooFast => "arriving faster than limits.connections_per_second",
            Refusal::TooManyStartups => "limits.max_startups connections are authenticating",
            Refusal::TooManyFromAddress => {
                "limits.max_startups_per_address connections from this address are authenticating"
            }
        })
    }
}

/// A connection that has not authenticated yet: it holds a place among the startups until it
/// authenticates or ends.
pub struct Startup {
    guard: Arc<Guard>,
    ip: IpAddr,
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut s = self.guard.lock();
        s.startups_total = s.startups_total.saturating_sub(1);
        if let Some(n) = s.startups.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.startups.remove(&self.ip);
            }
        }
    }
}

pub struct Guard {
    limits: Mutex<Limits>,
    state: Mutex<State>,
    /// Password checks (argon2, ~20 MiB and tens of milliseconds each) running at once: one per
    /// core, so that a flood of passwords queues here instead of taking the blocking pool that
    /// uploads and the database driver need.
    pub password_checks: tokio::sync::Semaphore,
    /// The threads that run them: as many as the semaphore lets in, each keeping its argon2
    /// memory for the next check (`ssh.rs`). On the blocking pool, with fresh memory for each
    /// check, a flood of 24 password logins raised the peak RSS by some 330 MiB.
    pub password_pool: crate::pool::Pool,
}

/// A live session: counted in the database against its user's limit and known to this process;
/// dropping it ends both.
pub struct SessionTicket {
    guard: Arc<Guard>,
    id: u64,
    db: Db,
    db_id: i64,
}

impl SessionTicket {
    /// Records how to end this session from outside (when its user or organisation is disabled).
    pub fn attach(&self, handle: russh::server::Handle) {
        if let Some(s) = self.guard.lock().sessions.get_mut(&self.id) {
            s.handle = Some(handle);
        }
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        self.guard.lock().sessions.remove(&self.id);
        let (db, id) = (self.db.clone(), self.db_id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = db.close_session(id).await {
                    // The row goes stale and stops counting once this node stops renewing it.
                    tracing::warn!("cannot close session {id} in the database: {e:#}");
                }
            });
        }
    }
}

impl Guard {
    pub fn new(limits: Limits) -> std::io::Result<Arc<Guard>> {
        let checks = crate::pool::cores().min(4);
        Ok(Arc::new(Guard {
            limits: Mutex::new(limits),
            state: Mutex::new(State::default()),
            password_checks: tokio::sync::Semaphore::new(checks),
            password_pool: crate::pool::Pool::new(checks, "apgate-password")?,
        }))
    }

    /// The limits in force (replaced on reload).
    fn limits(&self) -> Limits {
        self.limits
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_limits(&self, limits: Limits) {
        match self.limits.lock() {
            Ok(mut l) => *l = limits,
            Err(p) => *p.into_inner() = limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps inconsistent: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new TCP connection from `ip` as a startup, or says why it is refused: arriving
    /// too fast, or too many connections still authenticating (in all, or from the address).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Startup, Refusal> {
        if !self.admit_connection(ip) {
            return Err(Refusal::TooFast);
        }
        let limits = self.limits();
        let mut s = self.lock();
        if s.startups_total >= limits.max_startups {
            return Err(Refusal::TooManyStartups);
        }
        let from_ip = s.startups.entry(ip).or_insert(0);
        if *from_ip >= limits.max_startups_per_address {
            return Err(Refusal::TooManyFromAddress);
        }
        *from_ip += 1;
        s.startups_total += 1;
        Ok(Startup {
            guard: self.clone(),
            ip,
        })
    }

    /// Whether something about `ip` may be logged now: at most once a minute per address, so
    /// that a flood cannot flood the log too.
    pub fn may_log(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        match s.logged.get(&ip) {
            Some(at) if now.duration_since(*at) < Duration::from_secs(60) => false,
            _ => {
                s.logged.insert(ip, now);
                true
            }
        }
    }

    /// A new upload of `user_id` (of organisation `org_id`), unless the user already writes
    /// `limits.uploads_per_user` files at once.
    pub fn begin_upload(self: &Arc<Self>, user_id: i64, org_id: i64) -> Option<UploadSlot> {
        let limit = self.limits().uploads_per_user;
        let mut s = self.lock();
        let n = s.uploads.entry(user_id).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(UploadSlot {
            guard: self.clone(),
            user_id,
            org_id,
            reserved: 0,
        })
    }

    /// Bytes the uploads under way of an organisation hold against its quota.
    pub fn reserved(&self, org_id: i64) -> u64 {
        self.lock().reserved.get(&org_id).copied().unwrap_or(0)
    }

    /// Connections not yet authenticated (a metrics gauge).
    pub fn startups(&self) -> u32 {
        self.lock().startups_total
    }

    /// Admits a new TCP connection from `ip`, or refuses it (arriving too fast).
    fn admit_connection(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let rate = f64::from(self.limits().connections_per_second);
        let b = s.buckets.entry(ip).or_insert(Bucket {
            // A burst of no more than the rate itself: ssh-audit's DHEat test measures a burst
            // of 1.5 s and wants under 20 a second (twice the rate let 22 through).
            tokens: rate,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A session the database admitted (row `db_id`), known here until the ticket is dropped.
    pub fn register_session(self: &Arc<Self>, user_id: i64, db: Db, db_id: i64) -> SessionTicket {
        let mut s = self.lock();
        s.next_session += 1;
        let id = s.next_session;
        s.sessions.insert(
            id,
            LiveSession {
                user_id,
                handle: None,
            },
        );
        SessionTicket {
            guard: self.clone(),
            id,
            db,
            db_id,
        }
    }

    pub fn live_sessions(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Handles of the live sessions of these users (to end them).
    pub fn sessions_of(&self, user_ids: &[i64]) -> Vec<russh::server::Handle> {
        self.lock()
            .sessions
            .values()
            .filter(|s| user_ids.contains(&s.user_id))
            .filter_map(|s| s.handle.clone())
            .collect()
    }

    /// Forgets idle buckets and old log times (bounds memory under attack).
    pub fn prune(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.buckets
            .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(10));
        s.logged
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_connection_bursts() {
        let g = Guard::new(Limits {
            connections_per_second: 2,
            ..Limits::default()
        })
        .unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let admitted = (0..10).filter(|_| g.admit_connection(ip)).count();
        assert_eq!(admitted, 2, "a burst of the per-second rate, no more");
    }

    #[test]
    fn startups_are_bounded_in_all_and_per_address_until_they_end() {
        let g = Guard::new(Limits {
            connections_per_second: 1000,
            max_startups: 3,
            max_startups_per_address: 2,
            ..Limits::default()
        })
        .unwrap();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
        );
        let a1 = g.admit(a).unwrap();
        let _a2 = g.admit(a).unwrap();
        assert_eq!(g.admit(a).err(), Some(Refusal::TooManyFromAddress));
        let _b1 = g.admit(b).unwrap();
        assert_eq!(g.admit(c).err(), Some(Refusal::TooManyStartups));
        assert_eq!(g.startups(), 3);
        drop(a1); // authenticated, or gone
        assert!(g.admit(c).is_ok());
        assert!(g.may_log(a) && !g.may_log(a) && g.may_log(b));
    }

    #[test]
    fn uploads_per_user_and_the_quota_they_hold() {
        let g = Guard::new(Limits {
            uploads_per_user: 2,
            ..Limits::default()
        })
        .unwrap();
        let mut a = g.begin_upload(1, 10).unwrap();
        let mut b = g.begin_upload(1, 10).unwrap();
        assert!(g.begin_upload(1, 10).is_none(), "a third upload of user 1");
        assert!(
            g.begin_upload(2, 10).is_some(),
            "another user of the same organisation"
        );
        // A quota of 100 bytes left: the two uploads share it.
        assert!(a.reserve_to(60, 100));
        assert!(!b.reserve_to(50, 100));
        assert!(b.reserve_to(40, 100));
        assert_eq!(g.reserved(10), 100);
        drop(a);
        assert_eq!(g.reserved(10), 40);
        assert!(b.reserve_to(90, 100));
        assert!(g.begin_upload(1, 10).is_some(), "a place is free again");
    }
}
