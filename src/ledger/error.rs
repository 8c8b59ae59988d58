//! Errors of the ledger, mapped to what they mean for the caller.

use std::path::PathBuf;

use super::state::InvalidTransition;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the ledger {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// The record was not in the state the caller expected: another actor
    /// moved it first. Callers log and move on.
    #[error("record {id} was no longer {expected} (moved by someone else)")]
    Conflict { id: i64, expected: &'static str },
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error("the ledger holds a value it cannot read: {0}")]
    Corrupt(String),
    #[error("ledger query failed: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0} got no answer from the ledger in time")]
    Timeout(&'static str),
}

impl LedgerError {
    /// SQLite could not write for want of space (SQLITE_FULL).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LedgerError::Sql(sqlx::Error::Database(db))
            if db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 13))
    }
}
