//! Every SQL statement for the `files` and `attempts` tables, by stage of a
//! record's life: [`discovery`] (a file or URL first seen), [`hashing`]
//! (eligibility, hash, dedupe), [`claims`] (a worker takes a queued record),
//! [`attempts`] (how an upload attempt ends), [`processing`] (the platform
//! makes the asset ready), [`endings`] (skipped, failed, tried again) and
//! [`lookups`] (what the CLI and the stages read).
//!
//! Each public method is one transaction (`BEGIN IMMEDIATE`, so two writers
//! never deadlock on a lock upgrade) and, for a state change, a
//! compare-and-set `UPDATE … WHERE id = ? AND state = ?` whose target state
//! comes from [`FileState::on`].

mod attempts;
mod claims;
mod discovery;
mod endings;
mod hashing;
mod lookups;
mod processing;

pub use attempts::AttemptEnd;
pub use claims::{ClaimBatch, LOOKUP_DELAY_MS, UploadJob};
pub use discovery::{Discovery, NewFile, Origin};
pub(in crate::ledger) use endings::release_duplicates_tx;
#[cfg(test)]
pub(in crate::ledger) use hashing::SAME_SIZE_SQL;
pub use hashing::{HashJob, HashOutcome, SameSize};
pub(in crate::ledger) use lookups::RECORD_COLUMNS;
pub use lookups::{AttemptRow, Record};
pub use processing::PollJob;

use super::engine::{Done, Tx, stmt};
use super::state::FileState;
use super::{Change, Ledger, LedgerError};

/// A new URL record's stamp: 128 random bits in hex, unique among the
/// records of any ledger for all practical purposes.
fn new_stamp() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Fail unless exactly one row moved: the compare-and-set lost.
fn expect_one(result: Done, id: i64, from: FileState) -> Result<(), LedgerError> {
    if result.rows_affected() == 1 {
        Ok(())
    } else {
        Err(LedgerError::Conflict {
            id,
            expected: from.as_str(),
        })
    }
}

async fn path_of_tx(conn: &mut Tx, id: i64) -> Result<String, LedgerError> {
    let row: Option<(Option<String>, Option<String>)> =
        stmt("SELECT path, url FROM files WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row
        .and_then(|(p, u)| p.or(u))
        .unwrap_or_else(|| format!("record {id}")))
}

impl Ledger {
    async fn begin(&self) -> Result<Tx, LedgerError> {
        Ok(self.pool.begin().await?)
    }

    pub(in crate::ledger) fn changed(
        &self,
        id: i64,
        path: String,
        state: FileState,
        detail: Option<String>,
    ) {
        self.announce(Change {
            id,
            path,
            state,
            asset_id: None,
            detail,
        });
    }
}
