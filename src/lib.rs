//! apgate: the SFTP gateway of an Alternative Provision service.
//!
//! Layout:
//! - [`domain`]: pure rules (organisations, routing, the virtual tree, file names). No I/O.
//! - [`config`]: typed configuration with environment overrides and validation.
//! - [`db`]: the [`db::Database`] trait and its backends.
//! - [`vault`]: the age-encrypted store and the keys.
//! - [`sftp`]: the russh server, authentication, the SFTP v3 protocol and the per-user tree.
//! - [`audit`]: the hash-chained audit log.
//! - [`serve`], [`admin`], [`demo`]: what the command line runs.

pub mod admin;
pub mod audit;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod ingest;
pub mod mail;
pub mod metrics;
pub mod pool;
pub mod reports;
pub mod retention;
pub mod scan;
pub mod serve;
pub mod sftp;
pub mod vault;
