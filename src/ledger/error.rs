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
}
