//! The hash-chained audit log (SPEC §7). Each entry's hash covers its fields and the previous
//! entry's hash; a head record holds the newest sequence number and hash, so an edited, removed or
//! truncated entry is found by [`verify_chain`].

use sha2::{Digest, Sha256};

/// The hash that the first entry points back to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did what, from where, with what result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    pub actor: String,
    pub org: String,
    pub address: String,
    pub action: String,
    pub outcome: String,
    pub detail: String,
}

impl AuditEntry {
    pub fn new(action: &str, outcome: &str) -> Self {
        AuditEntry {
            action: action.into(),
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    /// An entry for a change made with the command line on this host.
    pub fn admin(action: &str, detail: impl Into<String>) -> Self {
        AuditEntry {
            actor: std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .map(|u| format!("cli:{u}"))
                .unwrap_or_else(|_| "cli".into()),
            org: String::new(),
            address: "local".into(),
            action: action.into(),
            outcome: "ok".into(),
            detail: detail.into(),
        }
    }

    pub fn by(mut self, actor: &str, org: &str, address: &str) -> Self {
        self.actor = actor.into();
        self.org = org.into();
        self.address = address.into();
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: String,
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

pub fn entry_hash(seq: i64, at: &str, e: &AuditEntry, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    for field in [
        seq.to_string().as_str(),
        at,
        &e.actor,
        &e.org,
        &e.address,
        &e.action,
        &e.outcome,
        &e.detail,
        prev_hash,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Why a chain is not whole: the first entry that does not fit, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: i64,
    pub reason: String,
}

/// Checks every entry in order; returns the number of entries when the chain is whole.
pub fn verify_chain(
    records: impl IntoIterator<Item = AuditRecord>,
    head: Option<(i64, String)>,
) -> Result<u64, ChainBreak> {
    let mut prev_hash = GENESIS.to_string();
    let mut prev_seq = 0i64;
    let mut count = 0u64;
    for r in records {
        if r.seq != prev_seq + 1 {
            return Err(ChainBreak {
                seq: prev_seq + 1,
                reason: format!(
                    "entry {} is missing (next entry is {})",
                    prev_seq + 1,
                    r.seq
                ),
            });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainBreak {
                seq: r.seq,
                reason: "does not point to the entry before it (an entry was removed or edited)"
                    .into(),
            });
        }
        if entry_hash(r.seq, &r.at, &r.entry, &r.prev_hash) != r.hash {
            return Err(ChainBreak {
                seq: r.seq,
                reason: "its content does not match its hash (the entry was edited)".into(),
            });
        }
        prev_hash = r.hash;
        prev_seq = r.seq;
        count += 1;
    }
    match head {
        Some((seq, hash)) if seq != prev_seq || hash != prev_hash => Err(ChainBreak {
            seq: prev_seq + 1,
            reason: format!(
                "the log ends at entry {prev_seq} but entry {seq} was written (entries were removed from the end)"
            ),
        }),
        None if count > 0 => Err(ChainBreak {
            seq: 1,
            reason: "the head record is missing".into(),
        }),
        _ => Ok(count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry::new("login", "ok").by(&format!("u{seq}"), "s", "127.0.0.1");
                let at = format!("2026-11-28T10:00:{seq:02}Z");
                let hash = entry_hash(seq, &at, &entry, &prev);
                let r = AuditRecord {
                    seq,
                    at,
                    entry,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    fn head(c: &[AuditRecord]) -> Option<(i64, String)> {
        c.last().map(|r| (r.seq, r.hash.clone()))
    }

    #[test]
    fn whole_chain_verifies() {
        let c = chain(5);
        assert_eq!(verify_chain(c.clone(), head(&c)), Ok(5));
        assert_eq!(verify_chain(vec![], None), Ok(0));
    }

    #[test]
    fn edits_and_removals_are_found() {
        let c = chain(5);
        let h = head(&c);
        let mut edited = c.clone();
        edited[2].entry.outcome = "denied".into();
        assert_eq!(verify_chain(edited, h.clone()).unwrap_err().seq, 3);

        let mut removed = c.clone();
        removed.remove(1);
        assert_eq!(verify_chain(removed, h.clone()).unwrap_err().seq, 2);

        let mut truncated = c.clone();
        truncated.pop();
        assert_eq!(verify_chain(truncated, h.clone()).unwrap_err().seq, 5);

        // Rewriting an entry and its hash still breaks the link from the next one.
        let mut rehashed = c.clone();
        rehashed[1].entry.detail = "forged".into();
        rehashed[1].hash = entry_hash(
            2,
            &rehashed[1].at,
            &rehashed[1].entry,
            &rehashed[1].prev_hash,
        );
        assert_eq!(verify_chain(rehashed, h).unwrap_err().seq, 3);
    }
}
