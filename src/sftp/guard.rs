//! Limits that protect the gateway from its peers: connection throttling per address, temporary
//! bans after repeated failures (per address and per user), and live sessions per user.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Limits;

#[derive(Default)]
struct Failures {
    count: u32,
    first: Option<Instant>,
}

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
    failures_by_addr: HashMap<IpAddr, Failures>,
    failures_by_user: HashMap<String, Failures>,
    banned_addr: HashMap<IpAddr, Instant>,
    banned_user: HashMap<String, Instant>,
    buckets: HashMap<IpAddr, Bucket>,
    sessions: HashMap<u64, LiveSession>,
    next_session: u64,
}

pub struct Guard {
    limits: Mutex<Limits>,
    state: Mutex<State>,
}

/// A live session counted against its user's limit; dropping it ends the count.
pub struct SessionTicket {
    guard: Arc<Guard>,
    id: u64,
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
    }
}

impl Guard {
    pub fn new(limits: Limits) -> Arc<Guard> {
        Arc::new(Guard {
            limits: Mutex::new(limits),
            state: Mutex::new(State::default()),
        })
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

    fn ban_time(&self) -> Duration {
        Duration::from_secs(self.limits().ban_seconds)
    }

    /// Admits a new TCP connection from `ip`, or refuses it (banned, or arriving too fast).
    pub fn admit_connection(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        if s.banned_addr.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        let rate = f64::from(self.limits().connections_per_second);
        let b = s.buckets.entry(ip).or_insert(Bucket {
            tokens: rate * 2.0,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate * 2.0);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn is_banned(&self, ip: IpAddr, user: &str) -> bool {
        let now = Instant::now();
        let s = self.lock();
        s.banned_addr.get(&ip).is_some_and(|u| *u > now)
            || s.banned_user.get(user).is_some_and(|u| *u > now)
    }

    /// Counts a failed authentication; returns true when it starts a ban.
    pub fn record_failure(&self, ip: IpAddr, user: &str) -> bool {
        let now = Instant::now();
        let window = self.ban_time();
        let limit = self.limits().ban_after_failures;
        let mut s = self.lock();
        let bump = |f: &mut Failures| {
            if f.first.is_none_or(|t| now.duration_since(t) > window) {
                *f = Failures {
                    count: 0,
                    first: Some(now),
                };
            }
            f.count += 1;
            f.count >= limit
        };
        let addr_ban = bump(s.failures_by_addr.entry(ip).or_default());
        let user_ban = bump(s.failures_by_user.entry(user.to_string()).or_default());
        if addr_ban {
            s.banned_addr.insert(ip, now + window);
            s.failures_by_addr.remove(&ip);
        }
        if user_ban {
            s.banned_user.insert(user.to_string(), now + window);
            s.failures_by_user.remove(user);
        }
        addr_ban || user_ban
    }

    pub fn record_success(&self, user: &str) {
        self.lock().failures_by_user.remove(user);
    }

    /// Counts a new live session of `user_id`, unless the user is at the limit.
    pub fn open_session(self: &Arc<Self>, user_id: i64) -> Option<SessionTicket> {
        let mut s = self.lock();
        let live = s.sessions.values().filter(|x| x.user_id == user_id).count();
        if live >= self.limits().sessions_per_user as usize {
            return None;
        }
        s.next_session += 1;
        let id = s.next_session;
        s.sessions.insert(
            id,
            LiveSession {
                user_id,
                handle: None,
            },
        );
        Some(SessionTicket {
            guard: self.clone(),
            id,
        })
    }

    /// Bans in force: (addresses, users).
    pub fn bans_in_force(&self) -> (usize, usize) {
        let now = Instant::now();
        let s = self.lock();
        (
            s.banned_addr.values().filter(|u| **u > now).count(),
            s.banned_user.values().filter(|u| **u > now).count(),
        )
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

    /// Forgets expired bans, stale failure counts and idle buckets (bounds memory under attack).
    pub fn prune(&self) {
        let now = Instant::now();
        let window = self.ban_time();
        let mut s = self.lock();
        s.banned_addr.retain(|_, until| *until > now);
        s.banned_user.retain(|_, until| *until > now);
        let fresh = |f: &Failures| f.first.is_some_and(|t| now.duration_since(t) <= window);
        s.failures_by_addr.retain(|_, f| fresh(f));
        s.failures_by_user.retain(|_, f| fresh(f));
        s.buckets
            .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            ban_after_failures: 3,
            connections_per_second: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn bans_after_repeated_failures() {
        let g = Guard::new(limits());
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!g.record_failure(ip, "alice"));
        assert!(!g.record_failure(ip, "bob"));
        assert!(!g.is_banned(ip, "carol"));
        assert!(
            g.record_failure(ip, "carol"),
            "third failure from one address bans it"
        );
        assert!(g.is_banned(ip, "anyone"));
        assert!(!g.admit_connection(ip));
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(!g.is_banned(other, "alice"));
    }

    #[test]
    fn bans_a_user_attacked_from_many_addresses() {
        let g = Guard::new(limits());
        for i in 1..=3u8 {
            g.record_failure(IpAddr::from([127, 0, 1, i]), "alice");
        }
        assert!(g.is_banned(IpAddr::from([127, 0, 2, 1]), "alice"));
        assert!(!g.is_banned(IpAddr::from([127, 0, 2, 1]), "bob"));
    }

    #[test]
    fn limits_sessions_per_user() {
        let g = Guard::new(Limits {
            sessions_per_user: 2,
            ..Limits::default()
        });
        let a = g.open_session(1).unwrap();
        let _b = g.open_session(1).unwrap();
        assert!(g.open_session(1).is_none());
        assert!(g.open_session(2).is_some(), "other users are not affected");
        drop(a);
        assert!(
            g.open_session(1).is_some(),
            "a closed session frees its place"
        );
    }

    #[test]
    fn throttles_connection_bursts() {
        let g = Guard::new(limits());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let admitted = (0..10).filter(|_| g.admit_connection(ip)).count();
        assert_eq!(admitted, 4, "burst of twice the per-second rate");
    }
}
