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

/// What kind of trouble a ledger error is, decided once here from the
/// driver's codes: the stages, the logs, `/healthz` and the metrics all
/// speak in these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// No room to write (SQLITE_FULL, PostgreSQL 53100).
    DiskFull,
    /// The ledger's file or filesystem, or the server, refuses writes.
    ReadOnly,
    /// Another writer holds the lock longer than we wait.
    Busy,
    /// The file or its pages are damaged.
    Corrupt,
    /// The connection broke (I/O error, server gone, pool starved).
    ConnectionLost,
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 6] = [
        ErrorClass::DiskFull,
        ErrorClass::ReadOnly,
        ErrorClass::Busy,
        ErrorClass::Corrupt,
        ErrorClass::ConnectionLost,
        ErrorClass::Other,
    ];

    /// The label in metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::DiskFull => "disk_full",
            ErrorClass::ReadOnly => "read_only",
            ErrorClass::Busy => "busy",
            ErrorClass::Corrupt => "corrupt",
            ErrorClass::ConnectionLost => "connection_lost",
            ErrorClass::Other => "other",
        }
    }

    /// What an operator reads: "the ledger's disk is full".
    pub fn describe(self) -> &'static str {
        match self {
            ErrorClass::DiskFull => "the ledger's disk is full",
            ErrorClass::ReadOnly => "the ledger is read-only",
            ErrorClass::Busy => "the ledger is locked by another writer",
            ErrorClass::Corrupt => "the ledger is damaged",
            ErrorClass::ConnectionLost => "the ledger's connection is lost",
            ErrorClass::Other => "the ledger fails",
        }
    }

    /// Whether this stops every write until something outside changes
    /// (space freed, server back): an outage, logged once per episode.
    /// Busy and other errors are one call's trouble.
    pub fn is_outage(self) -> bool {
        matches!(
            self,
            ErrorClass::DiskFull
                | ErrorClass::ReadOnly
                | ErrorClass::Corrupt
                | ErrorClass::ConnectionLost
        )
    }
}

/// The class of a driver error.
pub(super) fn classify(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if let Ok(n) = code.parse::<i32>() {
                // SQLite: the primary result code is the low byte.
                return match n & 0xff {
                    13 => ErrorClass::DiskFull,
                    8 => ErrorClass::ReadOnly,
                    5 | 6 => ErrorClass::Busy,
                    11 | 26 => ErrorClass::Corrupt,
                    // SQLITE_IOERR and SQLITE_CANTOPEN: the file went away
                    // or cannot grow its WAL or shared memory.
                    10 | 14 => {
                        if n == (10 | (13 << 8)) {
                            // SQLITE_IOERR_WRITE is how a full disk often shows.
                            ErrorClass::DiskFull
                        } else {
                            ErrorClass::ConnectionLost
                        }
                    }
                    _ => ErrorClass::Other,
                };
            }
            // PostgreSQL SQLSTATEs.
            match code {
                "53100" => ErrorClass::DiskFull,
                "25006" => ErrorClass::ReadOnly,
                "55P03" | "40P01" | "40001" => ErrorClass::Busy,
                "XX001" | "XX002" => ErrorClass::Corrupt,
                c if c.starts_with("08") || c.starts_with("57P") => ErrorClass::ConnectionLost,
                "53300" => ErrorClass::ConnectionLost,
                _ => ErrorClass::Other,
            }
        }
        sqlx::Error::Io(io) => match rustix::io::Errno::from_io_error(io) {
            Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT) => ErrorClass::DiskFull,
            Some(rustix::io::Errno::ROFS) => ErrorClass::ReadOnly,
            _ => ErrorClass::ConnectionLost,
        },
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => ErrorClass::ConnectionLost,
        _ => ErrorClass::Other,
    }
}

impl LedgerError {
    /// SQLite could not write for want of space (SQLITE_FULL).
    pub fn is_disk_full(&self) -> bool {
        self.class() == ErrorClass::DiskFull
    }

    /// What kind of trouble this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            LedgerError::Sql(e) => classify(e),
            LedgerError::Timeout(_) => ErrorClass::ConnectionLost,
            // A row it cannot read is that row's trouble, not an outage.
            _ => ErrorClass::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_by_errno() {
        use rustix::io::Errno;
        let io = |n: Errno| sqlx::Error::Io(std::io::Error::from_raw_os_error(n.raw_os_error()));
        assert_eq!(classify(&io(Errno::NOSPC)), ErrorClass::DiskFull);
        assert_eq!(classify(&io(Errno::ROFS)), ErrorClass::ReadOnly);
        assert_eq!(classify(&io(Errno::CONNRESET)), ErrorClass::ConnectionLost);
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            ErrorClass::ConnectionLost
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
    }

    #[tokio::test]
    async fn sqlite_codes_are_classified() {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("connect");
        let e = sqlx::query("SELECT * FROM nowhere")
            .execute(&mut c)
            .await
            .expect_err("no table");
        assert_eq!(classify(&e), ErrorClass::Other);
        sqlx::query("CREATE TABLE t (x BLOB)")
            .execute(&mut c)
            .await
            .expect("create");
        sqlx::query("PRAGMA max_page_count = 2")
            .execute(&mut c)
            .await
            .expect("pragma");
        let e = sqlx::query("INSERT INTO t VALUES (zeroblob(100000))")
            .execute(&mut c)
            .await
            .expect_err("full");
        assert_eq!(classify(&e), ErrorClass::DiskFull, "{e}");
        assert!(LedgerError::Sql(e).is_disk_full());
        sqlx::query("PRAGMA query_only = 1")
            .execute(&mut c)
            .await
            .expect("pragma");
        let e = sqlx::query("DELETE FROM t")
            .execute(&mut c)
            .await
            .expect_err("read-only");
        assert_eq!(classify(&e), ErrorClass::ReadOnly, "{e}");
    }
}
