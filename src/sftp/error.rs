//! One error type for every SFTP operation; each kind maps to an SFTP status code and carries a
//! message the user can act on.

use std::io;

use super::protocol::StatusCode;
use crate::domain::tree::PathError;

#[derive(Debug)]
pub enum FsError {
    NotFound(String),
    Denied(String),
    Failure(String),
    Unsupported(String),
    Eof,
    /// A fault of the gateway itself: logged in full, reported to the client in general terms.
    Internal(anyhow::Error),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn status(&self) -> (StatusCode, String) {
        match self {
            FsError::NotFound(m) => (StatusCode::NoSuchFile, m.clone()),
            FsError::Denied(m) => (StatusCode::PermissionDenied, m.clone()),
            FsError::Failure(m) => (StatusCode::Failure, m.clone()),
            FsError::Unsupported(m) => (StatusCode::OpUnsupported, m.clone()),
            FsError::Eof => (StatusCode::Eof, "end of file".into()),
            FsError::Internal(_) => (
                StatusCode::Failure,
                "the gateway could not complete this request; nothing was stored; try again".into(),
            ),
        }
    }
}

impl From<PathError> for FsError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::NotFound(m) => FsError::NotFound(m),
            PathError::Invalid(m) => FsError::Failure(format!("invalid path: {m}")),
        }
    }
}

impl From<anyhow::Error> for FsError {
    fn from(e: anyhow::Error) -> Self {
        FsError::Internal(e)
    }
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            FsError::Failure(
                "the gateway's storage is full: nothing was stored; try again later".into(),
            )
        } else {
            FsError::Internal(e.into())
        }
    }
}
