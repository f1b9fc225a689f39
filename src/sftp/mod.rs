//! The SFTP service: the russh server and authentication ([`ssh`]), the SFTP v3 wire format
//! ([`protocol`]), the per-user virtual tree and its operations ([`session`]), and the limits
//! that protect it ([`guard`], and [`cutoff`] for the login grace time).

pub mod cutoff;
pub mod error;
pub mod guard;
pub mod protocol;
pub mod session;
pub mod ssh;
